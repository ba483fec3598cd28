"""Acquisition: Micro-Manager cores (real or simulated), tray scans, live streams, queues.

``acquire._mm`` is the only module of napari-foram that imports pymmcore-plus or useq.
Importing ``napari_foram.acquire`` stays cheap (no pymmcore-plus, ~0.75 s saved): the
pymmcore-plus-backed names below are imported from ``_mm`` on first use (PEP 562
``__getattr__``). The queue/worker (`stream`) and the simulated microscope's physics
(`simulated`) are pure Python and import eagerly.

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
from typing import TYPE_CHECKING, Any

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
        LiveStream,
        ScanResult,
        SimulatedCamera,
        SimulatedShutter,
        SimulatedXYStage,
        SimulatedZStage,
        camera_bit_depth,
        camera_frame_shape,
        camera_pixel_size_um,
        cancel_scan,
        create_simulated_core,
        load_config_core,
        pause_scan,
        run_scan,
        scan_is_paused,
        sequence_xy_positions,
        sequence_z_planes,
        simulated_microscope,
        snap_frame,
        tray_extent_scan_sequence,
        tray_scan_sequence,
    )

_LAZY_FROM_MM = frozenset(
    {
        "AcquisitionError",
        "LiveStream",
        "ScanResult",
        "SimulatedCamera",
        "SimulatedShutter",
        "SimulatedXYStage",
        "SimulatedZStage",
        "camera_bit_depth",
        "camera_frame_shape",
        "camera_pixel_size_um",
        "cancel_scan",
        "create_simulated_core",
        "load_config_core",
        "pause_scan",
        "run_scan",
        "scan_is_paused",
        "sequence_xy_positions",
        "sequence_z_planes",
        "simulated_microscope",
        "snap_frame",
        "tray_extent_scan_sequence",
        "tray_scan_sequence",
    }
)

__all__ = [
    "AcquisitionError",
    "FrameQueue",
    "LiveStream",
    "ProcessingError",
    "ProcessingWorker",
    "QueueClosed",
    "QueuePolicy",
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
    "camera_pixel_size_um",
    "cancel_scan",
    "create_simulated_core",
    "load_config_core",
    "pause_scan",
    "run_scan",
    "scan_is_paused",
    "sequence_xy_positions",
    "sequence_z_planes",
    "simulated_microscope",
    "snap_frame",
    "stage_xy_for_window",
    "tray_extent_scan_sequence",
    "tray_scan_sequence",
    "window_origin",
    "world_extent_um",
    "world_window",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY_FROM_MM:
        value = getattr(importlib.import_module("napari_foram.acquire._mm"), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
