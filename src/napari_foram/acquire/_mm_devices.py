"""Simulated microscope devices for pymmcore-plus's UniMMCore (Python device API).

Part of the pymmcore-plus adapter (see `acquire._mm`): the four device classes subclass
the experimental ``pymmcore_plus.experimental.unicore`` base classes, which move between
releases, so they live here with `create_simulated_core` and nowhere else. They only
forward to the shared, pure-numpy `SimulatedMicroscope` (`acquire.simulated`).

pymmcore-plus APIs used: ``UniMMCore`` (``loadPyDevice``, ``initializeDevice``,
``setCameraDevice``, ``setXYStageDevice``, ``setFocusDevice``, ``setShutterDevice``,
``definePixelSizeConfig``, ``setPixelSizeUm``, ``setPixelSizeConfig``,
``setPixelSizeAffine``), ``SimpleCameraDevice``, ``XYStageDevice``, ``StageDevice``,
``ShutterDevice`` and ``PixelFormat``. A Python camera's dtype sets ``getBytesPerPixel``
and ``getImageBitDepth`` (always 8 x bytes); its significant bits go in the standard
"PixelFormat" property (``get_pixel_format``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pymmcore_plus import PixelFormat
from pymmcore_plus.experimental.unicore import (
    ShutterDevice,
    SimpleCameraDevice,
    StageDevice,
    UniMMCore,
    XYStageDevice,
)

from napari_foram.acquire._mm import _SCOPES, _track_core
from napari_foram.acquire.simulated import (
    DEFAULT_BLUR_PER_UM,
    SimulatedMicroscope,
    mount_affine,
)
from napari_foram.defaults import CAMERA_SHAPE

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np

__all__ = [
    "CAMERA_LABEL",
    "PIXEL_CONFIG",
    "SHUTTER_LABEL",
    "XY_STAGE_LABEL",
    "Z_STAGE_LABEL",
    "SimulatedCamera",
    "SimulatedShutter",
    "SimulatedXYStage",
    "SimulatedZStage",
    "create_simulated_core",
]

#: Device labels of the simulated core.
CAMERA_LABEL = "Camera"
XY_STAGE_LABEL = "XYStage"
Z_STAGE_LABEL = "Z"
SHUTTER_LABEL = "Shutter"
PIXEL_CONFIG = "Res"


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
    mount_rotation_deg: int = 0,
    mount_mirror: bool = False,
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
    mount_rotation_deg, mount_mirror
        A camera mounted turned (0, 90, 180, 270 degrees counter-clockwise) and/or
        mirrored on the stand (see `acquire.simulated.mount_image`). The pixel size
        configuration then carries the matching affine transform, as a lab's calibrated
        configuration would, so frames map to sample coordinates through it.

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
        mount_rotation_deg=mount_rotation_deg,
        mount_mirror=mount_mirror,
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
    if scope.mounted:
        a, b, c, d = mount_affine(float(pixel_size_um), mount_rotation_deg, mount_mirror)
        core.setPixelSizeAffine(PIXEL_CONFIG, [a, b, 0.0, c, d, 0.0])
    core.setPixelSizeConfig(PIXEL_CONFIG)
    _SCOPES[core] = scope
    return core
