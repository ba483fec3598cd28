"""The files of the precision cache: where they lie (``<cache>/precision/``), one per
machine key, and how they are written (atomically: Dask workers may calibrate at once).

Part of `napari_foram.classify.precision`, which decides what goes in them: one decision
file per machine (`machine_key`) with an entry per model, and each model's int8 ranges.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable


def _key_tag(key: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def precision_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """``<cache>/precision``; the cache root is the demo models' (``$NAPARI_FORAM_CACHE``
    or ``~/.cache/napari-foram``) unless given.
    """
    from napari_foram.defaults import default_cache_dir

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "precision"


def _cache_file(cache_dir: str | Path | None, key: dict[str, str]) -> Path:
    return precision_cache_dir(cache_dir) / f"choice-{_key_tag(key)}.json"


def _ranges_file(cache_dir: str | Path | None, key: dict[str, str], model: str) -> Path:
    return precision_cache_dir(cache_dir) / f"int8-{_key_tag(key)}-{model[:16]}.safetensors"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file in the same folder, then rename: two processes
    calibrating at once (Dask workers) never leave a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
