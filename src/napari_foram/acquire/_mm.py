"""The pymmcore-plus adapter: the only module of napari-foram that imports pymmcore-plus.

Written against pymmcore-plus 0.18.1 (pymmcore 12.5.1.75.0) and useq-schema 0.9.2. The
experimental Python-device API moves between releases, so every call into pymmcore-plus
and useq lives here; an upstream change touches this file only.

pymmcore-plus / useq APIs used
------------------------------
* ``pymmcore_plus.CMMCorePlus``: ``loadSystemConfiguration``, ``snapImage``, ``getImage``,
  ``getXYStageDevice``, ``getXYPosition``, ``getPixelSizeUm``, ``getExposure``,
  ``getImageWidth``/``getImageHeight``, ``getCameraDevice``,
  ``startContinuousSequenceAcquisition``, ``stopSequenceAcquisition``,
  ``isSequenceRunning``, ``getRemainingImageCount``, ``popNextImage``,
  ``mda.run``, ``mda.cancel``, ``mda.is_running``, ``mda.set_engine``, ``mda.events``.
* ``pymmcore_plus.mda.mda_listeners_connected(..., asynchronous=False)``: frameReady
  handled synchronously in the MDA thread.
* ``pymmcore_plus.mda.MDAEngine``: subclassed (``exec_single_event``, ``setup_event``)
  so that a failed snap or a failed stage move is reported instead of only logged.
* ``CMMCorePlus.getImageBitDepth``, ``hasProperty``, ``getProperty`` and
  ``pymmcore_plus.PixelFormat``: the camera's significant bits (`camera_bit_depth`).
* ``pymmcore_plus.experimental.unicore``: ``UniMMCore`` (``loadPyDevice``,
  ``initializeDevice``, ``setCameraDevice``, ``setXYStageDevice``, ``setFocusDevice``,
  ``setShutterDevice``, ``definePixelSizeConfig``, ``setPixelSizeUm``,
  ``setPixelSizeConfig``) and the device base classes ``SimpleCameraDevice``,
  ``XYStageDevice``, ``StageDevice``, ``ShutterDevice``. A Python camera's dtype sets
  ``getBytesPerPixel`` and ``getImageBitDepth`` (always 8 x bytes); its significant bits
  go in the standard "PixelFormat" property (``get_pixel_format``).
* ``CMMCorePlus.getFocusDevice`` / ``getZPosition`` (centre of a z-stack).
* ``pymmcore.CMMCore.registerCallback`` (at interpreter exit, see `_release_at_exit`).
* ``useq``: ``MDASequence``, ``GridRowsColumns``, ``GridFromEdges``, ``AbsolutePosition``,
  ``ZRangeAround``.

Where the simulated devices live
--------------------------------
The physics of the simulated microscope is pure numpy in `acquire/simulated.py`. The four
device classes below subclass pymmcore-plus base classes, so they live here and only
forward to the shared `SimulatedMicroscope`.

Threads
-------
`run_scan` runs the MDA in the *calling* thread (a GUI must call it from a worker) and
calls ``on_frame`` there, once per image. ``on_frame`` should only enqueue the frame
(see `acquire.stream.FrameQueue`); it must never touch Qt.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The core logs a harmless "run `mmcore install`" error when no Micro-Manager binaries are
# installed (our simulated microscope needs none); keep stderr quiet unless the user asked.
os.environ.setdefault("PYMM_LOG_LEVEL", "CRITICAL")

import pymmcore
import useq
from pymmcore_plus import CMMCorePlus, PixelFormat
from pymmcore_plus.experimental.unicore import (
    ShutterDevice,
    SimpleCameraDevice,
    StageDevice,
    UniMMCore,
    XYStageDevice,
)
from pymmcore_plus.mda import MDAEngine, mda_listeners_connected

from napari_foram.acquire.simulated import DEFAULT_BLUR_PER_UM, SimulatedMicroscope
from napari_foram.defaults import CAMERA_SHAPE
from napari_foram.frames import Frame

__all__ = [
    "AcquisitionError",
    "LiveStream",
    "ScanResult",
    "SimulatedCamera",
    "SimulatedShutter",
    "SimulatedXYStage",
    "SimulatedZStage",
    "camera_bit_depth",
    "cancel_scan",
    "create_simulated_core",
    "load_config_core",
    "run_scan",
    "simulated_microscope",
    "snap_frame",
    "tray_extent_scan_sequence",
    "tray_scan_sequence",
]

#: Device labels of the simulated core.
CAMERA_LABEL = "Camera"
XY_STAGE_LABEL = "XYStage"
Z_STAGE_LABEL = "Z"
SHUTTER_LABEL = "Shutter"
PIXEL_CONFIG = "Res"
#: Default z-stack spacing (um): the simulated microscope's depth of field at its default
#: blur, so every height lies within half a step, sigma <= 0.75 px, of some plane.
DEFAULT_Z_STEP_UM = 30.0

_PYMM_LOGGER = "pymmcore-plus"


class AcquisitionError(RuntimeError):
    """The camera or the MDA failed; the message is one line."""


def _one_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0].strip() if text else ""
    if isinstance(exc, BaseException) and not first:
        return type(exc).__name__
    return first


# ---------------------------------------------------------------------------- exit guard
# Measured with pymmcore-plus 0.18.1: a core whose C++ callback is still registered when
# the interpreter finalises aborts the process in 25-55 % of runs ("FATAL: exception not
# rethrown", exit code 134), even after the script finished cleanly. Unregistering the C++
# callback at exit (what CMMCorePlus.__del__ does, which never runs for cores still alive
# at shutdown) cured it in 60/60 runs. We do this for every core this module hands out.
_live_cores: weakref.WeakSet[CMMCorePlus] = weakref.WeakSet()
_exit_guard_lock = threading.Lock()
_exit_guard_registered = False


def _release_at_exit() -> None:
    for core in list(_live_cores):
        # Best effort: the interpreter is shutting down.
        with suppress(Exception):
            pymmcore.CMMCore.registerCallback(core, None)


def _track_core(core: CMMCorePlus) -> None:
    global _exit_guard_registered
    with _exit_guard_lock:
        _live_cores.add(core)
        if not _exit_guard_registered:
            # Registered after the first core exists, so it runs before the core's own
            # weakref.finalize exit hook (atexit runs last-registered first).
            atexit.register(_release_at_exit)
            _exit_guard_registered = True


# ------------------------------------------------------------------ simulated devices
class SimulatedCamera(SimpleCameraDevice):
    """RGB (or grey) camera that images the `SimulatedMicroscope`'s world.

    Frames are uint8 at 8 bits, uint16 at 10-16 bits. UniMMCore derives
    ``getImageBitDepth`` from the dtype alone (16 for any uint16 camera), so the
    significant bits are also published as the standard read-only "PixelFormat"
    property ("RGB12", "Mono16", ...), which `camera_bit_depth` reads.
    """

    def __init__(self, microscope: SimulatedMicroscope) -> None:
        super().__init__()
        self._scope = microscope

    def sensor_shape(self) -> tuple[int, int] | tuple[int, int, int]:
        return self._scope.frame_shape

    def dtype(self) -> Any:
        return self._scope.dtype

    def get_pixel_format(self) -> PixelFormat:
        components = 3 if len(self._scope.frame_shape) == 3 else 1
        return PixelFormat.pick(self._scope.bit_depth, components)

    def get_exposure(self) -> float:
        return self._scope.exposure_ms

    def set_exposure(self, exposure: float) -> None:
        self._scope.set_exposure(exposure)

    def snap(self, buffer: np.ndarray) -> Mapping:
        self._scope.snap_into(buffer)
        return {}


class SimulatedXYStage(XYStageDevice):
    """XY stage that moves the `SimulatedMicroscope` (instantly).

    Reported positions are physical positions minus an origin that `set_origin_x/y` set,
    as on a real stage re-zeroed by the user.
    """

    def __init__(self, microscope: SimulatedMicroscope) -> None:
        super().__init__()
        self._scope = microscope
        self._origin = (0.0, 0.0)

    def set_position_um(self, x: float, y: float) -> None:
        self._scope.move_to(x + self._origin[0], y + self._origin[1])

    def get_position_um(self) -> tuple[float, float]:
        px, py = self._scope.stage_xy_um
        return (px - self._origin[0], py - self._origin[1])

    def set_origin_x(self) -> None:
        self._origin = (self._scope.stage_xy_um[0], self._origin[1])

    def set_origin_y(self) -> None:
        self._origin = (self._origin[0], self._scope.stage_xy_um[1])

    def home(self) -> None:
        self._scope.move_to(0.0, 0.0)

    def stop(self) -> None:
        """Nothing to stop: simulated moves are instant."""


class SimulatedZStage(StageDevice):
    """Focus drive that moves the `SimulatedMicroscope`'s focal plane (instantly).

    Positions are micrometres above the tray floor, minus an origin that `set_origin`
    sets (as on a real focus drive re-zeroed by the user). Higher positions focus higher
    above the tray, i.e. the objective moves away from the sample, but the focus
    direction is deliberately left "Unknown": pymmcore-plus's MDA engine then does not
    restore the initial XY and Z positions after a sequence, exactly as for a core with
    no focus device, so adding this stage changes nothing for XY-only scans.
    """

    def __init__(self, microscope: SimulatedMicroscope) -> None:
        super().__init__()
        self._scope = microscope
        self._origin = 0.0

    def set_position_um(self, val: float) -> None:
        self._scope.move_z_to(val + self._origin)

    def get_position_um(self) -> float:
        return self._scope.z_um - self._origin

    def set_origin(self) -> None:
        self._origin = self._scope.z_um

    def home(self) -> None:
        self._scope.move_z_to(0.0)

    def stop(self) -> None:
        """Nothing to stop: simulated moves are instant."""


class SimulatedShutter(ShutterDevice):
    """Shutter state only.

    The camera deliberately ignores it: UniMMCore 0.18 does not open a Python shutter
    around snaps even with auto-shutter on, so coupling them would make every snap dark.
    It exists because non-sequenced MDAs need a shutter device.
    """

    def __init__(self, microscope: SimulatedMicroscope) -> None:
        super().__init__()
        self._scope = microscope

    def get_open(self) -> bool:
        return self._scope.shutter_open

    def set_open(self, open: bool) -> None:  # "open" is the base class's name
        self._scope.shutter_open = bool(open)


# The simulated microscope behind each simulated core, so callers (tests, the demo) can
# reach the world and the fault injection without private pymmcore-plus attributes.
_SCOPES: weakref.WeakKeyDictionary[CMMCorePlus, SimulatedMicroscope] = weakref.WeakKeyDictionary()


def create_simulated_core(
    world: np.ndarray,
    pixel_size_um: float,
    *,
    camera_shape: tuple[int, int] = CAMERA_SHAPE,
    exposure_ms: float = 10.0,
    noise: bool = True,
    seed: int = 0,
    fail_after_frames: int | None = None,
    fail_after_moves: int | None = None,
    bit_depth: int = 8,
    start_xy_um: tuple[float, float] | None = None,
    simulate_exposure_time: bool = True,
    height_map: np.ndarray | None = None,
    start_z_um: float | None = None,
    blur_per_um: float = DEFAULT_BLUR_PER_UM,
) -> UniMMCore:
    """A `UniMMCore` with a simulated camera, XY stage, focus drive and shutter over `world`.

    Parameters
    ----------
    world
        (H, W, 3) RGB or (H, W) grey uint8 tray image; one pixel = `pixel_size_um`.
        World pixel (row, col) is at sample (x = col * px, y = row * px); see
        `acquire.simulated` for the full convention.
    pixel_size_um
        Micrometres per pixel of world and camera; set as the core's pixel size config.
    camera_shape
        (height, width) of frames in pixels.
    exposure_ms
        Initial exposure; it is also the nominal exposure at which frames reproduce the
        world's values.
    noise, seed
        Seeded shot and read noise on or off.
    fail_after_frames
        Fault injection: snaps after the first `fail_after_frames` raise.
    fail_after_moves
        Fault injection: XY stage moves after the first `fail_after_moves` raise (placing
        the stage at `start_xy_um` here is not a move).
    bit_depth
        Significant bits of the camera: 8 (uint8 frames) or 10, 12, 14, 16 (uint16
        frames); reported through the "PixelFormat" property (see `camera_bit_depth`).
    start_xy_um
        Initial stage position; default: the centre of the world.
    simulate_exposure_time
        Each snap takes `exposure_ms` of wall time, like a real camera.
    height_map
        (H, W) micrometres above the tray floor per world pixel (e.g. from
        `acquire.simulated.height_map_from_labels`): frames are then blurred by defocus
        wherever the surface is away from the focus position. None: a flat world, sharp
        at every focus position (frames are exactly as without a focus drive).
    start_z_um
        Initial focus position (um above the floor); default: half the highest point of
        the world (0 for a flat one), so a z-stack around it spans the relief.
    blur_per_um
        Defocus blur, sigma in px per um of defocus (see `SimulatedMicroscope`).

    Returns
    -------
    UniMMCore
        Devices "Camera", "XYStage", "Z" (the focus device) and "Shutter" loaded,
        initialised and current; pixel size config "Res" active.
    """
    scope = SimulatedMicroscope(
        world=world,
        pixel_size_um=float(pixel_size_um),
        camera_shape=camera_shape,
        exposure_ms=float(exposure_ms),
        nominal_exposure_ms=float(exposure_ms),
        noise=noise,
        seed=seed,
        fail_after_frames=fail_after_frames,
        fail_after_moves=fail_after_moves,
        bit_depth=bit_depth,
        simulate_exposure_time=simulate_exposure_time,
        height_um=height_map,
        blur_per_um=float(blur_per_um),
    )
    # Placed, not moved: fault injection counts the moves a scan makes.
    start = scope.world_center_um if start_xy_um is None else start_xy_um
    scope.stage_xy_um = (float(start[0]), float(start[1]))
    if not all(math.isfinite(v) for v in scope.stage_xy_um):
        raise ValueError(f"start_xy_um must be finite, got {start_xy_um!r}")
    if start_z_um is None:
        start_z_um = 0.5 * float(scope.height_um.max()) if scope.height_um is not None else 0.0
    scope.move_z_to(start_z_um)
    core = UniMMCore()
    _track_core(core)
    core.loadPyDevice(CAMERA_LABEL, SimulatedCamera(scope))
    core.loadPyDevice(XY_STAGE_LABEL, SimulatedXYStage(scope))
    core.loadPyDevice(Z_STAGE_LABEL, SimulatedZStage(scope))
    core.loadPyDevice(SHUTTER_LABEL, SimulatedShutter(scope))
    for label in (CAMERA_LABEL, XY_STAGE_LABEL, Z_STAGE_LABEL, SHUTTER_LABEL):
        core.initializeDevice(label)
    core.setCameraDevice(CAMERA_LABEL)
    core.setXYStageDevice(XY_STAGE_LABEL)
    core.setFocusDevice(Z_STAGE_LABEL)
    core.setShutterDevice(SHUTTER_LABEL)
    # A pixel-size preset with no device settings: always valid, since nothing here
    # changes magnification. Grid plans need it to know the field of view.
    core.definePixelSizeConfig(PIXEL_CONFIG)
    core.setPixelSizeUm(PIXEL_CONFIG, float(pixel_size_um))
    core.setPixelSizeConfig(PIXEL_CONFIG)
    _SCOPES[core] = scope
    return core


def simulated_microscope(core: CMMCorePlus) -> SimulatedMicroscope | None:
    """The `SimulatedMicroscope` behind a core from `create_simulated_core`, else None."""
    return _SCOPES.get(core)


def load_config_core(path: str | Path) -> CMMCorePlus:
    """A `CMMCorePlus` loaded with a Micro-Manager configuration file (real hardware).

    Raises
    ------
    ValueError
        One line: the file is missing, or Micro-Manager could not load it (missing device
        adapters, hardware not connected, a malformed line, ...).
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such Micro-Manager configuration file")
    core = CMMCorePlus()
    _track_core(core)
    try:
        core.loadSystemConfiguration(str(p))
    except Exception as exc:  # C++ errors arrive as RuntimeError with multi-line text
        raise ValueError(f"{p}: Micro-Manager could not load it ({_one_line(exc)})") from exc
    return core


