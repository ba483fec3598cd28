"""Placing specimens and touching groups on the tray, and measuring the ground truth."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_foram.synthetic._common import _F32, SpecimenTruth, _Layer


@dataclass
class _Item:
    """One or more layers placed together (a touching pair), in a local canvas."""

    members: list[tuple[int, _Layer, int, int]]  # (specimen index, layer, dy, dx)
    mask: np.ndarray  # union footprint in the canvas
    gap_mask: np.ndarray  # footprint grown by the clearance gap


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _overlap(a: np.ndarray, b: np.ndarray, dy: int, dx: int) -> bool:
    """Whether mask b placed at offset (dy, dx) relative to mask a overlaps a."""
    ha, wa = a.shape
    hb, wb = b.shape
    r0, r1 = max(dy, 0), min(dy + hb, ha)
    c0, c1 = max(dx, 0), min(dx + wb, wa)
    if r0 >= r1 or c0 >= c1:
        return False
    return bool(np.any(a[r0:r1, c0:c1] & b[r0 - dy : r1 - dy, c0 - dx : c1 - dx]))


def _touching_pair(
    i: int, a: _Layer, j: int, b: _Layer, rng: np.random.Generator, gap: int
) -> _Item:
    """Slide b towards a along a random direction until the masks touch (a small overlap,
    as when one specimen rests on the edge of another).
    """
    a_grown = ndi.binary_dilation(a.mask, structure=np.ones((3, 3), bool))
    for _ in range(8):
        ang = rng.uniform(0, 2 * math.pi)
        uy, ux = math.sin(ang), math.cos(ang)
        base = (a.size - b.size) / 2.0

        def off(t: float, uy: float = uy, ux: float = ux, base: float = base) -> tuple[int, int]:
            return round(base + t * uy), round(base + t * ux)

        lo, hi = 0.0, float(a.size + b.size)
        if not _overlap(a.mask, b.mask, *off(lo)) or _overlap(a.mask, b.mask, *off(hi)):
            continue
        while hi - lo > 0.5:
            mid = (lo + hi) / 2
            if _overlap(a.mask, b.mask, *off(mid)):
                lo = mid
            else:
                hi = mid
        t = hi - rng.uniform(0.0, 3.0)  # press in a little: b lies on a's edge
        dy, dx = off(t)
        if _overlap(a_grown, b.mask, dy, dx):
            break
    else:  # give up on a fancy contact: put b right beside a
        dy, dx = off(hi)
    oy, ox = min(0, dy), min(0, dx)
    hh = max(a.size, dy + b.size) - oy
    ww = max(a.size, dx + b.size) - ox
    mask = np.zeros((hh, ww), bool)
    mask[-oy : -oy + a.size, -ox : -ox + a.size] |= a.mask
    mask[dy - oy : dy - oy + b.size, dx - ox : dx - ox + b.size] |= b.mask
    members = [(i, a, -oy, -ox), (j, b, dy - oy, dx - ox)]
    return _Item(members, mask, _grow(mask, gap))


def _overlap_area(a: np.ndarray, b: np.ndarray, dy: int, dx: int) -> int:
    """Pixels where mask b, placed at (dy, dx) relative to mask a, covers a."""
    ha, wa = a.shape
    hb, wb = b.shape
    r0, r1 = max(dy, 0), min(dy + hb, ha)
    c0, c1 = max(dx, 0), min(dx + wb, wa)
    if r0 >= r1 or c0 >= c1:
        return 0
    return int(np.count_nonzero(a[r0:r1, c0:c1] & b[r0 - dy : r1 - dy, c0 - dx : c1 - dx]))


def _attach(
    item: _Item,
    j: int,
    b: _Layer,
    rng: np.random.Generator,
    gap: int,
    *,
    to_last: bool,
    overlap: float = 0.0,
    heading: float | None = None,
) -> tuple[_Item, float]:
    """Slide b towards the group (or only its last member, for a chain) until they touch.

    `overlap` > 0 presses b further in until that fraction of the smaller of the two
    footprints is covered (one specimen lying over the other's rim). `heading` (rad) is
    the direction to come from, jittered; default any. A direction where b would also
    touch other members of a chain is refused. Returns the grown item and the heading.
    """
    if to_last:
        _, last, ly, lx = item.members[-1]
        target = np.zeros_like(item.mask)
        target[ly : ly + last.size, lx : lx + last.size] = last.mask
    else:
        target = item.mask
    others = item.mask & ~ndi.binary_dilation(target, iterations=2) if to_last else None
    rows, cols = np.nonzero(target)
    cy, cx = float(rows.mean()), float(cols.mean())
    need = overlap * min(int(target.sum()), int(b.mask.sum()))
    reach = float(max(item.mask.shape) + b.size)
    off = (0, 0)
    ang = 0.0
    for _ in range(16):
        ang = rng.uniform(0, 2 * math.pi) if heading is None else heading + rng.normal(0, 0.35)
        uy, ux = math.sin(ang), math.cos(ang)

        def at(t: float, uy: float = uy, ux: float = ux) -> tuple[int, int]:
            return round(cy - b.size / 2 + t * uy), round(cx - b.size / 2 + t * ux)

        lo, hi = 0.0, reach
        if not _overlap(target, b.mask, *at(lo)) or _overlap(target, b.mask, *at(hi)):
            continue
        while hi - lo > 0.5:
            mid = (lo + hi) / 2
            if _overlap(target, b.mask, *at(mid)):
                lo = mid
            else:
                hi = mid
        t = hi - rng.uniform(0.0, 2.0)
        while need > 0 and t > 0 and _overlap_area(target, b.mask, *at(t)) < need:
            t -= 1.0
        off = at(t)
        if others is not None and _overlap(
            ndi.binary_dilation(others, iterations=3), b.mask, *off
        ):
            continue
        # Only b's own neighbour may be under it: not the group's other members.
        if (
            not to_last
            and _overlap_area(item.mask, b.mask, *off) > max(need, 0) + 0.15 * b.mask.sum()
        ):
            continue
        break
    dy, dx = off
    oy, ox = min(0, dy), min(0, dx)
    hh = max(item.mask.shape[0], dy + b.size) - oy
    ww = max(item.mask.shape[1], dx + b.size) - ox
    mask = np.zeros((hh, ww), bool)
    mask[-oy : -oy + item.mask.shape[0], -ox : -ox + item.mask.shape[1]] |= item.mask
    mask[dy - oy : dy - oy + b.size, dx - ox : dx - ox + b.size] |= b.mask
    members = [(i, layer, y - oy, x - ox) for i, layer, y, x in item.members]
    members.append((j, b, dy - oy, dx - ox))
    return _Item(members, mask, _grow(mask, gap)), ang


def _group(
    kind: str, members: list[int], layers: list[_Layer], rng: np.random.Generator, gap: int
) -> _Item:
    """A touching group of `GROUP_KINDS` (a single specimen for "deep_planktic")."""
    item = _single(members[0], layers[0], gap)
    heading: float | None = None
    for j, layer in zip(members[1:], layers[1:], strict=True):
        if kind == "chain":
            item, heading = _attach(item, j, layer, rng, gap, to_last=True, heading=heading)
        else:
            press = float(rng.uniform(0.03, 0.08)) if kind == "overlap" else 0.0
            item, _ = _attach(item, j, layer, rng, gap, to_last=False, overlap=press)
    return item


def _grow(mask: np.ndarray, gap: int) -> np.ndarray:
    """Footprint grown by `gap` px (square element), canvas padded so nothing is cut."""
    padded = np.pad(mask, gap)
    grown = ndi.maximum_filter(padded, size=2 * gap + 1)
    return grown


def _single(i: int, layer: _Layer, gap: int) -> _Item:
    return _Item([(i, layer, 0, 0)], layer.mask, _grow(layer.mask, gap))


def _try_place(
    item: _Item,
    occupied: np.ndarray,
    interior: np.ndarray,
    rng: np.random.Generator,
    tries: int,
    clip_edge: str | None,
    gap: int,
) -> tuple[int, int] | None:
    """Top-left corner of the item's canvas where its footprint is free, or None."""
    h, w = occupied.shape
    r0, r1, c0, c1 = _bbox(item.mask)
    mh, mw = r1 - r0, c1 - c0
    for _ in range(tries):
        if clip_edge is None:
            if mh > h - 2 or mw > w - 2:
                return None
            y = int(rng.integers(1 - r0, h - 1 - r1 + 1))
            x = int(rng.integers(1 - c0, w - 1 - c1 + 1))
        else:
            f = rng.uniform(0.2, 0.55)  # fraction of the specimen beyond the frame edge
            if clip_edge in ("top", "bottom"):
                x = int(rng.integers(-c0, max(w - c1, -c0) + 1))
                y = round(-r0 - f * mh) if clip_edge == "top" else round(h - r1 + f * mh)
            else:
                y = int(rng.integers(-r0, max(h - r1, -r0) + 1))
                x = round(-c0 - f * mw) if clip_edge == "left" else round(w - c1 + f * mw)
        # Visible part of the footprint.
        fy0, fx0 = max(y, 0), max(x, 0)
        fy1, fx1 = min(y + item.mask.shape[0], h), min(x + item.mask.shape[1], w)
        if fy0 >= fy1 or fx0 >= fx1:
            continue
        m = item.mask[fy0 - y : fy1 - y, fx0 - x : fx1 - x]
        if clip_edge is not None and m.sum() < 0.3 * item.mask.sum():
            continue
        if not interior[fy0:fy1, fx0:fx1][m].all():
            continue
        if np.any(occupied[fy0:fy1, fx0:fx1] & m):
            continue
        # Stamp the grown footprint so later specimens keep their distance.
        gy, gx = y - gap, x - gap
        gy0, gx0 = max(gy, 0), max(gx, 0)
        gy1, gx1 = min(gy + item.gap_mask.shape[0], h), min(gx + item.gap_mask.shape[1], w)
        occupied[gy0:gy1, gx0:gx1] |= item.gap_mask[gy0 - gy : gy1 - gy, gx0 - gx : gx1 - gx]
        return y, x
    return None


def _measure(
    labels: np.ndarray,
    image: np.ndarray,
    plan: dict[int, dict[str, Any]],
    classes: tuple[str, ...],
) -> list[SpecimenTruth]:
    """Ground truth per label value, measured on the label image itself."""
    h, w = labels.shape
    out = []
    luma = np.array([0.299, 0.587, 0.114], dtype=_F32)
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        sub = labels[sl] == k
        ys, xs = np.nonzero(sub)
        r0, c0 = sl[0].start, sl[1].start
        bbox = (r0, c0, sl[0].stop, sl[1].stop)
        # Touching: any 8-neighbour of the mask holds another specimen.
        e0, e1 = max(r0 - 1, 0), min(sl[0].stop + 1, h)
        f0, f1 = max(c0 - 1, 0), min(sl[1].stop + 1, w)
        around = labels[e0:e1, f0:f1]
        mine = around == k
        grown = ndi.binary_dilation(mine, structure=np.ones((3, 3), bool))
        neigh = around[grown & ~mine]
        touching = bool(np.any((neigh > 0) & (neigh != k)))
        clipped = bool(r0 == 0 or c0 == 0 or sl[0].stop == h or sl[1].stop == w)
        grey = float((image[sl][sub].astype(_F32) @ luma).mean())
        p = plan[k]
        out.append(
            SpecimenTruth(
                id=k,
                class_name=p["class_name"],
                class_index=classes.index(p["class_name"]),
                centroid_yx=(float(ys.mean() + r0), float(xs.mean() + c0)),
                bbox=(int(bbox[0]), int(bbox[1]), int(bbox[2]), int(bbox[3])),
                area_px=len(ys),
                diameter_um=float(p["diameter_um"]),
                clipped=clipped,
                touching=touching,
                overexposed=bool(p["overexposed"]),
                morph=str(p["morph"]),
                mean_grey=round(grey, 2),
            )
        )
    return out
