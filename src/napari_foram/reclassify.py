"""Classify counted specimens again with another model, without detecting or acquiring.

A sample's specimens stay the same rows (positions, crops, reviews); only their
classification changes, and the earlier one is kept as history
(`TallyStore.replace_classification`): the provenance lists every model that counted
the sample and when, the running tally gets a row with the new counts, and export can
read any earlier classification back.

Where the features come from (``ReclassifyReport.source``):

- **kept**: the sample keeps each specimen's pooled backbone features
  (`napari_foram.tally.store._kept`) and the model is a "pooled" head on the same
  backbone: only the head runs (a few ms per specimen on two cores);
- **crops**: otherwise the stored crops go through the model's backbone (~0.2 s per
  specimen on two cores), and their pooled features are kept for next time.

A "pooled" model classifies from features with dropout keys hashed from the features
(`napari_foram.classify.mc_dropout.feature_keys`), whichever way they came, so the answer
is the same in the widget and on the command line. Classes are matched by name: a
model with classes the store lacks extends the store's list first (old counts keep
their classes); the store never maps one model's column onto another's by position.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram.defaults import MC_SAMPLES

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from napari_foram._progress import ProgressCallback
    from napari_foram.classify.predict import Predictions, Predictor
    from napari_foram.tally.store import TallyStore

#: Crops read and classified together on the crops path (150 kB each).
CROP_CHUNK = 32
#: Keys of a provenance entry that describe the model (replaced on reclassification);
#: the others (detector, pixel size, microscope) describe the counting and are kept.
MODEL_KEYS = (
    "model_sha256",
    "model_name",
    "class_names",
    "mc_samples",
    "backbone",
    "backbone_sha256",
    "input_convention",
    "unsure_rule",
    "classify_precision",
)


class Cancelled(Exception):
    """The caller asked to stop; nothing of the sample was changed."""


@dataclass
class ReclassifyReport:
    """What `reclassify_sample` did to one sample."""

    sample_id: str
    rows: int
    source: str  # "kept", "crops" or "kept+crops"
    counts_before: list[int]
    counts_after: list[int]
    class_names: list[str]
    model_sha256: str
    seconds: float
    history_index: int
    classes_added: list[str] = field(default_factory=list)

    @property
    def seconds_per_specimen(self) -> float:
        """Wall time per reclassified specimen (`seconds` over `rows`)."""
        return self.seconds / max(self.rows, 1)

    def to_dict(self) -> dict[str, Any]:
        """The report, JSON-ready (what ``napari-foram reclassify --json`` prints)."""
        return {
            "sample_id": self.sample_id,
            "rows": self.rows,
            "source": self.source,
            "class_names": self.class_names,
            "counts_before": self.counts_before,
            "counts_after": self.counts_after,
            "model_sha256": self.model_sha256,
            "seconds": round(self.seconds, 3),
            "seconds_per_specimen": round(self.seconds_per_specimen, 5),
            "history_index": self.history_index,
            "classes_added": self.classes_added,
        }


def model_name(info: Any) -> str:
    """A model's name as people see it: its file name, else its digest's start."""
    path = getattr(info, "path", None)
    if path:
        return Path(path).name
    return f"model {str(getattr(info, 'sha256', ''))[:12]}".strip()


def sample_features(
    store: TallyStore,
    sample_id: str,
    predictor: Predictor,
    *,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, str]:
    """(n, D) pooled features of every committed row in the predictor's feature space,
    and where they came from ("kept", "crops" or "kept+crops"). Rows without kept
    features are computed from their crops and kept (when the predictor can).
    """
    import torch

    from napari_foram.tally.store._kept import same_space

    n = store.n_specimens(sample_id)
    space = predictor.feature_space
    kept, kept_space = store.read_features(sample_id)
    if kept_space is None or not same_space(kept_space, space):
        feats = np.full((n, int(space["dim"])), np.nan, np.float32)
        replace = kept_space is not None
    else:
        feats, replace = kept, False
    missing = np.flatnonzero(~np.isfinite(feats).all(axis=1))
    source = "kept" if not len(missing) else ("crops" if len(missing) == n else "kept+crops")
    if not predictor.keeps_features and len(missing):
        raise ValueError(
            "this model's compute path (int8) cannot give the pooled features: "
            "set NAPARI_FORAM_PRECISION=fp32 to classify again"
        )
    done_rows: list[np.ndarray] = []
    for start in range(0, len(missing), CROP_CHUNK):
        if cancel is not None and cancel():
            raise Cancelled("stopped by the user; the sample is unchanged")
        rows = missing[start : start + CROP_CHUNK]
        crops = store.read_crops(sample_id, rows)
        with torch.inference_mode():
            pred = predictor.predict(crops, mc_samples=1, keep_features=True)
        assert pred.kept_features is not None
        feats[rows] = pred.kept_features
        done_rows.append(rows)
        if progress is not None:
            progress(start + len(rows), len(missing), f"{sample_id}: features from crops")
    if done_rows and store.mode == "a":
        rows = np.concatenate(done_rows)
        store.write_features(sample_id, rows, feats[rows], space, replace=replace)
    return feats, source


def predict_from_features(
    predictor: Predictor, features: np.ndarray, mc_samples: int = MC_SAMPLES
) -> Predictions:
    """A "pooled" model's predictions from pooled features (dropout keys hashed from the
    features: the same answer wherever the features came from).
    """
    import torch

    if predictor.info.feature_layout != "pooled":
        raise ValueError("only a 'pooled' model classifies from kept features")
    return predictor.predict_features(torch.from_numpy(np.ascontiguousarray(features)), mc_samples)


def reclassify_sample(
    store: TallyStore,
    sample_id: str,
    predictor: Predictor,
    *,
    mc_samples: int = MC_SAMPLES,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> ReclassifyReport:
    """Classify every counted specimen of a sample again with `predictor` (see module).

    Raises
    ------
    Cancelled
        `cancel()` returned True before the new classification was written.
    ValueError
        One line: the store is read-only, the sample is damaged, the model cannot.
    """
    t0 = time.perf_counter()
    info = predictor.info
    added = store.add_classes([c for c in info.class_names if c not in store.class_names])
    names = store.class_names
    n = store.n_specimens(sample_id)
    before = store.counts(sample_id).tolist()
    if info.feature_layout == "pooled":
        feats, source = sample_features(
            store, sample_id, predictor, progress=progress, cancel=cancel
        )
        pred = predict_from_features(predictor, feats, mc_samples)
    else:
        source = "crops"
        pred = _predict_from_crops(store, sample_id, predictor, mc_samples, progress, cancel)
    if cancel is not None and cancel():
        raise Cancelled("stopped by the user; the sample is unchanged")
    pred = pred.in_classes(names)
    latest = store.provenance(sample_id)
    replaced = {k: latest[k] for k in MODEL_KEYS if k in latest}
    replaced["counted_at"] = latest.get("set_at", "")
    replaced["class_names_then"] = replaced.pop("class_names", None) or names
    from napari_foram.tally.columns import model_provenance, prediction_columns

    provenance = {k: v for k, v in latest.items() if k not in (*MODEL_KEYS, "set_at", "from_row")}
    provenance.pop("reclassified_rows", None)
    provenance.update(
        {
            "model_sha256": info.sha256,
            "model_name": model_name(info),
            "class_names": list(info.class_names),
            "mc_samples": max(int(mc_samples), 1),
            **model_provenance(info),
            "classify_precision": predictor.precision,
            "reclassified": True,
            "features": source,
        }
    )
    index = store.replace_classification(
        sample_id, prediction_columns(pred), provenance, replaced=replaced
    )
    return ReclassifyReport(
        sample_id=sample_id,
        rows=n,
        source=source,
        counts_before=_padded(before, len(names)),
        counts_after=store.counts(sample_id).tolist(),
        class_names=names,
        model_sha256=info.sha256,
        seconds=time.perf_counter() - t0,
        history_index=index,
        classes_added=added,
    )


def reclassify_store(
    store: TallyStore,
    predictor: Predictor,
    *,
    sample_ids: Sequence[str] | None = None,
    mc_samples: int = MC_SAMPLES,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> list[ReclassifyReport]:
    """`reclassify_sample` for each sample (default: every one with specimens)."""
    ids = list(sample_ids) if sample_ids is not None else store.samples()
    unknown = [s for s in ids if s not in store.samples()]
    if unknown:
        raise ValueError(f"no sample {unknown[0]!r} in {store.path}")
    reports = []
    for sid in ids:
        if store.n_specimens(sid) == 0:
            continue
        reports.append(
            reclassify_sample(
                store, sid, predictor, mc_samples=mc_samples, progress=progress, cancel=cancel
            )
        )
    return reports


def _predict_from_crops(
    store: TallyStore,
    sample_id: str,
    predictor: Predictor,
    mc_samples: int,
    progress: ProgressCallback | None,
    cancel: Callable[[], bool] | None,
) -> Predictions:
    """A "flat" model's predictions from the stored crops (its head reads block 5)."""
    import dataclasses

    n = store.n_specimens(sample_id)
    parts = []
    for start in range(0, n, CROP_CHUNK):
        if cancel is not None and cancel():
            raise Cancelled("stopped by the user; the sample is unchanged")
        rows = np.arange(start, min(start + CROP_CHUNK, n))
        parts.append(predictor.predict(store.read_crops(sample_id, rows), mc_samples=mc_samples))
        if progress is not None:
            progress(int(rows[-1]) + 1, n, f"{sample_id}: classifying crops")
    first = parts[0]
    columns: dict[str, Any] = {
        name: np.concatenate([getattr(p, name) for p in parts])
        for name in (
            "class_index",
            "mean_probs",
            "variance",
            "entropy",
            "mutual_information",
            "vote_class",
            "vote_fraction",
            "feature_distance",
        )
    }
    return dataclasses.replace(first, **columns)


def _padded(counts: list[int], k: int) -> list[int]:
    return [*counts, *([0] * (k - len(counts)))]
