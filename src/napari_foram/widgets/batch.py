"""Batch folders: count a folder of images into a tally store, and browse the results.

A thin Qt widget over `napari_foram.batch` (the same code as ``napari-foram batch``). The
run happens on a background thread; progress, each finished file and the final report
come back to the GUI thread through Qt signals (queued connections). The layers:

- ``"batch frame"``: the file just counted (or the one picked in *Show file*), with
- ``"batch specimens"``: its counted specimens, circled in their class colours;
- ``"<sample> crops"``: every stored crop of each sample, a browsable stack (the same
  layers as opening the store with the napari-foram reader).

A run resumes by itself: files the store already holds are skipped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
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
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from napari_foram.defaults import MC_SAMPLES
from napari_foram.widgets import labelling
from napari_foram.widgets._active import ModelLabel, bind_model_field, hub
from napari_foram.widgets._qt import (
    ActivityProgress,
    ClassLegend,
    Runner,
    scroll_layout,
    with_browse,
)
from napari_foram.widgets.layers import (
    class_colour,
    contrast_limits,
    display_uint8,
    show_specimen_circles,
)

if TYPE_CHECKING:
    import napari
    import napari.viewer

    from napari_foram.batch import BatchReport, FileReport, FileResult, FrameView

FRAME_LAYER = "batch frame"
SPECIMENS_LAYER = "batch specimens"
#: Columns of the per-sample table.
TABLE_COLUMNS = ("sample", "files", "specimens", "bad")
#: Longest wait (ms) before a counted file is drawn; files finishing faster are skipped.
FRAME_DRAW_MS = 100


def show_frame(viewer: napari.Viewer, view: FrameView) -> None:
    """Show a processed file and its counted specimens (circles in class colours).

    Both layers are made once and then updated in place: removing a Points layer with
    text and adding an image, once per file, crashed napari/vispy (issue 15). Every file
    is shown as RGB uint8, so grey, colour and 16-bit files fit the same layer.
    """
    if view.image is not None:
        image = display_uint8(view.image, limits=contrast_limits(view.image), rgb=True)
        if FRAME_LAYER in viewer.layers:
            layer = viewer.layers[FRAME_LAYER]
            layer.data = image
            layer.metadata = {**layer.metadata, "file": view.file}
        else:
            viewer.add_image(image, name=FRAME_LAYER, rgb=True, metadata={"file": view.file})
    names = [view.class_names[c] for c in view.class_index]
    colours = np.array(
        [class_colour(n, int(c)) for n, c in zip(names, view.class_index, strict=True)]
    ).reshape(-1, 4)
    yx = np.asarray(view.centroids, dtype=float).reshape(-1, 2)
    features = {"class": names, "probability": np.round(view.probability, 2)}
    # Circles a little larger than each specimen, as in the scan view.
    sizes = np.maximum(1.3 * np.asarray(view.diameter_px, dtype=float), 10.0)
    metadata = {"file": view.file, "sample_id": view.sample_id}
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
        path = owner._store_path if owner is not None else None
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
        self._store_path: Path | None = None
        self._tally: dict[str, dict[str, int]] = {}
        self.runner = Runner(self)
        self.runner.on("progress", self._on_progress)
        self.runner.on("file", self._on_file)
        self.runner.on("frame", self._on_frame)
        self.runner.on("finished", self._on_finished)
        self._activity = ActivityProgress()
        # Files can finish faster than a redraw: only the newest waiting one is drawn,
        # by this timer (each draw costs tens of ms with software OpenGL).
        self._pending_view: FrameView | None = None
        self._draw_timer = QTimer(self)
        self._draw_timer.setSingleShot(True)
        self._draw_timer.setInterval(FRAME_DRAW_MS)
        self._draw_timer.timeout.connect(self._draw_pending)

        self.folder_edit = QLineEdit()
        self.store_edit = QLineEdit()
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

        self.progress_bar = QProgressBar()
        self.eta_label = QLabel("")
        self.status_label = QLabel("choose an image folder and a tally store")
        self.status_label.setWordWrap(True)
        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(TABLE_COLUMNS))
        header = self.table.verticalHeader()
        if header is not None:
            header.setVisible(False)
        columns = self.table.horizontalHeader()
        if columns is not None:  # the sample id takes what the three numbers leave
            columns.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
            columns.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(120)

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
        layout.addWidget(self.table)
        layout.addWidget(self.legend)
        layout.addLayout(browse)
        layout.addWidget(self.crops_button)
        layout.addStretch(1)
        # The model field is the viewer's active model; the counted file's specimens
        # can be labelled on the canvas (`labelling`: select, then 1..9 or X).
        bind_model_field(napari_viewer, self.model_edit, self.status_label.setText)
        hub(napari_viewer).layer_context[SPECIMENS_LAYER] = _frame_context(self)
        labelling.enable_canvas_keys(self, napari_viewer)

    # ------------------------------------------------------------------ pickers
    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder of images")
        if path:
            self.folder_edit.setText(path)
            if not self.store_edit.text():
                self.store_edit.setText(str(Path(path).with_name(Path(path).name + "_tally.zarr")))

    def _browse_store(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Tally store (.zarr)", "", "*.zarr")
        if path:
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
            self.status_label.setText("choose an image folder and a tally store first")
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
            self.status_label.setText(f"cannot start: {exc}")
            return
        self.report = None
        self._store_path = config.store
        self._tally = {}
        self._refresh_table()
        self.frames.clear()
        self.runner.stop.clear()
        self._started = time.monotonic()
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)  # busy until the first file is done
        self.status_label.setText("preparing...")
        follow = self.follow.isChecked()
        self.runner.start("batch", lambda: self._work(config, follow))

    def cancel(self) -> None:
        """Stop after the files being committed; what is committed is kept."""
        if self.is_running():
            self.runner.stop.set()
            self.status_label.setText("stopping after the current files...")

    def is_running(self) -> bool:
        return self.runner.busy("batch")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background threads end (tests and scripts); True if they did."""
        return self.runner.wait(timeout)

    def closeEvent(self, event: Any) -> None:  # Qt names it
        """Stop the run after the files being committed, and wait for it: no thread of
        this widget outlives it."""
        self._draw_timer.stop()
        self.runner.close()
        self._activity.close()
        super().closeEvent(event)

    # ------------------------------------------------------------------ batch thread
    def _work(self, config: Any, follow: bool) -> None:
        import dataclasses

        from napari_foram.batch import FrameView, resolve_checkpoint, run_batch
        from napari_foram.classify.checkpoint import read_model_info

        emit = self.runner.emit

        def training(done: int, total: int, message: str = "") -> None:
            emit("progress", -1, total, f"training the demo model (first run only): {message}")

        try:
            checkpoint = resolve_checkpoint(config.model, progress=training)
            classes = list(read_model_info(checkpoint).class_names)
            config = dataclasses.replace(config, model=checkpoint)

            def on_file(line: FileReport, result: FileResult | None) -> None:
                emit("file", line)
                # Read the image here, not on the GUI thread.
                if follow and result is not None and result.error is None:
                    emit("frame", FrameView.from_result(result, classes))

            def progress(done: int, total: int, message: str = "") -> None:
                emit("progress", done, total, message)

            self.class_names = classes
            report = run_batch(config, progress=progress, on_file=on_file, stop=self.runner.stop)
            emit("finished", report)
        except Exception as exc:  # shown to the user, not swallowed
            emit("finished", exc)

    # ------------------------------------------------------------------ GUI thread
    def _on_progress(self, done: int, total: int, message: str) -> None:
        if done < 0:  # the demo model is training: no file count yet
            self.status_label.setText(message)
            return
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)
        elapsed = time.monotonic() - self._started
        if 0 < done < total:
            # Time per file so far (the first includes loading the model: a pessimistic start).
            eta = f"{done}/{total} files, ETA {format_eta(elapsed / done * (total - done))}"
        else:
            eta = f"{done}/{total} files, {format_eta(elapsed)} elapsed"
        self.eta_label.setText(eta)
        self._activity.update(done, total, f"Batch folders: {eta}")
        if message:
            self.status_label.setText(message)

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
            show_frame(self.viewer, view)
            if self.class_names:
                self.legend.set_classes(self.class_names)

    def _on_finished(self, outcome: object) -> None:
        from napari_foram.batch import BatchReport

        self.runner.wait(10)  # the thread emitted its last signal and is returning
        self._draw_pending()  # the last file, now
        self._activity.close()
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if isinstance(outcome, Exception):
            self.report = outcome
            self.status_label.setText(f"batch failed: {outcome}")
            return
        assert isinstance(outcome, BatchReport)
        self.report = report = outcome
        self.status_label.setText(
            report.summary_line() + (f"; report: {report.report_csv}" if report.report_csv else "")
        )
        # Totals from the store: resumed runs hold files counted before this run too.
        for sid, counts in report.samples.items():
            self._tally.setdefault(sid, {"files": 0, "specimens": 0, "bad": 0})
            self._tally[sid]["specimens"] = counts["total"]
        self._refresh_table()
        self.show_crops(visible=False)  # listed in the layer list; the frame stays in view

    def _refresh_table(self) -> None:
        self.table.setRowCount(len(self._tally))
        for r, (sid, row) in enumerate(self._tally.items()):
            cells = [sid, row["files"], row["specimens"], row["bad"]]
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
            self.status_label.setText(f"cannot read the store: {exc}")
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
                self.runner.emit("frame", frame_view(store, sid, key))
            except (ValueError, OSError) as exc:
                self.runner.emit("progress", -1, 0, f"cannot show that file: {exc}")

        self.runner.start("frame", load)

    def show_crops(self, visible: bool = True) -> list[str]:
        """Show each sample's stored crops as an image stack; the layer names.

        Works on a store counted earlier too (the one in *tally store*), and lists its
        files in *show file*.
        """
        if not self.is_running():
            text = self.store_edit.text().strip()
            self._store_path = Path(text) if text else self._store_path
        if self._store_path is None or not self._store_path.exists():
            self.status_label.setText("no store yet: count a folder first")
            return []
        if not self.is_running():
            self._list_frames()
        try:
            return show_crops(self.viewer, self._store_path, visible=visible)
        except (ValueError, OSError) as exc:
            self.status_label.setText(f"cannot read the store: {exc}")
            return []
