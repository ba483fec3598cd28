"""Screenshot of the Foram live widget after a real scan of the simulated tray.

Run under a display (e.g. ``xvfb-run -a .venv/bin/python scripts/live_screenshot.py``):
opens napari, docks the widget, connects the simulated microscope, starts a sample,
scans 3 x 3 fields with the demo model and saves docs/images/live_widget.png (the
window at 1366 x 768, a laptop's screen).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import napari
from qt_wait import wait_for
from qtpy.QtWidgets import QApplication

from napari_foram.widgets.live import LiveWidget

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "live_widget.png"


def main() -> None:
    viewer = napari.Viewer(title="napari-foram live")
    viewer.window.resize(1366, 768)  # a laptop screen: the dock must fit it
    with tempfile.TemporaryDirectory() as tmp:
        widget = LiveWidget(viewer, mc_samples=30, store_path=Path(tmp) / "live.zarr")
        viewer.window.add_dock_widget(widget, name="Foram live", area="right")
        widget.connect_microscope()
        wait_for(lambda: "connect" in widget.last_outcome, 600)
        widget.sample_fields["sample_id"].setText("U1308A-12H-3-W-45")
        widget.sample_fields["site_hole"].setText("U1308A")
        widget.sample_fields["depth"].setText("104.55")
        widget.start_sample()
        widget.start_scan()
        wait_for(lambda: "scan" in widget.last_outcome, 600)
        viewer.reset_view()
        for _ in range(20):
            QApplication.instance().processEvents()
            time.sleep(0.05)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(OUT), canvas_only=False, flash=False)
        print(f"{widget.status_label.text()}\nwrote {OUT}")
        widget.close()
    viewer.close()


if __name__ == "__main__":
    main()
