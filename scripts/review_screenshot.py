"""Screenshot of the Foram review widget after a real count and a few key presses.

Run under a display, e.g.::

    xvfb-run -a -s "-screen 0 1600x1100x24" .venv/bin/python scripts/review_screenshot.py

Renders a synthetic tray frame, counts it into a fresh tally store with the counting
pipeline (detector + the cached demo model, trained at first use; MC dropout, 30 passes),
opens napari with the tray frame at its stage position, docks the review widget, reviews
a few specimens by key presses as a person would (most uncertain first), shows the
current one in the frame and saves docs/images/review_widget.png (quantised to a palette
when larger than 300 kB).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import napari
from qt_wait import settle
from qtpy.QtCore import Qt
from qtpy.QtTest import QTest

from napari_foram.classify.loading import load_predictor
from napari_foram.frames import Frame
from napari_foram.pipeline import CountingPipeline
from napari_foram.synthetic import render_tray
from napari_foram.tally import SampleRecord, TallyStore
from napari_foram.widgets.review import ReviewWidget

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "review_widget.png"
SAMPLE = "U1308A-12H-3-W-45"
MAX_BYTES = 300_000


def count_tray(store_path: Path) -> Frame:
    """Count one synthetic tray frame into a new store; the frame."""
    tray = render_tray(11, shape=(972, 1296), n_specimens=28, touching_pairs=0)
    frame = Frame(
        image=tray.image,
        stage_xy_um=(5000.0, 3000.0),
        pixel_size_um=tray.pixel_size_um,
        source="synthetic tray 11",
    )
    import torch

    torch.manual_seed(0)  # the same MC-dropout draws, so the same picture, on every run
    predictor = load_predictor("demo", device="cpu")
    with TallyStore.create(store_path, classes=list(predictor.class_names)) as store:
        store.add_sample(SampleRecord(SAMPLE, site_hole="U1308A", depth=104.55))
        pipeline = CountingPipeline(predictor, store=store, sample_id=SAMPLE, mc_samples=30)
        # One field, no `finish`: specimens cut by the frame edge are not counted (as in
        # live view).
        result = pipeline.process(frame)
    print(f"counted {len(result.new_rows)} specimens")
    return frame


def main() -> None:
    viewer = napari.Viewer(title="napari-foram review")
    viewer.window.resize(1560, 1060)
    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "tray.zarr"
        frame = count_tray(store_path)
        y0, x0 = frame.pixel_to_stage_um(0, 0)[::-1]  # type: ignore[index]
        px = float(frame.pixel_size_um or 1.0)
        viewer.add_image(
            frame.image, name="tray frame", rgb=True, scale=(px, px), translate=(y0, x0)
        )
        widget = ReviewWidget(viewer, store=store_path, reviewer="A. Reviewer", model="demo")
        widget.setMinimumWidth(470)
        viewer.window.add_dock_widget(widget, name="Foram review", area="right")
        settle(1.0)
        # A person's first minute: accept, relabel one (key 2), accept, mark one dubious,
        # reject a grain of debris, accept.
        for key in (Qt.Key.Key_A, Qt.Key.Key_2, Qt.Key.Key_A, Qt.Key.Key_D, Qt.Key.Key_A):
            QTest.keyClick(widget, key)
            settle(0.1)
        widget.show_in_frame()
        camera = viewer.scene.camera
        camera.zoom = camera.zoom * 0.45  # a wider look at the tray around the specimen
        settle(1.5)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(OUT), canvas_only=False, flash=False)
        print(widget.progress_label.text())
        print(widget.info_label.text())
        widget.close_store()
    viewer.close()
    shrink(OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size // 1000} kB)")


def shrink(path: Path) -> None:
    """Quantise the PNG to a 256-colour palette when it is larger than MAX_BYTES."""
    if path.stat().st_size <= MAX_BYTES:
        return
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(256)
    small.save(path, optimize=True)


if __name__ == "__main__":
    if "DISPLAY" not in os.environ and "WAYLAND_DISPLAY" not in os.environ:
        sys.exit("needs a display: run it under xvfb-run (see the docstring)")
    main()
