"""Live acquisition on a UniMMCore with Python devices: live preview, pause/resume,
hardware sequencing on and off, a camera failing mid-scan and the scan resumed.

Everything runs for real: simulated camera and stage under pymmcore-plus, the detector,
the registry, a VGG16 with random weights, a Zarr store.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time

import numpy as np
import pytest

from napari_foram.demo import DemoScan, make_demo_world
from napari_foram.synthetic import CLASSES

pytestmark = pytest.mark.acquisition


@pytest.fixture
def predictor(random_predictor):
    return random_predictor


FIELD = DemoScan(rows=1, cols=1, camera_shape=(486, 648), specimens=6, touching_pairs=0)
GRID = DemoScan(
    rows=2, cols=2, camera_shape=(400, 500), overlap_fraction=0.4, specimens=8, touching_pairs=0
)


def _whole_truth(world):
    return [s for s in world.specimens if not s.clipped]


def test_live_preview_over_100_frames_counts_each_specimen_once(predictor):
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession, SimulatedTray

    world = make_demo_world(5, FIELD)
    tray = SimulatedTray(world, camera_shape=FIELD.camera_shape, seed=4)  # noisy camera
    pipeline = CountingPipeline(predictor, mc_samples=1)
    session = CountingSession(pipeline)
    seen: list = []
    report = session.live(tray.core, max_frames=100, on_result=seen.append)
    assert report.error is None, report.error
    assert report.frames_processed == len(seen) >= 100
    # The first frame's classification takes ~1 s while the camera streams at ~100 fps:
    # the live queue drops the stale frames, and says how many.
    assert report.frames_dropped > 0
    assert report.frames_acquired >= report.frames_processed + report.frames_dropped - 2
    assert pipeline.specimens_counted == len(_whole_truth(world)) > 0
    assert sum(len(r.new_rows) for r in seen) == pipeline.specimens_counted
    stats = session.stats()
    assert stats["processed"] == report.frames_processed and stats["frames_per_s"] >= 0
    assert session.mode == "idle"


def test_live_preview_stops_on_request(predictor):
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession, SimulatedTray

    world = make_demo_world(5, FIELD)
    tray = SimulatedTray(world, camera_shape=FIELD.camera_shape, seed=4)
    session = CountingSession(CountingPipeline(predictor, mc_samples=1))
    timer = threading.Timer(1.5, session.stop)
    timer.start()
    t0 = time.perf_counter()
    report = session.live(tray.core, max_seconds=60)
    timer.join()
    assert time.perf_counter() - t0 < 20
    assert report.error == "stopped by the user" and report.frames_processed >= 1
    assert not tray.core.isSequenceRunning()


@pytest.mark.parametrize("hardware_sequencing", [False, True])
def test_tray_scan_counts_ground_truth_with_and_without_sequencing(predictor, hardware_sequencing):
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession, SimulatedTray

    world = make_demo_world(11, GRID)
    tray = SimulatedTray(world, camera_shape=GRID.camera_shape, seed=1)
    pipeline = CountingPipeline(predictor, mc_samples=1)
    report = CountingSession(pipeline).scan(
        tray.core, tray.grid_sequence(2, 2, 0.4), hardware_sequencing=hardware_sequencing
    )
    assert report.error is None and report.frames_processed == 4 == report.frames_acquired
    assert report.frames_dropped == 0
    assert pipeline.specimens_counted == len(_whole_truth(world))


def test_pause_holds_the_stage_and_resume_finishes_the_scan(predictor):
    from napari_foram.acquire import simulated_microscope
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession, SimulatedTray

    world = make_demo_world(11, GRID)
    tray = SimulatedTray(world, camera_shape=GRID.camera_shape, seed=1)
    scope = simulated_microscope(tray.core)
    assert scope is not None
    pipeline = CountingPipeline(predictor, mc_samples=1)
    session = CountingSession(pipeline, queue_size=1)
    outcome: dict = {}
    thread = threading.Thread(
        target=lambda: outcome.update(
            report=session.scan(tray.core, tray.grid_sequence(2, 2, 0.4))
        )
    )
    thread.start()
    deadline = time.monotonic() + 30
    while scope.frames_snapped < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    session.pause()
    assert session.paused
    time.sleep(0.5)  # the field being imaged when paused may still be taken
    held = scope.frames_snapped
    time.sleep(1.5)  # long enough for every other field, had the scan gone on
    assert scope.frames_snapped == held < 4  # the camera took nothing while paused
    session.resume()
    thread.join(60)
    report = outcome["report"]
    assert report.error is None and report.frames_processed == 4 == scope.frames_snapped
    assert pipeline.specimens_counted == len(_whole_truth(world))
    with pytest.raises(ValueError, match="no tray scan"):
        session.pause()


def test_camera_failure_mid_scan_then_resume_gives_ground_truth(predictor, tmp_path):
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession, SimulatedTray
    from napari_foram.tally.store import SampleRecord, TallyStore

    world = make_demo_world(11, GRID)
    path = tmp_path / "scan.zarr"
    store = TallyStore.create(path, classes=CLASSES)
    store.add_sample(SampleRecord("S1"))
    failing = SimulatedTray(world, camera_shape=GRID.camera_shape, seed=1, fail_after_frames=2)
    pipeline = CountingPipeline(predictor, store=store, sample_id="S1", mc_samples=1)
    report = CountingSession(pipeline).scan(failing.core, failing.grid_sequence(2, 2, 0.4))
    assert report.error and "\n" not in report.error and report.frames_processed == 2
    committed = store.n_specimens("S1")
    assert committed == pipeline.specimens_counted
    store.close()

    # The camera is fixed: reopen the store and scan again; nothing is counted twice.
    store = TallyStore.open(path, mode="a")
    assert store.n_specimens("S1") == committed
    tray = SimulatedTray(world, camera_shape=GRID.camera_shape, seed=1)
    resumed = CountingPipeline(predictor, store=store, sample_id="S1", mc_samples=1)
    assert resumed.specimens_resumed == committed
    report = CountingSession(resumed).scan(tray.core, tray.grid_sequence(2, 2, 0.4))
    assert report.error is None
    assert store.n_specimens("S1") == len(_whole_truth(world))
    assert int(store.counts("S1").sum()) == len(_whole_truth(world))
    store.close()


def test_snap_counts_one_frame(predictor):
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession, SimulatedTray

    world = make_demo_world(5, FIELD)
    tray = SimulatedTray(world, camera_shape=FIELD.camera_shape, seed=4)
    session = CountingSession(CountingPipeline(predictor, mc_samples=1))
    result = session.snap(tray.core)
    assert len(result.new_rows) == len(_whole_truth(world))
    assert np.isfinite(result.sample_xy_um).all()
    assert len(session.snap(tray.core, index=1).new_rows) == 0  # the same field again


def test_tray_scan_with_z_stacks_fuses_each_field_and_counts_ground_truth(predictor):
    from napari_foram.acquire import simulated_microscope
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession, SimulatedTray

    world = make_demo_world(11, GRID)
    tray = SimulatedTray(world, camera_shape=GRID.camera_shape, seed=1, thick_specimens=True)
    pipeline = CountingPipeline(predictor, mc_samples=1)
    results: list = []
    report = CountingSession(pipeline).scan(
        tray.core, tray.grid_sequence(2, 2, 0.4, z_planes=3), on_result=results.append
    )
    scope = simulated_microscope(tray.core)
    assert scope is not None and scope.frames_snapped == 12  # 4 fields x 3 planes
    assert report.error is None and report.frames_processed == 4  # one fused frame each
    stacks = [r.frame.metadata["focus_stack"] for r in results[:4]]
    assert all(s["planes"] == 3 and s["complete"] for s in stacks)
    assert pipeline.specimens_counted == len(_whole_truth(world))


def test_live_command_headless_scans_and_resumes(tmp_path):
    import json

    from napari_foram.classify.checkpoint import ModelInfo, save_checkpoint
    from napari_foram.classify.model import build_model
    from napari_foram.cli import main

    model = build_model(len(CLASSES), backbone_weights="none", seed=0)
    ckpt = tmp_path / "random.safetensors"
    save_checkpoint(ckpt, model, ModelInfo.for_model(model, CLASSES))
    store = tmp_path / "cli.zarr"
    args = ["live", "--headless", "--model", str(ckpt), "--store", str(store), "--mc", "1"]
    args += ["--rows", "2", "--cols", "2", "--overlap", "0.45", "--sample-id", "S-1"]
    runs = []
    for _ in range(2):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(args) == 0
        runs.append(json.loads(out.getvalue()))
    first, second = runs
    assert first["error"] is None and first["frames_processed"] == 4
    assert first["specimens"] > 0 and sum(first["tally"].values()) == first["specimens"]
    # The same sample again: resumed, nothing counted twice.
    assert second["specimens_before"] == second["specimens"] == first["specimens"]
    assert main(["live", "--headless", "--mode", "blink"]) == 2
    assert main(["live", "--headless", "--config", str(tmp_path / "missing.cfg")]) == 1
