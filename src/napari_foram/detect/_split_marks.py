"""The comparison splitter (a watershed cut at every valley) and what a split leaves
behind: which components before it reached the frame edge or the wall, and the lines
between parts (for previews).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_foram.detect._image import _dilate


def _split_touching(binary: np.ndarray, labels: np.ndarray, min_diameter: float) -> np.ndarray:
    """Split merged blobs along the valleys of their distance transform (watershed).

    Cuts at every valley, chambered tests included: kept for comparison as
    ``split_method="watershed"``; the default is `split_at_necks`.
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    distance = ndi.distance_transform_edt(binary)
    min_distance = max(2, int(min_diameter / 2))
    peaks = peak_local_max(
        distance, min_distance=min_distance, labels=labels, exclude_border=False
    )
    markers = np.zeros_like(labels)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=binary).astype(np.int32)


def _cut_components(
    components: np.ndarray, labels: np.ndarray, outline: np.ndarray, border: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per component before the split (indexed by its label): whether one of its parts
    reaches the frame edge, and whether one touches the masked wall (on the half-height
    outline, as `clipped` is judged).
    """
    n_comp = int(components.max())
    parent = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    fg = np.flatnonzero(labels)
    parent[labels.ravel()[fg]] = components.ravel()[fg]
    edge = np.zeros(n_comp + 1, dtype=bool)
    wall = np.zeros(n_comp + 1, dtype=bool)
    ids = np.unique(np.concatenate([outline[0], outline[-1], outline[:, 0], outline[:, -1]]))
    edge[parent[ids[ids > 0]]] = True
    if border.any():
        ids = np.unique(outline[_dilate(border, 1) & ~border])
        wall[parent[ids[ids > 0]]] = True
    edge[0] = wall[0] = False
    return edge, wall


def split_lines(labels: np.ndarray) -> np.ndarray:
    """Pixels where two different objects meet (bool, same shape): the cuts that
    separated touching specimens, for previews.
    """
    out = np.zeros(labels.shape, dtype=bool)
    for axis in (0, 1):
        a = labels
        b = np.roll(labels, -1, axis=axis)
        meet = (a != b) & (a > 0) & (b > 0)
        if axis == 0:
            meet[-1, :] = False
        else:
            meet[:, -1] = False
        out |= meet
    return out
