"""The napari side: manifest, widgets and sample data in a real viewer (under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_manifest_found_through_entry_point_and_valid():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-foram")
    assert manifest.name == "napari-foram"
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert {"Foram live", "Detection preview", "Foram tally", "Batch folders"} <= widgets
    samples = {s.key for s in manifest.contributions.sample_data}
    assert {"tray", "crops"} <= samples
    # Every command's python_name resolves to a real callable.
    import importlib

    for command in manifest.contributions.commands:
        module, _, attr = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), command.id


def test_napari_lists_the_plugin():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    assert "napari-foram" in pm._manifests


def _disc_image():
    yy, xx = np.mgrid[:500, :700]
    img = np.full((500, 700), 20, np.uint8)
    for cy, cx in [(120, 150), (300, 420), (400, 600)]:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 35**2] = 200
    return img


def test_detection_preview_widget_shows_detections(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    layer = viewer.add_image(_disc_image(), name="frame")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-foram", "Detection preview")
    # It runs as soon as it opens on an image (issue 15: it waited for a control change).
    assert widget._image.value is layer
    qtbot.waitUntil(lambda: "specimens" in widget.result.value, timeout=20_000)
    assert not widget._threshold.enabled  # Otsu mode: the slider does nothing
    widget._auto.value = False
    assert widget._threshold.enabled
    widget._auto.value = True
    widget._border.value = False
    qtbot.waitUntil(lambda: "3 specimens" in widget.result.value, timeout=20_000)
    assert len(viewer.layers["specimen centres"].data) == 3
    labels = viewer.layers["detections"]
    assert labels.data.max() == 3
    # Tuning a parameter re-runs the detector: a huge minimum area finds nothing. Quick
    # changes are debounced into one run, off the GUI thread, on the last value.
    for area in (50_000, 80_000, 100_000):
        widget._min_area.value = area
    assert widget.result.value == "detecting..."  # the GUI thread did not wait
    qtbot.waitUntil(lambda: "0 specimens" in widget.result.value, timeout=20_000)
    assert "min area 100000 px" in widget.result.value
    assert len(viewer.layers["specimen centres"].data) == 0  # updated in place
    widget.wait(10)


@pytest.mark.parametrize(("key", "n_layers"), [("tray", 3), ("crops", 1)])
def test_sample_data_opens_in_viewer(make_napari_viewer, key, n_layers):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-foram", key)
    assert len(viewer.layers) == n_layers
    if key == "tray":
        image, labels, points = viewer.layers
        assert image.rgb and image.data.shape[2] == 3
        assert labels.data.max() == len(points.data) > 0
        assert set(points.features["class"]) <= {
            "planktic",
            "calcareous_benthic",
            "agglutinated_benthic",
            "sediment",
        }
    else:
        crops = viewer.layers[0]
        assert crops.data.shape[1:] == (224, 224, 3)
        assert len(crops.metadata["class_names"]) == crops.data.shape[0]


def test_committed_sample_files_match_the_renderer():
    """sample_data/ must be what scripts/make_sample_data.py makes from today's renderer."""
    import json

    from napari_foram._sample_data import render_sample_tray, sample_data_dir
    from napari_foram.frames import read_image

    folder = sample_data_dir()
    assert folder is not None
    image, labels, truth, _ = render_sample_tray()
    assert np.array_equal(read_image(folder / "tray_labels.png"), labels)
    meta = json.loads((folder / "tray.json").read_text())
    assert len(meta["specimens"]) == len(truth)
    # JPEG is lossy: the picture agrees on average, not bit for bit.
    assert np.abs(read_image(folder / "tray.jpg").astype(int) - image).mean() < 6


def test_npe2_validate_passes():
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("npe2") or str(Path(sys.executable).parent / "npe2")
    proc = subprocess.run(
        [exe, "validate", "napari-foram"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout


_CANVAS_FIRST = """
import sys
import numpy as np
import napari
viewer = napari.Viewer(show=True)
viewer.add_image(np.random.default_rng(0).random((64, 64)))
viewer.screenshot(canvas_only=True)  # the canvas is drawn: Mesa's LLVM is loaded now
# What napari does when the user opens our widget after the canvas exists:
viewer.window.add_plugin_dock_widget("napari-foram", "Foram live")
assert "torch" not in sys.modules, "opening the widget must not import torch"
# ... and what a scan does next. Without the guard in napari_foram/__init__.py this
# import segfaults here (checked by hand with NAPARI_FORAM_ASSUME_CUDA=1).
import torch
import torchvision
import torch._dynamo
from napari_foram.classify.model import build_model
model = build_model(4, backbone_weights="none")
viewer.close()
print("survived", type(model).__name__)
"""


def test_torch_after_napari_canvas_does_not_crash():
    """The triton/Mesa segfault (docs/architecture.md) cannot happen through the plugin."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _CANVAS_FIRST], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "survived FORAMNet" in proc.stdout


def test_detection_preview_lies_on_a_scaled_image(make_napari_viewer, qtbot):
    # The plugin's own sample tray is in micrometres (2.5 um/px): the preview must take
    # the image's scale and translate, not draw in pixels at the origin.
    viewer = make_napari_viewer()
    layer = viewer.add_image(
        _disc_image(), name="frame", scale=(2.5, 2.5), translate=(100.0, -40.0)
    )
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-foram", "Detection preview")
    widget._border.value = False
    widget._image.value = layer
    qtbot.waitUntil(lambda: "3 specimens" in widget.result.value, timeout=20_000)
    points = viewer.layers["specimen centres"]
    assert tuple(points.scale) == (2.5, 2.5)
    assert tuple(points.translate) == (100.0, -40.0)
    # In world coordinates the centres fall on the discs drawn in the image.
    world = np.asarray(points.data) * 2.5 + np.array([100.0, -40.0])
    discs = np.array([(120, 150), (300, 420), (400, 600)]) * 2.5 + np.array([100.0, -40.0])
    for centre in discs:
        assert np.min(np.linalg.norm(world - centre, axis=1)) < 2.5 * 3
    labels = viewer.layers["detections"]
    work = labels.scale[-1] / 2.5  # the working scale, on top of the image's
    assert work >= 1 and tuple(labels.scale) == (2.5 * work, 2.5 * work)
    assert tuple(labels.translate) == (100.0, -40.0)
    # The extent of the labels matches the image's, in world units.
    assert np.allclose(labels.extent.world[1], layer.extent.world[1], atol=2.5 * work)
