"""Pass 1: the tray's wall (its metallic border) and the area beyond it, masked out at the
working scale: the study's fixed grey level after heavy smoothing (`find_border_mask`),
then walls that level misses, found by their shape along the frame's sides
(`find_wall_bands`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from napari_foram.detect._image import _dilate, _erode, _fill_holes
from napari_foram.detect._params import PICTURE_MAX_SIDE, DetectionParams

if TYPE_CHECKING:
    from collections.abc import Callable

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
    blurred coarse grid and its step in working pixels.
    """
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
    floor when the wall's rim is lit).
    """
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
    the mask: clipped, not counted.
    """
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
    wall is several cells wide, so it stays).
    """
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
    a specimen lies out on the floor).
    """
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
    the frame beside it.
    """
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
    over that distance. (0, 0) when either side is too small to tell.
    """
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
    outside the `zone`) filled.
    """
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