# ------------------------------------------------------------------------- helpers
def _pixel_size_or_none(core: CMMCorePlus) -> float | None:
    try:
        px = float(core.getPixelSizeUm())
    except Exception:
        return None
    return px if math.isfinite(px) and px > 0 else None


def _source(core: CMMCorePlus) -> str:
    return "simulated" if core in _SCOPES else "micro-manager"


def camera_bit_depth(core: CMMCorePlus) -> int | None:
    """Significant bits per pixel (per colour component) of the core's camera, or None.

    A C++ camera adapter reports them through ``getImageBitDepth`` (12 for a 12-bit
    camera delivering uint16). A Python camera on a UniMMCore cannot: there the value is
    8 x the bytes of its dtype, and the significant bits are in the GenICam-style
    "PixelFormat" property ("Mono12", "RGB14", ...) when the camera has one. The smaller
    of the two wins; a property value that is not such a name ("Mono12p", "BayerRG8")
    is ignored. Read it once per acquisition, not per frame: it is a device call.
    """
    try:
        camera = core.getCameraDevice()
        if not camera:
            return None
        bits = int(core.getImageBitDepth())
        if core.hasProperty(camera, "PixelFormat"):
            raw = core.getProperty(camera, "PixelFormat")
            # A Python device returns the PixelFormat enum, a C++ one its string.
            match = re.fullmatch(r"(?:Mono|RGB)(\d+)", str(getattr(raw, "value", raw)))
            if match is not None and 0 < int(match.group(1)) < bits:
                bits = int(match.group(1))
    except Exception:  # no camera loaded, or an adapter that cannot answer: unknown
        return None
    return bits if bits > 0 else None


