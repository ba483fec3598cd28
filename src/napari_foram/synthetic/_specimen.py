"""Shading, blur and shadow of one specimen in its own patch (`render_specimen`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from napari_foram.synthetic._common import (
    _F32,
    DEFAULT_PIXEL_SIZE_UM,
    MAX_SPECIMEN_UM,
    MIN_SPECIMEN_AREA_UM2,
    Lighting,
    _check_class,
    _grid,
    _Layer,
    _Shape,
    _smooth,
)
from napari_foram.synthetic._shapes import _SHAPES, _SIZE_UM

if TYPE_CHECKING:
    from collections.abc import Callable


def _shade(
    shape: _Shape, light: Lighting, overexposed: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Lit colour (3, S, S) and opacity (S, S) of a shape under `light`."""
    height, albedo = shape.height, shape.albedo
    if overexposed:
        # Blown highlights wipe out the fine texture first: keep only the broad form.
        height = ndi.gaussian_filter(height, 2.0)
        albedo = ndi.gaussian_filter(albedo, (0, 2.0, 2.0))
    gy, gx = np.gradient(height)
    np.clip(gx, -4.0, 4.0, out=gx)
    np.clip(gy, -4.0, 4.0, out=gy)
    inv = 1.0 / np.sqrt(1.0 + gx * gx + gy * gy)
    lx, ly, lz = (float(c) for c in light.vector())
    ndl = np.clip((-gx * _F32(lx) - gy * _F32(ly) + _F32(lz)) * inv, 0.0, None)
    half = np.array([lx, ly, lz + 1.0])
    hx, hy, hz = half / np.linalg.norm(half)
    ndh = np.clip((-gx * _F32(hx) - gy * _F32(hy) + _F32(hz)) * inv, 0.0, 1.0)
    spec = _F32(shape.spec) * ndh ** _F32(shape.shininess)
    fill = _F32(light.fill)
    # Fill light also falls off on steep flanks (less sky seen): ambient ~ normal's z.
    diffuse = fill * (0.55 + 0.45 * inv) + (1.0 - fill) * ndl * _F32(1.15)
    diffuse *= 1.0 - _F32(0.45) * shape.groove
    rgb = albedo * diffuse[None] + spec[None]
    opacity = np.ones_like(inv)
    t = shape.translucency
    if t > 0:
        # Thin shell seen face-on lets the dark tray through; rims (long light paths)
        # glow with scattered light.
        rim = (1.0 - inv) ** 1.5
        opacity -= _F32(0.75 * t) * inv * inv
        rgb = rgb * (1.0 - _F32(0.5 * t) * inv)[None] + albedo * (_F32(0.45 * t) * rim)[None]
    if overexposed:
        gain = _F32(rng.uniform(1.8, 2.6))
        rgb = rgb * gain + _F32(0.15)
        opacity = np.maximum(opacity, _F32(0.9))
    return rgb.astype(_F32), opacity.astype(_F32)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def _render_layer(
    class_name: str,
    rng: np.random.Generator,
    *,
    diameter_px: float | None,
    pixel_size_um: float,
    light: Lighting,
    overexposed: bool,
    max_diameter_px: float | None = None,
    builder: Callable[..., _Shape] | None = None,
    size_um: tuple[float, float] | None = None,
) -> _Layer:
    """Build, texture, shade, blur and shadow one specimen in its own patch.

    `builder` and `size_um` replace the class's shape function and size range (used by
    `synthetic_ood` for objects that are none of the classes).
    """
    build = builder if builder is not None else _SHAPES[class_name]
    lo, hi = size_um if size_um is not None else _SIZE_UM[class_name]
    if diameter_px is None:
        d = math.exp(rng.uniform(math.log(lo), math.log(hi))) / pixel_size_um
    else:
        d = float(diameter_px)
    if max_diameter_px is not None:
        d = min(d, max_diameter_px)
    d = max(d, 8.0)
    angle = rng.uniform(0, 2 * math.pi)
    elev = math.radians(light.elevation_deg)
    shadow_shift = min(max(d * 0.05 / math.tan(elev), 1.0), 12.0)
    shadow_sigma = 1.5 + 0.04 * d
    min_area_px = MIN_SPECIMEN_AREA_UM2 / pixel_size_um**2
    limit = max_diameter_px if max_diameter_px is not None else MAX_SPECIMEN_UM / pixel_size_um
    margin = 6  # room for anti-aliasing and blur around the outline
    for _ in range(4):  # grow slender specimens that came out under the minimum area
        inner = math.ceil(d) + 2 * margin
        u, v = _grid(inner, angle)
        shape = build(rng, u, v, angle, d, pixel_size_um)
        # Margin of 20 %: rough outlines lose islands, touching neighbours hide an edge.
        area = int(np.count_nonzero(shape.sd > 0))
        if area >= 1.2 * min_area_px or diameter_px is not None or d >= limit:
            break
        d = min(d * math.sqrt(1.2 * min_area_px / max(area, 1)) * 1.05, limit)
    mask_in = _largest_component(shape.sd > 0)
    coverage = np.clip(shape.sd + 0.5, 0.0, 1.0)
    coverage[(shape.sd > 0) & ~mask_in] = 0.0  # islands cut off by a rough outline
    rgb, opacity = _shade(shape, light, overexposed, rng)
    # Everything above works on the tight grid; the shadow needs a wider patch.
    pad = math.ceil(shadow_shift + 2.5 * shadow_sigma + 2)
    size = inner + 2 * pad
    inside = (slice(None), slice(pad, pad + inner), slice(pad, pad + inner))
    stack = np.zeros((4, size, size), dtype=_F32)
    stack[inside][:3] = rgb * coverage[None]
    stack[inside][3] = coverage * opacity
    # Depth of field: most specimens nearly sharp, a few out of focus.
    sigma = rng.uniform(0.6, 1.1) if rng.random() > 0.1 else rng.uniform(1.3, 2.2)
    blur_box = (
        slice(None),
        slice(pad - margin, pad + inner + margin),
        slice(pad - margin, pad + inner + margin),
    )
    stack[blur_box] = ndi.gaussian_filter(stack[blur_box], (0, sigma, sigma), truncate=2.5)
    mask = np.zeros((size, size), dtype=bool)
    mask[inside[1:]] = mask_in
    shadow = _smooth(stack[3], shadow_sigma)
    lx, ly, _ = light.vector()
    norm = math.hypot(lx, ly) or 1.0
    dy, dx = round(-ly / norm * shadow_shift), round(-lx / norm * shadow_shift)
    shadow = np.roll(shadow, (dy, dx), axis=(0, 1))
    np.clip(shadow, 0.0, 1.0, out=shadow)
    shadow *= _F32(rng.uniform(0.55, 0.8))
    return _Layer(
        premult=stack[:3],
        alpha=np.clip(stack[3], 0.0, 1.0),
        shadow=shadow,
        mask=mask,
        diameter_um=round(d * pixel_size_um, 1),
        morph=shape.morph,
        overexposed=overexposed,
    )


