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

from napari_foram.demo_scene import DemoScan, make_demo_world
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


def _rescan_reaches_the_truth(predictor, world, path, committed: int) -> None:
    """Reopen a store left by a failed scan of GRID and scan its sample "S1" again with
    working hardware: the stored specimens are known, the rest are counted, none twice.
    """
    from napari_foram.demo_scene import SimulatedMicroscopeRig
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession
    from napari_foram.tally.store import TallyStore

    store = TallyStore.open(path, mode="a")
    assert store.n_specimens("S1") == committed
    tray = SimulatedMicroscopeRig(world, camera_shape=GRID.camera_shape, seed=1)
    resumed = CountingPipeline(predictor, store=store, sample_id="S1", mc_samples=1)
    assert resumed.specimens_resumed == committed
    report = CountingSession(resumed).scan(tray.core, tray.grid_sequence(2, 2, 0.4))
    assert report.error is None
    assert store.n_specimens("S1") == len(_whole_truth(world))
    assert int(store.counts("S1").sum()) == len(_whole_truth(world))
    store.close()


def test_live_preview_over_100_frames_counts_each_specimen_once(predictor):
    from napari_foram.demo_scene import SimulatedMicroscopeRig
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession

    world = make_demo_world(5, FIELD)
    tray = SimulatedMicroscopeRig(world, camera_shape=FIELD.camera_shape, seed=4)  # noisy camera
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
    from napari_foram.demo_scene import SimulatedMicroscopeRig
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession

    world = make_demo_world(5, FIELD)
    tray = SimulatedMicroscopeRig(world, camera_shape=FIELD.camera_shape, seed=4)
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
    from napari_foram.demo_scene import SimulatedMicroscopeRig
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession

    world = make_demo_world(11, GRID)
    tray = SimulatedMicroscopeRig(world, camera_shape=GRID.camera_shape, seed=1)
    pipeline = CountingPipeline(predictor, mc_samples=1)
    report = CountingSession(pipeline).scan(
        tray.core, tray.grid_sequence(2, 2, 0.4), hardware_sequencing=hardware_sequencing
    )
    assert report.error is None and report.frames_processed == 4 == report.frames_acquired
    assert report.frames_dropped == 0
    assert pipeline.specimens_counted == len(_whole_truth(world))


def test_pause_holds_the_stage_and_resume_finishes_the_scan(predictor):
    from napari_foram.acquire import simulated_microscope
    from napari_foram.demo_scene import SimulatedMicroscopeRig
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession

    world = make_demo_world(11, GRID)
    tray = SimulatedMicroscopeRig(world, camera_shape=GRID.camera_shape, seed=1)
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
    from napari_foram.demo_scene import SimulatedMicroscopeRig
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession
    from napari_foram.tally.store import SampleRecord, TallyStore

    world = make_demo_world(11, GRID)
    path = tmp_path / "scan.zarr"
    store = TallyStore.create(path, classes=CLASSES)
    store.add_sample(SampleRecord("S1"))
    failing = SimulatedMicroscopeRig(
        world, camera_shape=GRID.camera_shape, seed=1, fail_after_frames=2
    )
    pipeline = CountingPipeline(predictor, store=store, sample_id="S1", mc_samples=1)
    report = CountingSession(pipeline).scan(failing.core, failing.grid_sequence(2, 2, 0.4))
    assert report.error and "\n" not in report.error and report.frames_processed == 2
    committed = store.n_specimens("S1")
    assert committed == pipeline.specimens_counted
    store.close()

    # The camera is fixed: reopen the store and scan again; nothing is counted twice.
    _rescan_reaches_the_truth(predictor, world, path, committed)


def test_snap_counts_one_frame(predictor):
    from napari_foram.demo_scene import SimulatedMicroscopeRig
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession

    world = make_demo_world(5, FIELD)
    tray = SimulatedMicroscopeRig(world, camera_shape=FIELD.camera_shape, seed=4)
    session = CountingSession(CountingPipeline(predictor, mc_samples=1))
    result = session.snap(tray.core)
    assert len(result.new_rows) == len(_whole_truth(world))
    assert np.isfinite(result.sample_xy_um).all()
    assert len(session.snap(tray.core, index=1).new_rows) == 0  # the same field again


