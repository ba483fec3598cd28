"""The batch report: per-file outcomes as JSON and CSV."""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._plan import FileReport, FileStatus

if TYPE_CHECKING:
    import os


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
    not_counted
        Files of an interrupted run neither committed nor reported bad: the next run
        counts them (plan order).
    abandoned
        Of those, the files whose reading or classification was under way when the run
        stopped: their work was dropped and nothing of them written.
    seconds
        Wall time of the run.
    notes
        Anything else worth saying (a sample whose stored record differs from the sheet).
    damaged_samples
        Sample id -> the first problem, for samples of this folder the store holds damaged:
        their files were not counted and the samples were left byte for byte as they were.
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
    not_counted: list[str] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    damaged_samples: dict[str, str] = field(default_factory=dict)
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
        """One line: files processed / skipped / bad / ignored, specimens per sample, and
        whether bad files left the count incomplete.
        """
        parts = [
            f"{self.count('processed')} files processed",
            f"{self.count('skipped')} skipped",
            f"{self.count('bad')} bad",
        ]
        if self.count("ignored"):
            parts.append(f"{self.count('ignored')} ignored")
        per_sample = ", ".join(f"{sid} {s['total']}" for sid, s in self.samples.items())
        line = ", ".join(parts) + f"; specimens per sample: {per_sample or 'none'}"
        if self.damaged_samples:
            line += f"; damaged samples left as they are: {', '.join(self.damaged_samples)}"
        if self.count("bad"):
            # Said apart, so that a run that finished is not read as a complete count.
            line += f"; incomplete: {self.count('bad')} bad file(s) not counted (see the report)"
        if self.interrupted:
            line += f"; {len(self.not_counted)} file(s) left for the next run"
            if self.abandoned:
                line += f" ({len(self.abandoned)} dropped in flight, nothing of them written)"
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
        # A file name that is not valid UTF-8 (bytes kept as surrogates by the OS layer)
        # is written with backslash escapes rather than failing the whole report.
        with tmp.open("w", encoding="utf-8", errors="backslashreplace", newline="") as fh:
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
    and ``.csv`` (``run.zarr`` -> ``run_batch_report.json``).
    """
    path = Path(store)
    stem = path.name[: -len(".zarr")] if path.name.lower().endswith(".zarr") else path.name
    base = path.with_name(f"{stem}_batch_report")
    return base.with_suffix(".json"), base.with_suffix(".csv")
