"""Checks of the paths a command writes and of the small files it reads whole, made before
long work starts so that no result is lost at the end to a path that cannot be written (a
folder where a file goes, a read-only place) and no input is lost to an output written
over it.

Outputs are refused when they would replace an input of the same command (a file it
reads, or anything inside a folder it reads as data), when they lie inside a tally store
(the store's own files are written only by `TallyStore`), and when the path is not a
regular file (a FIFO or a device: writing there blocks, or loses the result silently).

Small inputs (sample sheets, split files) are read only from regular files of a bounded
size: a FIFO, ``/dev/zero`` or a huge file would otherwise hang or exhaust memory.

Each check raises ValueError with one line naming the path and the reason; nothing is
created except, for `check_output_dir`, the folder itself (as the writer would).
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

#: Root attribute "schema" of a tally store: the value of
#: `napari_foram.tally.store._schema.SCHEMA_NAME`, repeated here because that package
#: loads zarr and this module is imported by commands before any heavy work.
TALLY_SCHEMA = "napari-foram-tally"

#: Largest sample sheet or split file read (bytes): thousands of rows are a few hundred
#: kB; anything near this is not a sheet.
MAX_SMALL_FILE_BYTES = 16 * 1024 * 1024

PathLike = str | os.PathLike[str]


def _first_existing_parent(path: Path) -> Path:
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def _probe_writable(folder: Path, label: Path) -> None:
    """ValueError unless a file can be created in `folder` (a real attempt: permission
    bits say nothing about read-only mounts or ACLs).
    """
    probe = folder / f".napari-foram-probe-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
    except OSError as exc:
        raise ValueError(
            f"{label}: cannot write in {folder} ({exc.strerror or type(exc).__name__})"
        ) from None
    probe.unlink(missing_ok=True)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


def _real(path: PathLike) -> Path:
    """The absolute path with every symbolic link that exists resolved."""
    return Path(path).resolve()


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def is_tally_store(folder: PathLike) -> bool:
    """Whether `folder` is a tally store: its ``zarr.json`` names the store's schema."""
    meta = Path(folder) / "zarr.json"
    try:
        st = meta.stat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SMALL_FILE_BYTES:
            return False
        attrs = json.loads(meta.read_bytes()).get("attributes") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(attrs, dict) and attrs.get("schema") == TALLY_SCHEMA


def tally_store_around(path: PathLike) -> Path | None:
    """The tally store that `path` is, or lies inside (any ancestor), or None."""
    seen: set[Path] = set()
    # Both spellings: the path as given (a link to a store's file is inside the store
    # too) and with its links resolved.
    for start in (Path(os.path.normpath(Path(path).absolute())), _real(path)):
        for folder in (start, *start.parents):
            if folder in seen:
                continue
            seen.add(folder)
            if is_tally_store(folder):
                return folder
    return None


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _refuse_inputs(p: Path, what: str, inputs: Iterable[PathLike]) -> None:
    """ValueError if `p` is one of `inputs` (files the command reads) or lies inside one
    (folders it reads as data; a folder that does not exist yet, such as a store about to
    be created, counts as one).

    Compared by identity (device and inode, links followed), so that no spelling (a link,
    "..", a hard link) hides an input, at one `stat` per input: a batch has thousands.
    """
    real = _real(p)
    try:
        own: tuple[int, int] | None = _identity(p.stat())
    except OSError:
        own = None
    above: set[tuple[int, int]] = set()
    for folder in real.parents:
        try:
            above.add(_identity(folder.stat()))
        except OSError:
            continue  # not there yet: created with the output
    for given in inputs:
        try:
            st = Path(given).stat()
        except OSError:
            if _within(real, _real(given)):
                raise ValueError(
                    f"{p}: the {what} would be written inside the input folder {given}"
                ) from None
            continue
        ident = _identity(st)
        if ident == own and not stat.S_ISDIR(st.st_mode):
            raise ValueError(f"{p}: the {what} would overwrite the input {given}")
        if ident == own or ident in above:
            how = "overwrite a file" if p.is_file() else "be written"
            raise ValueError(f"{p}: the {what} would {how} inside the input folder {given}")


