"""Constants, data types and small helpers shared by the renderer's modules."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi

if TYPE_CHECKING:
    from collections.abc import Sequence

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


def check_seed(seed: object) -> int:
    """A renderer's seed as an int: a non-negative integer (numpy's too, not a bool), else
    a one-line ValueError. The one seed check of every renderer.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


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
