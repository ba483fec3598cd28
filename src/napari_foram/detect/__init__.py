"""The study's two-pass connected-component detector, and 224 x 224 crops.

Pass 1 finds the tray's bright metallic border (heavy smoothing, a fixed grey level, the
large bright components that touch the frame edge) and masks it out. Pass 2 smooths,
thresholds (automatically from the tray floor's grey levels unless a level is given),
labels connected components and keeps those of at least `min_area_px` (1024 px in the
study). Touching specimens, one component, are then separated (`split_touching`): the few
components that can hold two round parts are looked at again on a finer grid cut from the
full-resolution frame, and split at narrow necks, at middling necks between parts of
different colour, and never across a planktic's compact whorl (`_fine_split`).

Speed: both passes run on a strided, downscaled copy of the frame (`work_scale`, 4 for a
5 MP frame) because detecting a 60-200 px specimen needs far fewer pixels than the camera
delivers; centroids are scaled back and crops are cut from the full-resolution frame, so
the classifier sees every pixel. Crops are not rescaled to a fixed micrometres-per-pixel:
the study trained and predicted on native 224 px cuts at one magnification, and a model
must be used at the magnification it was trained at (the checkpoint records nothing else).
"""

from __future__ import annotations

from napari_foram.defaults import CROP_SIZE
from napari_foram.detect._core import auto_min_area_px, auto_threshold, auto_work_scale, detect
from napari_foram.detect._crops import cut_crops
from napari_foram.detect._fine_split import auto_split_scale
from napari_foram.detect._necks import split_at_necks
from napari_foram.detect._params import (
    AUTO_MIN_AREA_FLOOR_PX,
    AUTO_MIN_AREA_FRACTION,
    STUDY_MIN_AREA_PX,
    STUDY_MIN_AREA_UM2,
    DetectionParams,
    Detections,
    equivalent_diameter,
)
from napari_foram.detect._split_marks import split_lines
from napari_foram.detect._wall import find_border_mask

__all__ = [
    "AUTO_MIN_AREA_FLOOR_PX",
    "AUTO_MIN_AREA_FRACTION",
    "CROP_SIZE",
    "STUDY_MIN_AREA_PX",
    "STUDY_MIN_AREA_UM2",
    "DetectionParams",
    "Detections",
    "auto_min_area_px",
    "auto_split_scale",
    "auto_threshold",
    "auto_work_scale",
    "cut_crops",
    "detect",
    "equivalent_diameter",
    "find_border_mask",
    "split_at_necks",
    "split_lines",
]
