"""Seeded, procedural microscope pictures of foraminifera and sediment grains on a tray.

The renderer is the common fixture of the project: tests, the demo's simulated microscope
(which scans one big synthetic tray), napari's sample data and the training set of the small
demo model all come from here. It imitates the study's setup (Johansen & Sorensen 2020,
Fig. 2): specimens of the 100-1000 um fraction lying on a dark tray, lit from one side by a
stereo microscope's lamp, with the tray's metallic border along some frame edges.

How a specimen is made
----------------------
Each specimen is built in its own small patch (never full-frame work per specimen):

1. a *shape* gives a signed distance to the outline (px, positive inside), a height field
   (px), an albedo (colour) map and a groove map (sutures between chambers). Chambered tests
   are unions of ellipsoids placed along the class's growth plan (trochospiral, planispiral,
   biserial, triserial, uniserial, milioline); tubes are swept circles; grains are faceted
   polygons whose height is the minimum of tilted planes;
2. class textures perturb height and albedo: pores (planktic), fine perforation and ribs
   (calcareous), agglutinated grains with a rough outline, mineral specks (sediment);
3. the height field is shaded with one directional lamp plus fill light (Lambert diffuse,
   Blinn-Phong specular), translucency lets the dark tray show through thin shells and
   lights their rims, and over-exposed specimens are pushed into clipping;
4. a slight per-specimen blur imitates the depth of field, a soft shadow falls away from
   the lamp, and the patch is alpha-composited onto the frame.

The tray frame then gets vignetting, a white-balance cast and camera noise
(read + shot noise). Everything is drawn from `numpy.random.Generator`s spawned from one
`SeedSequence`, so the same seed gives the same pixels.

Ground truth is recomputed from the final label image (area, centroid, bounding box,
touching, clipped), so it always agrees with `TrayRender.labels`.
"""

from __future__ import annotations

import csv
import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "CLASSES",
    "DEFAULT_PIXEL_SIZE_UM",
    "DEFAULT_SHAPE",
    "GROUP_KINDS",
    "Lighting",
    "SpecimenTruth",
    "TrayRender",
    "render_crop",
    "render_specimen",
    "render_tray",
    "write_synth",
]

#: The study's four high-level classes, in the order of its label files.
CLASSES: tuple[str, ...] = ("planktic", "calcareous_benthic", "agglutinated_benthic", "sediment")
#: Micrometres per pixel at the sample: specimens of 150-500 um are then 60-200 px across.
DEFAULT_PIXEL_SIZE_UM = 2.5
#: The study's 5 MP Leica DFC450 frame, (rows, columns).
DEFAULT_SHAPE: tuple[int, int] = (1944, 2592)
#: Smallest frame side accepted by `render_tray` (px).
MIN_FRAME_SIDE = 128
#: Every specimen covers at least this much (um^2): 2000 px at 2.5 um/px, so the study's
#: detector (which discards components under 1024 px) never loses a whole specimen.
MIN_SPECIMEN_AREA_UM2 = 12_500.0
#: Largest specimen, longest dimension (um): 200 px at 2.5 um/px fits a 224 px crop.
MAX_SPECIMEN_UM = 500.0
#: Clear gap (um) kept between specimens that are not meant to touch. The study's detector
#: smooths with a 31 px median filter, which bridges gaps narrower than ~15 px.
SPECIMEN_GAP_UM = 60.0

_EDGES = ("top", "bottom", "left", "right")
#: Touching groups `render_tray(touching_groups=k)` draws, in turn: three in a cluster,
#: three or four in a row (each touching the previous one only), a small specimen on a
#: large one, two pale specimens of one class, a pair overlapping by 3-8 % of the smaller
#: one, and a single planktic with deep sutures (one specimen that must stay whole).
GROUP_KINDS: tuple[str, ...] = (
    "triplet",
    "chain",
    "small_large",
    "pale_pair",
    "overlap",
    "deep_planktic",
)
_PALE = ("planktic", "calcareous_benthic")
_F32 = np.float32


