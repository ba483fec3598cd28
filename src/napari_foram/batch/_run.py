"""Running a batch: the single writer, local tasks (Dask ones: `_dask`), resuming."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import stat
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram._outputs import file_kind
from napari_foram.defaults import MC_SAMPLES
from napari_foram.detect import DetectionParams

from ._dask import _dask_client, _run_dask, max_workers, workers_reason
from ._plan import (
    DEFAULT_FILES_PER_TASK,
    DEFAULT_MAX_MEGAPIXELS,
    DEFAULT_MIN_SIDE_PX,
    BatchPlan,
    FileReport,
    SourceFile,
    _is_image_name,
    is_saved_scan_source,
    path_sha256,
    plan_batch,
)
from ._report import BatchReport, _now_iso, default_report_paths
from ._tasks import (
    ChunkTask,
    FileResult,
    ModelRef,
    StepCallback,
    TaskCancelled,
    cached_predictor,
    concat_specimens,
    run_chunk,
)

if TYPE_CHECKING:
    from distributed import Client

    from napari_foram._progress import ProgressCallback
    from napari_foram.tally.store import SpecimenBatch, TallyStore


# ----------------------------------------------------------------------------- running
@dataclass(frozen=True)
class BatchConfig:
    """Settings of a batch run.

    Attributes
    ----------
    folder
        The folder of images (see `plan_batch`).
    store
        The tally store to create or append to (``*.zarr``).
    model
        A checkpoint path, or "demo" (trained on synthetic data at first use and cached).
    samples_csv
        Optional sample sheet (see `plan_batch`).
    mc_samples
        MC-dropout passes per specimen (1: one deterministic pass).
    device
        "auto", "cpu" or "cuda" (on the workers, for Dask runs).
    workers
        Worker processes of a local Dask cluster; 0 runs everything in this process.
    scheduler
        Address of a running Dask scheduler (``tcp://host:8786``) instead. Its workers
        must import napari_foram and see the folder and checkpoint at the same paths.
    files_per_task
        Consecutive files of a sample classified together (one task, one commit).
    detection
        Detector settings.
    min_side_px, max_megapixels
        Smaller or larger images are reported as bad.
    pixel_size_um
        Micrometres per pixel of every image (None: each file's metadata, else the
        detector derives its minimum size from the image).
    report
        The report's JSON path (its CSV beside it); None: `default_report_paths`.
    export
        Also write the store's wide count sheet (CSV) here at the end.
    precision
        The conv blocks' compute path: "auto" (decided once, in this process, for the
        whole run: `napari_foram.classify.precision`), "fp32", "bf16" or "int8".
    """

    folder: Path
    store: Path
    model: str | Path = "demo"
    samples_csv: Path | None = None
    mc_samples: int = MC_SAMPLES
    device: str = "auto"
    workers: int = 0
    scheduler: str | None = None
    files_per_task: int = DEFAULT_FILES_PER_TASK
    detection: DetectionParams = field(default_factory=DetectionParams)
    min_side_px: int = DEFAULT_MIN_SIDE_PX
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    report: Path | None = None
    export: Path | None = None
    pixel_size_um: float | None = None
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {self.mc_samples}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.workers > max_workers():
            raise ValueError(workers_reason(self.workers))
        px = self.pixel_size_um
        if px is not None and not (math.isfinite(px) and px > 0):
            raise ValueError(f"pixel_size_um must be a positive number, got {px}")
        if self.workers and self.scheduler:
            raise ValueError("give either workers (a local cluster) or a scheduler, not both")
        if self.files_per_task < 1:
            raise ValueError(f"files_per_task must be >= 1, got {self.files_per_task}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, not {self.device!r}")
        if self.precision not in ("auto", "fp32", "bf16", "int8"):
            raise ValueError(f"precision must be auto, fp32, bf16 or int8, not {self.precision!r}")

    def report_paths(self) -> tuple[Path, Path]:
        """(JSON, CSV) paths of the report."""
        if self.report is None:
            return default_report_paths(self.store)
        if Path(self.report).is_dir():  # a folder: the default names, in that folder
            json_path, csv_path = default_report_paths(self.store)
            return Path(self.report) / json_path.name, Path(self.report) / csv_path.name
        return Path(self.report), Path(self.report).with_suffix(".csv")

    def check_outputs(self, plan: BatchPlan | None = None) -> None:
        """ValueError (one line) unless the report and the count sheet can be written:
        checked before any work, so a count is never lost to a bad output path.

        None of them may replace an input (an image of `plan`, the sample sheet, the
        checkpoint), lie inside the store or any tally store, be a FIFO or device, or
        sit in the batch folder under a name the next run would read as an image.
        """
        from napari_foram._outputs import check_distinct, check_output_file

        json_path, csv_path = self.report_paths()
        outputs: list[tuple[Path, str]] = [
            (json_path, "batch report"),
            (csv_path, "batch report (CSV)"),
        ]
        if self.export is not None:
            outputs.append((Path(self.export), "count sheet"))
        # The store's folder counts whether or not it exists yet: it will.
        inputs: list[Path] = [Path(self.store)]
        if self.samples_csv is not None:
            inputs.append(Path(self.samples_csv))
        if str(self.model) != "demo":
            inputs.append(Path(self.model))
        if plan is not None:
            inputs.extend(f.path for f in plan.files)
        for path, what in outputs:
            check_output_file(path, what, inputs=inputs)
            if plan is not None:
                _refuse_frame_name(path, plan.folder, what)
        check_distinct(outputs)


def _refuse_frame_name(path: Path, folder: Path, what: str) -> None:
    """ValueError if `path` lies in the batch folder under a name that a later run of the
    same folder would read as an image (it would be counted as a frame).
    """
    real = Path(os.path.realpath(path))
    try:
        rel = real.relative_to(Path(os.path.realpath(folder)))
    except ValueError:
        return
    hidden = any(part.startswith(".") for part in rel.parts)
    in_store = any(part.lower().endswith(".zarr") for part in rel.parts[:-1])
    if not hidden and not in_store and _is_image_name(rel.as_posix()):
        raise ValueError(
            f"{path}: the {what} would lie in the batch folder {folder} under an image "
            "name; the next run would read it as a frame"
        )


def _done_message(line: FileReport) -> str:
    """The status line of a file just committed."""
    if line.status == "processed":
        return f"{line.file}: counted, {line.n_specimens} specimen(s)"
    return f"{line.file}: {line.status} ({line.reason})" if line.reason else line.file


#: Called after each file is done: its report line, and what the worker made of it
#: (None for files skipped without reading).
FileCallback = Callable[[FileReport, FileResult | None], None]


def resolve_checkpoint(
    model: str | os.PathLike[str], progress: ProgressCallback | None = None
) -> Path:
    """The checkpoint file of `model`: a path, or the cached demo model for "demo"
    (trained at first use, reporting through `progress`): `classify.loading.checkpoint_file`.
    """
    from napari_foram.classify.loading import checkpoint_file

    return checkpoint_file(model, progress)


@contextlib.contextmanager
def _writes_shielded(stop: threading.Event) -> Iterator[None]:
    """Hold Ctrl-C off while the store is written; it then stops the run after the write.

    The store survives a kill at any moment, but a KeyboardInterrupt raised while zarr's
    I/O thread still writes would let this process trim the arrays under that write.
    Signal handlers belong to the main thread; elsewhere (the widget) nothing is needed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def later(signum: int, frame: object) -> None:
        stop.set()

    previous = signal.signal(signal.SIGINT, later)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Writer:
    """The single writer: commits task results to the store in order, reports each file."""

    def __init__(
        self,
        store: TallyStore,
        plan: BatchPlan,
        provenance: dict[str, Any],
        report: BatchReport,
        stop: threading.Event,
    ) -> None:
        self.store = store
        self.plan = plan
        self.provenance = provenance
        self.report = report
        self.stop = stop
        # Frame index of the next file of each sample: the files it already holds come
        # first, so indices stay unique across resumed runs.
        self._next_frame: dict[str, int] = {}

    def _open_sample(self, sid: str) -> None:
        """Create the sample on first use; record how its rows are made when that changed."""
        if sid in self._next_frame:
            return
        record = self.plan.records[sid]
        with _writes_shielded(self.stop):
            if sid not in self.store.samples():
                self.store.add_sample(record)
            elif self.store.sample_record(sid) != record:
                self.report.notes.append(
                    f"sample {sid} already exists in the store with another record; "
                    "the stored record is kept"
                )
            latest = self.store.provenance(sid)
            # An earlier model's rule must not stand for this model (which has none).
            stale_rule = "unsure_rule" in latest and "unsure_rule" not in self.provenance
            if stale_rule or any(latest.get(k) != v for k, v in self.provenance.items()):
                self.store.set_provenance(sid, self.provenance)
        self._next_frame[sid] = len(self.store.processed_files(sid))

    def commit(self, task: ChunkTask, results: list[FileResult]) -> list[FileReport]:
        """Commit a task's files (one atomic commit); their report lines."""
        sid = task.sample_id
        good = [r for r in results if r.error is None]
        lines: dict[int, FileReport] = {}
        if good:
            self._open_sample(sid)
            first_frame = self._next_frame[sid]
            row = self.store.n_specimens(sid)
            processed: dict[str, dict[str, Any]] = {}
            batches: list[SpecimenBatch] = []
            for i, r in enumerate(good):
                n = r.n_specimens
                processed[r.file.sha256] = {
                    "file": r.file.name,
                    "path": str(r.file.path),
                    "frame_index": first_frame + i,
                    "first_row": row,
                    "n_specimens": n,
                }
                if r.specimens is not None:
                    batches.append(
                        dataclasses.replace(
                            r.specimens, frame_index=np.full(n, first_frame + i, np.int64)
                        )
                    )
                row += n
                lines[id(r)] = FileReport(
                    r.file.name, sid, "processed", r.note, r.file.sha256, n, first_frame + i,
                    round(r.seconds, 3),
                )  # fmt: skip
            model_classes = self.provenance.get("class_names") or self.store.class_names
            where = self.store.class_map(model_classes)
            batch = concat_specimens(batches, len(model_classes))
            batch = batch.in_classes(where, len(self.store.class_names))
            spaces = [r.feature_space for r in good if r.n_specimens]
            space = spaces[0] if spaces and all(s == spaces[0] for s in spaces) else None
            with _writes_shielded(self.stop):
                self.store.append_specimens(sid, batch, processed=processed, feature_space=space)
            self._next_frame[sid] = first_frame + len(good)
        out = []
        for r in results:
            line = lines.get(id(r)) or FileReport(
                r.file.name, sid, "bad", r.error or "", r.file.sha256, seconds=round(r.seconds, 3)
            )
            out.append(line)
        return out


