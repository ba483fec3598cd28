"""Planning a batch: which files, which samples, in which order."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from napari_foram.frames import IMAGE_SUFFIXES, natural_key

if TYPE_CHECKING:
    from napari_foram.tally.store import SampleRecord


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
        "processed" (counted in this run), "skipped" (already in the store, the same
        bytes as another file of the sample, or a hidden folder not looked into: its
        name ends in "/"), "bad" (could not be used) or "ignored" (not an image file
        type, a label or mask image, or not listed in the sample sheet).
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
        Files that are not candidates (not an image type, or not in the sample sheet),
        and the hidden folders not looked into (status "skipped").
    """

    folder: Path
    records: dict[str, SampleRecord]
    files: list[SourceFile]
    ignored: list[FileReport] = field(default_factory=list)

    def files_of(self, sample_id: str) -> list[SourceFile]:
        """The candidate files of one sample, in order."""
        return [f for f in self.files if f.sample_id == sample_id]


def safe_sample_id(name: str) -> str:
    """A folder name as a valid sample id: unsafe characters become ``_``.

    Sample ids name directories in the store (letters, digits, ``.``, ``_``, ``-``,
    starting with a letter or digit, at most 128 characters).
    """
    sid = _SAMPLE_ID_UNSAFE.sub("_", name.strip()).lstrip("._-")[:128]
    return sid or "sample"


def _walk(folder: Path) -> tuple[list[str], list[str]]:
    """Relative POSIX paths of the files below `folder`, and of the tray scans saved as
    OME-Zarr folders (`is_saved_scan`: each one is counted as one source); hidden entries
    and other ``*.zarr`` folders are left out (the output store may well sit inside).

    Also returns the hidden folders left out (names starting with "."), so that the
    report can say what was not looked at.
    """
    from napari_foram.acquire.saved import is_saved_scan

    found: list[str] = []
    hidden: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel = Path(dirpath).relative_to(folder)
        found.extend(
            (rel / d).as_posix()
            for d in dirnames
            if d.lower().endswith(".zarr") and is_saved_scan(Path(dirpath) / d)
        )
        hidden.extend((rel / d).as_posix() for d in dirnames if d.startswith("."))
        dirnames[:] = [
            d for d in dirnames if not d.startswith(".") and not d.lower().endswith(".zarr")
        ]
        for fname in filenames:
            if not fname.startswith("."):
                found.append((rel / fname).as_posix())
    return found, sorted(hidden, key=natural_key)


#: Why `plan_batch` lists a hidden folder (status "skipped", this reason).
HIDDEN_FOLDER_REASON = "hidden folder (name starts with '.'): not looked into"


def _hidden_reports(hidden: list[str]) -> list[FileReport]:
    """Report lines of the hidden folders `_walk` left out, one each."""
    lines = []
    for name in hidden:
        parts = name.split("/")
        # A hidden folder inside a sample belongs to it; one at the top is no sample.
        sid = safe_sample_id(parts[0]) if len(parts) > 1 else ""
        lines.append(FileReport(f"{name}/", sid, "skipped", HIDDEN_FOLDER_REASON))
    return lines


def _is_image_name(name: str) -> bool:
    # ".zarr" names come from `_walk` only for saved scans (it drops every other store).
    return Path(name).suffix.lower() in (*IMAGE_SUFFIXES, ".zarr")


def is_saved_scan_source(file: SourceFile) -> bool:
    """Whether `file` is a tray scan saved as OME-Zarr (a folder), not an image file."""
    return file.path.is_dir()


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
    from napari_foram.acquire.saved import is_saved_scan

    if samples_csv is None and is_saved_scan(root):
        # One saved scan given as the folder: it is the batch, one sample named after it.
        stem = (
            root.name[: -len(".ome.zarr")]
            if root.name.lower().endswith(".ome.zarr")
            else root.stem
        )
        sid = safe_sample_id(stem)
        return BatchPlan(
            root.parent, {sid: SampleRecord(sample_id=sid)}, [SourceFile(root, root.name, sid)]
        )
    walked, hidden = _walk(root)
    names = sorted(walked, key=natural_key)
    if samples_csv is not None:
        return _plan_from_sheet(root, Path(samples_csv).expanduser(), names, hidden)

    own_id = safe_sample_id(root.name)
    by_sample: dict[str, list[str]] = {}
    raw_of: dict[str, str] = {}
    ignored: list[FileReport] = _hidden_reports(hidden)
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


def _plan_from_sheet(
    root: Path, sheet: Path, names: list[str], hidden: list[str] | None = None
) -> BatchPlan:
    """`plan_batch` from a sample sheet."""
    from napari_foram._outputs import read_small_file
    from napari_foram.tally.store import SampleRecord

    record_fields = [f.name for f in dataclasses.fields(SampleRecord)]
    if not sheet.exists() and not sheet.is_symlink():
        raise ValueError(f"{sheet}: no such sample sheet")
    # Only a regular file of bounded size: a FIFO or /dev/zero would hang the command.
    raw = read_small_file(sheet, "sample sheet")
    try:
        text = raw.decode("utf-8-sig")  # -sig: Excel's BOM
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [h.strip() for h in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
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
    # A hidden folder whose files the sheet lists was looked into after all.
    looked_into = {p for n in listed for p in Path(n).parents}
    ignored[:0] = [
        line
        for line in _hidden_reports(hidden or [])
        if Path(line.file.rstrip("/")) not in looked_into
    ]
    return BatchPlan(root, records, files, ignored)


def path_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file's bytes (read in 1 MB blocks); of a folder (a saved
    scan), of its files' relative names and bytes in name order.
    """
    digest = hashlib.sha256()
    root = Path(path)
    if root.is_dir():
        files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
    else:
        files = [("", root)]  # a plain file: its bytes alone, as digests always were
    for name, file in files:
        if name:
            digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
