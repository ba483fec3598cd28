"""Batch folders: count a folder of images into a tally store, and browse the results.

A thin Qt widget over `napari_foram.batch` (the same code as ``napari-foram batch``). The
run happens on a background thread; progress, each finished file and the final report
come back to the GUI thread through Qt signals (queued connections). The layers:

- ``"batch frame"``: the file just counted (or the one picked in *Show file*), with
- ``"batch specimens"``: its counted specimens, circled in their class colours;
- ``"<sample> crops"``: every stored crop of each sample, a browsable stack (the same
  layers as opening the store with the napari-foram reader).

A run resumes by itself: files the store already holds are skipped. Cancel acts at once:
the file being counted is dropped (nothing of it is written), the files counted before
it stay, and the status says which is which. The per-sample table counts this run's
files and specimens (the report's ``processed`` lines and ``samples.new``) and, apart,
the specimens the store holds in all (``samples.total``).

Pointing the batch at another store removes the previous store's layers (the frame, its
specimens and the crops stacks), so what is on the canvas always belongs to the store in
the *tally store* field.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from napari_foram.defaults import MC_SAMPLES
from napari_foram.widgets import labelling
from napari_foram.widgets._active import ModelLabel, bind_model_field, hub
from napari_foram.widgets._qt import (
    ClassLegend,
    Runner,
    scroll_layout,
    with_browse,
)
from napari_foram.widgets.layers import (
    class_colour,
    contrast_limits,
    display_uint8,
    show_crop_grids,
    show_specimen_circles,
)

if TYPE_CHECKING:
    import napari
    import napari.viewer

    from napari_foram.batch import BatchReport, FileReport, FileResult, FrameView

FRAME_LAYER = "batch frame"
SPECIMENS_LAYER = "batch specimens"
#: Columns of the per-sample table: this run's files, their specimens and bad files (the
#: report's lines), then every specimen the store holds for the sample.
TABLE_COLUMNS = ("sample", "files", "specimens", "bad", "in store")
TABLE_TIPS = (
    "sample id",
    "files counted in this run (report: status 'processed')",
    "specimens counted in this run (report JSON: samples.<id>.new)",
    "files of this run that could not be used (report: status 'bad')",
    "specimens the store holds for the sample, earlier runs included (report JSON: "
    "samples.<id>.total); filled in when the run ends",
)
#: Longest wait (ms) before a counted file is drawn; files finishing faster are skipped.
FRAME_DRAW_MS = 100
#: How often (ms) the elapsed time and the time left are redrawn while a run goes.
CLOCK_MS = 1000


def default_store_path(folder: str | Path) -> Path | None:
    """The store a folder is counted into unless the user names one: beside the folder,
    ``<folder>_tally.zarr``; None for a path that is not a folder (or the root).
    """
    path = Path(folder).expanduser()
    if not path.name or not path.is_dir():
        return None
    return path.with_name(path.name + "_tally.zarr")


def wrappable(text: str) -> str:
    """`text` with a zero-width break after every path separator: a long path then wraps
    in a narrow dock instead of widening it (or being cut off).
    """
    return text.replace("/", "/\u200b").replace("\\", "\\\u200b")


def _uses_cuda(device: str) -> bool:
    if device == "cpu":
        return False
    import torch

    return device == "cuda" or torch.cuda.is_available()


def display_view(view: FrameView) -> FrameView:
    """`view` with its image ready to show: RGB uint8, contrast stretched. Run off the
    GUI thread: on a 2592 x 1944 frame this is ~0.7 s of numpy.
    """
    import dataclasses

    if view.image is None:
        return view
    image = display_uint8(view.image, limits=contrast_limits(view.image), rgb=True)
    return dataclasses.replace(view, image=image)


def show_frame(
    viewer: napari.Viewer,
    view: FrameView,
    store: str | Path | None = None,
    *,
    prepared: bool = False,
) -> None:
    """Show a processed file and its counted specimens (circles in class colours).

    Both layers are made once and then updated in place: removing a Points layer with
    text and adding an image, once per file, crashed napari/vispy (issue 15). Every file
    is shown as RGB uint8, so grey, colour and 16-bit files fit the same layer
    (`prepared`: `display_view` made it so already). `store` (the tally store the file
    was counted into) goes into both layers' metadata.
    """
    where = {"store": str(store)} if store is not None else {}
    if view.image is not None:
        image = view.image if prepared else display_view(view).image
        if FRAME_LAYER in viewer.layers:
            layer = viewer.layers[FRAME_LAYER]
            layer.data = image
            layer.metadata = {**layer.metadata, "file": view.file, **where}
        else:
            viewer.add_image(
                image, name=FRAME_LAYER, rgb=True, metadata={"file": view.file, **where}
            )
    names = [view.class_names[c] for c in view.class_index]
    colours = np.array(
        [class_colour(n, int(c)) for n, c in zip(names, view.class_index, strict=True)]
    ).reshape(-1, 4)
    yx = np.asarray(view.centroids, dtype=float).reshape(-1, 2)
    features = {"class": names, "probability": np.round(view.probability, 2)}
    # Circles a little larger than each specimen, as in the scan view.
    sizes = np.maximum(1.3 * np.asarray(view.diameter_px, dtype=float), 10.0)
    metadata = {"file": view.file, "sample_id": view.sample_id, **where}
    # Frames are in pixels here: no units.
    show_specimen_circles(
        viewer,
        yx,
        features,
        sizes,
        colours,
        name=SPECIMENS_LAYER,
        text="{class} {probability:.2f}",
        units=None,
        metadata=metadata,
        add_empty=True,
    )


def show_crops(viewer: napari.Viewer, store: str | Path, *, visible: bool = True) -> list[str]:
    """Add each sample's crops stack from the store (or update it in place); the names.

    The stacks are 224 x 224 px planes at the origin: shown over a frame they hide its
    corner, hence `visible` (the widget adds them hidden when a run ends).
    """
    from napari_foram._reader import store_layer_data

    names = []
    for data, kwargs, kind in store_layer_data(store):
        if kind != "image":
            continue  # batch files have no stage positions: the crops are the map
        name = kwargs["name"]
        if name in viewer.layers:
            layer = viewer.layers[name]
            layer.data = data
            layer.metadata = kwargs.get("metadata", {})
            layer.visible = visible
        else:
            # (The reader's kwargs say "visible" too for a sample with stage positions.)
            viewer.add_image(data, **{**kwargs, "visible": visible})
        names.append(name)
    return names


def _frame_context(widget: BatchWidget) -> Any:
    """(store, sample) of the "batch specimens" layer, for canvas labelling."""
    import weakref

    ref = weakref.ref(widget)

    def context(layer: Any) -> tuple[Path, str] | None:
        owner = ref()
        sid = layer.metadata.get("sample_id")
        # The store the shown file was counted into, never merely the one typed since.
        stored = layer.metadata.get("store")
        path = Path(stored) if stored else (owner._store_path if owner is not None else None)
        return (path, str(sid)) if path is not None and sid else None

    return context


def format_eta(seconds: float) -> str:
    """Seconds as h:mm:ss (or m:ss under an hour)."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class BatchWidget(QWidget):
    """Count a folder of images (one subfolder per sample) into a tally store.

    Parameters
    ----------
    napari_viewer
        The viewer the results go to.
    model
        Initial checkpoint path, or "demo".
    mc_samples
        Initial MC-dropout passes.
    """

    def __init__(
        self,
        napari_viewer: napari.viewer.Viewer,
        *,
        model: str = "demo",
        mc_samples: int = MC_SAMPLES,
    ) -> None:
        super().__init__()
        self.viewer = napari_viewer
        #: The last run's report (or the exception that ended it); None while running.
        self.report: BatchReport | Exception | None = None
        self.class_names: list[str] = []
        self._started = 0.0
        #: When the first file began (after the model was loaded), and when the last
        #: one was done: the time left is measured on counting alone.
        self._counting_since: float | None = None
        self._last_done_at = 0.0
        self._done = self._total = 0
        self._store_path: Path | None = None
        #: The store the layers on the canvas (frame, specimens, crops) come from.
        self._layers_store: Path | None = None
        self._crop_layers: list[str] = []
        self._tally: dict[str, dict[str, int]] = {}
        self._in_store: dict[str, int] = {}
        #: The user typed or chose a store: a new folder no longer replaces it.
        self._store_chosen = False
        self.runner = Runner(self)
        self.runner.on("progress", self._on_progress)
        self.runner.on("file", self._on_file)
        self.runner.on("frame", self._on_frame)
        self.runner.on("finished", self._on_finished)
        # Files can finish faster than a redraw: only the newest waiting one is drawn,
        # by this timer (each draw costs tens of ms with software OpenGL).
        self._pending_view: FrameView | None = None
        self._draw_timer = QTimer(self)
        self._draw_timer.setSingleShot(True)
        self._draw_timer.setInterval(FRAME_DRAW_MS)
        self._draw_timer.timeout.connect(self._draw_pending)
        # The elapsed time and the time left move between files too.
        self._clock = QTimer(self)
        self._clock.setInterval(CLOCK_MS)
        self._clock.timeout.connect(self._show_time)

        self.folder_edit = QLineEdit()
        self.folder_edit.textChanged.connect(self._folder_changed)
        self.store_edit = QLineEdit()
        self.store_edit.textEdited.connect(self._store_typed)
        self.model_edit = QLineEdit(model)
        self.samples_edit = QLineEdit()
        self.samples_edit.setPlaceholderText("optional: CSV mapping files to samples")
        self.mc = QSpinBox()
        self.mc.setRange(1, 1000)
        self.mc.setValue(mc_samples)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.follow = QCheckBox("show each file as it is counted")
        self.follow.setChecked(True)
        form = QFormLayout()
        form.addRow("image folder", with_browse(self.folder_edit, self._browse_folder))
        form.addRow("tally store", with_browse(self.store_edit, self._browse_store))
        form.addRow("model", with_browse(self.model_edit, self._browse_model))
        form.addRow("sample sheet", with_browse(self.samples_edit, self._browse_samples))
        form.addRow("MC dropout passes", self.mc)
        form.addRow("device", self.device)
        form.addRow(self.follow)

        self.start_button = QPushButton("Count folder")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)

        # A plain bar in the dock: napari's activity dock is not used (its bar and
        # spinner redraw the whole status area, slow under software OpenGL).
        self.progress_bar = QProgressBar()
        self.eta_label = QLabel("")
        self.status_label = QLabel("choose an image folder and a tally store")
        for label in (self.eta_label, self.status_label):
            label.setWordWrap(True)
            # Wraps to the dock's width; never widens the dock.
            label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        self.report_label = QLabel("")
        self.report_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(TABLE_COLUMNS))
        for c, tip in enumerate(TABLE_TIPS):
            item = self.table.horizontalHeaderItem(c)
            if item is not None:
                item.setToolTip(tip)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.verticalHeader()
        if header is not None:
            header.setVisible(False)
        columns = self.table.horizontalHeader()
        if columns is not None:  # the sample id takes what the numbers leave
            columns.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
            columns.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(120)
        self.table_note = QLabel("files, specimens, bad: this run; in store: all runs")
        self.table_note.setWordWrap(True)
        self.table_note.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)

        # Browsing: any processed file of the store, and the crops gallery.
        self.frames = QComboBox()
        self.frames.activated.connect(self._show_selected)
        self.crops_button = QPushButton("Show crops of the store")
        self.crops_button.clicked.connect(lambda: self.show_crops())
        browse = QFormLayout()
        browse.addRow("show file", self.frames)

        self.legend = ClassLegend()

        layout = scroll_layout(self)
        layout.addWidget(ModelLabel(napari_viewer))
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.eta_label)
        layout.addWidget(self.status_label)
        layout.addWidget(self.report_label)
        layout.addWidget(self.table)
        layout.addWidget(self.table_note)
        layout.addWidget(self.legend)
        layout.addLayout(browse)
        layout.addWidget(self.crops_button)
        layout.addStretch(1)
        # The model field is the viewer's active model; the counted file's specimens
        # can be labelled on the canvas (`labelling`: select, then 1..9 or X).
        bind_model_field(napari_viewer, self.model_edit, self._say)
        hub(napari_viewer).layer_context[SPECIMENS_LAYER] = _frame_context(self)
        labelling.enable_canvas_keys(self, napari_viewer)

    def _say(self, text: str) -> None:
        self.status_label.setText(wrappable(text))

    # ------------------------------------------------------------------ pickers
    def _folder_changed(self, text: str) -> None:
        """A folder typed, pasted or browsed: its default store, unless the user chose
        a store (typed in the field or picked with its button).
        """
        if self._store_chosen and self.store_edit.text().strip():
            return
        store = default_store_path(text.strip()) if text.strip() else None
        if store is not None:
            self.store_edit.setText(str(store))  # setText: not taken as the user's choice

    def _store_typed(self, text: str) -> None:
        # Emptying the field hands it back to the folder's default.
        self._store_chosen = bool(text.strip())

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder of images")
        if path:
            self.folder_edit.setText(path)  # fills the default store (`_folder_changed`)

    def _browse_store(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Tally store (.zarr)", "", "*.zarr")
        if path:
            self._store_chosen = True
            self.store_edit.setText(path if path.endswith(".zarr") else path + ".zarr")

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Checkpoint", "", "*.safetensors")
        if path:
            self.model_edit.setText(path)
            typed = getattr(self.model_edit, "model_typed", None)  # set by _active
            if typed is not None:
                typed()

    def _browse_samples(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Sample sheet", "", "*.csv")
        if path:
            self.samples_edit.setText(path)

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        """Start counting on a background thread (no-op while a run is going)."""
        from napari_foram.batch import BatchConfig

        if self.is_running():
            return
        folder, store = self.folder_edit.text().strip(), self.store_edit.text().strip()
        if not folder or not store:
            self._say("choose an image folder and a tally store first")
            return
        try:
            config = BatchConfig(
                folder=Path(folder),
                store=Path(store),
                model=self.model_edit.text().strip() or "demo",
                samples_csv=Path(s) if (s := self.samples_edit.text().strip()) else None,
                mc_samples=int(self.mc.value()),
                device=self.device.currentText(),
            )
        except ValueError as exc:
            self._say(f"cannot start: {exc}")
            return
        self.report = None
        self._store_path = config.store
        self._forget_other_store(config.store)
        self._tally = {}
        self._in_store = {}
        self._refresh_table()
        self.frames.clear()
        self.runner.stop.clear()
        self._started = time.monotonic()
        self._counting_since = None
        self._done = self._total = 0
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)  # busy until the files to count are known
        self.report_label.setText("")
        self._say("starting")
        self._show_time()
        self._clock.start()
        follow = self.follow.isChecked()
        self.runner.start("batch", lambda: self._work(config, follow))

    def cancel(self) -> None:
        """Stop now: the file being counted is dropped (nothing of it is written); the
        files counted before it stay in the store.
        """
        if self.is_running():
            self.runner.stop.set()
            self.cancel_button.setEnabled(False)
            self._say("cancelling: dropping the file in flight, keeping the files counted")

    def is_running(self) -> bool:
        """Whether a batch run's thread is still going."""
        return self.runner.busy("batch")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background threads end (tests and scripts); True if they did."""
        return self.runner.wait(timeout)

    def closeEvent(self, event: Any) -> None:  # Qt names it
        """Stop the run (the file in flight is dropped) and wait for it: no thread of
        this widget outlives it.
        """
        self._draw_timer.stop()
        self._clock.stop()
        self.runner.close()
        super().closeEvent(event)

    def _forget_other_store(self, store: Path) -> None:
        """Remove the layers of the store shown before when `store` is another one: the
        canvas then shows one store, the one the next file goes to.
        """
        old = self._layers_store
        self._layers_store = store
        if old is None or _same_path(old, store):
            return
        for name in (FRAME_LAYER, SPECIMENS_LAYER, *self._crop_layers):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        self._crop_layers = []
        self._pending_view = None
        self.frames.clear()

    # ------------------------------------------------------------------ batch thread
    def _work(self, config: Any, follow: bool) -> None:
        import dataclasses

        from napari_foram.batch import FrameView, TaskCancelled, resolve_checkpoint, run_batch
        from napari_foram.classify.checkpoint import read_model_info

        emit = self.runner.emit
        stop = self.runner.stop

        def training(done: int, total: int, message: str = "") -> None:
            if stop.is_set():
                raise TaskCancelled("stopped")
            emit("progress", 0, 0, f"training the demo model (first run only): {message}")

        try:
            emit("progress", 0, 0, "reading the model")
            checkpoint = resolve_checkpoint(config.model, progress=training)
            classes = list(read_model_info(checkpoint).class_names)
            # One file per task on a CPU: each file is committed (and shown in the bar
            # and table) as it is done, and a Cancel drops one file's work, not four.
            # A GPU keeps several files per classifier call.
            per_task = config.files_per_task if _uses_cuda(config.device) else 1
            config = dataclasses.replace(config, model=checkpoint, files_per_task=per_task)

            def on_file(line: FileReport, result: FileResult | None) -> None:
                emit("file", line)
                # Read the image here, not on the GUI thread.
                if follow and result is not None and result.error is None:
                    emit("frame", display_view(FrameView.from_result(result, classes)))

            def progress(done: int, total: int, message: str = "") -> None:
                emit("progress", done, total, message)

            self.class_names = classes
            report = run_batch(config, progress=progress, on_file=on_file, stop=stop)
            emit("finished", report)
        except TaskCancelled:
            emit("finished", None)  # stopped while the demo model trained: nothing written
        except Exception as exc:  # shown to the user, not swallowed
            emit("finished", exc)

    # ------------------------------------------------------------------ GUI thread
    def _on_progress(self, done: int, total: int, message: str) -> None:
        if self.runner.stop.is_set():
            return  # cancelling: the status says so until the run has ended
        now = time.monotonic()
        if total <= 0:  # a stage before counting (model, hashing, workers)
            if message:
                self._say(message)
            return
        if self._counting_since is None:
            self._counting_since = self._last_done_at = now
        if done != self._done:
            self._last_done_at = now
        self._done, self._total = done, total
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)
        self._show_time()
        if message:
            self._say(message)

    def _show_time(self) -> None:
        """Elapsed time, files done and, once a file is done, the time left (counting
        down between files).
        """
        if not self.is_running() and self.report is not None:
            self._clock.stop()
            return
        now = time.monotonic()
        elapsed = format_eta(now - self._started)
        done, total = self._done, self._total
        if self._counting_since is None or total <= 0:
            text = f"{elapsed} elapsed, preparing"
        elif done == 0:
            text = f"0/{total} files, {elapsed} elapsed; time left: after the first file"
        else:
            per_file = (self._last_done_at - self._counting_since) / done
            left = self._counting_since + per_file * total - now
            text = f"{done}/{total} files, {elapsed} elapsed, " + (
                f"about {format_eta(left)} left" if left >= 1 else "finishing"
            )
        self.eta_label.setText(text)

    def _on_file(self, line: FileReport) -> None:
        if not line.sample_id:
            return
        row = self._tally.setdefault(line.sample_id, {"files": 0, "specimens": 0, "bad": 0})
        if line.status == "bad":
            row["bad"] += 1
        elif line.status == "processed":
            row["files"] += 1
            row["specimens"] += line.n_specimens
            self.frames.addItem(f"{line.sample_id}: {line.file}", (line.sample_id, line.sha256))
        self._refresh_table()

    def _on_frame(self, view: FrameView) -> None:
        self._pending_view = view
        if not self._draw_timer.isActive():
            self._draw_timer.start()

    def _draw_pending(self) -> None:
        view, self._pending_view = self._pending_view, None
        if view is not None:
            show_frame(self.viewer, view, store=self._store_path, prepared=True)
            self._layers_store = self._store_path
            if self.class_names:
                self.legend.set_classes(self.class_names)

    def _on_finished(self, outcome: object) -> None:
        from napari_foram.batch import BatchReport

        self.runner.wait(10)  # the thread emitted its last signal and is returning
        self._clock.stop()
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if outcome is None:
            self.report = RuntimeError("cancelled before counting began")
            self._say("cancelled before counting began: nothing was written")
            return
        if isinstance(outcome, Exception):
            self.report = outcome
            self._say(f"batch failed: {outcome}")
            return
        assert isinstance(outcome, BatchReport)
        self._draw_pending()  # the last file counted, now
        self.report = report = outcome
        self.progress_bar.setRange(0, max(self._total, 1))
        self._show_time_final(report)
        self._say(run_summary(report))
        if report.report_csv:
            self.report_label.setText(f"report: {Path(report.report_csv).name}")
            self.report_label.setToolTip(f"{report.report_json}\n{report.report_csv}")
        # Every sample of the folder the store holds, this run's files or not.
        for sid, counts in report.samples.items():
            self._tally.setdefault(sid, {"files": 0, "specimens": 0, "bad": 0})
            self._in_store[sid] = int(counts["total"])
        self._refresh_table()
        if self._store_path is not None and self._store_path.exists():
            self.show_crops(visible=False)  # listed in the layer list; the frame stays

    def _show_time_final(self, report: BatchReport) -> None:
        done = report.count("processed")
        self.eta_label.setText(
            f"{self._done}/{self._total} files of this run done in {format_eta(report.seconds)}"
            if self._total
            else f"nothing to count ({done} files counted); {format_eta(report.seconds)}"
        )

    def _refresh_table(self) -> None:
        self.table.setRowCount(len(self._tally))
        for r, (sid, row) in enumerate(self._tally.items()):
            stored = self._in_store.get(sid)
            cells = [
                sid,
                row["files"],
                row["specimens"],
                row["bad"],
                "" if stored is None else stored,
            ]
            for c, value in enumerate(cells):
                self.table.setItem(r, c, QTableWidgetItem(str(value)))

    def _list_frames(self) -> None:
        """Every file the store holds (earlier runs included) in *Show file*."""
        from napari_foram.batch import processed_frames

        if self._store_path is None:
            return
        try:
            frames = processed_frames(self._store_path)
        except ValueError as exc:
            self._say(f"cannot read the store: {exc}")
            return
        self.frames.clear()
        for sid, name, key in frames:
            self.frames.addItem(f"{sid}: {name}", (sid, key))

    def _show_selected(self, index: int) -> None:
        """Show the file picked in *Show file* (read on a background thread)."""
        from napari_foram.batch import frame_view

        data = self.frames.itemData(index)
        if data is None or self._store_path is None:
            return
        sid, key = data
        store = self._store_path

        def load() -> None:
            try:
                self.runner.emit("frame", display_view(frame_view(store, sid, key)))
            except (ValueError, OSError) as exc:
                self.runner.emit("progress", 0, 0, f"cannot show that file: {exc}")

        self.runner.start("frame", load)

    def show_crops(self, visible: bool = True) -> list[str]:
        """Show each sample's stored crops as an image stack; the layer names.

        Works on a store counted earlier too (the one in *tally store*), and lists its
        files in *show file*. Another store's layers shown before are removed.
        """
        if not self.is_running():
            text = self.store_edit.text().strip()
            self._store_path = Path(text) if text else self._store_path
        if self._store_path is None or not self._store_path.exists():
            self._say("no store yet: count a folder first")
            return []
        if not self.is_running():
            self._forget_other_store(self._store_path)
            self._list_frames()
        try:
            names = show_crop_grids(self.viewer, self._store_path, visible=visible)
        except (ValueError, OSError) as exc:
            self._say(f"cannot read the store: {exc}")
            return []
        self._crop_layers = list(dict.fromkeys([*self._crop_layers, *names]))
        return names


def _same_path(a: Path, b: Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def run_summary(report: BatchReport) -> str:
    """What a run did, each number one thing: this run's files and specimens, the files
    already in the store, the bad ones; for a cancelled run, what was kept, what was
    dropped in flight and what is left for the next run.
    """
    processed = report.count("processed")
    specimens = sum(f.n_specimens for f in report.files if f.status == "processed")
    kept = f"{processed} file(s) counted in this run ({specimens} specimens)"
    parts = []
    if report.interrupted:
        parts.append(f"cancelled: kept in the store: {kept}")
        parts.append(
            "dropped in flight, nothing of it written: " + ", ".join(report.abandoned)
            if report.abandoned
            else "no file was in flight"
        )
        parts.append(
            f"{len(report.not_counted)} file(s) left: Count folder again to resume "
            "(files in the store are skipped)"
        )
    else:
        parts.append(f"done: {kept}")
    skipped = report.count("skipped")
    if skipped:
        parts.append(f"{skipped} skipped (already in the store or duplicates)")
    if report.count("bad"):
        parts.append(f"{report.count('bad')} bad (see the report)")
    if report.damaged_samples:
        parts.append(f"damaged samples left as they are: {', '.join(report.damaged_samples)}")
    return "; ".join(parts)
