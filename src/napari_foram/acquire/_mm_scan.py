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
``popNextImage`` and ``useq.MDASequence``. Raw frames of colour cameras go through
ome-writers itself (pymmcore-plus's sink takes monochrome frames only):
``ome_writers.useq_to_acquisition_settings``, ``AcquisitionSettings``, ``Dimension``,
``Channel``, ``create_stream`` and the stream's ``append``, ``skip``, ``get_metadata``,
``update_metadata`` and ``close``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import useq
from ome_writers import (
    AcquisitionSettings,
    Channel,
    Dimension,
    OmeZarrFormat,
    create_stream,
    useq_to_acquisition_settings,
)
from pymmcore_plus.mda import MDAEngine, mda_listeners_connected

from napari_foram.acquire._mm import (
    AcquisitionError,
    _pixel_size_or_none,
    _source,
    _stage_xy_or_none,
    camera_bit_depth,
    camera_pixel_affine,
    core_frame,
)
from napari_foram.reasons import one_line

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from pymmcore_plus import CMMCorePlus

    from napari_foram.frames import Frame

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


#: The colour planes of an RGB camera's raw frames, with the colours viewers give them.
#: OME-NGFF 0.5 has no interleaved RGB axis (a channel axis must come before the space
#: axes), so a colour frame is kept as a channel axis "c" of these three planes;
#: `acquire.saved` puts them back together as the (H, W, 3) frame the count saw.
RGB_CHANNELS = (("R", (255, 0, 0)), ("G", (0, 255, 0)), ("B", (0, 0, 255)))


def _event_key(event: useq.MDAEvent) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(event.index.items()))


class _RgbRawWriter:
    """Raw frames of a colour camera as OME-Zarr, laid out as pymmcore-plus's sink lays
    out monochrome ones (`acquire.saved` reads both).

    pymmcore-plus 0.18's sink asks ome-writers for 2-D frames of the camera's dtype (a
    Python RGB camera's is "uint0") and fails on the first (H, W, 3) image. This writer
    drives ome-writers itself: the sink's dimensions for the sequence (one image per
    field, z planes), plus a channel axis "c" of three planes before y and x (stored
    c, z, y, x: OME-NGFF's order), red, green and blue in its "omero" metadata. Each
    frame's planes carry its ``frame_metadata`` (stage position, exposure, time) and
    every image pymmcore-plus's summary metadata (pixel size, pixel format, affine
    transform), under the keys the sink uses.

    Called from the MDA thread only, in event order. A field the scan skipped (a failed
    snap) is skipped in the file too, so every later frame lands in its own field.
    """

    def __init__(self, core: CMMCorePlus, sequence: useq.MDASequence, path: Path) -> None:
        self.path = path
        self.pixel_size_um = _pixel_size_or_none(core)
        self.sequence = sequence
        self.summary: Mapping[str, Any] | None = None
        self._stream: Any = None
        self._ordinal = {_event_key(e): i for i, e in enumerate(sequence)}
        self._next = 0  # ordinal of the next event the file expects
        # Checked now, not at the first frame: a plan the layout cannot hold stops the
        # scan before the stage moves.
        self._dimensions(core.getImageHeight(), core.getImageWidth())

    def _dimensions(self, height: int, width: int) -> dict[str, Any]:
        try:
            plan = useq_to_acquisition_settings(
                self.sequence,
                image_width=width,
                image_height=height,
                pixel_size_um=self.pixel_size_um,
            )
        except NotImplementedError as exc:
            raise ValueError(
                f"raw frames of this scan cannot be laid out as OME-Zarr: {one_line(exc)}"
            ) from exc
        dims = list(plan["dimensions"])
        colours = [Channel.model_validate({"name": n, "color": rgb}) for n, rgb in RGB_CHANNELS]
        colour_axis = {"name": "c", "type": "channel", "count": 3, "chunk_size": 1}
        dims.insert(len(dims) - 2, Dimension.model_validate({**colour_axis, "coords": colours}))
        return {"dimensions": dims, "plate": plan["plate"]}

    def sequence_started(self, summary: Mapping[str, Any]) -> None:
        self.summary = summary

    def write(
        self,
        image: np.ndarray,
        event: useq.MDAEvent,
        meta: Mapping[str, Any],
        stage_xy_um: tuple[float, float] | None,
    ) -> None:
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"an RGB camera delivered a frame of shape {image.shape}")
        if self._stream is None:
            self._open(image)
        ordinal = self._ordinal.get(_event_key(event), self._next)
        if ordinal > self._next:
            self._stream.skip(frames=3 * (ordinal - self._next))
        plane_meta: dict[str, Any] = {
            "delta_t": float(meta.get("runner_time_ms") or 0.0) / 1000,
            "exposure_time": float(meta.get("exposure_ms") or 0.0) / 1000,
        }
        if stage_xy_um is not None:
            plane_meta["position_x"], plane_meta["position_y"] = stage_xy_um
        z = (meta.get("position") or {}).get("z", event.z_pos)
        if z is not None:
            plane_meta["position_z"] = float(z)
        for c in range(3):
            self._stream.append(np.ascontiguousarray(image[..., c]), frame_metadata=plane_meta)
        self._next = max(self._next, ordinal + 1)

    def _open(self, first: np.ndarray) -> None:
        settings = AcquisitionSettings(
            root_path=str(self.path),
            format=OmeZarrFormat(),
            dtype=str(first.dtype),
            **self._dimensions(first.shape[0], first.shape[1]),
        )
        self._stream = create_stream(settings)
        if self.summary is not None:
            summary = dict(self.summary)
            sequence = summary.get("mda_sequence")
            if isinstance(sequence, useq.MDASequence):
                summary["mda_sequence"] = sequence.model_dump(mode="json", exclude_unset=True)
            attrs = self._stream.get_metadata()
            for image_attrs in attrs.values():
                image_attrs.setdefault("pymmcore_plus", {})["summary_metadata"] = summary
            self._stream.update_metadata(attrs)

    def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.close()


