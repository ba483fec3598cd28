"""Batch folders: count a folder of microscope images into a tally store, resumably.

The folder's layout says which sample each image belongs to::

    FOLDER/                     images directly in FOLDER form one sample named FOLDER
      S1/  tray1.tif ...        every subfolder is one sample (images below it, any depth)
      S2/  a.png  b.png ...

or a sample sheet (CSV) maps files to samples, with their count-sheet fields: columns
``file`` (relative to FOLDER, or absolute) and ``sample_id``, plus any `SampleRecord` field
(``depth``, ``depth_unit``, ``dry_weight_g``, ...).

Every file goes through the same counting code as a tray scan (`CountingPipeline`:
detection, then VGG16 + MC dropout); files carry no stage position, so each file's whole
specimens are counted (files are taken to show different specimens). One writer, this
process, appends the results to a `TallyStore` in a fixed order: samples in plan order,
files in natural name order (``tray2`` before ``tray10``), or in sample-sheet order.

Resuming. Each file's SHA-256 is committed in the same atomic attrs write as its specimens
(`TallyStore.append_specimens(..., processed=...)`), files without specimens included. A
rerun skips the files a sample already holds, so a run killed at any moment and started
again ends with exactly the tallies of an uninterrupted run. Files are classified in
*tasks* of a few consecutive files of one sample (crops of all of them in one classifier
call: a GPU wants hundreds of crops per call); a task is committed as one commit and its
MC-dropout masks are seeded from its files' hashes, so a resumed run, a local run and a
Dask run compute every task alike.

Odd files (corrupt, empty, not an image, too small, too large) are listed in the report
with a one-line reason and never stop the run; 16-bit and RGBA images are converted, as
`napari_foram.frames` defines.

Scale-out: with a `dask.distributed` client (a `LocalCluster` of worker processes, or an
existing scheduler), workers read, detect and classify (each builds its `Predictor` once
and keeps it); results come back to this process, which commits them in the same fixed
order as a local run.

Qt-free: the CLI (`napari-foram batch`) and the widget (`widgets/batch.py`) drive it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from napari_foram.defaults import MC_SAMPLES
from napari_foram.detect import DetectionParams
from napari_foram.frames import IMAGE_SUFFIXES
from napari_foram.pixelsize import read_pixel_size

if TYPE_CHECKING:
    import torch
    from distributed import Client

    from napari_foram._progress import ProgressCallback
    from napari_foram.classify.predict import Predictor
    from napari_foram.pipeline import FrameResult
    from napari_foram.tally.store import SampleRecord, SpecimenBatch, TallyStore

#: Status of a file in the report.
FileStatus = Literal["processed", "skipped", "bad", "ignored"]
#: Files per task by default: a few 5 MP frames give a CPU enough work to amortise a
#: task's overhead and a GPU a few hundred crops per classifier call.
DEFAULT_FILES_PER_TASK = 4
#: Images with a shorter side below this cannot hold a specimen the detector keeps (its
#: default minimum area, 1024 px, is a 36 px disc) and are reported as too small.
DEFAULT_MIN_SIDE_PX = 64
#: Larger images are reported rather than loaded: detection needs several full-size
#: working copies (a 150 MP RGB frame is ~450 MB as uint8).
DEFAULT_MAX_MEGAPIXELS = 150.0
#: Sample-sheet columns besides the `SampleRecord` fields.
SHEET_FILE_COLUMN = "file"
SHEET_SAMPLE_COLUMN = "sample_id"

_SAMPLE_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class SourceFile:
    """One image file of a batch.

    Attributes
    ----------
    path
        Absolute path.
    name
        The name recorded in the store and the report: the path relative to the batch
        folder (POSIX separators), or the path as given for files outside it.
    sample_id
        The sample it belongs to.
    sha256
        Hex digest of its bytes ("" until hashed).
    """

    path: Path
    name: str
    sample_id: str
    sha256: str = ""


@dataclass(frozen=True)
class FileReport:
    """One line of the batch report.

    Attributes
    ----------
    file
        `SourceFile.name`.
    sample_id
        Its sample ("" for files that belong to none).
    status
        "processed" (counted in this run), "skipped" (already in the store, or the same
        bytes as another file of the sample), "bad" (could not be used) or "ignored" (not
        an image file type, a label or mask image, or not listed in the sample sheet).
    reason
        One line: why it was skipped, bad or ignored; for processed files, what was
        converted (16-bit, alpha), else "".
    sha256
        Hex digest of its bytes, when known.
    n_specimens
        Specimens counted from it in this run.
    frame_index
        The ``frame_index`` its specimens carry in the store (-1: none).
    seconds
        Worker time spent on it (reading, detection, its share of classification).
    """

    file: str
    sample_id: str
    status: FileStatus
    reason: str = ""
    sha256: str = ""
    n_specimens: int = 0
    frame_index: int = -1
    seconds: float = 0.0


@dataclass
class BatchPlan:
    """What a folder (and its sample sheet) holds, in processing order.

    Attributes
    ----------
    folder
        The batch folder (absolute).
    records
        Sample id -> the record a new sample gets, in processing order.
    files
        Candidate image files, grouped by sample, in processing order.
    ignored
        Files that are not candidates (not an image type, or not in the sample sheet).
    """

    folder: Path
    records: dict[str, SampleRecord]
    files: list[SourceFile]
    ignored: list[FileReport] = field(default_factory=list)

    def files_of(self, sample_id: str) -> list[SourceFile]:
        """The candidate files of one sample, in order."""
        return [f for f in self.files if f.sample_id == sample_id]


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that orders embedded numbers by value: ``tray2`` before ``tray10``.

    Case-insensitive first, the text itself breaking ties, so the order is total and the
    same on every platform.
    """
    parts = re.split(r"(\d+)", text.lower())
    # re.split with a group alternates text and digit runs, so position i always holds the
    # same kind in every key and int/str are never compared.
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), text)


