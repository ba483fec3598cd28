"""The two passes (tray border, then specimens), the minimum size rules, `detect` itself
and the 224 px crops."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_foram.defaults import CROP_SIZE
from napari_foram.detect._image import _dilate, _erode, _fill_holes, _grey_small, _otsu
from napari_foram.detect._params import (
    AUTO_MIN_AREA_FLOOR_PX,
    AUTO_MIN_AREA_FRACTION,
    STUDY_MIN_AREA_PX,
    DetectionParams,
    Detections,
)
from napari_foram.detect._split import _cut_components, _split_fine, _split_touching
from napari_foram.frames import check_image, to_uint8


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
