"""The main job end to end: simulated microscope -> MDA scan -> pipeline -> store -> export.

A random-weight VGG16 stands in for the demo model here (classes are then arbitrary), so
the tests check what does not depend on training: every specimen counted exactly once
across overlapping fields, nothing lost on the way to the store and the CSV.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from napari_foram.demo import DemoScan, run_headless_demo
from napari_foram.synthetic import CLASSES

# 2 x 2 fields of 486 x 648 px: overlap 0.45 x 486 = 219 px > the largest specimen (200 px).
# No touching pairs here: the detector keeps a touching pair as one object by default.
SMALL_SCAN = DemoScan(
    rows=2, cols=2, camera_shape=(486, 648), overlap_fraction=0.45, specimens=8, touching_pairs=0
)


@pytest.mark.acquisition
def test_headless_demo_counts_every_specimen_once(tmp_path, random_checkpoint):
    out = tmp_path / "out"
    summary = run_headless_demo(
        out, seed=3, mc_samples=3, progress=False, scan=SMALL_SCAN, model=random_checkpoint
    )
    for key in ("store", "csv", "plot", "screenshot", "summary"):
        assert (out / summary["files"][key].split("/")[-1]).exists(), key
    assert summary["frames_acquired"] == summary["frames_processed"] == 4
    assert summary["truth_whole"] > 0
    # Exactly the ground truth: all found, none twice, nothing false.
    assert summary["matched"] == summary["truth_whole"] == summary["found_whole"]
    assert summary["false_detections"] == 0
    assert summary["duplicates_suppressed"] > 0  # the overlap saw some specimens twice
    assert summary["centroid_error_um"]["max"] < 30
    assert json.loads((out / "summary.json").read_text())["found_whole"] == summary["found_whole"]

    from napari_foram.tally.store import TallyStore

    store = TallyStore.open(out / "tally.zarr", mode="r")
    assert store.n_specimens("DEMO-001") == summary["found_whole"]
    assert int(store.counts("DEMO-001").sum()) == summary["found_whole"]
    crops = store.read_crops("DEMO-001")
    assert crops.shape == (summary["found_whole"], 224, 224, 3) and crops.max() > 0

    with (out / "tally.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["sample_id"] == "DEMO-001"
    counted = sum(int(float(rows[0][f"count_{c}"])) for c in CLASSES)
    assert counted == summary["found_whole"] == int(rows[0]["total_objects"])


@pytest.mark.acquisition
def test_camera_failure_mid_scan_keeps_what_was_counted(tmp_path, random_checkpoint):
    from napari_foram.classify.loading import load_predictor
    from napari_foram.demo_scene import SimulatedMicroscopeRig, make_demo_world
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession
    from napari_foram.tally.store import SampleRecord, TallyStore

    world = make_demo_world(3, SMALL_SCAN)
    tray = SimulatedMicroscopeRig(world, camera_shape=SMALL_SCAN.camera_shape, fail_after_frames=2)
    predictor = load_predictor(random_checkpoint, progress=False)
    store = TallyStore.create(tmp_path / "s.zarr", classes=list(CLASSES))
    store.add_sample(SampleRecord("S1"))
    pipeline = CountingPipeline(predictor, store=store, sample_id="S1", mc_samples=2)
    report = CountingSession(pipeline).scan(tray.core, tray.grid_sequence(2, 2, 0.45))
    store.close()
    assert report.frames_acquired == 2 and report.frames_processed == 2
    assert report.error and "\n" not in report.error
    reopened = TallyStore.open(tmp_path / "s.zarr", mode="r")
    assert reopened.n_specimens("S1") == pipeline.specimens_counted


@pytest.mark.gui
@pytest.mark.acquisition
def test_gui_demo_connects_starts_a_sample_and_scans(
    make_napari_viewer, qtbot, tmp_path, random_checkpoint
):
    """What `napari-foram demo` does with a display: one call, a counted tray."""
    from napari_foram.widgets.live import SPECIMENS_LAYER, LiveWidget

    viewer = make_napari_viewer()
    widget = LiveWidget(
        viewer,
        seed=3,
        mc_samples=2,
        store_path=tmp_path / "demo.zarr",
        model=random_checkpoint,
        camera_shape=(486, 648),
        specimens=8,
        device="cpu",
    )
    qtbot.addWidget(widget)
    widget.rows.setValue(2)
    widget.cols.setValue(2)
    widget.overlap.setValue(0.45)
    widget.start_demo()
    qtbot.waitUntil(lambda: "scan" in widget.last_outcome, timeout=120_000)
    report = widget.last_outcome["scan"]
    assert not isinstance(report, Exception), report
    assert widget.counter is not None and widget.counter.sample_id == "DEMO-001"
    counted = widget.counter.store.n_specimens("DEMO-001")
    assert counted > 0
    assert len(viewer.layers[SPECIMENS_LAYER].data) == counted
    assert (viewer.layers[SPECIMENS_LAYER].size > 50).all()  # sized by specimen (um)
    assert viewer.layers["tray overview"].data.max() > 0
    total_row = widget.table.rowCount() - 1
    assert widget.table.item(total_row, 1).text() == str(counted)
    assert "4 frames processed" in widget.status_label.text()
    assert np.isfinite(viewer.layers[SPECIMENS_LAYER].data).all()
    widget.close()
