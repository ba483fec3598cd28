"""A simulated microscope over a "world" image of a tray (pure numpy, no pymmcore-plus).

The physics lives here; the thin pymmcore-plus device classes that expose it to a core
(`SimulatedCamera`, `SimulatedXYStage`, `SimulatedShutter`) live in
`acquire/_mm_devices.py`, part of the adapter, the only modules allowed to import
pymmcore-plus. They all share one `SimulatedMicroscope`,
the way a real camera sees whatever the real stage has put under the objective.

Coordinates
-----------
The world is an (H, W, 3) (or (H, W)) uint8 image of the tray whose pixel size equals the
camera's pixel size (`pixel_size_um`, micrometres per pixel at the sample).

* World pixel (row, col) has its centre at sample coordinates
  ``x_um = col * pixel_size_um``, ``y_um = row * pixel_size_um``: rows grow with y,
  columns with x, world pixel (0, 0) sits at the sample origin.
* The stage position (x_um, y_um) is the sample point at the centre of the field of view.
* A camera frame of shape (h, w) at stage (sx, sy) shows world rows
  ``r0 .. r0 + h - 1`` and columns ``c0 .. c0 + w - 1`` with
  ``r0 = floor(sy / px - (h - 1) / 2 + 0.5)`` and
  ``c0 = floor(sx / px - (w - 1) / 2 + 0.5)`` (nearest world pixel, no interpolation).

This is exactly `napari_foram.frames.Frame.pixel_to_stage_um` (stage = field centre, rows
grow with stage y, columns with stage x) when ``sx / px - (w - 1) / 2`` and
``sy / px - (h - 1) / 2`` are whole numbers (see `stage_xy_for_window`), and within half a
pixel otherwise. Parts of the field outside the world read as `fill_value` (dark tray).

Depth of field
--------------
Optionally the world has relief: a height map (micrometres above the tray floor, one value
per world pixel, see `height_map_from_labels`) and the microscope a focus position z (um,
same axis). A snapped frame is then blurred pixel by pixel with a Gaussian of
``sigma_px = |z - height| * blur_per_um`` (`defocus_blur`): only what lies within about
half a depth of field of z is sharp, as under a stereo microscope looking at specimens
hundreds of micrometres thick. Without a height map the world is flat and every z is in
focus, which keeps the exact-window behaviour above.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from napari_foram.acquire.mount import _check_mount, mount_affine, mount_image
from napari_foram.defaults import CAMERA_SHAPE

if TYPE_CHECKING:
    from collections.abc import Sequence

    from napari_foram.synthetic import SpecimenTruth

__all__ = [
    "BIT_DEPTHS",
    "DEFAULT_BLUR_PER_UM",
    "SimulatedCameraError",
    "SimulatedMicroscope",
    "SimulatedStageError",
    "defocus_blur",
    "height_map_from_labels",
    "mount_affine",
    "mount_image",
    "stage_xy_for_window",
    "window_origin",
    "world_extent_um",
    "world_window",
]


#: Distinct shifts of the noise bank (see `SimulatedMicroscope._standard_normal_field`).
_NOISE_SHIFTS = 65_521

#: Default defocus blur: Gaussian sigma in pixels per micrometre of defocus. Within
#: +-15 um of the focal plane sigma stays under 0.75 px, which still looks sharp at
#: 2.5 um/px: a depth of field of about 30 um, as a stereo microscope gives with its
#: aperture open near the top of its zoom (at low zoom it is deeper: lower the value to
#: model that, or fit it to a through-focus series of the real instrument). 100 um out of
#: focus gives sigma = 5 px, 300 um (the top of a large specimen seen with the tray floor
#: in focus) 15 px.
DEFAULT_BLUR_PER_UM = 0.05

#: Coarsest blur pyramid level `defocus_blur` builds (its sigma is ~74 px).
_MAX_PYRAMID_LEVELS = 7


#: Bit depths the simulated camera offers: 8 (uint8 frames) or 10-16 significant bits in
#: uint16 frames, as scientific cameras deliver them (unpacked, low bits significant).
BIT_DEPTHS = (8, 10, 12, 14, 16)


class SimulatedCameraError(RuntimeError):
    """Raised by the simulated camera when fault injection says it breaks."""


class SimulatedStageError(RuntimeError):
    """Raised by the simulated XY stage when fault injection says it breaks."""


def _check_world(world: np.ndarray) -> None:
    if not isinstance(world, np.ndarray):
        raise ValueError(f"world must be a numpy array, got {type(world).__name__}")
    if world.dtype != np.uint8:
        raise ValueError(f"world must be uint8, got {world.dtype}")
    if world.ndim == 3 and world.shape[2] == 3:
        pass
    elif world.ndim != 2:
        raise ValueError(f"world must be (H, W) or (H, W, 3), got shape {world.shape}")
    if world.shape[0] == 0 or world.shape[1] == 0:
        raise ValueError(f"world is empty (shape {world.shape})")


def _check_pixel_size(pixel_size_um: float) -> None:
    if not (isinstance(pixel_size_um, (int, float)) and math.isfinite(pixel_size_um)):
        raise ValueError(f"pixel_size_um must be a finite number, got {pixel_size_um!r}")
    if pixel_size_um <= 0:
        raise ValueError(f"pixel_size_um must be positive, got {pixel_size_um}")


def _check_camera_shape(camera_shape: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in camera_shape)
    except (TypeError, ValueError):
        raise ValueError(f"camera_shape must be (height, width), got {camera_shape!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"camera_shape must be positive, got {camera_shape!r}")
    return h, w


def window_origin(
    stage_xy_um: tuple[float, float], camera_shape: tuple[int, int], pixel_size_um: float
) -> tuple[int, int]:
    """World (row, col) of the top-left pixel the camera sees at `stage_xy_um`.

    Parameters
    ----------
    stage_xy_um
        (x, y) of the field centre in sample micrometres.
    camera_shape
        (height, width) of the camera frame in pixels.
    pixel_size_um
        Micrometres per pixel (world and camera alike).

    Returns
    -------
    (row, col)
        May be negative or beyond the world: that part of the field is outside it.
    """
    h, w = _check_camera_shape(camera_shape)
    _check_pixel_size(pixel_size_um)
    sx, sy = (float(v) for v in stage_xy_um)
    if not (math.isfinite(sx) and math.isfinite(sy)):
        raise ValueError(f"stage position must be finite, got {stage_xy_um!r}")
    # floor(v + 0.5) rather than round(): numpy/Python round halves to even, which would
    # make the window jump by one pixel depending on parity.
    r0 = math.floor(sy / pixel_size_um - (h - 1) / 2.0 + 0.5)
    c0 = math.floor(sx / pixel_size_um - (w - 1) / 2.0 + 0.5)
    return r0, c0


def stage_xy_for_window(
    top_row: int, left_col: int, camera_shape: tuple[int, int], pixel_size_um: float
) -> tuple[float, float]:
    """Stage (x_um, y_um) whose field starts exactly at world pixel (top_row, left_col).

    At this position `Frame.pixel_to_stage_um` and the world grid agree exactly.
    """
    h, w = _check_camera_shape(camera_shape)
    _check_pixel_size(pixel_size_um)
    return (
        (left_col + (w - 1) / 2.0) * pixel_size_um,
        (top_row + (h - 1) / 2.0) * pixel_size_um,
    )


def world_extent_um(
    world_shape: tuple[int, ...], pixel_size_um: float
) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) sample micrometres covered by a world of `world_shape`.

    Edges of the outermost pixels (pixel centres are at multiples of `pixel_size_um`), with
    top < bottom because rows grow with y.
    """
    _check_pixel_size(pixel_size_um)
    h, w = int(world_shape[0]), int(world_shape[1])
    half = 0.5 * pixel_size_um
    return (-half, -half, w * pixel_size_um - half, h * pixel_size_um - half)


