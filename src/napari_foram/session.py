"""A counting session: frames from a microscope go through the pipeline.

Three ways of imaging, one pipeline:

* `CountingSession.snap`: one frame, processed at once.
* `CountingSession.scan`: a tray scan (an MDA sequence). The acquisition thread (the MDA
  runner) only puts frames on a bounded queue; one processing worker runs the pipeline.
  No frame is ever dropped: the stage waits when the queue is full. Pause, resume, stop.
* `CountingSession.live`: live preview. The camera streams; the queue keeps only the
  newest frames, so the worker always processes the present and older frames are dropped
  on purpose -- and counted.

Whoever owns the session gets every `FrameResult` through a callback, on the worker
thread; `stats()` (processed, dropped, backlog, frames per second) is safe to poll from
any thread, e.g. a GUI timer.

Where frames come from is a seam (`FrameSource`): a Micro-Manager core (given as it is,
it is wrapped in `acquire.sources.MicroManagerSource`), a saved scan, a folder of images
or any camera outside Micro-Manager whose class has the same six methods
(`acquire.sources`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from napari_foram.reasons import one_line

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from pymmcore_plus import CMMCorePlus

    from napari_foram.frames import Frame
    from napari_foram.pipeline import CountingPipeline, FrameResult


class FrameStream(Protocol):
    """A running live stream (`FrameSource.stream`)."""

    @property
    def frames_delivered(self) -> int:
        """Frames handed on so far."""
        ...

    @property
    def error(self) -> BaseException | str | None:
        """Why the stream ended on its own (None while it runs well)."""
        ...

    def start(self) -> None:
        """Start streaming."""
        ...

    def stop(self) -> None:
        """Stop streaming; raises what ended it, if anything did."""
        ...


class Acquisition(Protocol):
    """How an acquisition (`FrameSource.acquire`) ended."""

    @property
    def frames_delivered(self) -> int:
        """Frames handed on."""
        ...

    @property
    def error(self) -> str | None:
        """One-line reason the acquisition ended early, or None."""
        ...

    @property
    def cancelled(self) -> bool:
        """Whether a stop (`FrameSource.cancel`) ended it."""
        ...


@runtime_checkable
class FrameSource(Protocol):
    """Where a counting session's frames come from (`acquire.sources` has a Micro-Manager
    core's, a saved scan's and a folder's).
    """

    def snap(self, index: int = 0) -> Frame:
        """One frame, now."""
        ...

    def stream(self, emit: Callable[[Frame], None]) -> FrameStream:
        """A live stream handing each new frame to `emit` (on its own thread) once started."""
        ...

    def acquire(
        self,
        plan: Any,
        emit: Callable[[Frame], None],
        *,
        hardware_sequencing: bool = False,
        save_to: str | Path | None = None,
    ) -> Acquisition:
        """Take the frames of `plan` (a tray scan), each handed to `emit` in order on the
        calling thread; `emit` blocking holds the acquisition.
        """
        ...

    def layout(self, plan: Any) -> tuple[int, int]:
        """(fields, focal planes per field) of `plan`."""
        ...

    def cancel(self) -> None:
        """Stop the running `acquire` after the frame in hand (any thread)."""
        ...

    def pause(self, paused: bool) -> None:
        """Hold (or release) the running `acquire` between frames (any thread)."""
        ...


def frame_source(source: FrameSource | CMMCorePlus | Any) -> FrameSource:
    """`source` itself when it is a `FrameSource`; a Micro-Manager core wrapped as one."""
    if isinstance(source, FrameSource):
        return source
    from napari_foram.acquire.sources import MicroManagerSource

    return MicroManagerSource(source)


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
        Frames dropped by the queue: live preview's stale frames; for a tray scan only
        the fields imaged but not yet processed when the user stopped it.
    error
        One-line reason the scan ended early (camera failure, stop request), or None.
    seconds
        Wall time of the whole scan, processing included.
    pending_partials
        Specimens seen so far only cut by a field edge and not counted, because the scan
        ended early: the fields still to image may show them whole. Scanning again (or
        resuming) counts them; `CountingPipeline.finish` counts them as they are.
    """

    frames_acquired: int
    frames_processed: int
    frames_dropped: int
    error: str | None
    seconds: float
    pending_partials: int = 0
    fields_planned: int = 0
    specimens_counted: int = 0


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
        self._stop_event = threading.Event()
        self._discarded_at_stop = 0  # fields imaged but dropped by the running scan's stop
        self._source: FrameSource | None = None
        self._queue: Any = None
        self._mode = "idle"
        self._paused = False
        # Completion times of the last frames, for a frames-per-second readout.
        self._done_times: deque[float] = deque(maxlen=30)
        self._processed = 0

    @property
    def mode(self) -> str:
        """What the session does now: "idle", "snap", "scan" or "live"."""
        return self._mode

    @property
    def paused(self) -> bool:
        """Whether a tray scan is paused."""
        return self._paused

    def stop(self) -> None:
        """Ask the running acquisition to stop now (any thread): the field being
        processed finishes and is stored; the fields imaged but still queued are
        dropped, not processed (a scan started again images them again), and the camera
        stops after the field it is on.
        """
        self._stop_requested = True
        self._stop_event.set()
        queue = self._queue
        if queue is not None and self._mode == "scan":
            # Before the cancel: a producer blocked on a full queue wakes up (its put
            # raises QueueClosed, which `scan` takes for the stop), and the worker ends
            # after the batch in its hands instead of working through the backlog.
            self._discarded_at_stop += queue.discard_pending()
            queue.close("stopped by the user")
        if self._source is not None and self._mode == "scan":
            self._source.cancel()

    def pause(self, paused: bool = True) -> None:
        """Pause (or resume) a running tray scan (any thread): the camera stops after the
        field it is on and the worker after the field it is processing; the fields
        imaged meanwhile wait in the queue and are processed, in order, on resume.
        """
        if self._source is None or self._mode != "scan":
            raise ValueError("no tray scan is running")
        queue = self._queue
        if queue is not None:
            queue.hold(paused)
        self._source.pause(paused)
        self._paused = bool(paused)

    def resume(self) -> None:
        """Resume a paused tray scan."""
        self.pause(False)

    def stats(self) -> dict[str, float]:
        """Frames processed and dropped, the backlog and the processing rate (any thread)."""
        queue = self._queue
        times = list(self._done_times)
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        if times and time.perf_counter() - times[-1] > 5.0:
            fps = 0.0  # nothing for a while: the rate is zero now, not that of the past
        return {
            "processed": self._processed,
            "dropped": queue.dropped if queue is not None else 0,
            "backlog": len(queue) if queue is not None else 0,
            "frames_per_s": round(fps, 2),
        }

    def _processed_one(self) -> None:
        self._processed += 1
        self._done_times.append(time.perf_counter())

    def snap(self, source: FrameSource | CMMCorePlus, *, index: int = 0) -> FrameResult:
        """Take one frame from `source` (a `FrameSource` or a Micro-Manager core) and count
        it now (in the calling thread).
        """
        self._mode = "snap"
        try:
            result = self.pipeline.process(frame_source(source).snap(index))
        finally:
            self._mode = "idle"
        self._processed_one()
        return result

    def live(
        self,
        source: FrameSource | CMMCorePlus,
        *,
        max_frames: int | None = None,
        max_seconds: float | None = None,
        on_result: Callable[[FrameResult], None] | None = None,
        queue_size: int = 2,
    ) -> ScanReport:
        """Live preview: count the newest frames until `stop`, `max_frames` processed or
        `max_seconds` elapsed (blocking; call `stop` from another thread).

        The camera streams continuously; a "live" queue of `queue_size` frames keeps the
        newest, so when processing is slower than the camera older frames are dropped on
        purpose. ``frames_dropped`` in the report says how many. A specimen that stays in
        view is counted once (the pipeline de-duplicates in sample coordinates).
        """
        from napari_foram.acquire import FrameQueue, ProcessingWorker

        frames = frame_source(source)
        self._stop_requested = False
        self._stop_event.clear()
        t0 = time.perf_counter()
        queue: FrameQueue[Frame] = FrameQueue(maxsize=queue_size, policy="live")
        self._queue, self._source, self._mode = queue, frames, "live"
        processed = 0
        enough = threading.Event()

        def handle(frames: list[Frame]) -> None:
            nonlocal processed
            for result in self.pipeline.process_many(frames):
                processed += 1
                self._processed_one()
                if on_result is not None:
                    on_result(result)
            if max_frames is not None and processed >= max_frames:
                enough.set()
                self._stop_event.set()

        worker = ProcessingWorker(queue, batch_handler=handle, max_batch=self.max_batch)
        stream = frames.stream(queue.put)
        error: str | None = None
        worker.start()
        try:
            stream.start()
            while not self._stop_event.wait(0.02):
                if max_seconds is not None and time.perf_counter() - t0 >= max_seconds:
                    break
                if worker.error is not None or stream.error is not None:
                    break
        finally:
            try:
                stream.stop()
            except Exception as exc:  # the camera failed while streaming: say so
                error = one_line(exc)
            worker.stop(drain=False)  # live: what is left is stale, not worth counting
            self._source, self._mode = None, "idle"
        if error is None and self._stop_requested and not enough.is_set():
            error = "stopped by the user"
        return ScanReport(
            frames_acquired=stream.frames_delivered,
            frames_processed=processed,
            frames_dropped=worker.dropped,
            error=error,
            seconds=time.perf_counter() - t0,
        )

    def scan(
        self,
        source: FrameSource | CMMCorePlus,
        sequence: Any,
        *,
        on_result: Callable[[FrameResult], None] | None = None,
        progress: Callable[..., None] | None = None,
        hardware_sequencing: bool = False,
        save_to: str | Path | None = None,
    ) -> ScanReport:
        """Acquire `sequence` from `source` (a `FrameSource`, or a Micro-Manager core),
        process every frame, return when all are done.

        `save_to` keeps the raw frames (a new ``*.ome.zarr`` folder, see
        `acquire.run_scan`); `count_saved_scan` recounts them later.

        A camera failing mid-scan ends the acquisition with a one-line error in the
        report; the frames taken before it are processed and stored all the same, and a
        new scan of the same sample resumes (what is stored is never counted again).
        `pause`, `resume` and `stop` work from any thread while it runs.

        When `sequence` has a z plan (``tray_scan_sequence(..., z_planes=N)``) the
        planes of each field are fused into one extended-depth-of-field frame
        (`napari_foram.focus`) in the worker, off the acquisition thread, before
        detection; `frames_processed` then counts fused fields. A stack left incomplete
        by a failure or a stop is dropped (its field is imaged again on resume).
        """
        from napari_foram.acquire import FrameQueue, ProcessingWorker, QueueClosed

        frames = frame_source(source)
        self._stop_requested = False
        self._stop_event.clear()
        self._discarded_at_stop = 0
        t0 = time.perf_counter()
        queue: FrameQueue[Frame] = FrameQueue(maxsize=self.queue_size, policy="scan")
        self._queue = queue
        self._source, self._mode, self._paused = frames, "scan", False
        processed = counted = 0
        planned, z_planes = frames.layout(sequence)

        from napari_foram.focus import ZStackAssembler

        fused: list[Frame] = []
        assembler = ZStackAssembler(z_planes, fused.append)

        def handle(frames: list[Frame]) -> None:
            nonlocal processed, counted
            for frame in frames:
                assembler.add(frame)  # passes single planes through; fuses full stacks
            ready, fused[:] = list(fused), []
            if not ready:
                return
            for result in self.pipeline.process_many(ready):
                processed += 1
                counted += len(result.new_rows)
                self._processed_one()
                if on_result is not None:
                    on_result(result)
                if progress is not None:
                    progress(processed, f"frame {result.frame.index}: {len(result.new_rows)} new")

        def take(frame: Frame) -> None:
            if self._stop_requested:
                self._discarded_at_stop += 1  # imaged after Stop: not counted
                return
            try:
                queue.put(frame)
            except QueueClosed:
                if not self._stop_requested:
                    raise  # the worker failed: run_scan stops and says why
                self._discarded_at_stop += 1

        worker = ProcessingWorker(queue, batch_handler=handle, max_batch=self.max_batch)
        worker.start()
        try:
            # The source calls `take` on this thread, synchronously: with the "scan"
            # policy a full queue holds the stage until the worker catches up.
            acquired = frames.acquire(
                sequence, take, hardware_sequencing=hardware_sequencing, save_to=save_to
            )
        finally:
            worker.stop(drain=True)
            self._source, self._mode, self._paused = None, "idle", False
        worker.raise_if_failed()
        assembler.flush()  # drops a stack a failure or a stop left incomplete
        error = acquired.error
        if error is None and self._stop_requested:
            # What the user needs after Stop: how far the scan got, what it counted.
            fields = processed
            error = (
                f"stopped after field {fields} of {planned}: "
                f"{counted} specimen{'s' * (counted != 1)} counted"
            )
        pending = 0
        if error is None and not acquired.cancelled:
            # The whole tray was imaged: specimens only ever seen cut by a field edge
            # are counted once now.
            for result in self.pipeline.finish():
                counted += len(result.new_rows)
                if on_result is not None:
                    on_result(result)
        else:
            # Not now: a field not yet imaged may show them whole, and counting a cut
            # view first would count them twice once the scan resumes.
            pending = len(self.pipeline.partials)
        return ScanReport(
            frames_acquired=acquired.frames_delivered,
            frames_processed=processed,
            frames_dropped=queue.dropped + self._discarded_at_stop,
            error=error,
            seconds=time.perf_counter() - t0,
            pending_partials=pending,
            fields_planned=planned,
            specimens_counted=counted,
        )


