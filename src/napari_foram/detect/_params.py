"""The detector's settings (`DetectionParams`) and its result table (`Detections`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, overload

import numpy as np

from napari_foram.defaults import CROP_SIZE

#: The study's minimum object area in pixels (components below it are discarded).
STUDY_MIN_AREA_PX = 1024


#: The same limit in um^2 at the study's ~2.5 um per pixel (a 90 um disc): used whenever
#: the pixel size is known, so the limit follows the magnification.
STUDY_MIN_AREA_UM2 = 6400.0


#: With no pixel size, the minimum is this fraction of the typical object's area (the
#: area-weighted median of the frame's objects) ...
AUTO_MIN_AREA_FRACTION = 0.2


#: ... never below this (px, a 10 x 10 speck) and never above the study's 1024 px.
AUTO_MIN_AREA_FLOOR_PX = 100.0


#: Images no longer than this on either side may be pictures of one specimen (the largest
#: side `pictures` takes whole) rather than camera frames of a tray.
PICTURE_MAX_SIDE = 1024


@overload
def equivalent_diameter(area: float) -> float: ...
@overload
def equivalent_diameter(area: np.ndarray) -> np.ndarray: ...
def equivalent_diameter(area: float | np.ndarray) -> float | np.ndarray:
    """Diameter of the disc with the same area, sqrt(4 area / pi): the one size rule for
    objects (`Detections.equivalent_diameter_px`, the splitter's grid, specimen sizes in
    micrometres). Pixels from px^2, micrometres from um^2; a float for a number, a
    float64 array for an array.
    """
    diameter = np.sqrt(4.0 * np.asarray(area, dtype=np.float64) / np.pi)
    return diameter if diameter.ndim else float(diameter)


@dataclass(frozen=True)
class DetectionParams:
    """Settings of the detector. All lengths are full-resolution pixels.

    Parameters
    ----------
    invert
        Dark objects on a bright background instead of bright on dark.
    smooth_sigma_px
        Gaussian smoothing before the threshold (pass 2), in full-resolution pixels.
    threshold
        Grey level 0-255 for pass 2, or None for automatic (`threshold_method`).
    threshold_method
        "background" (floor median + k robust SDs) or "otsu"; see `auto_threshold`.
    background_k, background_min_margin
        Settings of the "background" method.
    min_width_px
        Objects thinner than this (lint, fibres) are removed by an opening; 0 disables.
    min_area_px, min_area_um2
        Smallest object kept. `min_area_px` (when given) wins; else `min_area_um2` when
        the pixel size is known; else the minimum is derived from the image
        (`auto_min_area_px`).
    max_area_px
        Largest object kept (None: no limit).
    mask_border
        Run pass 1 (find and mask the metallic tray border).
    border_threshold
        Grey level above which heavily smoothed pixels belong to the border (the study's ~70).
    border_min_fraction
        A bright region must cover this fraction of the frame to count as tray border.
    split_touching
        Separate touching specimens (`split_method`); on by default (docs/usage.md,
        Detection choices; measured in docs/benchmarks.md).
    split_method
        "neck": split only at narrow necks, judged again on a finer grid for the few
        objects that can hold two round parts, so chambered tests stay whole;
        "watershed": every distance-transform valley (cuts chambers), for comparison.
    neck_ratio, split_strict, split_colour
        "neck": a pass (largest inscribed radius along the border of two parts) narrower
        than `neck_ratio` x the smaller part's radius separates when the two parts differ
        in colour (sum of absolute differences of their mean chromaticities r, g, b >=
        `split_colour`); narrower than `split_strict` x that radius it separates
        whatever the colour. Chambers of one test share their colour and join broadly;
        parts of one colour that join through the test wall (`_split.WALL_LEVEL`) stay
        one specimen, and parts of clearly different colour (`_split.DISTINCT_COLOUR`)
        are separated whatever the pass.
    split_level
        "neck": parts are judged on the body above this fraction of the way from the
        floor grey to the object's top grey (low, so dark sutures and an umbilicus do not
        open notches).
    split_fine
        "neck": downscale factor of the finer grid (0: automatic, `auto_split_scale`).
    split_sigma
        "neck": Gaussian smoothing on the finer grid, in its pixels.
    max_elongation
        Objects more elongated than this are flagged as artifacts (scale bars, fibres).
    work_scale
        Downscale factor for detection: an int >= 1, or 0 for automatic.
    crop_size
        Side of the square crops (224 for VGG16).
    """

    invert: bool = False
    smooth_sigma_px: float = 4.0
    threshold: float | None = None
    threshold_method: str = "background"
    background_k: float = 6.0
    background_min_margin: float = 10.0
    min_width_px: float = 12.0
    min_area_px: int | None = None
    min_area_um2: float | None = STUDY_MIN_AREA_UM2
    max_area_px: int | None = None
    mask_border: bool = True
    border_threshold: float = 70.0
    border_min_fraction: float = 0.01
    split_touching: bool = True
    split_method: str = "neck"
    neck_ratio: float = 0.7
    split_strict: float = 0.35
    # 0.005 let camera noise cut a fibre-crossed tube on one of 100 live frames; 0.01
    # left 2 % more touching specimens merged (docs/benchmarks.md, issue 16).
    split_colour: float = 0.0075
    split_level: float = 0.25
    split_fine: int = 0
    split_sigma: float = 0.0
    max_elongation: float = 8.0
    work_scale: int = 0
    crop_size: int = CROP_SIZE

    def __post_init__(self) -> None:
        if self.min_area_px is not None and self.min_area_px < 1:
            raise ValueError(f"min_area_px must be >= 1, got {self.min_area_px}")
        if self.threshold is not None and not 0 <= self.threshold <= 255:
            raise ValueError(f"threshold must be within 0-255, got {self.threshold}")
        if self.work_scale < 0:
            raise ValueError(f"work_scale must be >= 0 (0 = automatic), got {self.work_scale}")
        if self.threshold_method not in ("background", "otsu"):
            raise ValueError(
                f"threshold_method must be 'background' or 'otsu', got {self.threshold_method!r}"
            )
        if self.crop_size < 8:
            raise ValueError(f"crop_size must be >= 8, got {self.crop_size}")
        if self.split_method not in ("neck", "watershed"):
            raise ValueError(
                f"split_method must be 'neck' or 'watershed', got {self.split_method!r}"
            )
        if not 0 <= self.split_strict <= self.neck_ratio:
            raise ValueError(f"split_strict must be within 0-neck_ratio, got {self.split_strict}")
        if self.split_fine < 0:
            raise ValueError(f"split_fine must be >= 0 (0 = automatic), got {self.split_fine}")
        if self.smooth_sigma_px < 0:
            raise ValueError(f"smooth_sigma_px must be >= 0, got {self.smooth_sigma_px}")

    def effective_min_area_px(self, pixel_size_um: float | None) -> float | None:
        """Minimum area in pixels, or None where it must come from the image.

        An explicit `min_area_px` wins; else `min_area_um2` at the known pixel size.
        """
        if self.min_area_px is not None:
            return float(self.min_area_px)
        if self.min_area_um2 is not None and pixel_size_um:
            return self.min_area_um2 / (pixel_size_um**2)
        return None

    def min_area_rule(self, pixel_size_um: float | None) -> str:
        """Which rule sets the minimum area: "pixels", "um2" or "image"."""
        if self.min_area_px is not None:
            return "pixels"
        if self.min_area_um2 is not None and pixel_size_um:
            return "um2"
        return "image"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings, for provenance records."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class Detections:
    """One row per detected object (numpy columns of equal length).

    Attributes
    ----------
    label : (n,) int32
        Label value of the object in `labels`.
    centroid : (n, 2) float64
        Centre of mass (row, col) in full-resolution pixels.
    bbox : (n, 4) int64
        (min_row, min_col, max_row, max_col) in full-resolution pixels, max exclusive.
    area_px : (n,) float64
        Area in full-resolution pixels (estimated from the working scale).
    equivalent_diameter_px : (n,) float64
        Diameter of the disc with the same area.
    clipped : (n,) bool
        Touches the frame edge or the masked tray border: only part of it is visible.
    at_edge : (n,) bool
        Clipped by the frame edge (a neighbouring field may see the rest of it).
    at_border : (n,) bool
        Touches the masked tray wall (part of it may lie beneath the mask).
    artifact : (n,) bool
        Long and straight (elongation > `max_elongation`): a scale bar, ruler or fibre.
    elongation : (n,) float
        Major over minor axis of the object's second moments (1 for a disc).
    mean_color : (n, 3) float32
        Mean RGB 0-255 over the object.
    crops : (n, S, S, 3) uint8 or None
        Crops centred on each centroid, padded with the tray colour at the edges.
    masks : (n, S, S) bool or None
        The object's own mask in each crop (on request).
    labels : (h, w) int32
        Label image at the working scale (for previews); `split_lines` gives where
        touching specimens were separated.
    work_scale : int
        Downscale factor the detection ran at.
    threshold : float
        Grey level used in pass 2.
    border_mask : (h, w) bool
        Pixels masked as tray border / outside area, at the working scale.
    min_area_px : float
        The minimum area used, in full-resolution pixels.
    min_area_rule : str
        How it was set: "pixels" (given), "um2" (from the pixel size) or "image"
        (`auto_min_area_px`).
    pixel_size_um : float or None
        Micrometres per pixel, when known.
    warnings : list of str
        What may be wrong with this frame's result, one line each, for the user: an
        object the size of the frame (a tray wall or lit floor taken for an object; not
        counted in a camera frame), most of the frame masked as tray wall. Empty when
        nothing looks wrong. Per frame, not per row: `take` keeps them.
    """

    label: np.ndarray
    centroid: np.ndarray
    bbox: np.ndarray
    area_px: np.ndarray
    equivalent_diameter_px: np.ndarray
    clipped: np.ndarray
    at_edge: np.ndarray
    at_border: np.ndarray
    artifact: np.ndarray
    elongation: np.ndarray
    mean_color: np.ndarray
    crops: np.ndarray | None
    masks: np.ndarray | None
    labels: np.ndarray
    work_scale: int
    threshold: float
    border_mask: np.ndarray
    image_shape: tuple[int, ...] = ()
    params: DetectionParams = field(default_factory=DetectionParams)
    min_area_px: float = float(STUDY_MIN_AREA_PX)
    min_area_rule: str = "pixels"
    pixel_size_um: float | None = None
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def take(self, rows: np.ndarray) -> Detections:
        """A table of the given rows only (label image and settings shared)."""
        rows = np.asarray(rows, dtype=np.int64)
        return replace(
            self,
            label=self.label[rows],
            centroid=self.centroid[rows],
            bbox=self.bbox[rows],
            area_px=self.area_px[rows],
            equivalent_diameter_px=self.equivalent_diameter_px[rows],
            clipped=self.clipped[rows],
            at_edge=self.at_edge[rows],
            at_border=self.at_border[rows],
            artifact=self.artifact[rows],
            elongation=self.elongation[rows],
            mean_color=self.mean_color[rows],
            crops=None if self.crops is None else self.crops[rows],
            masks=None if self.masks is None else self.masks[rows],
        )

    @property
    def whole(self) -> np.ndarray:
        """Objects seen whole and not flagged as artifacts: the ones tallied."""
        return ~self.clipped & ~self.artifact

    def to_records(self) -> list[dict[str, Any]]:
        """JSON-ready rows (no crops)."""
        return [
            {
                "label": int(self.label[i]),
                "centroid_yx": [round(float(v), 2) for v in self.centroid[i]],
                "bbox": [int(v) for v in self.bbox[i]],
                "area_px": round(float(self.area_px[i]), 1),
                "equivalent_diameter_px": round(float(self.equivalent_diameter_px[i]), 2),
                "clipped": bool(self.clipped[i]),
                "artifact": bool(self.artifact[i]),
                "elongation": round(float(self.elongation[i]), 2),
                "mean_color": [round(float(v), 1) for v in self.mean_color[i]],
            }
            for i in range(len(self))
        ]