def test_tray_scan_with_z_stacks_fuses_each_field_and_counts_ground_truth(predictor):
    from napari_foram.acquire import simulated_microscope
    from napari_foram.demo_scene import SimulatedMicroscopeRig
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession

    world = make_demo_world(11, GRID)
    tray = SimulatedMicroscopeRig(
        world, camera_shape=GRID.camera_shape, seed=1, thick_specimens=True
    )
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


# ~15 s on two cores (two scans of the full-size simulated tray). In the default suite,
# test_demo.py's headless demo scans the simulated microscope through the same counter,
# test_mm_cpp.py runs `live --headless` on the C++ core, and test_dedup_scan.py resumes
# a stored sample without recounting.
@pytest.mark.slow
def test_live_command_headless_scans_and_resumes(tmp_path, random_checkpoint):
    import json

    from napari_foram.cli import main

    ckpt = random_checkpoint
    store = tmp_path / "cli.zarr"
    args = ["live", "--headless", "--model", str(ckpt), "--store", str(store), "--mc", "1"]
    args += ["--rows", "1", "--cols", "2", "--overlap", "0.45", "--sample-id", "S-1"]
    runs = []
    for _ in range(2):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(args) == 0
        runs.append(json.loads(out.getvalue()))
    first, second = runs
    assert first["error"] is None and first["frames_processed"] == 2
    assert first["specimens"] > 0 and sum(first["tally"].values()) == first["specimens"]
    # The same sample again: resumed, nothing counted twice.
    assert second["specimens_before"] == second["specimens"] == first["specimens"]
    assert main(["live", "--headless", "--mode", "blink"]) == 2
    assert main(["live", "--headless", "--config", str(tmp_path / "missing.cfg")]) == 1


# ------------------------------------------------------------------ bit depth
def _grid_scan(predictor, bit_depth):
    """Scan the GRID tray with a `bit_depth` camera; what was counted, and where."""
    from napari_foram.demo_scene import SimulatedMicroscopeRig
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession

    world = make_demo_world(11, GRID)
    tray = SimulatedMicroscopeRig(
        world, camera_shape=GRID.camera_shape, seed=1, bit_depth=bit_depth
    )
    pipeline = CountingPipeline(predictor, mc_samples=1)
    results: list = []
    report = CountingSession(pipeline).scan(
        tray.core, tray.grid_sequence(2, 2, 0.4), on_result=results.append
    )
    assert report.error is None and report.frames_processed == 4
    return {
        "world": world,
        "counted": pipeline.specimens_counted,
        "per_frame": [(len(r.new_rows), len(r.duplicate_rows)) for r in results],
        "xy": np.concatenate([r.sample_xy_um[r.new_rows] for r in results]),
        "frames": [r.frame for r in results[:4]],
    }


@pytest.fixture(scope="module")
def eight_bit_grid_scan(random_predictor):
    """The 8-bit scan the deeper cameras must reproduce (run once for the module)."""
    return _grid_scan(random_predictor, 8)


@pytest.mark.parametrize("bit_depth", [12, 16])
def test_tray_scan_counts_the_same_specimens_at_every_bit_depth(
    predictor, eight_bit_grid_scan, bit_depth
):
    deep = _grid_scan(predictor, bit_depth)
    base = eight_bit_grid_scan
    for frame in deep["frames"]:
        assert frame.image.dtype == np.uint16 and frame.metadata["bit_depth"] == bit_depth
        assert int(frame.image.max()) <= 2**bit_depth - 1
    assert deep["counted"] == base["counted"] == len(_whole_truth(base["world"]))
    assert deep["per_frame"] == base["per_frame"]
    px = base["world"].pixel_size_um
    np.testing.assert_allclose(deep["xy"], base["xy"], atol=px)  # the same specimens


