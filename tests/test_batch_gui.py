"""Batch folders as a user meets it: many files with "show each file" on, in a real napari.

Issue 15: the widget removed and re-added its layers for every file and napari/vispy
segfaulted mid-run. Now the layers are made once and updated in place; this runs 50 tiny
files of mixed kinds (grey, RGB, 16-bit, two shapes) through a real viewer under Xvfb.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

from napari_foram.batch import BatchReport
from napari_foram.synthetic import render_tray

N_FILES = 50


def _folder(root: Path) -> Path:
    """50 files in two samples; one in ten holds a specimen (VGG16 costs ~0.2 s a crop
    on two cores), the rest are empty trays of varied kind and shape.
    """
    folder = root / "trays"
    for sample in ("S1", "S2"):
        (folder / sample).mkdir(parents=True)
    for i in range(N_FILES):
        sample = "S1" if i % 2 else "S2"
        shape = (128, 160) if i % 3 else (144, 128)
        n = 1 if i % 10 == 0 else 0
        image = render_tray(
            i, shape=shape, n_specimens=n, clipped=False, touching_pairs=0, border=False
        ).image
        kind = i % 4
        if kind == 0:
            iio.imwrite(folder / sample / f"f{i:02d}.png", image)
        elif kind == 1:
            iio.imwrite(folder / sample / f"f{i:02d}.png", image.mean(axis=2).astype(np.uint8))
        elif kind == 2:  # a dim 16-bit camera: values 700-5900 of 65535
            dim = (700 + image.astype(np.uint16) * 20).astype(np.uint16)
            tifffile.imwrite(folder / sample / f"f{i:02d}.tif", dim)
        else:
            iio.imwrite(folder / sample / f"f{i:02d}.png", image)
            iio.imwrite(folder / sample / f"f{i:02d}_labels.png", image[..., 0] > 250)
    return folder


def test_batch_of_50_files_shown_one_by_one_survives(
    make_napari_viewer, qtbot, random_checkpoint, tmp_path
):
    from napari_foram.widgets.batch import FRAME_LAYER, SPECIMENS_LAYER, BatchWidget

    folder = _folder(tmp_path)
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-foram", "Batch folders")
    assert isinstance(widget, BatchWidget)
    assert widget.follow.isChecked()  # the default that crashed
    removed: list[str] = []
    viewer.layers.events.removed.connect(lambda e: removed.append(e.value.name))
    drawn: list[str] = []
    frame_layers = set()

    def watch(event) -> None:
        if event.value.name == FRAME_LAYER:
            frame_layers.add(id(event.value))

    viewer.layers.events.inserted.connect(watch)
    widget.folder_edit.setText(str(folder))
    widget.store_edit.setText(str(tmp_path / "many.zarr"))
    widget.model_edit.setText(str(random_checkpoint))
    widget.mc.setValue(1)
    widget.start()

    def file_shown() -> bool:
        if FRAME_LAYER in viewer.layers:
            name = viewer.layers[FRAME_LAYER].metadata["file"]
            if not drawn or drawn[-1] != name:
                drawn.append(name)
        return widget.report is not None

    qtbot.waitUntil(file_shown, timeout=300_000)
    assert isinstance(widget.report, BatchReport), widget.report
    assert widget.progress_bar.value() == widget.progress_bar.maximum() == N_FILES
    # Made once, updated in place: no layer of the widget was ever removed.
    assert removed == []
    assert len(frame_layers) == 1
    assert len(drawn) > 1  # files really were shown one after another
    layer = viewer.layers[FRAME_LAYER]
    assert layer.rgb and layer.data.dtype == np.uint8
    # The last file counted is the one shown, with its specimens.
    last = layer.metadata["file"]
    assert viewer.layers[SPECIMENS_LAYER].metadata["file"] == last
    # The dim 16-bit frames are stretched for display, not black.
    widget._show_selected(
        next(i for i in range(widget.frames.count()) if widget.frames.itemText(i).endswith(".tif"))
    )
    qtbot.waitUntil(lambda: layer.metadata["file"].endswith(".tif"), timeout=20_000)
    assert np.percentile(layer.data, 99) > 150
    # Label images beside the frames are not counted.
    assert all("_labels" not in widget.frames.itemText(i) for i in range(widget.frames.count()))
    assert widget.frames.count() == N_FILES
    # Closing the widget leaves no thread of it running.
    runner = widget.runner
    widget.close()
    assert runner.threads() == []