def _triage(
    plan: BatchPlan,
    store: TallyStore,
    damaged: dict[str, str],
    stop: threading.Event | None = None,
    step: StepCallback | None = None,
) -> tuple[dict[str, list[SourceFile]], dict[str, FileReport]]:
    """Hash every file; what is left to do per sample, and the report lines of the files
    settled already (empty, unreadable, same bytes as another, already in the store).

    Hashing a large folder takes a while: `step` hears every file, and a set `stop`
    ends it (`TaskCancelled`) before anything is written.
    """
    todo: dict[str, list[SourceFile]] = {sid: [] for sid in plan.records}
    settled: dict[str, FileReport] = {}
    samples = set(store.samples())
    n_files, checked = len(plan.files), 0
    for sid in plan.records:
        if sid in damaged:
            # A damaged sample is never written to (writing could lose what is left of
            # it): its files wait, the other samples are counted.
            why = f"sample {sid} is damaged ({damaged[sid]}); nothing written to it"
            for f in plan.files_of(sid):
                settled[f.name] = FileReport(f.name, sid, "skipped", why)
            continue
        done = store.processed_files(sid) if sid in samples else {}
        seen: dict[str, str] = {}
        for f in plan.files_of(sid):
            if stop is not None and stop.is_set():
                raise TaskCancelled("stopped")
            checked += 1
            if step is not None:
                step(f"checking the files against the store: {checked}/{n_files}")
            try:
                st = f.path.stat()
                # A FIFO or a device (e.g. a link to /dev/zero) is never read: hashing it
                # would block or never end. Saved scans are folders.
                if not (stat.S_ISREG(st.st_mode) or is_saved_scan_source(f)):
                    why = f"not a regular file ({file_kind(st.st_mode)})"
                    settled[f.name] = FileReport(f.name, sid, "bad", why)
                    continue
                size = st.st_size
                digest = path_sha256(f.path) if size else ""
            except FileNotFoundError:
                settled[f.name] = FileReport(f.name, sid, "bad", "no such file")
                continue
            except OSError as exc:
                settled[f.name] = FileReport(f.name, sid, "bad", f"cannot read file ({exc})")
                continue
            if not size:
                settled[f.name] = FileReport(f.name, sid, "bad", "empty file (0 bytes)")
            elif digest in done:
                earlier = done[digest]
                why = f"already in the store (as {earlier.get('file')})"
                frame = int(earlier.get("frame_index", -1))
                settled[f.name] = FileReport(f.name, sid, "skipped", why, digest, 0, frame)
            elif digest in seen:
                settled[f.name] = FileReport(
                    f.name, sid, "skipped", f"same content as {seen[digest]}", digest
                )
            else:
                seen[digest] = f.name
                todo[sid].append(dataclasses.replace(f, sha256=digest))
    return todo, settled


