"""`detect` itself: pass 2 (the specimens) after pass 1 (`_wall`), the minimum size
rules, the split of touching specimens (`_fine_split`), and the table of what was found
with its warnings (crops from `_crops`).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_foram.detect._crops import _background_colour, _cut_masks, cut_crops
from napari_foram.detect._fine_split import _split_fine
from napari_foram.detect._image import _dilate, _erode, _fill_holes, _grey_small, _otsu
from napari_foram.detect._params import (
    AUTO_MIN_AREA_FLOOR_PX,
    AUTO_MIN_AREA_FRACTION,
    PICTURE_MAX_SIDE,
    STUDY_MIN_AREA_PX,
    DetectionParams,
    Detections,
    equivalent_diameter,
)
from napari_foram.detect._split_marks import _cut_components, _split_touching
from napari_foram.detect._wall import find_border_mask, find_wall_bands
from napari_foram.frames import check_image, to_uint8

#: A scale bar spans less than this fraction of the frame's height and of its width,
#: and its label is at most this many objects ("100", "um").
SCALE_BAR_MAX_SPAN = 0.9
SCALE_BAR_MAX_LABELS = 3
#: In a camera frame, holes in pass 2's objects larger than this fraction of the frame
#: stay open (`detect`).
HOLE_MAX_FRACTION = 0.25
#: One object over this fraction of the frame's area ...
FRAME_OBJECT_AREA = 0.4
#: ... or whose box spans this fraction of the frame's height and of its width is no
#: specimen of a tray: detection says so (`Detections.warnings`).
FRAME_OBJECT_SPAN = 0.9
#: The tray wall masked over more than this fraction of the frame is worth a warning.
WALL_WARN_FRACTION = 0.6
#: More than this fraction of the frame beyond the "floor" grey, away from the
#: specimens' side, by this many times pass 2's margin is worth a warning
#: (`_floor_warnings`; a dull or black tray wall lies one or two margins below it).
FLOOR_BELOW_FRACTION = 0.15
FLOOR_BELOW_MARGINS = 3.0


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


def _floor_and_level(
    smooth: np.ndarray, border: np.ndarray, params: DetectionParams
) -> tuple[float, float]:
    """The tray floor's median grey and pass 2's level, from the pixels outside `border`."""
    floor = smooth[~border] if not border.all() else smooth.ravel()
    floor_level = float(np.median(floor[:: max(1, floor.size // 50_000)]))
    level = params.threshold if params.threshold is not None else auto_threshold(floor, params)
    return floor_level, float(level)


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
    band = find_wall_bands(grey, smooth, border, params, scale)
    border |= band
    floor_level, level = _floor_and_level(smooth, border, params)
    # Pictures of one specimen (neither side longer than `PICTURE_MAX_SIDE`) are often
    # half specimen, half background, or all plate: their "floor" is judged only when
    # nothing whole was found in them (below), their wall never.
    camera_frame = max(height, width) > PICTURE_MAX_SIDE
    frame_warnings = _floor_warnings(smooth, floor_level, level, params.invert)
    if camera_frame:
        frame_warnings += _wall_warnings(border)
    binary = smooth > level if not params.invert else smooth < level
    binary &= ~border
    if params.min_width_px > 0:
        # Lint and fibres are long but thin: an opening removes them, and cuts a fibre
        # lying against a specimen off it, while specimens survive.
        radius = max(1, round(params.min_width_px / (2 * scale)))
        binary = _dilate(_erode(binary, radius), radius)
    # A dark chamber or a translucent wall must not punch a hole in a specimen (nor leave
    # a bright island inside it to be counted as a second object). In a camera frame no
    # specimen's hole is a quarter of the frame: a hole that large is the tray floor
    # inside a ring the wall pass missed, and filling it would make every specimen on
    # it part of one object. (A picture of one ring-shaped specimen may have one.)
    binary = _fill_holes(binary, int(HOLE_MAX_FRACTION * binary.size) if camera_frame else None)

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
        labels = _split_touching(binary, labels, equivalent_diameter(min_area_small))
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
            empty,
            min_area_px=min_area,
            min_area_rule=rule,
            pixel_size_um=pixel_size_um,
            warnings=frame_warnings,
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
    # length of one are annotation too. Only beside a bar: a streak of the tray wall's
    # lit rim (against the wall mask) or a band running from one side of the frame to
    # the other (an unmasked wall, a fibre across the frame) is no bar, and a label is a
    # word or two: a long streak with a row of specimens beside it is no bar either.
    span = np.maximum((bbox[:, 2] - bbox[:, 0]) / height, (bbox[:, 3] - bbox[:, 1]) / width)
    bars = artifact & ~at_border & (span < SCALE_BAR_MAX_SPAN)
    for a in np.flatnonzero(bars):
        length = float(np.hypot(bbox[a, 2] - bbox[a, 0], bbox[a, 3] - bbox[a, 1]))
        label = (np.hypot(*(centroid - centroid[a]).T) < 0.6 * length) & (area < area[a])
        if label.sum() <= SCALE_BAR_MAX_LABELS:
            artifact |= label
    huge, warnings = _frame_sized(area / (height * width), bbox, at_edge, at_border, height, width)
    artifact |= huge
    if camera_frame or not (~clipped & ~artifact).any():
        warnings += frame_warnings

    background = _background_colour(img, rgb_small, labels, border)
    crop_arr = cut_crops(img, centroid, params.crop_size, fill=background) if crops else None
    mask_arr = _cut_masks(labels, index, centroid, scale, params.crop_size) if masks else None
    return Detections(
        label=index.astype(np.int32),
        centroid=centroid,
        bbox=bbox,
        area_px=area,
        equivalent_diameter_px=equivalent_diameter(area),
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
        warnings=warnings,
    )


def _frame_sized(
    fraction: np.ndarray,
    bbox: np.ndarray,
    at_edge: np.ndarray,
    at_border: np.ndarray,
    height: int,
    width: int,
) -> tuple[np.ndarray, list[str]]:
    """Objects the size of the frame, and what to tell the user about them.

    One object over `FRAME_OBJECT_AREA` of the frame, or whose box spans
    `FRAME_OBJECT_SPAN` of its height and of its width, is what a detector sees when the
    frame fooled it -- a tray wall, a lit floor or a background brighter than the level,
    every specimen merged into it -- and never a specimen of a tray: in a camera frame
    (a side longer than `PICTURE_MAX_SIDE`), or cut by the frame edge or the wall, it is
    flagged (not counted) and a warning says so. A picture of one specimen is filled by
    it: whole there, it stays counted, and the warning says that too. Returns the rows
    to flag and the warnings.
    """
    spans_h = (bbox[:, 2] - bbox[:, 0]) / max(height, 1)
    spans_w = (bbox[:, 3] - bbox[:, 1]) / max(width, 1)
    big = (fraction > FRAME_OBJECT_AREA) | (
        (spans_h >= FRAME_OBJECT_SPAN) & (spans_w >= FRAME_OBJECT_SPAN)
    )
    camera_frame = max(height, width) > PICTURE_MAX_SIDE
    flag = big & (camera_frame | at_edge | at_border)
    warnings = []
    for i in np.flatnonzero(big):
        what = (
            f"one object covers {100 * fraction[i]:.0f} % of the frame (its box "
            f"{100 * spans_h[i]:.0f} % x {100 * spans_w[i]:.0f} % of it)"
        )
        cut = [("cut by the frame edge", at_edge[i]), ("against the tray wall", at_border[i])]
        where = [text for text, on in cut if on]
        if where:
            what += ", " + " and ".join(where)
        if flag[i]:
            warnings.append(
                f"{what}: not counted as a specimen. A tray wall, lit floor or background "
                "taken for an object (specimens on it are lost), or a specimen larger than "
                "the frame? Check this frame, its count may be wrong"
            )
        else:
            warnings.append(
                f"{what}: counted as one specimen (a picture of a single specimen?); "
                "if this is a tray frame, check it"
            )
    return flag, warnings


def _floor_warnings(
    smooth: np.ndarray, floor_level: float, level: float, invert: bool
) -> list[str]:
    """A warning when what was taken for the tray floor may be no floor: more than
    `FLOOR_BELOW_FRACTION` of the frame (masked parts included) lies beyond the floor's
    grey on the far side from the specimens by `FLOOR_BELOW_MARGINS` times the distance
    of the specimens' level on theirs. That is the picture of an object filling most of
    the frame -- its grey became the "floor", so it was not found, and the dark surround
    may even have been masked as a wall -- or of a black surround (a field stop).
    """
    sign = -1.0 if invert else 1.0
    sample = smooth.ravel()[:: max(1, smooth.size // 200_000)]
    margin = FLOOR_BELOW_MARGINS * max(abs(level - floor_level), 1.0)
    below = float(np.mean(sign * (sample - floor_level) < -margin))
    if below <= FLOOR_BELOW_FRACTION:
        return []
    side = "darker" if not invert else "brighter"
    return [
        f"{100 * below:.0f} % of the frame is far {side} than what was taken for the tray "
        f"floor (grey {floor_level:.0f}): an object filling most of the frame, taken for "
        "the floor and so not found, or a black surround? Check this frame, its count "
        "may be wrong"
    ]


def _wall_warnings(border: np.ndarray) -> list[str]:
    """A warning when the tray wall mask covers most of the frame (few specimens can be
    seen, or the wall pass took the floor for wall).
    """
    covered = float(border.mean()) if border.size else 0.0
    if covered <= WALL_WARN_FRACTION:
        return []
    return [
        f"{100 * covered:.0f} % of the frame was masked as tray wall: only the rest was "
        "searched; check the frame if the tray floor fills more of it"
    ]


def auto_min_area_px(labels: np.ndarray, n: int, scale: int) -> float:
    """Minimum object area (full-resolution px) derived from the frame itself.

    Rule: 0.2 x the area-weighted median area of the frame's connected objects (the size
    of the object a typical foreground pixel belongs to, which many small specks of dust
    do not move), kept within 100 px and the study's 1024 px. A tray holds one sieve
    fraction, so its specimens are within a few times of each other in diameter; a fifth
    of the typical area is a specimen of less than half the typical diameter. The cap
    keeps the study's behaviour at its own and higher magnifications; at lower ones
    (grains 30 px across) the minimum shrinks with the objects.

    Objects cut by the frame edge are left out when others remain: a partial view says
    little of a specimen's size, and a lit patch of tray floor that crosses the threshold
    and runs off the frame (a real gravel tray at half its magnification: a fifth of the
    frame in one object) would otherwise be "typical" and raise the minimum above every
    grain.
    """
    if n == 0:
        return float(STUDY_MIN_AREA_PX)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64)
    on_edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    inside = np.ones(n, dtype=bool)
    inside[on_edge[on_edge > 0] - 1] = False
    if inside.any():
        sizes = sizes[inside]
    sizes = np.sort(sizes * scale * scale)
    sizes = sizes[sizes >= AUTO_MIN_AREA_FLOOR_PX]
    if sizes.size == 0:
        return float(STUDY_MIN_AREA_PX)
    cum = np.cumsum(sizes)
    typical = float(sizes[np.searchsorted(cum, 0.5 * cum[-1])])
    return float(
        np.clip(AUTO_MIN_AREA_FRACTION * typical, AUTO_MIN_AREA_FLOOR_PX, STUDY_MIN_AREA_PX)
    )


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
