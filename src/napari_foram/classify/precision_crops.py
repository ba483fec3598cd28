"""The crops a precision decision is made on: synthetic crops at fixed seeds for the
int8 ranges (`calibration_crops`) and the first-use check, or a model's own crops.

Part of `napari_foram.classify.precision`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Crops as `napari_foram.classify.predict` takes them (written here too: predict imports
#: the precision modules, never the other way round).
Crops = np.ndarray | Sequence[np.ndarray]

#: Renderer seeds of the calibration crops (int8 ranges) and of the check crops
#: (speed and agreement): disjoint, and far from the demo model's training seeds.
CALIBRATION_SEED = 7_700_000
CHECK_SEED = 7_800_000


def _synthetic_crops(start: int, stop: int, seed: int) -> np.ndarray:
    from napari_foram.synthetic import CLASSES, render_crop

    return np.stack([render_crop(CLASSES[i % len(CLASSES)], seed + i) for i in range(start, stop)])


def calibration_crops(n: int, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """N synthetic crops (N, 224, 224, 3) uint8, the four classes in turn, fixed seeds:
    the same on every machine, so decisions are comparable.
    """
    if n < 1:
        raise ValueError(f"need at least one crop, got {n}")
    return _synthetic_crops(0, n, seed)


class _CheckCrops:
    """The check crops in their fixed order, made batch by batch (a path rejected early
    never needs the rest): the synthetic ones rendered on demand, given ones in a fixed
    shuffled order (seed 0), so that any leading part is a fair sample of them, not one
    class (folders are often sorted by class).
    """

    def __init__(self, crops: Crops | None, n: int) -> None:
        self.crops = crops
        self.order = None if crops is None else np.random.default_rng(0).permutation(len(crops))
        self.n = n

    def get(self, start: int, stop: int) -> np.ndarray:
        if self.crops is None or self.order is None:
            return _synthetic_crops(start, stop, CHECK_SEED)
        idx = self.order[start:stop]
        if isinstance(self.crops, np.ndarray):
            return np.ascontiguousarray(self.crops[idx])
        return np.stack([np.asarray(self.crops[int(i)]) for i in idx])