def _stage_xy_or_none(core: CMMCorePlus) -> tuple[float, float] | None:
    if not core.getXYStageDevice():
        return None
    x, y = core.getXYPosition()
    return (float(x), float(y))


def _field_of_view_um(core: CMMCorePlus) -> tuple[float, float]:
    px = _pixel_size_or_none(core)
    if px is None:
        raise ValueError(
            "the core has no pixel size: define a pixel size configuration "
            "(Micro-Manager's Pixel Size Calibration) before planning a tray scan"
        )
    return core.getImageWidth() * px, core.getImageHeight() * px


def _check_overlap(overlap_fraction: float) -> float:
    if not (math.isfinite(overlap_fraction) and 0.0 <= overlap_fraction < 1.0):
        raise ValueError(f"overlap_fraction must be in [0, 1), got {overlap_fraction!r}")
    return float(overlap_fraction)


def snap_frame(core: CMMCorePlus, *, index: int = 0) -> Frame:
    """Snap one image now (live preview, focus checks) as a `Frame`.

    Raises
    ------
    AcquisitionError
        One line, when the camera fails.
    """
    try:
        core.snapImage()
        image = core.getImage()
    except Exception as exc:
        raise AcquisitionError(f"snap failed: {_one_line(exc)}") from exc
    return Frame(
        image=np.asarray(image),
        index=index,
        stage_xy_um=_stage_xy_or_none(core),
        pixel_size_um=_pixel_size_or_none(core),
        timestamp=time.time(),
        source=_source(core),
        metadata={
            "exposure_ms": float(core.getExposure()),
            "camera": core.getCameraDevice(),
            "bit_depth": camera_bit_depth(core),
        },
    )