def _refuse_store(p: Path, what: str) -> None:
    store = tally_store_around(p)
    if store is not None:
        raise ValueError(
            f"{p}: the {what} would be written inside the tally store {store} "
            "(only the store itself writes there)"
        )


def check_output_file(
    path: PathLike, what: str = "output file", *, inputs: Iterable[PathLike] = ()
) -> Path:
    """`path` as a Path if a file can be written there (replacing one is fine).

    Refused: an existing folder, a FIFO or device, a parent that is a file, a place where
    nothing can be created, any path inside a tally store, and one of `inputs` (files the
    command reads) or a path inside one of them (folders it reads as data). Missing
    parent folders are fine when they can be created.
    """
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p}: is a folder; the {what} must be a file path")
    if p.exists() and not p.is_file():
        raise ValueError(
            f"{p}: is not a regular file ({file_kind(p.stat().st_mode)}); the {what} must be "
            "a file path"
        )
    parent = _first_existing_parent(p)
    if not parent.is_dir():
        raise ValueError(f"{p}: {parent} is a file, not a folder")
    _refuse_store(p, what)
    _refuse_inputs(p, what, inputs)
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{p}: the {what} exists and is not writable")
    _probe_writable(parent, p)
    return p


def check_output_dir(
    path: PathLike,
    what: str = "output folder",
    *,
    inputs: Iterable[PathLike] = (),
    create: bool = True,
) -> Path:
    """`path` as a Path if it is (or can be made) a writable folder; it is created unless
    `create` is False (then only its shape is checked: not a file, under a folder).

    Refused besides: a tally store or a folder inside one, one of `inputs` or a folder
    inside one of them (an output inside a folder read as data would be read back as
    data by the next run).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{p}: is a file; the {what} must be a folder")
    parent = _first_existing_parent(p)
    if not parent.is_dir():
        raise ValueError(f"{p}: {parent} is a file, not a folder")
    _refuse_store(p, what)
    _refuse_inputs(p, what, inputs)
    if not create:
        return p
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"{p}: cannot create the {what} ({exc.strerror or type(exc).__name__})"
        ) from None
    _probe_writable(p, p)
    return p


def check_distinct(outputs: Iterable[tuple[PathLike | None, str]]) -> None:
    """ValueError if two of the (path, what) outputs of one command are the same file
    (the later one would replace the earlier).
    """
    seen: dict[Path, str] = {}
    for path, what in outputs:
        if path is None:
            continue
        real = _real(path)
        if real in seen:
            raise ValueError(f"{path}: both the {seen[real]} and the {what} would go there")
        seen[real] = what


def check_input_file(path: PathLike, what: str = "input file") -> Path:
    """`path` as a Path if it is an existing regular file (links followed).

    The reasons: "<what> not found: PATH", "PATH: is a folder, not a <what>", "PATH: is
    not a regular file (a FIFO), not a <what>".
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ValueError(f"{what} not found: {p}") from None
    except OSError as exc:
        raise ValueError(f"{p}: cannot open the {what} ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{p}: is a folder, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{p}: is not a regular file ({file_kind(st.st_mode)}), not a {what}")
    return p


def read_small_file(
    path: PathLike, what: str = "input file", *, limit: int = MAX_SMALL_FILE_BYTES
) -> bytes:
    """The bytes of a small input file (a sample sheet, a split file).

    Only a regular file is opened (a FIFO would block the command, ``/dev/zero`` would
    never end), and at most `limit` bytes are read: a larger file is refused.

    Raises
    ------
    ValueError
        One line: not found, a folder, not a regular file, too large, unreadable.
    """
    p = check_input_file(path, what)
    try:
        # O_NONBLOCK: should the name be swapped for a FIFO after the check above, the
        # open returns at once instead of waiting for a writer; the handle is re-checked.
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(
                    f"{p}: is not a regular file ({file_kind(st.st_mode)}), not a {what}"
                )
            data = fh.read(limit + 1)
    except OSError as exc:
        raise ValueError(f"{p}: cannot read the {what} ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise ValueError(f"{p}: is larger than {limit // (1024 * 1024)} MB; not a {what}")
    return data
