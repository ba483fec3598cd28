"""What a tally store holds: its schema, the sample record and a batch of specimens."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram.defaults import CROP_SIZE
from napari_foram.tally import stats
from napari_foram.tally.stats import (
    REVIEW_CONFIRMED,
    REVIEW_DUBIOUS,
    REVIEW_NONE,
    REVIEW_REJECTED,
    REVIEW_RELABELLED,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

#: The value of the root attribute "schema" that marks a napari-foram tally store.
SCHEMA_NAME = "napari-foram-tally"

#: The layout version this code writes and understands.
SCHEMA_VERSION = 1

#: Name of the writer's lock file inside the store directory.
LOCK_NAME = ".napari-foram.lock"

REVIEW_STATUS_NAMES = {
    REVIEW_NONE: "none",
    REVIEW_CONFIRMED: "confirmed",
    REVIEW_RELABELLED: "relabelled",
    REVIEW_REJECTED: "rejected",
    REVIEW_DUBIOUS: "dubious",
}

#: Sample types a count sheet knows (science.md, "What a count sheet / core log holds").
SAMPLE_TYPES = ("core", "cuttings", "sidewall_core", "outcrop", "surface", "other")

_SAMPLE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# ">63", ">=125", "<1000", "63-150", "100-1000", "" (unknown)
_SIZE_FRACTION_RE = re.compile(r"^(?:(?:>=|>|<=|<)?\d+(?:\.\d+)?|\d+(?:\.\d+)?-\d+(?:\.\d+)?)$")

# Scalar/per-class specimen columns: name -> (dtype, fill value, trailing shape kind).
# "K" means one value per class.
_COLUMNS: dict[str, tuple[str, Any, tuple[int | str, ...]]] = {
    "frame_index": ("int64", -1, ()),
    "stage_x_um": ("float64", float("nan"), ()),
    "stage_y_um": ("float64", float("nan"), ()),
    "centroid_y": ("float64", float("nan"), ()),
    "centroid_x": ("float64", float("nan"), ()),
    "bbox": ("int32", -1, (4,)),
    "area_px": ("int64", 0, ()),
    "class_index": ("int16", -1, ()),
    "mean_probs": ("float32", float("nan"), ("K",)),
    "variance": ("float32", float("nan"), ("K",)),
    "entropy": ("float32", float("nan"), ()),
    "mutual_information": ("float32", float("nan"), ()),
    "vote_fraction": ("float32", float("nan"), ()),
    "review_status": ("int8", REVIEW_NONE, ()),
    "reviewed_class": ("int16", -1, ()),
    "review_time": ("float64", float("nan"), ()),
    "duplicate_of": ("int64", -1, ()),
    # Index into the sample's "reviewers" attribute (who set review_status), -1 = none.
    "reviewer_index": ("int16", -1, ()),
    # How unlike the model's training crops (classify.density); NaN = not measured.
    "feature_distance": ("float32", float("nan"), ()),
}

# Columns added after stores were first written: an old store lacks their arrays, so
# readers fill them in and a writer creates them on open (still schema version 1).
_OPTIONAL_COLUMNS = ("reviewer_index", "feature_distance")

#: Names of the per-specimen columns returned by `TallyStore.read_specimens` (crops aside).
SPECIMEN_COLUMNS = tuple(_COLUMNS)

# Columns needed to count specimens (see stats.final_labels).
_COUNT_COLUMNS = ("class_index", "reviewed_class", "review_status", "duplicate_of")

# Rows per chunk of the small columns: a batch rewrites at most one or two chunk files.
_ROWS_PER_CHUNK = 4096

# Crops per chunk of the crops array.
_CROPS_PER_CHUNK = 4


class DamagedSampleError(ValueError):
    """A sample whose files cannot be read as they were written (one-line message)."""


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class SampleRecord:
    """What a count sheet holds about one sample (one row of a core log).

    Attributes
    ----------
    sample_id
        Unique name in the store: letters, digits, ``.``, ``_``, ``-``; starts with a letter
        or digit; at most 128 characters (it names a directory).
    site_hole, core, section
        Free text, e.g. "U1308A", "12H", "3".
    interval_top_cm, interval_bottom_cm
        Sampled interval within the section in cm (top <= bottom), or None.
    depth
        Depth of the sample in `depth_unit`, or None.
    depth_unit
        Unit of `depth`: e.g. "m", "mbsf", "mcd", "ft", "cm".
    depth_scale
        Name of the depth scale, e.g. "CSF-A", "CCSF", "MD", "TVD" ("" when unknown).
    sample_type
        One of `SAMPLE_TYPES`.
    size_fraction_um
        Sieve fraction in micrometres as text: ">63", ">=125", "100-1000", or "".
    split_factor
        The counted part is 1/split_factor of the sample (>= 1; 1 = everything counted).
    dry_weight_g
        Dry weight of the whole sample in grams (> 0), or None when not weighed.
    operator
        Who counted.
    notes
        Anything else.
    """

    sample_id: str
    site_hole: str = ""
    core: str = ""
    section: str = ""
    interval_top_cm: float | None = None
    interval_bottom_cm: float | None = None
    depth: float | None = None
    depth_unit: str = "m"
    depth_scale: str = ""
    sample_type: str = "core"
    size_fraction_um: str = ""
    split_factor: float = 1.0
    dry_weight_g: float | None = None
    operator: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        _validate_record(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SampleRecord:
        """Build a record from a mapping, e.g. a row of a sample sheet CSV.

        Text that holds a number is converted for the numeric fields; empty text means
        None (or the default). Unknown keys raise ValueError.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown sample record field(s): {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if isinstance(value, str):
                value = value.strip()
            if name in _FLOAT_FIELDS:
                if value is None or value == "":
                    if name == "split_factor":
                        continue  # default 1.0
                    value = None
                elif isinstance(value, str):
                    try:
                        value = float(value)
                    except ValueError:
                        raise ValueError(f"{name}: {value!r} is not a number") from None
            elif value is None:
                continue
            elif not isinstance(value, str):
                value = str(value)
            kwargs[name] = value
        if "sample_id" not in kwargs:
            raise ValueError("sample record needs a sample_id")
        return cls(**kwargs)


_FLOAT_FIELDS = (
    "interval_top_cm",
    "interval_bottom_cm",
    "depth",
    "split_factor",
    "dry_weight_g",
)
_TEXT_FIELDS = (
    "sample_id",
    "site_hole",
    "core",
    "section",
    "depth_unit",
    "depth_scale",
    "sample_type",
    "size_fraction_um",
    "operator",
    "notes",
)


def _validate_record(rec: SampleRecord) -> None:
    for name in _TEXT_FIELDS:
        value = getattr(rec, name)
        if not isinstance(value, str):
            raise ValueError(f"{name} must be text, got {type(value).__name__}")
    if not _SAMPLE_ID_RE.match(rec.sample_id):
        raise ValueError(
            f"sample_id {rec.sample_id!r} is not safe: use 1-128 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    for name in _FLOAT_FIELDS:
        value = getattr(rec, name)
        if value is None and name != "split_factor":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name} must be a number, got {type(value).__name__}")
        if not math.isfinite(float(value)):
            raise ValueError(f"{name} must be finite, got {value}")
        # Frozen dataclass: store plain floats so the record is JSON-ready.
        object.__setattr__(rec, name, float(value))
    if rec.interval_top_cm is not None and rec.interval_top_cm < 0:
        raise ValueError(f"interval_top_cm must be >= 0, got {rec.interval_top_cm}")
    if (
        rec.interval_top_cm is not None
        and rec.interval_bottom_cm is not None
        and rec.interval_bottom_cm < rec.interval_top_cm
    ):
        raise ValueError(
            f"interval_bottom_cm ({rec.interval_bottom_cm}) is above interval_top_cm "
            f"({rec.interval_top_cm})"
        )
    if rec.split_factor < 1.0:
        raise ValueError(
            f"split_factor must be >= 1 (1/split of the sample is counted), got {rec.split_factor}"
        )
    if rec.dry_weight_g is not None and rec.dry_weight_g <= 0:
        raise ValueError(f"dry_weight_g must be > 0 or None, got {rec.dry_weight_g}")
    if rec.sample_type not in SAMPLE_TYPES:
        raise ValueError(
            f"sample_type {rec.sample_type!r} is not one of {', '.join(SAMPLE_TYPES)}"
        )
    if rec.size_fraction_um and not _SIZE_FRACTION_RE.match(rec.size_fraction_um):
        raise ValueError(
            f"size_fraction_um {rec.size_fraction_um!r} is not like '>63', '>=125' or '100-1000'"
        )
    if rec.depth is not None and not rec.depth_unit:
        raise ValueError("depth_unit is empty although a depth is given")


@dataclass
class SpecimenBatch:
    """Rows to append to a sample: one entry per specimen, all arrays of length n.

    Required: `frame_index`, `centroid_y`, `centroid_x`, `bbox`, `area_px`, `mean_probs`.
    The rest have defaults: `class_index` = argmax of `mean_probs`; `entropy` = predictive
    entropy of `mean_probs` (nats); `variance`, `mutual_information` = 0 (a single,
    deterministic prediction); `vote_fraction` = max of `mean_probs`; stage coordinates
    NaN (unknown); review columns "not reviewed"; `duplicate_of` = -1; `crops` None (not
    kept: the stored crop reads as zeros).

    Attributes
    ----------
    frame_index : (n,) int
    centroid_y, centroid_x : (n,) float, pixels in the frame
    bbox : (n, 4) int, (min_row, min_col, max_row, max_col) in the frame, pixels
    area_px : (n,) int, pixels
    mean_probs : (n, K) float, MC-dropout mean probabilities (rows sum to 1)
    variance : (n, K) float, MC-dropout variance per class
    class_index : (n,) int in [0, K)
    entropy, mutual_information : (n,) float, nats
    vote_fraction : (n,) float in [0, 1], share of MC samples voting for the majority class
    feature_distance : (n,) float, distance from the model's training crops (NaN: unknown)
    stage_x_um, stage_y_um : (n,) float, sample coordinates of the specimen, micrometres
    review_status : (n,) int8 codes (REVIEW_*)
    reviewed_class : (n,) int, -1 = none
    duplicate_of : (n,) int, row of the earlier record of the same specimen, -1 = none
    crops : (n, 224, 224, 3) uint8 or None
    features : (n, D) float32 pooled backbone features to keep (`TallyStore.write_features`;
        written when `append_specimens` is given their ``feature_space``), or None
    """

    frame_index: np.ndarray
    centroid_y: np.ndarray
    centroid_x: np.ndarray
    bbox: np.ndarray
    area_px: np.ndarray
    mean_probs: np.ndarray
    variance: np.ndarray | None = None
    class_index: np.ndarray | None = None
    entropy: np.ndarray | None = None
    mutual_information: np.ndarray | None = None
    vote_fraction: np.ndarray | None = None
    feature_distance: np.ndarray | None = None
    stage_x_um: np.ndarray | None = None
    stage_y_um: np.ndarray | None = None
    review_status: np.ndarray | None = None
    reviewed_class: np.ndarray | None = None
    duplicate_of: np.ndarray | None = None
    crops: np.ndarray | None = None
    features: np.ndarray | None = None

    def __len__(self) -> int:
        return int(np.asarray(self.frame_index).shape[0])

    def in_classes(self, where: np.ndarray, k: int) -> SpecimenBatch:
        """The batch with its per-class columns moved to a store's `k` classes: the
        model's class j goes to column ``where[j]`` (`TallyStore.class_map`, by name),
        the store's other classes get probability 0.
        """
        import dataclasses

        where = np.asarray(where, dtype=np.int64)
        probs = np.asarray(self.mean_probs)
        if where.shape != (probs.shape[1],) or (len(where) == k and (where == np.arange(k)).all()):
            if where.shape != (probs.shape[1],):
                raise ValueError(f"class map of {len(where)} for {probs.shape[1]} columns")
            return self
        n = len(self)

        def spread(values: np.ndarray) -> np.ndarray:
            out = np.zeros((n, k), dtype=np.float64)
            out[:, where] = values
            return out

        ci = np.argmax(probs, axis=1) if self.class_index is None else self.class_index
        return dataclasses.replace(
            self,
            mean_probs=spread(probs),
            variance=None if self.variance is None else spread(self.variance),
            class_index=where[np.asarray(ci, dtype=np.int64)] if n else np.zeros(0, np.int64),
        )

    def validated(self, n_classes: int) -> dict[str, np.ndarray]:
        """Columns as arrays of the stored dtypes, defaults filled; ValueError if bad.

        Returns a dict with every name in `SPECIMEN_COLUMNS` plus "crops" (None when absent).
        """
        fi = np.asarray(self.frame_index)
        if fi.ndim != 1:
            raise ValueError(f"frame_index must be 1-D, got shape {fi.shape}")
        n = fi.shape[0]
        probs = _as_float(self.mean_probs, "mean_probs", (n, n_classes))
        if np.any(probs < -1e-6) or np.any(probs > 1 + 1e-6):
            raise ValueError("mean_probs must lie in [0, 1]")
        out: dict[str, Any] = {
            "frame_index": _as_int(fi, "frame_index", (n,)),
            "centroid_y": _as_float(self.centroid_y, "centroid_y", (n,)),
            "centroid_x": _as_float(self.centroid_x, "centroid_x", (n,)),
            "bbox": _as_int(self.bbox, "bbox", (n, 4)),
            "area_px": _as_int(self.area_px, "area_px", (n,)),
            "mean_probs": probs,
        }
        if self.class_index is None:
            out["class_index"] = np.argmax(probs, axis=1) if n else np.zeros(0, dtype=np.int64)
        else:
            ci = _as_int(self.class_index, "class_index", (n,))
            if np.any((ci < 0) | (ci >= n_classes)):
                raise ValueError(
                    f"class_index must lie in [0, {n_classes}) for {n_classes} classes"
                )
            out["class_index"] = ci
        out["variance"] = (
            np.zeros((n, n_classes))
            if self.variance is None
            else _as_float(self.variance, "variance", (n, n_classes))
        )
        out["entropy"] = (
            stats.predictive_entropy(probs)
            if self.entropy is None
            else _as_float(self.entropy, "entropy", (n,))
        )
        out["mutual_information"] = (
            np.zeros(n)
            if self.mutual_information is None
            else _as_float(self.mutual_information, "mutual_information", (n,))
        )
        out["vote_fraction"] = (
            (probs.max(axis=1) if n else np.zeros(0))
            if self.vote_fraction is None
            else _as_float(self.vote_fraction, "vote_fraction", (n,))
        )
        out["feature_distance"] = (
            np.full(n, np.nan)
            if self.feature_distance is None
            else _as_float(self.feature_distance, "feature_distance", (n,), True)
        )
        for name in ("stage_x_um", "stage_y_um"):
            value = getattr(self, name)
            out[name] = np.full(n, np.nan) if value is None else _as_float(value, name, (n,), True)
        rs = (
            np.full(n, REVIEW_NONE)
            if self.review_status is None
            else _as_int(self.review_status, "review_status", (n,))
        )
        if np.any(~np.isin(rs, list(REVIEW_STATUS_NAMES))):
            raise ValueError(f"review_status codes must be one of {sorted(REVIEW_STATUS_NAMES)}")
        out["review_status"] = rs
        rc = (
            np.full(n, -1)
            if self.reviewed_class is None
            else _as_int(self.reviewed_class, "reviewed_class", (n,))
        )
        if np.any((rc < -1) | (rc >= n_classes)):
            raise ValueError(f"reviewed_class must be -1 or lie in [0, {n_classes})")
        out["reviewed_class"] = rc
        out["review_time"] = np.full(n, np.nan)
        out["reviewer_index"] = np.full(n, -1)
        out["duplicate_of"] = (
            np.full(n, -1)
            if self.duplicate_of is None
            else _as_int(self.duplicate_of, "duplicate_of", (n,))
        )
        if self.crops is None:
            out["crops"] = None
        else:
            crops = np.asarray(self.crops)
            if crops.shape != (n, CROP_SIZE, CROP_SIZE, 3) or crops.dtype != np.uint8:
                raise ValueError(
                    f"crops must be uint8 of shape ({n}, {CROP_SIZE}, {CROP_SIZE}, 3), "
                    f"got {crops.dtype} {crops.shape}"
                )
            out["crops"] = crops
        for name, (dtype, _, _) in _COLUMNS.items():
            out[name] = np.ascontiguousarray(out[name], dtype=dtype)
        return out


def _as_float(
    value: Any, name: str, shape: tuple[int, ...], allow_nan: bool = False
) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(arr) & ~np.isnan(arr) if allow_nan else ~np.isfinite(arr)
    if np.any(bad):
        raise ValueError(f"{name} holds non-finite values")
    return arr


def _as_int(value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)
