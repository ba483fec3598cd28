"""Separating touching specimens on a finer grid than the detection's (`_split_fine`): the
candidates the working grid lets through are cut again from the full-resolution frame,
split at their necks (`_necks`) under the one-specimen rules (`_part_rules`), many
objects at once in one mosaic.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from napari_foram.detect._image import _fill_holes, _grey_small, _renumber, _watershed
from napari_foram.detect._necks import (
    _candidate_boxes,
    _flood_levels,
    _merge_basins,
    _neck_parts,
    _necks_possible,
)
from napari_foram.detect._params import DetectionParams, equivalent_diameter
from napari_foram.detect._part_rules import (
    COMPACT_WHOLE,
    WALL_LEVEL,
    _chroma,
    _colour_parts,
    _compactness,
    _join_through_wall,
    _neck_for,
    _two_colours,
)

# The touching-specimen splitter (`_split_fine`); figures measured on seeded
# synthetic trays with touching groups and on the real pictures in ../shared/realdata. The
# wall, colour and gate settings were chosen on the benchmark's own trays (seeds
# 4242-4253) and seeds 100-111, and checked on seeds 200-211 (docs/benchmarks.md).

#: Objects that may hold two specimens (`_necks.CANDIDATE_FILL`) are looked at on the
#: finer grid only when their working-grid distance map dips below this fraction of a
#: maximum between two maxima (a round or evenly elongated specimen does not). Benchmark
#: trays (count error / false detections; CPU per 5 MP frame relative to no splitting,
#: one run; `split_colour` 0.005): 0.6: -1.04 % / 1.20 %, x3.05; 0.65: -0.30 % / 1.34 %,
#: x3.82; 0.75: -0.15 % / 1.34 %, x4.87.
COARSE_GATE = 0.65


#: ... or below this fraction when two of its round parts differ in colour by
#: `DISTINCT_COLOUR` or more (`_two_colours`): two specimens of different colour
#: pressed together show only a shallow dip (a grey grain in a brown agglutinated
#: triplet). About one object in 12 benchmark frames is let through this way.
COLOUR_GATE = 0.75


#: A part smaller than this many minimum areas (its body, inside its rim) is no specimen
#: of its own: it stays with its neighbour. 1.5 kept the small end chambers of bead-like
#: uniserial tests on (false detections 22 -> 19 of 672, merged 24 -> 25).
MIN_PART = 1.5


def auto_split_scale(min_area_px: float, scale: int) -> int:
    """Downscale factor of the splitter's finer grid: the smallest kept object (a disc of
    `min_area_px`) 12 px across or more, and never coarser than the working grid.

    Tied to the object size, not the frame size, so a specimen is judged on the same
    grid in a 5 MP frame and in a crop of it. At the study's 1024 px: 3. A finer grid
    (2, 16 px across) judged the benchmark trays alike (seeds 4242-4253: the same count
    error and false detections) at 2.25 times the pixels (docs/benchmarks.md).
    """
    diameter = equivalent_diameter(max(min_area_px, 1.0))
    return int(max(1, min(scale, math.floor(diameter / 12.0))))


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
    (`_objects_parts`). Every pixel of a split component goes to the nearest part, so
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
        gate = _necks_possible(distance, peaks, labels, boxes, COARSE_GATE)
        # The rest get the wider colour gate (their dip test only, then colour).
        rest = np.flatnonzero(~gate)
        shallow = _necks_possible(distance, peaks, labels, [boxes[j] for j in rest], COLOUR_GATE)
        for j in rest[shallow].tolist():
            i, sl = boxes[j]
            own = labels[sl] == i
            gate[j] = _two_colours(
                img, np.where(own, distance[sl], 0.0), peaks[sl] & own, sl, scale
            )
        boxes = [box for box, go in zip(boxes, gate.tolist(), strict=True) if go]
    new_labels: np.ndarray | None = None
    next_label = n + 1
    found = _objects_parts(
        img, labels, boxes, scale, fine, floor_level, params, min_radius, min_area
    )
    for (i, sl), near in zip(boxes, found, strict=True):
        if near is None:
            continue
        own = labels[sl] == i
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


def _fine_view(
    img: np.ndarray, own: np.ndarray, sl: tuple[slice, slice], scale: int, fine: int
) -> tuple[np.ndarray, np.ndarray]:
    """An object's box cut from the full-resolution frame at every `fine`-th pixel, and
    its working-grid mask on that grid: (patch, mask).
    """
    y0, x0 = sl[0].start * scale, sl[1].start * scale
    patch = img[y0 : sl[0].stop * scale : fine, x0 : sl[1].stop * scale : fine]
    ry = np.minimum((np.arange(patch.shape[0]) * fine) // scale, own.shape[0] - 1)
    rx = np.minimum((np.arange(patch.shape[1]) * fine) // scale, own.shape[1] - 1)
    return patch, own[np.ix_(ry, rx)]


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
    object is split only by colour (`COMPACT_WHOLE`). `_objects_parts` does the same for
    many objects at once.
    """
    sign = -1.0 if params.invert else 1.0
    patch, up = _fine_view(img, own, sl, scale, fine)
    grey, _ = _grey_small(patch, 1)
    grey = sign * grey
    if params.split_sigma > 0:
        grey = ndi.gaussian_filter(grey, params.split_sigma, mode="nearest")
    vals = grey[up]
    if vals.size == 0:
        return None
    k = int(0.9 * (vals.size - 1))
    top = float(np.partition(vals, k)[k])  # the 90th percentile, without a sort
    fl = sign * floor_level
    # A dark chamber or umbilicus must not open a hole that reads as a neck.
    body = _fill_holes(up & (grey > fl + params.split_level * (top - fl)))
    dist = ndi.distance_transform_edt(body).astype(np.float32)
    chroma = _chroma(patch, params)
    parts = _neck_parts(
        body,
        dist,
        _neck_for(chroma is not None, params),
        min_radius * scale / fine,
        chroma,
        params.split_strict,
        params.split_colour,
        MIN_PART * min_area / (fine * fine),
    )
    if parts is None:
        return None
    return _finish_parts(parts, up, own, grey, top, fl, dist, chroma, scale, fine, params)


