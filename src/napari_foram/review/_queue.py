"""The review queue: which specimens to look at first, and how many labels are expected wrong."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram.tally import stats
from napari_foram.tally.stats import (
    REVIEW_CONFIRMED,
    REVIEW_DUBIOUS,
    REVIEW_NONE,
    REVIEW_REJECTED,
    REVIEW_RELABELLED,
    uncertainty,
)

if TYPE_CHECKING:
    from collections.abc import Mapping


#: Uncertainty measures the queue can sort by: name -> what it is (one definition, in
#: `napari_foram.tally.stats`, shared with the classifier's unsure rule).
MEASURES: dict[str, str] = stats.UNCERTAINTY_MEASURES

#: Status filters by name (None: every status).
STATUS_FILTERS: dict[str, tuple[int, ...] | None] = {
    "unreviewed": (REVIEW_NONE,),
    "dubious": (REVIEW_DUBIOUS,),
    "validated": (REVIEW_CONFIRMED, REVIEW_RELABELLED),
    "rejected": (REVIEW_REJECTED,),
    "reviewed": (REVIEW_CONFIRMED, REVIEW_RELABELLED, REVIEW_DUBIOUS, REVIEW_REJECTED),
    "all": None,
}

#: Statuses whose label a person has fixed: they contribute nothing to the expected error.
VALIDATED = (REVIEW_CONFIRMED, REVIEW_RELABELLED)

#: The columns a review action changes (and undo restores).
REVIEW_COLUMNS = ("review_status", "reviewed_class", "review_time", "reviewer_index")

# The columns a session keeps in memory (crops are read one at a time).
_SESSION_COLUMNS = (
    "class_index",
    "mean_probs",
    "variance",
    "entropy",
    "mutual_information",
    "vote_fraction",
    "duplicate_of",
    "frame_index",
    "stage_x_um",
    "stage_y_um",
    "centroid_y",
    "centroid_x",
    "area_px",
    *REVIEW_COLUMNS,
)

# Slack on the uncertainty bounds: float32 resolution near 1 (the measures are stored
# as float32).
_BOUND_TOLERANCE = 1e-6

# Columns `validated_rows` needs.
_VALIDATION_COLUMNS = ("class_index", "reviewed_class", "review_status", "duplicate_of")

#: Fraction of the reviewed crops kept for validation when fine-tuning.
DEFAULT_VAL_FRACTION = 0.2


# ----------------------------------------------------------------------------- numbers
def misclassification_probability(specimens: Mapping[str, np.ndarray]) -> np.ndarray:
    """(n,) probability that each row's counted label is wrong; 0 where it cannot be.

    1 - p[label] for counted rows that no person validated (label = the prediction, the
    arg-max of the mean probabilities, so this is 1 - max p); 0 for confirmed and
    relabelled rows and for rows that do not count (duplicates, rejected). Dubious rows
    keep their prediction and so their probability. Rows without probabilities (NaN,
    never classified) contribute 0.
    """
    probs = np.asarray(specimens["mean_probs"], dtype=np.float64)
    labels = np.asarray(specimens["class_index"], dtype=np.int64)
    n = labels.shape[0]
    out = np.zeros(n)
    if n == 0:
        return out
    status = np.asarray(specimens.get("review_status", np.zeros(n)), dtype=np.int64)
    open_rows = stats.counted_mask(specimens) & ~np.isin(status, VALIDATED) & (labels >= 0)
    idx = np.flatnonzero(open_rows)
    wrong = 1.0 - probs[idx, labels[idx]]
    out[idx] = np.where(np.isfinite(wrong), np.clip(wrong, 0.0, 1.0), 0.0)
    return out


def expected_misclassified(specimens: Mapping[str, np.ndarray]) -> float:
    """Expected number of wrongly labelled specimens in the sample's tally.

    The sum of `misclassification_probability`: over counted specimens not validated by a
    person, 1 - (mean probability of the counted class). See the module docstring.
    """
    return float(misclassification_probability(specimens).sum())


@dataclass(frozen=True)
class ReviewProgress:
    """Where the review of a sample stands.

    Attributes
    ----------
    n_rows
        Specimen records of the sample that are not duplicates.
    n_reviewed
        Of those, how many a person gave a verdict (validated, dubious or rejected).
    n_validated, n_dubious, n_rejected
        The verdicts.
    expected_misclassified
        `expected_misclassified` now.
    target
        The "review until expected misclassified < target" goal, or None.
    position, length
        The queue position (0-based) and length.
    """

    n_rows: int
    n_reviewed: int
    n_validated: int
    n_dubious: int
    n_rejected: int
    expected_misclassified: float
    target: float | None
    position: int
    length: int

    @property
    def target_reached(self) -> bool:
        """True when a target is set and the expectation is below it."""
        return self.target is not None and self.expected_misclassified < self.target

    def line(self) -> str:
        """One line for a status bar, e.g. "12 reviewed, expected misclassified now 3.41"."""
        text = (
            f"{self.n_reviewed} reviewed ({self.n_validated} validated, {self.n_dubious} "
            f"dubious, {self.n_rejected} rejected), expected misclassified now "
            f"{self.expected_misclassified:.2f}"
        )
        if self.target is not None:
            text += (
                f" (target < {self.target:g}: reached)"
                if self.target_reached
                else f" (target < {self.target:g})"
            )
        return text


# ----------------------------------------------------------------------------- the queue
@dataclass(frozen=True)
class QueueFilter:
    """Which specimens the queue shows.

    Attributes
    ----------
    classes
        Predicted class indices to keep (None: every class).
    statuses
        Review status codes to keep (None: every status). Default: unreviewed only.
    min_uncertainty, max_uncertainty
        Inclusive range of the queue's uncertainty measure (None: open). Rows whose
        measure is unknown (NaN) drop out when a bound is set.
    unsure_only
        Keep only the specimens the model's unsure rule puts in no class
        (`stats.unsure_mask`: unreviewed ones; none when the model has no rule).
    """

    classes: tuple[int, ...] | None = None
    statuses: tuple[int, ...] | None = (REVIEW_NONE,)
    min_uncertainty: float | None = None
    max_uncertainty: float | None = None
    unsure_only: bool = False

    def __post_init__(self) -> None:
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
        if self.statuses is not None:
            object.__setattr__(self, "statuses", tuple(int(s) for s in self.statuses))
        lo, hi = self.min_uncertainty, self.max_uncertainty
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"uncertainty range is empty: min {lo} > max {hi}")


@dataclass(frozen=True)
class ReviewStep:
    """One action on the undo stack.

    Attributes
    ----------
    action
        "accept", "relabel", "dubious" or "reject".
    row
        The specimen's row in the sample.
    before
        The review columns (`REVIEW_COLUMNS`) of the row before the action.
    status, reviewed_class
        What the action set.
    position
        The queue position when the action was taken (undo goes back there).
    """

    action: str
    row: int
    before: dict[str, Any]
    status: int
    reviewed_class: int
    position: int


def queue_order(
    specimens: Mapping[str, np.ndarray],
    measure: str = "mutual_information",
    queue_filter: QueueFilter | None = None,
    unsure_rule: stats.UnsureRule | Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Rows of a sample in review order: most uncertain first, filtered.

    Duplicates (a second record of a specimen already counted) are never in the queue.
    Ties keep row order; rows whose measure is unknown (NaN) come last. `unsure_rule`
    (the sample's, `TallyStore.unsure_rule`) is what the filter's `unsure_only` uses.

    Returns
    -------
    (m,) int64 row indices.
    """
    flt = queue_filter or QueueFilter()
    u = uncertainty(specimens, measure)
    n = u.shape[0]
    keep = np.asarray(specimens["duplicate_of"]) < 0 if "duplicate_of" in specimens else None
    keep = np.ones(n, dtype=bool) if keep is None else keep.copy()
    if flt.classes is not None:
        keep &= np.isin(np.asarray(specimens["class_index"]), flt.classes)
    if flt.statuses is not None:
        keep &= np.isin(np.asarray(specimens["review_status"]), flt.statuses)
    # The store keeps the measures as float32 (0.4 is stored as 0.40000001): bounds a
    # person types are inclusive to that precision. NaN compares False: dropped.
    if flt.min_uncertainty is not None:
        keep &= u >= flt.min_uncertainty - _BOUND_TOLERANCE
    if flt.max_uncertainty is not None:
        keep &= u <= flt.max_uncertainty + _BOUND_TOLERANCE
    if flt.unsure_only:
        keep &= stats.unsure_mask(specimens, unsure_rule)
    rows = np.flatnonzero(keep)
    key = np.where(np.isnan(u[rows]), -np.inf, u[rows])
    # lexsort sorts by the last key first: descending uncertainty, then ascending row.
    return rows[np.lexsort((rows, -key))].astype(np.int64)


