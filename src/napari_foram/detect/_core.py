"""The two passes (tray border, then specimens), the minimum size rules, `detect` itself
and the 224 px crops."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
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

#: A wall that pass 1's fixed level missed runs along the frame edge for at least this
#: fraction of the frame's shorter side (a wall along one side runs along all of it; a
#: specimen, or a few, cut by the edge along a tenth or less) ...
WALL_MIN_CONTACT = 0.5
#: ... and is a band: its area over its length along the edge is at most this fraction of
#: the shorter side (walls of 5-25 % of it; a blob the size of the frame is no wall).
WALL_MAX_THICKNESS = 0.35
#: ... and ends in a step: across its edge the grey changes by at least this fraction of
#: the wall's contrast with the floor (light falling off across the floor does not).
WALL_MIN_STEP = 0.5
#: A wall differs from the floor by at least this many of the floor's robust standard
#: deviations (and 0.3 x `DetectionParams.background_min_margin`) after the heavy blur.
WALL_NOISE_K = 2.0
#: The wall's depth from the frame edge is smoothed over this fraction of the side's
#: length (`_side_bands`): several specimens wide, so one touching the wall is no wall.
WALL_PROFILE_WINDOW = 0.15
#: Images no longer than this on either side may be pictures of one specimen (the largest
#: side `pictures` takes whole) rather than camera frames of a tray.
PICTURE_MAX_SIDE = 1024
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
    smooth, coarse_step = _coarse_blur(grey_small, scale)
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


def _coarse_blur(grey_small: np.ndarray, scale: int) -> tuple[np.ndarray, int]:
    """The study's heavy smoothing (a 75 px median there), on a grid of ~16 full-resolution
    px: the wall is a broad structure, and specimens sink below its level. Returns the
    blurred coarse grid and its step in working pixels."""
    coarse_step = max(1, round(16 / scale))
    coarse = grey_small[::coarse_step, ::coarse_step]
    sigma = max(1.0, 75.0 / (scale * coarse_step) / 2.0)
    return ndi.gaussian_filter(coarse, sigma, mode="nearest"), coarse_step


def _edge_contact(lab: np.ndarray, n: int) -> np.ndarray:
    """Pixels of each label on the frame's outermost rows and columns (corners once)."""
    ring = np.concatenate([lab[0, :], lab[-1, :], lab[1:-1, 0], lab[1:-1, -1]])
    return np.bincount(ring, minlength=n + 1)


