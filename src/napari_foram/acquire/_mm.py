"""The pymmcore-plus adapter: cores, configurations, capabilities, snaps and scan plans.

Written against pymmcore-plus 0.18.1 (pymmcore 12.5.1.75.0) and useq-schema 0.9.2. The
adapter is this module and its two siblings, the only modules of napari-foram that import
pymmcore-plus, pymmcore or useq (an import-linter contract says so), so an upstream change
touches these three files only:

* ``_mm`` (here): loading a Micro-Manager configuration into the C++ core (adapter search
  paths, one-line errors), sharing a core opened elsewhere, the configuration check
  (`microscope_capabilities`), snaps, scan planning, the pixel-size affine transform.
* ``_mm_devices``: the simulated microscope's Python devices (`create_simulated_core`).
* ``_mm_scan``: tray scans (MDA; raw frames saved through pymmcore-plus's data sink, a
  colour camera's through ome-writers, which that sink uses) and live streams.

pymmcore-plus / useq APIs used here
-----------------------------------
* ``pymmcore_plus.CMMCorePlus`` (``adapter_paths=``), ``CMMCorePlus.instance``,
  ``loadSystemConfiguration``, ``getDeviceAdapterSearchPaths``, ``unloadAllDevices``,
  ``getLoadedDevices``, ``systemConfigurationFile``, ``snapImage``, ``getImage``,
  ``getCameraDevice``, ``getXYStageDevice``, ``getFocusDevice``, ``getXYPosition``,
  ``getZPosition``, ``getPixelSizeUm``, ``getPixelSizeAffine``,
  ``getCurrentPixelSizeConfig``, ``getExposure``, ``getImageWidth``/``getImageHeight``,
  ``getNumberOfComponents``, ``getImageBitDepth``, ``hasProperty``, ``getProperty``.
* ``pymmcore.CMMCore.registerCallback`` (at interpreter exit, see `_release_at_exit`).
* ``useq``: ``MDASequence``, ``GridRowsColumns``, ``GridFromEdges``, ``AbsolutePosition``,
  ``ZRangeAround``.

Finding the device adapters
---------------------------
`load_config_core` looks where it is told (``adapter_path``), else where pymmcore-plus's
own discovery points: ``MICROMANAGER_PATH``, then the folder chosen with ``mmcore use``,
then ``mmcore install``'s folder and the usual install locations.

Threads
-------
`run_scan` runs the MDA in the *calling* thread (a GUI must call it from a worker) and
calls ``on_frame`` there, once per image. ``on_frame`` should only enqueue the frame
(see `acquire.stream.FrameQueue`); it must never touch Qt.
"""

from __future__ import annotations

import atexit
import math
import os
import re
import threading
import time
import weakref
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

# The core logs a harmless "run `mmcore install`" error when no Micro-Manager binaries are
# installed (our simulated microscope needs none); keep stderr quiet unless the user asked.
os.environ.setdefault("PYMM_LOG_LEVEL", "CRITICAL")

import pymmcore
import useq
from pymmcore_plus import CMMCorePlus

from napari_foram.frames import Frame, pixel_affine_from_micromanager
from napari_foram.reasons import one_line

if TYPE_CHECKING:
    from collections.abc import Sequence

    from napari_foram.acquire.simulated import SimulatedMicroscope

__all__ = [
    "AcquisitionError",
    "MicroscopeCapabilities",
    "camera_bit_depth",
    "camera_frame_shape",
    "camera_pixel_affine",
    "camera_pixel_size_um",
    "load_config_core",
    "microscope_capabilities",
    "release_core",
    "shared_core",
    "simulated_microscope",
    "snap_frame",
    "tray_extent_scan_sequence",
    "tray_scan_sequence",
]

#: Default z-stack spacing (um): the simulated microscope's depth of field at its default
#: blur, so every height lies within half a step, sigma <= 0.75 px, of some plane.
DEFAULT_Z_STEP_UM = 30.0


class AcquisitionError(RuntimeError):
    """The camera or the MDA failed; the message is one line."""


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


# The simulated microscope behind each simulated core (filled by `_mm_devices`), so
# callers (tests, the demo) can reach the world and the fault injection without private
# pymmcore-plus attributes.
_SCOPES: weakref.WeakKeyDictionary[CMMCorePlus, SimulatedMicroscope] = weakref.WeakKeyDictionary()


def simulated_microscope(core: CMMCorePlus) -> SimulatedMicroscope | None:
    """The `SimulatedMicroscope` behind a core from `create_simulated_core`, else None."""
    return _SCOPES.get(core)


#: Where to tell a user to point the plugin when an adapter is missing.
_ADAPTER_HINT = "give --adapter-path DIR, set MICROMANAGER_PATH, or run `mmcore use DIR`"

