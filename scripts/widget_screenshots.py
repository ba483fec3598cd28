"""Screenshots of Batch folders, Foram tally and Detection preview from real runs.

Run under a display, e.g.::

    xvfb-run -a -s "-screen 0 1400x800x24" .venv/bin/python scripts/widget_screenshots.py

Writes synthetic trays into a temporary folder (two samples), counts them with the Batch
folders widget ("show each file" on, the cached demo model), opens the store in Foram
tally, then previews the detector on the plugin's sample tray; each in a 1366 x 768
window, saved to docs/images/{batch,tally,detection}_widget.png.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import imageio.v3 as iio
import napari
from qt_wait import settle, wait_for

from napari_foram.synthetic import render_tray

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
WINDOW = (1366, 768)


def batch_and_tally(tmp: Path) -> None:
    folder = tmp / "trays"
    for sample, seeds in (("U1308A-12H-3", (1, 2, 3)), ("U1308A-12H-4", (4, 5, 6))):
        (folder / sample).mkdir(parents=True)
        for seed in seeds:
            tray = render_tray(seed, shape=(648, 864), n_specimens=14, touching_pairs=0)
            iio.imwrite(folder / sample / f"tray_{seed}.png", tray.image)
    viewer = napari.Viewer(title="napari-foram batch")
    viewer.window.resize(*WINDOW)
    _, batch = viewer.window.add_plugin_dock_widget("napari-foram", "Batch folders")
    batch.folder_edit.setText(str(folder))
    batch.store_edit.setText(str(tmp / "trays_tally.zarr"))
    batch.mc.setValue(10)
    batch.start()
    wait_for(lambda: batch.report is not None, 900)
    print(batch.status_label.text())
    viewer.reset_view()
    settle()
    viewer.screenshot(str(IMAGES / "batch_widget.png"), canvas_only=False, flash=False)
    batch.close()
    viewer.close()

    viewer = napari.Viewer(title="napari-foram tally")
    viewer.window.resize(*WINDOW)
    # The store through the plugin's reader (its crops stacks), and its tally.
    viewer.open(str(tmp / "trays_tally.zarr"), plugin="napari-foram")
    _, tally = viewer.window.add_plugin_dock_widget("napari-foram", "Foram tally")
    tally.set_store(tmp / "trays_tally.zarr")
    settle()
    print(tally.summary_label.value)
    viewer.screenshot(str(IMAGES / "tally_widget.png"), canvas_only=False, flash=False)
    viewer.close()


def detection() -> None:
    viewer = napari.Viewer(title="napari-foram detection preview")
    viewer.window.resize(*WINDOW)
    viewer.open_sample("napari-foram", "tray")
    _, widget = viewer.window.add_plugin_dock_widget("napari-foram", "Detection preview")
    wait_for(lambda: "specimens," in widget.result.value, 120)
    viewer.reset_view()
    settle()
    print(widget.result.value)
    viewer.screenshot(str(IMAGES / "detection_widget.png"), canvas_only=False, flash=False)
    viewer.close()


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        batch_and_tally(Path(tmp))
    detection()
    print(f"wrote {IMAGES}/{{batch,tally,detection}}_widget.png")


if __name__ == "__main__":
    main()
