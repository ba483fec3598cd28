"""Review: check and correct a sample's labels in order of uncertainty, then retrain.

The classifier's MC-dropout statistics say which specimens it is unsure of. A person who
looks at those first removes most of the tally's classification error with the fewest
looks. This module is the Qt-free core of that loop (the widget ``Foram review`` and the
CLI command ``export-reviewed`` are thin layers over it):

- `ReviewSession`: a queue over one sample of a tally store, sorted by an uncertainty
  measure (`MEASURES`), filtered by predicted class, review status and an uncertainty
  range, with the actions accept, relabel, dubious, reject and a multi-level undo. Every
  verdict is written to the store at once (status, reviewed class, reviewer, time), so the
  tallies and exports use it immediately and nothing is lost on a crash.
- `expected_misclassified`: how many of the sample's counted specimens are expected to
  carry a wrong label, and the "review until expected misclassified < X" mode
  (`ReviewSession.set_target`).
- `export_validated_crops`: the confirmed and relabelled crops of a store as an
  ImageFolder (``<out>/<class>/<sample>_<row>.png``), and `fine_tune`: a new checkpoint
  trained on such a folder with the project's training code (the same as
  ``napari-foram train``, phase 1: the head on the current model's frozen backbone).

Expected number of misclassified specimens
------------------------------------------
A specimen the model labelled k with mean MC-dropout probabilities p is wrong with
probability 1 - p_k; the label is the arg-max, so that is 1 - max(p). Summed over the
specimens that count and that no person has validated, this is the expected number of
wrong labels in the tally (linearity of expectation; no independence needed)::

    E = sum over counted, unvalidated i of (1 - p_i[label_i])

Confirmed and relabelled specimens contribute 0 (a person fixed their label), rejected
ones and duplicates are not counted at all. A *dubious* specimen still counts as its
prediction, so it keeps contributing 1 - max(p): a person looked but could not confirm
the label. The estimate is as good as the model's calibration (see ``napari-foram
evaluate``: reliability diagram, ECE).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from napari_foram._progress import ProgressCallback
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
    from napari_foram.tally.store import TallyStore
    from napari_foram.training.train import TrainingOutcome

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


class ReviewSession:
    """A review queue over one sample of a tally store, and the actions on it.

    The queue is a snapshot: it is built when the measure, the filter or the target
    changes (or on `refresh`), and an action does not remove the specimen from it, so
    Left goes back to the one just reviewed. Each action writes to the store at once and
    moves to the next specimen; `undo` restores the previous status of the last action
    (reviewer and time included) and goes back to it, as many levels as were done.

    Parameters
    ----------
    store
        An open `TallyStore`; mode "a" to review, "r" to browse (actions then refuse).
    sample_id
        The sample to review.
    reviewer
        Name stored with every verdict ("" = unknown).
    measure
        The uncertainty measure to sort by (`MEASURES`).
    queue_filter
        Which specimens to show (default: unreviewed ones of every class).
    target
        "Review until expected misclassified < target" (see `set_target`), or None.
    """

    def __init__(
        self,
        store: TallyStore,
        sample_id: str,
        *,
        reviewer: str = "",
        measure: str = "mutual_information",
        queue_filter: QueueFilter | None = None,
        target: float | None = None,
    ) -> None:
        if sample_id not in store.samples():
            raise ValueError(f"no sample {sample_id!r} in {store.path}")
        if measure not in MEASURES:
            raise ValueError(
                f"unknown uncertainty measure {measure!r}: use one of {list(MEASURES)}"
            )
        self.store = store
        self.sample_id = sample_id
        self.reviewer = reviewer
        self.class_names: list[str] = store.class_names
        self._measure = measure
        self._filter = queue_filter or QueueFilter()
        self._check_filter(self._filter)
        self._target = _check_target(target)
        self._undo: list[ReviewStep] = []
        self._owned = False
        self.data: dict[str, np.ndarray] = {}
        self.rows = np.zeros(0, dtype=np.int64)
        self.position = 0
        self.refresh()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        sample_id: str | None = None,
        *,
        mode: Literal["r", "a"] = "a",
        **kwargs: Any,
    ) -> ReviewSession:
        """Open the store at `path` and a session on `sample_id` (default: the first
        sample); `close` closes the store too. ValueError (one line) for a path that is
        not a tally store or a sample it does not hold."""
        from napari_foram.tally.store import TallyStore

        store = TallyStore.open(path, mode=mode)
        try:
            samples = store.samples()
            if sample_id is None:
                if not samples:
                    raise ValueError(f"{store.path} holds no samples to review")
                sample_id = samples[0]
            session = cls(store, sample_id, **kwargs)
        except BaseException:
            store.close()
            raise
        session._owned = True
        return session

    def close(self) -> None:
        """Close the store if this session opened it (releases the writer lock)."""
        if self._owned:
            self.store.close()

    def __enter__(self) -> ReviewSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ settings
    @property
    def measure(self) -> str:
        """The uncertainty measure the queue is sorted by."""
        return self._measure

    @property
    def queue_filter(self) -> QueueFilter:
        return self._filter

    @property
    def target(self) -> float | None:
        """The expected-misclassified goal, or None (plain queue)."""
        return self._target

    def set_measure(self, measure: str) -> None:
        """Sort by another measure (the queue is rebuilt, from its start)."""
        if measure not in MEASURES:
            raise ValueError(
                f"unknown uncertainty measure {measure!r}: use one of {list(MEASURES)}"
            )
        self._measure = measure
        self._rebuild()

    def set_filter(self, queue_filter: QueueFilter) -> None:
        """Show other specimens (the queue is rebuilt, from its start)."""
        self._check_filter(queue_filter)
        self._filter = queue_filter
        self._rebuild()

    def set_target(self, target: float | None) -> None:
        """Review until the expected number of misclassified specimens is below `target`.

        The queue then holds the unreviewed specimens (the class and uncertainty filters
        still apply, the status filter does not), most uncertain first, and `current` is
        None as soon as `expected_misclassified` drops below `target`. None: back to the
        plain queue.
        """
        self._target = _check_target(target)
        self._rebuild()

    def _check_filter(self, flt: QueueFilter) -> None:
        k = len(self.class_names)
        for c in flt.classes or ():
            if not 0 <= c < k:
                raise ValueError(_class_range_message(c, self.class_names))
        from napari_foram.tally.store import REVIEW_STATUS_NAMES

        unknown = [s for s in flt.statuses or () if s not in REVIEW_STATUS_NAMES]
        if unknown:
            raise ValueError(
                f"unknown review status {unknown[0]}: use one of {sorted(REVIEW_STATUS_NAMES)}"
            )

    # ------------------------------------------------------------------ the queue
    def refresh(self) -> None:
        """Re-read the sample (e.g. rows a scan added since) and rebuild the queue,
        staying on the current specimen when it is still in it."""
        self.data = self.store.read_specimens(self.sample_id, columns=_SESSION_COLUMNS)
        self._rebuild(keep=self.current)

    def _rebuild(self, keep: int | None = None) -> None:
        flt = self._filter
        if self._target is not None:
            flt = replace(flt, statuses=(REVIEW_NONE,))
        rule = self.store.unsure_rule(self.sample_id) if flt.unsure_only else None
        self.rows = queue_order(self.data, self._measure, flt, rule)
        self.position = 0
        if keep is not None:
            hits = np.flatnonzero(self.rows == keep)
            if hits.size:
                self.position = int(hits[0])

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def current(self) -> int | None:
        """The row to look at now, or None (queue finished, or the target reached)."""
        if self._target is not None and self.expected_misclassified() < self._target:
            return None
        if 0 <= self.position < len(self.rows):
            return int(self.rows[self.position])
        return None

    def next(self) -> int | None:
        """Move to the next specimen of the queue; the new current row (None at the end)."""
        self.position = min(self.position + 1, len(self.rows))
        return self.current

    def previous(self) -> int | None:
        """Move to the previous specimen; the new current row."""
        self.position = max(self.position - 1, 0)
        return self.current

    def go_to(self, row: int) -> None:
        """Make `row` current; ValueError if it is not in the queue."""
        hits = np.flatnonzero(self.rows == int(row))
        if not hits.size:
            raise ValueError(f"row {row} is not in the review queue")
        self.position = int(hits[0])

    # ------------------------------------------------------------------ numbers
    def uncertainty(self) -> np.ndarray:
        """(n,) the queue's measure for every row of the sample."""
        return uncertainty(self.data, self._measure)

    def expected_misclassified(self) -> float:
        """`expected_misclassified` of the sample as it stands."""
        return expected_misclassified(self.data)

    def progress(self) -> ReviewProgress:
        """Counts of verdicts, the expected error and the queue position."""
        status = self.data["review_status"]
        rows = self.data["duplicate_of"] < 0
        return ReviewProgress(
            n_rows=int(rows.sum()),
            n_reviewed=int((rows & (status != REVIEW_NONE)).sum()),
            n_validated=int((rows & np.isin(status, VALIDATED)).sum()),
            n_dubious=int((rows & (status == REVIEW_DUBIOUS)).sum()),
            n_rejected=int((rows & (status == REVIEW_REJECTED)).sum()),
            expected_misclassified=self.expected_misclassified(),
            target=self._target,
            position=self.position,
            length=len(self.rows),
        )

    def counts(self) -> np.ndarray:
        """Counted specimens per class from the store (reviewed labels included)."""
        return self.store.counts(self.sample_id)

    # ------------------------------------------------------------------ one specimen
    def _row(self, row: int | None) -> int:
        if row is None:
            row = self.current
            if row is None:
                raise ValueError("no specimen to review: the queue is finished")
        row = int(row)
        n = len(self.data["class_index"])
        if not 0 <= row < n:
            raise ValueError(f"row {row} is not a specimen of {self.sample_id!r} (0-{n - 1})")
        return row

    def crop(self, row: int | None = None) -> np.ndarray:
        """The stored crop of `row` (default: the current one), (224, 224, 3) uint8."""
        return self.store.read_crops(self.sample_id, [self._row(row)])[0]

    def specimen(self, row: int | None = None) -> dict[str, Any]:
        """Everything the reviewer is shown about `row` (default: the current one).

        Keys: row, predicted (class index), predicted_name, mean_probs (K,), sd (K,)
        (MC-dropout standard deviation), entropy, mutual_information, vote_fraction,
        uncertainty (the queue's measure), p_wrong, status (code), status_name,
        reviewed_class, label (the class it counts as, -1 if not counted), reviewer,
        review_time (s since the epoch, NaN if none), frame_index, stage_yx_um (y, x),
        centroid_yx (pixels in its frame), area_px.
        """
        from napari_foram.tally.store import REVIEW_STATUS_NAMES

        i = self._row(row)
        d = self.data
        predicted = int(d["class_index"][i])
        who = int(d["reviewer_index"][i])
        names = self.store.reviewers(self.sample_id) if who >= 0 else []
        labels = stats.final_labels({k: v[i : i + 1] for k, v in d.items()})
        status = int(d["review_status"][i])
        return {
            "row": i,
            "predicted": predicted,
            "predicted_name": self.class_names[predicted],
            "mean_probs": np.asarray(d["mean_probs"][i], dtype=np.float64),
            "sd": np.sqrt(np.clip(np.asarray(d["variance"][i], dtype=np.float64), 0, None)),
            "entropy": float(d["entropy"][i]),
            "mutual_information": float(d["mutual_information"][i]),
            "vote_fraction": float(d["vote_fraction"][i]),
            "uncertainty": float(self.uncertainty()[i]),
            "p_wrong": float(misclassification_probability(d)[i]),
            "status": status,
            "status_name": REVIEW_STATUS_NAMES.get(status, str(status)),
            "reviewed_class": int(d["reviewed_class"][i]),
            "label": int(labels[0]),
            "reviewer": names[who] if 0 <= who < len(names) else "",
            "review_time": float(d["review_time"][i]),
            "frame_index": int(d["frame_index"][i]),
            "stage_yx_um": (float(d["stage_y_um"][i]), float(d["stage_x_um"][i])),
            "centroid_yx": (float(d["centroid_y"][i]), float(d["centroid_x"][i])),
            "area_px": int(d["area_px"][i]),
        }

    # ------------------------------------------------------------------ actions
    def accept(self, row: int | None = None) -> ReviewStep:
        """The predicted class is right: status confirmed."""
        return self._act("accept", REVIEW_CONFIRMED, -1, row)

    def relabel(self, class_index: int, row: int | None = None) -> ReviewStep:
        """The specimen is of class `class_index` (0-based). The predicted class itself is
        an accept (status confirmed); another class is relabelled with that class."""
        k = len(self.class_names)
        if isinstance(class_index, bool) or not isinstance(class_index, (int, np.integer)):
            raise ValueError(f"class index must be an integer, got {class_index!r}")
        if not 0 <= int(class_index) < k:
            raise ValueError(_class_range_message(int(class_index), self.class_names))
        i = self._row(row)
        if int(class_index) == int(self.data["class_index"][i]):
            return self._act("accept", REVIEW_CONFIRMED, -1, i)
        return self._act("relabel", REVIEW_RELABELLED, int(class_index), i)

    def dubious(self, row: int | None = None) -> ReviewStep:
        """Cannot tell: counted as predicted, reported as dubious, left in the expectation."""
        return self._act("dubious", REVIEW_DUBIOUS, -1, row)

    def reject(self, row: int | None = None) -> ReviewStep:
        """Not a specimen (debris, an artefact): leaves the counts."""
        return self._act("reject", REVIEW_REJECTED, -1, row)

    def _act(self, action: str, status: int, reviewed_class: int, row: int | None) -> ReviewStep:
        i = self._row(row)
        was_current = i == self.current
        before = {name: self.data[name][i].item() for name in REVIEW_COLUMNS}
        self.store.set_review(
            self.sample_id,
            [i],
            status=status,
            reviewed_class=reviewed_class,
            reviewer=self.reviewer,
        )
        step = ReviewStep(action, i, before, status, reviewed_class, self.position)
        self._undo.append(step)
        self._reload_review_columns()
        if was_current:
            self.position = min(self.position + 1, len(self.rows))
        return step

    @property
    def undo_depth(self) -> int:
        """How many actions `undo` can take back."""
        return len(self._undo)

    def undo(self) -> ReviewStep | None:
        """Restore the row of the last action to its previous status, reviewer and time,
        and go back to it; None when there is nothing to undo."""
        if not self._undo:
            return None
        step = self._undo[-1]
        self.store.update_specimens(
            self.sample_id,
            [step.row],
            **{name: np.asarray([step.before[name]]) for name in REVIEW_COLUMNS},
        )
        self._undo.pop()
        self._reload_review_columns()
        hits = np.flatnonzero(self.rows == step.row)
        self.position = int(hits[0]) if hits.size else min(step.position, len(self.rows))
        return step

    def _reload_review_columns(self) -> None:
        # Re-read what the store now holds rather than patching the cache: the store is
        # the truth (and another action on the same row must see the written values).
        fresh = self.store.read_specimens(self.sample_id, columns=REVIEW_COLUMNS)
        n = len(self.data["class_index"])
        for name in REVIEW_COLUMNS:
            self.data[name] = fresh[name][:n]