# -------------------------------------------------------------------------- planning
def tray_scan_sequence(
    core: CMMCorePlus,
    *,
    rows: int,
    cols: int,
    overlap_fraction: float = 0.15,
    center_xy_um: tuple[float, float] | None = None,
    z_planes: int = 1,
    z_step_um: float = DEFAULT_Z_STEP_UM,
    center_z_um: float | None = None,
) -> useq.MDASequence:
    """A rows x cols grid of fields around `center_xy_um` (default: where the stage is).

    The field of view comes from the core's pixel size and image size. Fields overlap by
    `overlap_fraction` of a field in x and y, so specimens cut by one field's edge are
    whole in the next (the de-duplication counts them once). useq visits the grid row by
    row in a snake, starting at the largest y.

    With ``z_planes > 1`` every field is taken as a z-stack for focus stacking (see
    `napari_foram.focus`): a ``useq.ZRangeAround`` plan of `z_planes` planes `z_step_um`
    apart, centred on `center_z_um` (default: the current focus position), so the stack
    spans ``center_z_um +- (z_planes - 1) * z_step_um / 2``. A range around the focus the
    user has set is Micro-Manager's usual z-stack, and unlike an absolute top/bottom it
    follows a refocused tray. The axis order is "tpgcz": z innermost, so the planes of one
    field are taken one after the other without moving XY (and arrive consecutively, with
    ``mda_index["z"]`` = 0 for the lowest plane). ``z_planes == 1`` gives the same
    sequence as before z-stacks existed (no z plan, no z moves).

    Raises
    ------
    ValueError
        Bad counts, overlap or z step, the core has no pixel size, or a z-stack was asked
        of a core without a focus device.
    """
    if int(rows) != rows or int(cols) != cols or rows < 1 or cols < 1:
        raise ValueError(f"rows and cols must be positive integers, got {rows} x {cols}")
    if int(z_planes) != z_planes or z_planes < 1:
        raise ValueError(f"z_planes must be a positive integer, got {z_planes!r}")
    if not (math.isfinite(z_step_um) and z_step_um > 0):
        raise ValueError(f"z_step_um must be a positive number of um, got {z_step_um!r}")
    overlap = _check_overlap(overlap_fraction)
    fov_w, fov_h = _field_of_view_um(core)
    if center_xy_um is None:
        center_xy_um = _stage_xy_or_none(core)
        if center_xy_um is None:
            raise ValueError("no XY stage: give center_xy_um or load a stage")
    cx, cy = (float(v) for v in center_xy_um)
    grid = useq.GridRowsColumns(
        rows=int(rows),
        columns=int(cols),
        overlap=(overlap * 100.0, overlap * 100.0),  # useq takes percent
        fov_width=fov_w,
        fov_height=fov_h,
        # relative_to defaults to "center": the grid is centred on the stage position.
    )
    if z_planes == 1:
        return useq.MDASequence(
            stage_positions=(useq.AbsolutePosition(x=cx, y=cy),), grid_plan=grid
        )
    if center_z_um is None:
        if not core.getFocusDevice():
            raise ValueError("no focus device: a z-stack needs one (or give center_z_um)")
        center_z_um = float(core.getZPosition())
    if not math.isfinite(center_z_um):
        raise ValueError(f"center_z_um must be finite, got {center_z_um!r}")
    n = int(z_planes)
    # ZRangeAround is relative: useq adds the position's z to each offset.
    z_plan = useq.ZRangeAround(range=(n - 1) * float(z_step_um), step=float(z_step_um))
    planes = len(z_plan.positions())
    if planes != n:  # useq steps with a float arange: make an edge case loud, not silent
        raise ValueError(f"z plan gives {planes} planes, not {n}")
    return useq.MDASequence(
        stage_positions=(useq.AbsolutePosition(x=cx, y=cy, z=float(center_z_um)),),
        grid_plan=grid,
        z_plan=z_plan,
        axis_order=tuple("tpgcz"),  # z innermost: the planes of a field in a row
    )