def count_saved_scan(
    pipeline: CountingPipeline,
    path: str | Path,
    *,
    on_result: Callable[[FrameResult], None] | None = None,
) -> ScanReport:
    """Recount a tray scan saved with ``scan(..., save_to=...)`` (OME-Zarr) through
    `pipeline`, exactly as the live scan counted it: its frames replayed
    (`acquire.sources.SavedScanSource`) in the order they were taken, at their stage
    positions (so overlapping fields count each specimen once), z-stacks fused, and the
    specimens only ever seen cut by a field edge counted at the end. Runs in the calling
    thread (a batch task's: its stop hooks and seeds hold for every frame).
    """
    from napari_foram.acquire.sources import SavedScanSource
    from napari_foram.focus import ZStackAssembler

    t0 = time.perf_counter()
    source = SavedScanSource(path)
    store, sample_id = pipeline.store, pipeline.sample_id
    if store is not None and sample_id is not None:
        # The recount's provenance names the frames it came from, as the live count's does.
        store.set_provenance(
            sample_id,
            {**pipeline.provenance(), "source": "saved scan", "raw_frames": str(source.scan.path)},
        )
    fields, z_planes = source.layout(None)
    fused: list[Frame] = []
    assembler = ZStackAssembler(z_planes, fused.append)
    processed = counted = 0

    def take(frame: Frame) -> None:
        nonlocal processed, counted
        assembler.add(frame)
        ready, fused[:] = list(fused), []
        for result in pipeline.process_many(ready):
            processed += 1
            counted += len(result.new_rows)
            if on_result is not None:
                on_result(result)

    replayed = source.acquire(None, take)
    assembler.flush()
    if replayed.error is None:
        for result in pipeline.finish():
            counted += len(result.new_rows)
            if on_result is not None:
                on_result(result)
    return ScanReport(
        frames_acquired=replayed.frames_delivered,
        frames_processed=processed,
        frames_dropped=0,
        error=replayed.error,
        seconds=time.perf_counter() - t0,
        fields_planned=fields,
        specimens_counted=counted,
    )