def _check_target(target: float | None) -> float | None:
    if target is None:
        return None
    value = float(target)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"the expected-misclassified target must be > 0, got {target}")
    return value


def _class_range_message(index: int, class_names: Sequence[str]) -> str:
    k = len(class_names)
    return (
        f"class index {index} is out of range: this store has {k} classes "
        f"(0-{k - 1}: {', '.join(class_names)})"
    )


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
    status = np.asarray(specimens["review_status"])
    keep = np.isin(status, VALIDATED) & stats.counted_mask(specimens)
    rows = np.flatnonzero(keep).astype(np.int64)
    labels = stats.final_labels(specimens)[rows]
    return rows, labels.astype(np.int64)


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


# ----------------------------------------------------------------------------- retraining
@dataclass
class FineTuneResult:
    """A checkpoint trained on reviewed crops.

    Attributes
    ----------
    checkpoint
        The new ``.safetensors`` file.
    base_model
        The checkpoint whose backbone, head layout and classes it kept.
    val_accuracy
        Accuracy on the held-out validated crops (the `DEFAULT_VAL_FRACTION` split).
    n_train, n_val
        Crops trained on and validated on.
    class_counts
        Crops per class in the data set.
    outcome
        The training code's full record.
    """

    checkpoint: Path
    base_model: Path
    val_accuracy: float
    n_train: int
    n_val: int
    class_counts: dict[str, int]
    outcome: TrainingOutcome

    def summary(self) -> str:
        return (
            f"wrote {self.checkpoint}: validation accuracy {self.val_accuracy:.3f} "
            f"({self.n_val} crops held out, {self.n_train} trained on)"
        )


