"""Counting statistics for foraminifera tallies (pure numpy).

Counts per class with reviewed labels overriding predictions; the classification
uncertainty of MC-dropout probabilities as expected counts with a variance; Wilson
intervals for percentages; specimens per gram; planktic/benthic ratio; progress toward
the usual target of ~300 specimens (science.md, "Counting statistics").

"Specimens" arguments are dicts of equal-length columns as returned by
`TallyStore.read_specimens` (only the columns a function needs must be present).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Review status codes (stored in the int8 column ``review_status``).
REVIEW_NONE = 0  # not looked at by a person
REVIEW_CONFIRMED = 1  # a person agreed with the prediction
REVIEW_RELABELLED = 2  # a person gave another class (``reviewed_class``)
REVIEW_REJECTED = 3  # not a specimen at all (artefact, debris): never counted
REVIEW_DUBIOUS = 4  # a person looked but could not tell: counted as predicted, reported

#: Classes that are counted but are not foraminifera, so not part of the assemblage.
NON_FORAM_CLASSES = ("sediment",)
#: Normalised class names taken as planktic / benthic for the P/B ratio.
PLANKTIC_NAMES = ("planktic", "planktonic")
BENTHIC_NAMES = ("calcareous_benthic", "agglutinated_benthic", "benthic")
#: The usual number of specimens counted per sample.
DEFAULT_TARGET = 300
#: Predictive entropy (nats) above which an unreviewed specimen is flagged uncertain.
#: ln(4) = 1.386 is the maximum for four classes; 0.5 nats is e.g. p = (0.87, 0.13/3 ...).
DEFAULT_UNCERTAIN_ENTROPY = 0.5

#: Uncertainty measures of a specimen: name -> what it is (higher = less sure). The review
#: queue sorts by them and a classifier's unsure rule thresholds one of them.
UNCERTAINTY_MEASURES: dict[str, str] = {
    "mutual_information": "mutual information (MC dropout, epistemic)",
    "entropy": "predictive entropy of the mean probabilities",
    "vote": "1 - vote fraction (share of MC passes not voting for the majority)",
    "feature_distance": "distance of the crop's VGG16 features from the training crops "
    "(about 1 for training-like crops; NaN: the model has no feature density)",
}
#: Measure values within this of an unsure rule's threshold count as equal to it, so not
#: above it: the measures are stored as float32, and e.g. a vote fraction of 0.7 reads
#: back as 0.69999999, which would put 1 - 0.7 "above" a threshold of 0.3.
UNSURE_TOLERANCE = 1e-6


def normalise_class_name(name: str) -> str:
    """Lower case, spaces and hyphens as underscores: "Planktic foram" -> "planktic_foram"."""
    return "_".join(name.strip().lower().replace("-", " ").split())


def predictive_entropy(mean_probs: np.ndarray) -> np.ndarray:
    """Entropy of each row of probabilities, in nats.

    Parameters
    ----------
    mean_probs : (n, K) array of probabilities (rows sum to 1)

    Returns
    -------
    (n,) float64, 0 for a certain prediction, ln K for a uniform one.
    """
    p = np.asarray(mean_probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"mean_probs must be (n, K), got shape {p.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(axis=1)


def uncertainty(specimens: Mapping[str, np.ndarray], measure: str) -> np.ndarray:
    """The uncertainty of every row under `measure` (higher = less sure), (n,) float64.

    Parameters
    ----------
    specimens
        Columns as `TallyStore.read_specimens` returns them (the measure's column).
    measure
        "mutual_information", "entropy" (both in nats), "vote" (1 - vote fraction) or
        "feature_distance" (NaN in stores written before it existed).
    """
    if measure not in UNCERTAINTY_MEASURES:
        raise ValueError(
            f"unknown uncertainty measure {measure!r}: use one of {list(UNCERTAINTY_MEASURES)}"
        )
    if measure == "vote":
        return 1.0 - np.asarray(specimens["vote_fraction"], dtype=np.float64)
    if measure not in specimens:  # a column older stores lack: unknown, never "above"
        return np.full(len(np.asarray(specimens["class_index"])), np.nan)
    return np.asarray(specimens[measure], dtype=np.float64)


@dataclass(frozen=True)
class UnsureRule:
    """When a classifier does not know what a specimen is: its measure above a threshold.

    A classifier checkpoint may carry such a rule (``ModelInfo.unsure_rule``, recorded in
    a sample's provenance as ``"unsure_rule"``), calibrated so that objects it was never
    trained on (ostracods, fragments ...) are reported as *unsure* instead of being given
    a class. The empty rule (no measure) makes no specimen unsure.

    Parameters
    ----------
    measure
        One of `UNCERTAINTY_MEASURES`; None for the empty rule.
    threshold
        A specimen is unsure when `uncertainty` under `measure` is strictly greater
        (beyond `UNSURE_TOLERANCE`).
    details
        The rule's other keys as given (how it was calibrated ...), kept for the record.
    """

    measure: str | None = None
    threshold: float = math.inf
    details: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, rule: Mapping[str, Any] | UnsureRule | None) -> UnsureRule:
        """The rule of a checkpoint's or a provenance entry's ``unsure_rule`` mapping.

        ``{}`` and None give the empty rule; otherwise ``"measure"`` and a finite,
        non-negative ``"threshold"`` are required (one-line ValueError if not).
        """
        if isinstance(rule, UnsureRule):
            return rule
        if rule is None or (isinstance(rule, Mapping) and not rule):
            return cls()
        if not isinstance(rule, Mapping):
            raise ValueError(f"unsure rule must be a mapping, got {type(rule).__name__}")
        measure = rule.get("measure")
        if measure not in UNCERTAINTY_MEASURES:
            raise ValueError(
                f"unsure rule: unknown measure {measure!r}: use one of "
                f"{list(UNCERTAINTY_MEASURES)}"
            )
        threshold = rule.get("threshold")
        # bool is an int: refuse it, a True threshold is a mistake, not 1.0.
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f"unsure rule: threshold must be a number, got {threshold!r}")
        if not math.isfinite(threshold) or threshold < 0:
            # Every measure is >= 0: a negative threshold would call every specimen unsure.
            raise ValueError(f"unsure rule: threshold must be finite and >= 0, got {threshold!r}")
        details = {k: v for k, v in rule.items() if k not in ("measure", "threshold")}
        return cls(str(measure), float(threshold), details)

    @property
    def active(self) -> bool:
        """Whether the rule can make a specimen unsure (False for the empty rule)."""
        return self.measure is not None

    def to_dict(self) -> dict[str, Any]:
        """The rule as stored (``{}`` for the empty rule); `from_dict` reads it back."""
        if self.measure is None:
            return {}
        return {"measure": self.measure, "threshold": self.threshold, **self.details}

    def describe(self) -> str:
        """Short text for a table or a plot: "mutual_information > 0.25" ("" when empty)."""
        if self.measure is None:
            return ""
        return f"{self.measure} > {self.threshold:g}"

    def above(self, specimens: Mapping[str, np.ndarray]) -> np.ndarray:
        """(n,) bool: rows whose measure exceeds the threshold, reviews not considered
        (e.g. on fresh predictions, which have no review columns).
        """
        n = len(np.asarray(specimens["class_index"]))
        if self.measure is None:
            return np.zeros(n, dtype=bool)
        return uncertainty(specimens, self.measure) > self.threshold + UNSURE_TOLERANCE


def unsure_mask(
    specimens: Mapping[str, np.ndarray], rule: UnsureRule | Mapping[str, Any] | None
) -> np.ndarray:
    """(n,) bool: counted specimens that `rule` calls unsure and no person has settled.

    A row is unsure when it counts (`counted_mask`: not a duplicate, not rejected), its
    measure is above the rule's threshold (`UnsureRule.above`) and its review status is
    "not reviewed": a person who confirmed, relabelled or marked it dubious has decided
    what it counts as. The empty rule (``{}`` or None) gives all False.
    """
    unsure_rule = UnsureRule.from_dict(rule)
    mask = counted_mask(specimens)
    if not unsure_rule.active:
        return np.zeros_like(mask)
    mask &= unsure_rule.above(specimens)
    if "review_status" in specimens:
        mask &= np.asarray(specimens["review_status"]) == REVIEW_NONE
    return mask


def counted_mask(specimens: Mapping[str, np.ndarray]) -> np.ndarray:
    """(n,) bool: rows that count (not a duplicate of an earlier row, not rejected)."""
    n = len(np.asarray(specimens["class_index"]))
    mask = np.ones(n, dtype=bool)
    if "duplicate_of" in specimens:
        mask &= np.asarray(specimens["duplicate_of"]) < 0
    if "review_status" in specimens:
        mask &= np.asarray(specimens["review_status"]) != REVIEW_REJECTED
    return mask


def final_labels(specimens: Mapping[str, np.ndarray]) -> np.ndarray:
    """(n,) int64 class of each row: the reviewed class where a person gave one, else the
    prediction; -1 for rows that do not count (duplicates, rejected).
    """
    labels = np.asarray(specimens["class_index"]).astype(np.int64, copy=True)
    if "reviewed_class" in specimens:
        reviewed = np.asarray(specimens["reviewed_class"]).astype(np.int64)
        labels = np.where(reviewed >= 0, reviewed, labels)
    labels[~counted_mask(specimens)] = -1
    return labels


def class_counts(
    specimens: Mapping[str, np.ndarray], n_classes: int, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Counted specimens per class, (K,) int64 (see `final_labels`).

    `exclude`, an (n,) bool mask, leaves those rows out too (e.g. `unsure_mask`).
    """
    labels = final_labels(specimens)
    if exclude is not None:
        labels = labels[~np.asarray(exclude, dtype=bool)]
    labels = labels[labels >= 0]
    if labels.size and labels.max() >= n_classes:
        raise ValueError(f"class index {labels.max()} out of range for {n_classes} classes")
    return np.bincount(labels, minlength=n_classes).astype(np.int64)


def expected_counts_from_probs(mean_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expected count per class and its variance from per-specimen class probabilities.

    With independent specimens and probabilities p_ik, the count of class k is a sum of
    Bernoulli variables: mean sum_i p_ik, variance sum_i p_ik (1 - p_ik).

    Parameters
    ----------
    mean_probs : (n, K)

    Returns
    -------
    expected : (K,) float64
    variance : (K,) float64
    """
    p = np.asarray(mean_probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"mean_probs must be (n, K), got shape {p.shape}")
    return p.sum(axis=0), (p * (1.0 - p)).sum(axis=0)


def expected_counts(
    specimens: Mapping[str, np.ndarray], n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Expected counts and variances per class over the counted rows of a sample.

    A reviewed row (confirmed or relabelled) is certain: it contributes a one-hot
    probability for its final class and no variance.

    Returns
    -------
    expected : (K,) float64
    variance : (K,) float64
    """
    probs = np.asarray(specimens["mean_probs"], dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise ValueError(f"mean_probs must be (n, {n_classes}), got shape {probs.shape}")
    keep = counted_mask(specimens)
    labels = final_labels(specimens)
    probs = probs.copy()
    if "review_status" in specimens:
        status = np.asarray(specimens["review_status"])
        certain = keep & ((status == REVIEW_CONFIRMED) | (status == REVIEW_RELABELLED))
        probs[certain] = np.eye(n_classes)[labels[certain]]
    return expected_counts_from_probs(probs[keep])


def wilson_interval(
    k: float | np.ndarray, n: float | np.ndarray, z: float = 1.96
) -> tuple[Any, Any]:
    """Wilson score interval for a proportion k/n, as fractions in [0, 1].

    Parameters
    ----------
    k
        Successes (e.g. specimens of one class), scalar or array.
    n
        Trials (specimens counted), scalar or array broadcastable with `k`.
    z
        Standard normal quantile (1.96 for 95 %).

    Returns
    -------
    (low, high)
        Floats (or arrays); NaN where n == 0.

    Examples
    --------
    >>> lo, hi = wilson_interval(30, 100)
    >>> round(lo, 4), round(hi, 4)
    (0.2189, 0.3959)
    """
    k_arr = np.asarray(k, dtype=np.float64)
    n_arr = np.asarray(n, dtype=np.float64)
    if np.any(k_arr < 0) or np.any(k_arr > n_arr):
        raise ValueError("wilson_interval needs 0 <= k <= n")
    if z <= 0:
        raise ValueError(f"z must be > 0, got {z}")
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k_arr / n_arr
        z2 = z * z
        denom = 1.0 + z2 / n_arr
        centre = (p + z2 / (2.0 * n_arr)) / denom
        half = (z / denom) * np.sqrt(p * (1.0 - p) / n_arr + z2 / (4.0 * n_arr * n_arr))
        # The interval always holds p; rounding can leave a bound a hair past it (at
        # k = n the upper bound came out as 1 - 1e-16), which plots as a negative error bar.
        low = np.where(n_arr > 0, np.clip(np.minimum(centre - half, p), 0.0, 1.0), np.nan)
        high = np.where(n_arr > 0, np.clip(np.maximum(centre + half, p), 0.0, 1.0), np.nan)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def specimens_per_gram(
    counted: float | np.ndarray, split_factor: float, dry_weight_g: float | None
) -> Any:
    """Specimens per gram of dry sediment: counted x split_factor / dry weight.

    NaN when the dry weight is unknown (None) or not positive.
    """
    if split_factor < 1 or not math.isfinite(split_factor):
        raise ValueError(f"split_factor must be >= 1, got {split_factor}")
    if dry_weight_g is None or not dry_weight_g > 0:
        return np.nan * np.asarray(counted, dtype=np.float64) if np.ndim(counted) else math.nan
    result = np.asarray(counted, dtype=np.float64) * split_factor / dry_weight_g
    return float(result) if result.ndim == 0 else result


def planktic_benthic(counts: np.ndarray, class_names: Sequence[str]) -> tuple[float, float]:
    """Planktic/benthic ratio and % planktic of P + B.

    Planktic: a class named "planktic" (or "planktonic"); benthic: the sum of the classes
    named "calcareous_benthic", "agglutinated_benthic" or "benthic" (spaces, hyphens and
    case ignored). NaN when either side has no class, when P + B == 0 (% planktic), or
    when B == 0 (ratio).

    Returns
    -------
    (pb_ratio, pct_planktic)
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.shape != (len(class_names),):
        raise ValueError(f"counts has shape {c.shape}, expected ({len(class_names)},)")
    names = [normalise_class_name(x) for x in class_names]
    p_idx = [i for i, x in enumerate(names) if x in PLANKTIC_NAMES]
    b_idx = [i for i, x in enumerate(names) if x in BENTHIC_NAMES]
    if not p_idx or not b_idx:
        return math.nan, math.nan
    planktic = float(c[p_idx].sum())
    benthic = float(c[b_idx].sum())
    ratio = planktic / benthic if benthic > 0 else math.nan
    pct = 100.0 * planktic / (planktic + benthic) if planktic + benthic > 0 else math.nan
    return ratio, pct


def progress(total: int, target: int = DEFAULT_TARGET) -> float:
    """Fraction of the target count reached, capped at 1.0."""
    if target <= 0:
        raise ValueError(f"target must be > 0, got {target}")
    return min(1.0, max(0, total) / target)


def foram_mask(
    class_names: Sequence[str], non_foram_classes: Sequence[str] = NON_FORAM_CLASSES
) -> np.ndarray:
    """(K,) bool: True for classes that are foraminifera (part of the assemblage)."""
    excluded = {normalise_class_name(x) for x in non_foram_classes}
    return np.array([normalise_class_name(x) not in excluded for x in class_names], dtype=bool)


def unreviewed_high_entropy_mask(
    entropy: np.ndarray,
    review_status: np.ndarray | None = None,
    threshold: float = DEFAULT_UNCERTAIN_ENTROPY,
) -> np.ndarray:
    """(n,) bool: specimens worth a person's look -- predictive entropy above `threshold`
    (nats) and not reviewed yet (reviewed rows are settled).

    The one rule behind every "uncertain" a user sees: the live view's red squares, the
    tally's and the CSV's ``n_uncertain``. Not `unsure_mask`, which applies a model's own
    unsure rule (any measure, its calibrated threshold) and takes specimens out of the
    class counts; this one only asks for a look and changes no count.
    """
    mask = np.asarray(entropy, dtype=np.float64) > threshold
    if review_status is not None:
        mask &= np.asarray(review_status) == REVIEW_NONE
    return mask


def n_uncertain(
    specimens: Mapping[str, np.ndarray], threshold: float = DEFAULT_UNCERTAIN_ENTROPY
) -> int:
    """Counted specimens that are `unreviewed_high_entropy_mask` (entropy above
    `threshold`, not reviewed).
    """
    status = specimens.get("review_status")
    mask = counted_mask(specimens) & unreviewed_high_entropy_mask(
        specimens["entropy"], status, threshold
    )
    return int(mask.sum())


def assemblage(
    counts: np.ndarray,
    classes: Sequence[str],
    *,
    n_unsure: int = 0,
    target: int = DEFAULT_TARGET,
    z: float = 1.96,
    non_foram_classes: Sequence[str] = NON_FORAM_CLASSES,
) -> dict[str, Any]:
    """The numbers every view of a tally shows, from class counts: one definition for
    the live widget (from counts it advances between store reads), the tally widget,
    the CSV and the plot (through `sample_summary`).

    Percentages are of the foraminifera: non-foram classes (sediment) are counted, but
    are not in `total_forams`, the percentages (NaN) or progress; unsure specimens are in
    no class (objects: ``total_objects = counts.sum() + n_unsure``).

    Returns
    -------
    dict
        counts, n_unsure, total_objects, total_forams, pct, pct_low, pct_high (% with
        Wilson bounds at `z`), pb_ratio, pct_planktic, target, progress.
    """
    counts = np.asarray(counts, dtype=np.int64)
    k = len(classes)
    if counts.shape != (k,):
        raise ValueError(f"counts has shape {counts.shape}, expected ({k},)")
    forams = foram_mask(classes, non_foram_classes)
    total_forams = int(counts[forams].sum())
    # Percentages are of the foraminifera; non-foram classes (sediment) can outnumber
    # them, so their k is zeroed here (their bounds are NaN below anyway).
    low, high = wilson_interval(np.where(forams, counts, 0), np.full(k, total_forams), z=z)
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = np.where(total_forams > 0, 100.0 * counts / max(total_forams, 1), np.nan)
    pb_ratio, pct_planktic = planktic_benthic(counts, classes)
    return {
        "counts": counts,
        "n_unsure": int(n_unsure),
        "total_objects": int(counts.sum()) + int(n_unsure),
        "total_forams": total_forams,
        "pct": np.where(forams, pct, np.nan),
        "pct_low": np.where(forams, 100.0 * np.asarray(low), np.nan),
        "pct_high": np.where(forams, 100.0 * np.asarray(high), np.nan),
        "pb_ratio": pb_ratio,
        "pct_planktic": pct_planktic,
        "target": target,
        "progress": progress(total_forams, target),
    }


def _record_dict(record: Any) -> dict[str, Any]:
    if record is None:
        return {}
    if hasattr(record, "to_dict"):
        return dict(record.to_dict())
    if isinstance(record, Mapping):
        return dict(record)
    raise ValueError(f"record must be a SampleRecord or a mapping, got {type(record).__name__}")


def sample_summary(
    specimens: Mapping[str, np.ndarray],
    record: Any,
    classes: Sequence[str],
    *,
    target: int = DEFAULT_TARGET,
    z: float = 1.96,
    uncertain_entropy: float = DEFAULT_UNCERTAIN_ENTROPY,
    non_foram_classes: Sequence[str] = NON_FORAM_CLASSES,
    unsure_rule: UnsureRule | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything a count sheet row needs about one sample.

    Percentages are of the foraminiferal assemblage: classes in `non_foram_classes`
    ("sediment") are counted but left out of `total_forams`, of the percentages (NaN for
    them) and of specimens per gram.

    With an `unsure_rule` (the classifier's, `TallyStore.unsure_rule`), the specimens it
    calls unsure (`unsure_mask`) are in no class: they are left out of `counts`,
    `total_forams`, the percentages, specimens per gram, P/B and progress, and reported
    as `n_unsure` (they are objects: ``total_objects = counts.sum() + n_unsure``). The
    expected counts still use every counted row's probabilities, unsure ones included
    (sum of expected = total_objects): they say what the model's probabilities imply,
    not what the tally shows. Without a rule nothing is unsure and `n_unsure` is 0.

    Parameters
    ----------
    specimens
        Columns of the sample (class_index, reviewed_class, review_status, duplicate_of,
        mean_probs, entropy).
    record
        The SampleRecord (or a mapping with split_factor and dry_weight_g), or None.
    classes
        Class names in classifier order.
    unsure_rule
        An `UnsureRule` or its mapping (``{}`` / None: none).

    Returns
    -------
    dict
        counts (K,) int64 (unsure specimens left out), n_unsure, unsure_rule (the rule as a
        mapping, ``{}`` if none), total_objects, total_forams, pct (K,) and pct_low / pct_high
        (K,) Wilson bounds, all in % (NaN for non-foram classes and an empty sample);
        expected (K,), expected_sd (K,) from the MC probabilities; per_gram; pb_ratio;
        pct_planktic; n_uncertain; n_reviewed (counted rows a person has looked at:
        confirmed, relabelled or dubious); n_dubious (counted as predicted, flagged by a
        person); n_duplicates; n_rejected; n_rows; target; progress.
    """
    k = len(classes)
    rule = UnsureRule.from_dict(unsure_rule)
    unsure = unsure_mask(specimens, rule)
    counts = class_counts(specimens, k, exclude=unsure)
    numbers = assemblage(
        counts,
        classes,
        n_unsure=int(unsure.sum()),
        target=target,
        z=z,
        non_foram_classes=non_foram_classes,
    )
    expected, variance = expected_counts(specimens, k)
    rec = _record_dict(record)
    split = float(rec.get("split_factor", 1.0) or 1.0)
    per_gram = specimens_per_gram(numbers["total_forams"], split, rec.get("dry_weight_g"))
    status = np.asarray(specimens.get("review_status", np.zeros(0)))
    dup = np.asarray(specimens.get("duplicate_of", np.zeros(0)))
    counted = counted_mask(specimens)
    return {
        **numbers,
        "unsure_rule": rule.to_dict(),
        "expected": expected,
        "expected_sd": np.sqrt(variance),
        "per_gram": per_gram,
        "n_uncertain": n_uncertain(specimens, uncertain_entropy),
        "n_reviewed": int(((status != REVIEW_NONE) & counted[: status.size]).sum())
        if status.size
        else 0,
        "n_dubious": int(((status == REVIEW_DUBIOUS) & counted[: status.size]).sum())
        if status.size
        else 0,
        "n_duplicates": int((dup >= 0).sum()),
        "n_rejected": int((status == REVIEW_REJECTED).sum()),
        "n_rows": len(np.asarray(specimens["class_index"])),
    }
