"""Fast image helpers of the detector: strided grey copy, square dilation and erosion,
hole filling, Otsu's level, renumbering.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def _grey_small(image: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Strided copy at 1/scale as (grey float32 (h, w), colour uint8 (h, w, 3)).

    Luma in integer arithmetic on the uint8 samples (weights 77/150/29 of 256): no float
    copy of the colour image is made.
    """
    small = image[::scale, ::scale]
    if small.ndim == 3 and small.shape[2] == 1:
        small = small[:, :, 0]
    if small.ndim == 2:
        return small.astype(np.float32), np.repeat(small[:, :, None], 3, axis=2)
    rgb = np.ascontiguousarray(small[:, :, :3])
    luma = rgb[:, :, 0] * np.uint16(77) + rgb[:, :, 1] * np.uint16(150)
    luma += rgb[:, :, 2] * np.uint16(29)
    return (luma >> 8).astype(np.float32), rgb


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1) square: two 1-D max passes, far faster than ndimage's
    generic binary morphology on large masks.
    """
    out = ndi.maximum_filter(mask.view(np.uint8), size=2 * radius + 1, mode="constant")
    return out.view(bool)


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion by a (2r+1) square (pixels outside the frame count as set, so
    objects at the edge are not eaten from outside).
    """
    out = ndi.minimum_filter(mask.view(np.uint8), size=2 * radius + 1, mode="nearest")
    return out.view(bool)


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold on 0-255 data via a 256-bin histogram (fast, no skimage call)."""
    hist = np.bincount(np.clip(values, 0, 255).astype(np.uint8).ravel(), minlength=256)
    hist = hist.astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 127.5
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    w1 = total - w0
    m0 = np.cumsum(hist * levels)
    mt = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 / total - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1
    return float(np.argmax(between)) + 0.5


def _fill_holes(binary: np.ndarray, max_size: int | None = None) -> np.ndarray:
    """Fill enclosed background (faster than ndi.binary_fill_holes' iterated dilation).

    `max_size`: holes of more pixels stay open (None: every hole is filled).
    """
    background, n = ndi.label(~binary)
    if n <= 1:
        return binary
    edge = np.unique(
        np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    )
    enclosed = np.ones(n + 1, dtype=bool)
    enclosed[edge] = False
    enclosed[0] = False
    if max_size is not None:
        enclosed &= np.bincount(background.ravel(), minlength=n + 1) <= max_size
    return binary | enclosed[background]


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n in order of value, 0 kept (a lookup table, no sort)."""
    present = np.bincount(labels.ravel()) > 0
    present[0] = False
    lut = np.cumsum(present).astype(np.int32)
    lut[0] = 0
    return lut[labels]


try:  # scikit-image's flooding kernel, called without its per-call Python set-up
    from skimage.segmentation._watershed_cy import watershed_raveled as _watershed_raveled
except ImportError:  # pragma: no cover - a scikit-image that moved it: the public API
    _watershed_raveled = None


def _watershed(image: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`skimage.segmentation.watershed(image, markers, mask=mask)` (2-D, connectivity
    1) as int32, with the same kernel and inputs and hence the same basins.

    The splitter floods ~30 small boxes per frame; the public function's input checks,
    `np.pad` calls and neighbourhood set-up cost about as much as the flooding there.
    """
    if _watershed_raveled is None:  # pragma: no cover
        from skimage.segmentation import watershed

        return np.asarray(watershed(image, markers, mask=mask), dtype=np.int32)
    h, w = image.shape
    # Padded by one zero pixel all round, as watershed() does: the kernel needs a
    # masked-out border so that no neighbour falls outside the array.
    img = np.zeros((h + 2, w + 2), dtype=np.float64)
    img[1:-1, 1:-1] = image
    flood = np.zeros((h + 2, w + 2), dtype=np.int8)
    flood[1:-1, 1:-1] = mask
    out = np.zeros((h + 2, w + 2), dtype=np.int32)
    out[1:-1, 1:-1] = np.where(mask, markers, 0)
    # Neighbour offsets in the order skimage's _offsets_to_raveled_neighbors gives
    # for connectivity 1 (ties between equal pixels are flooded in this order).
    neighbours = np.array([-(w + 2), -1, 1, w + 2], dtype=np.intp)
    strides = np.array([w + 2, 1], dtype=np.intp)
    _watershed_raveled(
        img.ravel(),
        np.flatnonzero(out),
        neighbours,
        flood.ravel(),
        strides,
        0,
        out.ravel(),
        False,
    )
    return out[1:-1, 1:-1].copy()


def _max_per_label(labels: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Largest of `values` (all >= 0) per label 0..n-1, 0 where a label has none.

    `np.maximum.at` with both operands float64: NumPy's fast path for `ufunc.at` needs
    matching dtypes; a float32 `values` into a float64 output takes the generic path,
    some 40 times slower on the splitter's mosaic.
    """
    out = np.zeros(n, dtype=np.float64)
    np.maximum.at(out, labels, values.astype(np.float64, copy=False))
    return out
