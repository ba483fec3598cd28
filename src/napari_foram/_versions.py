"""Software versions for provenance records (checkpoints, stores, reports)."""

from __future__ import annotations

import platform
from importlib import import_module


def software_versions(*packages: str) -> dict[str, str]:
    """napari-foram's and Python's versions plus those of `packages` that are importable.

    Keys are import names (``napari_foram``, ``torch``, ``zarr``, ...); a package that
    cannot be imported is recorded as "not installed" rather than failing the caller.
    """
    from napari_foram import __version__

    versions = {"napari_foram": __version__, "python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = str(getattr(import_module(name), "__version__", "unknown"))
        except ImportError:
            versions[name] = "not installed"
    return versions
