"""Defaults shared across modules, each written once.

Plain constants and the cache folder, standard library only: any module (core or app)
can use them at no cost.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CAMERA_SHAPE", "CROP_SIZE", "MC_SAMPLES", "default_cache_dir"]

#: The simulated camera's frame, (rows, columns) in pixels: a 1.26 MP 4:3 sensor.
CAMERA_SHAPE: tuple[int, int] = (972, 1296)
#: Side of the square crops in pixels: what the detector cuts, the tally store keeps and
#: VGG16 takes (its conv blocks then give 7 x 7 x 512). Crops are never rescaled.
CROP_SIZE = 224
#: Monte Carlo dropout passes per crop when nothing else is asked for.
MC_SAMPLES = 30


def default_cache_dir() -> Path:
    """Where napari-foram keeps what it computes once per machine (the demo model, the
    CPU precision decisions): ``$NAPARI_FORAM_CACHE`` or ``~/.cache/napari-foram``.
    """
    env = os.environ.get("NAPARI_FORAM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "napari-foram"
