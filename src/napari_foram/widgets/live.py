"""Foram live: count at the microscope -- connect, describe the sample, snap, live, scan.

A thin Qt widget over `napari_foram.live.LiveCounter`. Every slow call (building the
classifier, connecting, acquiring, classifying) runs on one background thread; results
reach the GUI thread through a Qt signal and are drawn by a timer at most four times a
second, so neither a fast camera nor a slow classifier can stall the interface.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_foram.defaults import CAMERA_SHAPE, MC_SAMPLES
from napari_foram.frames import Frame, to_uint8
from napari_foram.mosaic import Mosaic
from napari_foram.pipeline import prediction_columns
from napari_foram.widgets._qt import join_thread, spin, thread_running, with_browse

if TYPE_CHECKING:
    import napari.viewer

    from napari_foram.live import LiveCounter
    from napari_foram.pipeline import FrameResult

FRAME_LAYER = "live frame"
OVERVIEW_LAYER = "tray overview"
#: Longer side of the tray overview in screen pixels (the fields are binned to fit).
OVERVIEW_MAX_SIDE = 800
SPECIMENS_LAYER = "counted specimens"
UNCERTAIN_LAYER = "uncertain specimens"
#: A specimen is flagged uncertain when fewer than this share of its MC passes agree.
UNCERTAIN_VOTE_FRACTION = 0.8
#: Redraw period (ms): results arriving faster are drawn together.
REDRAW_MS = 250


def _freeze_heap() -> None:
    """Move every object alive now out of the garbage collector's sight (`gc.freeze`).

    napari, Qt, torch and the model leave many long-lived objects, and a full collection
    walks them all while holding the GIL: without this, tests/test_live_gui.py saw one
    ~300 ms GUI stall per scan (no thread in our code at the time); with it, none.
    Objects made later are still collected as usual.
    """
    import gc

    gc.collect()
    gc.freeze()


def display_step(shape: tuple[int, ...], max_side: int = 660) -> int:
    """Pixel step that brings a frame's longer side to at most `max_side` for display."""
    return max(1, -(-max(shape[:2]) // max_side))


@contextmanager
def _one_refresh(layer: Any) -> Iterator[None]:
    """Hold back a napari layer's redraws while several properties change, then redraw
    once. napari has no public batch-update API; `_block_refresh` is what its own
    setters use, so fall back to plain (slower) updates if it ever goes away."""
    block = getattr(layer, "_block_refresh", None)
    if block is None:
        yield
        return
    with block():
        yield
    layer.refresh()


class _Bridge(QObject):
    """Carries events from the worker thread to the GUI thread (queued connections)."""

    result = Signal(object)
    status = Signal(str)
    finished = Signal(str, object)  # what ended ("connect", "scan", ...), its outcome


class LiveWidget(QWidget):
    """Count specimens at the microscope, live, into a tally store."""

    def __init__(
        self,
        napari_viewer: napari.viewer.Viewer,
        *,
        model: str | Path = "demo",
        mc_samples: int = MC_SAMPLES,
        store_path: str | Path | None = None,
        camera_shape: tuple[int, int] = CAMERA_SHAPE,
        specimens: int = 45,
        device: str = "auto",
        seed: int = 7,
        bit_depth: int = 8,
        mono: bool = False,
    ) -> None:
        from napari_foram.live import DEFAULT_TARGET_COUNT, default_store_path

        super().__init__()
        self.viewer = napari_viewer
        self.model = model
        self.device = device
        self.camera_shape = camera_shape
        self.specimens = specimens
        self.bit_depth = bit_depth  # of the simulated camera
        self.mono = mono
        self.counter: LiveCounter | None = None
        self.last_outcome: dict[str, object] = {}
        self._pending: list[FrameResult] = []
        # (y, x, class, probability, uncertain, diameter um, unsure) per counted specimen.
        self._shown: list[tuple[float, float, str, float, bool, float, bool]] = []
        # Counts drawn in the table: read from the store when a sample starts or an
        # acquisition ends, advanced from the results in between (reading the store on
        # every redraw would wait for the worker's appends on the GUI thread). Specimens
        # the model's unsure rule puts in no class are counted apart, as the tally does.
        self._tally: dict[str, int] = {}
        self._n_unsure = 0
        self._specimens_stale = False
        self._mosaic: Mosaic | None = None  # the scan's overview, at display resolution
        self._overview_step = 1
        self._overview_key: tuple[Any, ...] | None = None
        self._torch_threads: int | None = None
        self._after_connect: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None
        self._bridge = _Bridge()
        self._bridge.result.connect(self._pending.append)
        self._bridge.status.connect(self._set_status)
        self._bridge.finished.connect(self._on_finished)

        # Microscope
        self.source = QComboBox()
        self.source.addItems(["Simulated tray", "Micro-Manager configuration"])
        self.config_path = QLineEdit()
        self.config_path.setPlaceholderText("MMConfig.cfg")
        self.seed = spin(QSpinBox(), 0, 1_000_000, seed)
        self.store_path = QLineEdit(str(store_path or default_store_path()))
        self.mc = spin(QSpinBox(), 1, 1000, mc_samples)
        self.target = spin(QSpinBox(), 1, 100_000, DEFAULT_TARGET_COUNT)
        self.connect_button = QPushButton("Connect")
        self.connect_button.clicked.connect(self.connect_microscope)
        scope_form = QFormLayout()
        scope_form.addRow("microscope", self.source)
        scope_form.addRow("configuration", with_browse(self.config_path, self._browse_config))
        scope_form.addRow("simulated tray seed", self.seed)
        scope_form.addRow("tally store", self.store_path)
        scope_form.addRow("MC dropout passes", self.mc)
        scope_form.addRow("target count", self.target)
        # Online machines may fetch torchvision's ImageNet VGG16 for the demo model; never
        # without the user's say (528 MB).
        self.download_weights = QCheckBox("download ImageNet weights if missing")
        self.download_weights.setToolTip(
            "The demo model stands on ImageNet VGG16 features. Without weights on this "
            "machine ($NAPARI_FORAM_VGG16_WEIGHTS or torch hub's cache) it falls back to a "
            "random backbone; tick to let torchvision download them (528 MB) first."
        )
        connect_row = QHBoxLayout()
        connect_row.addWidget(self.connect_button)
        connect_row.addWidget(self.download_weights)
        scope_form.addRow(connect_row)
        scope_box = QGroupBox("Microscope")
        scope_box.setLayout(scope_form)

        # Sample record: what a count sheet asks for, before counting starts. Two fields
        # per row keep the widget short enough for a laptop screen.
        self.sample_fields: dict[str, QLineEdit] = {}
        sample_grid = QGridLayout()
        for i, (name, label) in enumerate(
            [
                ("sample_id", "sample id *"),
                ("site_hole", "site / hole"),
                ("core", "core"),
                ("section", "section"),
                ("interval_top_cm", "top (cm)"),
                ("interval_bottom_cm", "bottom (cm)"),
                ("depth", "depth"),
                ("depth_unit", "depth unit"),
                ("size_fraction_um", "fraction (um)"),
                ("split_factor", "split factor"),
                ("dry_weight_g", "dry weight (g)"),
                ("operator", "operator"),
                ("notes", "notes"),
            ]
        ):
            edit = QLineEdit()
            self.sample_fields[name] = edit
            row, col = divmod(i, 2)
            sample_grid.addWidget(QLabel(label), row, 2 * col)
            sample_grid.addWidget(edit, row, 2 * col + 1)
        self.sample_fields["depth_unit"].setText("mbsf")
        self.sample_fields["split_factor"].setText("1")
        self.sample_button = QPushButton("Start counting this sample")
        self.sample_button.clicked.connect(self.start_sample)
        sample_layout = QVBoxLayout()
        sample_layout.addLayout(sample_grid)
        sample_layout.addWidget(self.sample_button)
        sample_box = QGroupBox("Sample")
        sample_box.setLayout(sample_layout)

        # Acquisition
        self.rows = spin(QSpinBox(), 1, 50, 3)
        self.cols = spin(QSpinBox(), 1, 50, 3)
        self.overlap = spin(QDoubleSpinBox(), 0.0, 0.6, 0.25, step=0.05)
        self.z_planes = spin(QSpinBox(), 1, 50, 1)
        self.z_planes.setToolTip(
            "focal planes per field, fused into one sharp image before counting"
        )
        grid = QHBoxLayout()
        for label, box in (
            ("rows", self.rows),
            ("cols", self.cols),
            ("overlap", self.overlap),
            ("z planes", self.z_planes),
        ):
            grid.addWidget(QLabel(label))
            grid.addWidget(box)
        self.snap_button = QPushButton("Snap")
        self.snap_button.clicked.connect(self.snap)
        self.live_button = QPushButton("Live")
        self.live_button.clicked.connect(self.start_live)
        self.scan_button = QPushButton("Scan tray")
        self.scan_button.clicked.connect(self.start_scan)
        self.pause_button = QPushButton("Pause")
        self.pause_button.setCheckable(True)
        self.pause_button.toggled.connect(self._toggle_pause)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        buttons = QHBoxLayout()
        for b in (
            self.snap_button,
            self.live_button,
            self.scan_button,
            self.pause_button,
            self.stop_button,
        ):
            buttons.addWidget(b)
        acq_layout = QVBoxLayout()
        acq_layout.addLayout(grid)
        acq_layout.addLayout(buttons)
        acq_box = QGroupBox("Acquire")
        acq_box.setLayout(acq_layout)

        # Read-outs
        self.rate_label = QLabel("0.0 frames/s | backlog 0 | dropped 0")
        self.target_bar = QProgressBar()
        self.target_bar.setFormat("%v of %m specimens")
        self.status_label = QLabel("connect a microscope to start")
        self.status_label.setWordWrap(True)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["class", "count", "%"])
        header = self.table.verticalHeader()
        if header is not None:
            header.setVisible(False)

        layout = QVBoxLayout(self)
        for w in (scope_box, sample_box, acq_box):
            layout.addWidget(w)
        layout.addWidget(self.rate_label)
        layout.addWidget(self.target_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(self.table)
        layout.addStretch(1)

        self._timer = QTimer(self)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self._redraw)
        self._timer.start()
        self._update_buttons()

    # ------------------------------------------------------------------ actions
    def connect_microscope(self) -> None:
        """Build the classifier and the store, connect the microscope (background)."""
        from napari_foram.live import SimulatedScope

        simulated = self.source.currentIndex() == 0
        config = self.config_path.text().strip()
        if not simulated and not config:
            self._set_status("choose a Micro-Manager configuration file first")
            return
        # The simulated tray is made to fit the scan set below (rows x cols at overlap).
        scope = SimulatedScope(
            seed=int(self.seed.value()),
            camera_shape=self.camera_shape,
            rows=int(self.rows.value()),
            cols=int(self.cols.value()),
            overlap=float(self.overlap.value()),
            specimens=self.specimens,
            touching_pairs=0 if self.specimens < 20 else 2,
            thick_specimens=int(self.z_planes.value()) > 1,
            bit_depth=self.bit_depth,
            mono=self.mono,
        )
        store_path = Path(self.store_path.text().strip())
        mc, target = int(self.mc.value()), int(self.target.value())
        download = self.download_weights.isChecked()

        def work() -> object:
            from napari_foram.live import LiveCounter, open_or_create_store
            from napari_foram.pipeline import load_predictor

            if self.counter is not None:
                self.counter.close()
                self.counter = None
            self._bridge.status.emit("loading the classifier (first run: trains the demo model)")
            from napari_foram.classify.predict import cpu_threads, interactive_cpu_threads

            if self._torch_threads is None:
                self._torch_threads = cpu_threads()  # restored when the widget closes
            from napari_foram.classify.demo_model import DemoBackboneWarning

            if download and self.model == "demo":
                from napari_foram.classify.backbone import resolve_backbone

                self._bridge.status.emit("looking for ImageNet VGG16 weights (may download)")
                resolve_backbone("imagenet", download=True)  # lands in torch hub's cache

            # An offline machine without ImageNet weights gets a weaker demo model: say so
            # where the user looks (the status line), not only on a terminal.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DemoBackboneWarning)
                predictor = load_predictor(
                    self.model,
                    device=self.device,
                    progress=self._report,
                    cpu_threads=interactive_cpu_threads(),  # a core stays with the interface
                )
            fallback = [str(w.message) for w in caught if w.category is DemoBackboneWarning]
            info = predictor.info
            backbone = f"{info.backbone_id or info.backbone_weights} ({info.input_convention})"
            store = open_or_create_store(store_path, list(predictor.info.class_names))
            try:
                counter = LiveCounter(predictor, store, mc_samples=mc, target_count=target)
                if simulated:
                    counter.connect_simulated(scope)
                else:
                    counter.connect_config(config)
            except Exception:
                store.close()
                raise
            self.counter = counter
            note = f" | WARNING: {fallback[0]}" if fallback else ""
            return f"connected; store {store_path}; classifier backbone {backbone}{note}"

        self._run("connect", work)

    def start_demo(self, sample_id: str = "DEMO-001") -> None:
        """The demo in one call: connect the simulated tray, start a sample, scan it."""

        def then() -> None:
            self.sample_fields["sample_id"].setText(sample_id)
            self.start_sample()
            self.start_scan()

        self._after_connect = then
        self.connect_microscope()

    def start_sample(self) -> None:
        """Count into the sample described by the form (new, or resumed if stored)."""
        from napari_foram.tally.store import SampleRecord

        if self.counter is None:
            self._set_status("connect a microscope first")
            return
        try:
            record = SampleRecord(**self._record_fields())
            held = self.counter.start_sample(record)
        except (ValueError, TypeError) as exc:
            self._set_status(f"sample not started: {exc}")
            return
        self._shown = []
        self._pending.clear()
        for name in (SPECIMENS_LAYER, UNCERTAIN_LAYER):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        self._reload_tally()
        self._prepare_layers()
        try:  # the scan as set now: its overview is made (and first drawn) before it runs
            plan = self.counter.plan_scan(
                int(self.rows.value()),
                int(self.cols.value()),
                float(self.overlap.value()),
                z_planes=int(self.z_planes.value()),
            )
            self._prepare_overview(self.counter, plan)
        except ValueError:
            pass  # no scan possible with these settings: start_scan will say why
        self._set_status(
            f"counting sample {record.sample_id}"
            + (f" (resumed: {held} specimens already stored)" if held else "")
        )
        self._refresh_tally()
        self._update_buttons()

    def _show_live_frame(self) -> None:
        """Snap and live preview draw the newest frame itself, not the scan overview."""
        self._mosaic = None
        if FRAME_LAYER in self.viewer.layers:
            self.viewer.layers[FRAME_LAYER].visible = True

    def snap(self) -> None:
        """Take and count one frame."""
        self._show_live_frame()
        counter = self._counter_with_sample()
        if counter is not None:
            self._run("snap", lambda: self._bridge.result.emit(counter.snap()))

    def start_live(self) -> None:
        """Live preview until Stop."""
        self._show_live_frame()
        counter = self._counter_with_sample()
        if counter is not None:
            self._run("live", lambda: counter.live(on_result=self._bridge.result.emit))

    def start_scan(self) -> None:
        """A tray scan of rows x cols fields; Pause, Stop while it runs."""
        counter = self._counter_with_sample()
        if counter is None:
            return
        rows, cols = int(self.rows.value()), int(self.cols.value())
        overlap, z_planes = float(self.overlap.value()), int(self.z_planes.value())
        try:
            sequence = counter.plan_scan(rows, cols, overlap, z_planes=z_planes)
        except ValueError as exc:
            self._set_status(f"scan not started: {exc}")
            return
        self._prepare_overview(counter, sequence)
        _freeze_heap()
        self._run(
            "scan",
            lambda: counter.scan(
                rows, cols, overlap, sequence=sequence, on_result=self._bridge.result.emit
            ),
        )

    def stop(self) -> None:
        """Stop the live preview or the scan (what is counted stays)."""
        if self.counter is not None:
            self.counter.stop()
            self._set_status("stopping...")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background work ends (tests, scripts); True if it ended."""
        return join_thread(self._thread, timeout)

    # ------------------------------------------------------------------ worker thread
    def _report(self, done: int, total: int, message: str = "") -> None:
        self._bridge.status.emit(f"{message} ({done}/{total})")

    def _run(self, what: str, work: Callable[[], object]) -> None:
        if thread_running(self._thread):
            self._set_status("busy: stop the running acquisition first")
            return

        def target() -> None:
            try:
                outcome = work()
            except Exception as exc:  # shown to the user, never swallowed
                outcome = exc
            self._bridge.finished.emit(what, outcome)

        self._thread = threading.Thread(target=target, daemon=True, name=f"napari-foram-{what}")
        self._thread.start()
        self._set_status(f"{what}...")
        self._update_buttons()

    # ------------------------------------------------------------------ GUI thread
    def _counter_with_sample(self) -> LiveCounter | None:
        if self.counter is None or self.counter.sample_id is None:
            self._set_status("connect a microscope and start a sample first")
            return None
        return self.counter

    def _record_fields(self) -> dict[str, Any]:
        numbers = {"interval_top_cm", "interval_bottom_cm", "depth", "dry_weight_g"}
        out: dict[str, Any] = {}
        for name, edit in self.sample_fields.items():
            text = edit.text().strip()
            if name in numbers:
                out[name] = float(text) if text else None
            elif name == "split_factor":
                out[name] = float(text) if text else 1.0
            else:
                out[name] = text
        return out

    def _browse_config(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Micro-Manager configuration", "", "*.cfg")
        if path:
            self.config_path.setText(path)
            self.source.setCurrentIndex(1)

    def _toggle_pause(self, paused: bool) -> None:
        if self.counter is None or self.counter.session is None:
            return
        try:
            self.counter.pause(paused)
            self._set_status("paused" if paused else "scanning")
        except ValueError as exc:
            self._set_status(str(exc))

    def _set_status(self, text: str) -> None:
        self.status_label.setText(text)

    def _on_finished(self, what: str, outcome: object) -> None:
        self._redraw(everything=True)
        if self.counter is not None and self.counter.sample_id is not None:
            self._reload_tally()  # the worker is done: the store is quiet
            self._refresh_tally()
        self.last_outcome[what] = outcome
        self.pause_button.setChecked(False)
        if isinstance(outcome, Exception):
            text = str(outcome).splitlines()[0] if str(outcome) else type(outcome).__name__
            self._set_status(f"{what} failed: {text}")
        elif isinstance(outcome, str):
            self._set_status(outcome)
        elif hasattr(outcome, "frames_processed"):
            error = getattr(outcome, "error", None)
            pending = getattr(outcome, "pending_partials", 0)
            self._set_status(
                f"{what}: {outcome.frames_processed} frames processed, "
                f"{getattr(outcome, 'frames_dropped', 0)} dropped"
                + (f"; {error}" if error else "")
                + (f"; {pending} edge-cut specimens await the rest of the scan" if pending else "")
            )
        else:
            self._set_status(f"{what} done")
        self._update_buttons()
        follow, self._after_connect = self._after_connect, None
        if what == "connect" and follow is not None and self.counter is not None:
            follow()

    def _update_buttons(self) -> None:
        running = thread_running(self._thread)
        ready = self.counter is not None and self.counter.sample_id is not None and not running
        self.connect_button.setEnabled(not running)
        self.sample_button.setEnabled(self.counter is not None and not running)
        for b in (self.snap_button, self.live_button, self.scan_button):
            b.setEnabled(ready)
        self.stop_button.setEnabled(running)
        self.pause_button.setEnabled(running)

    def _redraw(self, everything: bool = False) -> None:
        """Draw what arrived since the last redraw: the newest frame, new specimens.

        The frame and the specimens are drawn on alternate ticks, so that one tick never
        pays for both (each costs tens of ms with software OpenGL). `everything` draws
        both now (at the end of an acquisition).
        """
        counter = self.counter
        if counter is not None:
            s = counter.stats()
            self.rate_label.setText(
                f"{s['frames_per_s']:.1f} frames/s | backlog {int(s['backlog'])} | "
                f"dropped {int(s['dropped'])}"
            )
        if self._specimens_stale and not everything:
            self._specimens_stale = False
            self._show_specimens()
            return  # the frame waits for the next tick
        if not self._pending:
            return
        batch, self._pending[:] = list(self._pending), []
        self._show_frames(batch)
        names = list(counter.store.class_names) if counter is not None else []
        rule = counter.unsure_rule if counter is not None else None
        for r in batch:
            if r.predictions is None:
                continue
            px = r.frame.pixel_size_um or 1.0
            # New rows are counted and unreviewed: the rule alone says which are unsure
            # (`stats.unsure_mask` on the stored rows gives the same).
            p = r.predictions
            unsure = (
                rule.above(prediction_columns(p))
                if rule is not None
                else np.zeros(len(p.class_index), dtype=bool)
            )
            for j, row in enumerate(r.new_rows):
                x, y = r.sample_xy_um[row]
                if not np.isfinite(x):  # no stage position: place it in frame pixels
                    y, x = r.detections.centroid[row]
                k = int(r.predictions.class_index[j])
                prob = float(r.predictions.mean_probs[j].max())
                vote = float(r.predictions.vote_fraction[j])
                diam = float(r.detections.equivalent_diameter_px[row]) * px
                uncertain = vote < UNCERTAIN_VOTE_FRACTION
                self._shown.append((y, x, names[k], prob, uncertain, diam, bool(unsure[j])))
                if unsure[j]:
                    self._n_unsure += 1
                else:
                    self._tally[names[k]] = self._tally.get(names[k], 0) + 1
        self._specimens_stale = True
        self._refresh_tally()
        if everything:
            self._specimens_stale = False
            self._show_specimens()

    def _show_frames(self, results: list[FrameResult]) -> None:
        """Draw the frames that arrived since the last redraw: during a scan every one
        is pasted into the tray overview (a field skipped would stay black); otherwise
        the newest is shown, where it lies on the tray."""
        if self._mosaic is not None and OVERVIEW_LAYER in self.viewer.layers:
            pasted = False
            for result in results:
                image, px = self._display_image(result.frame, self._overview_step)
                small = Frame(image, stage_xy_um=result.frame.stage_xy_um, pixel_size_um=px)
                pasted = self._mosaic.paste(small) or pasted
            if pasted:
                self.viewer.layers[OVERVIEW_LAYER].refresh()  # one redraw for them all
                return
        self._show_frame(results[-1])

    @staticmethod
    def _display_image(frame: Frame, step: int | None = None) -> tuple[np.ndarray, float]:
        """The frame at display resolution, 8-bit, and its pixel size there.

        Every `display_step`-th pixel only: a preview needs no more than the screen shows,
        and uploading a full 5 MP frame four times a second would starve the GUI thread.
        10-16 bit cameras are scaled by the depth they report, so a dim frame looks dim
        (guessing from the data would stretch it).
        """
        step = step or display_step(frame.image.shape[:2])
        image = to_uint8(frame.image[::step, ::step], frame.metadata.get("bit_depth"))
        return image, (frame.pixel_size_um or 1.0) * step

    def _show_frame(self, result: FrameResult) -> None:
        """Show one frame in the live-frame layer, where it lies on the tray."""
        frame = result.frame
        image, step_px = self._display_image(frame)
        corner = frame.pixel_to_stage_um(0, 0)
        translate = (corner[1], corner[0]) if corner is not None else (0.0, 0.0)
        scale = (step_px, step_px)
        if FRAME_LAYER in self.viewer.layers:
            layer = self.viewer.layers[FRAME_LAYER]
            if layer.data.shape == image.shape and layer.data.dtype == image.dtype:
                # Into the layer's own buffer (ours, made by `_prepare_layers`): assigning
                # a new array would also re-check dims and extents, ~3x the cost.
                with _one_refresh(layer):
                    layer.data[...] = image
                    if tuple(layer.translate) != translate:
                        layer.translate = translate
                    if tuple(layer.scale) != scale:
                        layer.scale = scale
                return
            self.viewer.layers.remove(FRAME_LAYER)
        self.viewer.add_image(
            image,
            name=FRAME_LAYER,
            rgb=image.ndim == 3,
            scale=scale,
            translate=translate,
            units="um",
        )
        self.viewer.layers.move(self.viewer.layers.index(FRAME_LAYER), 0)  # under the marks
        self.viewer.reset_view()

    def _prepare_overview(self, counter: LiveCounter, sequence: Any) -> None:
        """An empty tray overview covering the planned fields; frames fill it as they
        arrive (at display resolution: a 3 x 3 scan of 5 MP fields would be 45 MP)."""
        px = counter.pixel_size_um()
        positions = counter.field_positions(sequence)
        key = (px, tuple(positions), counter.frame_shape())
        if (
            key == self._overview_key
            and self._mosaic is not None
            and OVERVIEW_LAYER in self.viewer.layers
        ):
            # Same fields as prepared (usually at sample start, where the layer's first,
            # slow draw happened): clear it instead of making a new layer mid-scan.
            self._mosaic.image[...] = 0
            self.viewer.layers[OVERVIEW_LAYER].refresh()
            if FRAME_LAYER in self.viewer.layers:
                self.viewer.layers[FRAME_LAYER].visible = False
            return
        if OVERVIEW_LAYER in self.viewer.layers:
            self.viewer.layers.remove(OVERVIEW_LAYER)
        self._mosaic, self._overview_key = None, key
        if px is None or not positions:
            return
        # The whole overview, not each field, at most ~OVERVIEW_MAX_SIDE px on its longer
        # side: every refresh re-uploads the texture, and with software OpenGL a 4 MB
        # one stalls the GUI thread for ~300 ms (measured by tests/test_live_gui.py).
        shape = counter.frame_shape()
        full = Mosaic.covering(positions, (shape[0], shape[1]), px)  # only its shape is used
        self._overview_step = display_step(full.image.shape, OVERVIEW_MAX_SIDE)
        step = self._overview_step
        field = (-(-shape[0] // step), -(-shape[1] // step))
        self._mosaic = Mosaic.covering(positions, field, px * step)
        step_px = self._mosaic.pixel_size_um
        self.viewer.add_image(
            self._mosaic.image,  # the layer shares the canvas: pasted in place
            name=OVERVIEW_LAYER,
            rgb=True,
            scale=(step_px, step_px),
            translate=self._mosaic.translate_yx_um,
            units="um",
        )
        self.viewer.layers.move(self.viewer.layers.index(OVERVIEW_LAYER), 0)
        if FRAME_LAYER in self.viewer.layers:
            self.viewer.layers[FRAME_LAYER].visible = False  # the overview shows it
        self.viewer.reset_view()

    def _prepare_layers(self) -> None:
        """Create the frame and specimen layers before acquiring (creating a layer costs
        far more than updating one: done now, it never stalls a running scan)."""
        if self.counter is None:
            return
        shape = self.counter.frame_shape()
        step = display_step(shape)
        blank = np.zeros((-(-shape[0] // step), -(-shape[1] // step), *shape[2:]), np.uint8)
        if FRAME_LAYER not in self.viewer.layers:
            self.viewer.add_image(blank, name=FRAME_LAYER, rgb=blank.ndim == 3, units="um")
        self._shown = [(0.0, 0.0, self.counter.store.class_names[0], 0.0, True, 1.0, False)]
        self._show_specimens()  # one placeholder point, so that text and symbols compile
        self._shown = []
        self._show_specimens()

    def _show_specimens(self) -> None:
        from napari_foram.tally.export import UNSURE_COLOUR
        from napari_foram.widgets.layers import class_colour

        counter = self.counter
        names = list(counter.store.class_names) if counter is not None else []
        yx = np.array([(s[0], s[1]) for s in self._shown]).reshape(-1, 2)
        cls = [s[2] for s in self._shown]
        # Unsure specimens (the model's unsure rule) in grey, in no class's colour.
        colours = np.array(
            [UNSURE_COLOUR if s[6] else class_colour(s[2], names.index(s[2])) for s in self._shown]
        ).reshape(-1, 4)
        features = {
            "class": cls,
            "probability": np.round([s[3] for s in self._shown], 2),
            "uncertain": [s[4] for s in self._shown],
            "unsure": [s[6] for s in self._shown],
        }
        sizes = 1.3 * np.array([s[5] for s in self._shown])
        if SPECIMENS_LAYER in self.viewer.layers:
            layer = self.viewer.layers[SPECIMENS_LAYER]
            # Four property changes, one redraw (each would refresh the layer otherwise).
            with _one_refresh(layer):
                layer.data = yx  # napari resizes the per-point properties to match
                if len(yx):
                    layer.features = features
                    layer.size = sizes
                    layer.border_color = colours
        else:
            self.viewer.add_points(
                yx,
                name=SPECIMENS_LAYER,
                features=features,
                size=sizes,
                face_color="transparent",
                border_color=colours,
                border_width=0.06,
                text={"string": "{class} {probability:.2f}", "size": 8, "color": "white"},
                units="um",
            )
        unsure = np.array([s[4] for s in self._shown], dtype=bool)
        data = yx[unsure] if unsure.any() else np.zeros((0, 2))
        if UNCERTAIN_LAYER in self.viewer.layers:
            layer = self.viewer.layers[UNCERTAIN_LAYER]
            with _one_refresh(layer):
                layer.data = data
                if len(data):
                    layer.size = 1.6 * sizes[unsure]
        else:
            self.viewer.add_points(
                data,
                name=UNCERTAIN_LAYER,
                size=1.6 * sizes[unsure] if unsure.any() else 10,
                symbol="square",
                face_color="transparent",
                border_color="red",
                border_width=0.04,
                units="um",
            )

    def _reload_tally(self) -> None:
        """The table's counts from the store's `sample_summary` (unsure rule applied)."""
        if self.counter is None:
            return
        summary = self.counter.summary()
        names = list(self.counter.store.class_names)
        if summary is None:
            self._tally, self._n_unsure = dict.fromkeys(names, 0), 0
            return
        self._tally = {n: int(c) for n, c in zip(names, summary["counts"], strict=True)}
        self._n_unsure = int(summary["n_unsure"])

    def _refresh_tally(self) -> None:
        if self.counter is None:
            return
        counts = self._tally
        # As in the tally: unsure specimens are objects but in no class, so they fill
        # no part of the target.
        classified = sum(counts.values())
        total = classified + self._n_unsure
        target = self.counter.target_count
        self.target_bar.setRange(0, target)
        self.target_bar.setValue(min(classified, target))
        rows = [*counts.items(), ("unsure", self._n_unsure), ("total", total)]
        self.table.setRowCount(len(rows))
        for row, (name, n) in enumerate(rows):
            self.table.setItem(row, 0, QTableWidgetItem(name.replace("_", " ")))
            self.table.setItem(row, 1, QTableWidgetItem(str(n)))
            pct = "" if name == "total" or not total else f"{100.0 * n / total:.1f}"
            self.table.setItem(row, 2, QTableWidgetItem(pct))

    def closeEvent(self, event: Any) -> None:  # Qt names it
        """Stop the acquisition and release the store when the widget goes away."""
        self._timer.stop()
        if self.counter is not None:
            self.counter.stop()
            self.wait(30)
            self.counter.close()
            self.counter = None
        if self._torch_threads is not None:
            from napari_foram.classify.predict import set_cpu_threads

            set_cpu_threads(self._torch_threads)
        super().closeEvent(event)
