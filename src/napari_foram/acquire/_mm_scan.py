"""Tray scans (MDA) and live streams on a pymmcore-plus core: part of the adapter.

See `acquire._mm` for the rule (only the ``_mm*`` modules import pymmcore-plus) and the
threads. pymmcore-plus / useq APIs used here: ``mda.run`` (``output=``: pymmcore-plus's
OME-Zarr / OME-TIFF data sink, for the raw frames), ``mda.cancel``, ``mda.is_running``,
``mda.set_paused``, ``mda.is_paused``, ``mda.set_engine``, ``mda.events``,
``pymmcore_plus.mda.mda_listeners_connected(..., asynchronous=False)`` (frameReady
handled synchronously in the MDA thread), ``pymmcore_plus.mda.MDAEngine`` (subclassed:
``exec_single_event``, ``setup_event``, so that a failed snap or a failed stage move is
reported instead of only logged), ``startContinuousSequenceAcquisition``,
``stopSequenceAcquisition``, ``isSequenceRunning``, ``getRemainingImageCount``,
``popNextImage`` and ``useq.MDASequence``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import useq
from pymmcore_plus import CMMCorePlus
from pymmcore_plus.mda import MDAEngine, mda_listeners_connected

from napari_foram.acquire._mm import (
    AcquisitionError,
    _pixel_size_or_none,
    _source,
    _stage_xy_or_none,
    camera_bit_depth,
    camera_pixel_affine,
)
from napari_foram.frames import Frame
from napari_foram.reasons import one_line

__all__ = [
    "LiveStream",
    "ScanResult",
    "cancel_scan",
    "pause_scan",
    "run_scan",
    "scan_is_paused",
]

_PYMM_LOGGER = "pymmcore-plus"


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
            self.messages.append(one_line(record.getMessage()))
        except Exception:  # a broken log record must not break the scan
            self.messages.append(one_line(str(record.msg)))


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
                self.setup_failure = one_line(exc)
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
        self.pixel_affine = camera_pixel_affine(core)
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
                    "z_um": position.get("z", event.z_pos),
                },
                pixel_affine=self.pixel_affine,
            )
            self.on_frame(frame)
            self.delivered += 1
            if self.progress is not None:
                self.progress(self.delivered + len(self.engine.failures), self.total)
        except Exception as exc:
            # The MDA runner would only log this; stop the scan and say why instead.
            self.handler_error = f"frame handler failed: {type(exc).__name__}: {one_line(exc)}"
            self.core.mda.cancel()


def run_scan(
    core: CMMCorePlus,
    sequence: useq.MDASequence,
    on_frame: Callable[[Frame], None],
    *,
    progress: Callable[[int, int], None] | None = None,
    max_failed_frames: int = 0,
    hardware_sequencing: bool = False,
    save_to: str | Path | None = None,
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
    save_to
        Keep the raw frames: a new ``*.ome.zarr`` folder (see `acquire.saved`), written by
        pymmcore-plus's data sink (ome-writers) with every frame's stage position and the
        camera's pixel size and affine transform (`acquire.saved` reads the OME-Zarr
        back). Monochrome cameras only: pymmcore-plus 0.18's sink cannot write RGB.

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
    output = None if save_to is None else _raw_output(core, save_to)
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
            core.mda.run(sequence, output=output)
    except Exception as exc:
        error = one_line(exc)
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


def _raw_output(core: CMMCorePlus, save_to: str | Path) -> str:
    """Check a raw-frame destination before the scan starts (one-line ValueError)."""
    from napari_foram.acquire.saved import RAW_SUFFIXES

    path = Path(save_to)
    if not path.name.lower().endswith(RAW_SUFFIXES):
        raise ValueError(f"raw frames go to {' or '.join(RAW_SUFFIXES)}, got {path.name!r}")
    if path.exists():
        raise ValueError(f"{path} exists: raw frames are never overwritten, choose a new name")
    if not path.parent.is_dir():
        raise ValueError(f"{path.parent}: no such folder for the raw frames")
    # The sink derives its pixel type from bytes per pixel / components: RGB cameras
    # (4 components, or a Python camera's 3) fail inside the scan; refuse them here.
    if core.getNumberOfComponents() != 1:
        raise ValueError(
            "raw frames of an RGB camera cannot be saved: pymmcore-plus 0.18's OME writers "
            "take monochrome frames only"
        )
    return str(path)


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
        affine = camera_pixel_affine(core)
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
                        pixel_affine=affine,
                    )
                    self.on_frame(frame)
                    self.frames_delivered += 1
                elif not core.isSequenceRunning():
                    self.error = "camera stopped streaming"
                    return
                else:
                    self._stop.wait(self.poll_interval_s)
        except Exception as exc:  # reported through .error and stop(); never silent
            self.error = f"live stream failed: {type(exc).__name__}: {one_line(exc)}"

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