def _tasks(
    plan: BatchPlan,
    todo: dict[str, list[SourceFile]],
    config: BatchConfig,
    ref: ModelRef,
    threads: int | None,
) -> list[ChunkTask]:
    """Tasks of up to `files_per_task` consecutive files of one sample.

    Tasks are cut from a sample's *whole* file list and then thinned to the files left to
    do: a task committed before an interruption is skipped whole, and the others hold the
    same files as in an uninterrupted run.
    """
    tasks = []
    size = config.files_per_task
    for sid in plan.records:
        left = {f.name: f for f in todo[sid]}
        everything = plan.files_of(sid)
        # Runs of image files, cut every `size` files; a saved scan is a task of its own
        # (its frames are counted together, at their stage positions).
        groups: list[list[SourceFile]] = []
        for f in everything:
            if is_saved_scan_source(f) or not groups or len(groups[-1]) == size:
                groups.append([f])
            else:
                groups[-1].append(f)
            if is_saved_scan_source(f):
                groups.append([])
        for group in groups:
            files = tuple(left[f.name] for f in group if f.name in left)
            if files:
                tasks.append(
                    ChunkTask(
                        files=files,
                        model=ref,
                        mc_samples=config.mc_samples,
                        device=config.device,
                        detection=config.detection,
                        min_side_px=config.min_side_px,
                        max_megapixels=config.max_megapixels,
                        torch_threads=threads,
                        pixel_size_um=config.pixel_size_um,
                        precision=config.precision,
                    )
                )
    return tasks


