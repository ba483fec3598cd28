"""Foram live: count at the microscope -- connect, describe the sample, snap, live, scan.

A thin Qt widget over `napari_foram.microscope.MicroscopeCounter`. Every slow call (building the
classifier, connecting, acquiring, classifying) runs on one background thread; results
reach the GUI thread through a Qt signal and are drawn by a timer at most four times a
second, so neither a fast camera nor a slow classifier can stall the interface.
"""

from __future__ import annotations

import time
import warnings
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import (
    QFileDialog,
    QHeaderView,
    QLabel,
    QProgressBar,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_foram.defaults import CAMERA_SHAPE, MC_SAMPLES
from napari_foram.reasons import one_line
from napari_foram.tally import stats
from napari_foram.tally.columns import prediction_columns
from napari_foram.widgets._active import ModelLabel
from napari_foram.widgets._live_controls import CameraControls
from napari_foram.widgets._live_display import FRAME_LAYER, OVERVIEW_LAYER, LiveDisplay
from napari_foram.widgets._live_forms import LiveForms
from napari_foram.widgets._qt import (
    ActivityProgress,
    ClassLegend,
    Runner,
    Section,
    scroll_layout,
)
from napari_foram.widgets.layers import (
    SPECIMENS_LAYER,
    UNCERTAIN_LAYER,
    Shown,
    camera_line,
    freeze_heap,
)

# The layer names are importable from here too (tests, scripts).
__all__ = ["FRAME_LAYER", "OVERVIEW_LAYER", "SPECIMENS_LAYER", "UNCERTAIN_LAYER", "LiveWidget"]

if TYPE_CHECKING:
    from collections.abc import Callable

    import napari.viewer

    from napari_foram.microscope import MicroscopeCounter
    from napari_foram.mosaic import Mosaic
    from napari_foram.pipeline import FrameResult

#: The table row of the specimens worth a person's look (`stats.unreviewed_high_entropy_mask`; the
#: tally's and the CSV's ``n_uncertain``), marked by red squares on the canvas.
UNCERTAIN_ROW = "uncertain (to review)"
#: Redraw period (ms): results arriving faster are drawn together.
REDRAW_MS = 250
#: The read-outs with no microscope connected.
NO_CAMERA = "no camera yet"
NO_RATE = "0.0 frames/s | backlog 0 | dropped 0"


class LiveWidget(LiveDisplay, LiveForms, QWidget):
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
        config: str | Path | None = None,
        adapter_path: str | Path | None = None,
        download_weights: bool | None = None,
    ) -> None:
        super().__init__()
        # Released once (`shutdown`), when the widget closes, leaves its dock or napari
        # closes; the napari window watched for the last.
        self._shut = False
        self._was_docked = False
        self._watched: QObject | None = None
        # `viewer.close()` deletes the docked widget without a close event: the store's
        # writer lock and the microscope are let go then too (issue 27). A lambda, not
        # a bound method: Qt calls it after the widget's C++ half is gone.
        self.destroyed.connect(lambda *_: self._release())
        self.viewer = napari_viewer
        self.model = model
        self.device = device
        self.camera_shape = camera_shape
        self.specimens = specimens
        self.bit_depth = bit_depth  # of the simulated camera
        self.mono = mono
        self.counter: MicroscopeCounter | None = None
        self.last_outcome: dict[str, object] = {}
        self._pending: list[FrameResult] = []
        self._shown: list[Shown] = []  # every counted specimen of the sample, as drawn
        # Counts drawn in the table: read from the store when a sample starts or an
        # acquisition ends, advanced from the results in between (reading the store on
        # every redraw would wait for the worker's appends on the GUI thread). Specimens
        # the model's unsure rule puts in no class are counted apart, as the tally does;
        # the numbers shown come from `stats.assemblage`, as the tally's and the CSV's.
        self._tally: dict[str, int] = {}
        self._n_unsure = 0
        self._n_uncertain = 0
        # Display stretch of the current sample's frames (`contrast_limits` of its first
        # frame, kept so that the fields of a scan match): None = the camera's depth.
        self._contrast: tuple[float, float] | None = None
        self._contrast_set = False
        self._scan_total = 0  # fields planned in the running scan (0: no scan)
        self._scan_done = 0
        self._scan_started = 0.0
        self._activity = ActivityProgress()
        self._specimens_stale: list[str] = []  # specimen layers to draw, one per tick
        self._mosaic: Mosaic | None = None  # the scan's overview, at display resolution
        self._overview_step = 1
        self._overview_key: tuple[Any, ...] | None = None
        self._torch_threads: int | None = None
        self._after_connect: Callable[[], None] | None = None
        self.runner = Runner(self)
        self.runner.on("result", self._pending.append)
        self.runner.on("status", self._set_status)
        self.runner.on("finished", self._on_finished)

        self._download_choice = download_weights
        self._store_shown: Path | None = None  # the store whose layers are on the canvas
        # pymmcore-widgets' camera and stage controls, bound to each microscope connected.
        self.controls = CameraControls(on_view_frame=lambda: self.runner.emit("view"))
        self.runner.on("view", self._show_viewed)

        # Sections fold away and the whole dock scrolls: it fits a 1366 x 768 screen
        # beside other docks (issue 15), where it used to force napari's window taller.
        layout = scroll_layout(self, height_hint=300)
        layout.addWidget(ModelLabel(napari_viewer))
        self.sections = {
            "microscope": Section(
                "Microscope",
                self._build_microscope(config, adapter_path, seed, store_path, mc_samples),
            ),
            "controls": Section("Camera and stage", self.controls, expanded=False),
            "sample": Section("Sample", self._build_sample()),
        }
        for w in self.sections.values():
            layout.addWidget(w)
        layout.addWidget(self._build_acquire())
        self._build_readouts(layout)
        layout.addStretch(1)

        self._labels_zoomed = False
        self._camera_events().zoom.connect(self._on_zoom)
        self._timer = QTimer(self)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self._redraw)
        self._timer.start()
        self._update_buttons()
        from napari_foram.widgets._live_teach import connect_live

        connect_live(self)  # the active model, canvas labels of its specimens

    def _build_readouts(self, layout: QVBoxLayout) -> None:
        """Camera line, rates, progress, status, the class table and its legend."""
        self.camera_label = QLabel(NO_CAMERA)  # camera, pixel size, bit depth
        self.camera_label.setWordWrap(True)
        self.rate_label = QLabel(NO_RATE)
        self.scan_bar = QProgressBar()  # fields done of the running scan, time left
        self.scan_bar.setFormat("scan: no scan running")
        self.scan_bar.setValue(0)
        self.target_bar = QProgressBar()
        self.target_bar.setFormat("%v of %m forams")
        self.status_label = QLabel("connect a microscope to start")
        self.status_label.setWordWrap(True)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["class", "count", "% forams"])
        header = self.table.verticalHeader()
        if header is not None:
            header.setVisible(False)
        columns = self.table.horizontalHeader()
        if columns is not None:  # the class names get the width the numbers leave
            columns.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
            for col in (1, 2):
                columns.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        # Every row shown (the dock scrolls, not the table): `_fit_table`.
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setWordWrap(True)
        self.legend = ClassLegend()
        for w in (self.camera_label, self.rate_label, self.scan_bar, self.target_bar):
            layout.addWidget(w)
        layout.addWidget(self.status_label)
        layout.addWidget(self.table)
        layout.addWidget(self.legend)
        self._fit_table()

    def _fit_table(self) -> None:
        """The table as tall as its rows: no inner scrolling, no clipped row."""
        self.table.resizeRowsToContents()
        header = self.table.horizontalHeader()
        height = (header.height() if header is not None else 24) + 2 * self.table.frameWidth()
        height += sum(self.table.rowHeight(r) for r in range(self.table.rowCount()))
        self.table.setFixedHeight(max(height, 60))

    # ------------------------------------------------------------------ actions
    def connect_microscope(self) -> None:
        """Build the classifier and the store, connect the microscope (background)."""
        from napari_foram.microscope import SimulatedMicroscopeSettings

        simulated = self.source.currentIndex() == 0
        shared = self.source.currentIndex() == 2
        # napari-micromanager opened from the Plugins menu keeps a core of its own, not
        # CMMCorePlus.instance(): the one its window in this viewer holds is the shared one.
        shared_core = _micromanager_core(self.viewer) if shared else None
        config = self.config_path.text().strip()
        adapters = self.adapter_path.text().strip() or None
        if self.source.currentIndex() == 1 and not config:
            self._set_status("choose a Micro-Manager configuration file first")
            return
        # The simulated tray is made to fit the scan set below (rows x cols at overlap).
        scope = SimulatedMicroscopeSettings(
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
        download = self._download_choice if self.download_weights.isChecked() else False

        def work() -> object:
            from napari_foram.classify.loading import load_predictor
            from napari_foram.microscope import MicroscopeCounter, open_or_create_store

            if self.counter is not None:
                self.counter.close()
                self.counter = None
            self.runner.emit("status", "loading the classifier (first run: trains the demo model)")
            from napari_foram.classify.predict import cpu_threads, interactive_cpu_threads

            if self._torch_threads is None:
                self._torch_threads = cpu_threads()  # restored when the widget closes
            from napari_foram.classify.demo_model import DemoBackboneWarning

            if self.model == "demo":
                from napari_foram.classify.backbone import (
                    MissingWeightsError,
                    download_allowed,
                    locate_imagenet_weights,
                )

                # A bad $NAPARI_FORAM_VGG16_WEIGHTS is the demo model's to report, below.
                with suppress(MissingWeightsError):
                    if download_allowed(download) and locate_imagenet_weights() is None:
                        self.runner.emit(
                            "status",
                            "downloading ImageNet VGG16 weights (528 MB, first run only)",
                        )

            # An offline machine without ImageNet weights gets a weaker demo model: say so
            # where the user looks (the status line), not only on a terminal.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DemoBackboneWarning)
                predictor = load_predictor(
                    self.model,
                    device=self.device,
                    progress=self._report,
                    cpu_threads=interactive_cpu_threads(),  # a core stays with the interface
                    download_weights=download,
                )
            fallback = [str(w.message) for w in caught if w.category is DemoBackboneWarning]
            info = predictor.info
            backbone = f"{info.backbone_id or info.backbone_weights} ({info.input_convention})"
            store = open_or_create_store(store_path, list(predictor.info.class_names))
            try:
                counter = MicroscopeCounter(predictor, store, mc_samples=mc, target_count=target)
                if simulated:
                    counter.connect_simulated(scope)
                elif shared:
                    counter.connect_shared(shared_core)  # left loaded and unchanged on close
                else:
                    counter.connect_config(config, adapter_path=adapters)
            except Exception:
                store.close()
                raise
            self.counter = counter
            note = f" | WARNING: {fallback[0]}" if fallback else ""
            caps = counter.capabilities
            # The configuration check: what the microscope can do, what is off and why.
            check = f" | {caps.summary()}" + "".join(f" {n}" for n in caps.notes) if caps else ""
            return f"connected; store {store_path}; classifier backbone {backbone}{note}{check}"

        self._run("connect", work)

    def _choose_download(self, checked: bool) -> None:
        """A click on "download weights if missing" is the user's choice: it wins over
        ``$NAPARI_FORAM_NO_DOWNLOAD``.
        """
        self._download_choice = checked

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
            # The core's one parser of a sample record (text to numbers, checks).
            record = SampleRecord.from_dict(
                {name: edit.text() for name, edit in self.sample_fields.items()}
            )
            held = self.counter.start_sample(record)
        except (ValueError, TypeError) as exc:
            self._set_status(f"sample not started: {exc}")
            return
        self._shown = []
        self._pending.clear()
        self._contrast, self._contrast_set = None, False  # a new sample may be lit anew
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
        self.sections["sample"].toggle.setChecked(False)  # the read-outs come into view
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
            counter.stop_viewing()  # counting needs the camera
            self._run("snap", lambda: self._emit_result(counter.snap()))

    def start_live(self) -> None:
        """Live preview until Stop."""
        self._show_live_frame()
        counter = self._counter_with_sample()
        if counter is not None:
            counter.stop_viewing()
            self._run("live", lambda: counter.live(on_result=self._emit_result))

    def start_scan(self) -> None:
        """A tray scan of rows x cols fields; Pause, Stop while it runs."""
        counter = self._counter_with_sample()
        if counter is None:
            return
        counter.stop_viewing()
        rows, cols = int(self.rows.value()), int(self.cols.value())
        overlap, z_planes = float(self.overlap.value()), int(self.z_planes.value())
        try:
            sequence = counter.plan_scan(rows, cols, overlap, z_planes=z_planes)
        except ValueError as exc:
            self._set_status(f"scan not started: {exc}")
            return
        self._prepare_overview(counter, sequence)
        raw = self.raw_path.text().strip() or None  # read here: the scan runs off the GUI thread
        freeze_heap()
        self._scan_total = max(1, len(counter.field_positions(sequence)))
        self._scan_done, self._scan_started = 0, time.monotonic()
        self._show_scan_progress()
        self._run(
            "scan",
            lambda: counter.scan(
                rows,
                cols,
                overlap,
                sequence=sequence,
                on_result=self._emit_result,
                save_raw=raw,
            ),
        )

    def stop(self) -> None:
        """Stop the live preview or the scan (what is counted stays)."""
        if self.counter is not None:
            self.counter.stop()
            self._set_status("stopping...")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background work ends (tests, scripts); True if it ended."""
        return self.runner.wait(timeout)

    # ------------------------------------------------------------------ worker thread
    def _report(self, done: int, total: int, message: str = "") -> None:
        self.runner.emit("status", f"{message} ({done}/{total})")

    def _emit_result(self, result: FrameResult) -> None:
        self.runner.emit("result", result)

    def _run(self, what: str, work: Callable[[], object]) -> None:
        if self.runner.busy():
            self._set_status("busy: stop the running acquisition first")
            return

        def target() -> None:
            try:
                outcome = work()
            except Exception as exc:  # shown to the user, never swallowed
                outcome = exc
            self.runner.emit("finished", what, outcome)

        self.runner.start(what, target)
        self._set_status(f"{what}...")
        self._update_buttons()

    # ------------------------------------------------------------------ GUI thread
    def _counter_with_sample(self) -> MicroscopeCounter | None:
        if self.counter is None or self.counter.sample_id is None:
            self._set_status("connect a microscope and start a sample first")
            return None
        return self.counter

    def _config_chosen(self, path: str) -> None:
        if path.strip():
            self.source.setCurrentIndex(1)

    def _load_configuration(self) -> None:
        """pymmcore-widgets' Load: count with the configuration file's microscope."""
        self.source.setCurrentIndex(1)
        self.connect_microscope()

    def _show_viewed(self) -> None:
        """A view-only snap (pymmcore-widgets' Snap): shown, not counted."""
        frame = self.counter.viewed_frame() if self.counter is not None else None
        if frame is not None and not self.runner.busy():
            self._mosaic = None
            self._show_camera_frame(frame)

    def _browse_adapters(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Micro-Manager installation folder")
        if path:
            self.adapter_path.setText(path)

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
        if what == "scan":
            self._scan_total = 0
            self._activity.close()
        if what == "connect":
            self._connected(outcome)
        if self.counter is not None and self.counter.sample_id is not None:
            self._reload_tally()  # the worker is done: the store is quiet
            self._refresh_tally()
        self.last_outcome[what] = outcome
        self.pause_button.setChecked(False)
        if isinstance(outcome, Exception):
            self._set_status(f"{what} failed: {one_line(outcome)}")
        elif what == "scan" and str(getattr(outcome, "error", "")).startswith("stopped after"):
            pending = getattr(outcome, "pending_partials", 0)
            self._set_status(
                f"scan {getattr(outcome, 'error', '')}"
                + (f"; {pending} edge-cut specimens await the rest of the scan" if pending else "")
            )
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

    def _connected(self, outcome: object) -> None:
        """After a connect: the new microscope's read-outs and controls, or, when it
        failed, none of the old one's (it is let go before connecting).
        """
        counter = self.counter
        if counter is None or isinstance(outcome, Exception):
            why = f"not connected: {one_line(outcome)}" if isinstance(outcome, Exception) else ""
            self.camera_label.setText(why or NO_CAMERA)
            self.rate_label.setText(NO_RATE)
            self.controls.unbind(why or "no microscope connected")
            self.table.setRowCount(0)
            self.target_bar.setValue(0)
            self._fit_table()
            return
        # Done with: folded, so the sample form and the read-outs fit a laptop dock.
        self.sections["microscope"].toggle.setChecked(False)
        self.camera_label.setText(camera_line(counter.microscope_info))
        self.legend.set_classes(list(counter.store.class_names), uncertain=True)
        self.controls.bind(counter.mm_core())
        store = Path(counter.store.path).resolve()
        if self._store_shown is not None and store != self._store_shown:
            self._forget_layers()  # the previous store's specimens are not this one's
        self._store_shown = store

    def _forget_layers(self) -> None:
        """Remove the layers of the store counted before (specimens, frame, overview)."""
        for name in (SPECIMENS_LAYER, UNCERTAIN_LAYER, FRAME_LAYER, OVERVIEW_LAYER):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        self._shown, self._mosaic, self._overview_key = [], None, None
        self._tally, self._n_unsure, self._n_uncertain = {}, 0, 0
        self.table.setRowCount(0)
        self._fit_table()

    def _update_buttons(self) -> None:
        running = self.runner.busy()
        ready = self.counter is not None and self.counter.sample_id is not None and not running
        self.connect_button.setEnabled(not running)
        self.sample_button.setEnabled(self.counter is not None and not running)
        for b in (self.snap_button, self.live_button, self.scan_button):
            b.setEnabled(ready)
        caps = self.counter.capabilities if self.counter is not None else None
        if caps is not None:
            # What needs a missing part is off, its tooltip says why in one sentence.
            no_scan = [n for n in caps.notes if not n.startswith("No Z")]
            self.scan_button.setEnabled(ready and caps.can_scan)
            self.scan_button.setToolTip(no_scan[0] if not caps.can_scan and no_scan else "")
            self.z_planes.setEnabled(caps.can_z_stack)
            no_z = [n for n in caps.notes if n.startswith("No Z")]
            self.z_planes.setToolTip(no_z[0] if no_z else "")
        self.stop_button.setEnabled(running)
        self.pause_button.setEnabled(running)
        self.controls.set_counting(running)

    def _redraw(self, everything: bool = False) -> None:
        """Draw what arrived since the last redraw: the newest frame, new specimens.

        The frame and the specimens are drawn on alternate ticks, so that one tick never
        pays for both (each costs tens of ms with software OpenGL). `everything` draws
        both now (at the end of an acquisition).
        """
        counter = self.counter
        if counter is not None and not self.runner.busy() and counter.viewing_live():
            frame = counter.viewed_frame()  # pymmcore-widgets' Live: shown, not counted
            if frame is not None:
                self._mosaic = None
                self._show_camera_frame(frame)
        if counter is not None:
            s = counter.stats()
            self.rate_label.setText(
                f"{s['frames_per_s']:.1f} frames/s | backlog {int(s['backlog'])} | "
                f"dropped {int(s['dropped'])}"
            )
        if self._specimens_stale and not everything:
            self._show_specimens((self._specimens_stale.pop(0),))
            return  # the frame waits for the next tick
        if not self._pending:
            return
        batch, self._pending[:] = list(self._pending), []
        self._show_frames(batch)
        if self._scan_total:
            self._scan_done += len(batch)
            self._show_scan_progress()
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
            # New rows are unreviewed: the tally's rule for "uncertain" is entropy alone.
            uncertain_rows = stats.unreviewed_high_entropy_mask(p.entropy)
            for j, row in enumerate(r.new_rows):
                x, y = r.sample_xy_um[row]
                if not np.isfinite(x):  # no stage position: place it in frame pixels
                    y, x = r.detections.centroid[row]
                k = int(p.class_index[j])
                diam = float(r.detections.equivalent_diameter_px[row]) * px
                uncertain = bool(uncertain_rows[j])
                prob = float(p.mean_probs[j].max())
                self._shown.append(Shown(y, x, names[k], prob, uncertain, diam, bool(unsure[j])))
                self._n_uncertain += uncertain
                if unsure[j]:
                    self._n_unsure += 1
                else:
                    self._tally[names[k]] = self._tally.get(names[k], 0) + 1
        self._specimens_stale = [SPECIMENS_LAYER, UNCERTAIN_LAYER]
        self._refresh_tally()
        if everything:
            self._specimens_stale = []
            self._show_specimens()

    def _reload_tally(self) -> None:
        """The table's counts from the store's `sample_summary` (unsure rule applied)."""
        if self.counter is None:
            return
        summary = self.counter.summary()
        names = list(self.counter.store.class_names)
        if summary is None:
            self._tally, self._n_unsure, self._n_uncertain = dict.fromkeys(names, 0), 0, 0
            return
        self._tally = {n: int(c) for n, c in zip(names, summary["counts"], strict=True)}
        self._n_unsure = int(summary["n_unsure"])
        self._n_uncertain = int(summary["n_uncertain"])

    def _refresh_tally(self) -> None:
        """The table: the tally widget's rows (`tally_table` of `stats.assemblage`, the
        numbers of the CSV and the plot too), count and % of forams, and the uncertain.
        """
        from napari_foram.widgets.tally import tally_table

        if self.counter is None:
            return
        names = list(self.counter.store.class_names)
        target = self.counter.target_count
        numbers = stats.assemblage(
            np.array([self._tally.get(n, 0) for n in names]),
            names,
            n_unsure=self._n_unsure,
            target=target,
        )
        self.target_bar.setRange(0, target)
        self.target_bar.setValue(min(numbers["total_forams"], target))
        table = tally_table(numbers, names)
        rows = [(name, r[0], r[1]) for name, r in zip(table["index"], table["data"], strict=True)]
        # After "unsure", before the totals (the last row stays "total objects").
        rows.insert(len(names) + 1, (UNCERTAIN_ROW, self._n_uncertain, ""))
        self.table.setRowCount(len(rows))
        for row, cells in enumerate(rows):
            for col, value in enumerate(cells):
                text = str(value).replace("_", " ") if col == 0 else str(value)
                item = QTableWidgetItem(text)
                item.setToolTip(text)
                self.table.setItem(row, col, item)
        self._fit_table()

    def closeEvent(self, event: Any) -> None:  # Qt names it
        """Stop the acquisition, wait for the worker and release the store when the widget
        goes away: no thread of it outlives it.
        """
        self.shutdown()
        super().closeEvent(event)

    def event(self, event: QEvent | None) -> bool:  # Qt names it
        """Release the store when napari takes this widget out of its dock."""
        # napari removes a dock by taking the widget out of it (no close): released then.
        # Docked, the napari window is watched too: closing napari closes no dock widget.
        if event is not None and event.type() == QEvent.Type.ParentChange:
            if self.parent() is None and self._was_docked:
                self.shutdown()
            elif self.parent() is not None:
                self._was_docked = True
                window = self.window()
                if window is not None and window is not self and window is not self._watched:
                    window.installEventFilter(self)
                    self._watched = window
        return super().event(event)

    def eventFilter(self, watched: QObject | None, event: QEvent | None) -> bool:  # Qt
        """Release the store when the watched napari window closes."""
        if watched is self._watched and event is not None and event.type() == QEvent.Type.Close:
            self.shutdown()
        return super().eventFilter(watched, event)

    def shutdown(self) -> None:
        """What `closeEvent` does (idempotent): the acquisition stopped, the worker
        joined, the microscope let go and the store's writer lock released.
        """
        if self._shut:
            return
        self._timer.stop()
        self._disconnect_viewer()
        self._activity.close()
        self.controls.unbind()
        self._release()

    def _release(self) -> None:
        """The part of `shutdown` that needs no Qt object of the widget: it also runs
        when napari deletes the widget without closing it (`viewer.close()`).
        """
        if self._shut:
            return
        self._shut = True
        if self.counter is not None:
            self.counter.stop()
        self.runner.close(30)
        if self.counter is not None:
            self.counter.close()
            self.counter = None
        if self._torch_threads is not None:
            from napari_foram.classify.predict import set_cpu_threads

            set_cpu_threads(self._torch_threads)


def open_live_viewer(title: str, **widget_options: Any) -> LiveWidget:
    """A napari window with Foram live docked on the right (what `napari-foram demo` and
    `napari-foram live` open); `widget_options` go to `LiveWidget`. Start the event loop
    with ``napari.run()``.
    """
    import napari

    viewer = napari.Viewer(title=title)
    widget = LiveWidget(viewer, **widget_options)
    viewer.window.add_dock_widget(widget, name="Foram live", area="right")
    return widget


def _micromanager_core(viewer: Any) -> Any:
    """The core of napari-micromanager's window docked in `viewer` (None without one)."""
    window = getattr(getattr(viewer, "window", None), "_qt_window", None)
    if window is None:
        return None
    for child in window.findChildren(QWidget):
        if type(child).__module__.startswith("napari_micromanager") and hasattr(child, "core"):
            return child.core
    return None
