"""Synthetic out-of-distribution objects: things on a real tray that are none of the classes.

Picked residues hold more than foraminifera and mineral grains: ostracod carapaces,
radiolarian skeletons, shell fragments and echinoid spines turn up in most samples. A
classifier trained on `synthetic.CLASSES` must still assign them to one of its four
classes, so they are the natural test of how well MC-dropout uncertainty flags what the
model never saw.

Each kind is a shape builder with the same signature and output (`synthetic._Shape`) as the
class builders, so the renderer's shading, translucency, shadow, depth of field and
compositing apply unchanged; sizes (170-500 um) and colours (white, cream, tan) are those of
the tray's specimens, so that brightness or size alone does not give them away.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from napari_foram.synthetic import (
    DEFAULT_PIXEL_SIZE_UM,
    _colour,
    _polygon_sd,
    _Shape,
    _unit_noise,
    centred_crop,
    check_seed,
)

__all__ = ["OOD_KINDS", "render_ood_crop", "render_ood_set"]

#: Out-of-distribution object kinds, in the order `render_ood_set` interleaves them.
OOD_KINDS: tuple[str, ...] = ("ostracod", "radiolarian", "fragment", "echinoid_spine")

_F32 = np.float32
#: Mixed into the seed so an OOD crop never shares its tray background with `render_crop`.
_SALT = 0x00D

_Builder = Callable[[np.random.Generator, np.ndarray, np.ndarray, float, float, float], _Shape]


# --------------------------------------------------------------------------- helpers
def _implicit_sd(g: np.ndarray) -> np.ndarray:
    """Signed distance (px) from an implicit function g (> 0 inside): g / |grad g|.

    Exact to first order near the outline, which is all the renderer's anti-aliasing and
    masks use; far from it only the sign matters.
    """
    gy, gx = np.gradient(g.astype(_F32))
    norm = np.sqrt(gx * gx + gy * gy)
    return (g / np.maximum(norm, _F32(0.05))).astype(_F32)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below -0.5, 1 above 0.5, smooth between: one-pixel anti-aliased edges."""
    t = np.clip(x + 0.5, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(_F32)


def _line(dist: np.ndarray, width: float) -> np.ndarray:
    """A soft line (0-1) of about `width` px along dist == 0."""
    return np.exp(-((dist / _F32(width)) ** 2)).astype(_F32)


def _hex_points(
    rng: np.random.Generator, half: float, spacing: float, jitter: float
) -> np.ndarray:
    """Jittered hexagonal lattice covering [-half, half]^2, randomly rotated, (n, 2)."""
    n = int(half * 2 / spacing) + 3
    rows = np.arange(-n, n + 1)
    cols = np.arange(-n, n + 1)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    x = (cc + 0.5 * (rr % 2)) * spacing
    y = rr * spacing * math.sqrt(3) / 2
    pts = np.stack([x.ravel(), y.ravel()], axis=1)
    a = rng.uniform(0, math.pi)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = pts @ rot.T + rng.normal(0.0, jitter * spacing, pts.shape)
    keep = np.all(np.abs(pts) < half + spacing, axis=1)
    return pts[keep]


# --------------------------------------------------------------------------- ostracod
def _shape_ostracod(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, angle: float, d: float, px_um: float
) -> _Shape:
    """A smooth, glossy bivalved carapace: bean-shaped in side view, with a straight hinge.

    Most carapaces lie on one valve (side view): a subrectangular to kidney-shaped outline
    whose dorsal margin is straight along the hinge, the ventral margin often slightly
    concave, one end broader than the other. A third lie on their ventral or dorsal side
    and show both valves, split lengthwise by the straight commissure.
    """
    size = u.shape[0]
    half = d / 2.0
    x = u / _F32(half)  # -1 (posterior) .. 1 (anterior)
    ax = np.clip(np.abs(x), 0.0, 1.0)
    surface = np.zeros((size, size), dtype=_F32)
    groove = np.zeros((size, size), dtype=_F32)
    margin = np.zeros((size, size), dtype=_F32)
    if rng.random() < 0.3:  # dorsal view: two valves side by side
        w = half * rng.uniform(0.36, 0.5)
        egg = 1.0 - _F32(rng.uniform(0.05, 0.18)) * x  # broadest behind the middle
        hw = _F32(w) * np.clip(1.0 - ax ** _F32(rng.uniform(1.8, 2.6)), 0.0, None) ** _F32(0.55)
        hw = hw * egg
        g = np.minimum(hw - np.abs(v), (1.0 - ax) * _F32(half))
        sd = _implicit_sd(g)
        yn = np.clip(v / np.maximum(hw, _F32(1e-3)), -1.0, 1.0)
        height = _F32(w * rng.uniform(0.8, 1.0)) * np.sqrt(np.clip(1.0 - yn * yn, 0.0, None))
        height *= np.sqrt(np.clip(1.0 - ax**4, 0.0, None))
        # The commissure: where the valves meet, a straight groove down the middle, slightly
        # off-centre because one valve overlaps the other.
        off = _F32(w * rng.uniform(-0.08, 0.08))
        crease = _line(v - off, 1.2) * (ax < 0.97)
        height -= crease * _F32(min(2.5, 0.04 * w + 1.0))
        groove = np.maximum(groove, crease * _F32(0.85))
        morph = "ostracod-dorsal"
    else:  # side view of one valve
        hh = half * rng.uniform(0.5, 0.62)  # half the carapace's height
        n = rng.uniform(2.3, 3.2)  # > 2: boxy, subrectangular outline
        # The anterior end (x > 0) broadly rounded, the posterior lower and narrower.
        n_x = np.where(x > 0, _F32(n), _F32(n * rng.uniform(0.7, 0.85)))
        e = np.clip(1.0 - ax**n_x, 0.0, None) ** (1.0 / n_x)
        taper = 1.0 + _F32(rng.uniform(0.05, 0.15)) * x
        prof = e * taper
        hinge = _F32(rng.uniform(0.82, 0.92))
        top = _F32(hh) * np.minimum(prof, hinge)  # straight dorsal margin along the hinge
        conc = rng.uniform(0.04, 0.16) if rng.random() < 0.7 else 0.0
        sag = _F32(conc * hh) * np.exp(-(((x - _F32(rng.uniform(-0.2, 0.25))) / 0.4) ** 2))
        bot = -_F32(hh) * prof + sag * e  # a slightly concave (kidney) ventral margin
        g = np.minimum(np.minimum(top - v, v - bot), (1.0 - ax) * _F32(half * 0.6))
        sd = _implicit_sd(g)
        inside = g > 0
        mid = (top + bot) / 2
        hv = np.maximum((top - bot) / 2, _F32(1e-3))
        yn = np.clip((v - mid) / hv, -1.0, 1.0)
        thick = hh * rng.uniform(0.5, 0.7)
        # A smooth dome, thickest behind the middle.
        q = np.clip(1.0 - yn * yn, 0.0, None) * np.clip(1.0 - ax**3, 0.0, None)
        height = _F32(thick) * q ** _F32(0.6) * (1.0 - _F32(0.12) * x)
        # Along the straight hinge the other valve's dorsal edge shows as a narrow flat
        # strip above a fine straight groove (the hinge line).
        straight = ndi.uniform_filter1d((prof >= hinge).astype(_F32), 5, axis=1)
        strip = _F32(max(2.5, 0.07 * hh))
        below = top - v  # px below the dorsal margin
        in_strip = np.clip(strip - below + 0.5, 0.0, 1.0) * straight * inside
        height = height * (1.0 - in_strip) + _F32(thick * 0.35) * in_strip
        hinge_line = _line(below - strip, 1.0) * straight * inside
        groove = np.maximum(groove, hinge_line * _F32(0.9))
        height -= hinge_line * _F32(1.0)
        # The free margin (ventral and both ends): a thin, clearer marginal zone bounded by
        # the line where the valve's inner lamella joins it, and in most carapaces the
        # larger valve's edge overlapping the smaller one.
        free = (1.0 - straight) * inside
        zone = _F32(hh * rng.uniform(0.1, 0.16))
        groove = np.maximum(groove, _line(sd - zone, 0.9) * free * _F32(0.55))
        margin = np.clip(zone - sd, 0.0, 1.0) * free
        surface -= margin * _F32(0.6)
        if rng.random() < 0.6:
            inset = _F32(rng.uniform(1.8, 3.0))
            groove = np.maximum(groove, _line(sd - inset, 0.7) * free * _F32(0.6))
        if rng.random() < 0.35:  # eye tubercle near the anterodorsal corner
            ty, tx = -hh * 0.62, half * 0.6
            r2 = ((v - _F32(ty)) ** 2 + (u - _F32(tx)) ** 2) / _F32((0.06 * hh + 1.5) ** 2)
            height += _F32(2.0) * np.exp(-r2)
        morph = "ostracod-lateral"
    if rng.random() < 0.35:
        # Sparse, shallow normal-pore canals: a punctate surface, far sparser than a
        # planktic's pores.
        pts = _hex_points(rng, half * 1.1, rng.uniform(9.0, 14.0), 0.25)
        dist, _ = cKDTree(pts).query(np.stack([u.ravel(), v.ravel()], axis=1))
        pit = _line(dist.reshape(size, size).astype(_F32), 0.9)
        surface -= pit * _F32(0.7)
    surface += _unit_noise(rng, (size, size), 5.0) * _F32(0.08)
    height = np.where(sd > 0, np.maximum(height + surface, 0.5), 0.0).astype(_F32)
    palette = [(0.95, 0.93, 0.87), (0.94, 0.89, 0.76), (0.88, 0.78, 0.58), (0.78, 0.64, 0.46)]
    base = _colour(palette[int(rng.choice(4, p=[0.35, 0.3, 0.2, 0.15]))], rng, 0.04)
    # Glossy calcite carapace: uniform colour, broad soft mottling, no grains or pores.
    shade = (1.0 + _F32(0.05) * _unit_noise(rng, (size, size), 6.0)) * (1.0 - margin * 0.12)
    albedo = base[:, None, None] * shade[None]
    return _Shape(
        sd,
        height,
        albedo.astype(_F32),
        groove.astype(_F32),
        spec=rng.uniform(0.5, 0.9),
        shininess=rng.uniform(30.0, 80.0),
        translucency=rng.uniform(0.0, 0.25),
        morph=morph,
    )


# --------------------------------------------------------------------------- radiolarian
def _spines(
    u: np.ndarray,
    v: np.ndarray,
    starts: list[tuple[float, float]],
    ends: list[tuple[float, float]],
    width0: float,
    width1: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Union of thin tapering rods: (signed distance, height), each (S, S)."""
    sd = np.full(u.shape, -1e3, dtype=_F32)
    height = np.zeros(u.shape, dtype=_F32)
    for (a0, b0), (a1, b1) in zip(starts, ends, strict=True):
        ex, ey = a1 - a0, b1 - b0
        ln2 = max(ex * ex + ey * ey, 1e-6)
        t = np.clip(((u - _F32(a0)) * _F32(ex) + (v - _F32(b0)) * _F32(ey)) / _F32(ln2), 0, 1)
        dist = np.hypot(u - _F32(a0) - t * _F32(ex), v - _F32(b0) - t * _F32(ey))
        hw = _F32(width0) + (_F32(width1) - _F32(width0)) * t
        sdk = hw - dist
        hk = np.sqrt(np.clip(hw * hw - dist * dist, 0.0, None)) + _F32(1.0)
        np.maximum(sd, sdk, out=sd)
        np.maximum(height, np.where(sdk > 0, hk, 0.0), out=height)
    return sd, height


def _fibonacci_sphere(n: int, rng: np.random.Generator) -> np.ndarray:
    """N nearly evenly spread unit vectors (a golden-angle spiral), randomly rotated."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    r = np.sqrt(1.0 - z * z)
    pts = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    return pts @ q.T


def _shape_radiolarian(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, angle: float, d: float, px_um: float
) -> _Shape:
    """A glassy opal lattice: a porous sphere with radial spines, or a segmented cone.

    Spumellaria (60 %) are latticed spheres with an even, near-hexagonal pore grid and a
    few thin radial spines; Nassellaria (40 %) are bell- or cone-shaped, a small domed
    cephalis with an apical horn, then wider segments with pores in transverse rows. The
    silica is clear: the dark tray shows through the face of the shell and the rim glows.
    """
    size = u.shape[0]
    half = d / 2.0
    spacing = rng.uniform(6.0, 10.0) * 2.5 / max(px_um, 0.5)  # ~15-25 um between pores
    spacing = max(spacing, 4.0)
    pore_r = spacing * rng.uniform(0.3, 0.4)
    groove = np.zeros((size, size), dtype=_F32)
    if rng.random() < 0.6:
        n_sp = int(rng.choice([0, 3, 5, 8, 12], p=[0.2, 0.2, 0.25, 0.2, 0.15]))
        radius = half * (rng.uniform(0.6, 0.78) if n_sp else 0.97)
        r2 = u * u + v * v
        sd = _F32(radius) - np.sqrt(r2)
        z = np.sqrt(np.clip(_F32(radius * radius) - r2, 0.0, None))
        height = z * _F32(0.95)
        n_pts = int(4 * math.pi * radius * radius / (spacing * spacing * 0.866))
        pts = _fibonacci_sphere(max(n_pts, 12), rng) * radius
        p3 = np.stack([u.ravel(), v.ravel(), z.ravel()], axis=1)
        dist, _ = cKDTree(pts).query(p3)
        pores = _smoothstep(_F32(pore_r) - dist.reshape(size, size).astype(_F32))
        pores *= (sd > 1.0).astype(_F32)
        starts: list[tuple[float, float]] = []
        ends: list[tuple[float, float]] = []
        for _ in range(n_sp):
            dvec = rng.standard_normal(3)
            dvec /= np.linalg.norm(dvec)
            flat = math.hypot(dvec[0], dvec[1])
            if flat < 0.45:  # pointing at the viewer: hidden in the shell's glare
                continue
            cu, cv = dvec[0] / flat, dvec[1] / flat
            reach = radius + (half - radius) * flat * rng.uniform(0.75, 1.0)
            starts.append((cu * radius * 0.85, cv * radius * 0.85))
            ends.append((cu * reach, cv * reach))
        if starts:
            w0 = max(1.6, 0.03 * radius)
            sd_s, h_s = _spines(u, v, starts, ends, w0, 0.55)
            outside = sd <= 0
            height = np.where(outside & (sd_s > 0), h_s, height).astype(_F32)
            sd = np.maximum(sd, sd_s)
        if rng.random() < 0.4:  # a medullary shell seen through the pores
            inner = _F32(radius * rng.uniform(0.35, 0.55))
            ring = _line(np.sqrt(r2) - inner, 1.2)
            groove = np.maximum(groove, ring * pores * _F32(0.5))
        morph = "radiolarian-spumellarian"
    else:
        # Profile along the axis: apex (cephalis) at u = -half, open mouth at the far end.
        length = d
        horn = length * rng.uniform(0.08, 0.18)
        body = length - horn
        rc = body * rng.uniform(0.1, 0.14)  # cephalis radius
        n_seg = int(rng.integers(2, 4))
        cuts = np.sort(rng.uniform(0.25, 0.9, n_seg - 1))
        r_max = body * rng.uniform(0.28, 0.38)
        s = (u + _F32(half - horn)) / _F32(body)  # 0 at apex, 1 at mouth
        # A bell: quick widening behind the cephalis, then nearly cylindrical.
        flare = rng.uniform(1.8, 3.0)
        prof = _F32(rc) + _F32(r_max - rc) * (1.0 - np.exp(-np.clip(s, 0, None) * _F32(flare)))
        stricture = np.zeros_like(prof)
        for c in cuts:
            stricture += _line(s - _F32(c), 0.025)
        prof = prof * (1.0 - _F32(0.08) * stricture)
        cap = np.sqrt((u + _F32(half - horn - rc)) ** 2 + v * v)  # cephalis dome
        g = np.minimum(prof - np.abs(v), (_F32(1.0) - s) * _F32(body))
        g = np.where(s < rc / body, _F32(rc) - cap, g)
        mouth = rng.random() < 0.6  # broken, ragged mouth: a flat cut with jitter
        if mouth:
            g = g + _unit_noise(rng, (size, size), 1.2) * _F32(1.5) * (s > 0.9)
        sd = _implicit_sd(g)
        vn = np.clip(v / np.maximum(prof, _F32(1e-3)), -1.0, 1.0)
        height = prof * np.sqrt(np.clip(1.0 - vn * vn, 0.0, None)) * _F32(0.9)
        height = np.where(
            s < rc / body, np.sqrt(np.clip(_F32(rc * rc) - cap * cap, 0, None)), height
        )
        # Pores in transverse rows on the surface of revolution: position round the body is
        # arc length r * asin(v / r), so pores crowd towards the silhouette.
        arc = prof * np.arcsin(vn)
        row_h = spacing * 0.866
        best = np.full((size, size), np.inf, dtype=_F32)
        row0 = np.floor(u / _F32(row_h))
        for k in (0.0, 1.0):
            row = row0 + _F32(k)
            shift = (row % 2) * _F32(0.5)
            cu = row * _F32(row_h)
            ca = (np.round(arc / _F32(spacing) - shift) + shift) * _F32(spacing)
            np.minimum(best, np.hypot(u - cu, arc - ca), out=best)
        pores = _smoothstep(_F32(pore_r) - best)
        pores *= ((s > rc / body * 1.3) & (sd > 1.0)).astype(_F32)
        pores *= 1.0 - np.clip(stricture * 1.5, 0.0, 1.0)  # solid collars between segments
        groove = np.maximum(groove, stricture * (sd > 0) * _F32(0.6))
        # The apical horn, plus a few short feet at the mouth.
        starts = [(-(half - horn) + 1.0, 0.0)]
        ends = [(-half + 1.0, float(rng.uniform(-0.15, 0.15) * horn))]
        if rng.random() < 0.5:
            for side in (-1.0, 1.0):
                r_end = float(r_max * 0.9)
                starts.append((half - 3.0, side * r_end))
                ends.append((half + 0.5 - 1.0, side * (r_end + rng.uniform(0.5, 3.0))))
        sd_s, h_s = _spines(u, v, starts, ends, max(1.8, 0.035 * r_max * 2), 0.6)
        height = np.where((sd <= 0) & (sd_s > 0), h_s, height).astype(_F32)
        sd = np.maximum(sd, sd_s)
        morph = "radiolarian-nassellarian"
    # Pores are holes in clear silica: deep, and dark where the far wall or the tray shows.
    height = height - pores * _F32(1.2)
    height += _unit_noise(rng, (size, size), 0.8) * _F32(0.1)
    height = np.where(sd > 0, np.maximum(height, 0.3), 0.0).astype(_F32)
    base = _colour((0.93, 0.93, 0.9), rng, 0.03)
    shade = 1.0 - _F32(rng.uniform(0.7, 0.82)) * pores
    albedo = base[:, None, None] * shade[None]
    return _Shape(
        sd.astype(_F32),
        height,
        albedo.astype(_F32),
        np.clip(groove, 0.0, 1.0).astype(_F32),
        spec=rng.uniform(0.35, 0.7),
        shininess=rng.uniform(40.0, 90.0),
        translucency=rng.uniform(0.4, 0.65),
        morph=morph,
    )


# --------------------------------------------------------------------------- fragment
def _shape_fragment(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, angle: float, d: float, px_um: float
) -> _Shape:
    """A broken piece of a calcareous test: an angular shard of curved, porous wall.

    The outline is a few straight, finely jagged fracture edges, often with one stretch of
    the chamber's intact, rounded margin. The surface is a piece of a sphere: the outer
    face up (convex, pores or a honeycomb of pore pits, sometimes a suture where the next
    chamber joined) or the inner face up (a smooth bowl crossed by a septum). Along the
    breaks the wall's cross-section shows as a chalky white band.
    """
    size = u.shape[0]
    half = d / 2.0
    n = int(rng.integers(3, 7))
    theta = np.sort((np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * math.pi / n)
    radii = rng.uniform(0.6, 1.0, n)
    aspect = rng.uniform(0.5, 0.85)
    verts = np.stack([radii * np.cos(theta), radii * np.sin(theta) * aspect], axis=1)
    verts -= (verts.min(0) + verts.max(0)) / 2
    verts *= half / np.hypot(verts[:, 0], verts[:, 1]).max()
    sd_poly, _ = _polygon_sd(u, v, verts)
    broken = np.ones((size, size), dtype=_F32)
    sd = sd_poly
    if rng.random() < 0.6:
        # One side is the chamber's own rounded margin: intersect with a disc whose arc
        # cuts off part of the polygon.
        ang = rng.uniform(0, 2 * math.pi)
        rad = half * rng.uniform(1.1, 1.8)
        off = rad - half * rng.uniform(0.55, 0.8)
        cu, cv = -math.cos(ang) * off, -math.sin(ang) * off
        sd_disc = _F32(rad) - np.hypot(u - _F32(cu), v - _F32(cv))
        broken = (sd_poly < sd_disc).astype(_F32)  # which edge is nearer: a break or the arc
        sd = np.minimum(sd_poly, sd_disc)
    # Fracture edges are jagged at the scale of the wall's crystallites.
    sd = (sd + _unit_noise(rng, (size, size), 1.6) * _F32(0.6) * broken).astype(_F32)
    inside = sd > 0
    wall = rng.uniform(2.5, 4.0)  # wall thickness, px
    # Curved surface: part of a chamber (a sphere) whose centre lies off the piece.
    rs = d * rng.uniform(0.42, 0.7)
    ca, cb = rng.uniform(-0.4, 0.4, 2) * half
    rho2 = (u - _F32(ca)) ** 2 + (v - _F32(cb)) ** 2
    dome = np.sqrt(np.clip(_F32(rs * rs) - rho2, 0.0, None))
    outer = rng.random() < 0.65
    groove = np.zeros((size, size), dtype=_F32)
    surface = np.zeros((size, size), dtype=_F32)
    if outer:
        height = dome.copy()
        if rng.random() < 0.5:
            # A suture: the next chamber's wall meets this one along a curved crease.
            rs2 = rs * rng.uniform(0.6, 0.9)
            a2 = rng.uniform(0, 2 * math.pi)
            c2u = ca + math.cos(a2) * (rs + rs2) * 0.62
            c2v = cb + math.sin(a2) * (rs + rs2) * 0.62
            dome2 = np.sqrt(
                np.clip(_F32(rs2 * rs2) - (u - _F32(c2u)) ** 2 - (v - _F32(c2v)) ** 2, 0, None)
            )
            dome2 = dome2 - _F32(rs * 0.12)
            height = np.maximum(height, dome2)
            groove = np.maximum(groove, _line(dome - dome2, 1.3) * _F32(0.8))
        # The outer wall's pores: round pits, in half of the pieces sunk in a honeycomb of
        # ridges (a cancellate wall), as on a globigerinid.
        spacing = rng.uniform(4.5, 7.5) * 2.5 / max(px_um, 0.5)
        pts = _hex_points(rng, half * 1.2, spacing, 0.18)
        dist, _ = cKDTree(pts).query(np.stack([u.ravel(), v.ravel()], axis=1), k=2)
        d1 = dist[:, 0].reshape(size, size).astype(_F32)
        d2 = dist[:, 1].reshape(size, size).astype(_F32)
        pore = _smoothstep(_F32(spacing * rng.uniform(0.16, 0.24)) - d1)
        surface -= pore * _F32(1.2)
        if rng.random() < 0.5:
            ridge = _line(d2 - d1, 0.9)
            surface += ridge * _F32(0.9) - _F32(0.3)
            groove = np.maximum(groove, (1.0 - ridge) * _F32(0.15))
        morph = "fragment-outer"
    else:
        height = -dome
        pore = np.zeros((size, size), dtype=_F32)
        if rng.random() < 0.85:
            # A septum: the wall between two chambers stands up from the inner face.
            a = rng.uniform(0, math.pi)
            line = (u * _F32(math.cos(a)) + v * _F32(math.sin(a))) - _F32(
                rng.uniform(-0.3, 0.3) * half
            )
            line = line + _F32(rng.uniform(-0.004, 0.004)) * (u * u + v * v)  # curved
            sept = np.exp(-((line / _F32(wall * 0.9)) ** 2))
            height = height + sept * _F32(rng.uniform(0.12, 0.22) * d)
            groove = np.maximum(groove, _line(np.abs(line) - _F32(wall * 1.6), 0.8) * _F32(0.5))
        morph = "fragment-inner"
    # Pieces lie tilted on the tray: a random slope, then lift so the lowest point rests on it.
    su, sv = rng.uniform(-0.25, 0.25, 2)
    height = height + u * _F32(su) + v * _F32(sv)
    if inside.any():
        height = height - _F32(height[inside].min()) + _F32(wall)
    height = height + surface
    height += _unit_noise(rng, (size, size), 0.8) * _F32(0.12)
    # The break shows the wall in section: a narrow chalky band with a fine line inside it.
    band = (np.clip(_F32(wall) - sd, 0.0, 1.0) * broken * inside).astype(_F32)
    groove = np.maximum(groove, _line(sd - _F32(wall + 0.5), 0.8) * broken * _F32(0.7))
    height = np.where(inside, np.maximum(height, 0.5), 0.0).astype(_F32)
    palette = [(0.95, 0.93, 0.88), (0.94, 0.9, 0.8), (0.88, 0.8, 0.64)]
    base = _colour(palette[int(rng.integers(len(palette)))], rng, 0.035)
    shade = (1.0 - _F32(0.25) * pore) * (1.0 + _F32(0.06) * _unit_noise(rng, (size, size), 3.0))
    albedo = base[:, None, None] * shade[None]
    chalk = np.array([0.98, 0.97, 0.95], dtype=_F32)
    albedo = albedo * (1.0 - band)[None] + chalk[:, None, None] * band[None]
    return _Shape(
        sd,
        height,
        np.clip(albedo, 0.0, 1.0).astype(_F32),
        np.clip(groove, 0.0, 1.0).astype(_F32),
        spec=rng.uniform(0.15, 0.4) if outer else rng.uniform(0.4, 0.7),
        shininess=rng.uniform(15.0, 40.0) if outer else rng.uniform(40.0, 80.0),
        translucency=rng.uniform(0.05, 0.3),
        morph=morph,
    )


# --------------------------------------------------------------------------- echinoid spine
def _shape_echinoid_spine(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, angle: float, d: float, px_um: float
) -> _Shape:
    """A sea-urchin spine: a long, tapering calcite rod with fine longitudinal ribs.

    The base has a knob (the socket end) and a collar, the milled ring, with fine transverse
    ridges; the shaft tapers to a point or ends in a flat break. Ribs run the full length
    and converge towards the tip. Aspect (length over base width) 5-8: longer ones are what
    the detector takes for fibres or scale bars.
    """
    size = u.shape[0]
    half = d / 2.0
    aspect = rng.uniform(5.0, 8.0)
    wb = d / aspect / 2.0  # base half-width
    s = (u + _F32(half)) / _F32(d)  # 0 at the base, 1 at the tip
    bend = _F32(rng.uniform(-0.05, 0.05) * d)
    vc = v - bend * (s - 0.5) ** 2 * 4.0  # a slightly curved axis
    knob_end = rng.uniform(0.05, 0.08)
    ring_w = rng.uniform(0.025, 0.04)
    tip = rng.uniform(0.1, 0.3)
    p = rng.uniform(0.8, 1.4)
    shaft_t = np.clip((s - knob_end - ring_w) / _F32(1 - knob_end - ring_w), 0.0, 1.0)
    prof = _F32(wb * 0.88) * (1.0 - _F32(1.0 - tip) * shaft_t ** _F32(p))
    knob = _F32(wb * 0.78) * np.sqrt(np.clip(1.0 - ((s - knob_end) / knob_end) ** 2, 0.0, 1.0))
    in_knob = s < knob_end
    prof = np.where(in_knob, np.maximum(knob, _F32(wb * 0.6)), prof)
    ring = (s >= knob_end) & (s < knob_end + ring_w)
    prof = np.where(ring, _F32(wb), prof)
    end = 1.0
    if rng.random() < 0.4:  # broken off: a flat end, wider than a point
        end = rng.uniform(0.75, 0.92)
    g = np.minimum(prof - np.abs(vc), np.minimum(s, _F32(end) - s) * _F32(d))
    g = np.where(
        in_knob, np.minimum(g, _F32(wb * 0.78) * 1.2 - np.hypot((s - knob_end) * _F32(d), vc)), g
    )
    sd = _implicit_sd(g)
    inside = sd > 0
    vn = np.clip(vc / np.maximum(prof, _F32(1e-3)), -1.0, 1.0)
    height = prof * np.sqrt(np.clip(1.0 - vn * vn, 0.0, None))
    # Ribs: evenly spaced round the circumference, so in the image they crowd towards the
    # silhouette and converge towards the tip with the shrinking radius.
    n_ribs = int(rng.integers(7, 14))
    phi = np.arcsin(vn)
    rib = _F32(0.5) + _F32(0.5) * np.cos(phi * _F32(2 * n_ribs) + _F32(rng.uniform(0, 6.3)))
    shaft = (s > knob_end + ring_w) & inside
    height += (rib - 0.5) * prof * _F32(0.12) * shaft
    groove = (1.0 - rib) ** 2 * _F32(0.45) * shaft
    # The milled ring's fine transverse ridges.
    mill = _F32(0.5) + _F32(0.5) * np.cos(u * _F32(2 * math.pi / 2.6))
    height += (mill - 0.5) * _F32(0.8) * ring
    groove = np.maximum(groove, (ring * (1.0 - mill) * 0.5).astype(_F32))
    groove = np.maximum(groove, _line((s - knob_end) * _F32(d), 1.0) * inside * _F32(0.6))
    height += _unit_noise(rng, (size, size), 1.0) * _F32(0.1)
    height = np.where(inside, np.maximum(height, 0.5), 0.0).astype(_F32)
    palette = [(0.95, 0.93, 0.88), (0.92, 0.87, 0.76), (0.86, 0.78, 0.64), (0.9, 0.84, 0.8)]
    base = _colour(palette[int(rng.integers(len(palette)))], rng, 0.035)
    shade = 1.0 + _F32(0.04) * _unit_noise(rng, (size, size), 4.0)
    albedo = base[:, None, None] * shade[None]
    return _Shape(
        sd,
        height,
        albedo.astype(_F32),
        np.clip(groove, 0.0, 1.0).astype(_F32),
        spec=rng.uniform(0.3, 0.6),
        shininess=rng.uniform(30.0, 70.0),
        translucency=rng.uniform(0.1, 0.35),
        morph="echinoid_spine",
    )


_OOD_SHAPES: dict[str, _Builder] = {
    "ostracod": _shape_ostracod,
    "radiolarian": _shape_radiolarian,
    "fragment": _shape_fragment,
    "echinoid_spine": _shape_echinoid_spine,
}
#: Nominal sizes (um, longest dimension, spines included), drawn log-uniformly.
_OOD_SIZE_UM: dict[str, tuple[float, float]] = {
    "ostracod": (250.0, 460.0),
    "radiolarian": (170.0, 420.0),
    "fragment": (220.0, 480.0),
    "echinoid_spine": (300.0, 500.0),
}


# --------------------------------------------------------------------------- public API
def _check_kind(kind: str) -> int:
    if kind not in _OOD_SHAPES:
        raise ValueError(f"unknown OOD kind {kind!r}; expected one of {', '.join(OOD_KINDS)}")
    return OOD_KINDS.index(kind)


def render_ood_crop(
    kind: str, seed: int, *, size: int = 224, pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM
) -> np.ndarray:
    """One out-of-distribution object centred on tray background, like `render_crop`.

    Parameters
    ----------
    kind
        One of `OOD_KINDS`.
    seed
        Same seed and kind, same pixels.
    size
        Side of the square crop (px); objects are capped at 90 % of it.
    pixel_size_um
        Micrometres per pixel.

    Returns
    -------
    numpy.ndarray
        (size, size, 3) uint8 RGB, the object's centre of mass at the crop centre (moved
        just enough to keep a long object entirely inside the crop).

    Raises
    ------
    ValueError
        Unknown kind, negative or non-integer seed, size under 32, pixel size not positive.
    """
    k = _check_kind(kind)
    seed = check_seed(seed)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an integer >= 32, got {size!r}")
    if not pixel_size_um > 0:
        raise ValueError(f"pixel_size_um must be positive, got {pixel_size_um}")
    # The same recipe as `render_crop`, so background, lint, dust, exposure and noise
    # follow the same distributions as the in-distribution crops.
    return centred_crop(
        np.random.SeedSequence([seed, _SALT, k]),
        kind,
        int(size),
        pixel_size_um,
        builder=_OOD_SHAPES[kind],
        size_um=_OOD_SIZE_UM[kind],
        keep_inside=True,
    )


def render_ood_set(n_per_kind: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """A set of 224 x 224 OOD crops, `n_per_kind` of every kind, kinds interleaved.

    Parameters
    ----------
    n_per_kind
        Crops of each kind (0 gives an empty set).
    seed
        Same seed, same set; crop i of a kind uses its own seed derived from this one.

    Returns
    -------
    crops
        (n_per_kind * len(OOD_KINDS), 224, 224, 3) uint8.
    kinds
        The kind of each crop: ``OOD_KINDS`` repeated ``n_per_kind`` times.
    """
    if (
        isinstance(n_per_kind, bool)
        or not isinstance(n_per_kind, (int, np.integer))
        or n_per_kind < 0
    ):
        raise ValueError(f"n_per_kind must be a non-negative integer, got {n_per_kind!r}")
    seed = check_seed(seed)
    crops = np.zeros((int(n_per_kind) * len(OOD_KINDS), 224, 224, 3), dtype=np.uint8)
    kinds: list[str] = []
    for i in range(int(n_per_kind)):
        crop_seed = int(np.random.SeedSequence([seed, _SALT, i]).generate_state(1)[0])
        for kind in OOD_KINDS:
            crops[len(kinds)] = render_ood_crop(kind, crop_seed)
            kinds.append(kind)
    return crops, kinds
