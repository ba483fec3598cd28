"""Checks of output paths, made before long work starts so that no result is lost at the
end to a path that cannot be written (a folder where a file goes, a read-only place).

Each check raises ValueError with one line naming the path and the reason; nothing is
created except, for `check_output_dir`, the folder itself (as the writer would).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def _first_existing_parent(path: Path) -> Path:
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def _probe_writable(folder: Path, label: Path) -> None:
    """ValueError unless a file can be created in `folder` (a real attempt: permission
    bits say nothing about read-only mounts or ACLs)."""
    probe = folder / f".napari-foram-probe-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
    except OSError as exc:
        raise ValueError(
            f"{label}: cannot write in {folder} ({exc.strerror or type(exc).__name__})"
        ) from None
    probe.unlink(missing_ok=True)


def check_output_file(path: str | os.PathLike[str], what: str = "output file") -> Path:
    """`path` as a Path if a file can be written there (replacing one is fine).

    Refused: an existing folder, a parent that is a file, a place where nothing can be
    created. Missing parent folders are fine when they can be created.
    """
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p}: is a folder; the {what} must be a file path")
    if p.exists() and not p.is_file():
        raise ValueError(f"{p}: is not a regular file; the {what} must be a file path")
    parent = _first_existing_parent(p)
    if not parent.is_dir():
        raise ValueError(f"{p}: {parent} is a file, not a folder")
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{p}: the {what} exists and is not writable")
    _probe_writable(parent, p)
    return p


def check_output_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """`path` as a Path if it is (or can be made) a writable folder; it is created."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{p}: is a file; the {what} must be a folder")
    parent = _first_existing_parent(p)
    if not parent.is_dir():
        raise ValueError(f"{p}: {parent} is a file, not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"{p}: cannot create the {what} ({exc.strerror or type(exc).__name__})"
        ) from None
    _probe_writable(p, p)
    return p
