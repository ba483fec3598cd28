"""Classification metrics as pure numpy functions of predictions (no model, no torch).

Everything the evaluation report holds is computed here from plain arrays -- true labels,
predicted probabilities, Monte Carlo samples -- so each number can be checked against a
hand computation on a few fixed predictions.

Conventions: K classes indexed 0 .. K-1; a confusion matrix has true classes in rows and
predicted classes in columns; ties in an argmax or a vote go to the lowest class index
(as `napari_foram.classify.mc_dropout.mc_statistics` does); metrics that are undefined
(precision of a class never predicted, recall of a class absent from the data) are NaN,
never a silent 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Reliability-diagram bins: equal width over [0, 1].
DEFAULT_CALIBRATION_BINS = 10


def _labels(y: np.ndarray | list[int], name: str = "labels") -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integer class indices, got {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def accuracy(y_true: np.ndarray | list[int], y_pred: np.ndarray | list[int]) -> float:
    """Fraction of predictions equal to the truth (NaN for no samples)."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in length")
    return float(np.mean(t == p)) if t.size else float("nan")


def confusion_matrix(
    y_true: np.ndarray | list[int], y_pred: np.ndarray | list[int], num_classes: int
) -> np.ndarray:
    """(K, K) int64 counts: ``cm[i, j]`` = samples of true class i predicted as j."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in length")
    k = int(num_classes)
    for arr, name in ((t, "y_true"), (p, "y_pred")):
        if arr.size and (arr.min() < 0 or arr.max() >= k):
            raise ValueError(f"{name} holds class indices outside 0..{k - 1}")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix.

    F1 is computed as 2 TP / (2 TP + FP + FN), which equals the harmonic mean of precision
    and recall where both exist and is 0 for a class that is never predicted correctly
    (e.g. never predicted at all although present).

    Returns
    -------
    dict
        ``precision`` (K,) (NaN for a class never predicted), ``recall`` (K,) (NaN for a
        class absent from the truth), ``f1`` (K,) (NaN only for a class absent from both),
        float64, and ``support`` (K,) int64, samples per true class.
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got {cm.shape}")
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(actual > 0, tp / actual, np.nan)
        denom = predicted + actual  # = 2 TP + FP + FN
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": actual.astype(np.int64),
    }


def macro_scores(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Unweighted means of precision, recall and F1 over the classes present in the truth.

    A present class that is never predicted counts with precision 0 (it made no correct
    predictions), as scikit-learn's ``zero_division=0`` does; absent classes are left out.
    NaN when no class is present.
    """
    present = scores["support"] > 0
    if not present.any():
        return {"precision": float("nan"), "recall": float("nan"), "f1": float("nan")}
    return {
        key: float(np.mean(np.nan_to_num(scores[key][present], nan=0.0)))
        for key in ("precision", "recall", "f1")
    }


def calibration(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_CALIBRATION_BINS
) -> dict[str, Any]:
    """Reliability-diagram bins and the expected calibration error (ECE).

    Bin b covers confidences in (b / n_bins, (b + 1) / n_bins]; a confidence of exactly 0
    falls into bin 0. ECE = sum_b (n_b / N) |accuracy_b - mean confidence_b|.

    Parameters
    ----------
    confidence
        (N,) probability of the predicted class, 0-1.
    correct
        (N,) bool, whether the prediction was right.
    n_bins
        Number of equal-width bins.

    Returns
    -------
    dict
        ``ece`` (float, NaN for no samples), ``edges`` (n_bins + 1,), ``count`` (n_bins,)
        int, ``confidence`` and ``accuracy`` (n_bins,) per-bin means (NaN for empty bins).
    """
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    ok = np.asarray(correct, dtype=bool).reshape(-1)
    if conf.shape != ok.shape:
        raise ValueError(f"confidence {conf.shape} and correct {ok.shape} differ in length")
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if conf.size and (conf.min() < 0 or conf.max() > 1 + 1e-6):
        raise ValueError("confidences must lie in [0, 1]")
    n_bins = int(n_bins)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    ok_sum = np.bincount(idx, weights=ok.astype(np.float64), minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        mean_acc = np.where(count > 0, ok_sum / count, np.nan)
    if conf.size:
        filled = count > 0
        gaps = np.abs(mean_acc[filled] - mean_conf[filled])
        ece = float(np.sum(count[filled] / conf.size * gaps))
    else:
        ece = float("nan")
    return {
        "ece": ece,
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "count": count.astype(np.int64),
        "confidence": mean_conf,
        "accuracy": mean_acc,
    }


def sample_votes(sample_probs: np.ndarray) -> np.ndarray:
    """(N, K) int64: how many of the S Monte Carlo samples voted for each class.

    `sample_probs` is (S, N, K): S stochastic passes over N crops.
    """
    probs = np.asarray(sample_probs)
    if probs.ndim != 3:
        raise ValueError(f"sample_probs must be (S, N, K), got shape {probs.shape}")
    _, n, k = probs.shape
    votes = probs.argmax(axis=2)  # (S, N)
    out = np.zeros((n, k), dtype=np.int64)
    for c in range(k):
        out[:, c] = (votes == c).sum(axis=0)
    return out


def mc_dropout_accuracy(sample_probs: np.ndarray, y_true: np.ndarray) -> dict[str, Any]:
    """Accuracy of each Monte Carlo sample, their mean +- sd, and the majority vote.

    This is the study's section 5.2: every stochastic pass is a classifier of its own
    (mean accuracy over the 100 passes, 97.9 +- 0.5 %), and the passes vote (98.5 %).

    Parameters
    ----------
    sample_probs
        (S, N, K) softmax outputs of S dropout passes over N crops.
    y_true
        (N,) true class indices.

    Returns
    -------
    dict
        ``per_sample`` (S,) accuracies, ``mean`` and ``sd`` (population sd over the S
        samples, 0 for S = 1), ``vote_accuracy``, ``vote_class`` (N,) (ties: lowest
        index) and ``mean_prob_accuracy`` (argmax of the mean probabilities).
    """
    probs = np.asarray(sample_probs, dtype=np.float64)
    t = _labels(y_true, "y_true")
    if probs.ndim != 3 or probs.shape[1] != t.size:
        raise ValueError(
            f"sample_probs must be (S, N, K) with N = {t.size} labels, got {probs.shape}"
        )
    per_sample = (probs.argmax(axis=2) == t[None, :]).mean(axis=1) if t.size else np.array([])
    vote_class = sample_votes(probs).argmax(axis=1)
    mean_class = probs.mean(axis=0).argmax(axis=1)
    return {
        "per_sample": per_sample,
        "mean": float(per_sample.mean()) if per_sample.size else float("nan"),
        "sd": float(per_sample.std()) if per_sample.size else float("nan"),
        "vote_accuracy": accuracy(t, vote_class),
        "vote_class": vote_class,
        "mean_prob_accuracy": accuracy(t, mean_class),
    }


def entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy in nats over the last axis (0 log 0 = 0)."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return np.asarray(-terms.sum(axis=-1))


def mean_sd(values: list[float] | np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value) of repeats."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0