def _run_local(
    tasks: Iterable[ChunkTask],
    stop: threading.Event,
    abandoned: list[str],
    step: StepCallback | None = None,
) -> Generator[tuple[ChunkTask, list[FileResult]], None, None]:
    """Tasks one after another in this process, until `stop` is set.

    A task under way when `stop` is set gives up (`run_chunk`), within a layer of the
    classifier; its files go to `abandoned` and nothing of them is committed.
    """
    for task in tasks:
        if stop.is_set():
            return
        try:
            results = run_chunk(task, stop=stop, step=step)
        except TaskCancelled:
            abandoned.extend(f.name for f in task.files)
            return
        yield task, results


def _open_store(path: Path, classes: list[str]) -> TallyStore:
    """The store to append to (created with the model's classes if missing). An existing
    store keeps its classes: the model's are matched to them by name, and those it lacks
    are added at the end (never matched by position).
    """
    from napari_foram.tally.store import TallyStore

    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a tally store folder")
    if path.is_dir() and any(path.iterdir()):
        store = TallyStore.open(path, mode="a")
        try:
            store.add_classes([c for c in classes if c not in store.class_names])
        except BaseException:
            store.close()
            raise
        return store
    return TallyStore.create(path, classes=classes)


def run_batch(
    config: BatchConfig,
    *,
    progress: ProgressCallback | None = None,
    on_file: FileCallback | None = None,
    stop: threading.Event | None = None,
    client: Client | None = None,
) -> BatchReport:
    """Count a folder of images into a tally store; resumable, optionally on Dask.

    Parameters
    ----------
    config
        What to run (see `BatchConfig`).
    progress
        ``progress(done, total, message)``: with ``total`` 0, a stage before counting
        (reading the model, the demo model's first-run training, hashing the files,
        starting workers); then after each file (``total``: files left to do at the
        start), and what the file under way is at (reading, classifying).
    on_file
        Called after each file with its report line and the worker's result (on the
        thread that runs the batch).
    stop
        Set it to stop: a task under way in this process gives up within a layer of the
        classifier (Dask tasks under way are cancelled) and nothing of it is written;
        what was committed before stays. The report lists the files left
        (``not_counted``), those dropped in flight among them (``abandoned``).
    client
        A Dask client to use instead of what `config` asks for (kept open).

    Returns
    -------
    BatchReport
        Also written as JSON and CSV (`BatchConfig.report_paths`). Ctrl-C (a
        KeyboardInterrupt) ends the run like `stop` does: the report says interrupted.

    Raises
    ------
    ValueError
        Bad folder, sample sheet, model or store (one-line reasons); a failure of the
        classifier itself. Odd image files never raise: they are reported.
    """
    from napari_foram.classify.checkpoint import read_model_info
    from napari_foram.classify.predict import choice_for_checkpoint
    from napari_foram.tally.columns import model_provenance

    t_start = time.perf_counter()
    stop = stop or threading.Event()

    def notify(done: int, total: int, message: str = "") -> None:
        if progress is not None:
            progress(done, total, message)

    def stage(message: str) -> None:
        """A status line before the files are counted (no file count yet), and the
        point where a stop set meanwhile ends the run: nothing is written before it.
        """
        if stop.is_set():
            raise TaskCancelled("stopped")
        notify(0, 0, message)

    def training(done: int, total: int, message: str = "") -> None:
        stage(f"demo model: {message}")

    def calibrating(done: int, total: int, message: str = "") -> None:
        # A first-use calibration of the CPU paths (cached after): stoppable too.
        stage(f"measuring the CPU's compute paths (first use): {message}")

    stage("reading the folder")
    plan = plan_batch(config.folder, config.samples_csv)
    config.check_outputs(plan)
    report = BatchReport(str(plan.folder), str(config.store), str(config.model), "")
    report.started = _now_iso()
    report.files.extend(plan.ignored)
    try:
        stage("reading the model")
        checkpoint = resolve_checkpoint(config.model, progress=training)
        info = read_model_info(checkpoint)
        ref = ModelRef(str(checkpoint), path_sha256(checkpoint))
        report.model_sha256 = ref.sha256
        # The compute path, decided here once (a first-use CPU calibration runs once, not
        # in every worker) and handed to the workers, so the provenance says what counted.
        stage("choosing the compute path")
        precision = choice_for_checkpoint(
            checkpoint,
            device=config.device,
            precision=config.precision,
            progress=calibrating,
        ).path
    except TaskCancelled:
        # Stopped before the store was opened: nothing written, everything left to do.
        report.interrupted = True
        report.not_counted = [f.name for f in plan.files]
        report.seconds = round(time.perf_counter() - t_start, 3)
        report.write(*config.report_paths())
        return report
    config = dataclasses.replace(config, precision=precision)
    provenance = {
        "source": "batch folder",
        "folder": str(plan.folder),
        "model_sha256": ref.sha256,
        "class_names": list(info.class_names),
        "mc_samples": config.mc_samples,
        "detector": config.detection.to_dict(),
        "include_clipped": False,
        "counted_per_frame": True,
        "why": "image files carry no stage position: each file's whole specimens are counted",
        # Backbone, input convention and unsure rule, as the counting pipeline records them.
        **model_provenance(info),
        "classify_precision": precision,
    }
    notify(0, 0, "opening the store")
    store = _open_store(Path(config.store), list(info.class_names))
    new: dict[str, int] = {}
    todo: dict[str, list[SourceFile]] = {}
    abandoned: list[str] = []
    finished = False  # the loop ended without an error (interrupted or not)
    try:
        # Checked once per run (it stats every chunk file of every sample).
        damaged = store.damaged_samples()
        todo, settled = _triage(plan, store, damaged, stop, lambda message: notify(0, 0, message))
        for sid in plan.records:
            if sid in damaged:
                report.damaged_samples[sid] = damaged[sid]
                report.notes.append(
                    f"sample {sid} is damaged ({damaged[sid]}): its files were not counted "
                    f"and it is left as it is; 'napari-foram check {config.store}' lists the "
                    "damage, --repair sets it aside"
                )
        total = sum(len(v) for v in todo.values())
        done = 0
        writer = _Writer(store, plan, provenance, report, stop)
        # Lines of files settled without reading go in the report in plan order.
        report.files.extend(settled[f.name] for f in plan.files if f.name in settled)
        if on_file is not None:
            for f in plan.files:
                if f.name in settled:
                    on_file(settled[f.name], None)

        def step(message: str) -> None:
            notify(done, total, message)

        if total and not config.workers and not config.scheduler and client is None:
            # Loaded here, with a status line, rather than unannounced in the first file.
            stage("loading the model")
            cached_predictor(ref, config.device, None, config.precision)
        elif total and client is None:
            stage(
                f"starting {config.workers} Dask workers"
                if config.workers
                else f"connecting to the Dask scheduler at {config.scheduler}"
            )
        with _dask_client(config, client) as (dask, threads):
            tasks = _tasks(plan, todo, config, ref, threads)
            notify(0, total, f"{total} files to count, {len(settled)} settled already")
            results = (
                _run_local(tasks, stop, abandoned, step)
                if dask is None
                else _run_dask(dask, tasks, stop, abandoned)
            )
            try:
                for task, file_results in results:
                    lines = writer.commit(task, file_results)
                    for line, result in zip(lines, file_results, strict=True):
                        report.files.append(line)
                        new[line.sample_id] = new.get(line.sample_id, 0) + line.n_specimens
                        done += 1
                        if on_file is not None:
                            on_file(line, result)
                        notify(done, total, _done_message(line))
                    if stop.is_set():
                        break
            finally:
                results.close()  # a Dask window cancels the futures it still holds
        report.interrupted = done < total
        finished = True
    except (KeyboardInterrupt, TaskCancelled):
        report.interrupted = finished = True
    finally:
        try:
            reported = {line.file for line in report.files}
            report.abandoned = abandoned
            if report.interrupted:
                left = [f.name for files in todo.values() for f in files]
                # Stopped before the triage ended: every file not settled is left.
                left = left or [f.name for f in plan.files]
                report.not_counted = [name for name in left if name not in reported]
            stored = set(store.samples())
            for sid in plan.records:
                if sid in stored and sid not in report.damaged_samples:
                    total_counted = int(store.counts(sid).sum())
                    report.samples[sid] = {"new": new.get(sid, 0), "total": total_counted}
                    if store.unsure_rule(sid).active:
                        # Of the total, those the model's unsure rule puts in no class.
                        unsure = store.sample_summary(sid)["n_unsure"]
                        report.samples[sid]["unsure"] = int(unsure)
            if config.export is not None and finished:
                from napari_foram.tally.export import export_csv

                # Damaged samples are left out (their counts cannot be trusted); the
                # report's note and summary name them.
                healthy = [sid for sid in store.samples() if sid not in report.damaged_samples]
                report.export_csv = str(export_csv(store, config.export, samples=healthy))
        finally:
            store.close()
            # Report lines in plan order: ignored files first, then file by file.
            order = {f.name: i for i, f in enumerate(plan.files)}
            report.files.sort(key=lambda line: order.get(line.file, -1))
            report.seconds = round(time.perf_counter() - t_start, 3)
            report.write(*config.report_paths())
    return report
