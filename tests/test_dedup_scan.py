"""Counted once: a tray scanned with little overlap, and one field watched live.

Specimens are real synthetic renders on a simulated microscope; the counts come from the
real pipeline (detector, registry, classifier with random weights, no store) and must equal
the ground truth exactly. Touching pairs are left out: the detector keeps a touching pair
as one object by default (see docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_foram.demo_scene import DemoScan, make_demo_world
from napari_foram.synthetic import CLASSES

pytestmark = pytest.mark.acquisition


@pytest.fixture
def predictor(random_predictor):
    return random_predictor


@pytest.mark.parametrize("overlap", [0.10, 0.30])
def test_tray_scan_with_small_overlap_counts_ground_truth(predictor, overlap):
    from napari_foram.demo_scene import SimulatedMicroscopeRig
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession

    # 3 x 3 fields of 400 x 500 px: at 10 % overlap (40 px) most specimens on a field
    # boundary are cut in both fields and must still be counted once.
    scan = DemoScan(
        rows=3,
        cols=3,
        camera_shape=(400, 500),
        overlap_fraction=overlap,
        specimens=14,
        touching_pairs=0,
    )
    world = make_demo_world(11, scan)
    tray = SimulatedMicroscopeRig(world, camera_shape=scan.camera_shape, seed=1)
    pipeline = CountingPipeline(predictor, mc_samples=1)
    results = []
    report = CountingSession(pipeline).scan(
        tray.core, tray.grid_sequence(3, 3, overlap), on_result=results.append
    )
    assert report.error is None and report.frames_processed == 9
    truth = [s for s in world.specimens if not s.clipped]
    counted = np.array([r.sample_xy_um[i] for r in results for i in r.new_rows])
    assert len(counted) == len(truth) == pipeline.specimens_counted
    # And each true specimen is matched by exactly one count.
    from napari_foram.point_matching import match_points

    truth_xy = np.array([tray.world_px_to_um(*s.centroid_yx) for s in truth])
    m = match_points(counted, truth_xy, np.array([s.diameter_um / 2 for s in truth]))
    assert m.matched == len(truth) and m.false == 0


def test_fifty_live_frames_of_one_field_count_each_specimen_once(predictor):
    from napari_foram.acquire import snap_frame
    from napari_foram.demo_scene import SimulatedMicroscopeRig
    from napari_foram.pipeline import CountingPipeline

    scan = DemoScan(
        rows=1,
        cols=1,
        camera_shape=(486, 648),
        overlap_fraction=0.0,
        specimens=6,
        touching_pairs=0,
    )
    world = make_demo_world(5, scan)
    tray = SimulatedMicroscopeRig(world, camera_shape=scan.camera_shape, seed=2)  # noisy camera
    pipeline = CountingPipeline(predictor, mc_samples=1)
    for i in range(50):
        pipeline.process(snap_frame(tray.core, index=i))
    # The field is the whole world here: every whole specimen in it, once.
    truth = [s for s in world.specimens if not s.clipped]
    assert pipeline.specimens_counted == len(truth) > 0
    assert pipeline.frames_processed == 50


def test_rescanning_a_stored_sample_resumes_without_recounting(predictor, tmp_path):
    from napari_foram.demo_scene import SimulatedMicroscopeRig
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession
    from napari_foram.tally.store import SampleRecord, TallyStore

    scan = DemoScan(
        rows=2,
        cols=2,
        camera_shape=(486, 648),
        overlap_fraction=0.45,
        specimens=8,
        touching_pairs=0,
    )
    world = make_demo_world(3, scan)
    tray = SimulatedMicroscopeRig(world, camera_shape=scan.camera_shape, seed=3)
    path = tmp_path / "resume.zarr"
    store = TallyStore.create(path, classes=list(CLASSES))
    store.add_sample(SampleRecord("S1"))
    store.set_provenance("S1", tray.describe())
    first = CountingPipeline(predictor, store=store, sample_id="S1", mc_samples=1)
    CountingSession(first).scan(tray.core, tray.grid_sequence(2, 2, 0.45))
    store.close()
    counted = first.specimens_counted
    assert counted == len([s for s in world.specimens if not s.clipped])

    # A crash or a second session: reopen, scan the same tray again.
    store = TallyStore.open(path, mode="a")
    again = CountingPipeline(predictor, store=store, sample_id="S1", mc_samples=1)
    assert again.specimens_resumed == counted
    CountingSession(again).scan(tray.core, tray.grid_sequence(2, 2, 0.45))
    store.close()
    assert again.specimens_counted == 0
    assert TallyStore.open(path, mode="r").n_specimens("S1") == counted


def test_frames_classified_in_one_batch_equal_frame_by_frame(predictor, tmp_path):
    """Cross-frame batching (what a GPU session does) changes nothing in the store."""
    from napari_foram.acquire import run_scan
    from napari_foram.demo_scene import SimulatedMicroscopeRig
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession
    from napari_foram.tally.store import SampleRecord, TallyStore

    scan = DemoScan(rows=2, cols=2, camera_shape=(400, 500), overlap_fraction=0.3, specimens=6)
    world = make_demo_world(23, scan)
    tray = SimulatedMicroscopeRig(world, camera_shape=scan.camera_shape, seed=3, noise=False)
    frames: list = []
    assert run_scan(tray.core, tray.grid_sequence(2, 2, 0.3), on_frame=frames.append).error is None
    columns = ["frame_index", "stage_x_um", "stage_y_um", "area_px", "class_index", "mean_probs"]
    stored, counted = [], []
    for name, feed in [
        ("one", lambda p: [p.process(f) for f in frames]),
        ("batch", lambda p: p.process_many(frames[:3]) + p.process_many(frames[3:])),
    ]:
        store = TallyStore.create(tmp_path / f"{name}.zarr", classes=CLASSES)
        store.add_sample(SampleRecord(sample_id="S1"))
        pipeline = CountingPipeline(predictor, store=store, sample_id="S1", mc_samples=1)
        results = feed(pipeline)
        assert [r.frame.index for r in results] == [f.index for f in frames]
        pipeline.finish()  # the specimens only ever seen cut by a field edge
        counted.append(pipeline.specimens_counted)
        stored.append(store.read_specimens("S1", columns=columns))
        store.close()
    one, batched = stored
    assert len(one["class_index"]) == len(batched["class_index"]) == counted[0] == counted[1] > 0
    for key in columns:
        np.testing.assert_allclose(one[key], batched[key], rtol=0, atol=1e-5)

    # And a session with max_batch > 1 counts the same as the pipelines above.
    tray = SimulatedMicroscopeRig(world, camera_shape=scan.camera_shape, seed=3, noise=False)
    pipeline = CountingPipeline(predictor, mc_samples=1)
    session = CountingSession(pipeline, max_batch=4)
    assert session.scan(tray.core, tray.grid_sequence(2, 2, 0.3)).frames_processed == 4
    assert pipeline.specimens_counted == counted[0]


def test_sharper_view_replaces_the_stored_crop_not_the_count(predictor, tmp_path):
    """Live focusing: a field seen defocused first, then in focus (with camera noise)."""
    from scipy import ndimage

    from napari_foram.frames import Frame
    from napari_foram.pipeline import CountingPipeline, view_sharpness
    from napari_foram.tally.store import SampleRecord, TallyStore

    scan = DemoScan(rows=1, cols=1, camera_shape=(486, 648), specimens=6, touching_pairs=0)
    world = make_demo_world(5, scan)
    sharp = world.image.astype(np.float32)
    blurred = ndimage.gaussian_filter(sharp, sigma=(2.5, 2.5, 0))
    rng = np.random.default_rng(0)

    def frame(i: int, image: np.ndarray) -> Frame:
        noisy = image + rng.normal(0, 3, image.shape)
        pixels = np.clip(noisy, 0, 255).astype(np.uint8)
        return Frame(pixels, index=i, stage_xy_um=(500.0, 500.0), pixel_size_um=2.5)

    store = TallyStore.create(tmp_path / "focus.zarr", classes=CLASSES)
    store.add_sample(SampleRecord(sample_id="S1"))
    pipeline = CountingPipeline(predictor, store=store, sample_id="S1", mc_samples=1)
    for i in range(3):
        pipeline.process(frame(i, blurred))
    n = pipeline.specimens_counted
    truth = [s for s in world.specimens if not s.clipped]
    assert n == len(truth) > 0
    blurred_crops = store.read_crops("S1")
    results = [pipeline.process(frame(i, sharp)) for i in range(3, 9)]
    # Counted once each; every record now holds the first in-focus view (frame 3), and
    # later noisy in-focus frames do not churn the records.
    assert pipeline.specimens_counted == n == store.n_specimens("S1")
    assert pipeline.views_replaced == n and len(results[0].replaced_rows) == n
    assert all(len(r.replaced_rows) == 0 for r in results[1:])
    rows = store.read_specimens("S1", columns=["frame_index"])
    assert rows["frame_index"].tolist() == [3] * n
    crops = store.read_crops("S1")
    pairs = zip(crops, blurred_crops, strict=True)
    assert all(view_sharpness(c) > 1.25 * view_sharpness(b) for c, b in pairs)
    assert store.counts("S1").sum() == n
    store.close()

    # Resumed: stored views are measured from the store; a blurred view replaces nothing.
    store = TallyStore.open(tmp_path / "focus.zarr", mode="a")
    resumed = CountingPipeline(predictor, store=store, sample_id="S1", mc_samples=1)
    resumed.process(frame(9, blurred))
    assert resumed.specimens_counted == 0 and resumed.views_replaced == 0
    assert store.n_specimens("S1") == n
    store.close()
