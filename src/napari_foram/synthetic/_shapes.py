"""Specimen shapes: signed distance, height, albedo and sutures of each class's forms."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from napari_foram.synthetic._common import _F32, _colour, _Shape, _smooth, _unit_noise


def _chamber_union(
    u: np.ndarray, v: np.ndarray, angle: float, chambers: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union of ellipsoidal chambers: (signed distance, height, owner index), each (S, S).

    `chambers` rows are (cu, cv, a, b, tilt, h, z): centre in the specimen frame (px),
    semi-axes (px), tilt of the a-axis from u (rad), dome height and base height (px).
    Each chamber is evaluated only inside its bounding square.
    """
    size = u.shape[0]
    sd = np.full((size, size), -1e3, dtype=_F32)
    height = np.zeros((size, size), dtype=_F32)
    owner = np.full((size, size), -1, dtype=np.int16)
    c = (size - 1) / 2.0
    ca, sa = math.cos(angle), math.sin(angle)
    for k, (cu, cv, a, b, tilt, h, z) in enumerate(chambers):
        # u = x cos + y sin, v = y cos - x sin  =>  x = u cos - v sin, y = u sin + v cos
        px, py = cu * ca - cv * sa + c, cu * sa + cv * ca + c
        rad = max(a, b) + 3.0
        r0, r1 = max(int(py - rad), 0), min(int(py + rad) + 2, size)
        c0, c1 = max(int(px - rad), 0), min(int(px + rad) + 2, size)
        if r0 >= r1 or c0 >= c1:
            continue
        du, dv = u[r0:r1, c0:c1] - _F32(cu), v[r0:r1, c0:c1] - _F32(cv)
        ct, st = _F32(math.cos(tilt)), _F32(math.sin(tilt))
        p = (du * ct + dv * st) / _F32(a)
        q = (dv * ct - du * st) / _F32(b)
        r2 = p * p + q * q
        r = np.sqrt(r2)
        sdk = (1.0 - r) * _F32(min(a, b))
        hk = _F32(z) + _F32(h) * np.sqrt(np.clip(1.0 - r2, 0.0, None))
        hk[r2 >= 1.0] = 0.0
        sub_h = height[r0:r1, c0:c1]
        better = (hk > sub_h) & (r2 < 1.0)
        sub_h[better] = hk[better]
        owner[r0:r1, c0:c1][better] = k
        np.maximum(sd[r0:r1, c0:c1], sdk, out=sd[r0:r1, c0:c1])
    return sd, height, owner


def _owner_grooves(owner: np.ndarray, width: float) -> np.ndarray:
    """Soft lines (0-1) where neighbouring pixels belong to different chambers: sutures."""
    e = np.zeros(owner.shape, dtype=_F32)
    dy = (owner[1:, :] != owner[:-1, :]) & (owner[1:, :] >= 0) & (owner[:-1, :] >= 0)
    dx = (owner[:, 1:] != owner[:, :-1]) & (owner[:, 1:] >= 0) & (owner[:, :-1] >= 0)
    e[1:, :][dy] = 1.0
    e[:, 1:][dx] = 1.0
    g = ndi.gaussian_filter(e, width, truncate=2.5)
    return np.clip(g * _F32(2.2 * width), 0.0, 1.0)


def _fit(chambers: np.ndarray, diameter: float) -> np.ndarray:
    """Centre chambers on their bounding box and scale so the longest extent = diameter."""
    ch = chambers.copy()
    ext = np.maximum(ch[:, 2], ch[:, 3])
    lo_u, hi_u = (ch[:, 0] - ext).min(), (ch[:, 0] + ext).max()
    lo_v, hi_v = (ch[:, 1] - ext).min(), (ch[:, 1] + ext).max()
    ch[:, 0] -= (lo_u + hi_u) / 2
    ch[:, 1] -= (lo_v + hi_v) / 2
    reach = (np.hypot(ch[:, 0], ch[:, 1]) + ext).max()
    ch[:, [0, 1, 2, 3, 5, 6]] *= diameter / 2.0 / reach
    return ch


