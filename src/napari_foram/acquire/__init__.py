"""Acquisition: Micro-Manager cores (real or simulated), tray scans, live streams, queues.

``acquire._mm``, ``acquire._mm_devices`` and ``acquire._mm_scan`` (the pymmcore-plus
adapter) are the only modules of napari-foram that import pymmcore-plus or useq.
Importing ``napari_foram.acquire`` stays cheap (no pymmcore-plus, ~0.75 s saved): the
pymmcore-plus-backed names below are imported from those modules on first use (PEP 562
``__getattr__``). The queue/worker (`stream`), the simulated microscope's physics
(`simulated`) and the reader of saved scans (`saved`) are pure Python and import eagerly.

Typical tray scan::

    from napari_foram.acquire import (
        FrameQueue, ProcessingWorker, create_simulated_core, run_scan, tray_scan_sequence,
    )

    core = create_simulated_core(world, pixel_size_um=5.0)
    queue = FrameQueue(maxsize=4, policy="scan")
    with ProcessingWorker(queue, handle_frame):
        result = run_scan(core, tray_scan_sequence(core, rows=3, cols=4), queue.put)
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# pymmcore-plus logs a harmless "run `mmcore install`" error when no Micro-Manager is
# installed (the simulated microscope needs none). Set before any adapter module imports
# pymmcore-plus, whichever of them comes first; a user's own setting wins.
os.environ.setdefault("PYMM_LOG_LEVEL", "CRITICAL")

from napari_foram.acquire.saved import SavedScan, is_saved_scan, read_saved_scan
from napari_foram.acquire.simulated import (
    SimulatedCameraError,
    SimulatedMicroscope,
    SimulatedStageError,
    stage_xy_for_window,
    window_origin,
    world_extent_um,
    world_window,
)
from napari_foram.acquire.stream import (
    FrameQueue,
    ProcessingError,
    ProcessingWorker,
    QueueClosed,
    QueuePolicy,
)

if TYPE_CHECKING:
    from napari_foram.acquire._mm import (
        AcquisitionError,
        MicroscopeCapabilities,
        camera_bit_depth,
        camera_frame_shape,
        camera_pixel_affine,
        camera_pixel_size_um,
        load_config_core,
        microscope_capabilities,
        release_core,
        sequence_xy_positions,
        sequence_z_planes,
        shared_core,
        simulated_microscope,
        snap_frame,
        stop_view_stream,
        tray_extent_scan_sequence,
        tray_scan_sequence,
        view_stream_running,
        viewed_frame,
    )
    from napari_foram.acquire._mm_devices import (
        SimulatedCamera,
        SimulatedShutter,
        SimulatedXYStage,
        SimulatedZStage,
        create_simulated_core,
    )
    from napari_foram.acquire._mm_scan import (
        LiveStream,
        ScanResult,
        cancel_scan,
        pause_scan,
        run_scan,
        scan_is_paused,
    )

# Where each pymmcore-plus-backed name lives (imported on first use).
_LAZY = {
    **dict.fromkeys(
        (
            "AcquisitionError",
            "MicroscopeCapabilities",
            "camera_bit_depth",
            "camera_frame_shape",
            "camera_pixel_affine",
            "camera_pixel_size_um",
            "load_config_core",
            "microscope_capabilities",
            "release_core",
            "sequence_xy_positions",
            "sequence_z_planes",
            "shared_core",
            "simulated_microscope",
            "snap_frame",
            "stop_view_stream",
            "tray_extent_scan_sequence",
            "tray_scan_sequence",
            "view_stream_running",
            "viewed_frame",
        ),
        "napari_foram.acquire._mm",
    ),
    **dict.fromkeys(
        (
            "SimulatedCamera",
            "SimulatedShutter",
            "SimulatedXYStage",
            "SimulatedZStage",
            "create_simulated_core",
        ),
        "napari_foram.acquire._mm_devices",
    ),
    **dict.fromkeys(
        ("LiveStream", "ScanResult", "cancel_scan", "pause_scan", "run_scan", "scan_is_paused"),
        "napari_foram.acquire._mm_scan",
    ),
}

__all__ = [
    "AcquisitionError",
    "FrameQueue",
    "LiveStream",
    "MicroscopeCapabilities",
    "ProcessingError",
    "ProcessingWorker",
    "QueueClosed",
    "QueuePolicy",
    "SavedScan",
    "ScanResult",
    "SimulatedCamera",
    "SimulatedCameraError",
    "SimulatedMicroscope",
    "SimulatedShutter",
    "SimulatedStageError",
    "SimulatedXYStage",
    "SimulatedZStage",
    "camera_bit_depth",
    "camera_frame_shape",
    "camera_pixel_affine",
    "camera_pixel_size_um",
    "cancel_scan",
    "create_simulated_core",
    "is_saved_scan",
    "load_config_core",
    "microscope_capabilities",
    "pause_scan",
    "read_saved_scan",
    "release_core",
    "run_scan",
    "scan_is_paused",
    "sequence_xy_positions",
    "sequence_z_planes",
    "shared_core",
    "simulated_microscope",
    "snap_frame",
    "stage_xy_for_window",
    "stop_view_stream",
    "tray_extent_scan_sequence",
    "tray_scan_sequence",
    "view_stream_running",
    "viewed_frame",
    "window_origin",
    "world_extent_um",
    "world_window",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
