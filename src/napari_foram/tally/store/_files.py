"""The store's files on disk: the writer lock, Zarr metadata and array helpers."""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import uuid
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ._schema import _COLUMNS, _ROWS_PER_CHUNK, LOCK_NAME, SCHEMA_NAME, SCHEMA_VERSION


# ----------------------------------------------------------------------------- helpers
def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _jsonable(value: Any, where: str) -> Any:
    """A JSON-ready copy of `value` (numpy scalars/arrays become Python); ValueError if not."""

    def convert(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return [convert(x) for x in v.tolist()]
        if isinstance(v, np.generic):
            return convert(v.item())
        if isinstance(v, float) and not math.isfinite(v):
            return None  # JSON has no NaN; zarr metadata must stay strict JSON
        if isinstance(v, Mapping):
            return {str(k): convert(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    out = convert(value)
    try:
        json.dumps(out)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where} is not JSON-serialisable: {exc}") from None
    return out


def _is_zombie(pid: int) -> bool:
    """True if `pid` is a zombie (exited, not reaped: containers without an init process
    keep a killed writer in this state), read from Linux's /proc; False elsewhere.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    # "pid (command) state ...": the command may hold spaces and parentheses.
    fields_after = stat.rsplit(")", 1)[-1].split()
    return bool(fields_after) and fields_after[0] in ("Z", "X")


def _pid_alive(pid: int) -> bool:
    """True if a process with this PID runs on this machine (a zombie is dead: it holds
    no files and will never write again).
    """
    if pid <= 0:
        return False
    if sys.platform == "win32":  # pragma: no cover - os.kill(pid, 0) would kill it there
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return not _is_zombie(pid)  # exists, owned by someone else
    return not _is_zombie(pid)


class _WriterLock:
    """A lock file with the writer's PID and host, created atomically (link of a temp file)."""

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_NAME
        self.held = False
        self.took_over_stale = False

    def _info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": _now_iso(),
            "token": uuid.uuid4().hex,
        }

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def acquire(self) -> None:
        info = self._info()
        tmp = self.path.with_name(f"{LOCK_NAME}.{info['token']}.tmp")
        tmp.write_text(json.dumps(info), encoding="utf-8")
        try:
            for _ in range(3):
                try:
                    # os.link fails if the lock exists: creation with content is atomic.
                    os.link(tmp, self.path)
                    self.held = True
                    self._token = info["token"]
                    return
                except FileExistsError:
                    pass
                holder = self._read(self.path)
                if holder is None:
                    if not self.path.exists():
                        continue  # released meanwhile
                    raise ValueError(
                        f"store is locked by an unreadable lock file {self.path}; "
                        "delete it if no other program writes to this store"
                    )
                if not self._stale(holder):
                    raise ValueError(
                        f"store is already open for writing by PID {holder.get('pid')} on "
                        f"{holder.get('host')} since {holder.get('since')}; one writer at a time"
                    )
                # Move the stale lock aside under a unique name: only one taker wins the
                # rename, and a taker that grabbed a fresh lock by mistake puts it back.
                aside = self.path.with_name(f"{LOCK_NAME}.{info['token']}.stale")
                try:
                    self.path.rename(aside)
                except FileNotFoundError:
                    continue
                moved = self._read(aside)
                if moved is not None and not self._stale(moved):
                    with contextlib.suppress(OSError):
                        os.link(aside, self.path)
                    aside.unlink(missing_ok=True)
                    raise ValueError(
                        f"store is already open for writing by PID {moved.get('pid')} on "
                        f"{moved.get('host')}; one writer at a time"
                    )
                aside.unlink(missing_ok=True)
                self.took_over_stale = True
                warnings.warn(
                    f"took over a stale lock of PID {holder.get('pid')} on {holder.get('host')} "
                    "(that writer died); its committed rows are kept",
                    RuntimeWarning,
                    stacklevel=4,
                )
            raise ValueError(f"could not take the writer lock {self.path}")
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _stale(holder: Mapping[str, Any]) -> bool:
        if holder.get("host") != socket.gethostname():
            return False  # cannot tell whether a process on another machine lives
        pid = holder.get("pid")
        return isinstance(pid, int) and not _pid_alive(pid)

    def release(self) -> None:
        if not self.held:
            return
        holder = self._read(self.path)
        if holder is not None and holder.get("token") == self._token:
            self.path.unlink(missing_ok=True)
        self.held = False


def check_root_attrs(attrs: Mapping[str, Any], path: Path) -> None:
    if attrs.get("schema") != SCHEMA_NAME:
        raise ValueError(f"{path} is a Zarr group but not a napari-foram tally store")
    version = attrs.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise ValueError(
            f"{path} has tally schema version {version!r}; this napari-foram reads up to "
            f"{SCHEMA_VERSION}"
        )
    classes = attrs.get("class_names")
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, str) for c in classes)
    ):
        raise ValueError(f"{path} has no valid class_names in its attributes")


def read_zarr_json(path: Path) -> dict[str, Any]:
    meta_file = path / "zarr.json"
    if not path.is_dir():
        raise ValueError(f"no tally store at {path} (not a directory)")
    if not meta_file.is_file():
        raise ValueError(f"{path} is not a Zarr v3 store (no zarr.json)")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} has an unreadable zarr.json ({exc})") from None
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        raise ValueError(f"{path} is a Zarr array or unknown node, not a tally store group")
    return meta


def _validate_classes(classes: Sequence[str]) -> list[str]:
    if isinstance(classes, str):
        raise ValueError("classes must be a sequence of names, not one string")
    names = list(classes)
    if len(names) < 1:
        raise ValueError("classes must name at least one class")
    for c in names:
        if not isinstance(c, str) or not c.strip():
            raise ValueError(f"class names must be non-empty text, got {c!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique, got {names}")
    return names