#: The queue order "suggest next" (`suggested_order`), beside the uncertainty measures.
SUGGEST_NEXT = "suggest_next"


def suggested_order(
    specimens: Mapping[str, np.ndarray],
    features: np.ndarray,
    queue_filter: QueueFilter | None = None,
    unsure_rule: stats.UnsureRule | Mapping[str, Any] | None = None,
    n: int = 50,
) -> np.ndarray:
    """Rows of a sample in "suggest next" order: the `n` a label would help most first
    (`napari_foram.teaching.suggest_next`: uncertain and unlike the labelled ones), then
    the other candidates by predictive entropy (a greedy pick costs a pass over every
    row's features: a batch at a time keeps a 1,000-specimen sample instant).

    The rows are those `queue_order` keeps with `queue_filter` (duplicates never);
    rows without kept features (NaN) are never suggested (they follow the others). The labelled
    rows (confirmed, relabelled) are the anchors the distance is measured from; the
    mean probabilities are the sample's current classification.

    Returns
    -------
    (m,) int64 row indices: every row `queue_order` keeps, suggested ones first.
    """
    from napari_foram.teaching import suggest_next

    keep = queue_order(specimens, "entropy", queue_filter, unsure_rule)
    total = len(np.asarray(specimens["class_index"]))
    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] != total or feats.shape[1] == 0:
        return keep  # no features kept: nothing to measure diversity with
    candidates = np.zeros(total, dtype=bool)
    candidates[keep] = True
    status = np.asarray(specimens["review_status"])
    labelled = np.isin(status, VALIDATED)
    probs: np.ndarray | None = np.asarray(specimens["mean_probs"], dtype=np.float64)
    if probs is not None and not np.isfinite(probs).all():
        probs = None  # never classified: diversity alone
    first = suggest_next(feats, probs, labelled, int(n), candidates=candidates).astype(np.int64)
    rest = keep[~np.isin(keep, first)]
    return np.concatenate([first, rest]).astype(np.int64)
