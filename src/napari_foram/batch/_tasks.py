"""Batch tasks: a few files of one sample read, detected and classified together."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram.classify.rng import seeded
from napari_foram.pixelsize import read_pixel_size
from napari_foram.reasons import one_line

from ._plan import (
    DEFAULT_MAX_MEGAPIXELS,
    DEFAULT_MIN_SIDE_PX,
    SourceFile,
    is_saved_scan_source,
    path_sha256,
)

if TYPE_CHECKING:
    from napari_foram.classify.predict import Predictor
    from napari_foram.detect import DetectionParams
    from napari_foram.pipeline import FrameResult
    from napari_foram.tally.store import SpecimenBatch

# One logger for the package: users configure "napari_foram.batch", not its parts.
log = logging.getLogger("napari_foram.batch")


# ----------------------------------------------------------------------------- workers
class TaskCancelled(Exception):
    """The run was stopped while this task ran: its results are dropped, never committed."""


#: ``step(message)``: what a task in this process is doing now (reading a file, detecting,
#: classifying), for a status line between its files' commits.
StepCallback = Callable[[str], None]


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise TaskCancelled("stopped")


@contextlib.contextmanager
def _stoppable(predictor: Predictor, stop: threading.Event | None) -> Iterator[None]:
    """Make the classifier give up within one layer once `stop` is set.

    A conv batch of 16 crops takes seconds on a busy CPU and a task's crops tens of
    batches: waiting for the call to end would keep Cancel waiting that long. A forward
    pre-hook on each of the model's modules raises `TaskCancelled` instead. The hooks
    live while this task holds the predictor lock, so they never stop another caller;
    nothing of a cancelled task reaches the store.
    """
    if stop is None:
        yield
        return

    def check(module: Any, args: Any) -> None:
        _check_stop(stop)

    handles = [m.register_forward_pre_hook(check) for m in predictor.model.modules()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class ModelRef:
    """A checkpoint as workers find it: path, and the SHA-256 it must have."""

    path: str
    sha256: str


@dataclass(frozen=True)
class ChunkTask:
    """A few consecutive files of one sample, read, detected and classified together.

    Attributes
    ----------
    files
        The files, in order (all of one sample, already hashed).
    model
        The checkpoint to classify with.
    mc_samples
        MC-dropout passes per specimen.
    device
        "auto", "cpu" or "cuda".
    detection
        Detector settings.
    min_side_px, max_megapixels
        Size limits: smaller or larger images are reported as bad.
    torch_threads
        Threads for torch in the worker process (None: leave torch's default). Worker
        processes sharing a machine split its cores instead of each taking all of them.
    """

    files: tuple[SourceFile, ...]
    model: ModelRef
    mc_samples: int
    device: str
    detection: DetectionParams
    min_side_px: int = DEFAULT_MIN_SIDE_PX
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    torch_threads: int | None = None
    pixel_size_um: float | None = None
    precision: str = "auto"  # the conv path (`BatchConfig.precision`, decided by the client)

    @property
    def sample_id(self) -> str:
        return self.files[0].sample_id

    @property
    def seed(self) -> int:
        """MC-dropout seed of the task: from its files' hashes, so every run of the same
        task draws the same dropout masks wherever it runs.
        """
        digest = hashlib.sha256("".join(f.sha256 for f in self.files).encode()).digest()
        return int.from_bytes(digest[:8], "little") >> 1  # torch seeds are < 2**63


@dataclass
class FileResult:
    """What a worker made of one file.

    Attributes
    ----------
    file
        The file.
    error
        One-line reason when the file could not be used (then nothing else is set).
    note
        What was converted to use it (16-bit scaled to 8 bits, alpha dropped), or "".
    shape
        Shape of the image as read.
    n_objects
        Objects detected (clipped ones and artifacts included).
    specimens
        The counted specimens (whole detections), ``frame_index`` still 0, or None.
    seconds
        Wall time of its reading, detection and share of the classification.
    """

    file: SourceFile
    error: str | None = None
    note: str = ""
    shape: tuple[int, ...] = ()
    n_objects: int = 0
    specimens: SpecimenBatch | None = None
    seconds: float = 0.0
    #: Which backbone made the specimens' kept features (`Predictor.feature_space`).
    feature_space: dict[str, Any] | None = None

    @property
    def n_specimens(self) -> int:
        return 0 if self.specimens is None else len(self.specimens)


# Per process: one Predictor per (checkpoint, sha, device, precision), built on first
# use. A worker process runs many tasks; loading VGG16 (110 MB, ~1 s) once per task would
# dominate.
_PREDICTORS: dict[tuple[str, str, str, str], Predictor] = {}
# A Predictor must not be called concurrently, and the MC seed is set on torch's global
# RNG: tasks of one process (threaded Dask workers, the widget) classify one at a time.
_PREDICT_LOCK = threading.Lock()


def cached_predictor(
    model: ModelRef, device: str, torch_threads: int | None = None, precision: str = "auto"
) -> Predictor:
    """The predictor this process holds for `model` on `device`, loaded on first use.

    Raises ValueError when the checkpoint found at `model.path` is not the one the client
    meant (another SHA-256: a worker on another machine with another file there).
    """
    from napari_foram.classify.predict import Predictor

    key = (model.path, model.sha256, device, precision)
    with _PREDICT_LOCK:
        if key not in _PREDICTORS:
            if torch_threads:
                import torch

                torch.set_num_threads(int(torch_threads))
            predictor = Predictor.from_checkpoint(model.path, device=device, precision=precision)
            if predictor.info.sha256 != model.sha256:
                raise ValueError(
                    f"checkpoint {model.path} has SHA-256 {predictor.info.sha256[:12]}..., "
                    f"expected {model.sha256[:12]}... (a different file on this worker)"
                )
            _PREDICTORS[key] = predictor
        return _PREDICTORS[key]


def warm_up(
    model: ModelRef, device: str, torch_threads: int | None = None, precision: str = "auto"
) -> str:
    """Load the predictor into this process (e.g. on every Dask worker before timing).

    Returns the device it runs on.
    """
    return str(cached_predictor(model, device, torch_threads, precision).device)


def _header_shape(path: Path) -> tuple[int, int] | None:
    """(rows, columns) from an image's header without decoding it, or None if unknown."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.pages[0].shape
                return int(shape[0]), int(shape[1])
        from PIL import Image

        with Image.open(path) as img:
            return int(img.height), int(img.width)
    except Exception:  # any reader error: read_image will give the reason
        return None


def _size_problem(shape: tuple[int, ...], min_side: int, max_mp: float) -> str | None:
    h, w = int(shape[0]), int(shape[1])
    if min(h, w) < min_side:
        return f"too small: {w} x {h} px (a specimen needs >= {min_side} px per side)"
    if h * w > max_mp * 1e6:
        return f"too large: {w} x {h} px = {h * w / 1e6:.0f} MP (limit {max_mp:g} MP)"
    return None


def _load(file: SourceFile, task: ChunkTask) -> tuple[FileResult, np.ndarray | None]:
    """Read and check one file; the image, or a FileResult that says what is wrong."""
    from napari_foram.frames import read_image

    result = FileResult(file)
    header = _header_shape(file.path)
    # Refuse a huge image before decoding it: decoding is where memory runs out.
    if header is not None:
        result.error = _size_problem(header, 1, task.max_megapixels)
        if result.error:
            return result, None
    try:
        image = read_image(file.path, max_megapixels=task.max_megapixels)
    except ValueError as exc:
        # read_image starts its reasons with the path; the report has the file already.
        result.error = one_line(exc).removeprefix(f"{file.path}: ")
        return result, None
    except MemoryError:
        result.error = "too large to load into memory"
        return result, None
    result.shape = tuple(int(s) for s in image.shape)
    problem = _size_problem(image.shape, task.min_side_px, task.max_megapixels)
    if problem is None and path_sha256(file.path) != file.sha256:
        problem = "changed while the batch ran; run again to count it"
    if problem:
        result.error = problem
        return result, None
    notes = []
    if image.dtype != np.uint8:
        notes.append(f"{image.dtype} pixels scaled to 8 bits")
    if image.ndim == 3 and image.shape[2] == 4:
        notes.append("alpha channel dropped")
    result.note = "; ".join(notes)
    return result, image


def concat_specimens(batches: list[SpecimenBatch], n_classes: int) -> SpecimenBatch:
    """One SpecimenBatch of several (an empty one, of the right shapes, for none)."""
    from napari_foram.tally.store import SpecimenBatch

    if not batches:
        return SpecimenBatch(
            frame_index=np.zeros(0, np.int64),
            centroid_y=np.zeros(0),
            centroid_x=np.zeros(0),
            bbox=np.zeros((0, 4), np.int64),
            area_px=np.zeros(0, np.int64),
            mean_probs=np.zeros((0, n_classes)),
        )
    columns: dict[str, Any] = {}
    for f in dataclasses.fields(SpecimenBatch):
        values = [getattr(b, f.name) for b in batches]
        columns[f.name] = None if any(v is None for v in values) else np.concatenate(values)
    return SpecimenBatch(**columns)


def _specimens_of(out: FrameResult) -> SpecimenBatch | None:
    """The counted specimens of a pipeline result as store rows (frame_index still 0)."""
    from napari_foram.tally.columns import specimen_columns
    from napari_foram.tally.store import SpecimenBatch

    rows, pred = out.new_rows, out.predictions
    if pred is None or not len(rows):
        return None
    columns = specimen_columns(out.frame, out.detections, rows, pred)
    columns["frame_index"] = np.zeros(len(rows), dtype=np.int64)  # set by the writer
    return SpecimenBatch(
        # NaN for files (no stage position); a saved scan's frames carry theirs.
        stage_x_um=out.sample_xy_um[rows, 0],
        stage_y_um=out.sample_xy_um[rows, 1],
        features=pred.kept_features,
        **columns,
    )


def run_chunk(
    task: ChunkTask,
    *,
    stop: threading.Event | None = None,
    step: StepCallback | None = None,
) -> list[FileResult]:
    """Read, detect and classify a task's files (what a worker runs); one result per file.

    The readable files go through `CountingPipeline.process_many` together, so their
    crops are classified in one call. A file that cannot be read or is too small or large
    gets an error and is left out. Should the pipeline fail on the batch, each file is
    tried alone so that one odd image cannot sink the others; when every file fails
    alone too, the failure is systematic (model, device) and is raised.

    `stop` (runs in this process): once set, the task gives up between files or within
    one layer of the classifier and raises `TaskCancelled`. `step` hears what the task
    is doing (reading, detecting, classifying) for a status line.
    """
    from napari_foram.frames import Frame
    from napari_foram.pipeline import CountingPipeline

    say = step or (lambda message: None)
    _check_stop(stop)
    if len(task.files) == 1 and is_saved_scan_source(task.files[0]):
        return [_recount_saved_scan(task, stop, say)]
    t0 = time.perf_counter()
    results: list[FileResult] = []
    frames: list[Frame] = []
    owners: list[FileResult] = []
    for i, file in enumerate(task.files):
        _check_stop(stop)
        say(f"{file.name}: reading")
        result, image = _load(file, task)
        results.append(result)
        if image is not None:
            # The detector's minimum size follows the magnification: the size given for
            # the run, else the file's own metadata, else (None) the image decides.
            px = task.pixel_size_um or read_pixel_size(file.path)
            frames.append(Frame(image=image, index=i, source=str(file.path), pixel_size_um=px))
            owners.append(result)
    if not frames:
        return results
    predictor = cached_predictor(task.model, task.device, task.torch_threads, task.precision)
    _check_stop(stop)
    names = ", ".join(owner.file.name for owner in owners)
    say(f"{names}: detecting and classifying")
    with _PREDICT_LOCK, seeded(task.seed, predictor.device), _stoppable(predictor, stop):
        # A fresh pipeline per task: without stage positions it keeps no state that
        # matters between frames, and a task must not depend on what ran before it.
        pipeline = CountingPipeline(
            predictor, detection=task.detection, mc_samples=task.mc_samples, keep_features=True
        )
        outs: list[FrameResult | None]
        try:
            outs = list(pipeline.process_many(frames))
        except TaskCancelled:
            raise
        except Exception as exc:  # isolate the culprit; re-raised if systematic
            log.warning("task of %d files failed (%s); trying them one by one", len(frames), exc)
            outs = []
            for frame, owner in zip(frames, owners, strict=True):
                try:
                    outs.append(pipeline.process(frame))
                except TaskCancelled:
                    raise
                except Exception as one:  # reported as this file's reason
                    owner.error = f"processing failed ({type(one).__name__}: {one_line(one)})"
                    outs.append(None)
            if all(o is None for o in outs):
                raise
    for owner, out in zip(owners, outs, strict=True):
        if out is not None:
            owner.n_objects = len(out.detections)
            owner.specimens = _specimens_of(out)
            # What the detector could not count right (a frame-sized object, a wall over
            # most of the frame) goes into the file's report line, never silent.
            warned = [f"warning: {w}" for w in getattr(out.detections, "warnings", [])]
            owner.note = "; ".join([n for n in (owner.note, *warned) if n])
            owner.feature_space = predictor.feature_space if predictor.keeps_features else None
    # Per-file time: the task's wall time shared in proportion to specimens (the
    # classifier dominates), at least an even share for reading and detection.
    elapsed = time.perf_counter() - t0
    weights = np.array([r.n_specimens + 1.0 for r in results])
    for r, w in zip(results, weights / weights.sum(), strict=True):
        r.seconds = float(elapsed * w)
    return results


def _recount_saved_scan(
    task: ChunkTask, stop: threading.Event | None, say: StepCallback
) -> FileResult:
    """Count a tray scan saved as OME-Zarr as the live scan counted it: its fields in the
    order they were taken, at their stage positions, each specimen once
    (`napari_foram.session.count_saved_scan`); one result, all its specimens.

    The recount writes into a scratch store first, as the live count writes into its
    store: a later, clearly sharper view of a specimen replaces its stored record there
    (`CountingPipeline`'s better views need a store), so the rows handed to the writer are
    the live count's rows.
    """
    import tempfile

    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import count_saved_scan
    from napari_foram.tally.store import SampleRecord, SpecimenBatch, TallyStore

    t0 = time.perf_counter()
    file = task.files[0]
    result = FileResult(file)
    if path_sha256(file.path) != file.sha256:
        result.error = "changed while the batch ran; run again to count it"
        return result
    predictor = cached_predictor(task.model, task.device, task.torch_threads, task.precision)
    n_classes = len(predictor.info.class_names)
    say(f"{file.name}: counting the saved scan")
    with tempfile.TemporaryDirectory(prefix="napari-foram-recount-") as scratch_dir:
        scratch = TallyStore.create(
            Path(scratch_dir) / "recount.zarr", classes=predictor.info.class_names
        )
        try:
            scratch.add_sample(SampleRecord("scan"))
            with _PREDICT_LOCK, seeded(task.seed, predictor.device), _stoppable(predictor, stop):
                pipeline = CountingPipeline(
                    predictor,
                    store=scratch,
                    sample_id="scan",
                    detection=task.detection,
                    mc_samples=task.mc_samples,
                    keep_features=True,
                )
                outs: list[FrameResult] = []
                report = count_saved_scan(pipeline, file.path, on_result=outs.append)
            if report.error is not None:
                result.error = f"cannot read the saved scan ({report.error})"
                return result
            rows = scratch.read_specimens("scan", crops=True)
            features, space = scratch.read_features("scan")
        except (ValueError, OSError, KeyError) as exc:  # an unreadable or odd saved scan
            result.error = f"cannot read the saved scan ({one_line(exc)})"
            return result
        finally:
            scratch.close()
    n = len(rows["frame_index"])
    fields = {f.name for f in dataclasses.fields(SpecimenBatch)} - {"crops", "features"}
    result.specimens = (
        SpecimenBatch(
            **{name: rows[name] for name in fields if name in rows},
            crops=rows["crops"],
            features=features if space is not None and not np.isnan(features).any() else None,
        )
        if n
        else concat_specimens([], n_classes)
    )
    result.feature_space = space
    result.n_objects = sum(len(out.detections) for out in outs)
    result.note = f"saved scan: {report.frames_processed} fields counted at their stage positions"
    result.seconds = time.perf_counter() - t0
    return result