def find_wall_bands(
    grey_small: np.ndarray,
    fine: np.ndarray,
    known: np.ndarray,
    params: DetectionParams,
    scale: int,
) -> np.ndarray:
    """Pass 1, second half: a tray wall the study's fixed grey level misses. Returns its
    mask at the working scale (empty when there is none).

    The study's ~70 grey levels find a brightly lit metal wall. A dull, shadowed or
    tarnished wall can sit between the floor and that level, still above the specimens'
    threshold: pass 2 then takes the whole wall for one object -- a ring all round the
    frame whose hole, filled, swallows every specimen, or a band along one side so long
    that it is flagged as a scale bar and the specimens beside it as its label -- and a
    wide one drags the floor's statistics, and so pass 2's level, with it. A black wall,
    darker than the floor, hides nothing, but a wide one drags the level too (dark grains
    are lost), and its lit rim is a long thin "object".

    The tray floor is what the middle of the frame shows (the wall lies along the frame
    edge). After the heavy blur (specimens sink into the floor, a broad band does not) a
    wall is a region that differs from that floor by `WALL_NOISE_K` of the floor's robust
    standard deviations, runs along the frame edge for at least `WALL_MIN_CONTACT` of the
    shorter side, is band-shaped (its area over that length at most `WALL_MAX_THICKNESS`
    of the shorter side) and ends in a step (`WALL_MIN_STEP`; light falling off across
    the floor is a ramp). Darker walls are looked for in camera frames only (either side
    longer than `PICTURE_MAX_SIDE`): in a picture of one specimen the specimen fills the
    middle and its dark surround would look like one. See `_wall_band` for the outline.
    `known` (the first half's mask) is left as it is.
    """
    h, w = grey_small.shape
    empty = np.zeros((h, w), dtype=bool)
    if not params.mask_border or min(h, w) < 16:
        return empty
    sign = -1.0 if params.invert else 1.0
    # The floor: the middle of the frame (a wall would have to cover 30 % of the frame's
    # width or height from one edge to reach it).
    y0, x0 = int(0.3 * h), int(0.3 * w)
    mid_box = (slice(y0, max(int(0.7 * h), y0 + 1)), slice(x0, max(int(0.7 * w), x0 + 1)))
    centre = fine[mid_box][~known[mid_box]]
    if centre.size < 16:
        return empty
    floor = float(np.median(centre[:: max(1, centre.size // 50_000)]))
    # The floor's own noise from its far side (specimens only ever lie on one side of it).
    far = sign * (floor - centre)
    noise = 1.4826 * float(np.median(far[far > 0])) if (far > 0).any() else 0.0
    margin = max(0.3 * params.background_min_margin, WALL_NOISE_K * noise)
    # The study's own smoothing for the wall, a median over ~75 px, on a grid of ~16 px:
    # specimens keep their outline in it, but unlike a Gaussian blur it does not spread
    # them over the floor between them, so a crowded floor never looks like a wall.
    step = max(1, round(16 / scale))
    size = max(3, 2 * round(75.0 / (scale * step) / 2) + 1)
    coarse = ndi.median_filter(grey_small[::step, ::step], size=size, mode="nearest")
    median = functools.cache(lambda: _to_working_grid(coarse, step, (h, w)))
    camera_frame = max(h, w) * scale > PICTURE_MAX_SIDE
    wall = empty
    # +1: a wall on the specimens' side of the floor (brighter, unless `invert`); -1: the
    # other side.
    for towards in (1.0, -1.0) if camera_frame else (1.0,):
        s = sign * towards
        cand = s * (coarse - floor) > margin
        found = _wall_band(cand, fine, median, known | wall, floor, s, params, step, towards < 0)
        if found.any():
            # What pass 2 would still see on the wall (blotches between the two greys,
            # a black wall's lit rim): masked where it lies on the wall, not beside it.
            found = _seen_on_wall(sign * (fine - floor) > margin, found)
        wall = wall | found
    return _dilate(wall, 1) if wall.any() else empty


def _to_working_grid(coarse: np.ndarray, step: int, shape: tuple[int, int]) -> np.ndarray:
    """A coarse grid of step `step` interpolated (linearly) back to the working grid of
    `shape`: the wall's outline to a working pixel, not to a coarse cell. The median
    keeps a step where the wall ends (a Gaussian's half-way point moves out into the
    floor when the wall's rim is lit)."""
    h, w = shape
    zoomed = ndi.zoom(coarse, step, order=1, mode="nearest", grid_mode=True)
    pad = ((0, max(0, h - zoomed.shape[0])), (0, max(0, w - zoomed.shape[1])))
    return np.pad(zoomed, pad, mode="edge")[:h, :w]


def _wall_band(
    cand: np.ndarray,
    fine: np.ndarray,
    median: Callable[[], np.ndarray],
    known: np.ndarray,
    floor: float,
    s: float,
    params: DetectionParams,
    step: int,
    even: bool = False,
) -> np.ndarray:
    """The wall among coarse candidates `cand` (True: far enough from the `floor` grey
    on side `s`, +1 brighter, -1 darker), traced on the working grid.

    Its outline is first where the median blur (`median()`, on the working grid) crosses
    half-way from the floor's grey to the wall's own median grey, then, once the grey
    just inside and just outside that outline are known, half-way between those two:
    light falls off towards the frame's corners, over the wall as over the floor, and the
    middle of the floor can be as bright as a dull wall's darker stretches, so the level
    measured where they meet follows the whole wall round. The wall itself is then what
    is past that level on the lightly smoothed `fine` image (`_trace_wall`). `even`: the
    wall must also keep an even width along the sides (`_even_along_the_sides`).
    Returns the wall (empty when there is none).
    """
    h, w = fine.shape
    empty = np.zeros((h, w), dtype=bool)
    ch, cw = cand.shape
    cand = cand & ~_dilate(known[::step, ::step][:ch, :cw], 1)
    lab, n = ndi.label(cand)
    if n == 0:
        return empty
    sizes = np.bincount(lab.ravel(), minlength=n + 1).astype(np.float64)
    contact = _edge_contact(lab, n).astype(np.float64)
    side = float(min(ch, cw))
    keep = contact >= WALL_MIN_CONTACT * side
    keep &= sizes >= params.border_min_fraction * lab.size
    keep &= sizes <= WALL_MAX_THICKNESS * side * np.maximum(contact, 1.0)
    # The middle of the frame is the floor the wall was told from: a region covering
    # most of it is the floor itself (crowded, or lit), not a wall.
    y0, x0 = int(0.3 * ch), int(0.3 * cw)
    middle = lab[y0 : max(int(0.7 * ch), y0 + 1), x0 : max(int(0.7 * cw), x0 + 1)]
    keep &= np.bincount(middle.ravel(), minlength=n + 1) <= 0.5 * middle.size
    keep[0] = False
    if not keep.any():
        return empty
    rows = np.minimum(np.arange(h) // step, ch - 1)
    cols = np.minimum(np.arange(w) // step, cw - 1)
    inside = keep[lab][np.ix_(rows, cols)] & ~known
    zone = _dilate(keep[lab], 3)[np.ix_(rows, cols)] & ~known
    wall_px = fine[inside]
    if wall_px.size < 16:
        return empty
    wall_grey = float(np.median(wall_px[:: max(1, wall_px.size // 50_000)]))
    half = floor + 0.5 * (wall_grey - floor)
    min_contact = WALL_MIN_CONTACT * min(h, w)
    big = median()
    cores, n_cores = ndi.label(_wall_core(big, zone, s, half, min_contact, step))
    wall = empty.copy()
    # Each stretch of wall on its own: a corner of the floor that light left darker (or
    # brighter) must not ride along with a real wall elsewhere in the frame.
    for k in range(1, n_cores + 1):
        core = cores == k
        inner, outer = _greys_across(fine, core, known, step)
        if not s * (inner - outer) >= WALL_MIN_STEP * s * (wall_grey - floor):
            continue
        if even and not _even_along_the_sides(core):
            continue
        level, where = half, zone
        local = 0.5 * (inner + outer)
        if s * local < s * half:
            wider = (s * big > s * local) & ~known
            wlab, nw = ndi.label(wider)
            hit = np.zeros(nw + 1, dtype=bool)
            hit[np.unique(wlab[core])] = True
            hit[0] = False
            grown = _wall_core(big, hit[wlab], s, local, min_contact, step)
            g_in, g_out = _greys_across(fine, grown, known, step)
            # Only while it is still a band ending in a step, not the floor's bright
            # middle joined to it.
            length = max(float(_edge_contact(grown.astype(np.int32), 1)[1]), 1.0)
            thin = grown.sum() <= WALL_MAX_THICKNESS * min(h, w) * length
            stepped = s * (g_in - g_out) >= WALL_MIN_STEP * s * (inner - outer)
            if thin and stepped and (not even or _even_along_the_sides(grown)):
                core, where, level = grown, _dilate(grown, 3 * step) & ~known, local
        traced = _trace_wall(fine, core, where & _dilate(core, 3 * step), s, level)
        # Where blotches broke the traced wall up, the territory (shrunk a little: its
        # edge is good to a pixel or two) still says how deep the wall is.
        band = _side_bands(traced | _erode(core, 2))
        # Along the band the wall is what is past the level, and no deeper than the band.
        found = (traced | (s * fine > s * level)) & band
        wall |= found | (_fill_holes(found) & band)
    return wall


def _side_bands(wall: np.ndarray) -> np.ndarray:
    """The bands along the frame sides that `wall` runs along, each as deep as the wall
    is from that side, smoothed: a specimen touching the wall, or lying so close that the
    blur joins them, sticks out of it as a bump a few specimens wide, while a wall's
    depth from the edge changes slowly. Along each side where the wall is present over
    half its length, the depth is replaced by its running median over
    `WALL_PROFILE_WINDOW` of the side (plus a working pixel); what lies deeper is no wall
    (unless another side's band holds it). The bump stays an object of its own, against
    the mask: clipped, not counted."""
    keep = np.zeros_like(wall)
    for flip, transpose in ((False, False), (True, False), (False, True), (True, True)):
        view = wall.T if transpose else wall
        view = view[::-1] if flip else view
        n_in, n_along = view.shape
        depth = np.where(view.all(axis=0), n_in, np.argmin(view, axis=0))
        if np.mean(depth > 0) < 0.5:
            continue
        size = max(3, int(WALL_PROFILE_WINDOW * n_along) | 1)
        line = ndi.median_filter(depth, size=size, mode="nearest") + 1
        band = np.arange(n_in)[:, None] < line[None, :]
        band = band[::-1] if flip else band
        keep |= band.T if transpose else band
    return keep


def _wall_core(
    big: np.ndarray, zone: np.ndarray, sign: float, half: float, min_contact: float, step: int
) -> np.ndarray:
    """The wall's territory: where the heavy blur (`big`, on the working grid) is past
    `half`, as bands along the frame edge at least `min_contact` long. An opening of two
    coarse cells cuts the bridges the blur builds to specimens lying near the wall (a
    wall is several cells wide, so it stays)."""
    core = (sign * big > sign * half) & zone
    radius = 2 * step
    core = _dilate(_erode(core, radius), radius) & core
    core_lab, n_core = ndi.label(core)
    if n_core == 0:
        return core
    along = _edge_contact(core_lab, n_core) >= min_contact
    along[0] = False
    return along[core_lab]


def _seen_on_wall(seen: np.ndarray, wall: np.ndarray) -> np.ndarray:
    """`wall` with the pieces of `seen` that lie, 80 % or more of each, on it or within
    three working pixels of it: a blotch of the wall's texture, or its lit rim, which
    runs along the wall's edge -- not a specimen lying beside it or against it (most of
    a specimen lies out on the floor)."""
    near = _dilate(wall, 3)
    lab, n = ndi.label(seen & ~wall)
    if n == 0:
        return wall
    size = np.bincount(lab.ravel(), minlength=n + 1).astype(np.float64)
    on = np.bincount(lab[near], minlength=n + 1) / np.maximum(size, 1.0) >= 0.8
    on[0] = False
    return wall | on[lab]


def _even_along_the_sides(core: np.ndarray) -> bool:
    """Whether `core` runs along the frame's sides with an even width: on every side
    where it is present over at least 80 % of the middle 60 % (and on one at least), its
    depth from the edge there stays within a quarter of its median (median absolute
    deviation). A wall does; the dark surround of one large object in the middle of the
    frame reaches in to the object's outline on one stretch of a side and right across
    the frame beside it."""
    along_some = False
    for view in (core, core[::-1], core.T, core.T[::-1]):
        n_in, n_along = view.shape
        depth = np.where(view.all(axis=0), n_in, np.argmin(view, axis=0))
        middle = depth[int(0.2 * n_along) : max(int(0.8 * n_along), 1)]
        there = middle[middle > 0]
        if there.size == 0 or there.size < 0.8 * middle.size:
            continue
        typical = float(np.median(there))
        if typical < 2 or np.median(np.abs(there - typical)) > 0.25 * typical:
            return False
        along_some = True
    return along_some


def _greys_across(
    fine: np.ndarray, core: np.ndarray, known: np.ndarray, step: int
) -> tuple[float, float]:
    """Median grey of `fine` one to four coarse cells inside the edge of `core`, and as
    far outside it (not in `known`). A wall ends in a step (their difference is its full
    contrast); light falling off across the tray floor is a ramp, a small difference
    over that distance. (0, 0) when either side is too small to tell."""
    if not core.any():
        return 0.0, 0.0
    d_in = ndi.distance_transform_edt(core)
    d_out = ndi.distance_transform_edt(~core)
    inner = (d_in >= step) & (d_in <= 4 * step)
    outer = (d_out >= step) & (d_out <= 4 * step) & ~known
    if inner.sum() < 16 or outer.sum() < 16:
        return 0.0, 0.0
    return float(np.median(fine[inner])), float(np.median(fine[outer]))


def _trace_wall(
    fine: np.ndarray, core: np.ndarray, zone: np.ndarray, sign: float, half: float
) -> np.ndarray:
    """The wall on the working grid: what is past `half` on the lightly smoothed image,
    reaches the frame edge and lies mostly in the wall's territory `core` -- cut to that
    territory, so that a specimen touching the wall stays an object of its own (flagged
    at the wall) -- with the holes its texture leaves (not the tray floor, which reaches
    outside the `zone`) filled."""
    body_px = (sign * fine > sign * half) & zone
    blab, nb = ndi.label(body_px)
    bsize = np.bincount(blab.ravel(), minlength=nb + 1).astype(np.float64)
    in_core = np.bincount(blab[core], minlength=nb + 1) / np.maximum(bsize, 1.0)
    body = (_edge_contact(blab, nb) > 0) & (in_core >= 0.5)
    body[0] = False
    wall = body[blab] & _dilate(core, 2)
    holes, nh = ndi.label(~wall)
    if nh:
        enclosed = np.bincount(holes[~zone], minlength=nh + 1) == 0
        ring = np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])
        enclosed[np.unique(ring)] = False
        enclosed[0] = False
        wall |= enclosed[holes]
    return wall


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
    may even have been masked as a wall -- or of a black surround (a field stop)."""
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
    seen, or the wall pass took the floor for wall)."""
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