# Arrays grow in steps of this many rows: a shape change rewrites the array's metadata
# file, and doing that for every column on every batch halved the append rate. The
# slack above the commit counter is trimmed on close (and after a crash, on reopen).
_GROW_ROWS = 4096


def _write_rows(
    arrays: Mapping[str, Any], needed: Mapping[str, int], writes: Sequence[tuple[Any, slice, Any]]
) -> None:
    """Grow arrays to at least `needed` rows, then write every (array, rows, values).

    All writes of a batch go to zarr's event loop at once, so the chunk files of the
    different columns are encoded and written concurrently instead of one after another.
    """
    resizes = []
    for name, rows in needed.items():
        arr = arrays[name]
        if arr.shape[0] < rows:
            capacity = -(-rows // _GROW_ROWS) * _GROW_ROWS
            resizes.append((arr, (capacity, *arr.shape[1:])))
    try:
        from zarr.core.sync import sync
    except ImportError:  # pragma: no cover - zarr moved its internals: plain, serial calls
        for arr, shape in resizes:
            arr.resize(shape)
        for arr, selection, values in writes:
            arr[selection] = values
        return

    async def run() -> None:
        import asyncio

        await asyncio.gather(*(arr.async_array.resize(shape) for arr, shape in resizes))
        await asyncio.gather(
            *(arr.async_array.setitem(sel, values) for arr, sel, values in writes)
        )

    sync(run())


def _processed_records(
    processed: Mapping[str, Mapping[str, Any]] | None,
) -> dict[str, dict[str, Any]]:
    """`append_specimens`' processed-file records, checked and made JSON-ready."""
    if processed is None:
        return {}
    if not isinstance(processed, Mapping):
        raise ValueError(f"processed must be a mapping, got {type(processed).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for key, record in processed.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"processed-file keys must be non-empty text, got {key!r}")
        if not isinstance(record, Mapping):
            raise ValueError(f"processed-file record of {key!r} must be a mapping")
        out[key] = _jsonable(dict(record), f"processed-file record of {key!r}")
    return out


def _filled_column(name: str, n: int, k: int) -> np.ndarray:
    """`n` rows of column `name` holding its fill value (a column an old store lacks)."""
    dtype, fill, tail = _COLUMNS[name]
    trailing = tuple(k if t == "K" else int(t) for t in tail)
    return np.full((n, *trailing), fill, dtype=dtype)


def _compressor(level: int = 0) -> Any:
    """Zstd with its frame checksum: a chunk whose bytes changed (a flipped bit on disk, a
    file copied halfway) fails to decode instead of reading as other numbers. Stores
    written before carry no checksum and read as before.
    """
    from zarr.codecs import ZstdCodec

    return ZstdCodec(level=level, checksum=True)


def _create_column(group: Any, name: str, rows: int, k: int = 0) -> None:
    """Add column `name` to an old sample group: `rows` rows of its fill value (no chunk
    is written until a value differs).
    """
    dtype, fill, tail = _COLUMNS[name]
    trailing = tuple(k if t == "K" else int(t) for t in tail)
    arr = group.create_array(
        name,
        shape=(rows, *trailing),
        chunks=(_ROWS_PER_CHUNK, *trailing),
        dtype=dtype,
        fill_value=fill,
        compressors=_compressor(),
    )
    if rows:
        # Written out, so that every committed row has its chunk file (a missing one is
        # then always damage; see integrity.py).
        arr.with_config({"write_empty_chunks": True})[:rows] = fill


def _counter(attrs: Mapping[str, Any], key: str) -> int:
    """A commit counter from a sample's attrs; ValueError if it is missing or not an int."""
    value = attrs.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"sample attribute {key!r} is {value!r}, not a row count; store damaged")
    return value


_TALLY_ARRAYS = ("tally_time", "tally_counts")


def _trim_arrays(arrays: Mapping[str, Any], n: int, m: int, sample_id: str) -> int:
    """Shrink specimen arrays to `n` rows and tally arrays to `m`; return rows removed."""
    trimmed = 0
    for name, arr in arrays.items():
        rows = m if name in _TALLY_ARRAYS else n
        if arr.shape[0] > rows:
            if name not in _TALLY_ARRAYS:
                trimmed = max(trimmed, arr.shape[0] - rows)
            arr.resize((rows, *arr.shape[1:]))
            chunk = arr.chunks[0]
            if name == "crops" and rows % chunk:
                # Shrinking keeps the chunk that straddles the new end, uncommitted crops
                # included; a later batch stored without crops would show them. Zero them.
                boundary = rows + chunk - rows % chunk
                arr.resize((boundary, *arr.shape[1:]))
                arr[rows:boundary] = 0
                arr.resize((rows, *arr.shape[1:]))
        elif arr.shape[0] < rows:
            raise ValueError(
                f"sample {sample_id!r}: {name} has {arr.shape[0]} rows but {rows} are "
                "committed; the store is damaged"
            )
    return trimmed


def _half_made(sample_dir: Path) -> bool:
    """True for a sample folder that `add_sample` left half made: its ``zarr.json`` reads
    well, says "not initialised" and nothing committed (anything else may hold data).
    """
    try:
        meta = json.loads((sample_dir / "zarr.json").read_text(encoding="utf-8"))
        attrs = meta["attributes"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (
        isinstance(attrs, dict)
        and attrs.get("initialised") is False
        and attrs.get("n_committed") == 0
        and attrs.get("n_tally") == 0
    )