# --------------------------------------------------------------------------- data types
@dataclass(frozen=True)
class Lighting:
    """The microscope lamp: a direction plus diffuse fill light.

    Attributes
    ----------
    azimuth_deg
        Direction the light comes *from*, in the image plane, degrees counter-clockwise
        from the +column axis (0 = from the right, 90 = from the top of the frame).
    elevation_deg
        Height of the lamp above the tray plane, degrees (90 = straight down).
    fill
        Fraction of the light that is diffuse (ring light, reflections), 0-1.
    """

    azimuth_deg: float = 120.0
    elevation_deg: float = 50.0
    fill: float = 0.35

    @classmethod
    def random(cls, rng: np.random.Generator) -> Lighting:
        """A plausible stereo-microscope lamp position."""
        return cls(
            azimuth_deg=float(rng.uniform(0.0, 360.0)),
            elevation_deg=float(rng.uniform(35.0, 65.0)),
            fill=float(rng.uniform(0.28, 0.45)),
        )

    def vector(self) -> np.ndarray:
        """Unit vector towards the lamp in (column, row, up) coordinates, shape (3,)."""
        az, el = math.radians(self.azimuth_deg), math.radians(self.elevation_deg)
        # Rows grow downwards, so "from the top" (90 deg) is a negative row direction.
        return np.array(
            [math.cos(el) * math.cos(az), -math.cos(el) * math.sin(az), math.sin(el)],
            dtype=_F32,
        )


@dataclass(frozen=True)
class SpecimenTruth:
    """Ground truth of one rendered specimen, measured on the final label image.

    Attributes
    ----------
    id
        Label value of the specimen in `TrayRender.labels` (1..n).
    class_name, class_index
        Its class and the index of that class in the render's class list.
    centroid_yx
        Centre of mass of the visible mask, px (row, column).
    bbox
        (min_row, min_col, max_row, max_col) of the visible mask, max exclusive.
    area_px
        Visible mask area, px.
    diameter_um
        Nominal size the specimen was drawn at: its longest dimension, um.
    clipped
        The mask touches the frame edge (the specimen is cut by it).
    touching
        The mask touches another specimen's mask (8-connectivity).
    overexposed
        Drawn over-exposed: clipped highlights, texture lost.
    morph
        Growth plan or shape used ("trochospiral", "biserial", "tube", "angular", ...).
    mean_grey
        Mean luma (0-255) of the specimen's pixels in the final image, a contrast hint.
    """

    id: int
    class_name: str
    class_index: int
    centroid_yx: tuple[float, float]
    bbox: tuple[int, int, int, int]
    area_px: int
    diameter_um: float
    clipped: bool
    touching: bool
    overexposed: bool
    morph: str = ""
    mean_grey: float = 0.0


@dataclass
class TrayRender:
    """A rendered tray frame with its ground truth.

    Attributes
    ----------
    image
        (H, W, 3) uint8 RGB picture.
    labels
        (H, W) int32: 0 = background, border, lint and dust; k = `SpecimenTruth.id`.
    specimens
        One `SpecimenTruth` per label value, ordered by id.
    pixel_size_um
        Micrometres per pixel.
    classes
        Class names; `SpecimenTruth.class_index` indexes this tuple.
    seed
        The seed it was rendered from.
    meta
        Render settings and what was drawn: lighting, border edges, lint count, specimens
        requested and placed.
    """

    image: np.ndarray
    labels: np.ndarray
    specimens: list[SpecimenTruth]
    pixel_size_um: float
    classes: tuple[str, ...]
    seed: int
    meta: dict[str, Any] = field(default_factory=dict)

    def truth_table(self) -> list[dict[str, Any]]:
        """One JSON-serialisable dict per specimen (the `SpecimenTruth` fields).

        ``centroid_yx`` and ``bbox`` are lists; see `write_synth` for the flat CSV form.
        """
        rows = []
        for s in self.specimens:
            row = asdict(s)
            row["centroid_yx"] = [float(v) for v in s.centroid_yx]
            row["bbox"] = [int(v) for v in s.bbox]
            rows.append(row)
        return rows

    def counts(self) -> dict[str, int]:
        """Number of specimens per class (every class of the render, zeros included)."""
        out = dict.fromkeys(self.classes, 0)
        for s in self.specimens:
            out[s.class_name] += 1
        return out


@dataclass
class _Shape:
    """Geometry and material of one specimen in its patch (all (S, S) or (3, S, S))."""

    sd: np.ndarray  # signed distance to the outline, px, > 0 inside
    height: np.ndarray  # surface height, px, 0 outside
    albedo: np.ndarray  # (3, S, S) reflectance 0-1
    groove: np.ndarray  # 0-1, sutures and creases (darkened)
    spec: float  # specular strength
    shininess: float  # Blinn-Phong exponent
    translucency: float  # 0 opaque ... 1 glass-clear
    morph: str


