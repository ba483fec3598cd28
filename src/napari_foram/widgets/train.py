"""Train classifier: a new model from a labelled folder or from the store's labels, its
evaluation report in napari, and the model made the active one.

A thin widget over the training code (the same calls as the command line):

- **a labelled folder** (one subfolder per class): `training.train.train_from_folder`
  with the ``napari-foram train`` defaults (recipe pooled-linear, crop policy "fit",
  learning curve), then `training.evaluate.evaluate` on the split's held-out test crops
  into ``<checkpoint stem>_report/`` (as ``napari-foram evaluate --split``); its
  confusion matrix, learning curve and reliability diagram are shown as image layers,
  side by side, and the view moved onto them;
- **the store's labelled specimens** (confirmed or relabelled in Foram review or on the
  canvas): `teaching.retrain`'s steps -- a head taught on their kept features from the
  active model's backbone, saved at the checkpoint path, every sample classified again.
  Its held-out figures are out-of-fold (cross-validation on the labels), in the card.

Training runs on a background thread (the widget's `Runner`) with a progress bar and
Cancel; then the model card is shown and, unless unticked, the new model becomes the
active one of every widget of the viewer ("Make active" does it later).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QSize
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QWidget,
)

from napari_foram.reasons import one_line
from napari_foram.widgets._active import ModelLabel, active_model, hub, writer_stores
from napari_foram.widgets._qt import Runner, scroll_layout, with_browse

if TYPE_CHECKING:
    import napari.viewer

SOURCES = {
    "folder": "a labelled folder (one subfolder per class)",
    "store": "the store's labelled specimens",
}
BACKBONES = {
    "imagenet": "ImageNet VGG16 (downloaded once if missing)",
    "none": "random VGG16 (no download; tests, offline trials)",
}
#: The report images shown, in this order: file name -> layer name suffix.
REPORT_IMAGES = {
    "confusion_matrix.png": "confusion matrix",
    "learning_curve.png": "learning curve",
    "reliability.png": "reliability diagram",
}
#: MC dropout passes of the evaluation (the command line's default is 100: the widget
#: wants the report in seconds).
EVALUATE_MC = 30
#: Gap between the report images (px).
REPORT_GAP = 20
#: Shortest time between two progress lines (s).
PROGRESS_TEXT_S = 0.25
#: Width (px) the dock asks for.
TRAIN_DOCK_WIDTH = 330


class _Stopped(Exception):
    """Cancel was pressed: raised from the progress callback to end the training."""


def report_dir_for(checkpoint: str | Path) -> Path:
    """Where the evaluation report of a checkpoint goes: ``<stem>_report/`` beside it."""
    p = Path(checkpoint)
    return p.with_name(f"{p.stem}_report")


class TrainWidget(QWidget):
    """Train a classifier and make it the active model (see the module docstring).

    Parameters
    ----------
    napari_viewer
        The viewer (report images go to it; its widgets share the active model).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        #: The last result: a dict (checkpoint, info, report, reports, seconds) or the
        #: exception that ended the training; None while it runs.
        self.last_result: Any = None
        self.report_layers: list[str] = []
        self.runner = Runner(self)
        self.runner.on("progress", self._on_progress)
        self.runner.on("finished", self._on_finished)
        self._started = 0.0
        self._text_at = 0.0

        self.source_box = QComboBox()
        for key, text in SOURCES.items():
            self.source_box.addItem(text, key)
        self.source_box.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.source_box.setMinimumContentsLength(14)
        self.source_box.currentIndexChanged.connect(self._on_source)
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("DATA/<class>/<images>")
        self.store_edit = QLineEdit()
        self.store_edit.setPlaceholderText("a tally store (.zarr folder)")
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText("default: beside the folder / the store")
        self.recipe_box = QComboBox()
        from napari_foram.training.train._config import RECIPES

        for name, what in RECIPES.items():
            self.recipe_box.addItem(name, name)
            self.recipe_box.setItemData(self.recipe_box.count() - 1, what, 3)  # tooltip role
        self.backbone_box = QComboBox()
        for key, text in BACKBONES.items():
            self.backbone_box.addItem(text, key)
        self.backbone_box.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.backbone_box.setMinimumContentsLength(14)
        self.make_active_check = QCheckBox("make it the active model when done")
        self.make_active_check.setChecked(True)
        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        form.addRow("train from", self.source_box)
        form.addRow("folder", with_browse(self.folder_edit, self._browse_folder))
        form.addRow("tally store", with_browse(self.store_edit, self._browse_store))
        form.addRow("checkpoint", with_browse(self.output_edit, self._browse_output))
        form.addRow("recipe", self.recipe_box)
        form.addRow("backbone", self.backbone_box)
        self._rows = {
            "folder": [self.folder_edit.parentWidget(), self.recipe_box, self.backbone_box],
            "store": [self.store_edit.parentWidget()],
        }

        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.train)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.active_button = QPushButton("Make active")
        self.active_button.setEnabled(False)
        self.active_button.clicked.connect(self.make_active)
        self.report_button = QPushButton("Show report")
        self.report_button.setEnabled(False)
        self.report_button.clicked.connect(self.show_report)
        buttons = QHBoxLayout()
        for b in (self.train_button, self.cancel_button):
            buttons.addWidget(b)
        after = QHBoxLayout()
        for b in (self.active_button, self.report_button):
            after.addWidget(b)
        self.bar = QProgressBar()
        self.bar.setVisible(False)
        self.status_label = QLabel("choose what to train from")
        self.status_label.setWordWrap(True)
        self.card = QPlainTextEdit()
        self.card.setReadOnly(True)
        self.card.setPlaceholderText("the new model's card shows here")
        self.card.setMaximumHeight(150)
        self.card.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)

        layout = scroll_layout(self, height_hint=420)
        layout.addWidget(ModelLabel(napari_viewer))
        layout.addLayout(form)
        layout.addWidget(self.make_active_check)
        layout.addLayout(buttons)
        layout.addWidget(self.bar)
        layout.addWidget(self.status_label)
        layout.addWidget(self.card)
        layout.addLayout(after)
        layout.addStretch(1)
        held = writer_stores()  # the store Foram review holds open: the likely one
        if held:
            self.store_edit.setText(str(held[0].path))
        self._on_source()

    def sizeHint(self) -> QSize:  # Qt names it
        """A dock column as wide as Foram review needs beside it (it was squeezed below
        its own width), and no wider: the canvas keeps half a 1366 px window.
        """
        return QSize(TRAIN_DOCK_WIDTH, 420)

    # ------------------------------------------------------------------ fields
    @property
    def source(self) -> str:
        """What to train from, the `SOURCES` key chosen: "folder" or "store"."""
        return str(self.source_box.currentData())

    def set_source(self, key: str) -> None:
        """Choose what to train from by its `SOURCES` key ("folder" or "store")."""
        self.source_box.setCurrentIndex(self.source_box.findData(key))

    def _on_source(self, *_: object) -> None:
        for key, widgets in self._rows.items():
            for w in widgets:
                if w is not None:
                    w.setEnabled(key == self.source)

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Labelled folder (one subfolder per class)")
        if path:
            self.folder_edit.setText(path)

    def _browse_store(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Tally store (.zarr folder)")
        if path:
            self.store_edit.setText(path)

    def _browse_output(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Checkpoint", "", "*.safetensors")
        if path:
            self.output_edit.setText(
                path if path.endswith(".safetensors") else path + ".safetensors"
            )

    def output_path(self) -> Path | None:
        """The checkpoint to write: the field, or a default beside the data."""
        text = self.output_edit.text().strip()
        if text:
            return Path(text).expanduser()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if self.source == "folder":
            folder = self.folder_edit.text().strip()
            return (
                Path(folder).with_name(f"{Path(folder).name}-model.safetensors")
                if folder
                else None
            )
        store = self.store_edit.text().strip()
        if not store:
            return None
        from napari_foram.teaching import models_folder

        return models_folder(store) / f"taught-{stamp}.safetensors"

    # ------------------------------------------------------------------ control
    def is_running(self) -> bool:
        """Whether the training thread is still going."""
        return self.runner.busy()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the training thread ends (tests, scripts); True if it did."""
        return self.runner.wait(timeout)

    def train(self) -> bool:
        """Start training on a background thread; False (and why) if it cannot start."""
        if self.is_running():
            return False
        out = self.output_path()
        source = self.source
        data = (self.folder_edit if source == "folder" else self.store_edit).text().strip()
        if not data or out is None:
            what = "a labelled folder" if source == "folder" else "a tally store"
            self.status_label.setText(f"choose {what} first")
            return False
        if out.suffix != ".safetensors":
            out = out.with_suffix(".safetensors")
        try:
            from napari_foram._outputs import check_output_file

            check_output_file(out, "checkpoint", inputs=[data])
        except ValueError as exc:
            self.status_label.setText(f"cannot train: {one_line(exc)}")
            return False
        self.last_result = None
        self.runner.stop.clear()
        self.bar.setVisible(True)
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self._started = time.perf_counter()
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.active_button.setEnabled(False)
        self.status_label.setText(f"training {out.name}...")
        model = active_model(self.viewer)
        recipe = str(self.recipe_box.currentData())
        backbone = str(self.backbone_box.currentData())
        self.runner.start(
            "train", lambda: self._work(source, Path(data), out, recipe, backbone, model)
        )
        return True

    def cancel(self) -> None:
        """Stop the training at its next progress step (nothing is made active)."""
        if self.is_running():
            self.runner.stop.set()
            self.status_label.setText("stopping...")

    # ------------------------------------------------------------------ worker thread
    def _progress(self, done: int, total: int, message: str = "") -> None:
        if self.runner.stop.is_set():
            raise _Stopped("training stopped by the user")
        self.runner.emit("progress", done, total, message)

    def _work(
        self, source: str, data: Path, out: Path, recipe: str, backbone: str, model: Any
    ) -> None:
        try:
            if source == "folder":
                result = self._train_folder(data, out, recipe, backbone)
            else:
                result = self._train_store(data, out, model)
            result["seconds"] = time.perf_counter() - self._started
            self.runner.emit("finished", result)
        except Exception as exc:  # shown to the user, not swallowed
            self.runner.emit("finished", exc)

    def _train_folder(self, data: Path, out: Path, recipe: str, backbone: str) -> dict[str, Any]:
        from napari_foram.classify.backbone import download_allowed
        from napari_foram.classify.checkpoint import read_model_info
        from napari_foram.training.evaluate import evaluate
        from napari_foram.training.train import TrainConfig, train_from_folder

        # The command line's defaults (`napari-foram train`).
        config = TrainConfig(
            recipe=recipe,
            backbone_weights=backbone,
            standardize_features=backbone == "none",
            pooled_features=True,
            device="auto",
            download_weights=download_allowed(None),
        )
        outcome = train_from_folder(data, out, config, progress=self._progress)
        report_dir = report_dir_for(out)
        subset = "test"
        try:
            report = evaluate(
                data, out, mc=EVALUATE_MC, report_dir=report_dir,
                split_file=outcome.files.get("split"), subset=subset, device="auto",
                progress=self._progress,
            )  # fmt: skip
        except ValueError as exc:
            if "is empty" not in str(exc):
                raise
            subset = "all"  # too few crops to hold any out: scored on all (said so)
            report = evaluate(
                data, out, mc=EVALUATE_MC, report_dir=report_dir, device="auto",
                progress=self._progress,
            )  # fmt: skip
        from napari_foram.classify.backbone import file_sha256

        info = read_model_info(out)
        info.path, info.sha256 = str(out), file_sha256(out)
        return {
            "source": "folder",
            "checkpoint": out,
            "info": info,
            "report": report,
            "report_dir": report_dir,
            "subset": subset,
            "interrupted": outcome.interrupted,
        }

    def _train_store(self, store_path: Path, out: Path, model: Any) -> dict[str, Any]:
        from napari_foram import teaching
        from napari_foram.reclassify import reclassify_store
        from napari_foram.widgets._active import open_writer

        base = model.predictor(progress=self._progress)
        with open_writer(store_path) as store:
            self.runner.emit("progress", 0, 0, "teaching on the store's labels")
            labels = teaching.gather_labels(store, base)
            taught = teaching.teach(labels, base, progress=self._progress)
            path = teaching.save_taught(taught, out.parent, name=out.name)
            predictor = teaching.predictor_for(taught, base)
            self.runner.emit("progress", 0, 0, "classifying the samples again")
            reports = reclassify_store(
                store, predictor, progress=self._progress, cancel=self.runner.stop.is_set
            )
        return {
            "source": "store",
            "checkpoint": path,
            "info": taught.info,
            "predictor": predictor,
            "base": base,
            "store": Path(store_path),
            "reports": reports,
        }

    # ------------------------------------------------------------------ GUI thread
    def _on_progress(self, done: int, total: int, message: str) -> None:
        # At most every PROGRESS_TEXT_S (a message per file while images load): with
        # napari's OpenGL canvas in the window, every repaint of any widget composes
        # the whole window again, which takes CPU from the training (tens of ms each
        # with software OpenGL). No busy animation, and no napari activity progress
        # (its status-bar spinner repaints the window ~17 times a second: it made a
        # 40 s training take 3 minutes on two cores).
        now = time.perf_counter()
        if now - self._text_at < PROGRESS_TEXT_S and 0 <= done < total:
            return
        self._text_at = now
        if total > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(min(max(done, 0), total))
        if message:
            self.status_label.setText(" ".join(message.split()))

    def _on_finished(self, outcome: object) -> None:
        from napari_foram.teaching import model_card_text

        self.runner.wait(10)
        self.bar.setVisible(False)
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.last_result = outcome
        if isinstance(outcome, Exception):
            from napari_foram.reclassify import Cancelled

            stopped = isinstance(outcome, (_Stopped, Cancelled))
            self.status_label.setText(
                f"training {'stopped' if stopped else 'failed'}: {one_line(outcome)}"
            )
            return
        assert isinstance(outcome, dict)
        info = outcome["info"]
        self.card.setPlainText(model_card_text(info))
        self.active_button.setEnabled(True)
        line = f"wrote {outcome['checkpoint']} in {outcome['seconds']:.1f} s"
        if outcome["source"] == "folder":
            report = outcome["report"]
            line += (
                f"; {report['n']} held-out crops ({outcome['subset']}): accuracy "
                f"{report['accuracy']:.3f}"
                + (f", ECE {report['ece']:.3f}" if report.get("ece") is not None else "")
                + f"; report in {outcome['report_dir']}"
            )
            self.show_report()
        else:
            from napari_foram.widgets._teach import counts_line

            line += "; " + "; ".join(counts_line(r) for r in outcome["reports"])
        if self.make_active_check.isChecked():
            self.make_active()
        if outcome["source"] == "store":
            self._after_recount(outcome)
        self.status_label.setText(line)

    def _after_recount(self, outcome: dict[str, Any]) -> None:
        from napari_foram.widgets import labelling

        store = outcome["store"]
        ids = [r.sample_id for r in outcome["reports"]]
        try:
            labelling.refresh_layers(self.viewer, store, ids)
        except (ValueError, OSError) as exc:
            self.status_label.setText(f"cannot redraw the specimens: {one_line(exc)}")
        hub(self.viewer).recounted.emit(store, ids)

    def make_active(self) -> bool:
        """Make the last trained model the active one of the viewer's widgets."""
        result = self.last_result
        if not isinstance(result, dict):
            return False
        active_model(self.viewer).set(
            result["checkpoint"], info=result["info"], predictor=result.get("predictor")
        )
        return True

    def show_report(self) -> list[str]:
        """The report's confusion matrix, learning curve and reliability diagram as image
        layers side by side, the view on them; the layer names.
        """
        import imageio.v3 as iio

        result = self.last_result
        if not isinstance(result, dict) or result.get("source") != "folder":
            return []
        folder = Path(result["report_dir"])
        stem = Path(result["checkpoint"]).stem
        x, height, names = 0.0, 0.0, []
        for file, what in REPORT_IMAGES.items():
            path = folder / file
            if not path.is_file():
                continue
            image = iio.imread(path)
            name = f"{stem}: {what}"
            if name in self.viewer.layers:
                layer = self.viewer.layers[name]
                layer.data = image
                layer.translate = (0.0, x)
                layer.visible = True
            else:
                self.viewer.add_image(image, name=name, rgb=True, translate=(0.0, x))
            names.append(name)
            x += image.shape[1] + REPORT_GAP
            height = max(height, float(image.shape[0]))
        self.report_layers = names
        self.report_button.setEnabled(bool(names))
        if names:
            self._look_at(x - REPORT_GAP, height)
        return names

    def _look_at(self, width: float, height: float) -> None:
        """Centre the view on the report (0..width, 0..height) and fit it in the canvas
        (its size from Qt: the largest OpenGL widget of the window).
        """
        from qtpy.QtOpenGLWidgets import QOpenGLWidget

        from napari_foram.widgets._review_parts import camera_and_canvas

        camera, _ = camera_and_canvas(self.viewer)
        window = self.window()
        found = window.findChildren(QOpenGLWidget) if window is not None else []
        canvases = [c for c in found if c.isVisible()]
        canvas = max(canvases, key=lambda c: c.width(), default=None)
        w, h = (canvas.width(), canvas.height()) if canvas is not None else (800, 600)
        camera.center = (height / 2, width / 2)
        camera.zoom = 0.95 * min(w / max(width, 1.0), h / max(height, 1.0))

    def closeEvent(self, event: Any) -> None:  # Qt names it
        """Stop the training at its next step and wait: no thread outlives the widget."""
        self.runner.stop.set()
        self.runner.close(None)
        super().closeEvent(event)