class _FrameHandler:
    """frameReady handler for one run: builds Frames, calls on_frame, keeps counts."""

    def __init__(
        self,
        core: CMMCorePlus,
        on_frame: Callable[[Frame], None],
        progress: Callable[[int, int], None] | None,
        total: int,
        engine: _ScanEngine,
        raw_writer: _RgbRawWriter | None = None,
    ) -> None:
        self.core = core
        self.raw_writer = raw_writer
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

    def sequenceStarted(self, sequence: useq.MDASequence, meta: Mapping) -> None:
        if self.raw_writer is not None:
            self.raw_writer.sequence_started(meta)

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
            frame = core_frame(
                self.core,
                image,  # trust img.shape, not the metadata's pixel type (GRAY8 for RGB)
                index=index,
                stage_xy_um=stage,
                pixel_size_um=float(px) if px else None,
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
            if self.raw_writer is not None:
                try:
                    self.raw_writer.write(image, event, meta, stage)
                except Exception as exc:
                    self.handler_error = f"saving the raw frames failed: {one_line(exc)}"
                    self.core.mda.cancel()
                    return
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
        back). Colour cameras' frames are written by `_RgbRawWriter` (ome-writers, the
        same layout with a channel axis "c" of red, green and blue): pymmcore-plus
        0.18's sink takes monochrome frames only.

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
    output: str | None = None
    raw_writer: _RgbRawWriter | None = None
    if save_to is not None:
        raw_path = _raw_path(save_to)
        if core.getNumberOfComponents() == 1:
            output = str(raw_path)  # pymmcore-plus's own sink
        else:
            raw_writer = _RgbRawWriter(core, sequence, raw_path)
    total = sum(1 for _ in sequence)
    engine = _ScanEngine(
        core, max_failed_frames=max_failed_frames, hardware_sequencing=hardware_sequencing
    )
    handler = _FrameHandler(core, on_frame, progress, total, engine, raw_writer)
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
        if raw_writer is not None:
            try:
                raw_writer.close()
            except Exception as exc:
                error = error or f"saving the raw frames failed: {one_line(exc)}"
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


def _raw_path(save_to: str | Path) -> Path:
    """Check a raw-frame destination before the scan starts (one-line ValueError)."""
    from napari_foram.acquire.saved import RAW_SUFFIXES

    path = Path(save_to)
    if not path.name.lower().endswith(RAW_SUFFIXES):
        raise ValueError(f"raw frames go to {' or '.join(RAW_SUFFIXES)}, got {path.name!r}")
    if path.exists():
        raise ValueError(f"{path} exists: raw frames are never overwritten, choose a new name")
    if not path.parent.is_dir():
        raise ValueError(f"{path.parent}: no such folder for the raw frames")
    return path


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
                    frame = core_frame(
                        core,
                        image,
                        index=self.frames_delivered,
                        pixel_size_um=px,
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
