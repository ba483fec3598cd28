"""Pictures that are not tray frames, made into the classifier's 224 x 224 input.

A tray frame is cut as the study cut it: 224 px around each detected specimen, at the
camera's own scale. Labelled sets and single-specimen pictures are different: a lab's
archive, a published plate or a stacking microscope gives one specimen per picture, at any
size (the real radiolarian set in ``shared/realdata`` runs from 25 to 469 px wide). How
such a picture becomes the network's input is the model's *crop policy*, chosen when it is
trained, recorded in its checkpoint (`ModelInfo.crop_policy`) and used again whenever the
model classifies a picture:

``native``
    The picture at its own scale, centred on the 224 px window (cut, or padded with
    black): what a detector crop of a frame at the study's magnification looks like. A
    25 px specimen stays a 25 px dot; a 400 px one loses its outline.
``fit``
    The specimen scaled so that its longer side fills the window, padded to a square
    with the picture's own background (the median colour of its border). The network
    always sees the whole outline at the scale its ImageNet filters work best at.
    Measured on the real radiolarian genera (docs/benchmarks.md) it is far ahead of
    ``native``, so it is the default for training. A 224 px crop is left as it is, so
    crops cut from tray frames (``extract-crops``) train the same under either policy.

What counts as a picture rather than a frame: under ``native``, an image at most 448 px a
side; under ``fit``, at most 1024 px a side (a single-specimen picture is rarely larger; a
camera frame is). A larger image is a tray frame under either policy: the detector runs
and cuts 224 px around the specimen at the camera's scale, exactly as counting does
(`napari_foram.pipeline`), so a model meets tray specimens in training as it meets them
in a scan.
"""

from __future__ import annotations

import numpy as np

from napari_foram.defaults import CROP_SIZE
from napari_foram.detect import DetectionParams, cut_crops, detect
from napari_foram.frames import to_rgb_uint8

__all__ = [
    "CROP_POLICIES",
    "DEFAULT_CROP_POLICY",
    "check_crop_policy",
    "fit_to_window",
    "picture_max_side",
    "picture_to_crop",
]

#: Crop policies: name -> one line (module docstring has the detail).
CROP_POLICIES: dict[str, str] = {
    "native": "the picture at its own scale, centred on the 224 px window (the study's crops)",
    "fit": "the picture scaled to fill the 224 px window, padded with its own background",
}
#: The policy new models are trained with.
DEFAULT_CROP_POLICY = "fit"
#: Largest side of an image taken whole as one specimen's picture, per policy.
_PICTURE_MAX_SIDE = {"native": 2 * CROP_SIZE, "fit": 1024}


def check_crop_policy(policy: str) -> str:
    """`policy` if it is known, else ValueError naming the known ones."""
    if policy not in CROP_POLICIES:
        raise ValueError(f"unknown crop policy {policy!r} (use one of {', '.join(CROP_POLICIES)})")
    return policy


def picture_max_side(policy: str) -> int:
    """The largest side of an image taken whole as one picture under `policy`."""
    return _PICTURE_MAX_SIDE[check_crop_policy(policy)]


def _border_colour(rgb: np.ndarray) -> np.ndarray:
    """Median colour of the outermost pixels: the picture's own background."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return np.median(border, axis=0).astype(np.uint8)


def fit_to_window(rgb: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """(size, size, 3) uint8: `rgb` scaled so its longer side is `size`, centred, padded
    with its border colour. A picture already `size` x `size` is returned unchanged.
    """
    from skimage.transform import resize

    rgb = to_rgb_uint8(rgb)
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb.copy()
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    # Anti-aliased when shrinking (a 469 px plate must not alias its pores); linear
    # interpolation both ways, on 0-255 floats so the result rounds back exactly.
    scaled = resize(
        rgb.astype(np.float32),
        (nh, nw, 3),
        order=1,
        anti_aliasing=scale < 1,
        preserve_range=True,
    )
    out = np.empty((size, size, 3), np.uint8)
    out[:] = _border_colour(rgb)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return out


def picture_to_crop(
    image: np.ndarray, policy: str, params: DetectionParams | None = None
) -> tuple[np.ndarray, str]:
    """One (224, 224, 3) uint8 input from any image under `policy`, and how it was made.

    "centred" / "fitted": the picture taken whole; "detected": a frame, cut around the
    largest whole specimen the detector found; "centre": a frame where none was found,
    cut around its centre.
    """
    check_crop_policy(policy)
    rgb = to_rgb_uint8(image)
    h, w = rgb.shape[:2]
    centre = np.array([[(h - 1) / 2, (w - 1) / 2]])
    if max(h, w) <= picture_max_side(policy):
        if policy == "fit":
            return fit_to_window(rgb), "fitted"
        return cut_crops(rgb, centre, CROP_SIZE)[0], "centred"
    det = detect(image, params, crops=True)
    whole = np.flatnonzero(det.whole)
    if whole.size and det.crops is not None:
        best = whole[np.argmax(det.area_px[whole])]
        return det.crops[best], "detected"
    return cut_crops(rgb, centre, CROP_SIZE)[0], "centre"
