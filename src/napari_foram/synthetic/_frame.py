"""The tray frame: floor, metallic border, lint, dust, camera finish and compositing."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from napari_foram.synthetic._common import _EDGES, _F32, Lighting, _colour, _Layer, _unit_noise


def _background(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Dark, finely mottled tray floor, planar (3, H, W) float32."""
    h, w = shape
    level = rng.uniform(0.05, 0.09)
    tint = np.array([1.0, rng.uniform(0.98, 1.03), rng.uniform(0.98, 1.08)], dtype=_F32)
    # The floor's fine mottling is made once on a tile and repeated: a few hundred px of
    # random grain has no visible period, and tiling costs a copy instead of a filter.
    # Broad brightness changes come from the illumination field in `_finish`.
    th, tw = min(h, 389), min(w, 521)
    tile = 1.0 + 0.2 * _unit_noise(rng, (th, tw), 0.8) + 0.12 * _unit_noise(rng, (th, tw), 3.0)
    tile *= _F32(level)
    reps = (h // th + 2, w // tw + 2)
    oy, ox = int(rng.integers(th)), int(rng.integers(tw))
    lum = np.tile(tile, reps)[oy : oy + h, ox : ox + w]
    frame = np.empty((3, h, w), dtype=_F32)
    for c in range(3):
        np.multiply(lum, tint[c], out=frame[c])
    return frame


def _parse_border(border: bool | str, rng: np.random.Generator) -> tuple[str, ...]:
    if border is False or border is None:
        return ()
    if border is True:
        patterns = [
            ("top",),
            ("bottom",),
            ("left",),
            ("right",),
            ("top", "left"),
            ("top", "right"),
            ("bottom", "left"),
            ("bottom", "right"),
            ("top", "left", "right"),
            ("top", "bottom", "left", "right"),
        ]
        p = np.array([1, 1, 1, 1, 1.5, 1.5, 1.5, 1.5, 0.8, 0.7])
        return patterns[int(rng.choice(len(patterns), p=p / p.sum()))]
    if not isinstance(border, str):
        raise ValueError(f"border must be True, False or edge names, got {border!r}")
    text = border.strip().lower()
    if text in ("", "none"):
        return ()
    if text == "all":
        return _EDGES
    names = tuple(dict.fromkeys(n.strip() for n in text.replace("+", ",").split(",")))
    bad = [n for n in names if n not in _EDGES]
    if bad:
        raise ValueError(f"unknown border edge(s) {bad}; use top, bottom, left, right, all, none")
    return names


#: Looks of the tray wall (`render_tray(border_style=...)`): "metal" the brushed metal
#: wall of the study's trays (grey ~110-160); "bright" polished metal near saturation;
#: "dim" a dull or shadowed wall only a few tens of grey levels above the floor, below the
#: study's fixed wall level; "dark" black anodised metal, darker than the floor, with a
#: bright rim where its lip catches the lamp. All but "metal" carry a mottled 2-D texture.
BORDER_STYLES = ("metal", "bright", "dim", "dark")
#: Surface level (fraction of full scale) and 2-D mottle amplitude of each style.
_STYLE_LEVEL = {"bright": (0.72, 0.95), "dim": (0.13, 0.26), "dark": (0.008, 0.03)}
_STYLE_MOTTLE = {"bright": 0.12, "dim": 0.2, "dark": 0.35}


def _draw_border(
    frame: np.ndarray,
    interior: np.ndarray,
    edges: tuple[str, ...],
    rng: np.random.Generator,
    light: Lighting,
    margin: float,
    style: str = "metal",
    width_fraction: tuple[float, float] | None = None,
) -> None:
    """Paint the tray's wall along `edges` and mark the floor in `interior`.

    The floor is a rounded rectangle, tilted by a degree or two; edges without a wall lie
    beyond the frame. Only strips along the walled edges are evaluated. `style` is one of
    `BORDER_STYLES`; `width_fraction` the range of each wall's width as a fraction of the
    frame's shorter side (default 0.05-0.12). The default style and width draw exactly the
    random numbers they always drew, so earlier renders keep their pixels.
    """
    _, h, w = frame.shape
    m = min(h, w)
    width = {e: rng.uniform(0.05, 0.12) * m for e in edges}
    if width_fraction is not None:
        lo, hi = width_fraction
        width = {e: rng.uniform(lo, hi) * m for e in edges}
    corner = rng.uniform(0.08, 0.3) * m
    tilt = rng.uniform(-0.025, 0.025)
    beyond = corner + abs(tilt) * max(h, w) + 20.0
    top = width["top"] if "top" in edges else -beyond
    bottom = h - width["bottom"] if "bottom" in edges else h + beyond
    left = width["left"] if "left" in edges else -beyond
    right = w - width["right"] if "right" in edges else w + beyond
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    rcy, rcx = (top + bottom) / 2 - cy, (left + right) / 2 - cx
    hy, hx = (bottom - top) / 2, (right - left) / 2
    ct, st = math.cos(tilt), math.sin(tilt)

    # Profile across the wall (distance d outside the floor, px), brushed streaks included.
    d_max = max(h, w) * 1.0
    step = 0.5
    grid = np.arange(0.0, d_max + 2, step)
    level = rng.uniform(0.42, 0.62)
    gradient = rng.uniform(-0.25, 0.2)
    band = max(width.values())
    fine = ndi.gaussian_filter1d(rng.standard_normal(grid.size), 1.5)
    broad = ndi.gaussian_filter1d(rng.standard_normal(grid.size), 60.0)
    streaks = 0.018 * fine / fine.std() + 0.05 * broad / broad.std()
    surface = level * (1.0 + gradient * np.clip(grid / band, 0, 1.5)) * (1.0 + streaks)
    groove_w, lip_w = rng.uniform(3.0, 9.0), rng.uniform(8.0, 22.0)
    lip = np.exp(-(((grid - groove_w - lip_w / 2) / (lip_w / 2.5)) ** 2))
    groove = np.where(grid < groove_w, 0.25 + 0.75 * (grid / groove_w) ** 2, 1.0)
    metal = _colour((1.0, 1.0, 1.03), rng, 0.02)
    lxy = light.vector()[:2]
    lxy = lxy / (np.linalg.norm(lxy) or 1.0)
    lip_amp = rng.uniform(0.3, 0.5)
    phase = rng.uniform(0, 2 * math.pi, 3)
    mottle_rng: np.random.Generator | None = None
    if style != "metal":
        # Drawn after every number the metal wall uses: its renders stay as they were.
        lo, hi = _STYLE_LEVEL[style]
        surface *= _F32(rng.uniform(lo, hi) / level)
        if style == "dark":
            lip_amp = rng.uniform(0.25, 0.45)  # the rim is what shows of a black wall
        mottle_rng = np.random.default_rng(rng.integers(2**63))

    # Disjoint strips that hold every wall pixel: top and bottom full width, left and
    # right in between; the side strips also hold the rounded corners.
    strips: list[tuple[slice, slice]] = []
    lean = abs(tilt) * max(h, w) / 2 + 4

    def reach(edge: str, corners: bool) -> int:
        return math.ceil(width[edge] + lean + (corner if corners else 0.0))

    r_top = min(reach("top", False), h) if "top" in edges else 0
    r_bot = max(h - reach("bottom", False), r_top) if "bottom" in edges else h
    ends = "top" in edges or "bottom" in edges
    c_left = min(reach("left", ends), w) if "left" in edges else 0
    c_right = max(w - reach("right", ends), c_left) if "right" in edges else w
    if "top" in edges:
        strips.append((slice(0, r_top), slice(0, w)))
    if "bottom" in edges:
        strips.append((slice(r_bot, h), slice(0, w)))
    if "left" in edges and r_bot > r_top:
        strips.append((slice(r_top, r_bot), slice(0, c_left)))
    if "right" in edges and r_bot > r_top:
        strips.append((slice(r_top, r_bot), slice(c_right, w)))
    for rows, cols in strips:
        y = (np.arange(rows.start, rows.stop, dtype=_F32) - _F32(cy))[:, None]
        x = (np.arange(cols.start, cols.stop, dtype=_F32) - _F32(cx))[None, :]
        xr = x * _F32(ct) + y * _F32(st) - _F32(rcx)
        yr = y * _F32(ct) - x * _F32(st) - _F32(rcy)
        qx = np.abs(xr) - _F32(hx - corner)
        qy = np.abs(yr) - _F32(hy - corner)
        ox, oy = np.maximum(qx, 0.0), np.maximum(qy, 0.0)
        out = np.hypot(ox, oy)
        d = out + np.minimum(np.maximum(qx, qy), 0.0) - _F32(corner)
        interior[rows, cols] &= d < -margin
        sel = d > -1.0
        if not sel.any():
            continue
        # Outward normal of the floor outline, back in frame axes, to light the lip.
        nx_r, ny_r = np.sign(xr) * ox / (out + 1e-6), np.sign(yr) * oy / (out + 1e-6)
        nx = nx_r * _F32(ct) - ny_r * _F32(st)
        ny = nx_r * _F32(st) + ny_r * _F32(ct)
        ds, nxs, nys = d[sel], nx[sel], ny[sel]
        along = -nys * xr[sel] + nxs * yr[sel]
        wob = 1.5 * np.sin(along / 137.0 + phase[0]) + 0.8 * np.sin(along / 53.0 + phase[1])
        dd = np.clip(ds, 0.0, d_max)
        val = np.interp(np.clip(dd + wob, 0.0, d_max), grid, surface).astype(_F32)
        val *= 1.0 + 0.06 * np.sin(along / 410.0 + phase[2])
        # The wall's inner lip faces the floor (-n): bright where it faces the lamp.
        facing = np.clip(-(nxs * lxy[0] + nys * lxy[1]), 0.0, 1.0)
        val += _F32(lip_amp) * (0.35 + 0.65 * facing) * np.interp(dd, grid, lip)
        val *= np.interp(dd, grid, groove).astype(_F32)
        if mottle_rng is not None:
            # Blotches of tarnish and scratches across the wall, a few px to ~40 px.
            shape2 = (rows.stop - rows.start, cols.stop - cols.start)
            blot = 0.6 * _unit_noise(mottle_rng, shape2, 12.0)
            blot += 0.4 * _unit_noise(mottle_rng, shape2, 2.5)
            val *= np.clip(1.0 + _F32(_STYLE_MOTTLE[style]) * blot[sel], 0.2, None)
        wgt = np.clip(ds + 0.5, 0.0, 1.0)
        sub = frame[:, rows, cols]
        for c in range(3):
            ch = sub[c]
            ch[sel] = ch[sel] * (1.0 - wgt) + val * metal[c] * wgt
        frame[:, rows, cols] = sub


def _draw_lint(
    frame: np.ndarray, rng: np.random.Generator, count: int, pixel_size_um: float
) -> None:
    """Thin curved fibres: bright-ish threads that are *not* specimens (label 0)."""
    _, h, w = frame.shape
    for _ in range(count):
        length = rng.uniform(150.0, 1100.0) / pixel_size_um
        width = rng.uniform(0.7, 1.8)
        n = max(int(length / 0.6), 4)
        heading = rng.uniform(0, 2 * math.pi)
        # Gentle bends (curvature radius ~50-500 px), a steady curl plus a wander.
        turns = ndi.gaussian_filter1d(rng.normal(0.0, 1.0, n), 30.0) * 0.05
        ang = heading + np.cumsum(turns + rng.uniform(-0.006, 0.006))
        ys = np.cumsum(np.sin(ang)) * 0.6
        xs = np.cumsum(np.cos(ang)) * 0.6
        y0, x0 = rng.uniform(0, h), rng.uniform(0, w)
        ys += y0 - ys.mean()
        xs += x0 - xs.mean()
        pad = int(3 * width) + 3
        r0, r1 = int(max(ys.min() - pad, 0)), int(min(ys.max() + pad, h))
        c0, c1 = int(max(xs.min() - pad, 0)), int(min(xs.max() + pad, w))
        if r1 - r0 < 2 or c1 - c0 < 2:
            continue
        acc = np.zeros((r1 - r0, c1 - c0), dtype=_F32)
        iy, ix = np.round(ys - r0).astype(int), np.round(xs - c0).astype(int)
        ok = (iy >= 0) & (iy < acc.shape[0]) & (ix >= 0) & (ix < acc.shape[1])
        np.add.at(acc, (iy[ok], ix[ok]), 0.6)
        acc = ndi.gaussian_filter(acc, width * 0.6)
        cover = np.clip(acc * _F32(2.5 * width * 0.6 * 2.0), 0.0, 1.0)
        cover *= _F32(rng.uniform(0.5, 0.9))
        colour = [(0.75, 0.75, 0.75), (0.6, 0.65, 0.85), (0.8, 0.55, 0.5), (0.85, 0.85, 0.8)][
            int(rng.integers(4))
        ]
        col = _colour(colour, rng, 0.1) * _F32(rng.uniform(0.5, 1.0))
        for c in range(3):
            sub = frame[c, r0:r1, c0:c1]
            sub *= 1.0 - cover
            sub += cover * col[c]


def _draw_dust(frame: np.ndarray, rng: np.random.Generator, count: int) -> None:
    """Tiny specks (a few px): dust and fine silt, not specimens."""
    _, h, w = frame.shape
    for _ in range(count):
        r = rng.uniform(0.7, 2.5)
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        half = int(3 * r) + 2
        r0, r1 = max(int(y) - half, 0), min(int(y) + half + 1, h)
        c0, c1 = max(int(x) - half, 0), min(int(x) + half + 1, w)
        if r1 <= r0 or c1 <= c0:
            continue
        yy = np.arange(r0, r1, dtype=_F32)[:, None] - _F32(y)
        xx = np.arange(c0, c1, dtype=_F32)[None, :] - _F32(x)
        cover = np.exp(-(yy * yy + xx * xx) / _F32(2 * r * r)) * _F32(rng.uniform(0.3, 0.9))
        val = rng.uniform(0.15, 0.55)
        for c in range(3):
            sub = frame[c, r0:r1, c0:c1]
            sub *= 1.0 - cover
            sub += cover * _F32(val)


def _finish(
    frame: np.ndarray, rng: np.random.Generator, *, vignette: float, exposure: float
) -> np.ndarray:
    """Vignetting, white balance, camera noise; planar float -> (H, W, 3) uint8."""
    _, h, w = frame.shape
    scale = max(h, w) / 2
    yn = (np.arange(h, dtype=_F32) - _F32((h - 1) / 2)) / _F32(scale)
    xn = (np.arange(w, dtype=_F32) - _F32((w - 1) / 2)) / _F32(scale)
    # Illumination field: radial vignetting times a broad, uneven lamp footprint (a sum of
    # separable smooth terms, so it costs two full-frame operations).
    fy = -_F32(vignette) * yn * yn
    fx = -_F32(vignette) * xn * xn
    for _ in range(2):
        ky, kx = rng.uniform(0.5, 2.5, 2)
        py, px = rng.uniform(0, 2 * math.pi, 2)
        ay, ax = rng.uniform(0.02, 0.06, 2)
        fy = fy + _F32(ay) * np.sin(_F32(ky) * yn + _F32(py))
        fx = fx + _F32(ax) * np.sin(_F32(kx) * xn + _F32(px))
    illum = fy[:, None] + fx[None, :]
    illum += 1.0
    warm = rng.uniform(-0.5, 1.0)  # white balance: a warm or a cool cast, never magenta
    balance = np.array([1.0 + 0.03 * warm, 1.0, 1.0 - 0.045 * warm], dtype=_F32)
    noise = rng.standard_normal((h + 8, w + 8), dtype=_F32)
    read, shot = _F32(rng.uniform(2.0, 3.5)), _F32(rng.uniform(0.015, 0.03))
    tmp = np.empty((h, w), dtype=_F32)
    offsets = ((0, 0), (3, 5), (7, 2))  # three decorrelated windows of one noise field
    out = np.empty((h, w, 3), dtype=np.uint8)
    for c, (oy, ox) in enumerate(offsets):
        ch = frame[c]
        np.multiply(illum, _F32(255.0 * exposure) * balance[c], out=tmp)
        ch *= tmp  # now in grey levels
        # Read noise plus shot noise growing with the signal (linearised sqrt).
        np.multiply(ch, shot, out=tmp)
        tmp += read
        tmp *= noise[oy : oy + h, ox : ox + w]
        ch += tmp
        np.clip(ch, 0.0, 255.0, out=ch)
        out[:, :, c] = ch  # truncation: the half-level bias is below the noise
    return out


def _composite(
    frame: np.ndarray, labels: np.ndarray | None, layer: _Layer, y0: int, x0: int, label_id: int
) -> None:
    """Alpha-composite a patch with its top-left corner at (y0, x0), clipped to the frame."""
    _, h, w = frame.shape
    s = layer.size
    fy0, fx0, fy1, fx1 = max(y0, 0), max(x0, 0), min(y0 + s, h), min(x0 + s, w)
    if fy0 >= fy1 or fx0 >= fx1:
        return
    py, px = slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0)
    region = frame[:, fy0:fy1, fx0:fx1]
    keep = (1.0 - layer.shadow[py, px]) * (1.0 - layer.alpha[py, px])
    region *= keep[None]
    region += layer.premult[:, py, px]
    if labels is not None:
        labels[fy0:fy1, fx0:fx1][layer.mask[py, px]] = label_id
