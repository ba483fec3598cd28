"""TallyStore: one Zarr v3 group holding every counted specimen of a run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from napari_foram._versions import software_versions
from napari_foram.defaults import CROP_SIZE
from napari_foram.reasons import one_line
from napari_foram.tally import stats
from napari_foram.tally.stats import (
    REVIEW_CONFIRMED,
    REVIEW_NONE,
    REVIEW_RELABELLED,
)

from ._files import (
    _TALLY_ARRAYS,
    _compressor,
    _counter,
    _create_column,
    _filled_column,
    _half_made,
    _jsonable,
    _now_iso,
    _processed_records,
    _trim_arrays,
    _validate_classes,
    _write_rows,
    _WriterLock,
    check_root_attrs,
    read_zarr_json,
)
from ._kept import (
    CLASSIFICATION_COLUMNS,
    HISTORY_GROUP,
    PER_CLASS_ARRAYS,
    check_feature_space,
    class_width,
    features_array,
    padded,
    same_space,
    widen,
)
from ._schema import (
    _COLUMNS,
    _COUNT_COLUMNS,
    _CROPS_PER_CHUNK,
    _OPTIONAL_COLUMNS,
    _ROWS_PER_CHUNK,
    _SAMPLE_ID_RE,
    LOCK_NAME,
    REVIEW_STATUS_NAMES,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    SPECIMEN_COLUMNS,
    DamagedSampleError,
    SampleRecord,
    SpecimenBatch,
)
from ._seal import (
    RESEALING_ATTR,
    SEAL_ARRAY,
    create_seal_array,
    crop_digests,
    marker_for,
    resealing_rows,
    row_seals,
    seal_rows,
    sealed_columns,
)
from .integrity import QUARANTINE_DIR, read_json, sample_problems


# ----------------------------------------------------------------------------- the store
class TallyStore:
    """Specimens, crops and running tallies of one acquisition run, in a Zarr v3 group.

    Make one with `TallyStore.create` or `TallyStore.open`; use it as a context manager (or
    call `close`) so that the writer lock is released. Methods are thread-safe within a
    process (one internal lock), so a worker thread may append while the GUI thread reads.
    """

    def __init__(self, path: Path, group: Any, mode: Literal["r", "a"], lock: _WriterLock | None):
        # Private: use create() or open().
        self.path = path
        self.mode = mode
        self._root = group
        self._lock = lock
        self._mutex = threading.RLock()
        self._closed = False
        self._class_names: list[str] = list(group.attrs["class_names"])
        # Writer caches: sample group and arrays (one writer, so the cache stays true).
        self._groups: dict[str, Any] = {}
        self._arrays: dict[str, dict[str, Any]] = {}
        self._running: dict[str, np.ndarray] = {}
        # Samples found damaged (by a writer's open or a failed check): left untouched.
        self._damaged: dict[str, str] = {}

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(
        cls, path: str | os.PathLike[str], *, classes: Sequence[str], overwrite: bool = False
    ) -> TallyStore:
        """Create a new, empty store at `path` and open it for writing.

        Parameters
        ----------
        path
            Directory to create (conventionally ending in ``.zarr``).
        classes
            Class names in the classifier's output order, e.g.
            ``["planktic", "calcareous_benthic", "agglutinated_benthic", "sediment"]``.
        overwrite
            Replace an existing napari-foram tally store (or an empty directory) at `path`.
            Any other existing content is refused even then: this never deletes a folder
            that is not ours.
        """
        import zarr

        names = _validate_classes(classes)
        root = Path(path)
        if root.exists():
            if root.is_dir() and not any(root.iterdir()):
                pass  # an empty directory is fine to use
            elif not overwrite:
                # Also what a second writer creating the same store at the same moment
                # sees: it names no option, since the CLI has none to replace a store.
                raise ValueError(
                    f"{root} already exists (another program may have just created it); "
                    "open it to append, or choose a new path"
                )
            else:
                check_root_attrs(read_zarr_json(root).get("attributes", {}), root)
                lock = _WriterLock(root)
                lock.acquire()  # refuse to delete a store another writer is using
                lock.release()
                shutil.rmtree(root)
        now = _now_iso()
        attrs = {
            "schema": SCHEMA_NAME,
            "schema_version": SCHEMA_VERSION,
            "software": software_versions("zarr", "numpy"),
            "created": now,
            "updated": now,
            "class_names": names,
        }
        root.mkdir(parents=True, exist_ok=True)
        lock = _WriterLock(root)
        lock.acquire()
        if (root / "zarr.json").exists():
            # A second creator that got the lock after the first closed: never write a
            # new root over the store the first one made.
            lock.release()
            raise ValueError(
                f"{root} already exists (another program has just created it); "
                "open it to append, or choose a new path"
            )
        try:
            # The root's attrs are written together with the group: a store never exists
            # without its schema marker.
            group = zarr.create_group(root, zarr_format=3, attributes=attrs)
            group.create_group("samples")
        except BaseException:
            lock.release()
            raise
        return cls(root, group, "a", lock)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        mode: Literal["r", "a"] = "r",
        *,
        classes: Sequence[str] | None = None,
    ) -> TallyStore:
        """Open an existing store for reading ("r") or appending ("a").

        Appending takes the writer lock and repairs what a killed writer left: rows above
        each sample's commit counter are trimmed, half-made samples removed.

        Parameters
        ----------
        path
            The store directory.
        mode
            "r" read only (no lock; sees rows as they are committed), "a" read and write.
        classes
            If given, the store's class names must equal these (else ValueError).
        """
        import zarr

        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        root = Path(path)
        meta = read_zarr_json(root)
        check_root_attrs(meta.get("attributes", {}), root)
        stored = list(meta["attributes"]["class_names"])
        if classes is not None and _validate_classes(classes) != stored:
            raise ValueError(f"store classes {stored} differ from expected {list(classes)}")
        if (root / "samples").exists():
            try:
                read_json(root / "samples" / "zarr.json")
            except ValueError as exc:
                # zarr's own message ("Expecting value: line 1 column 1") names no file.
                raise ValueError(
                    f"{root / 'samples'}: {exc}; 'napari-foram check --repair' rewrites it"
                ) from None
        lock = None
        if mode == "a":
            lock = _WriterLock(root)
            lock.acquire()
        try:
            group = zarr.open_group(root, mode="r" if mode == "r" else "r+", zarr_format=3)
            store = cls(root, group, mode, lock)
            if mode == "a":
                if "samples" not in group:
                    group.create_group("samples")
                store._recover(deep_clean=lock is not None and lock.took_over_stale)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return store

    def close(self) -> None:
        """Record the update time and release the writer lock (idempotent)."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            if self.mode == "a":
                try:
                    # Drop the preallocated slack so the arrays at rest hold committed rows only.
                    for sid, arrays in self._arrays.items():
                        attrs = self._groups[sid].attrs
                        _trim_arrays(
                            arrays, _counter(attrs, "n_committed"), _counter(attrs, "n_tally"), sid
                        )
                    self._root.update_attributes({"updated": _now_iso()})
                finally:
                    if self._lock is not None:
                        self._lock.release()

    def __enter__(self) -> TallyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten close must not leave a lock behind
        with contextlib.suppress(Exception):
            if not self._closed and self._lock is not None:
                self._lock.release()

    def __repr__(self) -> str:
        return f"TallyStore({str(self.path)!r}, mode={self.mode!r}, samples={len(self.samples())})"

    # ------------------------------------------------------------------ properties
    @property
    def class_names(self) -> list[str]:
        """Class names in classifier output order (copy)."""
        return list(self._class_names)

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes (schema, software versions, times, class names), a copy."""
        return dict(self._root.attrs)

    # ------------------------------------------------------------------ samples
    def _samples_dir(self) -> Path:
        return self.path / "samples"

    def _damage(self, sample_id: str, problem: str) -> DamagedSampleError:
        """The error for a damaged sample (a writer remembers it and leaves it alone; a
        reader looks again next time: `check --repair` may have run meanwhile).
        """
        if self.mode == "a":
            self._damaged.setdefault(sample_id, problem)
        return DamagedSampleError(
            f"{self.path}: {problem}; the sample is left as it is ('napari-foram check' "
            "on the store lists every problem, --repair sets damaged samples aside)"
        )

    def _sample_group(self, sample_id: str) -> Any:
        if sample_id in self._damaged:
            raise self._damage(sample_id, self._damaged[sample_id])
        if self.mode == "a" and sample_id in self._groups:
            return self._groups[sample_id]
        if not isinstance(sample_id, str) or not _SAMPLE_ID_RE.match(sample_id):
            raise ValueError(f"no sample {sample_id!r} in {self.path}")

        sample_dir = self._samples_dir() / sample_id
        if not sample_dir.is_dir():
            raise ValueError(f"no sample {sample_id!r} in {self.path}")
        try:
            read_json(sample_dir / "zarr.json")
        except ValueError as exc:
            raise self._damage(sample_id, f"sample {sample_id!r}: {exc}") from None
        try:
            # Fetched afresh in read mode so a reader sees a writer's new commits.
            group = self._root[f"samples/{sample_id}"]
        except KeyError:
            raise ValueError(f"no sample {sample_id!r} in {self.path}") from None
        except Exception as exc:  # zarr's errors for metadata it cannot parse
            msg = one_line(exc)
            raise self._damage(sample_id, f"sample {sample_id!r}: {msg}") from None
        if not group.attrs.get("initialised", False):
            raise ValueError(f"sample {sample_id!r} in {self.path} is incomplete")
        if self.mode == "a":
            self._groups[sample_id] = group
        return group

    def samples(self) -> list[str]:
        """Ids of the complete samples, in the order they were added."""
        with self._mutex:
            found: list[tuple[str, str]] = []
            sdir = self._samples_dir()
            if not sdir.is_dir():
                return []
            for entry in os.scandir(sdir):
                meta_file = Path(entry.path) / "zarr.json"
                if not entry.is_dir() or not meta_file.is_file():
                    continue
                try:
                    attrs = json.loads(meta_file.read_text(encoding="utf-8")).get("attributes", {})
                except (OSError, ValueError):
                    continue
                if attrs.get("initialised"):
                    found.append((str(attrs.get("added", "")), entry.name))
            return [name for _, name in sorted(found)]

    def damaged_samples(self, *, decode: bool = False) -> dict[str, str]:
        """Samples that cannot be read as written: id -> the first problem, one line.

        Checks each sample folder's metadata, array lengths and the presence of every
        chunk file of the committed rows, crops aside (`decode` also reads every chunk:
        slow, it decompresses the crops; ``napari-foram check`` does all of it).
        Incomplete samples a killed writer left (never initialised) are not listed:
        readers skip them and a writer removes them.
        """
        with self._mutex:
            out: dict[str, str] = {}
            sdir = self._samples_dir()
            if not sdir.is_dir():
                return out
            k = len(self._class_names)
            for entry in sorted(os.scandir(sdir), key=lambda e: e.name):
                if not entry.is_dir():
                    continue
                found = [
                    p
                    for p in sample_problems(
                        Path(entry.path), k, decode=decode, optional_chunks=("crops",)
                    )
                    if not p.reason.startswith("sample is incomplete")
                ]
                if found:
                    out[entry.name] = str(found[0])
            return out

    def quarantined(self) -> list[dict[str, Any]]:
        """Samples `napari-foram check --repair` moved into ``quarantine/`` (id, where,
        why, when), oldest first.
        """
        value = self._root.attrs.get("quarantined", [])
        return [dict(v) for v in value] if isinstance(value, list) else []

    def check_sample(self, sample_id: str, *, decode: bool = False) -> None:
        """Raise `DamagedSampleError` naming the first damaged part of a sample, if any."""
        found = sample_problems(
            self._samples_dir() / sample_id, len(self._class_names), decode=decode
        )
        if found:
            raise self._damage(sample_id, str(found[0]))

    def add_sample(self, record: SampleRecord) -> None:
        """Add a sample (its record and empty columns); ValueError if the id exists."""
        if not isinstance(record, SampleRecord):
            raise ValueError(f"expected a SampleRecord, got {type(record).__name__}")
        with self._mutex:
            self._check_writable()
            sid = record.sample_id
            if (self._samples_dir() / sid).exists() and sid not in self.samples():
                # A folder zarr cannot read as a sample: never create a group over it.
                self._sample_group(sid)  # raises DamagedSampleError with the reason
                raise ValueError(f"sample {sid!r} in {self.path} is incomplete")
            samples = self._root["samples"]
            if sid in samples:
                raise ValueError(f"sample {sid!r} already exists in {self.path}")
            k = len(self._class_names)
            now = _now_iso()
            # "initialised" goes True only after every array exists: a writer killed in
            # between leaves a sample that readers skip and the next writer removes.
            group = samples.create_group(
                sid,
                attributes={
                    "record": record.to_dict(),
                    "initialised": False,
                    "added": now,
                    "updated": now,
                    "n_committed": 0,
                    "n_tally": 0,
                    "provenance": [],
                    "class_width": k,
                },
            )
            for name, (dtype, fill, tail) in _COLUMNS.items():
                trailing = tuple(k if t == "K" else int(t) for t in tail)
                group.create_array(
                    name,
                    shape=(0, *trailing),
                    chunks=(_ROWS_PER_CHUNK, *trailing),
                    dtype=dtype,
                    fill_value=fill,
                    compressors=_compressor(),
                )
            # A few crops per chunk: cheap random access for review, and 4x fewer files
            # (measured 1.5x faster appends than one crop per chunk). A partly filled chunk
            # is rewritten by the next batch, atomically (write + rename), so committed crops
            # survive a kill mid-write.
            group.create_array(
                "crops",
                shape=(0, CROP_SIZE, CROP_SIZE, 3),
                chunks=(_CROPS_PER_CHUNK, CROP_SIZE, CROP_SIZE, 3),
                dtype="uint8",
                fill_value=0,
                compressors=_compressor(level=1),
            )
            group.create_array(
                "tally_time",
                shape=(0,),
                chunks=(_ROWS_PER_CHUNK,),
                dtype="float64",
                fill_value=float("nan"),
                compressors=_compressor(),
            )
            group.create_array(
                "tally_counts",
                shape=(0, k),
                chunks=(_ROWS_PER_CHUNK, k),
                dtype="int64",
                fill_value=0,
                compressors=_compressor(),
            )
            create_seal_array(group, 0)
            group.update_attributes({"initialised": True})
            self._root.update_attributes({"updated": now})
            self._groups[sid] = group

    def sample_record(self, sample_id: str) -> SampleRecord:
        """The record of a sample."""
        with self._mutex:
            return SampleRecord(**self._sample_group(sample_id).attrs["record"])

    def n_specimens(self, sample_id: str) -> int:
        """Number of committed rows of a sample (duplicates and rejected ones included)."""
        with self._mutex:
            return int(self._sample_group(sample_id).attrs["n_committed"])

    # ------------------------------------------------------------------ provenance
    def set_provenance(self, sample_id: str, provenance: Mapping[str, Any]) -> None:
        """Record how the following rows of a sample are made (model, MC N, detector, scope).

        Typical keys: ``model_sha256``, ``class_names``, ``mc_samples``, ``detector`` (dict of
        settings), ``microscope`` (Micro-Manager state), ``operator``. Each call adds an
        entry stamped with the time and the row it applies from, so a model change in the
        middle of a sample stays visible. ``class_names``, when given, are the model's
        classes: each must be one of the store's (a model may know fewer; its columns are
        matched by name, never by index).
        """
        if not isinstance(provenance, Mapping):
            raise ValueError(f"provenance must be a mapping, got {type(provenance).__name__}")
        entry = _jsonable(dict(provenance), "provenance")
        names = entry.get("class_names")
        if names is not None and not set(names) <= set(self._class_names):
            unknown = sorted(set(names) - set(self._class_names))
            raise ValueError(
                f"provenance class_names {unknown} are not among the store's {self._class_names}"
            )
        with self._mutex:
            self._check_writable()
            group = self._sample_group(sample_id)
            history = list(group.attrs.get("provenance", []))
            entry = {
                **entry,
                "set_at": _now_iso(),
                "from_row": _counter(group.attrs, "n_committed"),
            }
            history.append(entry)
            group.update_attributes({"provenance": history, "updated": entry["set_at"]})

    def provenance(self, sample_id: str) -> dict[str, Any]:
        """The latest provenance entry of a sample ({} if none was set)."""
        history = self.provenance_history(sample_id)
        return dict(history[-1]) if history else {}

    def latest_provenance(self, sample_id: str, key: str, default: Any = None) -> Any:
        """The newest value of provenance `key` for a sample (`default` if no entry has
        it): the one way to read a setting, since later entries may only note other
        things (frames counted per frame at the end of a scan) and keep no copy of it.
        """
        for entry in reversed(self.provenance_history(sample_id)):
            if entry.get(key) is not None:
                return entry[key]
        return default

    def provenance_history(self, sample_id: str) -> list[dict[str, Any]]:
        """Every provenance entry of a sample, oldest first."""
        with self._mutex:
            return [dict(e) for e in self._sample_group(sample_id).attrs.get("provenance", [])]

    def unsure_rule(self, sample_id: str) -> stats.UnsureRule:
        """The unsure rule of the model that classified the sample last (empty if none).

        The rule is the ``"unsure_rule"`` of the latest provenance entry that names a
        model or a rule: entries that only note other things (frames counted per frame
        at the end of a scan) keep the rule before them, and an entry of a model without
        a rule (an old checkpoint) means no rule. One-line ValueError for a malformed rule.
        """
        for entry in reversed(self.provenance_history(sample_id)):
            if "unsure_rule" in entry or "model_sha256" in entry:
                return stats.UnsureRule.from_dict(entry.get("unsure_rule") or {})
        return stats.UnsureRule()

    def sample_summary(self, sample_id: str, **kwargs: Any) -> dict[str, Any]:
        """`stats.sample_summary` of a sample with its record and its `unsure_rule`: the
        numbers every widget, count sheet and plot shows. `kwargs` go to it (target, z,
        uncertain_entropy, non_foram_classes).
        """
        return stats.sample_summary(
            self.read_specimens(sample_id),
            self.sample_record(sample_id),
            self._class_names,
            unsure_rule=self.unsure_rule(sample_id),
            **kwargs,
        )

    # ------------------------------------------------------------------ writing
    def _check_writable(self) -> None:
        if self._closed:
            raise ValueError(f"store {self.path} is closed")
        if self.mode != "a":
            raise ValueError(f"store {self.path} is open read-only (mode 'r')")

    def _sample_arrays(self, sample_id: str) -> dict[str, Any]:
        if sample_id not in self._arrays:
            group = self._sample_group(sample_id)
            # Before the first write: every chunk a write may rewrite must decode, or the
            # write would replace data it could not read. Crops: only the last chunk (the
            # one an append fills up); the small columns are a chunk per 4096 rows.

            found = sample_problems(
                self._samples_dir() / sample_id,
                len(self._class_names),
                decode=True,
                decode_last_only=("crops",),
                optional_chunks=("crops",),
            )
            if found:
                raise self._damage(sample_id, str(found[0]))
            names = (*_COLUMNS, "crops", SEAL_ARRAY, *_TALLY_ARRAYS)
            # Every row we write holds data, so skip zarr's "is this chunk all fill value?"
            # scan (a full pass over each crop; measured 30 % of the append time).
            arrays = {
                name: group[name].with_config({"write_empty_chunks": True}) for name in names
            }
            if widen(arrays, group, len(self._class_names)):  # classes were added
                arrays = {
                    name: group[name].with_config({"write_empty_chunks": True}) for name in names
                }
            self._arrays[sample_id] = arrays
        return self._arrays[sample_id]

    def _running_counts(self, sample_id: str) -> np.ndarray:
        if sample_id not in self._running:
            data = self.read_specimens(sample_id, columns=_COUNT_COLUMNS)
            self._running[sample_id] = stats.class_counts(data, len(self._class_names))
        return self._running[sample_id]

    def append_specimens(
        self,
        sample_id: str,
        batch: SpecimenBatch,
        *,
        processed: Mapping[str, Mapping[str, Any]] | None = None,
        feature_space: Mapping[str, Any] | None = None,
    ) -> int:
        """Append a batch of specimens to a sample and commit it.

        Rows are written to every column first; only then does one attrs write raise the
        sample's ``n_committed``: a crash at any point leaves the committed rows intact.

        Parameters
        ----------
        sample_id
            The sample to append to.
        batch
            The specimens (may be empty).
        processed
            Source files these specimens came from: key (e.g. the SHA-256 hex digest of
            the file's bytes) -> a small JSON-ready record (file name, frame index, ...).
            They are merged into the sample's ``processed_files`` attribute *in the same
            attrs write* that commits the rows, so a file is marked done exactly when its
            specimens are committed: a resumed batch run skips it and never counts it
            twice (see `processed_files`). With an empty `batch` only the files are
            recorded (files that yielded no specimen). A key already recorded raises
            ValueError before anything is written.
        feature_space
            Which backbone made ``batch.features``: with both, the features are kept
            after the commit (`write_features`; a cache, outside the commit).

        Returns
        -------
        int
            The sample's number of committed rows after the batch.
        """
        if not isinstance(batch, SpecimenBatch):
            raise ValueError(f"expected a SpecimenBatch, got {type(batch).__name__}")
        k = len(self._class_names)
        cols = batch.validated(k)
        b = len(cols["frame_index"])
        files = _processed_records(processed)
        with self._mutex:
            self._check_writable()
            group = self._sample_group(sample_id)
            arrays = self._sample_arrays(sample_id)
            n0 = _counter(group.attrs, "n_committed")
            m0 = _counter(group.attrs, "n_tally")
            dup = cols["duplicate_of"]
            merged: dict[str, Any] = {}
            if files:
                merged = dict(group.attrs.get("processed_files", {}))
                again = sorted(set(files) & set(merged))
                if again:
                    raise ValueError(
                        f"sample {sample_id!r}: file(s) already recorded as processed: "
                        f"{', '.join(again[:3])}"
                    )
                merged.update(files)
            if b == 0:
                if files:  # files that yielded nothing: recorded, no rows, no tally row
                    group.update_attributes({"processed_files": merged, "updated": _now_iso()})
                return n0  # nothing to commit: no tally row for an empty frame
            if np.any((dup < -1) | (dup >= n0 + np.arange(b))):
                raise ValueError("duplicate_of must be -1 or the row of an earlier specimen")
            counts = self._running_counts(sample_id) + stats.class_counts(cols, k)
            n1 = n0 + b
            writes = [(arrays[name], slice(n0, n1), cols[name]) for name in _COLUMNS]
            # Rows without a crop get zeros written (a scalar: zarr fills chunk by chunk),
            # so every committed row has its crop chunk and a missing one means damage.
            crops = cols["crops"] if cols["crops"] is not None else np.uint8(0)
            writes.append((arrays["crops"], slice(n0, n1), crops))
            digests = crop_digests(cols["crops"], b)
            seals = row_seals(
                sample_id, np.arange(n0, n1), cols, digests, sealed_columns(group.attrs)
            )
            writes.append((arrays[SEAL_ARRAY], slice(n0, n1), np.stack([digests, seals], 1)))
            writes.append((arrays["tally_time"], slice(m0, m0 + 1), np.array([time.time()])))
            writes.append((arrays["tally_counts"], slice(m0, m0 + 1), counts[None, :]))
            grow = dict.fromkeys((*_COLUMNS, "crops", SEAL_ARRAY), n1)
            grow.update(tally_time=m0 + 1, tally_counts=m0 + 1)
            _write_rows(arrays, grow, writes)
            # The commit: a single metadata file replaced atomically.
            commit: dict[str, Any] = {"n_committed": n1, "n_tally": m0 + 1, "updated": _now_iso()}
            if files:
                commit["processed_files"] = merged
            group.update_attributes(commit)
            self._running[sample_id] = counts
            if batch.features is not None and feature_space is not None:
                self.write_features(sample_id, np.arange(n0, n1), batch.features, feature_space)
            return n1

    def processed_files(self, sample_id: str) -> dict[str, dict[str, Any]]:
        """Source files recorded as processed for a sample (see `append_specimens`).

        Returns
        -------
        dict
            Key (a file's SHA-256 hex digest in batch runs) -> its record, in the order
            they were committed; {} when none was recorded.
        """
        with self._mutex:
            files = self._sample_group(sample_id).attrs.get("processed_files", {})
            return {str(key): dict(rec) for key, rec in files.items()}

    def update_specimens(
        self, sample_id: str, rows: Sequence[int] | np.ndarray, **columns: Any
    ) -> None:
        """Overwrite columns of committed rows (e.g. a better view of a known specimen).

        Parameters
        ----------
        rows
            Row indices (< n_committed).
        **columns
            Column name -> values of shape (len(rows), ...) (or a scalar, broadcast). Any
            name of `SPECIMEN_COLUMNS` or "crops".
        """
        with self._mutex:
            self._check_writable()
            group = self._sample_group(sample_id)
            arrays = self._sample_arrays(sample_id)
            n = _counter(group.attrs, "n_committed")
            idx = np.asarray(rows)
            if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
                raise ValueError("rows must be a 1-D sequence of integers")
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"rows must lie in [0, {n}) (committed rows of {sample_id!r})")
            if not columns:
                return
            k = len(self._class_names)
            prepared: dict[str, np.ndarray] = {}
            for name, values in columns.items():
                if name == "crops":
                    arr = np.asarray(values)
                    if arr.dtype != np.uint8 or arr.shape != (idx.size, CROP_SIZE, CROP_SIZE, 3):
                        raise ValueError("crops must be uint8 (len(rows), 224, 224, 3)")
                    prepared[name] = arr
                    continue
                if name not in _COLUMNS:
                    raise ValueError(f"unknown specimen column {name!r}")
                dtype, _, tail = _COLUMNS[name]
                trailing = tuple(k if t == "K" else int(t) for t in tail)
                arr = np.broadcast_to(np.asarray(values), (idx.size, *trailing))
                if np.issubdtype(np.dtype(dtype), np.integer) and not np.issubdtype(
                    arr.dtype, np.integer
                ):
                    raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
                prepared[name] = np.ascontiguousarray(arr, dtype=dtype)
            if "class_index" in prepared and np.any(
                (prepared["class_index"] < 0) | (prepared["class_index"] >= k)
            ):
                raise ValueError(f"class_index must lie in [0, {k})")
            if "reviewed_class" in prepared and np.any(
                (prepared["reviewed_class"] < -1) | (prepared["reviewed_class"] >= k)
            ):
                raise ValueError(f"reviewed_class must be -1 or lie in [0, {k})")
            if "review_status" in prepared and np.any(
                ~np.isin(prepared["review_status"], list(REVIEW_STATUS_NAMES))
            ):
                raise ValueError(f"review_status must be one of {sorted(REVIEW_STATUS_NAMES)}")
            if "duplicate_of" in prepared and np.any(
                (prepared["duplicate_of"] < -1) | (prepared["duplicate_of"] >= idx)
            ):
                raise ValueError("duplicate_of must be -1 or the row of an earlier specimen")
            if "reviewer_index" in prepared:
                n_names = len(group.attrs.get("reviewers", []))
                who = prepared["reviewer_index"]
                if np.any((who < -1) | (who >= n_names)):
                    raise ValueError(
                        f"reviewer_index must be -1 or lie in [0, {n_names}) "
                        "(the sample's reviewers)"
                    )
            # The rows' seals change with them: say so first, so that a kill between the
            # writes and the new seals is finished by the next writer, not taken for damage.
            group.update_attributes({RESEALING_ATTR: marker_for(idx, n)})
            for name, values in prepared.items():
                arr = arrays[name]
                # Orthogonal selection writes only the chunks that hold these rows.
                arr.oindex[idx] = values
            seal_rows(arrays, group.attrs, sample_id, idx, crops=prepared.get("crops"))
            group.update_attributes({"updated": _now_iso(), RESEALING_ATTR: None})
            self._running.pop(sample_id, None)  # recomputed from the columns when needed

    def set_review(
        self,
        sample_id: str,
        rows: Sequence[int] | np.ndarray,
        *,
        status: int,
        reviewed_class: int = -1,
        reviewer: str = "",
    ) -> None:
        """Record a person's verdict on specimens: confirmed, relabelled, dubious, rejected,
        or none.

        `reviewed_class` (>= 0) is required for REVIEW_RELABELLED and overrides the
        prediction in every count; REVIEW_REJECTED removes the rows from the counts;
        REVIEW_DUBIOUS keeps the prediction in the counts (summaries report how many).
        `reviewer` (a name, "" = unknown) is stored with the time, through the column
        ``reviewer_index`` into the sample's list of names (`reviewers`); status
        REVIEW_NONE clears both.
        """
        if status not in REVIEW_STATUS_NAMES:
            raise ValueError(f"status must be one of {sorted(REVIEW_STATUS_NAMES)}, got {status}")
        if status == REVIEW_RELABELLED and reviewed_class < 0:
            raise ValueError("a relabelled specimen needs reviewed_class >= 0")
        if status != REVIEW_RELABELLED and reviewed_class != -1:
            raise ValueError("reviewed_class is only given with status REVIEW_RELABELLED")
        n_rows = len(np.asarray(rows))
        with self._mutex:
            who = self._reviewer_index(sample_id, reviewer) if status != REVIEW_NONE else -1
            self.update_specimens(
                sample_id,
                rows,
                review_status=np.full(n_rows, status, dtype=np.int8),
                reviewed_class=np.full(n_rows, reviewed_class, dtype=np.int64),
                review_time=np.full(n_rows, time.time() if status != REVIEW_NONE else np.nan),
                reviewer_index=np.full(n_rows, who, dtype=np.int64),
            )

    def reviewers(self, sample_id: str) -> list[str]:
        """Names of the people who reviewed a sample; ``reviewer_index`` points into it."""
        with self._mutex:
            return [str(x) for x in self._sample_group(sample_id).attrs.get("reviewers", [])]

    def _reviewer_index(self, sample_id: str, reviewer: str) -> int:
        """Index of `reviewer` in the sample's names, added if new; -1 for "" (unknown)."""
        if not isinstance(reviewer, str):
            raise ValueError(f"reviewer must be text, got {type(reviewer).__name__}")
        name = reviewer.strip()
        if not name:
            return -1
        if len(name) > 100 or not name.isprintable():
            raise ValueError("reviewer must be a printable name of at most 100 characters")
        with self._mutex:
            self._check_writable()
            group = self._sample_group(sample_id)
            names = [str(x) for x in group.attrs.get("reviewers", [])]
            if name in names:
                return names.index(name)
            if len(names) >= np.iinfo(np.int16).max:
                raise ValueError(f"sample {sample_id!r} has too many reviewers")
            # The name is written before any row points at it: a crash in between leaves
            # an unused name, never a dangling index.
            group.update_attributes({"reviewers": [*names, name]})
            return len(names)

    # ------------------------------------------------------------------ classes
    def add_classes(self, names: Sequence[str]) -> list[str]:
        """Extend the store's class list with `names` (those not in it yet), at the end.

        Old indices keep their meaning; every sample's per-class columns read 0 for the
        new classes until a model that knows them classifies the rows again. Returns
        the classes added. One attrs write: a kill leaves the old list or the new one.
        """
        with self._mutex:
            self._check_writable()
            new = [str(n) for n in names if str(n) not in self._class_names]
            new = list(dict.fromkeys(new))
            if not new:
                return []
            combined = _validate_classes([*self._class_names, *new])
            self._root.update_attributes({"class_names": combined, "updated": _now_iso()})
            self._class_names = combined
            # Cached arrays have the old width: reopened (and widened) at the next write.
            self._arrays.clear()
            self._running.clear()
            return new

    def class_map(self, names: Sequence[str]) -> np.ndarray:
        """(len(names),) store index of each of a model's classes, matched by name;
        ValueError naming those the store lacks (`add_classes` adds them).
        """
        missing = [n for n in names if n not in self._class_names]
        if missing:
            raise ValueError(
                f"the model's classes {missing} are not in the store {self.path} "
                f"(its classes: {', '.join(self._class_names)})"
            )
        return np.array([self._class_names.index(n) for n in names], dtype=np.int64)

    # ------------------------------------------------------------------ kept features
    def feature_space(self, sample_id: str) -> dict[str, Any] | None:
        """Which backbone made the sample's kept features (None: none kept)."""
        with self._mutex:
            space = self._sample_group(sample_id).attrs.get("feature_space")
            return dict(space) if isinstance(space, Mapping) else None

    def write_features(
        self,
        sample_id: str,
        rows: Sequence[int] | np.ndarray,
        features: np.ndarray,
        space: Mapping[str, Any],
        *,
        replace: bool = False,
    ) -> bool:
        """Keep the features of committed `rows` (see `_kept`); True when written.

        Features of another space than the sample's are not mixed in: False, nothing
        written, unless `replace` (every row's features made again, e.g. by a
        reclassification with another backbone): then the old ones are cleared first.
        """
        space = check_feature_space(space)
        feats = np.asarray(features, dtype=np.float32)
        idx = np.asarray(rows, dtype=np.int64)
        if feats.shape != (idx.size, space["dim"]):
            raise ValueError(f"features must be ({idx.size}, {space['dim']}), got {feats.shape}")
        with self._mutex:
            self._check_writable()
            group = self._sample_group(sample_id)
            n = _counter(group.attrs, "n_committed")
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"rows must lie in [0, {n}) (committed rows of {sample_id!r})")
            current = group.attrs.get("feature_space")
            arr = features_array(group, space["dim"], create=False)
            if (current and not same_space(current, space)) or (
                arr is not None and arr.shape[1] != space["dim"]
            ):
                if not replace:
                    return False
                if arr is not None:
                    arr.resize((0, arr.shape[1]))
                    del group[arr.basename]
                    arr = None
                group.update_attributes({"feature_space": None})
            arr = arr if arr is not None else features_array(group, space["dim"], create=True)
            assert arr is not None  # created when missing
            if arr.shape[0] < n:
                arr.resize((n, space["dim"]))
            if idx.size:
                arr.oindex[idx] = feats
            group.update_attributes({"feature_space": space})
            return True

    def read_features(
        self, sample_id: str, rows: Sequence[int] | np.ndarray | None = None
    ) -> tuple[np.ndarray, dict[str, Any] | None]:
        """Kept features of committed rows, (len(rows), D) float32 (NaN rows: none kept),
        and their space; ``(zeros (len, 0), None)`` when the sample keeps none. A chunk
        that cannot be read counts as not kept (they are a cache; see `_kept`).
        """
        with self._mutex:
            group = self._sample_group(sample_id)
            n = _counter(group.attrs, "n_committed")
            idx = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"rows must lie in [0, {n}) (committed rows of {sample_id!r})")
            space = group.attrs.get("feature_space")
            arr = features_array(group, 0, create=False)
            if not space or arr is None:
                return np.zeros((idx.size, 0), np.float32), None
            out = np.full((idx.size, arr.shape[1]), np.nan, np.float32)
            have = idx < arr.shape[0]
            if have.any():
                try:
                    out[have] = arr.oindex[idx[have]]
                except Exception as exc:  # a damaged cache chunk: computed again from crops
                    warnings.warn(
                        f"{self.path}: sample {sample_id!r}: kept features unreadable "
                        f"({one_line(exc)}); they will be computed again from the crops",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    out[:] = np.nan
            return out, dict(space)

    # ------------------------------------------------------------------ reclassification
    def classification_history(self, sample_id: str) -> list[dict[str, Any]]:
        """Classifications a later model replaced, oldest first: each with its model,
        when it was replaced, its counts then and where its columns are kept.
        """
        with self._mutex:
            hist = self._sample_group(sample_id).attrs.get("classification_history", [])
            return [dict(e) for e in hist]

    def read_classification(self, sample_id: str, index: int) -> dict[str, np.ndarray]:
        """The classification columns of history entry `index` (as `read_specimens` would
        have returned them then), with the review columns of today.
        """
        with self._mutex:
            hist = self.classification_history(sample_id)
            if not 0 <= index < len(hist):
                raise ValueError(f"sample {sample_id!r} has no classification {index}")
            group = self._sample_group(sample_id)
            snap = group[f"{HISTORY_GROUP}/{hist[index]['snapshot']}"]
            rows = int(hist[index]["rows"])
            out = self.read_specimens(sample_id)
            k = len(self._class_names)
            for name in CLASSIFICATION_COLUMNS:
                values = self._decoded(sample_id, name, lambda a=snap[name]: a[:rows])
                if name in PER_CLASS_ARRAYS:
                    values = padded(values, values.shape[1], k)
                out[name][:rows] = values
            return out

    def replace_classification(
        self,
        sample_id: str,
        columns: Mapping[str, np.ndarray],
        provenance: Mapping[str, Any],
        *,
        replaced: Mapping[str, Any],
    ) -> int:
        """Classify every committed row of a sample again: the new `columns` replace the
        classification (`_kept.CLASSIFICATION_COLUMNS`, one row per committed row), the
        old ones are kept as history with `replaced` (what to say about the model that
        made them), `provenance` is added (the new model) and a tally row records the
        new counts. Reviews are kept. Returns the history entry's index.

        Crash safety: the old columns are copied first; a marker then says a replacement
        is under way; the new columns are written; one attrs write commits them with the
        provenance and the history entry and clears the marker. A writer that finds the
        marker (`_recover`) copies the old columns back.
        """
        k = len(self._class_names)
        with self._mutex:
            self._check_writable()
            group = self._sample_group(sample_id)
            arrays = self._sample_arrays(sample_id)
            n = _counter(group.attrs, "n_committed")
            m0 = _counter(group.attrs, "n_tally")
            cols = _classification_columns(columns, n, k)
            old = self.read_specimens(
                sample_id, columns=list(dict.fromkeys([*CLASSIFICATION_COLUMNS, *_COUNT_COLUMNS]))
            )
            history = [dict(e) for e in group.attrs.get("classification_history", [])]
            index = len(history)
            snapshot = f"{index}-{int(time.time() * 1000)}"
            snap_group = group.require_group(HISTORY_GROUP).create_group(snapshot)
            for name in (*CLASSIFICATION_COLUMNS, *_REVIEW_KEPT):
                values = np.ascontiguousarray(old[name], dtype=_COLUMNS[name][0])
                arr = snap_group.create_array(
                    name,
                    shape=values.shape,
                    chunks=(max(n, 1), *values.shape[1:]),
                    dtype=values.dtype,
                    fill_value=_COLUMNS[name][1],
                    compressors=_compressor(),
                )
                if n:
                    arr.with_config({"write_empty_chunks": True})[:] = values
            group.update_attributes({"reclassifying": snapshot})
            # A person confirmed the earlier class: if the new model says otherwise, that
            # person's class stands (as a relabel), so a label never follows a model.
            status = old["review_status"].copy()
            reviewed = old["reviewed_class"].copy()
            moved = (status == REVIEW_CONFIRMED) & (cols["class_index"] != old["class_index"])
            status[moved] = REVIEW_RELABELLED
            reviewed[moved] = old["class_index"][moved]
            cols["review_status"] = status.astype(_COLUMNS["review_status"][0])
            cols["reviewed_class"] = reviewed.astype(_COLUMNS["reviewed_class"][0])
            counts = stats.class_counts({**old, **cols}, k)
            writes = [
                (arrays[name], slice(0, n), cols[name])
                for name in (*CLASSIFICATION_COLUMNS, *_REVIEW_KEPT)
            ]
            writes.append((arrays["tally_time"], slice(m0, m0 + 1), np.array([time.time()])))
            writes.append((arrays["tally_counts"], slice(m0, m0 + 1), counts[None, :]))
            _write_rows(arrays, {"tally_time": m0 + 1, "tally_counts": m0 + 1}, writes)
            # Under the "reclassifying" marker: a kill before the commit below undoes it all.
            seal_rows(arrays, group.attrs, sample_id, slice(0, n))
            now = _now_iso()
            history.append(
                {
                    **_jsonable(dict(replaced), "replaced classification"),
                    "snapshot": snapshot,
                    "rows": n,
                    "counts": stats.class_counts(old, k).tolist(),
                    "replaced_at": now,
                }
            )
            entry = {
                **_jsonable(dict(provenance), "provenance"),
                "set_at": now,
                "from_row": 0,
                "reclassified_rows": n,
            }
            group.update_attributes(
                {
                    "provenance": [*group.attrs.get("provenance", []), entry],
                    "classification_history": history,
                    "reclassifying": None,
                    "n_tally": m0 + 1,
                    "updated": now,
                }
            )
            self._running[sample_id] = counts
            return index

    # ------------------------------------------------------------------ recovery
    def _recover(self, *, deep_clean: bool) -> None:
        """Trim ghost rows and remove half-made samples left by a killed writer.

        A sample that cannot be read as written is left exactly as it is (never removed,
        trimmed or extended): it is reported once and refused to writers; the others are
        recovered as usual.
        """
        import zarr

        sdir = self._samples_dir()
        k = len(self._class_names)
        for entry in sorted(os.scandir(sdir), key=lambda e: e.name) if sdir.is_dir() else []:
            if not entry.is_dir():
                continue
            found = sample_problems(Path(entry.path), k, optional_chunks=("crops",))
            if found and _half_made(Path(entry.path)):
                # add_sample was killed before the sample existed: nothing was committed,
                # every file is ours and readable, so it is safe to remove.
                warnings.warn(
                    f"removing incomplete sample {entry.name!r} left by an interrupted writer",
                    RuntimeWarning,
                    stacklevel=3,
                )
                shutil.rmtree(entry.path)
                continue
            if found:
                self._damaged[entry.name] = str(found[0])
                warnings.warn(
                    f"{self.path}: {found[0]}; sample left as it is and closed to writing "
                    f"(run 'napari-foram check {self.path}')",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            group: Any = zarr.open_group(self.path, path=f"samples/{entry.name}", mode="r+")
            if group.attrs.get("reclassifying"):
                _undo_reclassification(group, entry.name)
                warnings.warn(
                    f"sample {entry.name!r}: an interrupted reclassification was undone "
                    "(the earlier classification is back; run it again)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            for name in _OPTIONAL_COLUMNS:
                if name not in group:  # a store written before the column existed
                    _create_column(group, name, _counter(group.attrs, "n_committed"), k)
            if SEAL_ARRAY not in group:  # written before seals: its rows stay unsealed
                create_seal_array(group, _counter(group.attrs, "n_committed"))
            # write_empty_chunks: the crop chunk zeroed past the end must stay a file.
            arrays = {
                name: group[name].with_config({"write_empty_chunks": True})
                for name in (*_COLUMNS, "crops", SEAL_ARRAY, *_TALLY_ARRAYS)
            }
            n_committed = _counter(group.attrs, "n_committed")
            unsealed = resealing_rows(group.attrs, n_committed)
            if group.attrs.get(RESEALING_ATTR) is not None:
                # A review or repair was killed between its writes and their seals: its
                # values stand (as before seals existed), sealed now.
                seal_rows(arrays, group.attrs, entry.name, unsealed)
                group.update_attributes({RESEALING_ATTR: None})
            # Rows above the counter are either preallocated (never written: frame_index
            # still its fill value, -1) or a batch a killed writer wrote but never
            # committed. Only the second is worth a word, and it is named as such.
            fi = arrays["frame_index"]
            written = (
                int(np.count_nonzero(fi[n_committed : fi.shape[0]] != -1))
                if fi.shape[0] > n_committed
                else 0
            )
            _trim_arrays(arrays, n_committed, _counter(group.attrs, "n_tally"), entry.name)
            if written:
                warnings.warn(
                    f"sample {entry.name!r}: removed {written} row(s) an interrupted writer "
                    f"wrote but never committed (the {n_committed} committed rows are intact)",
                    RuntimeWarning,
                    stacklevel=3,
                )
        if deep_clean:
            # zarr writes each file as <name>.<hex>.partial then renames it; a kill mid-write
            # leaves the .partial behind. Harmless, but they would pile up.

            untouched = {self._samples_dir() / s for s in self._damaged}
            untouched.add(self.path / QUARANTINE_DIR)
            for dirpath, dirnames, filenames in os.walk(self.path):
                # Damaged samples and quarantine stay byte for byte as they are.
                dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in untouched]
                for fname in filenames:
                    if fname.endswith(".partial") or (
                        fname.startswith(LOCK_NAME + ".") and fname.endswith((".tmp", ".stale"))
                    ):
                        with contextlib.suppress(OSError):
                            Path(dirpath, fname).unlink()

    # ------------------------------------------------------------------ reading
    def read_specimens(
        self, sample_id: str, *, crops: bool = False, columns: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Committed rows of a sample as numpy arrays.

        Parameters
        ----------
        crops
            Also load the crops (n, 224, 224, 3) uint8 (150 kB each: prefer `read_crops`).
        columns
            Subset of `SPECIMEN_COLUMNS` to read (default: all).

        Returns
        -------
        dict
            Column name -> array of n rows (n = committed rows), plus "row" (n,) int64.

        Raises
        ------
        DamagedSampleError
            When a column's metadata or a chunk of its committed rows is missing or
            cannot be decoded: zarr would read a missing chunk as fill values (class -1,
            counted nowhere), so that is never returned as data.
        """
        with self._mutex:
            group = self._sample_group(sample_id)
            n = _counter(group.attrs, "n_committed")
            names = SPECIMEN_COLUMNS if columns is None else tuple(columns)
            unknown = [c for c in names if c not in _COLUMNS]
            if unknown:
                raise ValueError(f"unknown specimen column(s): {', '.join(unknown)}")
            arrays = self._arrays.get(sample_id) or {}
            if not arrays:  # a writer's cached arrays were checked before its first write
                self._check_present(sample_id, names)
            out: dict[str, np.ndarray] = {"row": np.arange(n, dtype=np.int64)}
            for name in names:
                arr = arrays.get(name) if arrays else None
                if arr is None:
                    if name in _OPTIONAL_COLUMNS and name not in group:
                        out[name] = _filled_column(name, n, len(self._class_names))
                        continue
                    arr = group[name]
                out[name] = self._decoded(sample_id, name, lambda a=arr: a[:n])
                if name in PER_CLASS_ARRAYS:
                    out[name] = padded(out[name], class_width(group), len(self._class_names))
            if crops:
                out["crops"] = self.read_crops(sample_id)
            return out

    def read_crops(
        self, sample_id: str, rows: Sequence[int] | np.ndarray | None = None
    ) -> np.ndarray:
        """Crops of committed rows, (len(rows), 224, 224, 3) uint8 (all rows if None).

        Rows stored without a crop read as zeros.
        """
        with self._mutex:
            group = self._sample_group(sample_id)
            n = _counter(group.attrs, "n_committed")
            self._check_present(sample_id, ("crops",), optional_chunks=("crops",))
            arr = group["crops"]
            if rows is None:
                return self._decoded(sample_id, "crops", lambda: arr[:n])
            idx = np.asarray(rows, dtype=np.int64)
            if idx.ndim != 1:
                raise ValueError("rows must be 1-D")
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"rows must lie in [0, {n}) (committed rows of {sample_id!r})")
            return (
                self._decoded(sample_id, "crops", lambda: arr.oindex[idx])
                if idx.size
                else np.zeros((0, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
            )

    def read_tally(self, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The running tally: commit times (m,) s since epoch, counts (m, K) per class."""
        with self._mutex:
            group = self._sample_group(sample_id)
            m = _counter(group.attrs, "n_tally")
            self._check_present(sample_id, _TALLY_ARRAYS)
            counts = self._decoded(sample_id, "tally_counts", lambda: group["tally_counts"][:m])
            return (
                self._decoded(sample_id, "tally_time", lambda: group["tally_time"][:m]),
                padded(counts, class_width(group), len(self._class_names)),
            )

    def _check_present(
        self, sample_id: str, names: Sequence[str], optional_chunks: Sequence[str] = ()
    ) -> None:
        """DamagedSampleError unless the metadata and every chunk file of the committed
        rows of arrays `names` are there (stat calls only; decoding is `_decoded`'s).
        """
        found = sample_problems(
            self._samples_dir() / sample_id,
            len(self._class_names),
            arrays=names,
            optional_chunks=optional_chunks,
        )
        if found:
            raise self._damage(sample_id, str(found[0]))

    def _decoded(self, sample_id: str, name: str, read: Any) -> np.ndarray:
        """`read()` as an array; a chunk that cannot be decoded becomes a one-line
        DamagedSampleError naming the sample and array (zarr's own message names neither).
        """
        try:
            return np.asarray(read())
        except Exception as exc:  # codec errors (e.g. Zstd), size mismatches, JSON errors
            msg = one_line(exc)
            # Not remembered as damaged: a writer mid-rename may be the cause; checked again.
            raise DamagedSampleError(
                f"{self.path}: sample {sample_id!r}, array {name}: cannot decode ({msg}); "
                f"run 'napari-foram check {self.path}'"
            ) from None

    def counts(self, sample_id: str) -> np.ndarray:
        """Counted specimens per class, (K,) int64: reviewed labels override predictions;
        duplicates and rejected rows are left out. The model's unsure rule is not applied
        here (every row has its class): `sample_summary` applies it.
        """
        data = self.read_specimens(sample_id, columns=_COUNT_COLUMNS)
        return stats.class_counts(data, len(self._class_names))

    def iter_samples(self) -> Iterator[tuple[SampleRecord, dict[str, np.ndarray]]]:
        """(record, committed specimens without crops) for each sample, in order."""
        for sid in self.samples():
            yield self.sample_record(sid), self.read_specimens(sid)


def _classification_columns(
    columns: Mapping[str, np.ndarray], n: int, k: int
) -> dict[str, np.ndarray]:
    """`replace_classification`'s columns checked: every classification column, n rows,
    the stored dtypes, classes in range, probabilities finite and in [0, 1].
    """
    out: dict[str, np.ndarray] = {}
    for name in CLASSIFICATION_COLUMNS:
        if name not in columns:
            raise ValueError(f"a classification needs column {name!r}")
        dtype, _, tail = _COLUMNS[name]
        trailing = tuple(k if t == "K" else int(t) for t in tail)
        arr = np.asarray(columns[name])
        if arr.shape != (n, *trailing):
            raise ValueError(f"{name} must have shape {(n, *trailing)}, got {arr.shape}")
        out[name] = np.ascontiguousarray(arr, dtype=dtype)
    if np.any((out["class_index"] < 0) | (out["class_index"] >= k)):
        raise ValueError(f"class_index must lie in [0, {k})")
    probs = out["mean_probs"]
    if not np.all(np.isfinite(probs)) or np.any(probs < -1e-6) or np.any(probs > 1 + 1e-6):
        raise ValueError("mean_probs must be finite and lie in [0, 1]")
    return out


#: Review columns a reclassification may change (a confirmation the new model disagrees
#: with becomes a relabel to the confirmed class) and its snapshot keeps.
_REVIEW_KEPT = ("review_status", "reviewed_class")


def _undo_reclassification(group: Any, sample_id: str) -> None:
    """Copy the snapshot of an interrupted `replace_classification` back (see there)."""
    snapshot = str(group.attrs["reclassifying"])
    snap = group[f"{HISTORY_GROUP}/{snapshot}"]
    n = _counter(group.attrs, "n_committed")
    for name in (*CLASSIFICATION_COLUMNS, *_REVIEW_KEPT):
        if name not in snap:
            continue
        values = snap[name][:n]
        arr = group[name].with_config({"write_empty_chunks": True})
        if name in PER_CLASS_ARRAYS:
            width = values.shape[1]
            arr[:n, :width] = values
        else:
            arr[:n] = values
    if SEAL_ARRAY in group:
        names = (*sealed_columns(group.attrs), "crops", SEAL_ARRAY)
        arrays = {name: group[name].with_config({"write_empty_chunks": True}) for name in names}
        seal_rows(arrays, group.attrs, sample_id, slice(0, n))
    # The tally row it may have written lies above n_tally: trimmed as any uncommitted row.
    del group[HISTORY_GROUP][snapshot]
    group.update_attributes({"reclassifying": None})