def _shape_planktic(
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    angle: float,
    d: float,
    px_um: float,
    *,
    deep: bool = False,
) -> _Shape:
    """Globular chambers on a trochospiral: 3-5 in the last whorl, growing in size.

    `deep`: few, globular, widely spread chambers (Globigerina-like) with deep dark
    sutures, the planktic a splitter most easily cuts apart; random draws are the same as
    without it up to the spread, so it changes the form, not the specimen's identity.
    """
    n_w = int(rng.choice([3, 4, 5], p=[0.2, 0.5, 0.3]))
    spiral_side = rng.random() < 0.5
    growth = rng.uniform(1.7, 2.7) ** (1.0 / n_w)
    dphi = 2 * math.pi / n_w * rng.uniform(0.9, 1.0)
    sense = 1 if rng.random() < 0.5 else -1
    spread = rng.uniform(0.95, 1.2)
    if deep:
        # Chambers set further out: they overlap only at their rims, so the outline has
        # deep notches between them (but they still join: one test).
        spread = 1.18 + 0.1 * (spread - 0.95) / 0.25
    phi0 = rng.uniform(0, 2 * math.pi)
    first = -n_w - 2 if spiral_side else 0
    rows = []
    for k in range(first, n_w):
        s = growth**k
        phi = phi0 + sense * k * dphi
        r = s * spread * (0.85 if k < 0 else 1.0)
        a, b = s * rng.uniform(0.97, 1.08), s * rng.uniform(0.82, 0.95)
        # Early whorls sit higher on the spiral side (a low cone), hidden on the umbilical.
        z = 0.25 * growth ** (n_w - 1) if k < 0 else 0.0
        rows.append((r * math.cos(phi), r * math.sin(phi), b, a, phi, s * rng.uniform(0.8, 1), z))
    floor_r = growth**0 * spread * 0.95
    rows.insert(0, (0.0, 0.0, floor_r, floor_r, 0.0, 0.25, 0.0))  # umbilicus / early whorl
    ch = _fit(np.array(rows, dtype=float), d)
    sd, height, owner = _chamber_union(u, v, angle, ch)
    size = u.shape[0]
    # Dense fine pores (a few um apart) in a sugary, slightly encrusted wall.
    pores = _unit_noise(rng, (size, size), 0.55)
    pits = np.clip(pores - 0.7, 0.0, 1.5)
    height -= pits * _F32(0.55)
    height += _unit_noise(rng, (size, size), 1.0) * _F32(0.3)
    base = _colour(
        [(0.96, 0.94, 0.88), (0.96, 0.92, 0.82), (0.94, 0.93, 0.90)][int(rng.integers(3))],
        rng,
        0.03,
    )
    factor = np.ones(len(ch) + 1, dtype=_F32)
    factor[1] = 0.35 if not spiral_side else 0.7  # dark umbilicus / deep early whorl
    factor[-1] = rng.uniform(0.9, 1.0)  # thin-walled last chamber
    shade = factor[owner + 1] * (1.0 - 0.2 * np.clip(pits, 0.0, 1.0))
    shade *= 1.0 + 0.06 * _unit_noise(rng, (size, size), 3.0)
    albedo = base[:, None, None] * shade[None]
    groove = _owner_grooves(owner, 1.1)
    if deep:
        groove = np.clip(groove * _F32(1.8), 0.0, 1.0)
    return _Shape(
        sd,
        height,
        albedo,
        groove,
        spec=rng.uniform(0.08, 0.2),
        shininess=12.0,
        translucency=rng.uniform(0.1, 0.35),
        morph="trochospiral-deep" if deep else "trochospiral",
    )


