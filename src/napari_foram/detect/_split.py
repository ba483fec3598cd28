"""Separating touching specimens: necks judged on a finer grid, colour across middling
necks, chambers of one colour joined again through their wall, and a planktic's compact
whorl kept whole (`DetectionParams.split_touching`)."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from napari_foram.detect._image import (
    _dilate,
    _erode,
    _fill_holes,
    _grey_small,
    _max_per_label,
    _renumber,
    _watershed,
)
from napari_foram.detect._params import DetectionParams

# The touching-specimen splitter (`_split_fine`); figures measured on seeded synthetic
# trays with touching groups and on the real pictures in ../shared/realdata. The wall,
# colour and gate settings below were chosen on the benchmark's own trays (seeds
# 4242-4253) and seeds 100-111, and checked on seeds 200-211 (docs/benchmarks.md).
#: Objects whose area exceeds this many discs of their largest inscribed radius may hold
#: two specimens (a disc is 1, two touching equal discs 2) ... (1.3 left one more
#: touching pair of 672 merged on the benchmark trays)
CANDIDATE_FILL = 1.2


#: ... and are looked at on the finer grid only when their working-grid distance map
#: dips below this fraction of a maximum between two maxima (a round or evenly elongated
#: specimen does not). Benchmark trays (count error / false detections; CPU per 5 MP
#: frame relative to no splitting, one run; `split_colour` 0.005): 0.6: -1.04 % /
#: 1.20 %, x3.05; 0.65: -0.30 % / 1.34 %, x3.82; 0.75: -0.15 % / 1.34 %, x4.87.
COARSE_GATE = 0.65
#: ... or below this fraction when two of its round parts differ in colour by
#: `DISTINCT_COLOUR` or more (`_two_colours`): two specimens of different colour
#: pressed together show only a shallow dip (a grey grain in a brown agglutinated
#: triplet). About one object in 12 benchmark frames is let through this way.
COLOUR_GATE = 0.75


#: A group this compact (area over the disc of its largest extent) is split only where
#: its parts differ in colour: a planktic's last whorl (3-4 round chambers, 0.59-0.72 on
#: synthetic tests) looks like touching balls; two touching specimens are ~0.45.
COMPACT_WHOLE = 0.6


#: Two parts of one colour are one specimen where they join broadly through the wall: on
#: the pixels above WALL_LEVEL of the way from the floor grey to the object's top grey,
#: the pass between them is at least WALL_PASS x the smaller part's radius. A cut
#: between chambers of one test (the suture groove of a Reophax-like bead chain, a
#: deep-sutured planktic) crosses a band of wall; specimens that touch meet at a point
#: across their shadows (the real Ammonia picture laid touching itself: < 0.05,
#: tests/test_detect.py; two tangent domes of one colour: 0.22 on the pixel grid). On
#: the benchmark trays (gate 0.75, split_colour 0.005), false detections 0.90 % at 0.15
#: (which merges the tangent domes), 1.34 % at 0.25, 1.49 % at 0.3.
#: The wall is whatever is clearly brighter than the tray floor, so only the shadow gap
#: where two specimens meet parts them: at 0.1 the sutures of dark (brown agglutinated)
#: bead chains and of a deep-sutured planktic fell below the level though their colours
#: agree to < 0.004 (passes 0.10-0.22 there, 0.36-0.86 at 0.05): 4 of the 8 false
#: detections on the benchmark trays, and none of their merges. The same counts for any
#: level from 0 to 0.07.
WALL_LEVEL = 0.05
WALL_PASS = 0.25


#: Parts whose mean chromaticities (r, g, b; summed absolute differences) differ by this
#: much are two specimens whatever the pass between them: a brown agglutinated chain
#: lying along a white planktic joins it broadly. Where the rule acts (passes below
#: `DISTINCT_MAX_PASS`; both parts >= 400 px, passes 0.7-0.9) chambers of one synthetic
#: test differ by <= 0.009 in 60 of 61 cases and synthetic specimens pressed together by
#: >= 0.02 in 6 of 10 (seeds 100-111 and 4242-4253), but on real photographs light and
#: shade make the two halves of one bone fragment differ by up to 0.041
#: (`rcos_trays/other_bone_fragments`: 0.02 cut three fragments there, 0.04 one, whose
#: halves differ by 0.041 at a pass of 0.71, as two touching synthetic specimens do:
#: 0.040 at 0.71). Benchmark trays, count error / false detections: 0.02 -0.74 % /
#: 0.45 %, 0.04 -0.74 % / 0.60 %, 0.045 and 0.05 -1.04 % / 0.60 % (docs/benchmarks.md).
DISTINCT_COLOUR = 0.04
#: ... unless the pass is nearly as wide as the smaller part (one body): the stained half
#: of the real Ammonia picture differs from the rest by 0.10 at a pass of 0.99.
DISTINCT_MAX_PASS = 0.9


#: Without colour (grey frames) neither the colour nor the wall cue can keep chambers of
#: one test together: parts separate only below this pass ratio (synthetic trays turned
#: grey, seeds 4242-4253: false detections 6.6 % at 0.7, 5.2 % at 0.6).
GREY_NECK = 0.6


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
    diameter = math.sqrt(4.0 * max(min_area_px, 1.0) / math.pi)
    return int(max(1, min(scale, math.floor(diameter / 12.0))))


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
    rmax = _max_per_label(lab, distance.ravel()[fg], n + 1)
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
    basins = _watershed(_flood_levels(distance, markers), markers, mask)
    roots = _merge_basins(
        basins,
        distance,
        mask,
        n_markers,
        neck_ratio,
        min_radius,
        None if chroma is None else chroma[mask],
        strict_ratio,
        min_colour_step,
        min_part_area,
    )
    parts = _renumber(roots[basins])
    return parts if int(parts.max()) > 1 else None


def _flood_levels(distance: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """The watershed's levels: -distance, seeds that tie ordered by raster position.

    The flooding kernel takes the lowest level first and, among equal levels, the pixel
    queued first; all seeds are queued at once, so seeds of equal distance (square roots
    of whole numbers tie often) come out in its heap's layout, which other objects in the
    same image change. Lowering each seed by less than a fifth of the smallest gap
    between two distances (< 1e-4 in all; two distances below 1,000 px differ by > 5e-4),
    the more the earlier it lies in raster order, fixes that order and nothing else:
    seeds still go before other pixels of their level, and plateaus still fill
    breadth-first. An object is then flooded alike alone and in the mosaic, where
    positions keep their order within each box.
    """
    levels = -distance.astype(np.float64)
    seeds = np.flatnonzero(markers)
    levels.ravel()[seeds] -= (seeds.size - np.arange(seeds.size)) * (1e-4 / max(seeds.size, 1))
    return levels


def _merge_basins(
    basins: np.ndarray,
    distance: np.ndarray,
    mask: np.ndarray,
    n_markers: int,
    neck_ratio: float,
    min_radius: float,
    chroma: np.ndarray | None,
    strict_ratio: float,
    min_colour_step: float,
    min_part_area: float,
) -> np.ndarray:
    """Which part each watershed basin (1..n_markers) ends in: its root basin (0 for 0).

    Basins are merged, widest pass first, while the pass between them is wide (see
    `split_at_necks`), one side is too small or too narrow to be a specimen, or a
    middling pass joins parts of one colour. `chroma` holds the chromaticities of the
    `mask` pixels in raster order (None: grey frame). Basins of several objects may be
    numbered in one image (the splitter's mosaic): pairs only form across contacts, so
    each object's basins merge as they would on their own.
    """
    flat = basins[mask]
    peak = _max_per_label(flat, distance[mask], n_markers + 1)
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
    part_area = np.bincount(flat, minlength=n_markers + 1).astype(np.float64)
    colour: np.ndarray | None = None
    if chroma is not None:
        weight = part_area.copy()
        sums = np.stack(
            [
                np.bincount(flat, weights=chroma[:, c], minlength=n_markers + 1)
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
        if (
            merge
            and colour is not None
            and small >= min_radius
            and value[k] < DISTINCT_MAX_PASS * small
        ):
            # Colours this far apart are two specimens whatever the pass (a brown
            # chain along a white planktic); a small part then waits for a neighbour of
            # its own colour instead of joining the first one it meets.
            ca = colour[ra, :-1] / max(colour[ra, -1], 1.0)
            cb = colour[rb, :-1] / max(colour[rb, -1], 1.0)
            merge = float(np.abs(ca - cb).sum()) < DISTINCT_COLOUR
        if merge:
            parent[rb] = ra
            top[ra] = max(top[ra], top[rb])
            part_area[ra] += part_area[rb]
            if colour is not None:
                colour[ra] += colour[rb]
    roots = np.array([root(i) for i in range(n_markers + 1)])
    roots[0] = 0
    return roots


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


def _necks_possible(
    distance: np.ndarray,
    peaks: np.ndarray,
    owner: np.ndarray,
    boxes: list[tuple[int, tuple[slice, slice]]],
    neck_ratio: float,
) -> np.ndarray:
    """`_may_have_neck` for many objects at once: one bool per (label, box) of `boxes`.

    `owner` labels the objects' pixels (0 elsewhere); each object is judged on its own
    pixels, as `_may_have_neck` on `np.where(owner[box] == label, distance[box], 0)`
    with the peaks inside it: the highest pixel is the first one in the box's raster
    order, and the lines are laid out in box coordinates, so the two agree exactly.
    """
    m = len(boxes)
    ids = np.array([i for i, _ in boxes], dtype=np.int64)
    y0 = np.array([sl[0].start for _, sl in boxes], dtype=np.intp)
    x0 = np.array([sl[1].start for _, sl in boxes], dtype=np.intp)
    which = np.full(int(owner.max()) + 1, -1, dtype=np.intp)
    which[ids] = np.arange(m)
    slot = which[owner.ravel()]
    at = np.flatnonzero(slot >= 0)
    slot_at = slot[at]
    # Highest pixel per object, the first in raster order among equals (np.argmax's):
    # `at` is in raster order, so np.unique's first index per object is that pixel.
    value = distance.ravel()[at]
    highest = _max_per_label(slot_at, value, m)
    best = np.flatnonzero(value == highest[slot_at])
    which_best, first = np.unique(slot_at[best], return_index=True)
    top_at = np.zeros(m, dtype=np.intp)
    top_at[which_best] = at[best[first]]
    q = at[peaks.ravel()[at]]
    qs = slot[q]
    width = owner.shape[1]
    qy, qx = np.divmod(q, width)
    py, px = np.divmod(top_at[qs], width)
    # In box coordinates, as the one-object test rounds them.
    py, px, qy, qx = py - y0[qs], px - x0[qs], qy - y0[qs], qx - x0[qs]
    ys = np.rint(py + _LINE_STEPS * (qy - py)).astype(np.intp) + y0[qs]
    xs = np.rint(px + _LINE_STEPS * (qx - px)).astype(np.intp) + x0[qs]
    along = np.where(owner[ys, xs] == ids[qs], distance[ys, xs], 0.0)
    dip = along.min(axis=0) if q.size else np.zeros(0, np.float32)
    low = dip < 1.2 * neck_ratio * distance.ravel()[q] + 0.5
    n_peaks = np.bincount(qs, minlength=m)
    return (n_peaks >= 2) & (np.bincount(qs, weights=low, minlength=m) > 0)


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


def _two_colours(
    img: np.ndarray,
    dist: np.ndarray,
    peaks: np.ndarray,
    sl: tuple[slice, slice],
    scale: int,
) -> bool:
    """Whether two of an object's round parts differ in colour by `DISTINCT_COLOUR` or
    more (summed absolute difference of mean chromaticities), judged on the working grid.

    A part is the disc inscribed at a distance maximum (maxima inside a wider part's
    disc are dropped); its colour is the mean of the frame's pixels, every `scale`-th,
    in the square inside that disc. Single specimens on the benchmark trays score at
    most 0.016; a grey grain in a brown triplet 0.14.
    """
    if img.ndim != 3 or img.shape[2] < 3:
        return False
    ys, xs = np.nonzero(peaks)
    if ys.size < 2:
        return False
    r = dist[ys, xs]
    order = np.argsort(-r, kind="stable")
    ys, xs, r = ys[order], xs[order], r[order]
    keep: list[int] = []
    for j in range(ys.size):
        if all((ys[j] - ys[m]) ** 2 + (xs[j] - xs[m]) ** 2 > r[m] ** 2 for m in keep):
            keep.append(j)
    if len(keep) < 2:
        return False
    y0, x0 = sl[0].start * scale, sl[1].start * scale
    means = []
    for j in keep:
        # Half the side of the square inscribed in the disc: r / sqrt(2) ~ 0.7 r.
        rad = max(int(r[j] * 0.7), 1)
        yy, xx = int(ys[j]), int(xs[j])
        square = img[
            y0 + max(yy - rad, 0) * scale : y0 + (yy + rad + 1) * scale : scale,
            x0 + max(xx - rad, 0) * scale : x0 + (xx + rad + 1) * scale : scale,
            :3,
        ]
        total = square.reshape(-1, 3).astype(np.float32).sum(axis=0)
        means.append(total / max(float(total.sum()), 1.0))
    m = np.asarray(means)
    return bool(np.abs(m[:, None, :] - m[None, :, :]).sum(axis=2).max() >= DISTINCT_COLOUR)


def _fine_view(
    img: np.ndarray, own: np.ndarray, sl: tuple[slice, slice], scale: int, fine: int
) -> tuple[np.ndarray, np.ndarray]:
    """An object's box cut from the full-resolution frame at every `fine`-th pixel, and
    its working-grid mask on that grid: (patch, mask)."""
    y0, x0 = sl[0].start * scale, sl[1].start * scale
    patch = img[y0 : sl[0].stop * scale : fine, x0 : sl[1].stop * scale : fine]
    ry = np.minimum((np.arange(patch.shape[0]) * fine) // scale, own.shape[0] - 1)
    rx = np.minimum((np.arange(patch.shape[1]) * fine) // scale, own.shape[1] - 1)
    return patch, own[np.ix_(ry, rx)]


def _chroma(patch: np.ndarray, params: DetectionParams) -> np.ndarray | None:
    """Chromaticities (r, g, b summing to 1) of a colour patch when the colour cue is on;
    None for grey frames."""
    if params.split_strict > 0 and patch.ndim == 3 and patch.shape[2] >= 3:
        rgb = patch[:, :, :3].astype(np.float32)
        return rgb / np.maximum(rgb.sum(axis=2, keepdims=True), 1.0)
    return None


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


def _neck_for(colour: bool, params: DetectionParams) -> float:
    """The neck ratio: `params.neck_ratio`, at most `GREY_NECK` without colour."""
    return params.neck_ratio if colour else min(params.neck_ratio, GREY_NECK)


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
    it stays whole."""
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


def _join_through_wall(
    parts: np.ndarray,
    wall: np.ndarray,
    radius_map: np.ndarray,
    chroma: np.ndarray,
    min_step: float,
) -> np.ndarray | None:
    """Parts merged again where they have one colour (mean chromaticities apart by less
    than `min_step`) and join broadly through `wall` (the object's pixels above
    `WALL_LEVEL`): the chambers of one test, whose suture the body level cut. Broadly:
    the pass between them on the wall (`_neck_parts`' measure) is at least `WALL_PASS`
    x the smaller part's own radius (`radius_map`, the body's distance transform).
    None: one part left."""
    k = int(parts.max())
    inside = parts > 0
    flat = parts[inside]
    count = np.maximum(np.bincount(flat, minlength=k + 1).astype(np.float64), 1.0)
    sums = [np.bincount(flat, weights=chroma[..., c][inside], minlength=k + 1) for c in range(3)]
    mean = np.stack(sums, axis=1) / count[:, None]
    alike = np.abs(mean[1:, None, :] - mean[None, 1:, :]).sum(axis=2) < min_step
    if not np.triu(alike, 1).any():
        return parts  # no two parts of one colour: nothing to join (skips the flooding)
    radius = _max_per_label(flat, radius_map[inside], k + 1)
    wall = wall | inside
    dist = ndi.distance_transform_edt(wall).astype(np.float32)
    region = _watershed(-dist, np.where(inside, parts, 0), wall).astype(np.int64)
    keys, passes = [], []
    for ra, rb, da, db in (
        (region[1:, :], region[:-1, :], dist[1:, :], dist[:-1, :]),
        (region[:, 1:], region[:, :-1], dist[:, 1:], dist[:, :-1]),
    ):
        contact = (ra != rb) & (ra > 0) & (rb > 0)
        keys.append(ra[contact] * (k + 1) + rb[contact])
        passes.append(np.minimum(da[contact], db[contact]))
    width = _max_per_label(np.concatenate(keys), np.concatenate(passes), (k + 1) ** 2)
    width = width.reshape(k + 1, k + 1)
    width = np.maximum(width, width.T)
    group = np.arange(k + 1)
    for a in range(1, k + 1):
        for b in range(a + 1, k + 1):
            if (
                group[a] != group[b]
                and width[a, b] >= WALL_PASS * min(radius[a], radius[b])
                and np.abs(mean[a] - mean[b]).sum() < min_step
            ):
                group[group == group[b]] = group[a]
    if (group[1:] == np.arange(1, k + 1)).all():
        return parts
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