# '... Failed to load device adapter "DemoCamera" from "libmmgr_dal_DemoCamera.so.0"
# [ Failed to load module "..." [ ...: cannot open shared object file: ... ] ]' (MMCore
# 11/12): the adapter's name, then the loader's reason nested in brackets.
_ADAPTER_ERROR = re.compile(r'Failed to load device adapter "(?P<name>[^"]+)"')
_CONFIG_LINE = re.compile(r"^Line (?P<line>\d+):")


def _adapter_search_paths(adapter_path: str | Path | Sequence[str | Path] | None) -> list[str]:
    if adapter_path is None:
        return []
    given = [adapter_path] if isinstance(adapter_path, (str, Path)) else list(adapter_path)
    paths = []
    for entry in given:
        folder = Path(entry).expanduser()
        if not folder.is_dir():
            raise ValueError(f"adapter path {folder}: no such folder")
        paths.append(str(folder.resolve()))
    return paths


def _config_error(p: Path, exc: BaseException, searched: Sequence[str]) -> str:
    """One line out of MMCore's multi-line load error: which adapter, the core's reason,
    where it looked (what a user needs to fix the path), and the configuration line.
    """
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    line = _CONFIG_LINE.match(text)
    at = f" (line {line.group('line')})" if line else ""
    match = _ADAPTER_ERROR.search(text)
    if match is None:
        return f"{p}: Micro-Manager could not load it{at}: {_CONFIG_LINE.sub('', text).strip()}"
    # The innermost bracket holds the operating system's (or the core's) own words.
    reason = text[match.end() :]
    if "[" in reason:
        reason = reason[reason.rindex("[") + 1 :].split("]", 1)[0]
    reason = reason.strip(" .[]") or "no reason given"
    looked = ", ".join(searched) if searched else "nowhere (no Micro-Manager folder found)"
    return (
        f"{p}: Micro-Manager could not load device adapter {match.group('name')}{at}: {reason}; "
        f"looked in {looked}; {_ADAPTER_HINT}"
    )