def test_dim_16_bit_frame_is_detected_as_dim_by_the_pipeline(predictor):
    from napari_foram.acquire import snap_frame
    from napari_foram.demo_scene import SimulatedMicroscopeRig
    from napari_foram.detect import detect
    from napari_foram.pipeline import CountingPipeline

    world = make_demo_world(5, FIELD)
    results = {}
    for bits in (8, 16):
        tray = SimulatedMicroscopeRig(
            world, camera_shape=FIELD.camera_shape, noise=False, bit_depth=bits
        )
        tray.core.setExposure(2.0)  # a fifth of the nominal 10 ms: the data fit 14 bits
        frame = snap_frame(tray.core)
        results[bits] = CountingPipeline(predictor, mc_samples=1).process(frame)
    dim8, dim16 = results[8], results[16]
    assert int(dim16.frame.image.max()) < 2**14
    # Dim for the detector too (it may miss faint ones), but dim alike at both depths.
    assert len(dim16.new_rows) == len(dim8.new_rows) > 0
    np.testing.assert_allclose(dim16.detections.centroid, dim8.detections.centroid, atol=0.5)
    # The crops the classifier saw are as dim as the 8-bit camera's ...
    crops16 = dim16.detections.crops.astype(int)
    assert np.abs(crops16 - dim8.detections.crops).max() <= 1
    # ... where guessing the depth from the data would have brightened them four times.
    guessed = detect(dim16.frame.image, crops=True)
    assert guessed.crops.mean() > 2 * crops16.mean()


def test_simulated_scope_mono_12_bit_counts_ground_truth(predictor, tmp_path):
    from napari_foram.microscope import MicroscopeCounter, SimulatedMicroscopeSettings
    from napari_foram.tally.store import SampleRecord, TallyStore

    scope = SimulatedMicroscopeSettings(
        seed=11,
        camera_shape=GRID.camera_shape,
        rows=2,
        cols=2,
        overlap=0.4,
        specimens=8,
        touching_pairs=0,
        bit_depth=12,
        mono=True,
    )
    store = TallyStore.create(tmp_path / "m.zarr", classes=CLASSES)
    counter = MicroscopeCounter(predictor, store, mc_samples=1)
    counter.connect_simulated(scope)
    assert counter.frame_shape() == GRID.camera_shape  # one component: grey
    assert counter.microscope_info["bit_depth"] == 12
    assert counter.microscope_info["colour"] == "mono"
    rgb = make_demo_world(11, GRID).image.astype(float)
    assert counter.rig is not None
    luma = rgb @ [0.299, 0.587, 0.114]
    assert np.abs(counter.rig.world.image - luma).max() <= 0.51
    counter.start_sample(SampleRecord("M1"))
    frames: list = []
    report = counter.scan(2, 2, 0.4, on_result=lambda r: frames.append(r.frame))
    assert report.error is None
    assert all(f.image.dtype == np.uint16 and f.image.ndim == 2 for f in frames[:4])
    assert all(f.metadata["bit_depth"] == 12 for f in frames[:4])
    assert counter.progress()[0] == len(_whole_truth(counter.rig.world))
    counter.close()


def test_live_command_accepts_bit_depth_and_mono(capsys):
    from napari_foram.cli import main

    # Checked before any model loads: the options parse, then --mode is refused.
    assert main(["live", "--headless", "--bit-depth", "12", "--mono", "--mode", "blink"]) == 2
    assert "--mode" in capsys.readouterr().err
    assert main(["live", "--headless", "--bit-depth", "20"]) == 2
    assert "bit-depth" in capsys.readouterr().err


# --------------------------------------------------------------- stage failure
def test_stage_failure_mid_scan_then_resume_gives_ground_truth(predictor, tmp_path):
    from napari_foram.demo_scene import SimulatedMicroscopeRig
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession
    from napari_foram.tally.store import SampleRecord, TallyStore

    world = make_demo_world(11, GRID)
    path = tmp_path / "scan.zarr"
    store = TallyStore.create(path, classes=CLASSES)
    store.add_sample(SampleRecord("S1"))
    failing = SimulatedMicroscopeRig(
        world, camera_shape=GRID.camera_shape, seed=1, fail_after_moves=2
    )
    pipeline = CountingPipeline(predictor, store=store, sample_id="S1", mc_samples=1)
    t0 = time.perf_counter()
    report = CountingSession(pipeline).scan(failing.core, failing.grid_sequence(2, 2, 0.4))
    assert time.perf_counter() - t0 < 30  # stopped, not hung
    assert report.error and "\n" not in report.error
    assert "simulated stage failure" in report.error and report.frames_processed == 2
    committed = store.n_specimens("S1")
    assert committed == pipeline.specimens_counted == int(store.counts("S1").sum())
    assert committed < len(_whole_truth(world))  # fields are missing: a partial count
    store.close()

    # The stage is fixed: reopen the store and scan again; nothing is counted twice.
    _rescan_reaches_the_truth(predictor, world, path, committed)