@dataclass
class _Layer:
    """A rendered specimen patch ready to composite (planar channels)."""

    premult: np.ndarray  # (3, S, S) colour x coverage
    alpha: np.ndarray  # (S, S) opacity x coverage
    shadow: np.ndarray  # (S, S) 0-1 darkening of what lies below
    mask: np.ndarray  # (S, S) bool, the label footprint
    diameter_um: float
    morph: str
    overexposed: bool

    @property
    def size(self) -> int:
        return self.mask.shape[0]


# --------------------------------------------------------------------------- small helpers
def _check_class(class_name: str, classes: Sequence[str] = CLASSES) -> int:
    if class_name not in CLASSES:
        raise ValueError(f"unknown class {class_name!r}; expected one of {', '.join(CLASSES)}")
    return list(classes).index(class_name)


def _unit_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit standard deviation, float32."""
    if sigma >= 1.6:
        # Smooth noise is band-limited: make it on a coarser grid and interpolate up,
        # which is several times cheaper than a wide Gaussian at full resolution.
        f = max(min(int(sigma / 1.0), 8), 2)
        small = _unit_noise(rng, (shape[0] // f + 3, shape[1] // f + 3), sigma / f)
        return _upsample(small, f, shape)
    white = rng.standard_normal(shape, dtype=_F32)
    if sigma <= 0:
        return white
    out = ndi.gaussian_filter(white, sigma, truncate=3.0)
    # Std of 2-D white noise after a Gaussian of width sigma: 1 / (2 sqrt(pi) sigma).
    out *= _F32(2.0 * math.sqrt(math.pi) * max(sigma, 0.5))
    return out


def _grid(size: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Patch coordinates rotated into the specimen frame: u along its long axis, (S, S)."""
    c = (size - 1) / 2.0
    y = (np.arange(size, dtype=_F32) - c)[:, None]
    x = (np.arange(size, dtype=_F32) - c)[None, :]
    ca, sa = _F32(math.cos(angle)), _F32(math.sin(angle))
    return x * ca + y * sa, y * ca - x * sa


def _colour(rgb: Sequence[float], rng: np.random.Generator, jitter: float) -> np.ndarray:
    base = np.asarray(rgb, dtype=_F32)
    return np.clip(base * (1.0 + rng.uniform(-jitter, jitter, 3).astype(_F32)), 0.0, 1.0)


def _upsample(
    small: np.ndarray, factor: int, shape: tuple[int, int], offset: int = 0
) -> np.ndarray:
    """Bilinear upsampling of a 2-D array by an integer factor, cropped to `shape`.

    Output pixel i samples the small grid at (i + 0.5) / factor - 0.5 + offset, i.e. block
    averages of `factor` pixels map back onto the pixels they came from; `offset` skips
    leading cells of padding.
    """
    h, w = shape
    ry = (np.arange(h, dtype=_F32) + 0.5) / factor - 0.5 + offset
    iy = np.clip(np.floor(ry).astype(np.intp), 0, small.shape[0] - 2)
    wy = np.clip(ry - iy, 0.0, 1.0)[:, None]
    rows = small[iy] * (1.0 - wy) + small[iy + 1] * wy
    rx = (np.arange(w, dtype=_F32) + 0.5) / factor - 0.5 + offset
    ix = np.clip(np.floor(rx).astype(np.intp), 0, small.shape[1] - 2)
    wx = np.clip(rx - ix, 0.0, 1.0)[None, :]
    out = rows[:, ix]
    out *= 1.0 - wx
    out += rows[:, ix + 1] * wx
    return out