def tray_extent_scan_sequence(
    core: CMMCorePlus,
    *,
    top: float,
    left: float,
    bottom: float,
    right: float,
    overlap_fraction: float = 0.15,
) -> useq.MDASequence:
    """Fields that cover the rectangle [left, right] x [top, bottom] (sample um).

    The rectangle's edges are where field edges go: the first field's corner sits on
    (left, max(top, bottom)). useq starts at the larger y whichever of `top`/`bottom` it
    is, so either orientation works.

    Raises
    ------
    ValueError
        Empty rectangle, bad overlap, or the core has no pixel size.
    """
    values = (top, left, bottom, right)
    if not all(math.isfinite(float(v)) for v in values):
        raise ValueError(f"tray edges must be finite, got {values!r}")
    if top == bottom or left == right:
        raise ValueError(
            f"tray rectangle is empty: top={top}, bottom={bottom}, left={left}, right={right}"
        )
    overlap = _check_overlap(overlap_fraction)
    fov_w, fov_h = _field_of_view_um(core)
    grid = useq.GridFromEdges(
        top=float(top),
        left=float(left),
        bottom=float(bottom),
        right=float(right),
        overlap=(overlap * 100.0, overlap * 100.0),
        fov_width=fov_w,
        fov_height=fov_h,
    )
    return useq.MDASequence(grid_plan=grid)