NINE = DemoScan(
    rows=3, cols=3, camera_shape=(300, 400), overlap_fraction=0.4, specimens=8, touching_pairs=0
)


def _nine_field_scan(predictor, tmp_path):
    """A store with sample "S1", a pipeline into it and a simulated 3 x 3 tray."""
    from napari_foram.demo_scene import SimulatedMicroscopeRig
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import CountingSession
    from napari_foram.tally.store import SampleRecord, TallyStore

    world = make_demo_world(13, NINE)
    tray = SimulatedMicroscopeRig(world, camera_shape=NINE.camera_shape, seed=2)
    store = TallyStore.create(tmp_path / "stop.zarr", classes=CLASSES)
    store.add_sample(SampleRecord("S1"))
    pipeline = CountingPipeline(predictor, store=store, sample_id="S1", mc_samples=1)
    return world, tray, store, pipeline, CountingSession(pipeline)


def test_stop_processes_no_queued_field_and_says_what_was_counted(predictor, tmp_path):
    """Issue 27.7: Stop while field k is in flight used to work through every field
    already imaged (all 9). Now the store holds fields <= k (+ at most the one in
    flight), and the report says how far the scan got and what it counted.
    """
    _world, tray, store, pipeline, session = _nine_field_scan(predictor, tmp_path)
    seen: list[int] = []
    waiting: list[float] = []
    clicked = threading.Event()

    def on_result(result) -> None:
        seen.append(result.frame.index)
        if len(seen) == 2 and not clicked.is_set():
            clicked.set()
            # The camera is far ahead of the classifier: fields wait in the queue.
            waiting.append(session.stats()["backlog"])
            # The click comes from another thread (the GUI), while the worker goes on.
            threading.Thread(target=session.stop).start()

    report = session.scan(tray.core, tray.grid_sequence(3, 3, 0.4), on_result=on_result)
    assert clicked.is_set() and waiting[0] >= 1
    assert report.frames_processed == len(seen) <= 3  # field 2, at most the one in flight
    assert report.fields_planned == 9
    counted = store.n_specimens("S1")
    assert counted == report.specimens_counted == pipeline.specimens_counted
    assert report.error == (
        f"stopped after field {len(seen)} of 9: {counted} specimen{'s' * (counted != 1)} counted"
    )
    rows = store.read_specimens("S1")
    assert set(np.asarray(rows["frame_index"]).tolist()) <= set(seen)
    assert report.frames_dropped >= 1  # imaged, not counted: scanning again images them
    assert session.mode == "idle" and not tray.core.mda.is_running()
    store.close()


def test_pause_holds_the_queued_fields_and_resume_counts_each_once(predictor, tmp_path):
    """Issue 27.7: Pause used to stop only the camera; the worker went on through the
    fields already queued. Now they wait, and resume processes them: nothing lost,
    nothing counted twice.
    """
    world, tray, store, pipeline, session = _nine_field_scan(predictor, tmp_path)
    seen: list[int] = []
    paused = threading.Event()

    def on_result(result) -> None:
        seen.append(result.frame.index)
        if len(seen) == 1:
            session.pause()  # while the first field is still in the worker's hands
            paused.set()

    outcome: dict = {}
    thread = threading.Thread(
        target=lambda: outcome.update(
            report=session.scan(tray.core, tray.grid_sequence(3, 3, 0.4), on_result=on_result)
        )
    )
    thread.start()
    assert paused.wait(120)
    deadline = time.monotonic() + 60
    while session.stats()["backlog"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert session.stats()["backlog"] >= 1  # imaged fields are waiting
    time.sleep(1.5)  # time enough to process a waiting field, had the worker gone on
    assert len(seen) == 1 and session.stats()["processed"] == 1
    session.resume()
    thread.join(180)
    report = outcome["report"]
    assert report.error is None and report.frames_processed == 9 == len(set(seen))
    truth = len(_whole_truth(world))
    assert store.n_specimens("S1") == pipeline.specimens_counted == truth > 0
    store.close()
