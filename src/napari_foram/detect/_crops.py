"""The 224 px crops (and object masks) cut around each detection at full resolution,
padded with the tray's colour.
"""

from __future__ import annotations

import numpy as np

from napari_foram.defaults import CROP_SIZE
from napari_foram.frames import to_uint8


def _background_colour(
    img: np.ndarray, rgb_small: np.ndarray, labels: np.ndarray, border: np.ndarray
) -> np.ndarray:
    """Median colour of the tray floor (not objects, not border): the crops' padding."""
    # Every 4th pixel each way is plenty for a median.
    floor = ((labels == 0) & ~border)[::4, ::4]
    sample = rgb_small[::4, ::4][floor].astype(np.float32)
    colour = np.median(sample, axis=0) if len(sample) > 7 else np.zeros(3)
    if img.ndim == 2 or img.shape[2] == 1:
        return np.round(colour[:1]).astype(np.uint8)
    return np.round(colour).astype(np.uint8)


def cut_crops(
    image: np.ndarray, centres_yx: np.ndarray, size: int = CROP_SIZE, fill: np.ndarray | int = 0
) -> np.ndarray:
    """(n, size, size, 3) uint8 crops centred on each (row, col), padded at the frame edge.

    The crop is never shifted to stay inside the frame: the specimen stays centred, as the
    classifier saw it in training, and the part outside the frame is `fill`.
    """
    img = to_uint8(image)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 4:
        img = img[:, :, :3]
    height, width, channels = img.shape
    centres = np.asarray(centres_yx, dtype=np.float64).reshape(-1, 2)
    out = np.empty((len(centres), size, size, channels), dtype=np.uint8)
    fill_px = np.broadcast_to(np.asarray(fill, dtype=np.uint8).reshape(-1)[:channels], (channels,))
    half = size // 2
    for i, (cy, cx) in enumerate(centres):
        top = round(cy) - half
        left = round(cx) - half
        if top >= 0 and left >= 0 and top + size <= height and left + size <= width:
            out[i] = img[top : top + size, left : left + size]
            continue
        out[i] = fill_px
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + size, height), min(left + size, width)
        if y1 > y0 and x1 > x0:
            out[i, y0 - top : y1 - top, x0 - left : x1 - left] = img[y0:y1, x0:x1]
    if channels == 1:
        out = np.repeat(out, 3, axis=3)
    return out


def _cut_masks(
    labels: np.ndarray, index: np.ndarray, centroid: np.ndarray, scale: int, size: int
) -> np.ndarray:
    """Each object's own mask in its crop, upsampled from the working scale (nearest)."""
    out = np.zeros((len(index), size, size), dtype=bool)
    half = size // 2
    hs, ws = labels.shape
    offsets = np.arange(size)
    for i, (lab, (cy, cx)) in enumerate(zip(index, centroid, strict=True)):
        rows = (round(cy) - half + offsets) // scale
        cols = (round(cx) - half + offsets) // scale
        rv = (rows >= 0) & (rows < hs)
        cv = (cols >= 0) & (cols < ws)
        sub = labels[np.ix_(rows[rv], cols[cv])] == lab
        out[i][np.ix_(rv, cv)] = sub
    return out