def safe_sample_id(name: str) -> str:
    """A folder name as a valid sample id: unsafe characters become ``_``.

    Sample ids name directories in the store (letters, digits, ``.``, ``_``, ``-``,
    starting with a letter or digit, at most 128 characters).
    """
    sid = _SAMPLE_ID_UNSAFE.sub("_", name.strip()).lstrip("._-")[:128]
    return sid or "sample"


def _walk(folder: Path) -> list[str]:
    """Relative POSIX paths of the files below `folder`, hidden entries and ``*.zarr``
    stores left out (the output store may well sit inside the folder)."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [
            d for d in dirnames if not d.startswith(".") and not d.lower().endswith(".zarr")
        ]
        rel = Path(dirpath).relative_to(folder)
        for fname in filenames:
            if not fname.startswith("."):
                found.append((rel / fname).as_posix())
    return found


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


#: Why `plan_batch` leaves out label and mask images (status "ignored", this reason).
LABEL_IMAGE_REASON = "label image"


def is_label_image_name(name: str) -> bool:
    """True for a ground-truth label or mask image beside the frames it describes.

    ``napari-foram synth`` writes ``tray_000_labels.png`` (or ``.tif``) beside
    ``tray_000.png``, and segmentation tools commonly write ``*_mask*`` files: counted as
    frames they add black images (and, at worst, their label values as "specimens"), so a
    folder plan leaves them out. A file stem ending in ``_labels`` / ``_label`` or holding
    ``_mask`` (any case) is one.

    Parameters
    ----------
    name
        A file name or relative path; only its last component is looked at, so a
        sample folder called ``masks`` does not hide its frames.
    """
    stem = Path(name).stem.lower()
    return stem.endswith(("_labels", "_label")) or "_mask" in stem


def plan_batch(
    folder: str | os.PathLike[str], samples_csv: str | os.PathLike[str] | None = None
) -> BatchPlan:
    """List a batch folder's images and their samples, in processing order (no reading).

    Parameters
    ----------
    folder
        The folder of images: subfolders are samples (images directly inside it form one
        sample named after it), unless `samples_csv` says otherwise.
    samples_csv
        A sample sheet: columns ``file`` and ``sample_id`` plus any `SampleRecord` field.
        Only the files it lists are counted, in its row order (grouped by sample).

    Raises
    ------
    ValueError
        Missing folder, unreadable or inconsistent sample sheet, folder names that map to
        the same sample id (one-line reasons).
    """
    from napari_foram.tally.store import SampleRecord

    root = Path(folder).expanduser()
    if not root.exists():
        raise ValueError(f"{root}: no such folder")
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    root = root.resolve()
    names = sorted(_walk(root), key=natural_key)
    if samples_csv is not None:
        return _plan_from_sheet(root, Path(samples_csv).expanduser(), names)

    own_id = safe_sample_id(root.name)
    by_sample: dict[str, list[str]] = {}
    raw_of: dict[str, str] = {}
    ignored: list[FileReport] = []
    for name in names:
        parts = name.split("/")
        raw = parts[0] if len(parts) > 1 else root.name
        sid = safe_sample_id(raw) if len(parts) > 1 else own_id
        if not _is_image_name(name):
            suffix = Path(name).suffix or "no suffix"
            ignored.append(FileReport(name, sid, "ignored", f"not an image file type ({suffix})"))
            continue
        if is_label_image_name(name):
            # Ground truth written beside the frames (e.g. by `napari-foram synth`), not a
            # frame; a sample sheet that lists one still counts it (the user asked).
            ignored.append(FileReport(name, sid, "ignored", LABEL_IMAGE_REASON))
            continue
        if raw_of.setdefault(sid, raw) != raw:
            raise ValueError(
                f"folders {raw_of[sid]!r} and {raw!r} both map to sample id {sid!r}; "
                "rename one, or map files with --samples"
            )
        by_sample.setdefault(sid, []).append(name)
    # The folder's own images first, then the subfolders in natural order.
    order = sorted(by_sample, key=lambda s: (s != own_id, natural_key(raw_of[s])))
    files = [SourceFile(root / n, n, sid) for sid in order for n in by_sample[sid]]
    records = {sid: SampleRecord(sample_id=sid) for sid in order}
    return BatchPlan(root, records, files, ignored)


def _plan_from_sheet(root: Path, sheet: Path, names: list[str]) -> BatchPlan:
    """`plan_batch` from a sample sheet."""
    from napari_foram.tally.store import SampleRecord

    record_fields = [f.name for f in dataclasses.fields(SampleRecord)]
    try:
        with sheet.open(encoding="utf-8-sig", newline="") as fh:  # -sig: Excel's BOM
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    except FileNotFoundError:
        raise ValueError(f"{sheet}: no such sample sheet") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{sheet}: cannot read the sample sheet ({exc})") from None
    missing = [c for c in (SHEET_FILE_COLUMN, SHEET_SAMPLE_COLUMN) if c not in header]
    if missing:
        raise ValueError(f"{sheet}: missing column(s) {', '.join(missing)}")
    unknown = [c for c in header if c and c not in (SHEET_FILE_COLUMN, *record_fields)]
    if unknown:
        raise ValueError(
            f"{sheet}: unknown column(s) {', '.join(unknown)}; expected file, sample_id "
            "and sample-record fields"
        )

    fields_of: dict[str, dict[str, str]] = {}
    listed: dict[str, SourceFile] = {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        if not any(row.values()):
            continue  # a blank line
        given, sid = row.get(SHEET_FILE_COLUMN, ""), row.get(SHEET_SAMPLE_COLUMN, "")
        if not given or not sid:
            raise ValueError(f"{sheet}, line {line}: file and sample_id must not be empty")
        path = Path(given).expanduser()
        path = (path if path.is_absolute() else root / path).resolve()
        try:
            name = path.relative_to(root).as_posix()
        except ValueError:
            name = str(path)  # outside the folder: recorded by its absolute path
        if name in listed:
            raise ValueError(f"{sheet}, line {line}: {given} is listed twice")
        merged = fields_of.setdefault(sid, {})
        for key in record_fields:
            value = row.get(key, "")
            if not value or key == SHEET_SAMPLE_COLUMN:
                continue
            if merged.setdefault(key, value) != value:
                raise ValueError(
                    f"{sheet}, line {line}: sample {sid}: {key} {value!r} differs from "
                    f"{merged[key]!r} on an earlier line"
                )
        listed[name] = SourceFile(path, name, sid)

    records: dict[str, SampleRecord] = {}
    for sid, values in fields_of.items():
        try:
            records[sid] = SampleRecord.from_dict({"sample_id": sid, **values})
        except ValueError as exc:
            raise ValueError(f"{sheet}: sample {sid}: {exc}") from None
    files = [f for sid in records for f in listed.values() if f.sample_id == sid]
    ignored = [
        FileReport(n, "", "ignored", "not in the sample sheet")
        for n in names
        if n not in listed and _is_image_name(n)
    ]
    return BatchPlan(root, records, files, ignored)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file's bytes (read in 1 MB blocks)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- workers
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

    @property
    def sample_id(self) -> str:
        return self.files[0].sample_id

    @property
    def seed(self) -> int:
        """MC-dropout seed of the task: from its files' hashes, so every run of the same
        task draws the same dropout masks wherever it runs."""
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

    @property
    def n_specimens(self) -> int:
        return 0 if self.specimens is None else len(self.specimens)


# Per process: one Predictor per (checkpoint, sha, device), built on first use. A worker
# process runs many tasks; loading VGG16 (110 MB, ~1 s) once per task would dominate.
_PREDICTORS: dict[tuple[str, str, str], Predictor] = {}
# A Predictor must not be called concurrently, and the MC seed is set on torch's global
# RNG: tasks of one process (threaded Dask workers, the widget) classify one at a time.
_PREDICT_LOCK = threading.Lock()


def cached_predictor(model: ModelRef, device: str, torch_threads: int | None = None) -> Predictor:
    """This process's predictor for `model` on `device`, loaded on first use.

    Raises ValueError when the checkpoint found at `model.path` is not the one the client
    meant (another SHA-256: a worker on another machine with another file there).
    """
    from napari_foram.classify.predict import Predictor

    key = (model.path, model.sha256, device)
    with _PREDICT_LOCK:
        if key not in _PREDICTORS:
            if torch_threads:
                import torch

                torch.set_num_threads(int(torch_threads))
            predictor = Predictor.from_checkpoint(model.path, device=device)
            if predictor.info.sha256 != model.sha256:
                raise ValueError(
                    f"checkpoint {model.path} has SHA-256 {predictor.info.sha256[:12]}..., "
                    f"expected {model.sha256[:12]}... (a different file on this worker)"
                )
            _PREDICTORS[key] = predictor
        return _PREDICTORS[key]


def warm_up(model: ModelRef, device: str, torch_threads: int | None = None) -> str:
    """Load the predictor into this process (e.g. on every Dask worker before timing).

    Returns the device it runs on.
    """
    return str(cached_predictor(model, device, torch_threads).device)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
        result.error = _one_line(exc).removeprefix(f"{file.path}: ")
        return result, None
    except MemoryError:
        result.error = "too large to load into memory"
        return result, None
    result.shape = tuple(int(s) for s in image.shape)
    problem = _size_problem(image.shape, task.min_side_px, task.max_megapixels)
    if problem is None and file_sha256(file.path) != file.sha256:
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


@contextlib.contextmanager
def _seeded_torch(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG for the block, restoring the caller's state afterwards."""
    import torch

    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _specimens_of(out: FrameResult) -> SpecimenBatch | None:
    """The counted specimens of a pipeline result as store rows (frame_index still 0)."""
    from napari_foram.pipeline import specimen_columns
    from napari_foram.tally.store import SpecimenBatch

    rows, pred = out.new_rows, out.predictions
    if pred is None or not len(rows):
        return None
    columns = specimen_columns(out.frame, out.detections, rows, pred)
    columns["frame_index"] = np.zeros(len(rows), dtype=np.int64)  # set by the writer
    return SpecimenBatch(
        stage_x_um=np.full(len(rows), np.nan),  # files carry no stage position
        stage_y_um=np.full(len(rows), np.nan),
        **columns,
    )


