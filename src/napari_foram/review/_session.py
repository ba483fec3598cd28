"""ReviewSession: verdicts on one sample's specimens, written to the store at once, with undo."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

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

from ._queue import (
    _SESSION_COLUMNS,
    MEASURES,
    REVIEW_COLUMNS,
    VALIDATED,
    QueueFilter,
    ReviewProgress,
    ReviewStep,
    expected_misclassified,
    misclassification_probability,
    queue_order,
)

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from napari_foram.tally.store import TallyStore


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
        not a tally store or a sample it does not hold.
        """
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
        staying on the current specimen when it is still in it.
        """
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
        an accept (status confirmed); another class is relabelled with that class.
        """
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
        and go back to it; None when there is nothing to undo.
        """
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
