"""Foram counter: scan a tray, count and classify as frames arrive, watch the tally grow.

A thin Qt widget. The work (microscope, detection, classification, store) is the same
Qt-free code the headless demo runs (`napari_foram.demo.prepare_demo_run`), executed on a
background thread; results come back to the GUI thread through a Qt signal, so the
acquisition never waits for drawing and the GUI never waits for the acquisition.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    import napari
    import napari.viewer

    from napari_foram.demo import DemoRun
    from napari_foram.pipeline import FrameResult


_SpinT = TypeVar("_SpinT", QSpinBox, QDoubleSpinBox)


def _spin(box: _SpinT, low: float, high: float, value: float, step: float = 1) -> _SpinT:
    """Configure a spin box (PyQt6's stubs take no property keywords)."""
    box.setRange(low, high)  # type: ignore[arg-type]
    box.setSingleStep(step)  # type: ignore[arg-type]
    box.setValue(value)  # type: ignore[arg-type]
    return box


def _status_progress(bridge: _Bridge) -> Callable[[int, int, str], None]:
    """A (done, total, message) callback that shows demo-model training in the status."""

    def report(done: int, total: int, message: str = "") -> None:
        bridge.status.emit(f"demo model: {message} ({done}/{total})")

    return report


class _Bridge(QObject):
    """Carries events from the worker thread to the GUI thread (queued connections)."""

    result = Signal(object)
    status = Signal(str)
    progress = Signal(int, int)
    finished = Signal(object)


class CounterWidget(QWidget):
    """Scan the built-in simulated microscope's tray and count it, live."""

    def __init__(
        self,
        napari_viewer: napari.viewer.Viewer,
        *,
        seed: int = 7,
        mc_samples: int = 30,
        runs_dir: str | Path | None = None,
        model: str | Path = "demo",
        camera_shape: tuple[int, int] = (972, 1296),
        specimens: int = 45,
        touching_pairs: int = 2,
    ) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.model = model
        self.camera_shape = camera_shape
        self.specimens = specimens
        self.touching_pairs = touching_pairs
        self.runs_dir = Path(runs_dir) if runs_dir else Path.home() / "napari-foram-runs"
        self.results: list[FrameResult] = []
        self.run: DemoRun | None = None
        self.report: Any = None
        self._thread: threading.Thread | None = None
        self._bridge = _Bridge()
        self._bridge.result.connect(self._on_result)
        self._bridge.status.connect(self._on_status)
        self._bridge.progress.connect(self._on_progress)
        self._bridge.finished.connect(self._on_finished)

        self.seed = _spin(QSpinBox(), 0, 1_000_000, seed)
        self.rows = _spin(QSpinBox(), 1, 20, 3)
        self.cols = _spin(QSpinBox(), 1, 20, 3)
        self.overlap = _spin(QDoubleSpinBox(), 0.0, 0.6, 0.25, step=0.05)
        self.mc = _spin(QSpinBox(), 1, 1000, mc_samples)
        form = QFormLayout()
        form.addRow("tray seed", self.seed)
        form.addRow("fields (rows)", self.rows)
        form.addRow("fields (columns)", self.cols)
        form.addRow("field overlap", self.overlap)
        form.addRow("MC dropout passes", self.mc)

        self.start_button = QPushButton("Scan simulated tray")
        self.start_button.clicked.connect(self.start_scan)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop_scan)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)

        self.progress_bar = QProgressBar()
        self.status_label = QLabel("ready")
        self.status_label.setWordWrap(True)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["class", "count", "%"])
        header = self.table.verticalHeader()
        if header is not None:
            header.setVisible(False)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(self.table)
        layout.addStretch(1)

    # ------------------------------------------------------------------ control
    def start_scan(self) -> None:
        """Start a scan on a background thread (no-op while one is running)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self.results = []
        self.report = None
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        store_path = self.runs_dir / f"scan-{stamp}.zarr"
        args = (
            int(self.seed.value()),
            int(self.mc.value()),
            int(self.rows.value()),
            int(self.cols.value()),
            float(self.overlap.value()),
            store_path,
        )
        self._thread = threading.Thread(
            target=self._work, args=args, daemon=True, name="napari-foram-scan"
        )
        self._thread.start()

    def stop_scan(self) -> None:
        """Ask the running scan to stop after the current frame."""
        if self.run is not None:
            self.run.session.stop()
            self._on_status("stopping...")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker thread ends (tests and scripts); True if it ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ worker thread
    def _work(
        self, seed: int, mc: int, rows: int, cols: int, overlap: float, store_path: Path
    ) -> None:
        from napari_foram.demo import DemoScan, prepare_demo_run

        bridge = self._bridge
        try:
            bridge.status.emit("preparing the classifier and the simulated tray...")
            scan = DemoScan(
                rows=rows,
                cols=cols,
                overlap_fraction=overlap,
                camera_shape=self.camera_shape,
                specimens=self.specimens,
                touching_pairs=self.touching_pairs,
            )
            run = prepare_demo_run(
                store_path,
                seed=seed,
                mc_samples=mc,
                scan=scan,
                model=self.model,
                progress=_status_progress(bridge),
            )
            self.run = run
            bridge.status.emit(f"scanning {rows} x {cols} fields into {store_path}")
            n_fields = rows * cols

            def field_done(done: int, message: str = "") -> None:
                bridge.progress.emit(done, n_fields)

            report = run.scan(on_result=bridge.result.emit, progress=field_done)
            bridge.finished.emit(report)
        except Exception as exc:  # shown to the user, not swallowed
            bridge.finished.emit(exc)

    # ------------------------------------------------------------------ GUI thread
    def _on_status(self, text: str) -> None:
        self.status_label.setText(text)

    def _on_progress(self, done: int, total: int) -> None:
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(done)

    def _on_result(self, result: FrameResult) -> None:
        from napari_foram.widgets.layers import show_results

        self.results.append(result)
        if self.run is None:
            return
        self.run.mosaic.paste(result.frame)
        show_results(self.viewer, self.results, self.class_names, mosaic=self.run.mosaic)
        if len(self.results) == 1:
            self.viewer.reset_view()
        self._refresh_table()

    def _on_finished(self, outcome: object) -> None:
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        if isinstance(outcome, Exception):
            self.status_label.setText(f"scan failed: {outcome}")
            self.report = outcome
            return
        self.report = outcome
        counted = sum(len(r.new_rows) for r in self.results)
        error = getattr(outcome, "error", None)
        where = self.run.store_path if self.run is not None else ""
        self.status_label.setText(
            f"{counted} specimens counted in {len(self.results)} frames; store: {where}"
            + (f"; camera error: {error}" if error else "")
        )

    @property
    def class_names(self) -> list[str]:
        return list(self.run.class_names) if self.run is not None else []

    def tally(self) -> dict[str, int]:
        """Counts per class of everything counted so far."""
        counts = dict.fromkeys(self.class_names, 0)
        for r in self.results:
            if r.predictions is not None:
                for c in r.predictions.class_index:
                    counts[self.class_names[int(c)]] += 1
        return counts

    def _refresh_table(self) -> None:
        counts = self.tally()
        total = sum(counts.values()) or 1
        self.table.setRowCount(len(counts) + 1)
        for row, (name, n) in enumerate([*counts.items(), ("total", sum(counts.values()))]):
            self.table.setItem(row, 0, QTableWidgetItem(name.replace("_", " ")))
            self.table.setItem(row, 1, QTableWidgetItem(str(n)))
            pct = "" if name == "total" else f"{100.0 * n / total:.1f}"
            self.table.setItem(row, 2, QTableWidgetItem(pct))