def run_chunk(task: ChunkTask) -> list[FileResult]:
    """Read, detect and classify a task's files (what a worker runs); one result per file.

    The readable files go through `CountingPipeline.process_many` together, so their
    crops are classified in one call. A file that cannot be read or is too small or large
    gets an error and is left out. Should the pipeline fail on the batch, each file is
    tried alone so that one odd image cannot sink the others; when every file fails
    alone too, the failure is systematic (model, device) and is raised.
    """
    from napari_foram.frames import Frame
    from napari_foram.pipeline import CountingPipeline

    t0 = time.perf_counter()
    results: list[FileResult] = []
    frames: list[Frame] = []
    owners: list[FileResult] = []
    for i, file in enumerate(task.files):
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
    predictor = cached_predictor(task.model, task.device, task.torch_threads)
    with _PREDICT_LOCK, _seeded_torch(task.seed, predictor.device):
        # A fresh pipeline per task: without stage positions it keeps no state that
        # matters between frames, and a task must not depend on what ran before it.
        pipeline = CountingPipeline(
            predictor, detection=task.detection, mc_samples=task.mc_samples
        )
        outs: list[FrameResult | None]
        try:
            outs = list(pipeline.process_many(frames))
        except Exception as exc:  # isolate the culprit; re-raised if systematic
            log.warning("task of %d files failed (%s); trying them one by one", len(frames), exc)
            outs = []
            for frame, owner in zip(frames, owners, strict=True):
                try:
                    outs.append(pipeline.process(frame))
                except Exception as one:  # reported as this file's reason
                    owner.error = f"processing failed ({type(one).__name__}: {_one_line(one)})"
                    outs.append(None)
            if all(o is None for o in outs):
                raise
    for owner, out in zip(owners, outs, strict=True):
        if out is not None:
            owner.n_objects = len(out.detections)
            owner.specimens = _specimens_of(out)
    # Per-file time: the task's wall time shared in proportion to specimens (the
    # classifier dominates), at least an even share for reading and detection.
    elapsed = time.perf_counter() - t0
    weights = np.array([r.n_specimens + 1.0 for r in results])
    for r, w in zip(results, weights / weights.sum(), strict=True):
        r.seconds = float(elapsed * w)
    return results


