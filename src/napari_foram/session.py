"""A counting session: frames from a microscope go through the pipeline, none lost.

The acquisition thread (pymmcore-plus's MDA runner) only puts frames on a bounded queue;
one processing worker takes them and runs `CountingPipeline.process`. A tray scan never
drops a frame (the producer waits when the queue is full); whoever owns the session gets
every `FrameResult` through a callback, on the worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from napari_foram.mosaic import Mosaic

if TYPE_CHECKING:
    from napari_foram.frames import Frame
    from napari_foram.pipeline import CountingPipeline, FrameResult
    from napari_foram.synthetic import TrayRender


@dataclass(frozen=True)
class ScanReport:
    """How a scan went.

    Attributes
    ----------
    frames_acquired
        Frames the camera delivered.
    frames_processed
        Frames that went through the pipeline.
    frames_dropped
        Frames dropped by the queue (always 0 for a tray scan).
    error
        One-line reason the scan ended early (camera failure, stop request), or None.
    seconds
        Wall time of the whole scan, processing included.
    """

    frames_acquired: int
    frames_processed: int
    frames_dropped: int
    error: str | None
    seconds: float


class CountingSession:
    """Runs acquisitions through a pipeline on one worker thread.

    Parameters
    ----------
    pipeline
        The frame -> specimens pipeline (its store receives the counts).
    queue_size
        Frames buffered between the camera and the worker.
    max_batch
        Frames whose crops are classified together when several are waiting; None picks
        4 on a GPU (one frame's ~100 crops leave it half idle) and 1 on a CPU (where a
        batch gains nothing and only delays the first result).
    """

    def __init__(
        self, pipeline: CountingPipeline, *, queue_size: int = 4, max_batch: int | None = None
    ) -> None:
        self.pipeline = pipeline
        if max_batch is None:
            max_batch = 4 if pipeline.predictor.device.type == "cuda" else 1
        self.max_batch = int(max_batch)
        self.queue_size = max(queue_size, self.max_batch)
        self._stop_requested = False
        self._core: Any = None

    def stop(self) -> None:
        """Ask the running acquisition to stop; frames already taken are still processed."""
        from napari_foram.acquire import cancel_scan

        self._stop_requested = True
        if self._core is not None:
            cancel_scan(self._core)

    def scan(
        self,
        core: Any,
        sequence: Any,
        *,
        on_result: Callable[[FrameResult], None] | None = None,
        progress: Callable[..., None] | None = None,
    ) -> ScanReport:
        """Acquire `sequence` on `core`, process every frame, return when all are done.

        A camera failing mid-scan ends the acquisition with a one-line error in the
        report; the frames taken before it are processed and stored all the same.
        """
        from napari_foram.acquire import FrameQueue, ProcessingWorker, run_scan

        self._stop_requested = False
        self._core = core
        t0 = time.perf_counter()
        queue: FrameQueue[Frame] = FrameQueue(maxsize=self.queue_size, policy="scan")
        processed = 0

        def handle(frames: list[Frame]) -> None:
            nonlocal processed
            for result in self.pipeline.process_many(frames):
                processed += 1
                if on_result is not None:
                    on_result(result)
                if progress is not None:
                    progress(processed, f"frame {result.frame.index}: {len(result.new_rows)} new")

        worker = ProcessingWorker(queue, batch_handler=handle, max_batch=self.max_batch)
        worker.start()
        try:
            # run_scan calls on_frame on this thread, synchronously: with the "scan"
            # policy a full queue holds the stage until the worker catches up.
            acquired = run_scan(core, sequence, on_frame=queue.put)
        finally:
            worker.stop(drain=True)
            self._core = None
        worker.raise_if_failed()
        # Specimens only ever seen cut by a field edge are counted once now.
        for result in self.pipeline.finish():
            if on_result is not None:
                on_result(result)
        error = acquired.error
        if error is None and self._stop_requested:
            error = "stopped by the user"
        return ScanReport(
            frames_acquired=acquired.frames_delivered,
            frames_processed=processed,
            frames_dropped=queue.dropped,
            error=error,
            seconds=time.perf_counter() - t0,
        )


class SimulatedTray:
    """The built-in simulated microscope with a synthetic tray on its stage.

    Parameters
    ----------
    world
        The synthetic tray (image, labels, ground truth) the camera looks at.
    camera_shape
        Sensor size (rows, cols).
    seed
        Seed of the camera noise.
    """

    def __init__(
        self,
        world: TrayRender,
        *,
        camera_shape: tuple[int, int] = (972, 1296),
        seed: int = 0,
        noise: bool = True,
        fail_after_frames: int | None = None,
    ) -> None:
        from napari_foram.acquire import create_simulated_core

        self.world = world
        self.camera_shape = camera_shape
        self.pixel_size_um = world.pixel_size_um
        self.core = create_simulated_core(
            world.image,
            world.pixel_size_um,
            camera_shape=camera_shape,
            noise=noise,
            seed=seed,
            fail_after_frames=fail_after_frames,
        )
        self._centres: list[tuple[float, float]] = []

    def world_px_to_um(self, row: float, col: float) -> tuple[float, float]:
        """Sample coordinates (x_um, y_um) of a world pixel (see acquire.simulated)."""
        return (col * self.pixel_size_um, row * self.pixel_size_um)

    def grid_sequence(self, rows: int, cols: int, overlap_fraction: float) -> Any:
        """An MDA grid scan of rows x cols fields centred on the tray."""
        from napari_foram.acquire import tray_scan_sequence

        h, w = self.world.image.shape[:2]
        centre = self.world_px_to_um((h - 1) / 2, (w - 1) / 2)
        return tray_scan_sequence(
            self.core,
            rows=rows,
            cols=cols,
            overlap_fraction=overlap_fraction,
            center_xy_um=centre,
        )

    def mosaic(self) -> Mosaic:
        """An empty mosaic covering the whole tray, for the viewer."""
        h, w = self.world.image.shape[:2]
        return Mosaic((0.0, 0.0), (h, w), self.pixel_size_um)

    def describe(self) -> dict[str, Any]:
        """Microscope state for the store's provenance record."""
        return {
            "microscope": "napari-foram simulated microscope",
            "camera_shape": list(self.camera_shape),
            "pixel_size_um": self.pixel_size_um,
            "synthetic_seed": self.world.seed,
        }