def resolve_model(model: str | os.PathLike[str], progress: ProgressCallback | None = None) -> Path:
    """The checkpoint file of `model`: a path, or the cached demo model for "demo"
    (trained at first use, reporting through `progress`)."""
    if str(model) == "demo":
        from napari_foram.classify.demo_model import demo_checkpoint

        return Path(demo_checkpoint(progress=progress))
    path = Path(model).expanduser()
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    return path


def default_checkpoint_path(store_path: str | os.PathLike[str]) -> Path:
    """``<store folder>/<store name>_reviewed-<UTC time>.safetensors``, beside the store."""
    store = Path(store_path)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return store.with_name(f"{store.name.removesuffix('.zarr')}_reviewed-{stamp}.safetensors")


def default_export_dir(store_path: str | os.PathLike[str]) -> Path:
    """``<store folder>/<store name>_reviewed_crops``, beside the store."""
    store = Path(store_path)
    return store.with_name(f"{store.name.removesuffix('.zarr')}_reviewed_crops")


def _backbone_source(base: Path, info: Any, workdir: Path) -> str:
    """Backbone weights for `TrainConfig` that rebuild `base`'s backbone exactly.

    "imagenet" or "none" (with the recorded seed) when the base model's conv tensors
    are those untouched, so the new checkpoint records the same source; otherwise (a
    fine-tuned backbone, or one from a file) the base model's conv tensors are written
    to a state file in `workdir` and that file is the source.
    """
    import torch

    from napari_foram.classify.checkpoint import conv_sha256, load_checkpoint, new_classifier
    from napari_foram.classify.model import MissingWeightsError

    if info.head_only and info.backbone_weights in ("imagenet", "none"):
        return str(info.backbone_weights)  # rebuilt from that source on every load anyway
    model, _ = load_checkpoint(base)
    if info.backbone_weights in ("imagenet", "none"):
        with contextlib.suppress(MissingWeightsError, ValueError):
            pristine, _ = new_classifier(
                info.class_names,
                backbone_weights=info.backbone_weights,
                seed=info.backbone_seed or 0,
            )
            if conv_sha256(pristine) == conv_sha256(model):
                return str(info.backbone_weights)
    path = workdir / "backbone.pt"
    torch.save(model.conv.state_dict(), path)
    return str(path)


