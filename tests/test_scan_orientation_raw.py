"""A camera mounted turned on the stand, and raw frames kept for a recount.

* The simulated microscope with its camera mirrored and rotated 90 degrees (a transposed
  image, as when a camera is screwed on sideways), its configuration carrying the
  matching pixel-size affine transform: a tray scan still counts every specimen once, at
  its true place. The same scan read as if the camera were upright does not -- which is
  what the transform is for.
* A tray scan saved as OME-Zarr through pymmcore-plus, linked from the sample's
  provenance and recounted from the files: the same tally as the live count.

Real throughout: simulated camera and stage under pymmcore-plus, the detector, the
registry, a VGG16 with random weights, a Zarr store.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_foram.demo_scene import DemoScan, make_demo_world

pytestmark = pytest.mark.acquisition

#: The sensor: 400 rows x 500 columns. Turned by 90 degrees it sees 500 x 400 of the tray.
SENSOR = (400, 500)
# The tray is laid out for fields as the stage sees them (500 px along y, 400 along x),
# 2 x 3 of them overlapping by 30 % (> the largest specimen: each is whole somewhere).
SCAN = DemoScan(
    rows=2, cols=3, camera_shape=SENSOR[::-1], overlap_fraction=0.3, specimens=10, touching_pairs=0
)


def _scan_and_match(predictor, tray, world):
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.point_matching import match_points
    from napari_foram.session import CountingSession

    pipeline = CountingPipeline(predictor, mc_samples=1)
    results = []
    report = CountingSession(pipeline).scan(
        tray.core,
        tray.grid_sequence(SCAN.rows, SCAN.cols, SCAN.overlap_fraction),
        on_result=results.append,
    )
    assert report.error is None and report.frames_processed == SCAN.rows * SCAN.cols
    counted = np.array([r.sample_xy_um[i] for r in results for i in r.new_rows]).reshape(-1, 2)
    truth = [s for s in world.specimens if not s.clipped]
    truth_xy = np.array([tray.world_px_to_um(*s.centroid_yx) for s in truth])
    m = match_points(counted, truth_xy, np.array([s.diameter_um / 2 for s in truth]))
    return pipeline.specimens_counted, len(truth), m


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
@pytest.mark.parametrize("mirror", [False, True])
def test_every_mounting_maps_each_pixel_to_its_place_on_the_tray(rotation, mirror):
    from napari_foram.acquire import create_simulated_core, simulated_microscope, snap_frame
    from napari_foram.mosaic import Mosaic

    # A world of distinct values: a pixel's value says where on the tray it came from.
    rng = np.random.default_rng(rotation + mirror)
    world = rng.integers(0, 256, (90, 110), dtype=np.uint8)
    px = 2.0
    core = create_simulated_core(
        world,
        px,
        camera_shape=(30, 40),
        noise=False,
        simulate_exposure_time=False,
        mount_rotation_deg=rotation,
        mount_mirror=mirror,
    )
    frame = snap_frame(core)
    assert frame.image.shape == (30, 40)
    ys, xs = np.mgrid[0:30, 0:40]
    for y, x in zip(ys.ravel()[::37], xs.ravel()[::37], strict=True):
        sx, sy = frame.pixel_to_stage_um(y, x)
        assert frame.image[y, x] == world[round(sy / px), round(sx / px)]
    # Turned back, the frame is the tray window under the stage: what the mosaic pastes.
    scope = simulated_microscope(core)
    assert np.array_equal(frame.upright_image(), scope.window())
    mosaic = Mosaic((0.0, 0.0), world.shape, px)
    assert mosaic.paste(frame)
    top, left = (
        round(v / px - (n - 1) / 2)
        for v, n in zip(frame.stage_xy_um[::-1], scope.window_shape, strict=True)
    )
    h, w = scope.window_shape
    assert np.array_equal(mosaic.image[top : top + h, left : left + w, 0], scope.window())


def test_mirrored_camera_turned_90_degrees_counts_every_specimen_once(random_predictor):
    from napari_foram.acquire import camera_frame_shape, microscope_capabilities
    from napari_foram.demo_scene import SimulatedMicroscopeRig

    world = make_demo_world(11, SCAN)
    tray = SimulatedMicroscopeRig(
        world, camera_shape=SENSOR, seed=1, mount_rotation_deg=90, mount_mirror=True
    )
    assert camera_frame_shape(tray.core)[:2] == SENSOR
    caps = microscope_capabilities(tray.core)
    # Transposed: a step along camera columns moves along stage y, along rows stage x.
    px = world.pixel_size_um
    assert caps.pixel_affine == (0.0, px, px, 0.0)
    counted, n_truth, m = _scan_and_match(random_predictor, tray, world)
    assert counted == n_truth > 0
    assert m.matched == n_truth and m.false == 0  # each at its true place, once


def test_the_same_camera_read_as_upright_miscounts(random_predictor):
    from napari_foram.demo_scene import SimulatedMicroscopeRig

    world = make_demo_world(11, SCAN)
    tray = SimulatedMicroscopeRig(
        world, camera_shape=SENSOR, seed=1, mount_rotation_deg=90, mount_mirror=True
    )
    # The lab forgot the calibration: Micro-Manager's default (identity) transform.
    tray.core.setPixelSizeAffine("Res", [1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    counted, n_truth, m = _scan_and_match(random_predictor, tray, world)
    assert counted != n_truth or m.matched < n_truth


def test_saved_z_stack_scan_reads_back_plane_by_plane(tmp_path):
    from napari_foram.acquire import (
        create_simulated_core,
        read_saved_scan,
        run_scan,
        tray_scan_sequence,
    )

    world = np.random.default_rng(0).integers(0, 256, (300, 360), dtype=np.uint8)
    core = create_simulated_core(
        world, 2.0, camera_shape=(100, 120), bit_depth=12, simulate_exposure_time=False
    )
    frames = []
    seq = tray_scan_sequence(core, rows=2, cols=2, z_planes=3, z_step_um=10.0)
    assert run_scan(core, seq, frames.append, save_to=tmp_path / "z.ome.zarr").ok
    saved = read_saved_scan(tmp_path / "z.ome.zarr")
    assert (saved.z_planes, saved.bit_depth, saved.pixel_size_um) == (3, 12, 2.0)
    back = list(saved.frames())
    assert len(back) == len(frames) == 12
    for a, b in zip(back, frames, strict=True):
        assert a.stage_xy_um == b.stage_xy_um and np.array_equal(a.image, b.image)
        assert a.metadata["mda_index"]["z"] == b.metadata["mda_index"]["z"]
    # Only OME-Zarr: an OME-TIFF would land under another name than the one linked.
    with pytest.raises(ValueError, match=r"raw frames go to \.ome\.zarr"):
        run_scan(core, seq, frames.append, save_to=tmp_path / "z.ome.tif")


def test_saved_scan_recounted_gives_the_live_tally(random_predictor, random_checkpoint, tmp_path):
    from napari_foram.microscope import (
        MicroscopeCounter,
        SimulatedMicroscopeSettings,
        open_or_create_store,
    )
    from napari_foram.pipeline import CountingPipeline
    from napari_foram.session import count_saved_scan
    from napari_foram.tally.store import SampleRecord, TallyStore

    classes = list(random_predictor.info.class_names)
    store = open_or_create_store(tmp_path / "live.zarr", classes)
    counter = MicroscopeCounter(random_predictor, store, mc_samples=1)
    # A 12-bit mono camera: its frames go through pymmcore-plus's own data sink (a colour
    # camera's through the adapter's writer: tests/test_rgb_raw.py).
    counter.connect_simulated(
        SimulatedMicroscopeSettings(
            seed=3,
            camera_shape=(400, 500),
            rows=2,
            cols=2,
            overlap=0.45,
            specimens=10,
            touching_pairs=0,
            bit_depth=12,
            mono=True,
        )
    )
    counter.start_sample(SampleRecord(sample_id="S1"))
    raw = tmp_path / "S1-scan.ome.zarr"
    report = counter.scan(2, 2, 0.45, save_raw=raw)
    assert report.error is None
    live_tally, live_n = counter.tally(), store.n_specimens("S1")
    assert live_n > 0
    # The sample's provenance points at the frames its count came from.
    assert store.provenance("S1")["raw_frames"] == str(raw.resolve())
    counter.close()

    # Later, elsewhere: the frames alone, recounted into a new store.
    again = open_or_create_store(tmp_path / "recount.zarr", classes)
    again.add_sample(SampleRecord(sample_id="S1"))
    pipeline = CountingPipeline(random_predictor, store=again, sample_id="S1", mc_samples=1)
    recount = count_saved_scan(pipeline, raw)
    assert recount.frames_processed == 4
    assert again.provenance("S1")["raw_frames"] == str(raw)
    assert again.n_specimens("S1") == live_n
    assert {c: int(n) for c, n in zip(classes, again.counts("S1"), strict=True)} == live_tally
    again.close()

    # And with `batch`: a folder whose sample S1 holds the saved scan (one source).
    from napari_foram.batch import BatchConfig, run_batch

    folder = tmp_path / "frames"
    (folder / "S1").mkdir(parents=True)
    raw.rename(folder / "S1" / raw.name)
    config = BatchConfig(
        folder=folder, store=tmp_path / "batch.zarr", model=random_checkpoint, mc_samples=1
    )
    outcome = run_batch(config)
    (line,) = outcome.files
    assert line.status == "processed" and line.file == f"S1/{raw.name}", line
    assert "4 fields" in line.reason
    assert outcome.samples["S1"]["total"] == live_n
    with TallyStore.open(tmp_path / "batch.zarr") as counted:
        assert {
            c: int(n) for c, n in zip(classes, counted.counts("S1"), strict=True)
        } == live_tally
    # A rerun finds the scan in the store (same digest) and counts nothing twice.
    assert run_batch(config).files[0].status == "skipped"