# ------------------------------------------------------------------------ scanning
@dataclass(frozen=True)
class ScanResult:
    """What a tray scan did.

    Attributes
    ----------
    frames_expected
        Events in the sequence.
    frames_delivered
        Frames handed to `on_frame`.
    frames_failed
        Events whose snap failed (the scan stops at the first unless told otherwise).
    error
        One-line reason the scan stopped early, or None.
    cancelled
        True when `cancel_scan` (or a failing frame handler) stopped it.
    elapsed_s
        Wall time of the whole scan in seconds.
    """

    frames_expected: int
    frames_delivered: int
    frames_failed: int
    error: str | None
    cancelled: bool
    elapsed_s: float

    @property
    def ok(self) -> bool:
        """True when every expected frame was delivered."""
        return self.error is None and self.frames_delivered == self.frames_expected


class _WarningCatcher(logging.Handler):
    """Keeps the latest warnings pymmcore-plus logs while a scan runs.

    MDAEngine.exec_single_event catches a failed snap and only logs "Failed to snap image.
    <reason>"; this is how the reason reaches the user. The pymmcore-plus logger itself
    passes every level (its stderr handler filters), so PYMM_LOG_LEVEL does not hide them.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: deque[str] = deque(maxlen=8)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append(_one_line(record.getMessage()))
        except Exception:  # a broken log record must not break the scan
            self.messages.append(_one_line(str(record.msg)))


@contextmanager
def _caught_warnings() -> Iterator[_WarningCatcher]:
    catcher = _WarningCatcher()
    log = logging.getLogger(_PYMM_LOGGER)
    log.addHandler(catcher)
    try:
        yield catcher
    finally:
        log.removeHandler(catcher)


class _ScanEngine(MDAEngine):
    """MDAEngine that reports failed snaps and stops after `max_failed_frames` of them,
    and stops at once when moving to a field fails.

    Per-event snaps by default (no hardware sequencing): the stage moves between all tray
    fields anyway, and one snap per event lets a camera failure stop the scan at once.
    With `hardware_sequencing`, runs of events the devices can sequence (time points or
    z planes at one field) stream from the camera; a failure then ends the sequence.
    """

    def __init__(
        self, core: CMMCorePlus, *, max_failed_frames: int, hardware_sequencing: bool = False
    ) -> None:
        super().__init__(core, use_hardware_sequencing=hardware_sequencing)
        self.max_failed_frames = max_failed_frames
        self.failures: list[str] = []
        self.setup_failure: str | None = None

    def setup_event(self, event: useq.MDAEvent) -> None:
        """Set up the field like MDAEngine, but raise when that fails.

        MDAEngine 0.18 only logs "Failed to set XY position. <reason>" (channel,
        exposure, properties alike) and snaps anyway, which would image the previous
        field again under the new field's index; a z move that fails raises. Either way
        the field is not the one planned, so the scan stops here with the reason.
        """
        with _caught_warnings() as caught:
            try:
                super().setup_event(event)
            except Exception as exc:
                self.setup_failure = _one_line(exc)
                raise AcquisitionError(self.setup_failure) from exc
        failed = [m for m in caught.messages if m.startswith("Failed to set")]
        if failed:
            self.setup_failure = failed[0]
            raise AcquisitionError(self.setup_failure)

    def exec_single_event(self, event: useq.MDAEvent) -> Iterator[Any]:
        payloads = super().exec_single_event(event)
        with _caught_warnings() as caught:
            first = next(payloads, None)
        if first is None:
            why = caught.messages[-1] if caught.messages else "camera returned no image"
            self.failures.append(why)
            if len(self.failures) > self.max_failed_frames:
                raise AcquisitionError(why)
            return
        yield first
        yield from payloads


class _FrameHandler:
    """frameReady handler for one run: builds Frames, calls on_frame, keeps counts."""

    def __init__(
        self,
        core: CMMCorePlus,
        on_frame: Callable[[Frame], None],
        progress: Callable[[int, int], None] | None,
        total: int,
        engine: _ScanEngine,
    ) -> None:
        self.core = core
        self.on_frame = on_frame
        self.progress = progress
        self.total = total
        self.engine = engine
        self.delivered = 0
        self.ordinal: dict[int, int] = {}
        self.handler_error: str | None = None
        self.pixel_size_um = _pixel_size_or_none(core)
        self.bit_depth = camera_bit_depth(core)  # once per run: a device call
        self.source = _source(core)

    def frameReady(self, img: np.ndarray, event: useq.MDAEvent, meta: Mapping) -> None:
        if self.handler_error is not None:
            return
        try:
            position = meta.get("position") or {}
            stage: tuple[float, float] | None
            if "x" in position and "y" in position:
                stage = (float(position["x"]), float(position["y"]))
            elif event.x_pos is not None and event.y_pos is not None:
                stage = (float(event.x_pos), float(event.y_pos))
            else:
                # Hardware-sequenced frames carry no position; the stage cannot move
                # during a sequence, so where it stands now is where they were taken.
                stage = _stage_xy_or_none(self.core)
            px = meta.get("pixel_size_um") or self.pixel_size_um
            # Ring-buffer slots (sequenced acquisitions) are reused: own the pixels.
            image = np.array(img, copy=True) if img.base is not None else img
            index = self.delivered + len(self.engine.failures)
            frame = Frame(
                image=image,  # trust img.shape, not the metadata's pixel type (GRAY8 for RGB)
                index=index,
                stage_xy_um=stage,
                pixel_size_um=float(px) if px else None,
                timestamp=time.time(),
                source=self.source,
                metadata={
                    "exposure_ms": float(meta.get("exposure_ms", self.core.getExposure())),
                    "mda_index": dict(event.index),
                    "event_xy_um": (event.x_pos, event.y_pos),
                    "camera": meta.get("camera_device", ""),
                    "runner_time_ms": meta.get("runner_time_ms"),
                    "bit_depth": self.bit_depth,
                },
            )
            self.on_frame(frame)
            self.delivered += 1
            if self.progress is not None:
                self.progress(self.delivered + len(self.engine.failures), self.total)
        except Exception as exc:
            # The MDA runner would only log this; stop the scan and say why instead.
            self.handler_error = f"frame handler failed: {type(exc).__name__}: {_one_line(exc)}"
            self.core.mda.cancel()


def run_scan(
    core: CMMCorePlus,
    sequence: useq.MDASequence,
    on_frame: Callable[[Frame], None],
    *,
    progress: Callable[[int, int], None] | None = None,
    max_failed_frames: int = 0,
    hardware_sequencing: bool = False,
) -> ScanResult:
    """Run `sequence` (blocking, in this thread) and hand every image to `on_frame`.

    Parameters
    ----------
    core
        A core from `create_simulated_core` or `load_config_core` (or any CMMCorePlus).
    sequence
        Usually from `tray_scan_sequence` or `tray_extent_scan_sequence`.
    on_frame
        Called in this thread with each `Frame` (stage position read back after the snap,
        pixel size, exposure and MDA index in metadata). Keep it quick: enqueue. If it
        raises, the scan is cancelled and the error reported.
    progress
        Called as ``progress(done, total)`` after each delivered frame; ``done`` counts
        failed fields too.
    max_failed_frames
        Failed snaps to tolerate (each is skipped and counted) before the scan stops.
    hardware_sequencing
        Let pymmcore-plus stream sequenceable runs of events (e.g. time points at one
        field) from the camera instead of snapping each; see `_ScanEngine`.

    Returns
    -------
    ScanResult
        Frames delivered before any failure stay delivered; ``error`` says in one line why
        the scan stopped early: a camera that failed more than `max_failed_frames` times,
        a stage (or other field setup) that failed -- the scan stops at that field, never
        images it from the wrong place -- or a failing `on_frame`.

    Raises
    ------
    ValueError
        Bad arguments, or an acquisition is already running on this core.
    """
    if not isinstance(sequence, useq.MDASequence):
        raise ValueError(f"sequence must be a useq.MDASequence, got {type(sequence).__name__}")
    if max_failed_frames < 0:
        raise ValueError(f"max_failed_frames must be >= 0, got {max_failed_frames}")
    if core.mda.is_running():
        raise ValueError("an acquisition is already running on this core")
    total = sum(1 for _ in sequence)
    engine = _ScanEngine(
        core, max_failed_frames=max_failed_frames, hardware_sequencing=hardware_sequencing
    )
    handler = _FrameHandler(core, on_frame, progress, total, engine)
    error: str | None = None
    t0 = time.perf_counter()
    # Our engine only for this run: a core shared with other tools keeps its own engine.
    previous_engine = core.mda.set_engine(engine)
    try:
        # Synchronous listener on purpose: `mda.run(output=handler)` would call the handler
        # from a relay thread through an unbounded deque, so a "scan" FrameQueue could no
        # longer hold the stage back, and cancel_scan would lag several fields behind.
        with mda_listeners_connected(handler, mda_events=core.mda.events, asynchronous=False):
            core.mda.run(sequence)
    except Exception as exc:
        error = _one_line(exc)
    finally:
        if previous_engine is not None:
            core.mda.set_engine(previous_engine)
    elapsed = time.perf_counter() - t0
    if handler.handler_error is not None:
        error = handler.handler_error
    delivered, failed = handler.delivered, len(engine.failures)
    if handler.handler_error is None and engine.setup_failure is not None:
        # It stopped the scan, whatever camera failures were tolerated before it.
        error = (
            f"setting up the next field failed, {delivered} of {total} frames delivered: "
            f"{engine.setup_failure}"
        )
    elif handler.handler_error is None and failed:
        # The camera error itself when it stopped the scan, else the first of those skipped.
        why = error if error is not None else engine.failures[0]
        error = f"camera failed {failed} time(s), {delivered} of {total} frames delivered: {why}"
    # A user's cancel_scan is not an error: error stays None, `ok` is False.
    cancelled = handler.handler_error is not None or (error is None and delivered + failed < total)
    return ScanResult(
        frames_expected=total,
        frames_delivered=delivered,
        frames_failed=failed,
        error=error,
        cancelled=cancelled,
        elapsed_s=elapsed,
    )


def cancel_scan(core: CMMCorePlus) -> None:
    """Ask a running `run_scan` on `core` to stop after the current field (thread-safe)."""
    if core.mda.is_paused():
        core.mda.set_paused(False)  # a paused runner only notices the cancel once resumed
    core.mda.cancel()


def pause_scan(core: CMMCorePlus, paused: bool = True) -> None:
    """Pause (True) or resume (False) a running `run_scan` on `core` (thread-safe).

    The runner finishes the field it is on and waits before the next; the stage stays.
    """
    core.mda.set_paused(bool(paused))


def scan_is_paused(core: CMMCorePlus) -> bool:
    """Whether the acquisition on `core` is paused."""
    return bool(core.mda.is_paused())


# ---------------------------------------------------------------------------- live
class LiveStream:
    """Continuous acquisition ("live" mode) delivering Frames from a background thread.

    The camera streams into the core's circular buffer; a thread pops each image and
    calls ``on_frame`` with a `Frame` whose stage position is read when the image is
    popped (the stage may have moved during the exposure: live counts are provisional).
    Pair it with a ``FrameQueue(policy="live")``, which keeps the newest frames.

    Use as a context manager or call `start` / `stop`.
    """

    def __init__(
        self,
        core: CMMCorePlus,
        on_frame: Callable[[Frame], None],
        *,
        poll_interval_s: float = 0.002,
    ) -> None:
        self.core = core
        self.on_frame = on_frame
        self.poll_interval_s = poll_interval_s
        self.frames_delivered = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bit_depth: int | None = None

    def start(self) -> None:
        """Start the camera streaming and the delivering thread."""
        if self._thread is not None:
            raise ValueError("live stream already started")
        if self.core.mda.is_running():
            raise ValueError("an acquisition is running on this core; stop it first")
        self._stop.clear()
        # Before streaming starts, on the caller's thread: a property read is a device
        # call, which the camera thread should not have to share.
        self._bit_depth = camera_bit_depth(self.core)
        self.core.startContinuousSequenceAcquisition(0)
        self._thread = threading.Thread(target=self._loop, name="napari-foram-live", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        core = self.core
        px, source, bit_depth = _pixel_size_or_none(core), _source(core), self._bit_depth
        try:
            while not self._stop.is_set():
                if core.getRemainingImageCount() > 0:
                    # Circular-buffer slots are reused by the camera thread: copy.
                    image = np.array(core.popNextImage(), copy=True)
                    frame = Frame(
                        image=image,
                        index=self.frames_delivered,
                        stage_xy_um=_stage_xy_or_none(core),
                        pixel_size_um=px,
                        timestamp=time.time(),
                        source=source,
                        metadata={
                            "exposure_ms": float(core.getExposure()),
                            "live": True,
                            "bit_depth": bit_depth,
                        },
                    )
                    self.on_frame(frame)
                    self.frames_delivered += 1
                elif not core.isSequenceRunning():
                    self.error = "camera stopped streaming"
                    return
                else:
                    self._stop.wait(self.poll_interval_s)
        except Exception as exc:  # reported through .error and stop(); never silent
            self.error = f"live stream failed: {type(exc).__name__}: {_one_line(exc)}"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop streaming; raise AcquisitionError if the stream failed meanwhile."""
        self._stop.set()
        try:
            if self.core.isSequenceRunning():
                self.core.stopSequenceAcquisition()
        finally:
            if self._thread is not None:
                self._thread.join(timeout)
                self._thread = None
        if self.error is not None and self.error != "camera stopped streaming":
            raise AcquisitionError(self.error)

    def __enter__(self) -> LiveStream:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def camera_frame_shape(core: CMMCorePlus) -> tuple[int, ...]:
    """Shape of the frames the core's camera delivers: (rows, cols) or (rows, cols, 3)."""
    rows, cols = int(core.getImageHeight()), int(core.getImageWidth())
    # RGB cameras report 4 bytes per pixel (BGRA) and one component count of 4.
    return (rows, cols, 3) if core.getNumberOfComponents() > 1 else (rows, cols)


def sequence_z_planes(sequence: useq.MDASequence) -> int:
    """Focal planes per field of `sequence` (1 without a z plan)."""
    z_plan = sequence.z_plan
    return max(1, len(list(z_plan))) if z_plan is not None else 1


def sequence_xy_positions(sequence: useq.MDASequence) -> list[tuple[float, float]]:
    """The distinct stage positions (x_um, y_um) a sequence visits, in order."""
    seen: dict[tuple[float, float], None] = {}
    for event in sequence:
        if event.x_pos is not None and event.y_pos is not None:
            seen.setdefault((float(event.x_pos), float(event.y_pos)), None)
    return list(seen)


def camera_pixel_size_um(core: CMMCorePlus) -> float | None:
    """Micrometres per camera pixel from the active pixel-size configuration, or None."""
    return _pixel_size_or_none(core)
