"""Foram review's "Teach" section: new classes, labels from the canvas, retraining the
classifier on the store's labels and counting the sample again, all in the widget.

A thin panel over `napari_foram.teaching` and `napari_foram.reclassify` (kept apart so
that widgets/review.py holds the review itself):

- **Add class**: `TallyStore.add_classes` (any name, e.g. "Globigerinoides ruber"); the
  new class gets the next number key.
- **Label**: the specimens selected on the canvas (`labelling`) as the class
  chosen here (keys 1..9 do the same on the canvas; this reaches classes past 9), and
  undo of the last canvas labelling.
- **Retrain now**: `teaching.retrain` on a background thread (the widget's `Runner`):
  a head taught on every labelled specimen of the store, from the active model's
  backbone, saved beside the store, and the sample (or every sample) classified again;
  the new checkpoint becomes the active model. "Auto-retrain after every N labels" does
  it by itself.
- **Reclassify**: the sample (or every sample) counted again with the active model,
  `reclassify.reclassify_store` -- what ``napari-foram reclassify`` runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_foram.reasons import one_line
from napari_foram.widgets import labelling
from napari_foram.widgets._active import active_model, hub
from napari_foram.widgets._qt import Runner

if TYPE_CHECKING:
    from napari_foram.reclassify import ReclassifyReport

#: "Auto-retrain after every N labels": N's default.
AUTO_RETRAIN_EVERY = 10
SCOPES = {"this sample": False, "every sample": True}
#: Shortest time between two progress lines (s).
PROGRESS_TEXT_S = 0.25


def counts_line(report: ReclassifyReport) -> str:
    """The line "S1: planktic 5->7, sediment 3->1" (the classes whose count changed)."""
    changes = ", ".join(
        f"{name} {a}\u2192{b}"
        for name, a, b in zip(
            report.class_names, report.counts_before, report.counts_after, strict=True
        )
        if a != b
    )
    return f"{report.sample_id}: {changes or 'counts unchanged'}"


class TeachPanel(QWidget):
    """The "Teach" section of `ReviewWidget` (see the module docstring)."""

    def __init__(self, owner: Any) -> None:  # the ReviewWidget (which imports this)
        super().__init__()
        self.owner = owner
        self.viewer = owner.viewer
        #: The last retrain's `RetrainResult`, reclassify's list of reports, or the
        #: exception that ended it; None while one runs.
        self.last_result: Any = None
        #: Labels given since the last retrain (for the auto-retrain).
        self.labels_since = 0
        self.runner = Runner(self)
        self.runner.on("progress", self._on_progress)
        self.runner.on("finished", self._on_finished)
        self._started = 0.0
        self._said_at = 0.0

        self.class_edit = QLineEdit()
        self.class_edit.setPlaceholderText("new class, e.g. Globigerinoides ruber")
        self.class_edit.returnPressed.connect(lambda: self.add_class(self.class_edit.text()))
        self.add_button = QPushButton("Add class")
        self.add_button.clicked.connect(lambda: self.add_class(self.class_edit.text()))
        self.label_box = QComboBox()
        self.label_button = QPushButton("Label")
        self.label_button.setToolTip(
            "label the specimens selected on the canvas (a specimens layer active, select mode: "
            "click, shift-click, drag a box), as this class; keys 1-9 and X do it on the canvas"
        )
        self.label_button.clicked.connect(self.label_selected)
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("undo the last labelling on the canvas")
        self.undo_button.clicked.connect(self.undo_labels)
        self.retrain_button = QPushButton("Retrain now")
        self.retrain_button.clicked.connect(self.retrain)
        self.reclassify_button = QPushButton("Reclassify")
        self.reclassify_button.setToolTip(
            "count again with the active model (as `napari-foram reclassify`)"
        )
        self.reclassify_button.clicked.connect(lambda: self.reclassify())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.scope_box = QComboBox()
        self.scope_box.addItems(list(SCOPES))
        self.scope_box.setToolTip("which samples a retrain or a reclassify counts again")
        self.auto_check = QCheckBox("auto-retrain")
        self.auto_check.setToolTip("retrain by itself after every N labels (keys or canvas)")
        self.auto_spin = QSpinBox()
        self.auto_spin.setRange(1, 10_000)
        self.auto_spin.setValue(AUTO_RETRAIN_EVERY)
        self.auto_spin.setPrefix("every ")
        self.auto_spin.setSuffix(" labels")
        self.bar = QProgressBar()
        self.bar.setVisible(False)
        self.result_label = QLabel("label specimens (keys or canvas), then retrain")
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        grid = QGridLayout()
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addWidget(self.class_edit, 0, 0, 1, 2)
        grid.addWidget(self.add_button, 0, 2)
        grid.addWidget(self.label_box, 1, 0)
        grid.addWidget(self.label_button, 1, 1)
        grid.addWidget(self.undo_button, 1, 2)
        grid.addWidget(self.retrain_button, 2, 0)
        grid.addWidget(self.reclassify_button, 2, 1)
        grid.addWidget(self.cancel_button, 2, 2)
        grid.addWidget(QLabel("count again"), 3, 0)
        grid.addWidget(self.scope_box, 3, 1, 1, 2)
        grid.addWidget(self.auto_check, 4, 0)
        grid.addWidget(self.auto_spin, 4, 1, 1, 2)
        # Narrow enough for a laptop's dock (the review's content must not be clipped).
        for combo in (self.label_box, self.scope_box):
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
            )
            combo.setMinimumContentsLength(6)
        self.class_edit.setMinimumWidth(60)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addLayout(grid)
        box.addWidget(self.bar)
        box.addWidget(self.result_label)
        hub(self.viewer).labelled.connect(self._on_labelled)
        hub(self.viewer).recounted.connect(self._on_recounted)
        self.update_state()

    # ------------------------------------------------------------------ state
    @property
    def store(self) -> Any:
        return self.owner._store

    def is_running(self) -> bool:
        return self.runner.busy()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a retrain / reclassify thread ends (tests, scripts)."""
        return self.runner.wait(timeout)

    def set_classes(self, names: list[str]) -> None:
        current = self.label_box.currentIndex()
        self.label_box.clear()
        for k, name in enumerate(names):
            self.label_box.addItem(f"{k + 1} {name}" if k < 9 else name, k)
        if 0 <= current < len(names):
            self.label_box.setCurrentIndex(current)

    def update_state(self) -> None:
        writable = self.store is not None and self.store.mode == "a"
        running = self.is_running()
        for w in (self.add_button, self.retrain_button, self.reclassify_button):
            w.setEnabled(writable and not running)
        self.label_button.setEnabled(self.label_box.count() > 0)
        self.cancel_button.setEnabled(running)

    def _say(self, text: str) -> None:
        self.result_label.setText(" ".join(str(text).split()))

    # ------------------------------------------------------------------ classes, labels
    def add_class(self, name: str) -> bool:
        """Add a class to the store by name; it gets the next number key."""
        name = " ".join(str(name).split())
        store = self.store
        if store is None or store.mode != "a":
            self._say("open a store for writing first")
            return False
        if not name:
            self._say("type the new class's name first")
            return False
        try:
            added = store.add_classes([name])
        except ValueError as exc:
            self._say(f"cannot add {name!r}: {one_line(exc)}")
            return False
        names = store.class_names
        if not added:
            self._say(f"{name!r} is class {names.index(name) + 1} already")
            return False
        self.class_edit.clear()
        self.owner.classes_changed()
        k = names.index(name) + 1
        key = f"key {k}" if k <= 9 else "choose it beside 'Label' (keys go to 9)"
        self._say(f"class {k} {name} added: {key}")
        return True

    def label_selected(self) -> bool:
        """Label label the specimens selected on the canvas as the chosen class."""
        k = self.label_box.currentData()
        try:
            outcome = labelling.label_selected(self.viewer, "class", -1 if k is None else int(k))
        except (ValueError, OSError) as exc:
            self._say(one_line(exc))
            return False
        self._say(outcome.message)
        return True

    def undo_labels(self) -> bool:
        try:
            outcome = labelling.undo_last(self.viewer)
        except (ValueError, OSError) as exc:
            self._say(one_line(exc))
            return False
        self._say("nothing to undo on the canvas" if outcome is None else outcome.message)
        return outcome is not None

    def _on_labelled(self, outcome: labelling.LabelOutcome) -> None:
        """Canvas labels of this store: the review's queue re-reads them."""
        store = self.store
        if store is None or Path(store.path).resolve() != Path(outcome.store_path).resolve():
            return
        owner = self.owner
        if owner.session is not None and owner.session.sample_id == outcome.sample_id:
            owner.session.refresh()
        owner._show()
        self._say(outcome.message)
        if outcome.action != "undo":
            self.note_labels(outcome.n)

    def note_labels(self, n: int) -> None:
        """`n` specimens labelled: retrain when auto-retrain is on and N are reached."""
        self.labels_since += int(n)
        every = int(self.auto_spin.value())
        if self.auto_check.isChecked() and self.labels_since >= every and not self.is_running():
            self.retrain(auto=True)

    # ------------------------------------------------------------------ background work
    def _scope(self) -> list[str] | None:
        session = self.owner.session
        if SCOPES.get(self.scope_box.currentText(), False) or session is None:
            return None
        return [session.sample_id]

    def retrain(self, auto: bool = False) -> bool:
        """Teach a head on the store's labels, save it beside the store, count again
        (background); the new model becomes the active one.
        """
        return self._start("retrain", auto=auto)

    def reclassify(self, all_samples: bool | None = None) -> bool:
        """Count the sample (or every sample) again with the active model (background)."""
        if all_samples is not None:
            self.scope_box.setCurrentText("every sample" if all_samples else "this sample")
        return self._start("reclassify")

    def cancel(self) -> None:
        if self.is_running():
            self.runner.stop.set()
            self._say("stopping... (the samples not finished stay as they were)")

    def _start(self, what: str, auto: bool = False) -> bool:
        store = self.store
        if self.is_running():
            return False
        if store is None or store.mode != "a":
            self._say("open a store for writing first")
            return False
        self.last_result = None
        self.runner.stop.clear()
        self.bar.setVisible(True)
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self._started = time.perf_counter()
        self._say(f"{'auto-' if auto else ''}{what}: starting...")
        model = active_model(self.viewer)
        ids = self._scope()
        self.runner.start(f"teach-{what}", lambda: self._work(what, store, model, ids))
        self.update_state()
        return True

    def _work(self, what: str, store: Any, model: Any, ids: list[str] | None) -> None:
        from napari_foram import teaching
        from napari_foram.reclassify import reclassify_store

        emit = self.runner.emit
        stop = self.runner.stop

        def progress(done: int, total: int, message: str = "") -> None:
            emit("progress", done, total, message)

        try:
            emit("progress", 0, 0, f"loading {model.name}")
            predictor = model.predictor(progress=progress)
            if what == "retrain":
                emit("progress", 0, 0, "teaching on the store's labels")
                result = teaching.retrain(store, predictor, sample_ids=ids, cancel=stop.is_set)
                taught = teaching.predictor_for(result.taught, predictor)
                emit("finished", what, (result, taught, predictor))
            else:
                reports = reclassify_store(
                    store, predictor, sample_ids=ids, progress=progress, cancel=stop.is_set
                )
                emit("finished", what, (reports, predictor))
        except Exception as exc:  # shown to the user, not swallowed
            emit("finished", what, exc)

    def _on_progress(self, done: int, total: int, message: str) -> None:
        # Few repaints (each composes napari's whole window again) and no busy animation.
        now = time.perf_counter()
        if now - self._said_at < PROGRESS_TEXT_S and 0 <= done < total:
            return
        self._said_at = now
        if total > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(min(done, total))
        if message:
            self._say(message)

    def _on_finished(self, what: str, outcome: object) -> None:
        self.runner.wait(10)
        self.bar.setVisible(False)
        model = active_model(self.viewer)
        if isinstance(outcome, Exception):
            from napari_foram.reclassify import Cancelled

            self.last_result = outcome
            verb = "stopped" if isinstance(outcome, Cancelled) else "failed"
            self._say(f"{what} {verb}: {one_line(outcome)}")
            self.update_state()
            return
        assert isinstance(outcome, tuple)
        if what == "retrain":
            result, taught, base = outcome
            model.note_loaded(base)
            self.labels_since = 0
            info = result.taught.info
            model.set(result.path, info=info, predictor=taught)
            reports = result.reports
            per = info.training.get("labels_per_class", {})
            left = info.training.get("classes_left_out") or {}
            head = (
                f"taught {result.path.name} on {sum(per.values())} labels, "
                f"{len(per)} classes in {result.seconds:.1f} s"
                + (f" (left out, too few labels: {', '.join(left)})" if left else "")
            )
            k = len(result.reports[0].class_names) if result.reports else len(per)
            if len(per) < k:  # it counts every specimen as one of the classes it knows
                head += f"; it knows {len(per)} of the store's {k} classes: label the others"
            self.last_result = result
        else:
            reports, predictor = outcome
            model.note_loaded(predictor)
            self.last_result = reports
            seconds = sum(r.seconds for r in reports)
            head = f"counted again with {model.name} in {seconds:.1f} s"
        lines = [counts_line(r) for r in reports]
        self._say("; ".join([head, *lines]))
        self.after_recount([r.sample_id for r in reports])
        self.update_state()

    def after_recount(self, sample_ids: list[str]) -> None:
        """After this panel classified samples again: the specimen layers are redrawn and the
        other widgets hear of it (`Hub.recounted`; this panel too, `_on_recounted`).
        """
        store = self.store
        if store is None:
            return
        try:
            labelling.refresh_layers(self.viewer, store.path, sample_ids)
        except (ValueError, OSError) as exc:
            self._say(f"cannot redraw the specimens: {one_line(exc)}")
        hub(self.viewer).recounted.emit(Path(store.path), list(sample_ids))

    def _on_recounted(self, store_path: Path, sample_ids: list[str]) -> None:
        """Samples of this store were classified again (here or by Train classifier):
        the review re-reads and re-orders them.
        """
        owner, store = self.owner, self.store
        if store is None or Path(store.path).resolve() != Path(store_path).resolve():
            return
        if len(store.class_names) != self.label_box.count():
            owner.classes_changed()
        elif owner.session is not None:
            owner.session.refresh()
        self.apply_suggest()
        owner._show()

    def apply_suggest(self) -> None:
        """The queue put in "suggest next" order when that is chosen: its rows in
        `review.suggested_order` (kept features, current probabilities).
        """
        from dataclasses import replace

        from napari_foram.review._queue import SUGGEST_NEXT, suggested_order
        from napari_foram.tally.stats import REVIEW_NONE

        session = self.owner.session
        if session is None or self.owner.measure_box.currentData() != SUGGEST_NEXT:
            return
        flt = session.queue_filter
        if session.target is not None:
            flt = replace(flt, statuses=(REVIEW_NONE,))
        feats, _space = session.store.read_features(session.sample_id)
        rule = session.store.unsure_rule(session.sample_id) if flt.unsure_only else None
        session.rows = suggested_order(session.data, feats, flt, rule)
        session.position = 0
        if not feats.shape[1]:
            self._say(
                "suggest next: this sample keeps no features yet (Retrain or Reclassify "
                "once computes them); most uncertain first meanwhile"
            )

    def close_panel(self) -> None:
        """Stop and join the background work (the review widget is closing)."""
        hub(self.viewer).labelled.disconnect(self._on_labelled, missing_ok=True)
        hub(self.viewer).recounted.disconnect(self._on_recounted, missing_ok=True)
        self.runner.close(None)