def load_config_core(
    path: str | Path, *, adapter_path: str | Path | Sequence[str | Path] | None = None
) -> CMMCorePlus:
    """A `CMMCorePlus` loaded with a Micro-Manager configuration file (real hardware).

    Parameters
    ----------
    path
        The configuration file (``MMConfig_*.cfg``), as Micro-Manager's Hardware
        Configuration Wizard writes it.
    adapter_path
        Folder(s) holding the device adapters (``mmgr_dal_*``): a Micro-Manager
        installation. None: pymmcore-plus's discovery (``MICROMANAGER_PATH``, then
        ``mmcore use``, then ``mmcore install``'s folder).

    Raises
    ------
    ValueError
        One line: the file or the adapter folder is missing, or Micro-Manager could not
        load the configuration (a device adapter that cannot load is named with the
        core's reason and the folders searched; a malformed line, hardware not
        connected, ...).
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such Micro-Manager configuration file")
    paths = _adapter_search_paths(adapter_path)
    core = CMMCorePlus(adapter_paths=paths) if paths else CMMCorePlus()
    _track_core(core)
    try:
        core.loadSystemConfiguration(str(p))
    except Exception as exc:  # C++ errors arrive as OSError/RuntimeError, multi-line
        searched = [str(s) for s in core.getDeviceAdapterSearchPaths()]
        # A half-loaded configuration holds the devices it did load: free them now.
        release_core(core)
        raise ValueError(_config_error(p, exc, searched)) from exc
    return core


def release_core(core: CMMCorePlus) -> None:
    """Unload every device of a core this process opened (frees the hardware for other
    programs). Never call it on a shared core (`shared_core`): it is someone else's.
    """
    with suppress(Exception):  # a device that fails to shut down must not stop the rest
        if core.mda.is_running():
            core.mda.cancel()
    with suppress(Exception):
        if core.isSequenceRunning():
            core.stopSequenceAcquisition()
    with suppress(Exception):
        core.unloadAllDevices()


def shared_core(core: CMMCorePlus | None = None) -> CMMCorePlus:
    """The core another tool opened, to count with the microscope it already controls:
    `core` when given (napari-micromanager 0.3 opened from napari's menu keeps a core of
    its own, ``MainWindow.core``), else the process-wide ``CMMCorePlus.instance()``
    (pymmcore-gui, or napari-micromanager given ``mmcore=CMMCorePlus.instance()``).

    Raises
    ------
    ValueError
        No microscope is loaded there (``instance()`` creates an empty core when none
        exists: that is no microscope to share).
    """
    core = CMMCorePlus.instance() if core is None else core
    loaded = [d for d in core.getLoadedDevices() if d != "Core"]
    if not loaded or not core.getCameraDevice():
        raise ValueError(
            "no microscope is open in this process: load a configuration in "
            "napari-micromanager (or pymmcore-gui) first, or choose a configuration file"
        )
    return core


@dataclass(frozen=True)
class MicroscopeCapabilities:
    """What a loaded configuration can do, checked before counting with it.

    Attributes
    ----------
    camera
        The current camera's label, or None.
    frame_shape
        (rows, cols) or (rows, cols, 3) of its images (empty without a camera).
    bit_depth
        Significant bits per pixel (per colour component), or None.
    rgb
        Whether the camera delivers colour.
    xy_stage, z_stage
        The current XY stage and focus device, or None.
    pixel_size_um
        Micrometres per pixel of the active pixel-size configuration, or None.
    pixel_size_config
        Its name ("" when none is active).
    pixel_affine
        Camera-to-stage orientation (see `camera_pixel_affine`), None when upright.
    """

    camera: str | None
    frame_shape: tuple[int, ...]
    bit_depth: int | None
    rgb: bool
    xy_stage: str | None
    z_stage: str | None
    pixel_size_um: float | None
    pixel_size_config: str = ""
    pixel_affine: tuple[float, float, float, float] | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def can_snap(self) -> bool:
        """Snaps and live preview need a camera."""
        return self.camera is not None

    @property
    def can_scan(self) -> bool:
        """A tray scan needs a camera, an XY stage and a pixel size (the field of view)."""
        return self.can_snap and self.xy_stage is not None and self.pixel_size_um is not None

    @property
    def can_z_stack(self) -> bool:
        """Z-stacks need a tray scan and a focus device."""
        return self.can_scan and self.z_stage is not None

    @property
    def sample_coordinates(self) -> bool:
        """Specimens are placed in sample coordinates (counted once across frames)."""
        return self.xy_stage is not None and self.pixel_size_um is not None

    def summary(self) -> str:
        """One line: camera, stages, pixel size."""
        if self.camera is None:
            camera = "no camera"
        else:
            rows, cols = self.frame_shape[:2]
            depth = f"{self.bit_depth}-bit" if self.bit_depth else "unknown depth"
            colour = "RGB" if self.rgb else "mono"
            camera = f"camera {self.camera} {cols} x {rows} {depth} {colour}"
        xy = f"XY stage {self.xy_stage}" if self.xy_stage else "no XY stage"
        z = f"Z stage {self.z_stage}" if self.z_stage else "no Z stage"
        if self.pixel_size_um is None:
            px = "no pixel size"
        else:
            px = f"{self.pixel_size_um:g} um/px"
            if self.pixel_size_config:
                px += f" ({self.pixel_size_config})"
            if self.pixel_affine is not None:
                px += ", camera rotated/mirrored to the stage"
        return f"{camera}; {xy}; {z}; {px}"

    def as_dict(self) -> dict[str, Any]:
        """For the sample's provenance record."""
        return {
            "camera_device": self.camera or "",
            "frame_shape": list(self.frame_shape),
            "bit_depth": self.bit_depth,
            "rgb": self.rgb,
            "xy_stage": self.xy_stage or "",
            "z_stage": self.z_stage or "",
            "pixel_size_um": self.pixel_size_um,
            "pixel_size_config": self.pixel_size_config,
            "pixel_affine": list(self.pixel_affine) if self.pixel_affine else None,
        }


def microscope_capabilities(core: CMMCorePlus) -> MicroscopeCapabilities:
    """Check a loaded configuration: camera (bit depth, colour), XY stage, Z stage and
    pixel size, with one sentence for each missing part saying what is turned off.
    """
    camera = core.getCameraDevice() or None
    shape = camera_frame_shape(core) if camera else ()
    xy, z = core.getXYStageDevice() or None, core.getFocusDevice() or None
    px = _pixel_size_or_none(core)
    notes = []
    if camera is None:
        notes.append("No camera: nothing can be imaged; load a configuration with one.")
    if xy is None:
        notes.append("No XY stage: snap and live only (a tray scan moves the stage).")
    if px is None:
        notes.append(
            "No pixel size: specimens are counted per frame and tray scans are off "
            "(define a pixel size configuration in Micro-Manager)."
        )
    if z is None:
        notes.append("No Z stage: one focal plane per field (z-stacks are off).")
    config = ""
    with suppress(Exception):
        config = str(core.getCurrentPixelSizeConfig())
    return MicroscopeCapabilities(
        camera=camera,
        frame_shape=tuple(shape),
        bit_depth=camera_bit_depth(core) if camera else None,
        rgb=len(shape) == 3,
        xy_stage=xy,
        z_stage=z,
        pixel_size_um=px,
        pixel_size_config=config if px is not None else "",
        pixel_affine=camera_pixel_affine(core),
        notes=tuple(notes),
    )


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
    """Extent of a field along stage x and y: a camera mounted at 90 degrees swaps them."""
    px = _pixel_size_or_none(core)
    if px is None:
        raise ValueError(
            "the core has no pixel size: define a pixel size configuration "
            "(Micro-Manager's Pixel Size Calibration) before planning a tray scan"
        )
    w, h = core.getImageWidth(), core.getImageHeight()
    affine = camera_pixel_affine(core)
    if affine is None:
        return w * px, h * px
    a, b, c, d = affine
    return abs(a) * w + abs(b) * h, abs(c) * w + abs(d) * h