def _smooth(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a 2-D array; wide kernels run on a block-averaged copy.

    For sigma >= 2.5 px the result is band-limited, so averaging f x f blocks, filtering
    with sigma / f and interpolating back loses nothing visible and costs ~f^2 less.
    """
    if sigma < 2.5:
        return ndi.gaussian_filter(a, sigma, truncate=3.0)
    f = min(int(sigma / 1.25), 8)
    h, w = a.shape
    hp, wp = -(-h // f) * f, -(-w // f) * f
    padded = np.zeros((hp, wp), dtype=_F32)
    padded[:h, :w] = a
    small = padded.reshape(hp // f, f, wp // f, f).mean(axis=(1, 3))
    small = ndi.gaussian_filter(np.pad(small, 1, mode="edge"), sigma / f, truncate=3.0)
    # One block of edge padding shifts the small grid by one cell.
    return _upsample(small, f, (h, w), offset=1)


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


# --------------------------------------------------------------------------- shapes
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


# --------------------------------------------------------------------------- shading
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


# --------------------------------------------------------------------------- tray pieces
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


def _draw_border(
    frame: np.ndarray,
    interior: np.ndarray,
    edges: tuple[str, ...],
    rng: np.random.Generator,
    light: Lighting,
    margin: float,
) -> None:
    """Paint the tray's metallic wall along `edges` and mark the floor in `interior`.

    The floor is a rounded rectangle, tilted by a degree or two; edges without a wall lie
    beyond the frame. Only strips along the walled edges are evaluated.
    """
    _, h, w = frame.shape
    m = min(h, w)
    width = {e: rng.uniform(0.05, 0.12) * m for e in edges}
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


# --------------------------------------------------------------------------- placement
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
    as when one specimen rests on the edge of another)."""
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


# --------------------------------------------------------------------------- truth
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


# --------------------------------------------------------------------------- public API
def _check_classes(
    classes: Sequence[str], class_weights: Sequence[float] | None
) -> tuple[tuple[str, ...], np.ndarray]:
    classes = tuple(classes)
    if not classes:
        raise ValueError("classes is empty")
    for c in classes:
        _check_class(c)
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes has duplicates: {classes}")
    if class_weights is None:
        weights = np.full(len(classes), 1.0 / len(classes))
    else:
        weights = np.asarray(class_weights, dtype=float)
        if weights.shape != (len(classes),):
            raise ValueError(f"class_weights needs {len(classes)} values, got {weights.size}")
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError("class_weights must be non-negative with a positive sum")
        weights = weights / weights.sum()
    return classes, weights


def render_tray(
    seed: int,
    *,
    shape: tuple[int, int] = DEFAULT_SHAPE,
    n_specimens: int = 60,
    classes: Sequence[str] = CLASSES,
    class_weights: Sequence[float] | None = None,
    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM,
    border: bool | str = True,
    touching_pairs: int = 3,
    touching_groups: int = 0,
    group_kinds: Sequence[str] = GROUP_KINDS,
    clipped: bool = True,
    lint: int = 4,
    overexposed_fraction: float = 0.08,
) -> TrayRender:
    """Render a tray frame with specimens, lint, dust and a metallic border.

    Parameters
    ----------
    seed
        Same seed (and arguments), same pixels.
    shape
        (rows, columns) of the frame, each at least 128.
    n_specimens
        Specimens to place. All are placed unless they do not fit (a small frame, a huge
        count): a specimen that finds no free spot in 250 random tries is drawn afresh
        (another shape and size) and tried once more, else dropped. The bulkiest are
        placed first. ``meta["placed"]`` and ``meta["unplaced"]`` say how many.
        Specimens are never shrunk below their class's size range to make them fit.
    classes, class_weights
        Which of `CLASSES` to draw and their relative frequencies (default: equal).
    pixel_size_um
        Micrometres per pixel; specimens are 150-500 um whatever the pixel size.
    border
        True: the metallic wall along a random choice of edges (one edge, a corner, three
        or all four); False or "none": no wall; or edge names ``"top,left"``, ``"all"``.
    touching_pairs
        Pairs of specimens whose masks touch (one resting on the other's edge).
    touching_groups
        Further groups, of the kinds in `GROUP_KINDS` in turn (triplets, chains, small on
        large, pale on pale, overlapping pairs, deep-sutured planktics); their specimens
        count in `n_specimens`. ``meta["groups"]`` lists each group's kind and ids.
    group_kinds
        The kinds drawn in turn (default all of `GROUP_KINDS`).
    clipped
        Place a few specimens (~6 %, at least one) across frame edges that have no wall.
        Impossible when all four edges have one.
    lint
        Number of fibres (thin curved threads, label 0). Dust specks are added as well.
    overexposed_fraction
        Fraction of specimens rendered over-exposed (texture lost), 0-1.

    Returns
    -------
    TrayRender
        Image, labels and ground truth measured on the labels.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (rows, columns), got {shape!r}") from None
    if min(h, w) < MIN_FRAME_SIDE:
        raise ValueError(f"shape {shape} too small: each side needs >= {MIN_FRAME_SIDE} px")
    if n_specimens < 0:
        raise ValueError(f"n_specimens must be >= 0, got {n_specimens}")
    if touching_pairs < 0:
        raise ValueError(f"touching_pairs must be >= 0, got {touching_pairs}")
    if touching_groups < 0:
        raise ValueError(f"touching_groups must be >= 0, got {touching_groups}")
    group_kinds = tuple(group_kinds)
    if touching_groups and (not group_kinds or set(group_kinds) - set(GROUP_KINDS)):
        raise ValueError(f"group_kinds must be some of {', '.join(GROUP_KINDS)}")
    if lint < 0:
        raise ValueError(f"lint must be >= 0, got {lint}")
    if not 0.0 <= overexposed_fraction <= 1.0:
        raise ValueError(f"overexposed_fraction must be in [0, 1], got {overexposed_fraction}")
    if not pixel_size_um > 0:
        raise ValueError(f"pixel_size_um must be positive, got {pixel_size_um}")
    classes, weights = _check_classes(classes, class_weights)

    ss = np.random.SeedSequence(int(seed))
    rng_bg, rng_border, rng_plan, rng_place, rng_lint, rng_noise, rng_dust, spec_ss = _spawn(ss)
    light = Lighting.random(rng_bg)
    frame = _background((h, w), rng_bg)
    interior = np.ones((h, w), dtype=bool)
    edges = _parse_border(border, rng_border)
    if edges:
        _draw_border(frame, interior, edges, rng_border, light, margin=6.0)
    _draw_lint(frame, rng_lint, lint, pixel_size_um)
    _draw_dust(frame, rng_dust, int(h * w / 120_000) + 1)

    # The plan: classes, pairs, clipped ones, over-exposure, one generator per specimen.
    n = int(n_specimens)
    class_of = rng_plan.choice(len(classes), size=n, p=weights) if n else np.zeros(0, int)
    over = rng_plan.random(n) < overexposed_fraction
    n_pairs = min(int(touching_pairs), n // 2)
    # Groups: their own generator (a ninth child of the seed), so a render without them
    # draws exactly what it drew before groups existed.
    rng_group = np.random.default_rng(ss.spawn(9)[8]) if touching_groups else None
    groups: list[tuple[str, list[int]]] = []
    next_free = 2 * n_pairs
    for g in range(int(touching_groups)):
        assert rng_group is not None
        kind = group_kinds[g % len(group_kinds)]
        k = {"triplet": 3, "chain": 3 + int(rng_group.integers(2)), "deep_planktic": 1}.get(
            kind, 2
        )
        if next_free + k > n:
            break
        groups.append((kind, list(range(next_free, next_free + k))))
        next_free += k
    n_grouped = next_free
    free = [e for e in _EDGES if e not in edges]
    n_clip = 0
    if clipped and free and n - n_grouped > 0:
        n_clip = min(max(1, round(0.06 * n)), n - n_grouped)
    spec_rngs = [np.random.default_rng(s) for s in spec_ss.spawn(n)]
    # Largest specimen that still fits comfortably inside the tray floor.
    rows_in = np.flatnonzero(interior.any(1))
    cols_in = np.flatnonzero(interior.any(0))
    floor = min(rows_in.size, cols_in.size) if rows_in.size and cols_in.size else 0
    max_d = min(MAX_SPECIMEN_UM / pixel_size_um, 0.6 * floor)
    gap = max(round(SPECIMEN_GAP_UM / pixel_size_um), 4)
    occupied = np.zeros((h, w), dtype=bool)
    labels = np.zeros((h, w), dtype=np.int32)

    # Per-specimen overrides of the groups: diameter (px) and shape builder.
    diameter_of: dict[int, float] = {}
    builder_of: dict[int, Callable[..., _Shape]] = {}
    kind_of: dict[int, str] = {}
    for kind, members in groups:
        kind_of[members[0]] = kind
        assert rng_group is not None
        if kind == "pale_pair":
            pale = [c for c in _PALE if c in classes] or [classes[int(class_of[members[0]])]]
            cls = classes.index(pale[int(rng_group.integers(len(pale)))])
            class_of[members] = cls
            over[members] = False
        elif kind == "deep_planktic" and "planktic" in classes:
            class_of[members[0]] = classes.index("planktic")
            builder_of[members[0]] = functools.partial(_shape_planktic, deep=True)
        elif kind == "small_large":
            big, small = (_SIZE_UM[classes[int(class_of[i])]] for i in members)
            diameter_of[members[0]] = min(
                big[1] * rng_group.uniform(0.85, 1.0) / pixel_size_um, max_d
            )
            diameter_of[members[1]] = small[0] * rng_group.uniform(1.0, 1.15) / pixel_size_um

    def layer_for(i: int) -> _Layer:
        return _render_layer(
            classes[int(class_of[i])],
            spec_rngs[i],
            diameter_px=diameter_of.get(i),
            pixel_size_um=pixel_size_um,
            light=light,
            overexposed=bool(over[i]),
            max_diameter_px=max_d,
            builder=builder_of.get(i),
        )

    jobs: list[tuple[list[int], str | None]] = []
    for p in range(n_pairs):
        jobs.append(([2 * p, 2 * p + 1], None))
    for _, members in groups:
        jobs.append((members, None))
    for c in range(n_clip):
        jobs.append(([n_grouped + c], free[int(rng_place.integers(len(free)))]))
    for i in range(n_grouped + n_clip, n):
        jobs.append(([i], None))

    placed: list[tuple[_Item, int, int]] = []
    unplaced: list[int] = []

    def make_item(members: list[int]) -> _Item:
        layers = [layer_for(i) for i in members]
        if members[0] in kind_of:
            assert rng_group is not None
            return _group(kind_of[members[0]], members, layers, rng_group, gap)
        if len(members) == 2:
            return _touching_pair(members[0], layers[0], members[1], layers[1], rng_place, gap)
        return _single(members[0], layers[0], gap)

    # Render first, then place the bulkiest items first: rejection sampling packs better.
    items = [make_item(members) for members, _ in jobs]
    order = sorted(
        range(len(jobs)), key=lambda k: (jobs[k][1] is not None, -int(items[k].mask.sum()))
    )
    for k in order:
        members, edge = jobs[k]
        pos = None
        for attempt in range(2):  # no room: draw a fresh specimen (often a smaller one)
            item = items[k] if attempt == 0 else make_item(members)
            pos = _try_place(item, occupied, interior, rng_place, 250, edge, gap)
            if pos is not None:
                placed.append((item, *pos))
                break
        if pos is None:
            unplaced.extend(members)

    # Paint in placement order; ids 1..n in that order.
    plan: dict[int, dict[str, Any]] = {}
    next_id = 1
    group_ids: list[dict[str, Any]] = []
    for item, y, x in placed:
        first = item.members[0][0]
        if first in kind_of:
            group_ids.append(
                {"kind": kind_of[first], "ids": list(range(next_id, next_id + len(item.members)))}
            )
        for i, layer, dy, dx in item.members:
            _composite(frame, labels, layer, y + dy, x + dx, next_id)
            plan[next_id] = {
                "class_name": classes[int(class_of[i])],
                "diameter_um": layer.diameter_um,
                "overexposed": layer.overexposed,
                "morph": layer.morph,
            }
            next_id += 1

    image = _finish(
        frame,
        rng_noise,
        vignette=rng_noise.uniform(0.12, 0.3),
        exposure=rng_noise.uniform(0.92, 1.08),
    )
    truth = _measure(labels, image, plan, classes)
    if len(truth) != next_id - 1:  # a specimen hidden entirely (never seen): renumber
        remap = np.zeros(next_id, dtype=np.int32)
        for new, t in enumerate(truth, start=1):
            remap[t.id] = new
            plan[new] = plan[t.id] if new != t.id else plan[new]
        labels = remap[labels]
        for grp in group_ids:
            grp["ids"] = [int(remap[k]) for k in grp["ids"] if remap[k]]
        truth = _measure(labels, image, {k: plan[k] for k in range(1, len(truth) + 1)}, classes)
    meta = {
        "seed": int(seed),
        "shape": [h, w],
        "pixel_size_um": float(pixel_size_um),
        "classes": list(classes),
        "border_edges": list(edges),
        "light": asdict(light),
        "lint": int(lint),
        "requested": n,
        "placed": len(truth),
        "unplaced": len(unplaced),
        "touching_pairs": n_pairs,
        "clipped_planned": n_clip,
        "groups": group_ids,
    }
    return TrayRender(
        image=image,
        labels=labels,
        specimens=truth,
        pixel_size_um=float(pixel_size_um),
        classes=classes,
        seed=int(seed),
        meta=meta,
    )


def _spawn(ss: np.random.SeedSequence) -> tuple[Any, ...]:
    """Independent generators for each stage, so that e.g. adding lint never changes the
    specimens. The last item is a SeedSequence for the per-specimen generators."""
    kids = ss.spawn(8)
    return (*(np.random.default_rng(k) for k in kids[:7]), kids[7])


def render_crop(
    class_name: str, seed: int, *, size: int = 224, pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM
) -> np.ndarray:
    """One specimen centred on tray background, like the detector's crops.

    Parameters
    ----------
    class_name
        One of `CLASSES`.
    seed
        Same seed and class, same pixels.
    size
        Side of the square crop (px); specimens are capped at 90 % of it.
    pixel_size_um
        Micrometres per pixel.

    Returns
    -------
    numpy.ndarray
        (size, size, 3) uint8 RGB, the specimen's centre of mass at the crop centre.
    """
    k = _check_class(class_name)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    return centred_crop(np.random.SeedSequence([int(seed), k]), class_name, size, pixel_size_um)


def centred_crop(
    ss: np.random.SeedSequence,
    name: str,
    size: int,
    pixel_size_um: float,
    *,
    builder: Callable[..., _Shape] | None = None,
    size_um: tuple[float, float] | None = None,
    keep_inside: bool = False,
) -> np.ndarray:
    """The crop recipe shared by `render_crop` and `synthetic_ood.render_ood_crop`: tray
    background with a chance of lint and dust, one object (class `name`, or `builder`
    with `size_um`) centred by its centre of mass, vignette, exposure and noise.

    `keep_inside` moves the object just enough to keep all of it in the crop (a long,
    tapering object's centre of mass lies off its middle).
    """
    rng_bg, _, _, rng_place, rng_lint, rng_noise, rng_dust, spec_ss = _spawn(ss)
    light = Lighting.random(rng_bg)
    frame = _background((size, size), rng_bg)
    if rng_lint.random() < 0.15:
        _draw_lint(frame, rng_lint, 1, pixel_size_um)
    _draw_dust(frame, rng_dust, int(rng_dust.integers(0, 3)))
    layer = _render_layer(
        name,
        np.random.default_rng(spec_ss),
        diameter_px=None,
        pixel_size_um=pixel_size_um,
        light=light,
        overexposed=rng_place.random() < 0.06,
        max_diameter_px=0.9 * size,
        builder=builder,
        size_um=size_um,
    )
    ys, xs = np.nonzero(layer.mask)
    cy, cx = ys.mean(), xs.mean()
    y0, x0 = round(size / 2 - 0.5 - cy), round(size / 2 - 0.5 - cx)
    if keep_inside:
        rows, cols = np.flatnonzero(layer.mask.any(1)), np.flatnonzero(layer.mask.any(0))
        y0 = _clamp(y0, 1 - int(rows[0]), size - 2 - int(rows[-1]))
        x0 = _clamp(x0, 1 - int(cols[0]), size - 2 - int(cols[-1]))
    _composite(frame, None, layer, y0, x0, 0)
    return _finish(
        frame,
        rng_noise,
        vignette=rng_noise.uniform(0.0, 0.08),
        exposure=rng_noise.uniform(0.9, 1.1),
    )


def _clamp(value: int, lo: int, hi: int) -> int:
    """`value` moved into [lo, hi]; the midpoint when the range is empty (too big)."""
    if lo > hi:
        return (lo + hi) // 2
    return min(max(value, lo), hi)


def _seed_for(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([int(seed), *keys]).generate_state(1)[0])


_CSV_FIELDS = [
    "tray",
    "image",
    "id",
    "class_name",
    "class_index",
    "centroid_y",
    "centroid_x",
    "bbox_min_row",
    "bbox_min_col",
    "bbox_max_row",
    "bbox_max_col",
    "area_px",
    "diameter_um",
    "clipped",
    "touching",
    "overexposed",
    "morph",
    "mean_grey",
]


def write_synth(
    out_dir: str | Path,
    *,
    trays: int = 2,
    crops_per_class: int = 50,
    seed: int = 0,
    shape: tuple[int, int] = DEFAULT_SHAPE,
    n_specimens: int = 60,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Write synthetic tray frames with ground truth and an ImageFolder of labelled crops.

    `progress(done, total, message)` is called after each file (the CLI draws a bar).

    Layout::

        out_dir/trays/tray_000.png          RGB frame
        out_dir/trays/tray_000_labels.png   16-bit label image (0 = background)
        out_dir/trays/tray_000.json         render settings + one row per specimen
        out_dir/trays/truth.csv             every tray's specimens, one row each
        out_dir/crops/<class>/<class>_00000.png   224 x 224 crops (torchvision ImageFolder)

    Returns
    -------
    dict
        ``out_dir``, ``trays`` (image paths), ``truth_csv``, ``crops_dir``,
        ``tray_counts`` and ``crop_counts`` (per class).
    """
    import imageio.v3 as iio

    if trays < 0 or crops_per_class < 0:
        raise ValueError(f"trays and crops_per_class must be >= 0, got {trays}, {crops_per_class}")
    out = Path(out_dir)
    tray_dir, crop_dir = out / "trays", out / "crops"
    tray_paths: list[str] = []
    tray_counts = dict.fromkeys(CLASSES, 0)
    total = trays + crops_per_class * len(CLASSES)
    done = 0

    def tick(message: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, message)

    csv_rows: list[dict[str, Any]] = []
    if trays:
        tray_dir.mkdir(parents=True, exist_ok=True)
    for t in range(trays):
        tray_seed = _seed_for(seed, 0, t)
        render = render_tray(tray_seed, shape=shape, n_specimens=n_specimens)
        name = f"tray_{t:03d}"
        iio.imwrite(tray_dir / f"{name}.png", render.image, compress_level=3)
        if render.labels.max() <= np.iinfo(np.uint16).max:
            label_path = tray_dir / f"{name}_labels.png"
            iio.imwrite(label_path, render.labels.astype(np.uint16), compress_level=3)
        else:  # more than 65535 specimens: 32-bit TIFF
            import tifffile

            label_path = tray_dir / f"{name}_labels.tif"
            tifffile.imwrite(label_path, render.labels)
        rows = render.truth_table()
        doc = {**render.meta, "image": f"{name}.png", "labels": label_path.name, "specimens": rows}
        (tray_dir / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        for r in rows:
            tray_counts[r["class_name"]] += 1
            cy, cx = r["centroid_yx"]
            b = r["bbox"]
            csv_rows.append(
                {
                    "tray": t,
                    "image": f"{name}.png",
                    "id": r["id"],
                    "class_name": r["class_name"],
                    "class_index": r["class_index"],
                    "centroid_y": round(cy, 3),
                    "centroid_x": round(cx, 3),
                    "bbox_min_row": b[0],
                    "bbox_min_col": b[1],
                    "bbox_max_row": b[2],
                    "bbox_max_col": b[3],
                    "area_px": r["area_px"],
                    "diameter_um": r["diameter_um"],
                    "clipped": r["clipped"],
                    "touching": r["touching"],
                    "overexposed": r["overexposed"],
                    "morph": r["morph"],
                    "mean_grey": r["mean_grey"],
                }
            )
        tray_paths.append(str(tray_dir / f"{name}.png"))
        tick(f"{name}.png")
    truth_csv = None
    if trays:
        truth_csv = tray_dir / "truth.csv"
        with truth_csv.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=_CSV_FIELDS)
            writer.writeheader()
            writer.writerows(csv_rows)
    crop_counts = dict.fromkeys(CLASSES, 0)
    for k, name in enumerate(CLASSES):
        if not crops_per_class:
            continue
        folder = crop_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(crops_per_class):
            crop = render_crop(name, _seed_for(seed, 1, k, i))
            iio.imwrite(folder / f"{name}_{i:05d}.png", crop, compress_level=3)
            crop_counts[name] += 1
            tick(f"crops/{name}")
    return {
        "out_dir": str(out),
        "trays": tray_paths,
        "truth_csv": str(truth_csv) if truth_csv else None,
        "crops_dir": str(crop_dir) if crops_per_class else None,
        "tray_counts": tray_counts,
        "crop_counts": crop_counts,
        "seed": int(seed),
    }
