"""Exporting validated crops as a training folder (one subfolder per class)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ._queue import _VALIDATION_COLUMNS

if TYPE_CHECKING:
    import os
    from collections.abc import Collection, Mapping, Sequence

    import numpy as np

    from napari_foram._progress import ProgressCallback
    from napari_foram.tally.store import TallyStore


# ----------------------------------------------------------------------------- export
@dataclass
class ExportedCrops:
    """What `export_validated_crops` wrote.

    Attributes
    ----------
    out_dir
        The ImageFolder root.
    files
        The PNG files written.
    counts
        Crops written per class (every class of the store, 0 included).
    removed
        Files of the same samples removed because their row is no longer validated or
        now belongs to another class (a later review changed it).
    """

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    removed: int = 0

    def __len__(self) -> int:
        return len(self.files)

    def summary(self) -> str:
        """One line: "wrote 12 validated crops to DIR (planktic 5, ...)"."""
        per_class = ", ".join(f"{name} {n}" for name, n in self.counts.items())
        return f"wrote {len(self.files)} validated crops to {self.out_dir} ({per_class})"


def validated_rows(specimens: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, classes) of the confirmed and relabelled specimens that count.

    The class is the reviewed one for relabelled rows and the prediction for confirmed
    ones. Duplicates (another record of a specimen) are left out, so no specimen is in a
    data set twice.
    """
    from napari_foram.teaching import labelled_rows

    return labelled_rows(specimens)


def _check_folder_name(name: str) -> None:
    if (
        not name
        or name in (".", "..")
        or name.startswith(".")
        or any(c in name for c in ("/", "\\", "\0"))
    ):
        raise ValueError(f"class name {name!r} cannot name a folder of the export")


def export_validated_crops(
    store: TallyStore,
    out_dir: str | os.PathLike[str],
    *,
    samples: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
) -> ExportedCrops:
    """Write the validated crops of a store as an ImageFolder data set.

    Only confirmed and relabelled specimens are written, each under the class a person
    gave it: ``<out_dir>/<class>/<sample>_<row>.png`` (the store's crop, 224 x 224 RGB).
    A folder is made for every class of the store, empty ones included, so the data set
    names all the classes. Exporting again updates the folder: a crop whose row was
    relabelled, rejected or undone since is moved or removed; other files are left alone
    (so the folder may also hold other labelled images, e.g. the original training set).

    Parameters
    ----------
    store
        An open `TallyStore` (read or append mode).
    out_dir
        The data set folder (created if missing); not inside the store.
    samples
        Sample ids to export (default: every sample).
    progress
        ``progress(done, total, message)`` after each crop.

    Returns
    -------
    ExportedCrops
    """
    import imageio.v3 as iio

    out = Path(out_dir).expanduser()
    classes = store.class_names
    for name in classes:
        _check_folder_name(name)
    known = store.samples()
    ids = known if samples is None else list(samples)
    missing = [s for s in ids if s not in known]
    if missing:
        raise ValueError(f"no sample(s) {', '.join(map(repr, missing))} in {store.path}")
    store_dir = Path(store.path).resolve()
    target = out.resolve()
    if target == store_dir or store_dir in target.parents:
        raise ValueError(f"export folder {out} is inside the tally store {store.path}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"export folder {out} exists and is not a folder")
    for name in classes:
        (out / name).mkdir(parents=True, exist_ok=True)

    plan: list[tuple[str, int, int]] = []  # (sample, row, class)
    for sid in ids:
        data = store.read_specimens(sid, columns=_VALIDATION_COLUMNS)
        rows, labels = validated_rows(data)
        plan.extend((sid, int(r), int(c)) for r, c in zip(rows, labels, strict=True))
    wanted = {(sid, row): c for sid, row, c in plan}

    # Files of these samples from an earlier export whose row changed since.
    removed = 0
    for c, name in enumerate(classes):
        for path in (out / name).iterdir():
            key = _exported_key(path.name, ids)
            if key is not None and wanted.get(key) != c:
                path.unlink()
                removed += 1

    result = ExportedCrops(out_dir=out, counts=dict.fromkeys(classes, 0), removed=removed)
    by_sample: dict[str, list[tuple[int, int]]] = {}
    for sid, row, c in plan:
        by_sample.setdefault(sid, []).append((row, c))
    done = 0
    for sid, items in by_sample.items():
        # A few crops per read: the crops array is chunked by 4 rows.
        for start in range(0, len(items), 16):
            part = items[start : start + 16]
            crops = store.read_crops(sid, [r for r, _ in part])
            for (row, c), crop in zip(part, crops, strict=True):
                path = out / classes[c] / f"{sid}_{row}.png"
                tmp = path.with_name(f".{path.name}.tmp")
                # Written then renamed: a half-written PNG never sits under a class name.
                iio.imwrite(tmp, crop, extension=".png", compress_level=3)
                tmp.replace(path)
                result.files.append(path)
                result.counts[classes[c]] += 1
                done += 1
                if progress is not None:
                    progress(done, len(plan), f"{sid}_{row}.png")
    return result


def _exported_key(filename: str, samples: Collection[str]) -> tuple[str, int] | None:
    """(sample, row) of an exported file name ``<sample>_<row>.png`` of one of `samples`."""
    if not filename.endswith(".png"):
        return None
    stem = filename[: -len(".png")]
    sid, sep, row = stem.rpartition("_")
    if not sep or not row.isdigit() or sid not in samples:
        return None
    return sid, int(row)