def fine_tune(
    data_dir: str | os.PathLike[str],
    base_model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    backbone_weights: str | None = None,
    max_epochs: int = 50,
    patience: int = 5,
    lr: float = 1e-4,
    seed: int = 0,
    device: str = "cpu",
    val_fraction: float = DEFAULT_VAL_FRACTION,
    progress: ProgressCallback | None = None,
    warm_start: bool = True,
) -> FineTuneResult:
    """Train a new checkpoint on an ImageFolder of reviewed crops, from the current model.

    The project's training code runs as ``napari-foram train`` runs it (the stratified
    split written beside the checkpoint, phase 1: the dense head trained on cached conv
    features of the frozen backbone, Adam, early stopping on validation accuracy), with
    what the base model fixes: its classes *in its order* (``napari-foram train`` sorts
    the class folders, which would reorder the classes and drop empty ones), its head
    layout and input normalisation, and its backbone. With `warm_start` (the default)
    phase 1 starts from the base model's own head, so training on the reviewed crops
    adjusts what the model knew instead of starting over; ``warm_start=False`` trains a
    fresh head. The split keeps `val_fraction` of every
    class for validation and none for testing (score a model on a test set of your own
    with ``napari-foram evaluate``).

    Parameters
    ----------
    data_dir
        ImageFolder of reviewed crops (`export_validated_crops`); every class folder must
        be one of the base model's classes.
    base_model
        The current checkpoint (see `resolve_model` for "demo").
    output
        The new checkpoint (``.safetensors``); ``<stem>.split.json`` goes beside it.
    backbone_weights
        None (default): the base model's own backbone. Or "imagenet", "none" (a random
        backbone: tests) or a vgg16 state file, as ``napari-foram train
        --backbone-weights``.
    max_epochs, patience, lr, seed, device
        As ``napari-foram train`` (``--epochs``, ``--patience``, ``--lr``, ``--seed``,
        ``--device``).
    val_fraction
        Share of every class held out to validate (each class needs at least 2 crops).
    warm_start
        Start from the base model's head (True) or from a fresh one (False).
    progress
        ``progress(done, total, message)`` while loading, extracting features, training.

    Returns
    -------
    FineTuneResult
    """
    from napari_foram.classify.checkpoint import file_sha256, read_model_info, save_checkpoint
    from napari_foram.training.data import load_image_folder, save_split, split_indices
    from napari_foram.training.train import TrainConfig, train_classifier

    base = resolve_model(base_model)
    info = read_model_info(base)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    data = load_image_folder(Path(data_dir), class_names=info.class_names, progress=progress)
    counts = data.counts()
    present = {name: n for name, n in counts.items() if n > 0}
    if len(present) < 2:
        raise ValueError(
            f"fine-tuning needs validated crops of at least two classes; {data_dir} has "
            + (", ".join(f"{k} {v}" for k, v in present.items()) or "none")
        )
    few = [name for name, n in present.items() if n < 2]
    if few:
        raise ValueError(
            f"class {few[0]!r} has 1 validated crop; fine-tuning needs at least 2 of every "
            "class it holds (one to train on, one to validate): review more, or remove it"
        )
    output = Path(output)
    fractions = (1.0 - val_fraction, val_fraction, 0.0)
    split = split_indices(data.labels, seed, fractions)
    split_file = output.with_name(f"{output.stem}.split.json")
    save_split(split_file, split, data, seed=seed, fractions=fractions)
    with tempfile.TemporaryDirectory(prefix="napari-foram-review-") as tmp:
        source = backbone_weights or _backbone_source(base, info, Path(tmp))
        random_backbone = source == "none" or (
            backbone_weights is None and info.backbone_weights == "none"
        )
        config = TrainConfig(
            backbone_weights=source,
            backbone_seed=info.backbone_seed if info.backbone_seed is not None else 0,
            hidden_units=info.hidden_units,
            dropout=info.dropout,
            input_convention=info.input_convention,
            # As `napari-foram train` does: random conv features need standardising.
            standardize_features=random_backbone,
            max_epochs=max_epochs,
            patience=patience,
            lr=lr,
            seed=seed,
            device=device,
            init_head=str(base) if warm_start and backbone_weights is None else "",
        )
        t0 = time.perf_counter()
        outcome = train_classifier(data, output, config, split=split, progress=progress)
    best = outcome.best
    best.info.training = {
        **best.info.training,
        "review": {
            "base_model": str(base),
            "base_model_sha256": file_sha256(base),
            "data_dir": str(data_dir),
            "class_counts": counts,
            "seconds": round(time.perf_counter() - t0, 2),
        },
    }
    # Saved again with the record of where the model came from (train_classifier wrote
    # the same tensors a moment ago, without it).
    save_checkpoint(output, best.model, best.info)
    return FineTuneResult(
        checkpoint=output,
        base_model=base,
        val_accuracy=float(best.val_accuracy),
        n_train=len(split["train"]),
        n_val=len(split["val"]),
        class_counts=counts,
        outcome=outcome,
    )
