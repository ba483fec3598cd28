"""Browsing the frames a batch counted (for the batch widget)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import os
    from pathlib import Path

    from ._tasks import FileResult


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
    from napari_foram.detect import equivalent_diameter
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
        equivalent_diameter(np.asarray(columns["area_px"], dtype=np.float64)),
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