def render_specimen(
    class_name: str,
    rng: np.random.Generator,
    *,
    diameter_px: float | None = None,
    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM,
    light: Lighting | None = None,
    overexposed: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one specimen in its own patch.

    Parameters
    ----------
    class_name
        One of `CLASSES`.
    rng
        Source of every random choice (shape, size, texture, colour, focus).
    diameter_px
        Longest dimension in pixels; default: drawn from the class's size range
        (150-500 um) at `pixel_size_um`.
    pixel_size_um
        Micrometres per pixel.
    light
        The lamp; default: drawn from `rng`.
    overexposed
        Push it into clipping (texture lost), as the study's hard cases.

    Returns
    -------
    rgba
        (S, S, 4) float32, **premultiplied** colour in channels 0-2 (display values, may
        exceed 1 where over-exposed) and opacity in channel 3. Composite onto a background
        ``bg`` as ``bg * (1 - rgba[..., 3:]) + rgba[..., :3]``.
    mask
        (S, S) bool footprint of the specimen (what a label image would hold).
    """
    _check_class(class_name)
    if diameter_px is not None and not diameter_px > 0:
        raise ValueError(f"diameter_px must be positive, got {diameter_px}")
    if not pixel_size_um > 0:
        raise ValueError(f"pixel_size_um must be positive, got {pixel_size_um}")
    light = light or Lighting.random(rng)
    layer = _render_layer(
        class_name,
        rng,
        diameter_px=diameter_px,
        pixel_size_um=pixel_size_um,
        light=light,
        overexposed=overexposed,
    )
    rgba = np.concatenate([layer.premult, layer.alpha[None]], axis=0).transpose(1, 2, 0)
    return np.ascontiguousarray(rgba), layer.mask