def camera_pixel_affine(core: CMMCorePlus) -> tuple[float, float, float, float] | None:
    """The camera's orientation on the stage from the configuration's pixel-size affine
    transform: (a, b, c, d) um per pixel (see `Frame.pixel_affine` and
    `frames.pixel_affine_from_micromanager`), None when upright or without pixel size.
    """
    px = _pixel_size_or_none(core)
    if px is None:
        return None
    try:
        affine = core.getPixelSizeAffine(True)
    except Exception:  # no pixel size configuration active: upright
        return None
    return pixel_affine_from_micromanager(affine, px)


def _check_overlap(overlap_fraction: float) -> float:
    if not (math.isfinite(overlap_fraction) and 0.0 <= overlap_fraction < 1.0):
        raise ValueError(f"overlap_fraction must be in [0, 1), got {overlap_fraction!r}")
    return float(overlap_fraction)


#: "Read it from the core" for `core_frame`'s optional arguments.
_FROM_CORE: Any = object()


def core_frame(
    core: CMMCorePlus,
    image: np.ndarray,
    *,
    index: int = 0,
    stage_xy_um: Any = _FROM_CORE,
    pixel_size_um: Any = _FROM_CORE,
    pixel_affine: Any = _FROM_CORE,
    source: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Frame:
    """A `Frame` of `image`, taken on `core` now: the one place a frame is made from a
    core (snaps, scans, live streams, the view-only live view). The stage position, pixel
    size and camera orientation are read from the core unless given (a scan or a stream
    passes what it read once, off the camera's thread); ``metadata["bit_depth"]`` is the
    camera's unless `metadata` says otherwise.
    """
    meta = dict(metadata or {})
    meta.setdefault("bit_depth", camera_bit_depth(core))
    return Frame(
        image=image,
        index=index,
        stage_xy_um=_stage_xy_or_none(core) if stage_xy_um is _FROM_CORE else stage_xy_um,
        pixel_size_um=_pixel_size_or_none(core) if pixel_size_um is _FROM_CORE else pixel_size_um,
        timestamp=time.time(),
        source=_source(core) if source is None else source,
        metadata=meta,
        pixel_affine=camera_pixel_affine(core) if pixel_affine is _FROM_CORE else pixel_affine,
    )


def snap_frame(core: CMMCorePlus, *, index: int = 0) -> Frame:
    """Snap one image now (live preview, focus checks) as a `Frame`.

    Raises
    ------
    AcquisitionError
        One line, when the camera fails, or when an acquisition (MDA) runs on the core:
        another tool's (napari-micromanager's) scan holds the camera, and a snap in
        between its events would change what it images.
    """
    if core.mda.is_running():
        raise AcquisitionError(
            "the camera is busy: an acquisition (MDA) is running on this core; "
            "snap when it has ended"
        )
    try:
        core.snapImage()
        image = core.getImage()
    except Exception as exc:
        raise AcquisitionError(f"snap failed: {one_line(exc)}") from exc
    return core_frame(
        core,
        np.asarray(image),
        index=index,
        metadata={"exposure_ms": float(core.getExposure()), "camera": core.getCameraDevice()},
    )


def view_stream_running(core: CMMCorePlus) -> bool:
    """Whether a continuous camera stream that no acquisition (MDA) owns runs on `core`:
    a view-only live view (pymmcore-widgets' Live). A stream under an MDA -- a
    hardware-sequenced scan of napari-micromanager's -- is not one: stopping it would cut
    that scan short.
    """
    try:
        return bool(core.isSequenceRunning()) and not core.mda.is_running()
    except Exception:  # a core mid-unload: no stream
        return False


def stop_view_stream(core: CMMCorePlus) -> None:
    """End a view-only live view (`view_stream_running`); anything else is left alone."""
    if view_stream_running(core):
        with suppress(Exception):
            core.stopSequenceAcquisition()


def viewed_frame(core: CMMCorePlus) -> Frame | None:
    """The camera's newest picture from a view-only snap or live view, as a `Frame` at the
    stage's position (None when there is none yet); for showing, never for counting.
    """
    try:
        if core.isSequenceRunning():
            if core.getRemainingImageCount() == 0:
                return None
            image = np.asarray(core.getLastImage())
        else:
            image = np.asarray(core.getImage())
    except Exception:  # no picture yet, or the camera went away
        return None
    return core_frame(core, image, source="view only (not counted)")


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
