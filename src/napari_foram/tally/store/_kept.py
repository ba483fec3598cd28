"""What a sample keeps besides its rows: each specimen's features, and the classifications
a later model replaced.

Features
    ``features`` (n, D) float32: the pooled backbone features of each specimen
    (`napari_foram.classify.model`, layout "pooled"), kept so that a head can be trained
    again and every specimen classified again without running the backbone (a few ms per
    specimen instead of ~0.2 s on two cores). They are derived data, a cache: a row
    without them reads NaN and is computed again from its crop when needed; their array
    is not covered by the commit counter and its damage is never the sample's damage.
    The sample attribute ``feature_space`` says which backbone made them (its conv-tensor
    digest, input convention, layout, dimension): features of another backbone never mix.

History
    ``history/<i>/`` holds the classification columns as they were before a
    reclassification replaced them (the earlier model's answer for every row), and the
    sample attribute ``classification_history`` lists them with the model, the time and
    the counts. ``reclassifying`` marks a replacement in progress: a writer that finds it
    (the previous one was killed) puts the snapshot back, so a sample is always wholly
    one model's answer.

Class width
    Per-class arrays (``mean_probs``, ``variance``, ``tally_counts``) may be narrower than
    the store's class list after `TallyStore.add_classes`: new classes go at the end, so
    old indices keep their meaning, and readers pad the missing columns with 0 (the model
    that wrote them knew no such class). The sample attribute ``class_width`` is the
    width a writer finished: wider columns beyond it (a widening cut by a kill) are
    ignored and written again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._files import _compressor

#: Name of the kept-features array in a sample group.
FEATURES = "features"
#: Rows per chunk of the features array (2048 float32 x 64 = 512 kB a chunk).
FEATURE_CHUNK_ROWS = 64
#: Per-class arrays that `TallyStore.add_classes` widens.
PER_CLASS_ARRAYS = ("mean_probs", "variance", "tally_counts")
#: The columns a classification fills, kept in a history snapshot.
CLASSIFICATION_COLUMNS = (
    "class_index",
    "mean_probs",
    "variance",
    "entropy",
    "mutual_information",
    "vote_fraction",
    "feature_distance",
)
#: Sample group holding history snapshots.
HISTORY_GROUP = "history"


def class_width(group: Any) -> int:
    """Width of the sample's per-class columns that a writer finished."""
    width = group.attrs.get("class_width")
    if isinstance(width, int) and not isinstance(width, bool) and width > 0:
        return width
    return int(group["mean_probs"].shape[1])


def padded(values: np.ndarray, width: int, k: int, fill: float = 0.0) -> np.ndarray:
    """Per-class `values` (n, >= width) as (n, k): the first `width` columns kept, the rest
    `fill` (columns beyond `width` are an unfinished widening; beyond `k`, classes this
    reader does not know yet).
    """
    values = np.asarray(values)
    width = min(width, values.shape[1], k)
    if values.shape[1] == k and width == k:
        return values
    out = np.full((values.shape[0], k), fill, dtype=values.dtype)
    out[:, :width] = values[:, :width]
    return out


def widen(arrays: Mapping[str, Any], group: Any, k: int) -> bool:
    """Make the per-class arrays `k` wide, zeros in the new columns of existing rows; then
    record ``class_width``. Returns True when anything changed (the caller reopens the
    arrays: zarr keeps shapes in the objects).
    """
    width = class_width(group)
    if width >= k:
        return False
    for name in PER_CLASS_ARRAYS:
        arr = arrays[name]
        rows = arr.shape[0]
        if arr.shape[1] < k:
            arr.resize((rows, k))
        if rows:
            # Written out (write_empty_chunks): every committed row keeps its chunk files.
            arr[:, width:k] = np.zeros((rows, k - width), dtype=arr.dtype)
    group.update_attributes({"class_width": k})
    return True


def features_array(group: Any, dim: int, create: bool) -> Any | None:
    """The sample's features array (created `dim` wide when `create`), or None."""
    if FEATURES in group:
        return group[FEATURES].with_config({"write_empty_chunks": True})
    if not create:
        return None
    arr = group.create_array(
        FEATURES,
        shape=(0, dim),
        chunks=(FEATURE_CHUNK_ROWS, dim),
        dtype="float32",
        fill_value=float("nan"),
        compressors=_compressor(),
    )
    return arr.with_config({"write_empty_chunks": True})


def check_feature_space(space: Mapping[str, Any]) -> dict[str, Any]:
    """A feature-space record, checked: backbone digest, input convention, layout, dim."""
    if not isinstance(space, Mapping):
        raise ValueError(f"feature space must be a mapping, got {type(space).__name__}")
    out = dict(space)
    for key in ("backbone_sha256", "input_convention", "layout"):
        if not isinstance(out.get(key), str) or not out[key]:
            raise ValueError(f"feature space needs a non-empty {key!r}")
    dim = out.get("dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"feature space dim must be a positive integer, got {dim!r}")
    return out


def same_space(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether features of spaces `a` and `b` are interchangeable (same backbone tensors,
    input convention, layout and length; the compute path may differ).
    """
    if not a or not b:
        return False
    keys = ("backbone_sha256", "input_convention", "layout", "dim")
    return all(a.get(k) == b.get(k) for k in keys)