# ----------------------------------------------------------------------------- report
@dataclass
class BatchReport:
    """The outcome of a batch run: one line per file, specimens per sample, notes.

    Attributes
    ----------
    folder, store, model, model_sha256
        What ran.
    started
        When it started (UTC, ISO 8601).
    files
        One `FileReport` per file considered: ignored files, then the candidates in
        processing order.
    samples
        Sample id -> ``{"new": specimens counted in this run, "total": counted in the
        store}`` for every sample the store holds from this folder.
    interrupted
        Stopped (Ctrl-C, the stop event) before every file was done; run again to resume.
    seconds
        Wall time of the run.
    notes
        Anything else worth saying (a sample whose stored record differs from the sheet).
    report_json, report_csv, export_csv
        Files written ("" when not written).
    """

    folder: str
    store: str
    model: str
    model_sha256: str
    started: str = ""
    files: list[FileReport] = field(default_factory=list)
    samples: dict[str, dict[str, int]] = field(default_factory=dict)
    interrupted: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    report_json: str = ""
    report_csv: str = ""
    export_csv: str = ""

    def count(self, status: FileStatus) -> int:
        """Number of files with this status."""
        return sum(1 for f in self.files if f.status == status)

    def bad_files(self) -> list[FileReport]:
        """The files that could not be used."""
        return [f for f in self.files if f.status == "bad"]

    def summary_line(self) -> str:
        """One line: files processed / skipped / bad / ignored, specimens per sample."""
        parts = [
            f"{self.count('processed')} files processed",
            f"{self.count('skipped')} skipped",
            f"{self.count('bad')} bad",
        ]
        if self.count("ignored"):
            parts.append(f"{self.count('ignored')} ignored")
        per_sample = ", ".join(f"{sid} {s['total']}" for sid, s in self.samples.items())
        line = ", ".join(parts) + f"; specimens per sample: {per_sample or 'none'}"
        return ("interrupted: " if self.interrupted else "") + line

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with a summary block."""
        out = dataclasses.asdict(self)
        out["summary"] = {
            status: self.count(status) for status in ("processed", "skipped", "bad", "ignored")
        }
        out["summary"]["line"] = self.summary_line()
        return out

    def write(self, json_path: str | os.PathLike[str], csv_path: str | os.PathLike[str]) -> None:
        """Write the report as JSON (everything) and CSV (one row per file).

        Both are written whole, then renamed: a reader never sees half a report.
        """
        from napari_foram.tally.export import safe_text

        jpath, cpath = Path(json_path), Path(csv_path)
        jpath.parent.mkdir(parents=True, exist_ok=True)
        cpath.parent.mkdir(parents=True, exist_ok=True)
        self.report_json, self.report_csv = str(jpath), str(cpath)
        tmp = jpath.with_name(jpath.name + ".part")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(jpath)
        columns = [f.name for f in dataclasses.fields(FileReport)]
        tmp = cpath.with_name(cpath.name + ".part")
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            for row in self.files:
                # File names and reasons are text from outside: keep spreadsheets from
                # reading them as formulas.
                writer.writerow(
                    [safe_text(v) if isinstance(v, str) else v for v in dataclasses.astuple(row)]
                )
        tmp.replace(cpath)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_report_paths(store: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Where the report goes unless told: beside the store, ``<store>_batch_report.json``
    and ``.csv`` (``run.zarr`` -> ``run_batch_report.json``)."""
    path = Path(store)
    stem = path.name[: -len(".zarr")] if path.name.lower().endswith(".zarr") else path.name
    base = path.with_name(f"{stem}_batch_report")
    return base.with_suffix(".json"), base.with_suffix(".csv")


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

    def __post_init__(self) -> None:
        if self.mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {self.mc_samples}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.workers and self.scheduler:
            raise ValueError("give either workers (a local cluster) or a scheduler, not both")
        if self.files_per_task < 1:
            raise ValueError(f"files_per_task must be >= 1, got {self.files_per_task}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, not {self.device!r}")

    def report_paths(self) -> tuple[Path, Path]:
        """(JSON, CSV) paths of the report."""
        if self.report is None:
            return default_report_paths(self.store)
        return Path(self.report), Path(self.report).with_suffix(".csv")


