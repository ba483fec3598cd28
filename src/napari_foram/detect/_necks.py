"""Splitting objects at narrow necks: one watershed basin per maximum of the distance map,
merged back widest pass first while the pass is wide or the two sides are one specimen
(`split_at_necks`, and the cheap tests that skip objects without a neck).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_foram.detect._image import _max_per_label, _renumber, _watershed
from napari_foram.detect._part_rules import DISTINCT_COLOUR, DISTINCT_MAX_PASS

#: Objects whose area exceeds this many discs of their largest inscribed radius may hold
#: two specimens (a disc is 1, two touching equal discs 2) ... (1.3 left one more
#: touching pair of 672 merged on the benchmark trays)
CANDIDATE_FILL = 1.2


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
