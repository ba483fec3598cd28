"""One rule for turning an exception into the one-line reason a user reads.

Every user-facing error in napari-foram is one line that names the file and the reason
(CLI errors, batch report lines, the store's damage reports, widget status lines). The
first line of the exception's message says that; an OSError says it best through its
``strerror`` and ``filename``; an exception with no message is named by its type.
"""

from __future__ import annotations


def one_line(exc: BaseException | str) -> str:
    """`exc` as one line: an OSError as "FILE: reason", else its message's first line,
    else its type's name ("" for an empty string).
    """
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return f"{where}{exc.strerror}"
    if isinstance(exc, MemoryError):
        return "not enough memory"
    text = str(exc).strip()
    if text:
        return text.splitlines()[0].strip()
    return "" if isinstance(exc, str) else type(exc).__name__