#: Called after each file is done: its report line, and what the worker made of it
#: (None for files skipped without reading).
FileCallback = Callable[[FileReport, FileResult | None], None]


def resolve_checkpoint(
    model: str | os.PathLike[str], progress: ProgressCallback | None = None
) -> Path:
    """The checkpoint file of `model`: a path, or the cached demo model for "demo"
    (trained at first use, reporting through `progress`)."""
    if str(model) == "demo":
        from napari_foram.classify.demo_model import demo_checkpoint

        return Path(demo_checkpoint(progress=progress)).resolve()
    path = Path(model).expanduser()
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    return path.resolve()


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
            with _writes_shielded(self.stop):
                self.store.append_specimens(
                    sid, _concat(batches, len(self.store.class_names)), processed=processed
                )
            self._next_frame[sid] = first_frame + len(good)
        out = []
        for r in results:
            line = lines.get(id(r)) or FileReport(
                r.file.name, sid, "bad", r.error or "", r.file.sha256, seconds=round(r.seconds, 3)
            )
            out.append(line)
        return out


def _concat(batches: list[SpecimenBatch], n_classes: int) -> SpecimenBatch:
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


def _triage(
    plan: BatchPlan, store: TallyStore
) -> tuple[dict[str, list[SourceFile]], dict[str, FileReport]]:
    """Hash every file; what is left to do per sample, and the report lines of the files
    settled already (empty, unreadable, same bytes as another, already in the store)."""
    todo: dict[str, list[SourceFile]] = {sid: [] for sid in plan.records}
    settled: dict[str, FileReport] = {}
    samples = set(store.samples())
    for sid in plan.records:
        done = store.processed_files(sid) if sid in samples else {}
        seen: dict[str, str] = {}
        for f in plan.files_of(sid):
            try:
                size = f.path.stat().st_size
                digest = file_sha256(f.path) if size else ""
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
        for start in range(0, len(everything), size):
            files = tuple(left[f.name] for f in everything[start : start + size] if f.name in left)
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
                    )
                )
    return tasks


