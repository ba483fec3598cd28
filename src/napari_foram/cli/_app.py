"""The typer app, its shared options and output helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import click
import typer

# typer >= 0.20 vendors its own copy of click; accept the exceptions of both.
_CLICK_MODULES: list[Any] = [click.exceptions]

try:
    import typer._click.exceptions as _typer_click_exceptions

    _CLICK_MODULES.append(_typer_click_exceptions)
except ImportError:  # older typer uses click itself
    pass

_EXIT = (click.exceptions.Exit, typer.Exit)

_ABORT = (click.exceptions.Abort, typer.Abort)

_USAGE = tuple(m.UsageError for m in _CLICK_MODULES)

_CLICK_ERROR = tuple(m.ClickException for m in _CLICK_MODULES)

app = typer.Typer(
    name="napari-foram",
    help=(
        "Count and identify foraminifera under the microscope: acquire (Micro-Manager or the "
        "built-in simulated microscope), detect specimens, classify them with VGG16 + Monte "
        "Carlo dropout, keep tallies per sample in a Zarr store, export core-log tables."
    ),
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


PRECISIONS = ("auto", "fp32", "bf16", "int8")
#: Whether the detector separates touching specimens (`detect`, `batch`).
SplitOption = Annotated[
    bool,
    typer.Option(
        "--split/--no-split",
        help="Separate touching specimens at narrow necks (on by default: see "
        "docs/usage.md, Detection choices).",
    ),
]
PrecisionOption = Annotated[
    str,
    typer.Option(
        help="How VGG16's conv blocks compute: auto (on a CPU the fastest path that agrees "
        "with fp32 on this machine, measured at first use and cached; bf16 on a GPU), "
        "fp32, bf16 or int8 (CPU). The store records the path used.",
    ),
]

#: --download-weights/--no-download-weights of the commands that may need ImageNet VGG16.
#: None (neither given) leaves the choice to `classify.backbone.download_allowed`: yes,
#: unless the environment variable below says no. Not imported from there: that module
#: loads torch, and `--help` must stay quick.
DownloadWeightsOption = Annotated[
    bool | None,
    typer.Option(
        "--download-weights/--no-download-weights",
        help="Download torchvision's ImageNet VGG16 weights (528 MB, once, into torch hub's "
        "cache, checksum checked) when $NAPARI_FORAM_VGG16_WEIGHTS and the cache have "
        "none. Default: yes, unless $NAPARI_FORAM_NO_DOWNLOAD=1; offline, the check gives "
        "up within seconds and the offline fallback applies.",
        show_default=False,
    ),
]


def _use_precision(precision: str) -> str:
    """Check --precision; a path named also becomes this process's meaning of "auto"
    (``$NAPARI_FORAM_PRECISION``), so predictors built further in (the napari widgets,
    the demo) honour it too.
    """
    if precision not in PRECISIONS:
        raise CommandError(f"--precision must be {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        os.environ["NAPARI_FORAM_PRECISION"] = precision
    return precision


#: Most Monte Carlo dropout passes an option accepts: 10000 passes already take minutes
#: per crop on a CPU; beyond it the passes' outputs would not fit in memory.
MAX_MC = 10000


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=_json_default))


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