def _finish_parts(
    parts: np.ndarray,
    up: np.ndarray,
    own: np.ndarray,
    grey: np.ndarray,
    top: float,
    fl: float,
    dist: np.ndarray,
    chroma: np.ndarray | None,
    scale: int,
    fine: int,
    params: DetectionParams,
) -> np.ndarray | None:
    """The wall and whorl guards on an object's parts (finer grid), then every pixel of
    its working-grid mask `own` given to the nearest part (0 outside, 1..k); None when
    it stays whole.
    """
    kept: np.ndarray | None = parts
    if chroma is not None:
        kept = _join_through_wall(
            parts, up & (grey > fl + WALL_LEVEL * (top - fl)), dist, chroma, params.split_colour
        )
    if kept is not None and _compactness(up) >= COMPACT_WHOLE:
        # A round group of round parts is how a planktic's last whorl looks: only a
        # colour difference tells two specimens there.
        kept = _colour_parts(kept, chroma, params.split_colour)
    if kept is None:
        return None
    hh, ww = kept.shape
    _, (iy, ix) = ndi.distance_transform_edt(kept == 0, return_indices=True)
    near = kept[iy, ix]
    cy = np.minimum((np.arange(own.shape[0]) * scale) // fine, hh - 1)
    cx = np.minimum((np.arange(own.shape[1]) * scale) // fine, ww - 1)
    return np.where(own, near[np.ix_(cy, cx)], 0)


def _objects_parts(
    img: np.ndarray,
    labels: np.ndarray,
    boxes: list[tuple[int, tuple[slice, slice]]],
    scale: int,
    fine: int,
    floor_level: float,
    params: DetectionParams,
    min_radius: float,
    min_area: float,
) -> list[np.ndarray | None]:
    """`_object_parts` of every (label, box), with the same result, at a fraction of the
    cost: the objects' finer-grid boxes are laid side by side in one mosaic and each
    step (grey, body, hole filling, distance map, maxima, neck test, watershed, merging)
    runs once over the mosaic instead of once per object.

    Why this is the same: every box holds a ring of background (its padding), so holes,
    distances, maxima and basins never reach across to a neighbour; per-object
    percentiles come from one exact histogram; merging only follows contacts inside one
    object, in the same order. Objects cut by the frame (no ring: the one-object
    distance map treats the array edge differently) and a smoothed grey
    (`split_sigma`, which would blur across boxes) take the one-object path.
    tests/test_detect.py checks the two paths give the same labels.
    """
    found: list[np.ndarray | None] = [None] * len(boxes)
    views = []
    for j, (i, sl) in enumerate(boxes):
        own = labels[sl] == i
        patch, up = _fine_view(img, own, sl, scale, fine)
        ringed = not (up[0].any() or up[-1].any() or up[:, 0].any() or up[:, -1].any())
        if ringed and params.split_sigma <= 0:
            views.append((j, own, patch, up))
        else:
            found[j] = _object_parts(
                img, own, sl, scale, fine, floor_level, params, min_radius, min_area
            )
    if not views:
        return found
    sign = -1.0 if params.invert else 1.0
    fl = sign * floor_level
    colour = params.split_strict > 0 and img.ndim == 3 and img.shape[2] >= 3
    # Shelf packing: rows of boxes, tallest first, about as wide as the mosaic is tall.
    heights = [v[3].shape[0] for v in views]
    widths = [v[3].shape[1] for v in views]
    area = sum(h * w for h, w in zip(heights, widths, strict=True))
    row_width = max(max(widths), int(math.sqrt(area)))
    place: list[tuple[int, int]] = [(0, 0)] * len(views)
    y = x = shelf = 0
    for t in sorted(range(len(views)), key=lambda t: -heights[t]):
        if x + widths[t] > row_width:
            y, x, shelf = y + shelf, 0, 0
        place[t] = (y, x)
        x += widths[t]
        shelf = max(shelf, heights[t])
    height = y + shelf
    pixels = np.zeros((height, row_width, 3) if colour else (height, row_width), np.uint8)
    up_m = np.zeros((height, row_width), dtype=bool)
    tile = np.zeros((height, row_width), dtype=np.int64)
    tiles: list[tuple[int, tuple[slice, slice]]] = []
    for t, (_, _, patch, up) in enumerate(views):
        oy, ox = place[t]
        box = (slice(oy, oy + up.shape[0]), slice(ox, ox + up.shape[1]))
        if colour:
            pixels[box] = patch[:, :, :3]
        else:
            pixels[box] = patch if patch.ndim == 2 else patch[:, :, 0]
        up_m[box] = up
        tile[box][up] = t + 1
        tiles.append((t + 1, box))
    grey = sign * _grey_small(pixels, 1)[0]
    # Each object's 90th-percentile grey (np.partition's pick) from a (tile x grey level)
    # histogram: grey levels are whole numbers 0-255.
    at = np.flatnonzero(up_m)
    who = tile.ravel()[at]
    level = (sign * grey.ravel()[at]).astype(np.int64)
    hist = np.bincount(who * 256 + level, minlength=(len(views) + 1) * 256)
    cum = np.cumsum(hist.reshape(len(views) + 1, 256), axis=1)
    count = cum[:, -1]
    rank = (0.9 * (count - 1)).astype(np.int64)
    if sign > 0:
        top = (cum <= rank[:, None]).sum(axis=1).astype(np.float64)
    else:  # the k-th smallest of -grey is minus the k-th largest grey
        top = -(cum <= (count - 1 - rank)[:, None]).sum(axis=1).astype(np.float64)
    cut = (fl + params.split_level * (top - fl)).astype(np.float32)
    body = _fill_holes(up_m & (grey > cut[tile]))
    dist = ndi.distance_transform_edt(body).astype(np.float32)
    neck = _neck_for(colour, params)
    min_r = min_radius * scale / fine
    peaks = (dist >= ndi.maximum_filter(dist, size=3)) & (dist >= min_r)
    owner = np.where(body, tile, 0)
    go = np.concatenate(([False], _necks_possible(dist, peaks, owner, tiles, neck)))
    markers, n_markers = ndi.label(peaks & go[owner], structure=np.ones((3, 3), bool))
    if n_markers < 2:
        return found
    mask = body & go[owner]
    basins = _watershed(_flood_levels(dist, markers), markers, mask)
    chroma = None
    if colour:
        rgb = pixels[mask].astype(np.float32)
        chroma = rgb / np.maximum(rgb.sum(axis=1, keepdims=True), 1.0)
    roots = _merge_basins(
        basins,
        dist,
        mask,
        n_markers,
        neck,
        min_r,
        chroma,
        params.split_strict,
        params.split_colour,
        MIN_PART * min_area / (fine * fine),
    )
    part = roots[basins]
    # Objects left in two or more parts.
    inside = part > 0
    pairs = np.unique(tile[inside] * (n_markers + 1) + part[inside])
    split = np.flatnonzero(np.bincount(pairs // (n_markers + 1), minlength=len(views) + 1) > 1)
    for t in split.tolist():
        j, own, patch, up = views[t - 1]
        box = tiles[t - 1][1]
        parts = _renumber(part[box])
        found[j] = _finish_parts(
            parts,
            up,
            own,
            grey[box],
            float(top[t]),
            fl,
            dist[box],
            _chroma(patch, params),
            scale,
            fine,
            params,
        )
    return found