def world_window(
    world: np.ndarray,
    stage_xy_um: tuple[float, float],
    camera_shape: tuple[int, int],
    pixel_size_um: float,
    *,
    fill_value: int = 0,
) -> np.ndarray:
    """The exact (noise-free, nominal exposure) field the camera sees at `stage_xy_um`.

    Parameters
    ----------
    world
        (H, W) or (H, W, 3) uint8 tray image, one pixel = `pixel_size_um`.
    stage_xy_um
        (x, y) of the field centre in sample micrometres.
    camera_shape
        (height, width) of the frame.
    pixel_size_um
        Micrometres per pixel.
    fill_value
        Value of field pixels outside the world.

    Returns
    -------
    np.ndarray
        (height, width[, 3]) uint8, a new array.
    """
    _check_world(world)
    h, w = _check_camera_shape(camera_shape)
    out = np.full((h, w, *world.shape[2:]), fill_value, dtype=np.uint8)
    _copy_window(world, window_origin(stage_xy_um, (h, w), pixel_size_um), out)
    return out


def _copy_window(world: np.ndarray, origin: tuple[int, int], out: np.ndarray) -> None:
    """Copy the overlap of the world with the window at `origin` into `out` (in place)."""
    r0, c0 = origin
    h, w = out.shape[:2]
    wr0, wr1 = max(r0, 0), min(r0 + h, world.shape[0])
    wc0, wc1 = max(c0, 0), min(c0 + w, world.shape[1])
    if wr0 < wr1 and wc0 < wc1:
        out[wr0 - r0 : wr1 - r0, wc0 - c0 : wc1 - c0] = world[wr0:wr1, wc0:wc1]


