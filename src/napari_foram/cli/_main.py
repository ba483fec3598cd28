"""The entry point: every error and warning as one line."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

import typer

from napari_foram.reasons import one_line

from ._app import _ABORT, _CLICK_ERROR, _EXIT, _USAGE, CommandError, app


# ----------------------------------------------------------------------------- entry point
def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """Warnings on the terminal as one line each, like errors (no source line)."""
    return f"napari-foram: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; usage errors and bad input become one line on stderr."""
    warnings.formatwarning = _one_line_warning
    # File names that are not valid in the terminal's encoding (bytes a file system
    # allows, kept as surrogates) are printed escaped rather than ending the command.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")
    try:
        # Without standalone mode click returns the exit code of typer.Exit instead of
        # calling sys.exit; keep it.
        status = app(args=argv, standalone_mode=False)
    except _EXIT as exc:
        return int(exc.exit_code or 0)
    except _ABORT:
        typer.echo("napari-foram: aborted", err=True)
        return 130
    except _USAGE as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `napari-foram`: show the help
            typer.echo(exc.format_message() if exc.ctx is None else exc.ctx.get_help())
            return 0
        msg = " ".join(exc.format_message().split())
        typer.echo(f"napari-foram: error: {msg}", err=True)
        return 2
    except _CLICK_ERROR as exc:
        typer.echo(f"napari-foram: error: {' '.join(exc.format_message().split())}", err=True)
        return int(getattr(exc, "exit_code", 1) or 1)
    except KeyboardInterrupt:
        typer.echo("napari-foram: interrupted", err=True)
        return 130
    except (CommandError, ValueError, RuntimeError, OSError, MemoryError) as exc:
        # OSError covers permission denied, is-a-directory, read-only file systems, disk
        # full: its strerror and file name make the line, never a traceback.
        typer.echo(f"napari-foram: error: {one_line(exc)}", err=True)
        return 1
    except Exception as exc:  # a bug or an unforeseen input: still one line, and where
        if os.environ.get("NAPARI_FORAM_DEBUG"):
            raise
        typer.echo(
            f"napari-foram: error: {type(exc).__name__}: {one_line(exc)} "
            "(unexpected; set NAPARI_FORAM_DEBUG=1 for the traceback)",
            err=True,
        )
        return 1
    return status if isinstance(status, int) else 0
