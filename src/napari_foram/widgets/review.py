"""Foram review: check the classifier's least certain specimens first, fix their labels,
export the validated crops and retrain.

A thin Qt widget over `napari_foram.review` (the Qt-free queue, actions, export and
fine-tuning). The store is opened for writing while the widget shows it (one writer at a
time: a store that a scan is still writing opens read-only, to browse); every verdict is
written at once. Reading a specimen is fast (one crop of 150 kB), so the queue runs on the
GUI thread; exporting and fine-tuning run on a background thread and report through Qt
signals.

Keys (with the widget focused, click the crop to focus it, or with napari's canvas
focused while a sample is open; never while typing in a text field, where Enter only
confirms the field):

=================  ==========================================================
1 .. 9             the specimen is of class 1..K (its predicted class = accept)
Enter, A           accept: the predicted class is right
D                  dubious: cannot tell (counted as predicted, reported)
X                  reject: not a specimen
Backspace, U       undo the last action (any number of levels)
Right, Left        next / previous specimen of the queue
=================  ==========================================================

On the canvas these keys take precedence over napari's own (a Points layer's 1-5, A and
Backspace, the dims' Left and Right) while the widget is shown with a sample open, so a
key always acts on the specimen the widget shows.

Selected specimens on the canvas come first: with a specimens layer active and points
selected, 1..9 and X label those (`labelling`), not the specimen shown here.

"Teach" (`_teach.TeachPanel`): add a class by name, label the canvas selection, retrain
the classifier on the store's labels (by hand or after every N labels) and count again,
or count again with the active model (Reclassify). The queue's "suggest next" order
shows first the specimens whose label would help the model most (uncertain, unlike the
labelled ones: `review._queue.suggested_order`). The "current model" field is the
viewer's active model (`_active`), shown and followed by every widget of the plugin.

"Show in frame" shows the specimen where it lies on the sample (`_review_frame`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtGui import QKeyEvent
from qtpy.QtOpenGLWidgets import QOpenGLWidget
from qtpy.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QAbstractSlider,
    QAbstractSpinBox,
    QApplication,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_foram.reasons import one_line
from napari_foram.review import (
    MEASURES,
    STATUS_FILTERS,
    QueueFilter,
    ReviewSession,
    default_export_dir,
)

# "Suggest next" is a queue order of review._queue (not re-exported by the package).
from napari_foram.review._queue import SUGGEST_NEXT
from napari_foram.tally.stats import REVIEW_NONE
from napari_foram.widgets import labelling
from napari_foram.widgets._active import ModelLabel, bind_model_field, hub, register_writer
from napari_foram.widgets._qt import Runner, Section, scroll_layout, with_browse

# The highlight layer's name is importable from here too (tests, scripts).
from napari_foram.widgets._review_frame import HIGHLIGHT_LAYER as HIGHLIGHT_LAYER
from napari_foram.widgets._review_frame import show_specimen_in_frame
from napari_foram.widgets._review_parts import (
    CROP_DISPLAY_PX,
    ProbabilityBars,
    _one_line,
    crop_pixmap,
    double_spin,
    key_action,
    login_name,
)
from napari_foram.widgets._review_retrain import export_or_fine_tune

if TYPE_CHECKING:
    import napari.viewer

    from napari_foram.tally.store import TallyStore

#: Measure names as the widget shows them.
MEASURE_LABELS = {
    "mutual_information": "mutual information",
    "entropy": "predictive entropy",
    "vote": "1 - vote fraction",
    "feature_distance": "distance from training crops",
    SUGGEST_NEXT: "suggest next (uncertain, unlike the labelled)",
}


#: Controls that own the keyboard while focused: Enter on them is theirs (or nothing),
#: never "accept" (issue 27: Enter on a dropdown or a checkbox accepted the specimen).
CONTROL_TYPES = (QComboBox, QAbstractButton, QAbstractSpinBox, QAbstractItemView, QAbstractSlider)
_ENTER_KEYS = (int(Qt.Key.Key_Return), int(Qt.Key.Key_Enter))


def _inside_a_box(edit: QLineEdit) -> bool:
    return isinstance(edit.parent(), (QAbstractSpinBox, QComboBox))


def _is_enter(event: QKeyEvent) -> bool:
    return int(event.key()) in _ENTER_KEYS


class ReviewWidget(QWidget):
    """Review a sample's specimens, most uncertain first, and retrain from the result.

    Parameters
    ----------
    napari_viewer
        The viewer ("show in frame" adds layers to it).
    store
        A tally store to open at once (else choose one in the widget).
    reviewer
        Name stored with every verdict (default: the login name).
    model
        The current model: a checkpoint path, or "demo"; fine-tuning starts from it.
    """

    def __init__(
        self,
        napari_viewer: napari.viewer.Viewer,
        *,
        store: str | Path | None = None,
        reviewer: str | None = None,
        model: str = "demo",
    ) -> None:
        super().__init__()
        self.viewer = napari_viewer
        #: The open review session (None until a store and a sample are open).
        self.session: ReviewSession | None = None
        self._store: TallyStore | None = None
        #: Extra keyword arguments of `napari_foram.review.fine_tune` (epochs, lr, ...).
        self.fine_tune_options: dict[str, Any] = {}
        #: The last export's / fine-tuning's result (or exception); None while running.
        self.last_result: Any = None
        self.runner = Runner(self)
        self.runner.on("progress", self._on_progress)
        self.runner.on("finished", self._on_finished)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

        # ---- store, sample, reviewer
        self.store_edit = QLineEdit()
        self.store_edit.setPlaceholderText("a tally store (.zarr folder)")
        self.store_edit.returnPressed.connect(lambda: self.open_store(self.store_edit.text()))
        self.sample_box = QComboBox()
        self.sample_box.currentTextChanged.connect(self._on_sample)
        self.reviewer_edit = QLineEdit(reviewer if reviewer is not None else login_name())
        self.reviewer_edit.textChanged.connect(self._on_reviewer)
        form = QFormLayout()
        form.addRow("tally store", with_browse(self.store_edit, self._browse_store))
        form.addRow("sample", self.sample_box)
        form.addRow("reviewer", self.reviewer_edit)

        # ---- queue
        self.measure_box = QComboBox()
        for name in (*MEASURES, SUGGEST_NEXT):
            self.measure_box.addItem(MEASURE_LABELS[name], name)
        self.class_box = QComboBox()
        self.status_box = QComboBox()
        self.status_box.addItems(list(STATUS_FILTERS))
        self.range_check = QCheckBox("uncertainty from")
        self.min_spin = double_spin(0.0, 10.0, 0.0, 0.05)
        self.max_spin = double_spin(0.0, 10.0, 2.0, 0.05)
        self.unsure_check = QCheckBox("unsure only (the model's unsure rule)")
        self.target_check = QCheckBox("review until expected misclassified <")
        self.target_spin = double_spin(0.01, 100000.0, 5.0, 0.5)
        # A compact grid: the dock must leave room for the crop on a laptop screen.
        grid = QGridLayout()
        grid.addWidget(QLabel("sort by"), 0, 0)
        grid.addWidget(self.measure_box, 0, 1, 1, 3)
        grid.addWidget(QLabel("class"), 1, 0)
        grid.addWidget(self.class_box, 1, 1)
        grid.addWidget(QLabel("status"), 1, 2)
        grid.addWidget(self.status_box, 1, 3)
        grid.addWidget(self.range_check, 2, 0, 1, 2)
        range_row = QHBoxLayout()
        for w in (self.min_spin, QLabel("to"), self.max_spin):
            range_row.addWidget(w)
        grid.addLayout(range_row, 2, 2, 1, 2)
        grid.addWidget(self.target_check, 3, 0, 1, 3)
        grid.addWidget(self.target_spin, 3, 3)
        grid.addWidget(self.unsure_check, 4, 0, 1, 4)
        queue_box = QWidget()
        grid.setContentsMargins(0, 0, 0, 0)
        queue_box.setLayout(grid)
        for box in (self.measure_box, self.class_box, self.status_box):
            box.currentIndexChanged.connect(self._apply_queue_settings)
        for check in (self.range_check, self.target_check, self.unsure_check):
            check.toggled.connect(self._apply_queue_settings)
        for spin in (self.min_spin, self.max_spin, self.target_spin):
            spin.valueChanged.connect(self._apply_queue_settings)

        # ---- the specimen
        self.crop_label = QLabel()
        self.crop_label.setFixedSize(CROP_DISPLAY_PX, CROP_DISPLAY_PX)
        self.crop_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.crop_label.setStyleSheet("background: black;")
        self.crop_label.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.info_label = QLabel("")
        self.info_label.setWordWrap(True)
        self.bars = ProbabilityBars()
        self.prev_button = QPushButton("\u25c0 Prev")
        self.accept_button = QPushButton("Accept (A)")
        self.dubious_button = QPushButton("Dubious (D)")
        self.reject_button = QPushButton("Reject (X)")
        self.undo_button = QPushButton("Undo (U)")
        self.next_button = QPushButton("Next \u25b6")
        self.frame_button = QPushButton("Show in frame")
        actions = {
            self.prev_button: "previous",
            self.accept_button: "accept",
            self.dubious_button: "dubious",
            self.reject_button: "reject",
            self.undo_button: "undo",
            self.next_button: "next",
        }
        buttons = QGridLayout()  # two rows of three: the dock stays narrow
        for i, (button, action) in enumerate(actions.items()):
            # Buttons never keep the focus, so the keys keep working after a click.
            button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            button.clicked.connect(lambda _=False, a=action: self.do(a))
            buttons.addWidget(button, i // 3, i % 3)
        self.frame_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.frame_button.clicked.connect(self.show_in_frame)
        self.progress_label = QLabel("")
        self.progress_label.setWordWrap(True)
        self.message = QLabel("choose a tally store")
        self.message.setWordWrap(True)

        # ---- export and fine-tuning
        self.export_edit = QLineEdit()
        self.export_edit.setPlaceholderText("default: <store>_reviewed_crops beside the store")
        self.model_edit = QLineEdit(model)
        self.export_button = QPushButton("Export validated crops")
        self.export_button.clicked.connect(self.export_crops)
        self.tune_button = QPushButton("Fine-tune model")
        self.tune_button.clicked.connect(self.fine_tune)
        self.work_bar = QProgressBar()
        self.work_bar.setVisible(False)
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        out_form = QFormLayout()
        out_form.addRow("export to", with_browse(self.export_edit, self._browse_export))
        out_form.addRow("current model", with_browse(self.model_edit, self._browse_model))
        out_buttons = QHBoxLayout()
        out_buttons.addWidget(self.export_button)
        out_buttons.addWidget(self.tune_button)
        out_box = QWidget()
        out_layout = QVBoxLayout(out_box)
        out_layout.setContentsMargins(0, 0, 0, 0)
        out_layout.addLayout(out_form)
        out_layout.addLayout(out_buttons)
        out_layout.addWidget(self.work_bar)
        out_layout.addWidget(self.result_label)

        # The dock scrolls and its settings fold away: it fits a 1366 x 768 screen beside
        # Foram live, the crop first in view (issue 15). It asks for room for the crop
        # and its buttons but can shrink far below it: with every dock of the plugin
        # open, a larger minimum made napari's window taller than the screen (issue 27).
        layout = scroll_layout(self, height_hint=460, min_height=90)
        layout.addLayout(form)
        self.model_label = ModelLabel(napari_viewer)
        layout.addWidget(self.model_label)
        from napari_foram.widgets._teach import TeachPanel

        self.teach = TeachPanel(self)
        self.sections = {
            "queue": Section("Queue (most uncertain first)", queue_box, expanded=False),
            "teach": Section("Teach: classes, canvas labels, retrain", self.teach, expanded=False),
            "retrain": Section("Retrain from the validated crops", out_box, expanded=False),
        }
        layout.addWidget(self.sections["queue"])
        layout.addWidget(self.crop_label, alignment=Qt.AlignmentFlag.AlignHCenter)
        layout.addWidget(self.info_label)
        layout.addWidget(self.bars)
        layout.addLayout(buttons)
        layout.addWidget(self.frame_button)
        layout.addWidget(self.progress_label)
        layout.addWidget(self.message)
        layout.addWidget(self.sections["teach"])
        layout.addWidget(self.sections["retrain"])
        layout.addStretch(1)
        # Text fields keep the keys typed into them: Qt passes a key a field does not
        # use (Enter, Up...) on to its parent, where Enter in the store field would
        # otherwise accept the specimen shown as the store opens.
        # (A spin box's own line edit is left alone: the box receives the keys.)
        edits = [e for e in self.findChildren(QLineEdit) if not _inside_a_box(e)]
        for field in [*edits, *self.findChildren(QAbstractSpinBox)]:
            field.installEventFilter(self)
        # Dropdowns, checkboxes and buttons keep Enter too: it is theirs (or nothing),
        # not "accept" (Qt passes a key a control ignores on to this widget).
        for control in self.findChildren(QWidget):
            if isinstance(control, CONTROL_TYPES) and not isinstance(control, QAbstractSpinBox):
                control.installEventFilter(self)
        self._canvases: list[QOpenGLWidget] = []
        # Labels given on the canvas carry this reviewer's name; they write through
        # this widget's store when it holds it.
        hub(napari_viewer).reviewer = self.reviewer_edit.text
        register_writer(self, lambda w: w._store)
        # The current model is the active model of every widget (shown and followed).
        bind_model_field(napari_viewer, self.model_edit, self.message.setText)
        self._show()
        if store is not None:
            self.open_store(store)

    # ------------------------------------------------------------------ pickers
    def _browse_store(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Tally store (.zarr folder)")
        if path:
            self.open_store(path)

    def _browse_export(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder for the validated crops")
        if path:
            self.export_edit.setText(path)

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Checkpoint", "", "*.safetensors")
        if path:
            self.model_edit.setText(path)
            typed = getattr(self.model_edit, "model_typed", None)  # set by _active
            if typed is not None:
                typed()

    # ------------------------------------------------------------------ store and sample
    @property
    def store_path(self) -> Path | None:
        """The open store's folder, or None."""
        return None if self._store is None else Path(self._store.path)

    def open_store(self, path: str | Path) -> bool:
        """Open a tally store for reviewing (read-only when another program writes it)
        and show its first sample; False (and a one-line message) if it cannot be.
        """
        from napari_foram.tally.store import TallyStore

        self.close_store()
        text = str(path).strip()
        self.store_edit.setText(text)
        if not text:
            self.message.setText("choose a tally store")
            return False
        note = ""
        try:
            try:
                store = TallyStore.open(text, mode="a")
            except ValueError as exc:
                if "one writer at a time" not in str(exc):
                    raise
                # A scan is writing it: browse what it has committed, no verdicts.
                store = TallyStore.open(text, mode="r")
                note = f" (read-only: {exc})"
        except (ValueError, OSError) as exc:
            self.message.setText(_one_line(f"cannot open store: {exc}"))
            self._show()
            return False
        self._store = store
        self._fill_classes()
        samples = store.samples()
        self.sample_box.blockSignals(True)
        self.sample_box.clear()
        self.sample_box.addItems(samples)
        self.sample_box.blockSignals(False)
        self.message.setText(_one_line(f"{store.path.name}: {len(samples)} sample(s){note}"))
        if samples:
            self.open_sample(samples[0])
        else:
            self._show()
        self.setFocus()  # ready for the keys, e.g. right after Enter in the path field
        return True

    def close_store(self) -> None:
        """Close the store (releases the writer lock)."""
        self.session = None
        if self._store is not None:
            self._store.close()
            self._store = None
        self.teach.update_state()

    def _fill_classes(self, keep: bool = False) -> None:
        names = self._store.class_names if self._store is not None else []
        current = self.class_box.currentData() if keep else None
        self.class_box.blockSignals(True)
        self.class_box.clear()
        self.class_box.addItem("all classes", None)
        for k, name in enumerate(names):
            self.class_box.addItem(f"{k + 1} {name}", k)
        if current is not None and current < len(names):
            self.class_box.setCurrentIndex(int(current) + 1)
        self.class_box.blockSignals(False)
        self.teach.set_classes(names)
        self.teach.update_state()

    # ------------------------------------------------------------------ teaching
    def classes_changed(self) -> None:
        """The store's classes grew (a class added by name, or by a model that knows
        more): the keys, the filter and the bars follow.
        """
        self._fill_classes(keep=True)
        if self.session is not None and self._store is not None:
            self.session.class_names = self._store.class_names
            self.session.refresh()
        self._show()
        if self.store_path is not None:
            hub(self.viewer).reviewed.emit(
                self.store_path, self._store.samples() if self._store else []
            )

    def open_sample(self, sample_id: str) -> None:
        """Review `sample_id` of the open store."""
        if self._store is None:
            return
        if self.sample_box.currentText() != sample_id:
            self.sample_box.blockSignals(True)
            self.sample_box.setCurrentText(sample_id)
            self.sample_box.blockSignals(False)
        try:
            self.session = ReviewSession(
                self._store,
                sample_id,
                reviewer=self.reviewer_edit.text(),
                measure=self._measure(),
                queue_filter=self._queue_filter(),
                target=self._target(),
            )
            self.teach.apply_suggest()
        except ValueError as exc:
            self.session = None
            self.message.setText(_one_line(f"cannot review sample {sample_id!r}: {exc}"))
        self._show()

    def _on_sample(self, sample_id: str) -> None:
        if sample_id:
            self.open_sample(sample_id)

    def _on_reviewer(self, name: str) -> None:
        if self.session is not None:
            self.session.reviewer = name

    # ------------------------------------------------------------------ queue settings
    def _measure(self) -> str:
        """The uncertainty measure shown (and sorted by, unless "suggest next")."""
        measure = str(self.measure_box.currentData())
        return "entropy" if measure == SUGGEST_NEXT else measure

    def _queue_filter(self) -> QueueFilter:
        cls = self.class_box.currentData()
        lo = hi = None
        if self.range_check.isChecked():
            lo, hi = float(self.min_spin.value()), float(self.max_spin.value())
        return QueueFilter(
            classes=None if cls is None else (int(cls),),
            statuses=STATUS_FILTERS[self.status_box.currentText() or "unreviewed"],
            min_uncertainty=lo,
            max_uncertainty=hi,
            unsure_only=self.unsure_check.isChecked(),
        )

    def _target(self) -> float | None:
        return float(self.target_spin.value()) if self.target_check.isChecked() else None

    def _apply_queue_settings(self, *_: object) -> None:
        if self.session is None:
            return
        try:
            self.session.set_measure(self._measure())
            self.session.set_filter(self._queue_filter())
            self.session.set_target(self._target())
            self.teach.apply_suggest()
        except ValueError as exc:
            self.message.setText(_one_line(exc))
        self._show()

    # ------------------------------------------------------------------ actions
    def keyPressEvent(self, event: QKeyEvent | None) -> None:
        """A review key (`key_action`) acts on the current specimen, except Enter while
        one of this widget's controls has the keyboard; other keys go on to Qt.
        """
        if event is None:
            return
        action = key_action(event)
        if action is not None and not (_is_enter(event) and self._control_has_focus()):
            self.do(action)
            event.accept()
        else:
            super().keyPressEvent(event)

    def _control_has_focus(self) -> bool:
        """Whether one of this widget's controls (a dropdown, a checkbox, a button, a spin
        box, a text field) has the keyboard: Enter is then that control's, not "accept".
        """
        focus = QApplication.focusWidget()
        if focus is None or focus is self or focus is self.crop_label:
            return False
        return self.isAncestorOf(focus) and isinstance(focus, (*CONTROL_TYPES, QLineEdit))

    def showEvent(self, event: Any) -> None:
        """Once shown, watch the window's canvas for the review and labelling keys."""
        super().showEvent(event)
        # Docked, the widget shares napari's window: watch its canvas (a QOpenGLWidget,
        # found through Qt, not napari's private attributes) for the review keys.
        window = self.window()
        for canvas in window.findChildren(QOpenGLWidget) if window is not None else []:
            if canvas not in self._canvases:
                canvas.installEventFilter(self)
                self._canvases.append(canvas)
        # Selected specimens on the canvas take 1..9 / X first (`labelling`).
        labelling.install_canvas_keys(self.viewer, window)

    def eventFilter(self, watched: QObject | None, event: QEvent | None) -> bool:
        """Key presses seen before their target: on the canvas a review key acts on the
        current specimen (unless specimens are selected: `labelling` labels those); a text
        field or spin box keeps the review keys typed into it, another control keeps
        Enter, and neither passes them on to this widget as review actions. True when
        the key was handled here.
        """
        if not isinstance(event, QKeyEvent) or event.type() != QEvent.Type.KeyPress:
            return super().eventFilter(watched, event)
        if isinstance(watched, CONTROL_TYPES) and not isinstance(watched, QAbstractSpinBox):
            if not _is_enter(event) or key_action(event) is None:
                return False  # other keys: the control's, else the review's (A, 1..9...)
            # Enter: the control's own meaning (a button or checkbox has none in Qt),
            # then stopped before it reaches this widget as "accept".
            watched.event(event)
            event.accept()
            return True
        if isinstance(watched, (QLineEdit, QAbstractSpinBox)):
            if key_action(event) is None:
                return False
            # Let the field handle the key (Enter emits returnPressed), then stop it.
            watched.event(event)
            event.accept()
            return True
        if isinstance(watched, QOpenGLWidget) and watched in self._canvases:
            action = key_action(event)
            if action is None or self.session is None or not self.isVisible():
                return False  # napari's own keys
            if labelling.handles_key(self.viewer, event):
                return False  # the selected specimens get the label (`labelling`)
            self.do(action)
            event.accept()
            return True
        return super().eventFilter(watched, event)

    def do(self, action: str) -> bool:
        """Run one action on the current specimen and show the next one.

        `action` is "accept", "dubious", "reject", "undo", "next", "previous" or
        "class N" (N = 1..K, the key pressed: relabel, or accept for the predicted
        class). Returns False (and shows why) when it could not be done.
        """
        session = self.session
        if session is None:
            self.message.setText("open a store and a sample first")
            return False
        try:
            if action == "next":
                session.next()
            elif action == "previous":
                session.previous()
            elif action == "undo":
                step = session.undo()
                self.message.setText(
                    "nothing to undo"
                    if step is None
                    else f"undone: {step.action} of row {step.row}"
                )
            elif action.startswith("class "):
                number = int(action.split()[1])
                k = len(session.class_names)
                if not 1 <= number <= k:
                    raise ValueError(f"no class {number}: this store has {k} classes (keys 1-{k})")
                step = session.relabel(number - 1)
                self.message.setText(self._done_text(step.action, step.row, step.reviewed_class))
                self.teach.note_labels(1)
            elif action in ("accept", "dubious", "reject"):
                step = getattr(session, action)()
                self.message.setText(self._done_text(step.action, step.row, -1))
                if action == "accept":
                    self.teach.note_labels(1)
            else:
                raise ValueError(f"unknown action {action!r}")
        except ValueError as exc:
            self.message.setText(_one_line(exc))
            self._show()
            return False
        self._show()
        if action not in ("next", "previous") and self.store_path is not None:
            # The store changed: Foram tally (and any other listener) re-reads it.
            hub(self.viewer).reviewed.emit(self.store_path, [session.sample_id])
        return True

    def _done_text(self, action: str, row: int, reviewed_class: int) -> str:
        if action == "relabel" and self.session is not None:
            return f"row {row}: relabelled {self.session.class_names[reviewed_class]}"
        past = {"accept": "accepted", "dubious": "marked dubious", "reject": "rejected"}
        return f"row {row}: {past.get(action, action)}"

    # ------------------------------------------------------------------ display
    def _show(self) -> None:
        """Draw the current specimen, its probabilities and the progress line."""
        session = self.session
        row = session.current if session is not None else None
        enabled = row is not None
        writable = self._store is not None and self._store.mode == "a"
        for button in (self.accept_button, self.dubious_button, self.reject_button):
            button.setEnabled(enabled and writable)
        self.frame_button.setEnabled(enabled)
        self.undo_button.setEnabled(session is not None and session.undo_depth > 0)
        self.export_button.setEnabled(self._store is not None and not self.is_running())
        self.tune_button.setEnabled(self._store is not None and not self.is_running())
        if session is None:
            self.crop_label.clear()
            self.info_label.setText("")
            self.bars.set_values([], np.zeros(0), np.zeros(0), -1)
            self.progress_label.setText("")
            return
        progress = session.progress()
        position = f"{min(progress.position + 1, progress.length)} / {progress.length} in queue"
        self.progress_label.setText(f"{progress.line()}; {position}")
        if row is None:
            self.crop_label.clear()
            done = (
                "target reached: expected misclassified "
                f"{progress.expected_misclassified:.2f} < {progress.target:g}"
                if progress.target_reached
                else "queue finished: no more specimens match"
            )
            self.info_label.setText(done)
            self.bars.set_values(session.class_names, np.zeros(0), np.zeros(0), -1)
            return
        spec = session.specimen(row)
        try:
            self.crop_label.setPixmap(crop_pixmap(session.crop(row)))
        except (ValueError, OSError) as exc:
            self.crop_label.clear()
            self.message.setText(_one_line(f"cannot read the crop of row {row}: {exc}"))
        status = "not reviewed yet" if spec["status"] == REVIEW_NONE else spec["status_name"]
        if spec["reviewed_class"] >= 0:
            status += f" as {session.class_names[spec['reviewed_class']]}"
        if spec["reviewer"]:
            status += f" by {spec['reviewer']}"
        measure = MEASURE_LABELS[session.measure]
        unit = "" if session.measure == "vote" else " nats"
        self.info_label.setText(
            f"row {row}: predicted <b>{spec['predicted_name']}</b> "
            f"(p = {spec['mean_probs'][spec['predicted']]:.2f}, wrong with p = "
            f"{spec['p_wrong']:.2f}); {measure} {spec['uncertainty']:.3f}{unit}; {status}"
        )
        self.bars.set_values(
            session.class_names,
            spec["mean_probs"],
            spec["sd"],
            spec["predicted"],
            spec["reviewed_class"],
        )

    # ------------------------------------------------------------------ show in frame
    def show_in_frame(self) -> str | None:
        """Centre the viewer on the current specimen (`show_specimen_in_frame`); the
        name of the layer it is shown in, or None.
        """
        return show_specimen_in_frame(self)

    # ------------------------------------------------------------------ export / retrain
    def export_dir(self) -> Path | None:
        """Where the validated crops go: the "export to" folder, or the default."""
        text = self.export_edit.text().strip()
        if text:
            return Path(text).expanduser()
        return None if self.store_path is None else default_export_dir(self.store_path)

    def is_running(self) -> bool:
        """Whether an export or fine-tune thread is still going."""
        return self.runner.busy()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the export / training thread ends (tests, scripts); True if it did."""
        return self.runner.wait(timeout)

    def export_crops(self) -> bool:
        """Export every sample's validated crops (ImageFolder) on a background thread."""
        return self._start("export")

    def fine_tune(self) -> bool:
        """Export the validated crops, then train a new checkpoint beside the store from
        the current model, on a background thread.
        """
        return self._start("fine-tune")

    def _start(self, what: str) -> bool:
        store, out = self.store_path, self.export_dir()
        if self.is_running():
            return False
        if store is None or out is None:
            self.message.setText("open a tally store first")
            return False
        self.last_result = None
        self.work_bar.setVisible(True)
        self.work_bar.setRange(0, 0)
        self.result_label.setText(f"{what}: starting...")
        args = (what, store, out, self.model_edit.text().strip() or "demo")
        self.runner.start(f"review-{what}", lambda: self._work(*args))
        self._show()
        return True

    def _work(self, what: str, store_path: Path, out: Path, model: str) -> None:
        export_or_fine_tune(what, store_path, out, model, self.runner.emit, self.fine_tune_options)

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.work_bar.setRange(0, max(total, 1))
        self.work_bar.setValue(min(done, max(total, 1)))
        if message:
            self.result_label.setText(_one_line(message))

    def _on_finished(self, what: str, outcome: object) -> None:
        self.wait(10)  # the thread emitted its last signal and is returning
        self.last_result = outcome
        self.work_bar.setVisible(False)
        if isinstance(outcome, Exception):
            self.result_label.setText(_one_line(f"{what} failed: {one_line(outcome)}"))
        else:
            self.result_label.setText(_one_line(outcome.summary()))  # type: ignore[attr-defined]
        self._show()

    def closeEvent(self, event: Any) -> None:
        """Wait for an export or fine-tuning to end (no thread outlives the widget), then
        release the store and napari's canvas.
        """
        self.runner.close(None)
        self.teach.close_panel()
        self.close_store()
        for canvas in self._canvases:  # napari's canvas outlives the widget
            canvas.removeEventFilter(self)
        self._canvases.clear()
        super().closeEvent(event)