def _run_local(
    tasks: Iterable[ChunkTask], stop: threading.Event
) -> Generator[tuple[ChunkTask, list[FileResult]], None, None]:
    """Tasks one after another in this process, until `stop` is set."""
    for task in tasks:
        if stop.is_set():
            return
        yield task, run_chunk(task)


def _run_dask(
    client: Client, tasks: list[ChunkTask], stop: threading.Event
) -> Generator[tuple[ChunkTask, list[FileResult]], None, None]:
    """Tasks on a Dask cluster, results yielded in task order.

    A window of tasks runs ahead (two per worker thread), so workers never wait for the
    writer while results, which hold crops (150 kB each), do not pile up in memory.
    """
    window = max(2, 2 * sum(client.nthreads().values()))
    pending = iter(tasks)
    running: deque[tuple[ChunkTask, Any]] = deque()

    def submit() -> None:
        task = next(pending, None)
        if task is not None:
            running.append((task, client.submit(run_chunk, task, pure=False)))

    try:
        for _ in range(window):
            submit()
        while running:
            task, future = running[0]
            while not future.done() and not stop.wait(0.2):
                pass
            if stop.is_set():
                return
            running.popleft()
            results = future.result()
            submit()
            yield task, results
    finally:
        for _, future in running:
            future.cancel()


