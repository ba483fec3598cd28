"""A simulated microscope over a "world" image of a tray (pure numpy, no pymmcore-plus).

The physics lives here; the thin pymmcore-plus device classes that expose it to a core
(`SimulatedCamera`, `SimulatedXYStage`, `SimulatedShutter`) live in `acquire/_mm.py`,
the one module allowed to import pymmcore-plus. They all share one `SimulatedMicroscope`,
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
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "SimulatedCameraError",
    "SimulatedMicroscope",
    "stage_xy_for_window",
    "window_origin",
    "world_extent_um",
    "world_window",
]


#: Distinct shifts of the noise bank (see `SimulatedMicroscope._standard_normal_field`).
_NOISE_SHIFTS = 65_521


class SimulatedCameraError(RuntimeError):
    """Raised by the simulated camera when fault injection says it breaks."""


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


@dataclass
class SimulatedMicroscope:
    """A camera, an XY stage and a shutter looking at one world image.

    Thread-safe: the MDA thread snaps while the GUI thread may move the stage.

    Parameters
    ----------
    world
        (H, W, 3) RGB or (H, W) grey uint8 tray image; one pixel = `pixel_size_um`.
    pixel_size_um
        Micrometres per pixel of world and camera alike.
    camera_shape
        (height, width) of camera frames in pixels.
    exposure_ms
        Current exposure time.
    nominal_exposure_ms
        Exposure at which a frame reproduces the world's values exactly; brightness scales
        with ``exposure_ms / nominal_exposure_ms`` and saturates at 255.
    noise
        Add shot noise (Gaussian approximation, variance = signal / `electrons_per_dn`)
        and read noise (`read_noise_dn` standard deviation), seeded with `seed`.
    seed
        Seed of the noise generator, so runs are reproducible.
    fail_after_frames
        Fault injection: the first `fail_after_frames` snaps succeed, every later one
        raises `SimulatedCameraError`. None: never fails.
    fill_value
        Brightness of the field outside the world (the dark tray beyond its edges).
    simulate_exposure_time
        Sleep for the exposure time in each snap, as a real camera takes that long; this
        also keeps continuous (live) acquisition from spinning a CPU core.
    stage_xy_um
        Physical stage position: the sample point at the centre of the field.
    """

    world: np.ndarray
    pixel_size_um: float
    camera_shape: tuple[int, int] = (972, 1296)
    exposure_ms: float = 10.0
    nominal_exposure_ms: float = 10.0
    noise: bool = True
    seed: int = 0
    fail_after_frames: int | None = None
    fill_value: int = 0
    read_noise_dn: float = 1.5
    electrons_per_dn: float = 4.0
    simulate_exposure_time: bool = True
    stage_xy_um: tuple[float, float] = (0.0, 0.0)
    shutter_open: bool = False
    frames_snapped: int = 0
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
        if not 0 <= self.fill_value <= 255:
            raise ValueError(f"fill_value must be in 0..255, got {self.fill_value}")
        self._rng = np.random.default_rng(self.seed)

    @staticmethod
    def _check_exposure(exposure_ms: float) -> None:
        if not (math.isfinite(exposure_ms) and exposure_ms > 0):
            raise ValueError(f"exposure must be a positive number of ms, got {exposure_ms!r}")

    # ------------------------------------------------------------------ geometry
    @property
    def frame_shape(self) -> tuple[int, int] | tuple[int, int, int]:
        """Shape of a camera frame: (h, w, 3) for an RGB world, (h, w) for a grey one."""
        return (*self.camera_shape, *self.world.shape[2:])

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
        """Move the stage (instantly) so that (x_um, y_um) is at the centre of the field."""
        x, y = float(x_um), float(y_um)
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"stage position must be finite, got ({x_um!r}, {y_um!r})")
        with self._lock:
            self.stage_xy_um = (x, y)

    def set_exposure(self, exposure_ms: float) -> None:
        """Set the exposure time in milliseconds."""
        self._check_exposure(float(exposure_ms))
        with self._lock:
            self.exposure_ms = float(exposure_ms)

    def window(self, stage_xy_um: tuple[float, float] | None = None) -> np.ndarray:
        """The exact world window at `stage_xy_um` (default: the current stage position)."""
        pos = self.stage_xy_um if stage_xy_um is None else stage_xy_um
        return world_window(
            self.world, pos, self.camera_shape, self.pixel_size_um, fill_value=self.fill_value
        )

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
        """Expose one frame into `buffer` (shape `frame_shape`, uint8), in place.

        Raises
        ------
        SimulatedCameraError
            When fault injection says the camera has broken.
        """
        if buffer.shape != self.frame_shape or buffer.dtype != np.uint8:
            raise ValueError(
                f"buffer must be {self.frame_shape} uint8, got {buffer.shape} {buffer.dtype}"
            )
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
            buffer.fill(self.fill_value)
            _copy_window(
                self.world, window_origin(pos, self.camera_shape, self.pixel_size_um), buffer
            )
            if self.noise or gain != 1.0:
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
                np.clip(signal + np.float32(0.5), 0, 255, out=signal)
                buffer[...] = signal.astype(np.uint8)
            self.frames_snapped += 1
        if self.simulate_exposure_time:
            time.sleep(exposure / 1000.0)

    def snap(self) -> np.ndarray:
        """One frame as a new (h, w[, 3]) uint8 array (see `snap_into`)."""
        out = np.empty(self.frame_shape, dtype=np.uint8)
        self.snap_into(out)
        return out
