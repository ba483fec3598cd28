"""What counting writes to the store about a classification: a detection's store columns
(`specimen_columns`, of which `prediction_columns` are the classifier's), the model's part
of a sample's provenance (`model_provenance`, its unsure rule checked by
`model_unsure_rule`), and that rule applied to predictions not stored yet
(`predictions_unsure`).

`napari_foram.pipeline.CountingPipeline` fills rows with them; batch folders, a
reclassification, the live widget and ``classify`` use the same ones, so a row and a
provenance record mean the same whichever way they were written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram.tally.stats import UnsureRule

if TYPE_CHECKING:
    from napari_foram.classify.predict import Predictions
    from napari_foram.detect import Detections
    from napari_foram.frames import Frame


def model_unsure_rule(info: Any) -> dict[str, Any]:
    """A model's unsure rule (``ModelInfo.unsure_rule``) checked, as a plain dict for a
    provenance record; ``{}`` when it has none (or predates the field).

    Raises
    ------
    ValueError
        The rule is malformed (one line): better refused before counting than stored
        where every later tally would fail on it.
    """
    rule = getattr(info, "unsure_rule", None) or {}
    UnsureRule.from_dict(rule)
    return dict(rule)


def model_provenance(info: Any) -> dict[str, Any]:
    """What a sample's provenance records about the model besides its file digest: which
    backbone (name, conv-tensor digest) and input convention it classifies with, and its
    unsure rule when it has one (no key otherwise, so old models' records are unchanged).
    """
    out: dict[str, Any] = {
        "backbone": getattr(info, "backbone_id", "") or getattr(info, "backbone_weights", ""),
        "backbone_sha256": getattr(info, "backbone_sha256", ""),
        "input_convention": getattr(info, "input_convention", ""),
    }
    rule = model_unsure_rule(info)
    if rule:
        out["unsure_rule"] = rule
    return out


def prediction_columns(pred: Predictions) -> dict[str, np.ndarray]:
    """The store columns a classification fills (see `specimen_columns`), e.g. to apply
    an unsure rule (`stats.UnsureRule.above`) to predictions not stored yet.
    """
    return {
        "class_index": pred.class_index,
        "mean_probs": pred.mean_probs,
        "variance": pred.variance,
        "entropy": pred.entropy,
        "mutual_information": pred.mutual_information,
        "vote_fraction": pred.vote_fraction,
        "feature_distance": pred.feature_distance,
    }


def predictions_unsure(pred: Predictions, info: Any) -> np.ndarray:
    """(n,) bool: fresh predictions that the model's unsure rule flags (no review yet).

    The same test `stats.unsure_mask` applies to stored rows, for places that show
    predictions before (or without) storing them, e.g. ``classify``.
    """
    from napari_foram.tally.stats import UnsureRule

    return UnsureRule.from_dict(model_unsure_rule(info)).above(prediction_columns(pred))


def specimen_columns(
    frame: Frame, det: Detections, rows: np.ndarray, pred: Predictions
) -> dict[str, np.ndarray]:
    """Store columns of detections `rows` of `frame` with their classification `pred`
    (everything a specimen row holds but its stage position and review).
    """
    assert det.crops is not None  # the pipeline's detector always cuts crops
    return {
        "frame_index": np.full(len(rows), frame.index, dtype=np.int64),
        "centroid_y": det.centroid[rows, 0],
        "centroid_x": det.centroid[rows, 1],
        "bbox": det.bbox[rows],
        "area_px": np.round(det.area_px[rows]).astype(np.int64),
        **prediction_columns(pred),
        "crops": det.crops[rows],
    }