@contextlib.contextmanager
def _dask_client(
    config: BatchConfig, client: Client | None
) -> Iterator[tuple[Client | None, int | None]]:
    """(client, torch threads per worker): the given client, a new LocalCluster's, a
    scheduler's, or (None, None) for a local run. Clusters made here are closed here."""
    if client is not None:
        yield client, None
        return
    if not config.workers and not config.scheduler:
        yield None, None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError(
            "Dask workers need dask.distributed: pip install 'dask[distributed]'"
        ) from None
    if config.scheduler:
        try:
            remote = Client(config.scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ValueError(
                f"cannot reach the Dask scheduler at {config.scheduler} ({_one_line(exc)})"
            ) from None
        try:
            yield remote, None
        finally:
            with contextlib.suppress(Exception):
                remote.close()
        return
    # Processes, one thread each: the GIL-bound parts (reading, detection) run in parallel
    # and each process's torch gets its share of the cores.
    cluster = LocalCluster(
        n_workers=config.workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    local = Client(cluster)
    try:
        # A Ctrl-C in the terminal reaches the worker processes too: they leave stopping
        # to this process, which cancels their tasks and closes the cluster.
        local.run(_ignore_interrupts)
        yield local, max(1, (os.cpu_count() or 1) // config.workers)
    finally:
        with contextlib.suppress(Exception):
            local.close()
        with contextlib.suppress(Exception):
            cluster.close()


def _ignore_interrupts() -> None:
    """Ignore SIGINT in this (worker) process; run on a worker's main thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _open_store(path: Path, classes: list[str]) -> TallyStore:
    """The store to append to (created if missing); its classes must be the model's."""
    from napari_foram.tally.store import TallyStore

    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a tally store folder")
    if path.is_dir() and any(path.iterdir()):
        return TallyStore.open(path, mode="a", classes=classes)
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
        ``progress(done, total, message)`` after each file (files left to do at the
        start); also reports the demo model's first-run training.
    on_file
        Called after each file with its report line and the worker's result (on the
        thread that runs the batch).
    stop
        Set it to stop after the task being committed; what is committed stays.
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
    from napari_foram.pipeline import model_provenance

    t_start = time.perf_counter()
    stop = stop or threading.Event()

    def notify(done: int, total: int, message: str = "") -> None:
        if progress is not None:
            progress(done, total, message)

    def training(done: int, total: int, message: str = "") -> None:
        notify(done, total, f"demo model: {message}")

    plan = plan_batch(config.folder, config.samples_csv)
    checkpoint = resolve_checkpoint(config.model, progress=training)
    info = read_model_info(checkpoint)
    ref = ModelRef(str(checkpoint), file_sha256(checkpoint))
    report = BatchReport(
        str(plan.folder), str(config.store), str(config.model), ref.sha256, started=_now_iso()
    )
    report.files.extend(plan.ignored)
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
    }
    store = _open_store(Path(config.store), list(info.class_names))
    new: dict[str, int] = {}
    finished = False  # the loop ended without an error (interrupted or not)
    try:
        todo, settled = _triage(plan, store)
        total = sum(len(v) for v in todo.values())
        done = 0
        notify(0, total, f"{total} files to count, {len(settled)} settled already")
        writer = _Writer(store, plan, provenance, report, stop)
        # Lines of files settled without reading go in the report in plan order.
        report.files.extend(settled[f.name] for f in plan.files if f.name in settled)
        if on_file is not None:
            for f in plan.files:
                if f.name in settled:
                    on_file(settled[f.name], None)
        with _dask_client(config, client) as (dask, threads):
            tasks = _tasks(plan, todo, config, ref, threads)
            results = _run_local(tasks, stop) if dask is None else _run_dask(dask, tasks, stop)
            try:
                for task, file_results in results:
                    lines = writer.commit(task, file_results)
                    for line, result in zip(lines, file_results, strict=True):
                        report.files.append(line)
                        new[line.sample_id] = new.get(line.sample_id, 0) + line.n_specimens
                        done += 1
                        if on_file is not None:
                            on_file(line, result)
                        notify(done, total, line.file)
                    if stop.is_set():
                        break
            finally:
                results.close()  # a Dask window cancels the futures it still holds
        report.interrupted = done < total
        finished = True
    except KeyboardInterrupt:
        report.interrupted = finished = True
    finally:
        try:
            stored = set(store.samples())
            for sid in plan.records:
                if sid in stored:
                    total_counted = int(store.counts(sid).sum())
                    report.samples[sid] = {"new": new.get(sid, 0), "total": total_counted}
                    if store.unsure_rule(sid).active:
                        # Of the total, those the model's unsure rule puts in no class.
                        unsure = store.sample_summary(sid)["n_unsure"]
                        report.samples[sid]["unsure"] = int(unsure)
            if config.export is not None and finished:
                from napari_foram.tally.export import export_csv

                report.export_csv = str(export_csv(store, config.export))
        finally:
            store.close()
            # Report lines in plan order: ignored files first, then file by file.
            order = {f.name: i for i, f in enumerate(plan.files)}
            report.files.sort(key=lambda line: order.get(line.file, -1))
            report.seconds = round(time.perf_counter() - t_start, 3)
            report.write(*config.report_paths())
    return report


# ----------------------------------------------------------------------------- browsing
@dataclass
class FrameView:
    """One processed file with its counted specimens, for display.

    Attributes
    ----------
    file, sample_id
        Which file (its name in the store) and sample.
    image
        The image as read (None if it cannot be read any more).
    centroids
        (n, 2) (row, column) pixel centres of the counted specimens.
    diameter_px
        (n,) equivalent diameters (of a disc of the same area), pixels.
    class_index
        (n,) class of each (the reviewed class where a person gave one).
    probability
        (n,) MC-mean probability of the predicted class.
    class_names
        The store's classes.
    """

    file: str
    sample_id: str
    image: np.ndarray | None
    centroids: np.ndarray
    diameter_px: np.ndarray
    class_index: np.ndarray
    probability: np.ndarray
    class_names: list[str]

    @classmethod
    def from_result(cls, result: FileResult, class_names: list[str]) -> FrameView:
        """The view of a file just processed (reads its image again)."""
        spec = result.specimens
        columns: dict[str, Any] = {"centroid_y": [], "centroid_x": [], "area_px": []}
        if spec is not None:
            columns = {k: getattr(spec, k) for k in columns}
            columns.update(class_index=spec.class_index, mean_probs=spec.mean_probs)
        else:
            columns.update(class_index=[], mean_probs=np.zeros((0, len(class_names))))
        return _view(
            result.file.name, result.file.sample_id, result.file.path, columns, class_names
        )


def _view(
    name: str,
    sample_id: str,
    path: str | Path,
    columns: dict[str, Any],
    classes: list[str],
) -> FrameView:
    """A FrameView from specimen columns; the image is read from `path` if it is there."""
    from napari_foram.frames import read_image

    image = None
    with contextlib.suppress(ValueError, OSError):
        image = read_image(path)
    probs = np.asarray(columns["mean_probs"], dtype=np.float64).reshape(-1, len(classes))
    return FrameView(
        name,
        sample_id,
        image,
        np.column_stack([columns["centroid_y"], columns["centroid_x"]])
        .astype(float)
        .reshape(-1, 2),
        2.0 * np.sqrt(np.asarray(columns["area_px"], dtype=np.float64) / np.pi),
        np.asarray(columns["class_index"], dtype=np.int64),
        probs.max(axis=1) if len(probs) else np.zeros(0),
        classes,
    )


def processed_frames(store_path: str | os.PathLike[str]) -> list[tuple[str, str, str]]:
    """(sample id, file name, key) of every file a store records as processed, in order."""
    from napari_foram.tally.store import TallyStore

    with TallyStore.open(store_path, mode="r") as store:
        return [
            (sid, str(rec.get("file", key)), key)
            for sid in store.samples()
            for key, rec in store.processed_files(sid).items()
        ]


def frame_view(store_path: str | os.PathLike[str], sample_id: str, key: str) -> FrameView:
    """The view of a processed file from the store: its image (read from where it was)
    and its counted specimens (reviews applied; rejected and duplicate rows left out).

    `key` is the file's SHA-256, as `processed_frames` lists it.
    """
    from napari_foram.tally import stats
    from napari_foram.tally.store import TallyStore

    with TallyStore.open(store_path, mode="r") as store:
        rec = store.processed_files(sample_id).get(key)
        if rec is None:
            raise ValueError(f"sample {sample_id!r} records no processed file {key!r}")
        data = store.read_specimens(
            sample_id,
            columns=[
                "centroid_y", "centroid_x", "area_px", "mean_probs", "class_index",
                "reviewed_class", "review_status", "duplicate_of",
            ],
        )  # fmt: skip
        classes = store.class_names
    first = int(rec["first_row"])
    rows = slice(first, first + int(rec["n_specimens"]))
    part = {k: v[rows] for k, v in data.items()}
    labels = stats.final_labels(part)
    keep = labels >= 0
    columns = {k: v[keep] for k, v in part.items()}
    columns["class_index"] = labels[keep]
    return _view(str(rec.get("file", key)), sample_id, str(rec.get("path", "")), columns, classes)
