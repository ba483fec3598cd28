"""When two parts of an object are one specimen and when two: their colours, the wall
between them, and a planktic's compact whorl (the rules `_necks` and `_fine_split` apply).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from napari_foram.detect._image import _erode, _max_per_label, _renumber, _watershed

if TYPE_CHECKING:
    from napari_foram.detect._params import DetectionParams

# The touching-specimen splitter (`_fine_split._split_fine`); figures measured on seeded
# synthetic trays with touching groups and on the real pictures in ../shared/realdata. The
# wall, colour and gate settings were chosen on the benchmark's own trays (seeds
# 4242-4253) and seeds 100-111, and checked on seeds 200-211 (docs/benchmarks.md).

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


def _neck_for(colour: bool, params: DetectionParams) -> float:
    """The neck ratio: `params.neck_ratio`, at most `GREY_NECK` without colour."""
    return params.neck_ratio if colour else min(params.neck_ratio, GREY_NECK)


def _chroma(patch: np.ndarray, params: DetectionParams) -> np.ndarray | None:
    """Chromaticities (r, g, b summing to 1) of a colour patch when the colour cue is on;
    None for grey frames.
    """
    if params.split_strict > 0 and patch.ndim == 3 and patch.shape[2] >= 3:
        rgb = patch[:, :, :3].astype(np.float32)
        return rgb / np.maximum(rgb.sum(axis=2, keepdims=True), 1.0)
    return None


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


def _colour_parts(
    parts: np.ndarray, chroma: np.ndarray | None, min_step: float
) -> np.ndarray | None:
    """Parts merged again where their mean colours differ by less than `min_step`
    (None: one part left, or no colour to judge by).
    """
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
    None: one part left.
    """
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
    ~0.5 for two touching discs, ~0.6-0.8 for a planktic's whorl of chambers.
    """
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