# ---------------------------------------------------------------------------- defocus
# `defocus_blur` blurs every pixel by its own sigma without a per-pixel convolution: it
# builds a blur pyramid (level k is the image blurred and decimated k times) and blends,
# coarse to fine, each level with the upsampled blend of the coarser ones. Upsampled back
# to full size, level k is the image blurred by a fixed kernel of standard deviation
# `_pyramid_sigmas()[k]` (1.0, 2.2, 4.6, 9.2, ... px: doubling), so the result at a pixel
# is a blend of the two levels whose sigmas bracket its own. A 1296 x 972 RGB frame costs
# about one full-resolution decimation, one upsampling and one blend (~4/3 of each with
# the coarser levels), whatever the sigmas: 50-80 ms on our 2-core Xeon, where
# scipy.ndimage.gaussian_filter at sigma 16 alone takes 400 ms.
#
# Arrays are (C, H, W) float32 inside: the channel-last layout makes every operation
# along W stride over 3-element pixels, which measured 3-5x slower.


def _decimate2(a: np.ndarray, axis: int) -> np.ndarray:
    """Smooth with [1, 2, 1] / 4 and keep every other sample along `axis` (edges repeat).

    Output sample j sits on input sample 2 j, so pyramid grids stay aligned on the even
    pixels of the level below.
    """
    a = np.moveaxis(a, axis, 0)
    even, odd = a[0::2], a[1::2]
    m, k = even.shape[0], odd.shape[0]
    out = even * np.float32(2.0)
    out[:k] += odd  # right neighbours
    out[k:] += even[k:]  # odd length: the last sample is its own right neighbour
    out[1:] += odd[: m - 1]  # left neighbours
    out[0] += even[0]  # the first sample is its own left neighbour
    out *= np.float32(0.25)
    return np.moveaxis(out, 0, axis)


