"""Integrity of a tally store: what is damaged, and what `check --repair` can do about it.

A store is damaged when a file it needs cannot be read as it was written: a sample's
``zarr.json`` truncated or removed, an array's metadata gone, a chunk file missing
(zarr would silently read it as fill values: class -1, counts of 0) or not decodable.
Nothing here deletes anything. `check_store` only reads; `repair_store` rewrites what can
be derived from what is still readable and moves the rest into the store's
``quarantine/`` folder, listing every step it took.

Chunk files are found from each array's own metadata (chunk grid and chunk key encoding),
so the checks follow the layout zarr wrote, not a guess of it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram.defaults import CROP_SIZE
from napari_foram.reasons import one_line
from napari_foram.tally import stats

from ._files import _WriterLock, check_root_attrs, read_zarr_json
from ._kept import PER_CLASS_ARRAYS
from ._schema import _COLUMNS, _OPTIONAL_COLUMNS, _ROWS_PER_CHUNK, SampleRecord
from ._seal import SEAL_ARRAY, seal_mismatches, seal_rows, sealed_columns

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

#: Folder inside the store that `repair_store` moves unreadable parts into.
QUARANTINE_DIR = "quarantine"


@dataclass(frozen=True)
class Problem:
    """One damaged part of a store.

    Attributes
    ----------
    sample_id
        The sample ("" for the store's root).
    array
        The array ("" for the sample's own metadata).
    chunk
        Chunk key inside the array, e.g. ``c/0`` ("" when not about one chunk).
    reason
        What is wrong, one line.
    """

    sample_id: str
    array: str
    chunk: str
    reason: str

    def __str__(self) -> str:
        where = f"sample {self.sample_id!r}" if self.sample_id else "store root"
        if self.array:
            where += f", array {self.array}"
        if self.chunk:
            where += f", chunk {self.chunk}"
        return f"{where}: {self.reason}"


def read_json(path: Path) -> dict[str, Any]:
    """A metadata file as a dict; ValueError naming the file when it cannot be read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path.name} is missing") from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"{path.name} is unreadable ({one_line(exc)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} holds no JSON object")
    return data


def chunk_keys(meta: dict[str, Any], rows: int) -> list[str]:
    """Keys of the chunks that hold rows [0, rows) of a Zarr v3 array, from its metadata.

    ValueError if the metadata describes a grid or key encoding this code does not know.
    """
    try:
        shape = [int(s) for s in meta["shape"]]
        chunk_shape = [int(c) for c in meta["chunk_grid"]["configuration"]["chunk_shape"]]
        encoding = meta.get("chunk_key_encoding", {"name": "default"})
        name = encoding.get("name", "default")
        sep = encoding.get("configuration", {}).get("separator", "/" if name == "default" else ".")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"array metadata lacks its chunk grid ({one_line(exc)})") from None
    if len(shape) != len(chunk_shape) or not shape or min(chunk_shape) <= 0:
        raise ValueError(f"array metadata has shape {shape} but chunks {chunk_shape}")
    if name not in ("default", "v2"):
        raise ValueError(f"unknown chunk key encoding {name!r}")
    grids = [range(-(-rows // chunk_shape[0]))]
    grids += [range(-(-s // c)) for s, c in zip(shape[1:], chunk_shape[1:], strict=True)]
    keys = []
    for idx in np.ndindex(*(len(g) for g in grids)):
        text = sep.join(str(i) for i in idx)
        keys.append(f"c{sep}{text}" if name == "default" else text)
    return keys


def _expected_arrays(n_classes: int) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """Array name -> (dtype, trailing shape, which counter gives its rows)."""
    out: dict[str, tuple[str, tuple[int, ...], str]] = {}
    for name, (dtype, _, tail) in _COLUMNS.items():
        out[name] = (dtype, tuple(n_classes if t == "K" else int(t) for t in tail), "n_committed")
    out["crops"] = ("uint8", (CROP_SIZE, CROP_SIZE, 3), "n_committed")
    out[SEAL_ARRAY] = ("uint64", (2,), "n_committed")
    out["tally_time"] = ("float64", (), "n_tally")
    out["tally_counts"] = ("int64", (n_classes,), "n_tally")
    return out


def sample_problems(
    sample_dir: Path,
    n_classes: int,
    *,
    decode: bool = False,
    arrays: Sequence[str] | None = None,
    decode_last_only: Sequence[str] = (),
    optional_chunks: Sequence[str] = (),
    seals: bool = False,
) -> list[Problem]:
    """What is wrong with one sample folder ([] when nothing).

    Parameters
    ----------
    sample_dir
        ``STORE/samples/<sample_id>``.
    n_classes
        The store's number of classes (width of the per-class arrays).
    decode
        Also read every chunk of the committed rows (slow for crops); without it only
        metadata and the presence of every chunk file are checked.
    arrays
        Check only these arrays (default: all).
    decode_last_only
        With `decode`, these arrays have only their last chunk decoded (the one an
        append rewrites).
    optional_chunks
        Arrays whose missing chunk files are no problem (they read as fill values):
        ``crops`` for callers that do not need them, since stores written before every
        append stored a crop have no crop chunks for rows stored without one.
    seals
        With `decode`, also compare every sealed row with its seal (`_seal.py`): a chunk
        copied in from another sample or another place decodes well, but fails this.
    """
    sid = sample_dir.name
    try:
        meta = read_json(sample_dir / "zarr.json")
    except ValueError as exc:
        return [Problem(sid, "", "", str(exc))]
    attrs = meta.get("attributes")
    if meta.get("node_type") != "group" or not isinstance(attrs, dict):
        return [Problem(sid, "", "", "zarr.json does not describe a sample group")]
    problems: list[Problem] = []
    if attrs.get("initialised") is not True:
        problems.append(Problem(sid, "", "", "sample is incomplete (never initialised)"))
    counters: dict[str, int] = {}
    for key in ("n_committed", "n_tally"):
        value = attrs.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.append(Problem(sid, "", "", f"commit counter {key} is {value!r}"))
        else:
            counters[key] = value
    try:
        SampleRecord(**attrs.get("record", {}))
    except (TypeError, ValueError) as exc:
        problems.append(Problem(sid, "", "", f"sample record unreadable ({one_line(exc)})"))
    for key, kind in (("provenance", list), ("processed_files", dict), ("reviewers", list)):
        if key in attrs and not isinstance(attrs[key], kind):
            problems.append(Problem(sid, "", "", f"attribute {key} is not a {kind.__name__}"))
    if len(counters) < 2:
        return problems
    if counters["n_tally"] > counters["n_committed"]:
        # Every commit adds one tally row and at least one specimen row.
        problems.append(
            Problem(
                sid,
                "",
                "",
                f"commit counters disagree: n_tally {counters['n_tally']} > "
                f"n_committed {counters['n_committed']}",
            )
        )
    import zarr

    for name, (dtype, trailing, counter) in _expected_arrays(n_classes).items():
        if arrays is not None and name not in arrays:
            continue
        rows = counters[counter]
        adir = sample_dir / name
        if name in (*_OPTIONAL_COLUMNS, SEAL_ARRAY) and not adir.exists():
            continue  # a store written before the column existed: read as fill values
        try:
            ameta = read_json(adir / "zarr.json")
        except ValueError as exc:
            problems.append(Problem(sid, name, "", str(exc)))
            continue
        try:
            shape = tuple(int(s) for s in ameta["shape"])
            if ameta.get("node_type") != "array" or ameta.get("data_type") != dtype:
                raise ValueError(f"not a {dtype} array")
            if name in PER_CLASS_ARRAYS and len(shape) == 2 and shape[1] >= 1:
                # Classes added after these rows were written: narrower is fine (readers
                # pad), and columns beyond the finished width are an unfinished widening.
                width = attrs.get("class_width")
                if isinstance(width, int) and not isinstance(width, bool) and width >= 1:
                    ameta = {**ameta, "shape": [shape[0], min(shape[1], width)]}
            elif shape[1:] != trailing:
                raise ValueError(f"shape {shape} does not end in {trailing}")
            if shape[0] < rows:
                raise ValueError(f"{shape[0]} rows but {rows} are committed")
            keys = chunk_keys(ameta, rows)
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(Problem(sid, name, "", f"metadata: {one_line(exc)}"))
            continue
        missing = [k for k in keys if not (adir / k).is_file()]
        if name in optional_chunks:
            # Decode what is there; absent chunks read as fill values.
            keys = [k for k in keys if k not in missing]
            missing = []
        for key in missing:
            problems.append(Problem(sid, name, key, "chunk file missing"))
        if not decode or missing or not rows or not keys:
            continue
        try:
            arr = zarr.open_array(adir, mode="r", zarr_format=3)
        except Exception as exc:  # zarr raises many kinds for a bad metadata file
            problems.append(Problem(sid, name, "", f"cannot open ({one_line(exc)})"))
            continue
        step = int(arr.chunks[0])
        # Keys of our arrays vary only along rows (the trailing dims are one chunk).
        starts = [int(k.replace(".", "/").split("/")[-arr.ndim]) * step for k in keys]
        if name in decode_last_only:
            starts, keys = starts[-1:], keys[-1:]
        for start, key in zip(starts, keys, strict=True):
            try:
                arr[start : min(start + step, rows)]
            except Exception as exc:  # a corrupt chunk: decompression or size errors
                problems.append(Problem(sid, name, key, f"not decodable ({one_line(exc)})"))
    if decode and (arrays is None or {"class_index", "mean_probs"} <= set(arrays)):
        problems += _prediction_mismatch(sample_dir, counters["n_committed"], problems)
    if decode and seals and arrays is None and not problems:
        problems += _seal_problems(sample_dir, counters["n_committed"])
    return problems


def _seal_problems(sample_dir: Path, rows: int) -> list[Problem]:
    """Rows whose values or crop are not those sealed at their place (see `_seal.py`)."""
    import zarr

    sid = sample_dir.name
    group: Any
    try:
        group = zarr.open_group(sample_dir, mode="r", zarr_format=3)
        bad_crops, bad_rows = seal_mismatches(group, sid, rows)
    except Exception as exc:  # zarr raises many kinds for unreadable parts
        return [Problem(sid, SEAL_ARRAY, "", f"cannot compare with the seals ({one_line(exc)})")]
    found = []
    if bad_rows.size:
        first = int(bad_rows[0])
        found.append(
            Problem(
                sid,
                SEAL_ARRAY,
                "",
                f"{bad_rows.size} row(s) do not match their seals (first: row {first}, in "
                f"chunk c/{first // _ROWS_PER_CHUNK} of the specimen columns); a chunk was "
                "replaced or copied from another place",
            )
        )
    if bad_crops.size:
        first = int(bad_crops[0])
        step = int(group["crops"].chunks[0])
        found.append(
            Problem(
                sid,
                "crops",
                "",
                f"{bad_crops.size} crop(s) do not match their seals (first: row {first}, "
                f"chunk c/{first // step}/0/0/0); a chunk was replaced or copied from "
                "another place",
            )
        )
    return found


def _prediction_mismatch(sample_dir: Path, rows: int, found: list[Problem]) -> list[Problem]:
    """A row's class must be the arg-max of its probabilities (they are written
    together): a chunk of one of them copied in from elsewhere decodes well and passes
    its checksum, but not this.
    """
    import zarr

    if not rows or any(p.array in ("class_index", "mean_probs") for p in found):
        return []
    try:
        ci = zarr.open_array(sample_dir / "class_index", mode="r", zarr_format=3)[:rows]
        probs = zarr.open_array(sample_dir / "mean_probs", mode="r", zarr_format=3)[:rows]
    except Exception as exc:
        return [Problem(sample_dir.name, "class_index", "", f"cannot compare ({one_line(exc)})")]
    finite = np.asarray(np.isfinite(probs).all(axis=1), dtype=bool)
    best = np.argmax(np.where(finite[:, None], probs, 0), axis=1)
    wrong = np.asarray(finite & (np.asarray(ci) != best), dtype=bool)
    if not wrong.any():
        return []
    first = int(np.flatnonzero(wrong)[0])
    return [
        Problem(
            sample_dir.name,
            "class_index",
            "",
            f"{int(wrong.sum())} row(s) disagree with mean_probs (first: row {first}); "
            "a chunk was replaced or copied from elsewhere",
        )
    ]


def store_problems(root: Path, *, decode: bool = True) -> tuple[list[Problem], list[str]]:
    """Every problem of the store at `root`, and the sample folders found.

    ValueError if `root` is no tally store at all (its root metadata is unreadable).
    """
    meta = read_zarr_json(root)
    attrs = meta.get("attributes", {})
    check_root_attrs(attrs, root)
    n_classes = len(attrs["class_names"])
    problems: list[Problem] = []
    sdir = root / "samples"
    if not sdir.is_dir():
        return [Problem("", "samples", "", "the samples folder is missing")], []
    try:
        smeta = read_json(sdir / "zarr.json")
        if smeta.get("node_type") != "group":
            raise ValueError("zarr.json does not describe a group")
    except ValueError as exc:
        problems.append(Problem("", "samples", "", str(exc)))
    found = sorted(e.name for e in sdir.iterdir() if e.is_dir())
    for sid in found:
        problems += sample_problems(sdir / sid, n_classes, decode=decode, seals=decode)
    return problems, found


# ----------------------------------------------------------------------------- repair
def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def _move_aside(root: Path, item: Path, stamp: str) -> Path:
    """Move `item` (inside the store) to ``quarantine/<stamp>/<same relative path>``."""
    dest = root / QUARANTINE_DIR / stamp / item.relative_to(root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(item), str(dest))
    return dest


# Columns a damaged copy of can be recomputed from mean_probs (as SpecimenBatch's
# defaults do), or filled with "unknown" (the optional columns).
_FROM_PROBS = ("class_index", "entropy", "vote_fraction")


def repair_store(root: Path) -> list[str]:
    """Repair what can be derived, quarantine the rest; the list of what was done.

    - ``samples/zarr.json`` unreadable: rewritten (a group holds nothing else).
    - ``class_index``, ``entropy`` or ``vote_fraction`` with a missing or undecodable
      chunk, when ``mean_probs`` is intact: recomputed from the mean probabilities (the
      argmax, the predictive entropy, the largest probability: the values a store is
      written with by default), the bad chunk files moved to quarantine first.
    - ``reviewer_index`` or ``feature_distance`` damaged: refilled as "unknown" (-1, NaN).
    - Anything else (a sample's metadata, the record, measurements, crops, the running
      tally): the whole sample folder is moved into ``quarantine/`` and listed in the
      root attribute ``quarantined``, so the rest of the store is usable and nothing is
      deleted.

    Needs the writer lock (ValueError when another writer has the store open).
    """
    import zarr

    problems, _ = store_problems(root, decode=True)
    if not problems:
        return []
    lock = _WriterLock(root)
    lock.acquire()
    done: list[str] = []
    stamp = _stamp()
    try:
        attrs = json.loads((root / "zarr.json").read_text(encoding="utf-8"))["attributes"]
        if any(p.array == "samples" and not p.sample_id for p in problems):
            sdir = root / "samples"
            if (sdir / "zarr.json").exists():
                done.append(f"moved {_move_aside(root, sdir / 'zarr.json', stamp)} aside")
            zarr.open_group(sdir, mode="a", zarr_format=3)
            done.append("rewrote samples/zarr.json (a plain group)")
        by_sample: dict[str, list[Problem]] = {}
        for p in problems:
            if p.sample_id:
                by_sample.setdefault(p.sample_id, []).append(p)
        quarantined: list[dict[str, Any]] = list(attrs.get("quarantined", []))
        for sid, found in by_sample.items():
            sample_dir = root / "samples" / sid
            derivable = {p.array for p in found} <= {*_FROM_PROBS, *_OPTIONAL_COLUMNS} and all(
                p.chunk for p in found
            )
            if derivable and "mean_probs" in {p.array for p in found}:
                derivable = False
            if derivable:
                group_attrs = read_json(sample_dir / "zarr.json")["attributes"]
                n = int(group_attrs["n_committed"])
                probs: np.ndarray | None = None
                for name in sorted({p.array for p in found}):
                    for p in found:
                        if p.array == name and (sample_dir / name / p.chunk).exists():
                            _move_aside(root, sample_dir / name / p.chunk, stamp)
                    arr: Any = zarr.open_array(sample_dir / name, mode="r+", zarr_format=3)
                    arr = arr.with_config({"write_empty_chunks": True})
                    if name in _FROM_PROBS:
                        if probs is None:
                            mp = zarr.open_array(sample_dir / "mean_probs", mode="r")
                            probs = np.asarray(mp[:n], dtype=np.float64)
                        if name == "class_index":
                            values = np.argmax(probs, axis=1) if n else np.zeros(0)
                        elif name == "entropy":
                            values = stats.predictive_entropy(probs)
                        else:
                            values = probs.max(axis=1) if n else np.zeros(0)
                        how = "recomputed from mean_probs"
                    else:
                        values = np.full(n, _COLUMNS[name][1])
                        how = "refilled as unknown"
                    arr[:n] = np.asarray(values, dtype=_COLUMNS[name][0])
                    _reseal(sample_dir, n)
                    chunks = ", ".join(p.chunk for p in found if p.array == name)
                    done.append(
                        f"sample {sid!r}: {name} {how} (bad chunk(s) {chunks} moved to "
                        f"{QUARANTINE_DIR}/{stamp})"
                    )
                continue
            dest = _move_aside(root, sample_dir, stamp)
            reason = str(found[0])
            quarantined.append(
                {
                    "sample_id": sid,
                    "moved_to": str(dest.relative_to(root)),
                    "reason": reason,
                    "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
            )
            done.append(f"sample {sid!r}: moved to {dest.relative_to(root)} ({reason})")
        if quarantined != list(attrs.get("quarantined", [])):
            group = zarr.open_group(root, mode="r+", zarr_format=3)
            group.update_attributes({"quarantined": quarantined})
    finally:
        lock.release()
    return done


def _reseal(sample_dir: Path, n: int) -> None:
    """Seal the `n` rows of a sample again after a repair rewrote a derivable column."""
    import zarr

    group: Any = zarr.open_group(sample_dir, mode="r+", zarr_format=3)
    if SEAL_ARRAY not in group:
        return
    names = (*sealed_columns(group.attrs), "crops", SEAL_ARRAY)
    arrays = {name: group[name].with_config({"write_empty_chunks": True}) for name in names}
    seal_rows(arrays, group.attrs, sample_dir.name, slice(0, n))


def format_count(n: int, word: str) -> str:
    """'1 problem', '2 problems'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


__all__ = [
    "QUARANTINE_DIR",
    "Problem",
    "chunk_keys",
    "format_count",
    "read_json",
    "repair_store",
    "sample_problems",
    "store_problems",
]