def _lenticular(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, d: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Planispiral lens (Cibicides, Elphidium, Ammonia-like): chambers between spiral sutures."""
    radius = d / 2.0
    ecc = rng.uniform(0.8, 0.97)
    x, y = u / _F32(radius), v / _F32(radius * ecc)
    r = np.sqrt(x * x + y * y) + _F32(1e-3)
    theta = np.arctan2(y, x)
    n_ch = int(rng.integers(7, 14))
    sense = 1.0 if rng.random() < 0.5 else -1.0
    curl = rng.uniform(0.2, 0.6)
    t = (sense * theta + curl * np.log(r)) * _F32(n_ch / (2 * math.pi)) + _F32(rng.uniform(0, 1))
    frac = t - np.floor(t)
    dist = np.minimum(frac, 1.0 - frac)  # 0 on a suture
    suture = np.exp(-((dist * _F32(2 * math.pi * radius / n_ch) / _F32(1.1)) ** 2))
    # The spiral step: the test grows by `step` over one whorl; sutures indent the outline.
    step = rng.uniform(0.05, 0.14)
    turn = np.mod(sense * theta + _F32(rng.uniform(0, 2 * math.pi)), _F32(2 * math.pi))
    edge = (1.0 - step) + _F32(step / (2 * math.pi)) * turn
    edge = edge * (1.0 - _F32(rng.uniform(0.02, 0.06)) * suture)
    sd = (edge - r) * _F32(radius * ecc)
    q = np.clip(1.0 - (r / edge) ** 2, 0.0, None)
    thick = radius * rng.uniform(0.25, 0.45)
    height = _F32(thick) * q ** _F32(0.6) * (1.0 + 0.06 * (1.0 - suture))
    groove = suture * (r > 0.22) * (r < edge) * _F32(rng.uniform(0.45, 0.8))
    if rng.random() < 0.4:  # umbilical boss (Ammonia-like): a clear knob in the centre
        height += _F32(thick * 0.25) * np.clip(1.0 - (r / 0.25) ** 2, 0.0, None)
    return sd.astype(_F32), height.astype(_F32), groove.astype(_F32), "planispiral"


def _serial_rows(rng: np.random.Generator, d: float, kind: str) -> np.ndarray:
    """Chamber table for biserial, triserial, uniserial and milioline tests (unscaled)."""
    rows: list[tuple[float, ...]] = []
    length = 1.0
    if kind == "biserial":  # Bolivina-like: two alternating rows, flattened
        n = int(rng.integers(8, 15))
        w_top = rng.uniform(0.32, 0.45)
        for k in range(n):
            t = (k + 0.6) / n
            w = w_top * (0.25 + 0.75 * t**0.8)
            side = 1 if k % 2 else -1
            # Broad, low, inclined chambers, each overlapping the one before.
            rows.append(
                (
                    -0.5 + t * length,
                    side * w * 0.2,
                    length / n * 1.25,
                    w * 0.5,
                    side * rng.uniform(0.35, 0.6),
                    w * 0.24,
                    0.0,
                )
            )
    elif kind == "triserial":  # Uvigerina / Bulimina-like: three rows coiling round the axis
        n = int(rng.integers(8, 13))
        w_max = rng.uniform(0.45, 0.6)
        psi0 = rng.uniform(0, 2 * math.pi)
        fusiform = rng.random() < 0.6
        for k in range(n):
            t = (k + 0.7) / n
            w = w_max * (math.sin(math.pi * (0.12 + 0.8 * t)) if fusiform else 0.3 + 0.7 * t**0.6)
            psi = psi0 + k * 2 * math.pi / 3
            front = math.cos(psi)
            if front < -0.55:
                continue
            rows.append(
                (
                    -0.5 + t * length,
                    w * 0.26 * math.sin(psi),
                    length / n * 2.3,
                    w * 0.45,
                    0.2 * math.sin(psi),
                    w * 0.42 * (0.7 + 0.3 * front),
                    0.0,
                )
            )
    elif kind == "uniserial":  # Nodosaria / Lagena-like: a chain of swelling chambers
        n = int(rng.integers(1, 6))
        g = rng.uniform(1.1, 1.35)
        sizes = [g**k for k in range(n)]
        pos = -0.5
        for k, s in enumerate(sizes):
            a = s * (0.55 if n > 1 else 0.85)
            pos += a * (0.75 if k else 1.0)
            rows.append((pos, 0.0, a, s * 0.5, 0.0, s * 0.45, 0.0))
            pos += a * 0.75
        neck = sizes[-1] * 0.14
        rows.append((pos + neck * 1.2, 0.0, neck * 2.2, neck, 0.0, neck * 0.9, 0.0))
    else:  # milioline (Quinqueloculina-like): elongate chambers wrapped along the long axis
        w = rng.uniform(0.5, 0.68)
        rows.append(
            (
                0.0,
                rng.uniform(-0.05, 0.05) * w,
                0.5,
                w * 0.27,
                rng.uniform(-0.08, 0.08),
                w * 0.42,
                0.0,
            )
        )
        for side in (-1, 1):
            rows.append(
                (
                    rng.uniform(-0.06, 0.02),
                    side * w * 0.25,
                    0.46,
                    w * 0.27,
                    side * rng.uniform(0.0, 0.1),
                    w * 0.3,
                    0.0,
                )
            )
        rows.append((0.52, 0.0, 0.05, 0.045, 0.0, 0.05, 0.0))  # apertural neck
    return _fit(np.array(rows, dtype=float), d)


def _shape_calcareous(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, angle: float, d: float, px_um: float
) -> _Shape:
    """Smooth, glossy, white to light-tan tests: lenticular or elongate multi-chambered."""
    size = u.shape[0]
    kind = str(
        rng.choice(
            ["planispiral", "biserial", "triserial", "uniserial", "milioline"],
            p=[0.34, 0.22, 0.22, 0.1, 0.12],
        )
    )
    if kind == "planispiral":
        sd, height, groove, kind = _lenticular(rng, u, v, d)
    else:
        ch = _serial_rows(rng, d, kind)
        sd, height, owner = _chamber_union(u, v, angle, ch)
        groove = _owner_grooves(owner, 0.9 if kind != "milioline" else 1.3)
        if kind == "triserial" and rng.random() < 0.6:  # Uvigerina's costae: fine ribs
            spacing = rng.uniform(4.5, 7.5)
            ribs = (0.5 + 0.5 * np.cos(v * _F32(2 * math.pi / spacing))) ** 3
            height += ribs * _F32(1.6) * (height > 0)
            groove = np.maximum(groove, (1.0 - ribs) * _F32(0.35) * (height > 0))
    height += _unit_noise(rng, (size, size), 1.2) * _F32(0.12)
    perforate = kind == "planispiral" and rng.random() < 0.5
    if perforate:  # fine, low-contrast pores (Cibicides, Ammonia)
        pits = np.clip(_unit_noise(rng, (size, size), 0.7) - 1.2, 0.0, 1.0)
        height -= pits * _F32(0.4)
    else:
        pits = np.zeros((size, size), dtype=_F32)
    palette = [(0.94, 0.93, 0.90), (0.92, 0.89, 0.82), (0.89, 0.82, 0.68), (0.95, 0.95, 0.94)]
    pick = 3 if kind == "milioline" else int(rng.integers(3))
    base = _colour(palette[pick], rng, 0.035)
    shade = (1.0 - 0.15 * pits) * (1.0 + 0.05 * _unit_noise(rng, (size, size), 4.0))
    albedo = base[:, None, None] * shade[None]
    glassy = kind != "milioline" and rng.random() < 0.35
    return _Shape(
        sd,
        height,
        albedo,
        groove,
        spec=rng.uniform(0.45, 0.85),
        shininess=rng.uniform(35, 90),
        translucency=rng.uniform(0.3, 0.55) if glassy else rng.uniform(0.0, 0.12),
        morph=kind,
    )


def _tube(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, d: float
) -> tuple[np.ndarray, np.ndarray]:
    """A gently curved tube of varying width (Rhabdammina / Hyperammina-like)."""
    n_seg = int(rng.integers(3, 6))
    heading = rng.uniform(-0.2, 0.2)
    turn = rng.uniform(-0.25, 0.25)
    pts = [(0.0, 0.0)]
    for _ in range(n_seg):
        heading += turn + rng.uniform(-0.12, 0.12)
        pts.append((pts[-1][0] + math.cos(heading), pts[-1][1] + math.sin(heading)))
    p = np.array(pts)
    p -= (p.min(0) + p.max(0)) / 2
    width = rng.uniform(0.13, 0.22)  # radius relative to the tube's length
    reach = np.hypot(p[:, 0], p[:, 1]).max() + width * n_seg
    scale = d / 2.0 / reach
    p *= scale
    radius0 = width * n_seg * scale
    broken = rng.random() < 0.6
    best = np.full(u.shape, np.inf, dtype=_F32)
    along = np.zeros(u.shape, dtype=_F32)
    cut = np.full(u.shape, np.inf, dtype=_F32)  # distance to the broken ends' planes
    total = 0.0
    for i in range(n_seg):
        a, b = p[i], p[i + 1]
        seg = b - a
        seg_len = float(np.hypot(*seg))
        t = ((u - _F32(a[0])) * _F32(seg[0]) + (v - _F32(a[1])) * _F32(seg[1])) / _F32(seg_len**2)
        tc = np.clip(t, 0.0, 1.0)
        dist = np.hypot(u - _F32(a[0]) - tc * _F32(seg[0]), v - _F32(a[1]) - tc * _F32(seg[1]))
        closer = dist < best
        best[closer] = dist[closer]
        along[closer] = _F32(total) + tc[closer] * _F32(seg_len)
        # A broken end is a flat cut across the tube, not a rounded cap.
        if broken and i == 0:
            np.minimum(cut, t * _F32(seg_len), out=cut)
        if broken and i == n_seg - 1:
            np.minimum(cut, (1.0 - t) * _F32(seg_len), out=cut)
        total += seg_len
    wobble = 1.0 + 0.12 * np.sin(
        along * _F32(2 * math.pi / (total * rng.uniform(0.4, 0.9))) + _F32(rng.uniform(0, 6.3))
    )
    radius = _F32(radius0) * wobble
    sd = np.minimum(radius - best, cut)
    height = radius * np.sqrt(np.clip(1.0 - (best / radius) ** 2, 0.0, None)) * _F32(0.9)
    height[sd <= 0] = 0.0
    return sd.astype(_F32), height.astype(_F32)


def _shape_agglutinated(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, angle: float, d: float, px_um: float
) -> _Shape:
    """Grainy, rough, sand-coloured tests, often elongate or tubular."""
    size = u.shape[0]
    kind = str(
        rng.choice(
            ["tube", "reophax", "textularia", "sphere", "trochammina"],
            p=[0.32, 0.24, 0.16, 0.12, 0.16],
        )
    )
    groove = np.zeros((size, size), dtype=_F32)
    if kind == "tube":
        sd, height = _tube(rng, u, v, d)
    else:
        rows: list[tuple[float, ...]] = []
        if kind == "reophax":  # uniserial chain of grainy chambers on a bent axis
            n = int(rng.integers(3, 6))
            g = rng.uniform(1.12, 1.3)
            bend = rng.uniform(-0.25, 0.25)
            pos = 0.0
            for k in range(n):
                s = g**k
                pos += s * 0.55 if k else 0.0
                rows.append((pos, bend * pos * pos * 0.3, s * 0.62, s * 0.5, 0.0, s * 0.42, 0.0))
                pos += s * 0.55
        elif kind == "textularia":  # broad biserial
            n = int(rng.integers(6, 11))
            w_top = rng.uniform(0.55, 0.72)
            for k in range(n):
                t = (k + 0.6) / n
                w = w_top * (0.3 + 0.7 * t**0.7)
                side = 1 if k % 2 else -1
                rows.append(
                    (t, side * w * 0.24, 1.0 / n * 1.05, w * 0.36, side * 0.35, w * 0.28, 0.0)
                )
        elif kind == "sphere":  # Saccammina / Psammosphaera-like
            rows.append((0.0, 0.0, 1.0, rng.uniform(0.8, 1.0), 0.0, 0.75, 0.0))
        else:  # trochammina: low trochospiral, many chambers
            n_w = int(rng.integers(5, 9))
            growth = rng.uniform(1.8, 2.8) ** (1.0 / n_w)
            rows.append((0.0, 0.0, 0.9, 0.9, 0.0, 0.2, 0.0))  # umbilical floor: no hole
            for k in range(-3, n_w):
                s = growth**k
                phi = k * 2 * math.pi / n_w * 0.95
                rows.append(
                    (
                        s * 0.95 * math.cos(phi),
                        s * 0.95 * math.sin(phi),
                        s * 0.75,
                        s * 0.62,
                        phi,
                        s * 0.45,
                        0.0,
                    )
                )
        ch = _fit(np.array(rows, dtype=float), d)
        sd, height, owner = _chamber_union(u, v, angle, ch)
        groove = _owner_grooves(owner, 1.4) * _F32(0.8)
    grain_px = max(rng.uniform(8.0, 22.0) / px_um, 1.5)
    # Sand grains as discrete domes: random impulses smoothed to grain size. Each grain
    # also carries its own tint (the ratio of two smoothed impulse fields).
    n_grains = int(size * size / grain_px**2 * 0.9)
    iy = rng.integers(0, size, n_grains)
    ix = rng.integers(0, size, n_grains)
    amp = rng.uniform(0.5, 1.0, n_grains).astype(_F32)
    tint = rng.normal(0.0, 1.0, n_grains).astype(_F32)
    imp = np.zeros((2, size, size), dtype=_F32)
    np.add.at(imp[0], (iy, ix), amp)
    np.add.at(imp[1], (iy, ix), amp * tint)
    g_sigma = grain_px / 2.6
    imp = ndi.gaussian_filter(imp, (0, g_sigma, g_sigma), truncate=2.5)
    peak = _F32(1.0 / (2 * math.pi * g_sigma * g_sigma))
    grains = np.clip(imp[0] / peak, 0.0, 2.0) - _F32(0.6)
    tone = imp[1] / np.maximum(imp[0], _F32(1e-4) * peak)
    fine = _unit_noise(rng, (size, size), 0.7)
    # A rough outline: grains stick out of the test's silhouette.
    sd = sd + grains * _F32(grain_px * 0.3) + fine * _F32(0.3)
    inside = sd > 0
    height = np.where(inside, np.maximum(height, 1.0), 0.0).astype(_F32)
    height += (grains * _F32(grain_px * 0.5) + fine * _F32(0.35)) * inside
    palette = [
        (0.74, 0.60, 0.40),
        (0.66, 0.50, 0.32),
        (0.58, 0.44, 0.29),
        (0.79, 0.69, 0.50),
        (0.70, 0.55, 0.42),
    ]
    base = _colour(palette[int(rng.integers(len(palette)))], rng, 0.05)
    shade = 1.0 + 0.14 * np.clip(tone, -2.5, 2.5)
    shade *= np.where(tone > 2.0, _F32(0.5), _F32(1.0))  # dark mineral grains
    albedo = base[:, None, None] * shade[None]
    light = tone < -2.1  # clear quartz grains among the cement
    albedo[:, light] = albedo[:, light] * 0.4 + 0.55
    return _Shape(
        sd.astype(_F32),
        height,
        albedo.astype(_F32),
        groove,
        spec=rng.uniform(0.03, 0.12),
        shininess=8.0,
        translucency=0.0,
        morph=kind,
    )


def _polygon_sd(u: np.ndarray, v: np.ndarray, verts: np.ndarray) -> tuple[np.ndarray, list]:
    """Signed distance (px, > 0 inside) to a closed polygon and per-edge distances."""
    n = len(verts)
    best = np.full(u.shape, np.inf, dtype=_F32)
    inside = np.zeros(u.shape, dtype=bool)
    dists = []
    for i in range(n):
        (ax, ay), (bx, by) = verts[i], verts[(i + 1) % n]
        ex, ey = bx - ax, by - ay
        t = np.clip(
            ((u - _F32(ax)) * _F32(ex) + (v - _F32(ay)) * _F32(ey)) / _F32(ex * ex + ey * ey),
            0.0,
            1.0,
        )
        dist = np.hypot(u - _F32(ax) - t * _F32(ex), v - _F32(ay) - t * _F32(ey))
        dists.append(dist)
        np.minimum(best, dist, out=best)
        # Crossing number for the inside test (works for non-convex outlines too).
        crosses = ((ay > v) != (by > v)) & (
            u < _F32(ax) + (v - _F32(ay)) * _F32(ex) / _F32(ey if ey != 0 else 1e-9)
        )
        inside ^= crosses
    return np.where(inside, best, -best).astype(_F32), dists


_MINERALS = {
    # name: (albedo, jitter, specular, shininess, translucency)
    "quartz": ((0.88, 0.87, 0.84), 0.03, 0.6, 120.0, (0.5, 0.75)),
    "grey": ((0.52, 0.52, 0.51), 0.12, 0.2, 20.0, (0.0, 0.05)),
    "dark": ((0.27, 0.26, 0.25), 0.15, 0.45, 40.0, (0.0, 0.0)),
    "reddish": ((0.64, 0.38, 0.26), 0.1, 0.15, 15.0, (0.0, 0.1)),
    "tan": ((0.76, 0.66, 0.52), 0.06, 0.15, 15.0, (0.0, 0.15)),
    "white": ((0.86, 0.85, 0.82), 0.04, 0.1, 10.0, (0.0, 0.1)),
}


_MINERAL_P = {"quartz": 0.3, "grey": 0.2, "dark": 0.1, "reddish": 0.15, "tan": 0.15, "white": 0.1}


def _shape_sediment(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, angle: float, d: float, px_um: float
) -> _Shape:
    """Angular, faceted mineral grains of varied colour and translucency."""
    size = u.shape[0]
    n = int(rng.integers(6, 13))
    theta = np.sort((np.arange(n) + rng.uniform(-0.35, 0.35, n)) * 2 * math.pi / n)
    radii = rng.uniform(0.62, 1.0, n)
    if rng.random() < 0.3:  # a notch: non-convex fragment
        radii[int(rng.integers(n))] *= rng.uniform(0.55, 0.75)
    aspect = rng.uniform(0.55, 1.0)
    verts = np.stack([radii * np.cos(theta), radii * np.sin(theta) * aspect], axis=1)
    verts -= (verts.min(0) + verts.max(0)) / 2
    verts *= d / 2.0 / np.hypot(verts[:, 0], verts[:, 1]).max()
    sd, dists = _polygon_sd(u, v, verts)
    inside = sd > 0
    # Faceted roof: the lowest of tilted planes rising from each edge, capped by a few
    # random tilted facets and a top plateau.
    height = np.full(u.shape, np.inf, dtype=_F32)
    for dist in dists:
        np.minimum(height, dist * _F32(rng.uniform(0.45, 1.3)), out=height)
    for _ in range(int(rng.integers(1, 4))):
        gu, gv = rng.uniform(-0.5, 0.5, 2)
        np.minimum(
            height, _F32(d * rng.uniform(0.12, 0.3)) + u * _F32(gu) + v * _F32(gv), out=height
        )
    np.minimum(height, _F32(d * rng.uniform(0.15, 0.35)), out=height)
    height = np.where(inside, np.maximum(height, 0.0), 0.0).astype(_F32)
    if rng.random() < 0.6:  # sub-angular: worn edges
        height = _smooth(height, d * rng.uniform(0.015, 0.04)) * inside
    # Uneven fracture faces (conchoidal steps), then fine surface grain.
    names = list(_MINERAL_P)
    mineral = str(rng.choice(names, p=[_MINERAL_P[k] for k in names]))
    glassy = mineral == "quartz"
    # Uneven fracture faces (conchoidal steps), then fine surface grain; glassy quartz
    # breaks into smooth faces.
    relief = 0.004 if glassy else 0.008
    height += _unit_noise(rng, (size, size), rng.uniform(2.5, 5.0)) * _F32(d * relief) * inside
    if not glassy:
        height += _unit_noise(rng, (size, size), 0.8) * _F32(0.2) * inside
    sd = sd + _unit_noise(rng, (size, size), 1.5) * _F32(0.6)
    rgb, jitter, spec, shin, (t0, t1) = _MINERALS[mineral]
    base = _colour(rgb, rng, jitter)
    if mineral == "grey":
        base = np.full(3, base.mean(), dtype=_F32) * _colour((1, 1, 1), rng, 0.03)
    mottle = _unit_noise(rng, (size, size), rng.uniform(2.0, 6.0))
    speck = _unit_noise(rng, (size, size), 0.8)
    shade = 1.0 + 0.12 * mottle
    shade *= np.where(speck > 2.1, _F32(0.45), _F32(1.0))  # inclusions, mafic specks
    if mineral == "quartz":
        shade *= 1.0 - 0.25 * np.clip(mottle - 1.0, 0.0, 1.0)  # milky and clear patches
    albedo = base[:, None, None] * shade[None]
    groove = np.zeros((size, size), dtype=_F32)
    return _Shape(
        sd,
        height,
        albedo.astype(_F32),
        groove,
        spec=spec * rng.uniform(0.7, 1.2),
        shininess=shin,
        translucency=rng.uniform(t0, t1) if t1 > 0 else 0.0,
        morph=f"angular-{mineral}",
    )


_SHAPES = {
    "planktic": _shape_planktic,
    "calcareous_benthic": _shape_calcareous,
    "agglutinated_benthic": _shape_agglutinated,
    "sediment": _shape_sediment,
}


#: Nominal sizes (um, longest dimension) drawn log-uniformly per class.
_SIZE_UM = {
    "planktic": (170.0, 450.0),
    "calcareous_benthic": (200.0, 500.0),
    "agglutinated_benthic": (220.0, 500.0),
    "sediment": (180.0, 460.0),
}