def _interpolate2(c: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Linear interpolation of `c` to `n` samples along `axis` (inverse of `_decimate2`).

    Even outputs are the coarse samples, odd ones the midpoints between neighbours (the
    last coarse sample is repeated past the edge).
    """

    def part(start: int, stop: int | None) -> tuple[slice, ...]:
        return (slice(None),) * axis + (slice(start, stop),)

    m = c.shape[axis]
    right = np.concatenate([c[part(1, None)], c[part(m - 1, None)]], axis=axis)
    mid = c + right
    mid *= np.float32(0.5)
    # Interleave by stacking on a new axis after `axis` and merging the two: writing
    # through a stride-2 view along the fastest axis measured 3x slower.
    out = np.stack([c, mid], axis=axis + 1).reshape(*c.shape[:axis], 2 * m, *c.shape[axis + 1 :])
    return out[part(0, n)]


def _pyramid_down(a: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (C, ceil(H/2), ceil(W/2)): smooth and decimate both image axes."""
    return _decimate2(_decimate2(a, 1), 2)


def _pyramid_up(c: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(C, h, w) -> (C, *shape) by linear interpolation (rows last: they are contiguous)."""
    return _interpolate2(_interpolate2(c, shape[1], 2), shape[0], 1)


@functools.cache
def _pyramid_sigmas() -> tuple[float, ...]:
    """Blur (px, standard deviation) of pyramid level k seen at full resolution.

    Measured, not derived: the impulse response of k decimations then k interpolations,
    its variance averaged over the 2**k positions of the impulse relative to the coarse
    grid (decimation is not shift-invariant). Level 0 is the sharp image.
    """
    sigmas = [0.0]
    for k in range(1, _MAX_PYRAMID_LEVELS + 1):
        step = 2**k
        n = 8 * step + 1
        variances = []
        for phase in range(step):
            impulse = np.zeros((1, n, 1), np.float32)
            pos = 4 * step + phase
            impulse[0, pos, 0] = 1.0
            levels = [impulse]
            for _ in range(k):
                levels.append(_decimate2(levels[-1], 1))
            resp = levels[-1]
            for j in range(k - 1, -1, -1):
                resp = _interpolate2(resp, levels[j].shape[1], 1)
            r = resp[0, :, 0].astype(np.float64)
            x = np.arange(n) - pos
            mean = float((r * x).sum() / r.sum())
            variances.append(float((r * (x - mean) ** 2).sum() / r.sum()))
        sigmas.append(math.sqrt(sum(variances) / len(variances)))
    return tuple(sigmas)


def defocus_blur(image: np.ndarray, sigma_px: np.ndarray) -> np.ndarray:
    """Blur each pixel of `image` with a Gaussian of its own standard deviation.

    An approximation built for speed (see the comment above `_decimate2`): pixels whose
    sigma lies between two pyramid levels get a blend of the two, weighted so that the
    blend's variance equals ``sigma**2``. Sigmas under ~1 px blend the sharp image with
    the first level; sigmas beyond the coarsest level (~74 px, or what the image size
    allows) are capped there. The blur is right on average over positions, but a pyramid
    is not shift-invariant: measured on impulses, a pixel gets 0.7-1.2x its sigma
    depending on where it falls on the coarse grids. Brightness is preserved (every
    kernel sums to one).

    Parameters
    ----------
    image
        (H, W) or (H, W, C) array, any real dtype.
    sigma_px
        (H, W) blur per pixel, in pixels; >= 0.

    Returns
    -------
    np.ndarray
        float32, same shape as `image`, values in the range of `image`.
    """
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    if sigma_px.shape != image.shape[:2]:
        raise ValueError(
            f"sigma_px must have the image's (H, W) shape {image.shape[:2]}, got {sigma_px.shape}"
        )
    planes = image[None] if image.ndim == 2 else np.moveaxis(image, 2, 0)
    sharp = np.ascontiguousarray(planes, dtype=np.float32)
    sigma = np.asarray(sigma_px, dtype=np.float32)
    level_sigma = _pyramid_sigmas()
    pyramid = [sharp]
    top = float(sigma.max()) if sigma.size else 0.0
    # Only as many levels as the largest sigma needs, and none smaller than 4 px a side.
    while (
        len(pyramid) <= _MAX_PYRAMID_LEVELS
        and level_sigma[len(pyramid) - 1] < top
        and min(pyramid[-1].shape[1:]) >= 8
    ):
        pyramid.append(_pyramid_down(pyramid[-1]))
    result = pyramid[-1]
    for k in range(len(pyramid) - 2, -1, -1):
        lo, hi = level_sigma[k], level_sigma[k + 1]
        # Level k samples sit on every 2**k-th full-resolution pixel.
        s = sigma[:: 2**k, :: 2**k]
        # Weight of the coarser blend: 0 at sigma <= lo, 1 at sigma >= hi, in between the
        # mixture's variance (1 - w) lo**2 + w hi**2 equals sigma**2.
        w = np.clip((s * s - np.float32(lo * lo)) / np.float32(hi * hi - lo * lo), 0.0, 1.0)
        up = _pyramid_up(result, pyramid[k].shape[1:])
        up -= pyramid[k]
        up *= w  # (h, w) broadcasts over the leading channel axis: fast
        up += pyramid[k]
        result = up
    return result[0] if image.ndim == 2 else np.moveaxis(result, 0, 2)


def height_map_from_labels(
    labels: np.ndarray,
    specimens: Sequence[SpecimenTruth],
    pixel_size_um: float,
    *,
    thickness_ratio: tuple[float, float] = (0.5, 0.8),
    seed: int = 0,
) -> np.ndarray:
    """A plausible relief for a synthetic tray: one dome per specimen on a flat floor.

    Each specimen's height rises from 0 at its outline to its thickness at the point
    farthest inside it, along an elliptical profile
    ``thickness * sqrt(1 - (1 - d / d_max) ** 2)`` (``d``: distance to the outline), so a
    round specimen is half an ellipsoid. Its thickness is a random fraction
    (`thickness_ratio`, uniform) of its nominal diameter, but of no more than its breadth
    (the minor axis of the ellipse with the mask's second moments) for elongate ones: a
    biserial test or a tube lies on its side. Specimens of different sizes thus have their
    tops up to hundreds of micrometres apart and no focal plane shows all of them sharp.

    Parameters
    ----------
    labels
        (H, W) int label image, 0 = tray floor, k = `SpecimenTruth.id` (e.g.
        `TrayRender.labels`).
    specimens
        Ground truth of the labels (e.g. `TrayRender.specimens`); `id`, `bbox` and
        `diameter_um` are used. Labels without a specimen stay flat.
    pixel_size_um
        Micrometres per pixel of `labels`.
    thickness_ratio
        (low, high) range of thickness / diameter.
    seed
        Seeds the thickness draws (one per specimen, in id order).

    Returns
    -------
    np.ndarray
        (H, W) float32 heights above the floor in micrometres.
    """
    from scipy import ndimage as ndi

    _check_pixel_size(pixel_size_um)
    if not isinstance(labels, np.ndarray) or labels.ndim != 2:
        raise ValueError("labels must be a 2-D array")
    lo, hi = (float(v) for v in thickness_ratio)
    if not 0 < lo <= hi:
        raise ValueError(f"thickness_ratio must be 0 < low <= high, got {thickness_ratio!r}")
    rng = np.random.default_rng(seed)
    heights = np.zeros(labels.shape, np.float32)
    for spec in sorted(specimens, key=lambda s: s.id):
        ratio = rng.uniform(lo, hi)  # drawn even if the label is absent: stable per id
        r0, c0, r1, c1 = (int(v) for v in spec.bbox)
        mask = labels[r0:r1, c0:c1] == spec.id
        if not mask.any():
            continue
        # Pad so that the bounding box edge counts as outline too.
        dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        d_max = float(dist.max())
        # Breadth = minor axis of the equivalent ellipse, 4 sqrt(smallest eigenvalue of
        # the pixel coordinates' covariance); the inscribed circle would flatten every
        # lobed test.
        coords = np.argwhere(mask).astype(np.float64)
        if len(coords) > 2:
            breadth_px = 4.0 * math.sqrt(max(float(np.linalg.eigvalsh(np.cov(coords.T))[0]), 0))
        else:
            breadth_px = 1.0
        breadth_um = max(breadth_px, 2.0 * d_max) * pixel_size_um
        thickness = ratio * min(float(spec.diameter_um), breadth_um)
        inside = 1.0 - dist[mask] / d_max
        heights[r0:r1, c0:c1][mask] = thickness * np.sqrt(np.clip(1.0 - inside**2, 0.0, 1.0))
    return heights


@dataclass
class SimulatedMicroscope:
    """A camera, an XY stage, a focus drive and a shutter looking at one world image.

    Thread-safe: the MDA thread snaps while the GUI thread may move the stage.

    Parameters
    ----------
    world
        (H, W, 3) RGB or (H, W) grey uint8 tray image; one pixel = `pixel_size_um`.
    pixel_size_um
        Micrometres per pixel of world and camera alike.
    camera_shape
        (height, width) of camera frames in pixels.
    bit_depth
        Significant bits per pixel (and per colour component): 8 gives uint8 frames;
        10, 12, 14 or 16 give uint16 frames holding 0 .. ``2**bit_depth - 1``, the world's
        0-255 brightness scaled by ``(2**bit_depth - 1) / 255``. The physics is the same
        at every depth (see `snap_into`): only the digitisation differs.
    exposure_ms
        Current exposure time.
    nominal_exposure_ms
        Exposure at which a frame reproduces the world's values exactly (scaled to
        `bit_depth`); brightness scales with ``exposure_ms / nominal_exposure_ms`` and
        saturates at `max_value`.
    noise
        Add shot noise (Gaussian approximation, variance = signal / `electrons_per_dn`)
        and read noise (`read_noise_dn` standard deviation), seeded with `seed`.
    seed
        Seed of the noise generator, so runs are reproducible.
    fail_after_frames
        Fault injection: the first `fail_after_frames` snaps succeed, every later one
        raises `SimulatedCameraError`. None: never fails.
    fail_after_moves
        Fault injection: the first `fail_after_moves` XY stage moves (`move_to`) succeed,
        every later one raises `SimulatedStageError` and leaves the stage where it was.
        None: never fails. The focus drive (`move_z_to`) is not affected.
    fill_value
        Brightness of the field outside the world (the dark tray beyond its edges), on
        the world's 0-255 scale.
    read_noise_dn, electrons_per_dn
        Camera noise in 8-bit digital numbers (DN). At a higher `bit_depth` the noise in
        DN grows with the range, exactly as the signal does: the same sensor, digitised
        more finely.
    simulate_exposure_time
        Sleep for the exposure time in each snap, as a real camera takes that long; this
        also keeps continuous (live) acquisition from spinning a CPU core.
    stage_xy_um
        Physical stage position: the sample point at the centre of the field.
    height_um
        (H, W) relief of the world: micrometres above the tray floor per world pixel (see
        `height_map_from_labels`). None: a flat world, sharp at every focus position.
    z_um
        Focus position: the height (um above the tray floor) of the focal plane.
    blur_per_um
        Defocus blur, Gaussian sigma in pixels per micrometre between the focal plane and
        the surface (`DEFAULT_BLUR_PER_UM`: a depth of field of ~30 um at 2.5 um/px).
    mount_rotation_deg, mount_mirror
        How the camera sits on the microscope (see `mount_image`): frames are the world
        window mirrored and rotated, as from a camera mounted turned on a real stand.
        `camera_shape` stays the sensor's (rows, cols); at 90 or 270 degrees the world
        window it sees is (cols, rows). `mount_affine` gives the matching pixel-size
        affine transform.
    """

    world: np.ndarray
    pixel_size_um: float
    camera_shape: tuple[int, int] = CAMERA_SHAPE
    bit_depth: int = 8
    exposure_ms: float = 10.0
    nominal_exposure_ms: float = 10.0
    noise: bool = True
    seed: int = 0
    fail_after_frames: int | None = None
    fail_after_moves: int | None = None
    fill_value: int = 0
    read_noise_dn: float = 1.5
    electrons_per_dn: float = 4.0
    simulate_exposure_time: bool = True
    stage_xy_um: tuple[float, float] = (0.0, 0.0)
    height_um: np.ndarray | None = field(default=None, repr=False, compare=False)
    z_um: float = 0.0
    blur_per_um: float = DEFAULT_BLUR_PER_UM
    mount_rotation_deg: int = 0
    mount_mirror: bool = False
    shutter_open: bool = False
    frames_snapped: int = 0
    moves_made: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _rng: np.random.Generator = field(init=False, repr=False, compare=False)
    _noise_bank: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_world(self.world)
        _check_pixel_size(self.pixel_size_um)
        self.camera_shape = _check_camera_shape(self.camera_shape)
        self._check_exposure(self.exposure_ms)
        self._check_exposure(self.nominal_exposure_ms)
        if self.fail_after_frames is not None and self.fail_after_frames < 0:
            raise ValueError(f"fail_after_frames must be >= 0, got {self.fail_after_frames}")
        if self.fail_after_moves is not None and self.fail_after_moves < 0:
            raise ValueError(f"fail_after_moves must be >= 0, got {self.fail_after_moves}")
        # bool is an int: refuse it, True would silently mean a 1-bit camera.
        if isinstance(self.bit_depth, bool) or self.bit_depth not in BIT_DEPTHS:
            raise ValueError(f"bit_depth must be one of {BIT_DEPTHS}, got {self.bit_depth!r}")
        self.bit_depth = int(self.bit_depth)  # 12.0 or np.int64(12) compare equal above
        sx, sy = (float(v) for v in self.stage_xy_um)
        if not (math.isfinite(sx) and math.isfinite(sy)):
            raise ValueError(f"stage position must be finite, got {self.stage_xy_um!r}")
        self.stage_xy_um = (sx, sy)
        if not 0 <= self.fill_value <= 255:
            raise ValueError(f"fill_value must be in 0..255, got {self.fill_value}")
        if self.height_um is not None:
            self.height_um = self._checked_heights(self.height_um)
        self._check_z(self.z_um)
        if not (math.isfinite(self.blur_per_um) and self.blur_per_um >= 0):
            raise ValueError(f"blur_per_um must be >= 0, got {self.blur_per_um!r}")
        self.mount_rotation_deg = _check_mount(self.mount_rotation_deg)
        self.mount_mirror = bool(self.mount_mirror)
        self._rng = np.random.default_rng(self.seed)

    def _checked_heights(self, heights: np.ndarray) -> np.ndarray:
        if not isinstance(heights, np.ndarray) or heights.shape != self.world.shape[:2]:
            raise ValueError(
                f"height_um must be an array of the world's (H, W) shape {self.world.shape[:2]}"
                f", got {getattr(heights, 'shape', type(heights).__name__)}"
            )
        out = np.ascontiguousarray(heights, dtype=np.float32)
        if not np.isfinite(out).all():
            raise ValueError("height_um must be finite everywhere")
        return out

    @staticmethod
    def _check_z(z_um: float) -> None:
        if not math.isfinite(z_um):
            raise ValueError(f"focus position must be finite, got {z_um!r}")

    @staticmethod
    def _check_exposure(exposure_ms: float) -> None:
        if not (math.isfinite(exposure_ms) and exposure_ms > 0):
            raise ValueError(f"exposure must be a positive number of ms, got {exposure_ms!r}")

    # ------------------------------------------------------------------ pixels
    @property
    def dtype(self) -> np.dtype:
        """Pixel type of camera frames: uint8 at 8 bits, uint16 above."""
        return np.dtype(np.uint8) if self.bit_depth == 8 else np.dtype(np.uint16)

    @property
    def max_value(self) -> int:
        """Brightest value a frame can hold (``2**bit_depth - 1``): saturation."""
        return int(2**self.bit_depth - 1)

    # ------------------------------------------------------------------ geometry
    @property
    def frame_shape(self) -> tuple[int, int] | tuple[int, int, int]:
        """Shape of a camera frame: (h, w, 3) for an RGB world, (h, w) for a grey one."""
        return (*self.camera_shape, *self.world.shape[2:])

    @property
    def mounted(self) -> bool:
        """Whether the camera is mounted rotated or mirrored."""
        return self.mount_rotation_deg != 0 or self.mount_mirror

    @property
    def window_shape(self) -> tuple[int, int]:
        """(rows, cols) of the world window the camera sees (the sensor's shape turned
        back by the mounting).
        """
        h, w = self.camera_shape
        return (w, h) if self.mount_rotation_deg in (90, 270) else (h, w)

    @property
    def world_extent_um(self) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of the world in sample micrometres (top < bottom)."""
        return world_extent_um(self.world.shape, self.pixel_size_um)

    @property
    def world_center_um(self) -> tuple[float, float]:
        """Sample (x, y) of the centre of the world."""
        left, top, right, bottom = self.world_extent_um
        return ((left + right) / 2.0, (top + bottom) / 2.0)

    # ------------------------------------------------------------------ devices
    def move_to(self, x_um: float, y_um: float) -> None:
        """Move the stage (instantly) so that (x_um, y_um) is at the centre of the field.

        Raises
        ------
        SimulatedStageError
            When fault injection says the stage has broken (it then stays where it was).
        """
        x, y = float(x_um), float(y_um)
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"stage position must be finite, got ({x_um!r}, {y_um!r})")
        with self._lock:
            if self.fail_after_moves is not None and self.moves_made >= self.fail_after_moves:
                raise SimulatedStageError(
                    f"simulated stage failure after {self.fail_after_moves} moves"
                )
            self.stage_xy_um = (x, y)
            self.moves_made += 1

    def move_z_to(self, z_um: float) -> None:
        """Move the focus (instantly) so that the focal plane is `z_um` above the floor."""
        z = float(z_um)
        self._check_z(z)
        with self._lock:
            self.z_um = z

    def set_exposure(self, exposure_ms: float) -> None:
        """Set the exposure time in milliseconds."""
        self._check_exposure(float(exposure_ms))
        with self._lock:
            self.exposure_ms = float(exposure_ms)

    def window(self, stage_xy_um: tuple[float, float] | None = None) -> np.ndarray:
        """The exact world window at `stage_xy_um` (default: the current stage position)."""
        pos = self.stage_xy_um if stage_xy_um is None else stage_xy_um
        return world_window(
            self.world, pos, self.window_shape, self.pixel_size_um, fill_value=self.fill_value
        )

    def defocus_sigma_px(self, stage_xy_um: tuple[float, float] | None = None) -> np.ndarray:
        """(h, w) blur sigma (px) of the field at `stage_xy_um` with the current focus.

        Zero everywhere for a flat world (no height map: always in focus). Beyond the
        world's edges the floor (height 0) is seen.
        """
        if self.height_um is None:
            return np.zeros(self.window_shape, np.float32)
        pos = self.stage_xy_um if stage_xy_um is None else stage_xy_um
        return self._sigma_window(window_origin(pos, self.window_shape, self.pixel_size_um))

    def _sigma_window(self, origin: tuple[int, int]) -> np.ndarray:
        heights = np.zeros(self.window_shape, np.float32)
        assert self.height_um is not None  # callers check: a flat world has no defocus
        _copy_window(self.height_um, origin, heights)
        heights -= np.float32(self.z_um)
        np.abs(heights, out=heights)
        heights *= np.float32(self.blur_per_um)
        return heights

    def _standard_normal_field(self, shape: tuple[int, ...]) -> np.ndarray:
        """N(0, 1) float32 noise of `shape`: a random shift into a fixed, seeded bank.

        Drawing 3.8 M fresh normals per 5 MP RGB frame costs 70-140 ms on our CPUs, more
        than everything else in a snap; a shifted view of one bank costs nothing. Each
        pixel's noise is still N(0, 1); consecutive frames carry the same pattern shifted
        by a random amount (up to ~20 rows), which no detector or classifier can exploit.
        """
        size = math.prod(shape)
        if self._noise_bank is None or self._noise_bank.size < size + _NOISE_SHIFTS:
            self._noise_bank = self._rng.standard_normal(size + _NOISE_SHIFTS, np.float32)
        start = int(self._rng.integers(0, _NOISE_SHIFTS))
        return self._noise_bank[start : start + size].reshape(shape)

    def snap_into(self, buffer: np.ndarray) -> None:
        """Expose one frame into `buffer` (shape `frame_shape`, dtype `dtype`), in place.

        Light is modelled on the world's 0-255 scale whatever the bit depth: defocus
        blur, exposure gain, then shot and read noise in 8-bit DN. Only then is the
        signal digitised, scaled to ``0 .. max_value`` and clipped there, so a frame of
        any depth is the 8-bit frame digitised more finely (same content, same
        saturation point, noise in DN growing with the range).

        Raises
        ------
        SimulatedCameraError
            When fault injection says the camera has broken.
        """
        if buffer.shape != self.frame_shape or buffer.dtype != self.dtype:
            raise ValueError(
                f"buffer must be {self.frame_shape} {self.dtype}, "
                f"got {buffer.shape} {buffer.dtype}"
            )
        if not self.mounted:
            exposure = self._expose(buffer)
        else:
            # Expose the world-oriented window, then turn it as the camera sits.
            upright = np.empty((*self.window_shape, *self.world.shape[2:]), self.dtype)
            exposure = self._expose(upright)
            buffer[...] = mount_image(upright, self.mount_rotation_deg, self.mount_mirror)
        if self.simulate_exposure_time:
            time.sleep(exposure / 1000.0)

    def _expose(self, buffer: np.ndarray) -> float:
        """`snap_into` in world orientation (buffer of `window_shape`); the exposure."""
        with self._lock:
            if (
                self.fail_after_frames is not None
                and self.frames_snapped >= self.fail_after_frames
            ):
                raise SimulatedCameraError(
                    f"simulated camera failure after {self.fail_after_frames} frames"
                )
            pos, exposure = self.stage_xy_um, self.exposure_ms
            gain = exposure / self.nominal_exposure_ms
            origin = window_origin(pos, self.window_shape, self.pixel_size_um)
            buffer.fill(self.fill_value)
            _copy_window(self.world, origin, buffer)
            # Optics before the sensor: defocus blurs the light, then the camera adds
            # its noise. A flat world (or no blur) skips this, so frames stay exact.
            signal: np.ndarray | None = None
            if self.height_um is not None and self.blur_per_um > 0:
                signal = defocus_blur(buffer, self._sigma_window(origin))
            # The 8-bit camera with nothing to model keeps the world's bytes untouched
            # (and fast); any other depth needs at least the rescaling below.
            if signal is not None or self.noise or gain != 1.0 or self.bit_depth != 8:
                if signal is None:
                    signal = buffer.astype(np.float32)
                signal *= np.float32(gain)
                if self.noise:
                    # Shot noise grows with the square root of the signal; read noise is
                    # the floor seen in dark regions.
                    sigma = np.sqrt(
                        signal / np.float32(self.electrons_per_dn)
                        + np.float32(self.read_noise_dn**2)
                    )
                    signal += sigma * self._standard_normal_field(signal.shape)
                top = self.max_value
                if top != 255:
                    # Digitise: 0-255 light to 0..max_value DN. float32 holds every
                    # integer up to 2**24 exactly, so 16-bit values round correctly.
                    signal *= np.float32(top / 255.0)
                np.clip(signal + np.float32(0.5), 0, top, out=signal)
                buffer[...] = signal.astype(self.dtype)
            self.frames_snapped += 1
        return exposure

    def snap(self) -> np.ndarray:
        """One frame as a new (h, w[, 3]) array of `dtype` (see `snap_into`)."""
        out = np.empty(self.frame_shape, dtype=self.dtype)
        self.snap_into(out)
        return out
