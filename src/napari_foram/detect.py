"""The study's two-pass connected-component detector, and 224 x 224 crops.

Pass 1 finds the tray's bright metallic border (heavy smoothing, a fixed grey level, the
large bright components that touch the frame edge) and masks it out. Pass 2 smooths,
thresholds (automatically from the tray floor's grey levels unless a level is given),
labels connected components and keeps those of at least `min_area_px` (1024 px in the
study). Touching specimens, one component, are then separated (`split_touching`): the few
components that can hold two round parts are looked at again on a finer grid cut from the
full-resolution frame, and split at narrow necks, at middling necks between parts of
different colour, and never across a planktic's compact whorl (`_split_fine`).

Speed: both passes run on a strided, downscaled copy of the frame (`work_scale`, 4 for a
5 MP frame) because detecting a 60-200 px specimen needs far fewer pixels than the camera
delivers; centroids are scaled back and crops are cut from the full-resolution frame, so
the classifier sees every pixel. Crops are not rescaled to a fixed micrometres-per-pixel:
the study trained and predicted on native 224 px cuts at one magnification, and a model
must be used at the magnification it was trained at (the checkpoint records nothing else).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_foram.defaults import CROP_SIZE
from napari_foram.frames import check_image, to_uint8

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
# The touching-specimen splitter (`_split_fine`); figures measured on seeded synthetic
# trays with touching groups (seeds 100-107 and 200-207, not the benchmark's) and on the
# real pictures in ../shared/realdata, docs/benchmarks.md.
#: Objects whose area exceeds this many discs of their largest inscribed radius may hold
#: two specimens (a disc is 1, two touching equal discs 2) ...
CANDIDATE_FILL = 1.3
#: ... and are looked at on the finer grid only when their working-grid distance map
#: dips below this fraction of a maximum between two maxima (a round or evenly elongated
#: specimen does not). 0.75 found the same splits at 1.6 x the cost; 0.5 lost 3 in 670.
COARSE_GATE = 0.6
#: A group this compact (area over the disc of its largest extent) is split only where
#: its parts differ in colour: a planktic's last whorl (3-4 round chambers, 0.59-0.72 on
#: synthetic tests) looks like touching balls; two touching specimens are ~0.45.
COMPACT_WHOLE = 0.6
#: A part smaller than this many minimum areas (its body, inside its rim) is no specimen
#: of its own: it stays with its neighbour. 1.5 kept the small end chambers of bead-like
#: uniserial tests on (false detections 22 -> 19 of 672, merged 24 -> 25).
MIN_PART = 1.5


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
        whatever the colour. Chambers of one test share their colour and join broadly.
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
    neck_ratio: float = 0.6
    split_strict: float = 0.35
    split_colour: float = 0.01
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


def auto_work_scale(shape: tuple[int, ...], min_area_px: float) -> int:
    """Downscale factor for detection: about 320 px on the short side, and the smallest
    kept object (36 px across at 1024 px^2) still >= 5 px across.

    Measured on seeded 5 MP synthetic trays: recall, false detections and centroid error
    are the same at factors 4, 5 and 6, and factor 6 detects in about 60 % of the time of 4
    (docs/benchmarks.md).
    """
    by_size = max(1, round(min(shape[0], shape[1]) / 320))
    by_object = max(1, int(math.sqrt(max(min_area_px, 1.0)) / 5))
    return int(min(by_size, by_object))


def auto_split_scale(min_area_px: float, scale: int) -> int:
    """Downscale factor of the splitter's finer grid: the smallest kept object (a disc of
    `min_area_px`) 16 px across or more, and never coarser than the working grid.

    Tied to the object size, not the frame size, so a specimen is judged on the same
    grid in a 5 MP frame and in a crop of it. At the study's 1024 px: 2.
    """
    return int(max(1, min(scale, round(math.sqrt(max(min_area_px, 1.0)) / 16))))


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
    generic binary morphology on large masks."""
    out = ndi.maximum_filter(mask.view(np.uint8), size=2 * radius + 1, mode="constant")
    return out.view(bool)


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion by a (2r+1) square (pixels outside the frame count as set, so
    objects at the edge are not eaten from outside)."""
    out = ndi.minimum_filter(mask.view(np.uint8), size=2 * radius + 1, mode="nearest")
    return out.view(bool)


def auto_threshold(floor: np.ndarray, params: DetectionParams) -> float:
    """Automatic grey level for pass 2 over the (smoothed) tray-floor pixels.

    "background" (default): the floor's median plus `background_k` robust standard
    deviations (MAD), at least `background_min_margin` grey levels, and at most Otsu's
    level. A tray is mostly empty floor, so the median and MAD describe the floor even
    with specimens in the sample, and dark grains a few tens of grey levels above the
    floor are still found.
    "otsu": Otsu's two-class split, which on sparse trays lands between the floor and
    the bright specimens and loses dark grains; kept for images with large objects.
    """
    sample = floor[:: max(1, floor.size // 50_000)]
    if params.threshold_method == "otsu":
        return (
            _otsu(sample if not params.invert else 255 - sample)
            if not params.invert
            else 255 - _otsu(255 - sample)
        )
    base = float(np.median(sample))
    noise = 1.4826 * float(np.median(np.abs(sample - base)))
    margin = max(params.background_min_margin, params.background_k * noise)
    # On a strongly textured floor (woven cloth, sediment film) k robust SDs can exceed
    # the valley between floor and specimens; Otsu's level then caps it.
    if not params.invert:
        otsu = _otsu(sample)
        return max(base + params.background_min_margin, min(base + margin, otsu))
    otsu = 255.0 - _otsu(255.0 - sample)
    return min(base - params.background_min_margin, max(base - margin, otsu))


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


def find_border_mask(
    grey_small: np.ndarray,
    params: DetectionParams,
    scale: int,
    fine: np.ndarray | None = None,
) -> np.ndarray:
    """Pass 1: the metallic tray border and outside area, at the working scale.

    `fine` is `grey_small` lightly smoothed (pass 2's smoothing, reused when given).

    Heavy smoothing (the study used a 75 px median) leaves specimens below the border
    level while the broad bright band stays above it; a bright region counts as border when
    it is large and touches the frame edge.
    """
    h, w = grey_small.shape
    if not params.mask_border or min(h, w) < 16:
        return np.zeros((h, w), dtype=bool)
    # Smooth on an even coarser grid: the border is a broad structure.
    coarse_step = max(1, round(16 / scale))
    coarse = grey_small[::coarse_step, ::coarse_step]
    sigma = max(1.0, 75.0 / (scale * coarse_step) / 2.0)
    smooth = ndi.gaussian_filter(coarse, sigma, mode="nearest")
    level = params.border_threshold
    bright = smooth > level if not params.invert else smooth < 255 - level
    lab, n = ndi.label(bright)
    if n == 0:
        return np.zeros((h, w), dtype=bool)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    # How long each component runs along the frame edge. A wall is a band along a side
    # (contact >> sqrt(area)); a big specimen cut by the edge is a compact blob whose
    # contact is about its diameter (contact / sqrt(area) ~ 1.6 for a half disc; a band
    # of thickness t along a side of length L gives sqrt(L / t), 3 or more for walls).
    contact = np.bincount(
        np.concatenate([lab[0, :], lab[-1, :], lab[1:-1, 0], lab[1:-1, -1]]), minlength=n + 1
    )
    band_like = contact >= 2.0 * np.sqrt(np.maximum(sizes, 1))
    keep = (sizes >= params.border_min_fraction * lab.size) & (contact > 0) & band_like
    keep[0] = False
    if not keep.any():
        return np.zeros((h, w), dtype=bool)
    coarse_mask = keep[lab]
    # The heavy blur spreads the wall's glow far into the tray. Refine at the working
    # scale: inside a zone around the coarse wall, the wall is what is really bright and
    # connected to the frame edge; a specimen near the wall is its own component and stays.
    coarse_zone = _dilate(coarse_mask, 2)
    rows = np.minimum(np.arange(h) // coarse_step, coarse_mask.shape[0] - 1)
    cols = np.minimum(np.arange(w) // coarse_step, coarse_mask.shape[1] - 1)
    zone = coarse_zone[np.ix_(rows, cols)]
    if fine is None:
        fine = ndi.gaussian_filter(grey_small, 1.0, mode="nearest", truncate=3.0)
    fine_bright = (fine > level) if not params.invert else (fine < 255 - level)
    fine_lab, n_fine = ndi.label(fine_bright & zone)
    if n_fine == 0:
        return np.zeros((h, w), dtype=bool)
    fine_edge = np.zeros(n_fine + 1, dtype=bool)
    for side in (fine_lab[0, :], fine_lab[-1, :], fine_lab[:, 0], fine_lab[:, -1]):
        fine_edge[np.unique(side)] = True
    fine_edge[0] = False
    # A specimen near the wall and cut by the frame edge is also bright and touches the
    # edge; the wall is the part that lies mostly inside the coarse wall band itself.
    core = coarse_mask[np.ix_(rows, cols)]
    sizes_fine = np.bincount(fine_lab.ravel(), minlength=n_fine + 1)
    in_core = np.bincount(fine_lab[core], minlength=n_fine + 1)
    fine_edge &= in_core >= 0.5 * np.maximum(sizes_fine, 1)
    wall = fine_edge[fine_lab]
    # The dark area beyond the wall (outside the tray) is below any detection threshold,
    # so it needs no mask of its own.
    # One pixel of margin: the wall's anti-aliased rim must not become a thin "object".
    return _dilate(wall, 1)


def _fill_holes(binary: np.ndarray) -> np.ndarray:
    """Fill enclosed background (faster than ndi.binary_fill_holes' iterated dilation)."""
    background, n = ndi.label(~binary)
    if n <= 1:
        return binary
    edge = np.unique(
        np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    )
    enclosed = np.ones(n + 1, dtype=bool)
    enclosed[edge] = False
    enclosed[0] = False
    return binary | enclosed[background]


def _refine_outlines(
    labels: np.ndarray,
    smooth: np.ndarray,
    floor_level: float,
    level: float,
    invert: bool,
    fraction: float = 0.5,
) -> np.ndarray:
    """Trim each object to where it is brighter than half-way from floor to its own top.

    The automatic level sits just above the floor so that dark grains are found; for a
    bright specimen that level lies on the blurred skirt of its outline and would inflate
    its area. Half-height between the floor and the object's 90th-percentile grey gives
    the same outline for dim and bright specimens.
    """
    sign = -1.0 if invert else 1.0
    fg = np.flatnonzero(labels)
    lab = labels.ravel()[fg]
    values = sign * smooth.ravel()[fg]
    # Each object's 90th percentile from one (label x grey level) histogram: one bincount
    # instead of a sort or a per-object loop. Grey levels are 0-255, so 256 bins are exact
    # to one grey level.
    n = int(labels.max())
    levels = np.clip(values if not invert else values + 255.0, 0, 255).astype(np.int64)
    hist = np.bincount(lab * 256 + levels, minlength=(n + 1) * 256).reshape(n + 1, 256)
    cum = np.cumsum(hist, axis=1)
    counts = cum[:, -1]
    rank = np.ceil(0.9 * counts)[:, None]
    top_level = (cum < rank).sum(axis=1).astype(np.float64)
    top = top_level if not invert else top_level - 255.0
    top[counts == 0] = np.inf
    floor_s, level_s = sign * floor_level, sign * level
    local = np.maximum(level_s, floor_s + fraction * (top - floor_s))
    out = labels.copy()
    out.ravel()[fg[values <= local[lab]]] = 0
    return out


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


def split_at_necks(
    labels: np.ndarray,
    neck_ratio: float,
    min_radius: float = 1.0,
) -> tuple[np.ndarray, int]:
    """Split objects only where a narrow neck joins two round parts.

    Each object's distance transform has one maximum per round part. Basins of a watershed
    from every maximum are merged back, widest pass first, while the pass between two
    basins (the largest inscribed radius along their shared boundary) is at least
    `neck_ratio` times the smaller basin's own largest radius. Chambers of one test
    overlap broadly (pass ~0.7-0.9 of the chamber radius) and are merged again; specimens
    that merely touch or overlap a little meet at a narrow neck and stay apart. An
    elongated specimen has a ridge of nearly equal maxima: its passes are ~1, so it stays
    whole.

    Only objects that can hold two parts are examined, each in its own bounding box, so
    the cost follows the few candidates and not the frame.

    Parameters
    ----------
    labels
        Label image of the objects (0 = background).
    neck_ratio
        Pass radius over the smaller part's radius below which parts are separated.
    min_radius
        Parts narrower than this (px) are never separated (bumps of the outline).

    Returns
    -------
    labels, n
        New label image (objects numbered 1..n) and the number of objects.
    """
    n = int(labels.max())
    if n == 0:
        return labels, 0
    out: np.ndarray | None = None
    next_label = n + 1
    distance = ndi.distance_transform_edt(labels > 0).astype(np.float32)
    for i, sl in _candidate_boxes(labels, distance, n, min_radius):
        mask = labels[sl] == i
        parts = _neck_parts(mask, distance[sl], neck_ratio, min_radius)
        if parts is None:
            continue
        if out is None:
            out = labels.astype(np.int64, copy=True)
        # Part 1 keeps the object's label; further parts get new ones.
        new = np.where(parts > 1, parts - 2 + next_label, i)
        out[sl][mask] = new[mask]
        next_label += int(parts.max()) - 1
    if out is None:
        return labels, n
    final = _renumber(out)
    return final, int(final.max())


def _candidate_boxes(
    body: np.ndarray, distance: np.ndarray, n: int, min_radius: float
) -> list[tuple[int, tuple[slice, slice]]]:
    """(label, padded bounding box) of the objects whose body can hold two round parts.

    A disc has area / (pi r^2) ~ 1 for its largest inscribed radius r, two touching equal
    discs ~ 2: round objects (most of a tray) are passed over without further work.
    """
    fg = np.flatnonzero(body)
    lab = body.ravel()[fg]
    area = np.bincount(lab, minlength=n + 1).astype(np.float64)
    rmax = np.zeros(n + 1, dtype=np.float64)
    np.maximum.at(rmax, lab, distance.ravel()[fg])
    candidate = (area > CANDIDATE_FILL * np.pi * rmax**2) & (rmax >= 2 * min_radius)
    candidate[0] = False
    if not candidate.any():
        return []
    h, w = body.shape
    boxes = []
    for i, sl in enumerate(ndi.find_objects(body, max_label=n), start=1):
        if sl is None or not candidate[i]:
            continue
        y, x = sl
        box = (
            slice(max(y.start - 1, 0), min(y.stop + 1, h)),
            slice(max(x.start - 1, 0), min(x.stop + 1, w)),
        )
        boxes.append((i, box))
    return boxes


def _neck_parts(
    mask: np.ndarray,
    distance: np.ndarray,
    neck_ratio: float,
    min_radius: float,
    chroma: np.ndarray | None = None,
    strict_ratio: float = 0.0,
    min_colour_step: float = 0.0,
    min_part_area: float = 0.0,
) -> np.ndarray | None:
    """Parts (1..k) of one object's mask split at narrow necks; None when it stays whole.

    `distance` is the object's distance transform, cropped like `mask` (only values
    inside `mask` are used).
    """
    distance = np.where(mask, distance, 0.0).astype(np.float32)
    peaks = (distance >= ndi.maximum_filter(distance, size=3)) & (distance >= min_radius)
    if not _may_have_neck(distance, peaks, neck_ratio):
        return None
    markers, n_markers = ndi.label(peaks, structure=np.ones((3, 3), bool))
    if n_markers < 2:
        return None
    from skimage.segmentation import watershed

    basins = watershed(-distance, markers, mask=mask).astype(np.int32)
    peak = np.zeros(n_markers + 1, dtype=np.float64)
    np.maximum.at(peak, basins[mask], distance[mask])
    # The pass between two basins: over their 4-connected contacts, the largest of the
    # smaller distance either side.
    keys, passes = [], []
    for a, b, da, db in (
        (basins[1:, :], basins[:-1, :], distance[1:, :], distance[:-1, :]),
        (basins[:, 1:], basins[:, :-1], distance[:, 1:], distance[:, :-1]),
    ):
        contact = (a != b) & (a > 0) & (b > 0)
        lo = np.minimum(a[contact], b[contact]).astype(np.int64)
        hi = np.maximum(a[contact], b[contact]).astype(np.int64)
        keys.append(lo * (n_markers + 1) + hi)
        passes.append(np.minimum(da[contact], db[contact]))
    key = np.concatenate(keys)
    value = np.concatenate(passes)
    # Largest pass per pair of basins.
    order = np.lexsort((-value, key))
    key, value = key[order], value[order]
    first = np.ones(key.size, dtype=bool)
    first[1:] = key[1:] != key[:-1]
    key, value = key[first], value[first]
    pa, pb = key // (n_markers + 1), key % (n_markers + 1)
    ratio = value / np.maximum(np.minimum(peak[pa], peak[pb]), 1e-6)
    parent = list(range(n_markers + 1))
    top = peak.tolist()
    part_area = np.bincount(basins[mask], minlength=n_markers + 1).astype(np.float64)
    colour: np.ndarray | None = None
    if chroma is not None:
        flat = basins[mask]
        weight = np.bincount(flat, minlength=n_markers + 1).astype(np.float64)
        sums = np.stack(
            [
                np.bincount(flat, weights=chroma[..., c][mask], minlength=n_markers + 1)
                for c in range(chroma.shape[-1])
            ],
            axis=1,
        )
        colour = np.concatenate([sums, weight[:, None]], axis=1)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # Widest passes first; a merged basin's radius is that of its widest part.
    for k in np.argsort(-ratio, kind="stable").tolist():
        ra, rb = root(int(pa[k])), root(int(pb[k]))
        if ra == rb:
            continue
        small = min(top[ra], top[rb])
        merge = (
            value[k] >= neck_ratio * small
            or small < min_radius
            or min(part_area[ra], part_area[rb]) < min_part_area
        )
        if not merge and colour is not None and value[k] >= strict_ratio * small:
            # A neck of middling width: one specimen's chambers unless the two sides
            # differ in colour (two specimens). Wide passes merge whatever the colour:
            # real specimens are stained or mottled (a rose-Bengal foram was cut in two
            # when colour alone could split).
            ca = colour[ra, :-1] / max(colour[ra, -1], 1.0)
            cb = colour[rb, :-1] / max(colour[rb, -1], 1.0)
            merge = float(np.abs(ca - cb).sum()) < min_colour_step
        if merge:
            parent[rb] = ra
            top[ra] = max(top[ra], top[rb])
            part_area[ra] += part_area[rb]
            if colour is not None:
                colour[ra] += colour[rb]
    roots = np.array([root(i) for i in range(n_markers + 1)])
    roots[0] = 0
    parts = _renumber(roots[basins])
    return parts if int(parts.max()) > 1 else None


#: 24 points along a straight line from one peak to another (`_may_have_neck`).
_LINE_STEPS = np.linspace(0.0, 1.0, 24, dtype=np.float32)[:, None]


def _may_have_neck(distance: np.ndarray, peaks: np.ndarray, neck_ratio: float) -> bool:
    """Cheap necessary test for a neck: some peak q is joined to the highest peak p by a
    straight line that dips below `neck_ratio` x d(q) (with slack for the pixel grid).

    Any split leaves the highest peak's part apart from another part across a pass lower
    than `neck_ratio` x that part's peak; every path between them, the straight one
    included, then dips that low. Elongated specimens (a ridge of maxima) fail this test
    and skip the watershed, which is most of the splitter's cost.
    """
    qy, qx = np.nonzero(peaks)
    if qy.size < 2:
        return False
    p = int(np.argmax(distance))
    py, px = divmod(p, distance.shape[1])
    ys = np.rint(py + _LINE_STEPS * (qy - py)).astype(np.intp)
    xs = np.rint(px + _LINE_STEPS * (qx - px)).astype(np.intp)
    dip = distance[ys, xs].min(axis=0)
    return bool(np.any(dip < 1.2 * neck_ratio * distance[qy, qx] + 0.5))


def _split_fine(
    img: np.ndarray,
    labels: np.ndarray,
    scale: int,
    floor_level: float,
    params: DetectionParams,
    min_radius: float,
    min_area: float,
) -> tuple[np.ndarray, int]:
    """Split components at necks judged on a finer grid than the detection's.

    At the working scale (6 on a 5 MP frame) the blur fills the notch where two
    specimens touch, so necks read wide. Only the components that can hold two round
    parts (`_candidate_boxes`) and whose distance map dips between its maxima are
    looked at again, each in its own box cut from the full-resolution frame
    (`_object_parts`). Every pixel of a split component goes to the nearest part, so
    the blurred skirt follows its own specimen. Returns (labels, n).
    """
    n = int(labels.max())
    fine = params.split_fine or auto_split_scale(min_area, scale)
    distance = ndi.distance_transform_edt(labels > 0).astype(np.float32)
    boxes = _candidate_boxes(labels, distance, n, min_radius)
    if boxes and COARSE_GATE > 0:
        # Cheap first look on the working grid: an object whose distance map has no
        # dip between its maxima (a round or evenly elongated specimen, most of a
        # tray) has no neck on the finer grid either. Maxima for the whole frame at
        # once (objects are apart, so a 3 x 3 window never sees two).
        peaks = (distance >= ndi.maximum_filter(distance, size=3)) & (distance >= min_radius)
        boxes = [
            (i, sl)
            for i, sl in boxes
            if _may_have_neck(
                np.where(labels[sl] == i, distance[sl], 0.0),
                peaks[sl] & (labels[sl] == i),
                COARSE_GATE,
            )
        ]
    new_labels: np.ndarray | None = None
    next_label = n + 1
    for i, sl in boxes:
        own = labels[sl] == i
        near = _object_parts(img, own, sl, scale, fine, floor_level, params, min_radius, min_area)
        if near is None:
            continue
        if new_labels is None:
            new_labels = labels.astype(np.int64, copy=True)
        k = int(near.max())
        relabel = np.concatenate(([0, i], np.arange(next_label, next_label + k - 1)))
        next_label += k - 1
        new_labels[sl][own] = relabel[near[own]]
    if new_labels is None:
        return labels, n
    final = _renumber(new_labels)
    return final, int(final.max())


def _object_parts(
    img: np.ndarray,
    own: np.ndarray,
    sl: tuple[slice, slice],
    scale: int,
    fine: int,
    floor_level: float,
    params: DetectionParams,
    min_radius: float,
    min_area: float,
) -> np.ndarray | None:
    """One object's parts on the working grid's box (0 outside, 1..k), or None when it
    stays whole.

    The object's box is cut from the full-resolution frame at every `fine`-th pixel:
    there the body (the pixels above `split_level` of the way from the floor grey to the
    object's top grey) shows the notch that the working grid's blur fills, and
    `_neck_parts` separates its parts (with the colour cue of `split_strict`). A compact
    object is split only by colour (`COMPACT_WHOLE`).
    """
    sign = -1.0 if params.invert else 1.0
    ratio = scale / fine
    y0, x0 = sl[0].start * scale, sl[1].start * scale
    patch = img[y0 : sl[0].stop * scale : fine, x0 : sl[1].stop * scale : fine]
    grey, _ = _grey_small(patch, 1)
    grey = sign * grey
    if params.split_sigma > 0:
        grey = ndi.gaussian_filter(grey, params.split_sigma, mode="nearest")
    hh, ww = grey.shape
    ry = np.minimum((np.arange(hh) * fine) // scale, own.shape[0] - 1)
    rx = np.minimum((np.arange(ww) * fine) // scale, own.shape[1] - 1)
    up = own[np.ix_(ry, rx)]
    vals = grey[up]
    if vals.size == 0:
        return None
    k = int(0.9 * (vals.size - 1))
    top = float(np.partition(vals, k)[k])  # the 90th percentile, without a sort
    fl = sign * floor_level
    # A dark chamber or umbilicus must not open a hole that reads as a neck.
    body = _fill_holes(up & (grey > fl + params.split_level * (top - fl)))
    dist = ndi.distance_transform_edt(body).astype(np.float32)
    chroma = None
    if params.split_strict > 0 and patch.ndim == 3 and patch.shape[2] >= 3:
        rgb = patch[:, :, :3].astype(np.float32)
        chroma = rgb / np.maximum(rgb.sum(axis=2, keepdims=True), 1.0)
    parts = _neck_parts(
        body,
        dist,
        params.neck_ratio,
        min_radius * ratio,
        chroma,
        params.split_strict,
        params.split_colour,
        MIN_PART * min_area / (fine * fine),
    )
    if parts is not None and _compactness(up) >= COMPACT_WHOLE:
        # A round group of round parts is how a planktic's last whorl looks: only a
        # colour difference tells two specimens there.
        parts = _colour_parts(parts, chroma, params.split_colour)
    if parts is None:
        return None
    _, (iy, ix) = ndi.distance_transform_edt(parts == 0, return_indices=True)
    near = parts[iy, ix]
    cy = np.minimum((np.arange(own.shape[0]) * scale) // fine, hh - 1)
    cx = np.minimum((np.arange(own.shape[1]) * scale) // fine, ww - 1)
    return np.where(own, near[np.ix_(cy, cx)], 0)


def _cut_components(
    components: np.ndarray, labels: np.ndarray, outline: np.ndarray, border: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per component before the split (indexed by its label): whether one of its parts
    reaches the frame edge, and whether one touches the masked wall (on the half-height
    outline, as `clipped` is judged)."""
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


def _colour_parts(
    parts: np.ndarray, chroma: np.ndarray | None, min_step: float
) -> np.ndarray | None:
    """Parts merged again where their mean colours differ by less than `min_step`
    (None: one part left, or no colour to judge by)."""
    if chroma is None:
        return None
    k = int(parts.max())
    inside = parts > 0
    flat = parts[inside]
    count = np.bincount(flat, minlength=k + 1).astype(np.float64)
    mean = (
        np.stack(
            [np.bincount(flat, weights=chroma[..., c][inside], minlength=k + 1) for c in range(3)],
            axis=1,
        )
        / np.maximum(count, 1.0)[:, None]
    )
    group = np.arange(k + 1)
    for a in range(1, k + 1):
        for b in range(a + 1, k + 1):
            if np.abs(mean[a] - mean[b]).sum() < min_step:
                group[group == group[b]] = group[a]
    merged = _renumber(group[parts])
    return merged if int(merged.max()) > 1 else None


def _compactness(mask: np.ndarray) -> float:
    """Area over the disc spanning the largest extent (Feret diameter): 1 for a disc,
    ~0.5 for two touching discs, ~0.6-0.8 for a planktic's whorl of chambers."""
    edge = mask & ~_erode(mask, 1)
    ys, xs = np.nonzero(edge)
    if ys.size < 3:
        return 1.0
    pts = np.stack([ys, xs], axis=1).astype(np.float64)
    # Extreme points along 32 directions hold the diameter (to within 0.5 %).
    angles = np.linspace(0.0, np.pi, 32, endpoint=False)
    proj = pts @ np.stack([np.sin(angles), np.cos(angles)])
    feret = float((proj.max(axis=0) - proj.min(axis=0)).max()) + 1.0
    return float(mask.sum()) / (np.pi * feret * feret / 4.0)


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n in order of value, 0 kept (a lookup table, no sort)."""
    present = np.bincount(labels.ravel()) > 0
    present[0] = False
    lut = np.cumsum(present).astype(np.int32)
    lut[0] = 0
    return lut[labels]


def detect(
    image: np.ndarray,
    params: DetectionParams | None = None,
    *,
    pixel_size_um: float | None = None,
    crops: bool = True,
    masks: bool = False,
    bit_depth: int | None = None,
    **overrides: Any,
) -> Detections:
    """Find specimens in one frame and cut a crop around each.

    Parameters
    ----------
    image : (H, W) or (H, W, 3|4) array, uint8, uint16 or float
        The frame. 16-bit and float data are scaled to 0-255 first; alpha is ignored.
    params
        Detector settings; keyword `overrides` replace single fields.
    pixel_size_um
        Micrometres per pixel (from the microscope or the file's metadata,
        `pixelsize.read_pixel_size`): the minimum area is then `params.min_area_um2`.
        None: unless `params.min_area_px` is given, the minimum comes from the image
        (`auto_min_area_px`).
    crops, masks
        Cut (S, S, 3) crops / (S, S) object masks at full resolution.
    bit_depth
        Significant bits of integer data wider than 8 bits, when the camera says
        (`frames.to_uint8`): a dim frame then stays dim. None: the smallest common
        camera depth that holds the data.

    Returns
    -------
    Detections
        One row per object, clipped ones included and flagged.

    Raises
    ------
    ValueError
        Empty, 1-D, 4-D, all-NaN or otherwise unusable input (one-line reason).

    Examples
    --------
    >>> import numpy as np
    >>> frame = np.zeros((300, 300), np.uint8)
    >>> frame[100:160, 120:180] = 200
    >>> det = detect(frame, mask_border=False)
    >>> len(det), det.crops.shape
    (1, (1, 224, 224, 3))
    """
    check_image(image)
    params = params or DetectionParams()
    if overrides:
        params = replace(params, **overrides)
    img = to_uint8(image, bit_depth)
    height, width = img.shape[:2]
    given_min_area = params.effective_min_area_px(pixel_size_um)
    rule = params.min_area_rule(pixel_size_um)
    min_area = given_min_area if given_min_area is not None else float(STUDY_MIN_AREA_PX)
    scale = params.work_scale or auto_work_scale(img.shape, min_area)

    grey, rgb_small = _grey_small(img, scale)
    sigma = params.smooth_sigma_px / scale
    smooth = (
        ndi.gaussian_filter(grey, sigma, mode="nearest", truncate=3.0) if sigma > 0.3 else grey
    )
    border = find_border_mask(grey, params, scale, fine=smooth)
    floor = smooth[~border] if not border.all() else smooth.ravel()
    floor_level = float(np.median(floor[:: max(1, floor.size // 50_000)]))
    level = params.threshold if params.threshold is not None else auto_threshold(floor, params)
    binary = smooth > level if not params.invert else smooth < level
    binary &= ~border
    if params.min_width_px > 0:
        # Lint and fibres are long but thin: an opening removes them, and cuts a fibre
        # lying against a specimen off it, while specimens survive.
        radius = max(1, round(params.min_width_px / (2 * scale)))
        binary = _dilate(_erode(binary, radius), radius)
    # A dark chamber or a translucent wall must not punch a hole in a specimen (nor leave
    # a bright island inside it to be counted as a second object).
    binary = _fill_holes(binary)

    labels, n = ndi.label(binary)
    if given_min_area is None:
        min_area = auto_min_area_px(labels, n, scale)
        finer = auto_work_scale(img.shape, min_area)
        if not params.work_scale and finer < scale:
            # Small objects (a low magnification) need a finer working grid: run again
            # with the minimum this image gave.
            det = detect(
                img,
                replace(params, min_area_px=max(1, round(min_area)), work_scale=finer),
                crops=crops,
                masks=masks,
            )
            return replace(det, params=params, min_area_rule=rule, pixel_size_um=pixel_size_um)
    min_area_small = min_area / (scale * scale)
    if n and params.split_touching and params.split_method == "watershed":
        labels = _split_touching(binary, labels, math.sqrt(4 * min_area_small / math.pi))
        n = int(labels.max())
    # Centroids, boxes and masks come from the full component (its blurred skirt is
    # symmetric, so the centre is right); areas from the half-height outline.
    components: np.ndarray | None = None  # before a split: which objects were one
    if n and params.split_touching and params.split_method == "neck":
        components = labels
        labels, n = _split_fine(img, labels, scale, floor_level, params, 1.5, min_area)
    # After the split: each specimen's outline is cut at its own top grey, so a dark
    # grain that touched a bright test keeps its area.
    outline = labels
    if n and params.threshold is None:
        outline = _refine_outlines(labels, smooth, floor_level, level, params.invert)
    cut = _cut_components(components, labels, outline, border) if components is not None else None
    if n:
        sizes = np.bincount(outline.ravel(), minlength=n + 1).astype(np.float64)
        keep = sizes >= min_area_small
        if params.max_area_px is not None:
            keep &= sizes <= params.max_area_px / (scale * scale)
        keep[0] = False
        relabel = np.zeros(n + 1, dtype=np.int32)
        relabel[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        labels = relabel[labels]
        outline = relabel[outline]
        n = int(keep.sum())
    labels = labels.astype(np.int32, copy=False)

    if n == 0:
        empty = _empty(labels, scale, float(level), border, img.shape, params, crops, masks)
        return replace(
            empty, min_area_px=min_area, min_area_rule=rule, pixel_size_um=pixel_size_um
        )

    index = np.arange(1, n + 1)
    # Everything per object from the foreground pixels only (a tenth of the frame).
    fg = np.flatnonzero(labels)
    flat = labels.ravel()[fg]
    rows_fg, cols_fg = np.divmod(fg, labels.shape[1])
    rows_fg = rows_fg.astype(np.float64)
    cols_fg = cols_fg.astype(np.float64)
    counts = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    cy = np.bincount(flat, weights=rows_fg, minlength=n + 1)[1:] / counts
    cx = np.bincount(flat, weights=cols_fg, minlength=n + 1)[1:] / counts
    # Second central moments give each object's elongation (major / minor axis).
    dy = rows_fg - cy[flat - 1]
    dx = cols_fg - cx[flat - 1]
    myy = np.bincount(flat, weights=dy * dy, minlength=n + 1)[1:] / counts
    mxx = np.bincount(flat, weights=dx * dx, minlength=n + 1)[1:] / counts
    mxy = np.bincount(flat, weights=dx * dy, minlength=n + 1)[1:] / counts
    half_trace, det_term = (myy + mxx) / 2, np.sqrt(((myy - mxx) / 2) ** 2 + mxy**2)
    elongation = np.sqrt((half_trace + det_term) / np.maximum(half_trace - det_term, 1e-6))
    # Pixel (i, j) of the strided copy samples full-resolution pixel (i*s, j*s).
    centroid = np.stack([cy * scale, cx * scale], axis=1)
    rgb_fg = rgb_small.reshape(-1, 3)[fg].astype(np.float64)
    mean_color = np.stack(
        [np.bincount(flat, weights=rgb_fg[:, c], minlength=n + 1)[1:] / counts for c in range(3)],
        axis=1,
    ).astype(np.float32)
    slices = ndi.find_objects(labels)
    bbox = np.array(
        [
            [
                sl[0].start * scale,
                sl[1].start * scale,
                min(height, sl[0].stop * scale),
                min(width, sl[1].stop * scale),
            ]
            for sl in slices
        ],
        dtype=np.int64,
    )
    area = np.bincount(outline.ravel(), minlength=n + 1)[1:].astype(np.float64) * scale * scale
    # Clipped: touches the frame edge, or the masked border (part of it may lie beneath).
    # Judged on the half-height outline: the blurred skirt of a specimen a few pixels from
    # the edge reaches it, the specimen itself does not.
    edge_labels = np.concatenate([outline[0], outline[-1], outline[:, 0], outline[:, -1]])
    clipped = np.zeros(n, dtype=bool)
    on_edge = np.unique(edge_labels)
    clipped[on_edge[on_edge > 0] - 1] = True
    at_edge = clipped.copy()
    at_border = np.zeros(n, dtype=bool)
    if border.any():
        halo = _dilate(border, 1) & ~border
        touching = np.unique(outline[halo])
        clipped[touching[touching > 0] - 1] = True
        at_border[touching[touching > 0] - 1] = True
    if cut is not None and components is not None:
        # A part split off a specimen cut by the frame edge or the wall is no whole
        # specimen: every part of such a component is clipped, as it was unsplit (the
        # part that touched the edge may be gone, smaller than the minimum).
        parent = np.zeros(n + 1, dtype=np.int64)
        parent[flat] = components.ravel()[fg]
        at_edge |= cut[0][parent[1:]]
        at_border |= cut[1][parent[1:]]
        clipped = at_edge | at_border
    # Scale bars, rulers and fibres that survived the opening are long and straight; no
    # foraminifer or grain is 8 times longer than wide.
    artifact = elongation > params.max_elongation
    # A scale bar's label ("100 um") sits beside the bar: small objects within half a bar
    # length of one are annotation too.
    for a in np.flatnonzero(artifact):
        length = float(np.hypot(bbox[a, 2] - bbox[a, 0], bbox[a, 3] - bbox[a, 1]))
        near = np.hypot(*(centroid - centroid[a]).T) < 0.6 * length
        artifact |= near & (area < area[a])

    background = _background_colour(img, rgb_small, labels, border)
    crop_arr = cut_crops(img, centroid, params.crop_size, fill=background) if crops else None
    mask_arr = _cut_masks(labels, index, centroid, scale, params.crop_size) if masks else None
    return Detections(
        label=index.astype(np.int32),
        centroid=centroid,
        bbox=bbox,
        area_px=area,
        equivalent_diameter_px=np.sqrt(4.0 * area / np.pi),
        clipped=clipped,
        at_edge=at_edge,
        at_border=at_border,
        artifact=artifact,
        elongation=elongation,
        mean_color=mean_color,
        crops=crop_arr,
        masks=mask_arr,
        labels=labels,
        work_scale=scale,
        threshold=float(level),
        border_mask=border,
        image_shape=tuple(img.shape),
        params=params,
        min_area_px=float(min_area),
        min_area_rule=rule,
        pixel_size_um=pixel_size_um,
    )


def auto_min_area_px(labels: np.ndarray, n: int, scale: int) -> float:
    """Minimum object area (full-resolution px) derived from the frame itself.

    Rule: 0.2 x the area-weighted median area of the frame's connected objects (the size
    of the object a typical foreground pixel belongs to, which many small specks of dust
    do not move), kept within 100 px and the study's 1024 px. A tray holds one sieve
    fraction, so its specimens are within a few times of each other in diameter; a fifth
    of the typical area is a specimen of less than half the typical diameter. The cap
    keeps the study's behaviour at its own and higher magnifications; at lower ones
    (grains 30 px across) the minimum shrinks with the objects.
    """
    if n == 0:
        return float(STUDY_MIN_AREA_PX)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64)
    sizes = np.sort(sizes * scale * scale)
    sizes = sizes[sizes >= AUTO_MIN_AREA_FLOOR_PX]
    if sizes.size == 0:
        return float(STUDY_MIN_AREA_PX)
    cum = np.cumsum(sizes)
    typical = float(sizes[np.searchsorted(cum, 0.5 * cum[-1])])
    return float(
        np.clip(AUTO_MIN_AREA_FRACTION * typical, AUTO_MIN_AREA_FLOOR_PX, STUDY_MIN_AREA_PX)
    )


def split_lines(labels: np.ndarray) -> np.ndarray:
    """Pixels where two different objects meet (bool, same shape): the cuts that
    separated touching specimens, for previews."""
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


def _empty(
    labels: np.ndarray,
    scale: int,
    level: float,
    border: np.ndarray,
    shape: tuple[int, ...],
    params: DetectionParams,
    crops: bool,
    masks: bool,
) -> Detections:
    s = params.crop_size
    return Detections(
        label=np.zeros(0, np.int32),
        centroid=np.zeros((0, 2)),
        bbox=np.zeros((0, 4), np.int64),
        area_px=np.zeros(0),
        equivalent_diameter_px=np.zeros(0),
        clipped=np.zeros(0, bool),
        at_edge=np.zeros(0, bool),
        at_border=np.zeros(0, bool),
        artifact=np.zeros(0, bool),
        elongation=np.zeros(0),
        mean_color=np.zeros((0, 3), np.float32),
        crops=np.zeros((0, s, s, 3), np.uint8) if crops else None,
        masks=np.zeros((0, s, s), bool) if masks else None,
        labels=labels,
        work_scale=scale,
        threshold=level,
        border_mask=border,
        image_shape=tuple(shape),
        params=params,
    )


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
