"""Focus stacking: defocus in the simulated microscope, z-stack scans, EDF fusion, assembly."""

from __future__ import annotations

import os

# Before pymmcore-plus is imported anywhere: silence its harmless "run mmcore install" error.
os.environ["PYMM_LOG_LEVEL"] = "CRITICAL"

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_foram.acquire import (
    create_simulated_core,
    run_scan,
    simulated_microscope,
    snap_frame,
    tray_scan_sequence,
)
from napari_foram.acquire.simulated import (
    DEFAULT_BLUR_PER_UM,
    SimulatedMicroscope,
    defocus_blur,
    height_map_from_labels,
)
from napari_foram.demo_scene import DemoScan, make_demo_world
from napari_foram.detect import detect
from napari_foram.focus import ZStackAssembler, focus_measure, fuse_stack
from napari_foram.frames import Frame
from napari_foram.point_matching import match_points
from napari_foram.synthetic import TrayRender

CAM = (486, 648)  # one field = the whole demo world
SMALL_CAM = (128, 160)  # for grid scans: 4 fields x 3 planes stay quick


@pytest.fixture(scope="module")
def tray() -> TrayRender:
    """A seeded 486 x 648 tray of six whole specimens (rendered once: ~0.5 s)."""
    scan = DemoScan(rows=1, cols=1, camera_shape=CAM, specimens=6, touching_pairs=0)
    return make_demo_world(7, scan)


@pytest.fixture(scope="module")
def heights(tray: TrayRender) -> np.ndarray:
    return height_map_from_labels(tray.labels, tray.specimens, tray.pixel_size_um)


@pytest.fixture
def make_core():
    """Factory of simulated cores over the tray (instant snaps), released after the test."""
    cores = []

    def factory(tray: TrayRender, **kwargs):
        kwargs.setdefault("camera_shape", CAM)
        kwargs.setdefault("simulate_exposure_time", False)
        core = create_simulated_core(tray.image, tray.pixel_size_um, **kwargs)
        cores.append(core)
        return core

    yield factory
    cores.clear()


def _tops(tray: TrayRender, heights: np.ndarray) -> np.ndarray:
    return np.array([heights[tray.labels == s.id].max() for s in tray.specimens])


# ------------------------------------------------------------------ simulated optics
def test_height_map_is_one_dome_per_specimen(tray, heights):
    labels = tray.labels
    assert heights.shape == labels.shape and heights.dtype == np.float32
    assert not heights[labels == 0].any()  # the floor is flat
    tops = _tops(tray, heights)
    for spec, top in zip(tray.specimens, tops, strict=True):
        inside = heights[labels == spec.id]
        assert inside.min() >= 0 and top <= 0.8 * spec.diameter_um + 1e-3
        # the top is well inside: the outline rim is far lower than the top
        rim = labels == spec.id
        rim &= ~ndi.binary_erosion(rim)
        assert heights[rim].max() < 0.6 * top
    # specimens of different sizes peak tens of micrometres apart
    assert tops.max() - tops.min() > 50.0
    # seeded: same seed, same relief; another seed, other thicknesses
    again = height_map_from_labels(labels, tray.specimens, tray.pixel_size_um)
    np.testing.assert_array_equal(again, heights)
    other = height_map_from_labels(labels, tray.specimens, tray.pixel_size_um, seed=1)
    assert not np.array_equal(other, heights)


def test_defocus_blur_keeps_brightness_and_blurs_with_sigma():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 128, 3)).astype(np.uint8)
    zero = np.zeros(image.shape[:2], np.float32)
    np.testing.assert_array_equal(defocus_blur(image, zero), image)  # in focus: exact
    flat = np.full((64, 80), 77, np.uint8)  # grey works; a uniform field stays uniform
    np.testing.assert_allclose(defocus_blur(flat, np.full(flat.shape, 6.0)), 77, atol=1e-3)
    sharpness = []
    for sigma in (0.0, 1.0, 2.0, 4.0, 8.0):
        out = defocus_blur(image, zero + sigma)
        assert out.shape == image.shape and out.dtype == np.float32
        assert out.mean() == pytest.approx(image.mean(), rel=1e-3)
        sharpness.append(focus_measure(out))
    assert sharpness == sorted(sharpness, reverse=True)
    # per-pixel sigma: the sharp half stays sharp, the blurred half is blurred
    half = zero.copy()
    half[:, 64:] = 4.0
    out = defocus_blur(image, half)
    assert np.abs(out[:, :56] - image[:, :56]).max() < 1e-3
    assert focus_measure(out[:, 72:]) < 0.2 * focus_measure(image[:, 72:])
    with pytest.raises(ValueError, match="shape"):
        defocus_blur(image, zero[:10])


def test_microscope_blurs_by_distance_to_focus():
    # A textured world in two terraces: the left half on the floor, the right 100 um up.
    rng = np.random.default_rng(4)
    world = rng.integers(30, 230, (96, 128, 3)).astype(np.uint8)
    heights = np.zeros(world.shape[:2], np.float32)
    heights[:, 64:] = 100.0
    scope = SimulatedMicroscope(
        world=world,
        pixel_size_um=2.5,
        camera_shape=(96, 128),
        noise=False,
        simulate_exposure_time=False,
        height_um=heights,
    )
    scope.move_to(*scope.world_center_um)
    left, right = np.s_[:, :56], np.s_[:, 72:]  # away from the terrace edge
    sharpness = {}
    for z in (0.0, 50.0, 100.0):
        scope.move_z_to(z)
        np.testing.assert_allclose(
            scope.defocus_sigma_px(), np.abs(z - heights) * DEFAULT_BLUR_PER_UM, rtol=1e-6
        )
        frame = scope.snap()
        sharpness[z] = (focus_measure(frame[left]), focus_measure(frame[right]))
    # whatever is in focus is exact; the farther from the focus, the blurrier
    scope.move_z_to(0.0)
    np.testing.assert_array_equal(scope.snap()[left], world[left])
    assert sharpness[0.0][0] > sharpness[50.0][0] > sharpness[100.0][0]
    assert sharpness[100.0][1] > sharpness[50.0][1] > sharpness[0.0][1]
    with pytest.raises(ValueError, match="height_um"):
        SimulatedMicroscope(world=world, pixel_size_um=2.5, height_um=heights[:10])


# -------------------------------------------------------------------- fusion (pure)
def test_fuse_stack_takes_each_region_from_its_sharp_plane():
    rng = np.random.default_rng(1)
    sharp = rng.integers(40, 220, (120, 160, 3)).astype(np.uint8)
    blurred = ndi.gaussian_filter(sharp.astype(np.float32), (3, 3, 0)).round().astype(np.uint8)
    left, right = sharp.copy(), sharp.copy()
    left[:, 80:] = blurred[:, 80:]  # plane 0: sharp on the left
    right[:, :80] = blurred[:, :80]  # plane 1: sharp on the right
    fused = fuse_stack(np.stack([left, right]))
    assert fused.shape == sharp.shape and fused.dtype == np.uint8
    # away from the seam (the energy window and blend box reach ~7 px) it is the sharp image
    np.testing.assert_array_equal(fused[:, :70], sharp[:, :70])
    np.testing.assert_array_equal(fused[:, 90:], sharp[:, 90:])
    assert focus_measure(fused) > 1.5 * max(focus_measure(left), focus_measure(right))
    # plane order does not matter; grey stacks and lists of planes work too
    np.testing.assert_array_equal(fuse_stack(np.stack([right, left])), fused)
    grey = fuse_stack([left[..., 1], right[..., 1]])
    assert grey.shape == sharp.shape[:2] and grey.dtype == np.uint8
    # one plane: a copy of it
    single = fuse_stack(left[None])
    np.testing.assert_array_equal(single, left)
    assert single is not left
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((2, 4, 4, 2), np.uint8)):
        with pytest.raises(ValueError, match="planes"):
            fuse_stack(bad)
    with pytest.raises(ValueError, match="energy_size"):
        fuse_stack(np.stack([left, right]), energy_size=0)


def _frame(image: np.ndarray, index: int, field: int | None, z: int | None) -> Frame:
    mda_index = {} if field is None else {"p": 0, "g": field}
    if z is not None:
        mda_index["z"] = z
    return Frame(
        image=image,
        index=index,
        stage_xy_um=(100.0 * (field or 0), 0.0),
        pixel_size_um=2.5,
        source="test",
        metadata={"mda_index": mda_index} if mda_index else {},
    )


def test_assembler_passes_frames_without_z_and_rejects_bad_planes():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (40, 50, 3)).astype(np.uint8)
    out: list[Frame] = []
    assembler = ZStackAssembler(3, out.append)
    plain = [_frame(image, 0, None, None), _frame(image, 1, 2, None)]
    for frame in plain:
        assembler(frame)  # no z index: straight through, unchanged
    assert out == plain and assembler.frames_passed == 2 and assembler.pending == 0
    # interleaved fields are still grouped by field
    for i, (field, z) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1), (1, 2), (0, 2)]):
        assembler.add(_frame(image, i, field, z))
    fused = out[2:]
    assert [f.metadata["mda_index"] for f in fused] == [{"p": 0, "g": 1}, {"p": 0, "g": 0}]
    assert [f.metadata["focus_stack"]["frame_indices"] for f in fused] == [[1, 3, 4], [0, 2, 5]]
    assert [f.stage_xy_um for f in fused] == [(100.0, 0.0), (0.0, 0.0)]
    # identical planes fuse to themselves
    for f in fused:
        np.testing.assert_array_equal(f.image, image)
    assembler.add(_frame(image, 6, 0, 1))
    with pytest.raises(ValueError, match="arrived twice"):
        assembler.add(_frame(image, 7, 0, 1))
    with pytest.raises(ValueError, match="outside"):
        assembler.add(_frame(image, 8, 0, 3))
    with pytest.raises(ValueError, match="z_planes"):
        ZStackAssembler(0, out.append)
    # a single-plane "stack" is no stack: everything passes through
    single: list[Frame] = []
    frame = _frame(image, 0, 0, 0)
    ZStackAssembler(1, single.append).add(frame)
    assert single == [frame]


# ----------------------------------------------------------- acquisition with a core
@pytest.mark.acquisition
def test_z_stage_is_the_focus_device_and_flat_world_ignores_it(make_core, tray):
    core = make_core(tray, noise=False)
    scope = simulated_microscope(core)
    assert core.getFocusDevice() == "Z" and core.getZPosition() == 0.0  # flat: starts at 0
    core.setPosition(123.5)
    assert scope.z_um == pytest.approx(123.5) and core.getPosition() == pytest.approx(123.5)
    core.setOrigin()  # re-zero the focus drive where it is
    assert core.getPosition() == pytest.approx(0.0)
    core.setPosition(10.0)
    assert scope.z_um == pytest.approx(133.5)
    # no height map: every focus position shows the exact world window
    np.testing.assert_array_equal(snap_frame(core).image, scope.window())
    # and a flat-world z-stack fuses to that same image
    planes: list[Frame] = []
    fused: list[Frame] = []
    assembler = ZStackAssembler(2, fused.append)

    def on_frame(frame: Frame) -> None:
        planes.append(frame)
        assembler.add(frame)

    seq = tray_scan_sequence(core, rows=1, cols=1, z_planes=2, z_step_um=80.0)
    assert run_scan(core, seq, on_frame).ok
    for frame in (*planes, *fused):
        np.testing.assert_array_equal(frame.image, scope.window())


@pytest.mark.acquisition
def test_tray_scan_sequence_z_plan(make_core, tray, heights):
    core = make_core(tray, camera_shape=SMALL_CAM, height_map=heights)
    z0 = core.getZPosition()
    assert z0 == pytest.approx(0.5 * heights.max())  # default: mid-way up the relief
    flat = tray_scan_sequence(core, rows=2, cols=2)
    assert tray_scan_sequence(core, rows=2, cols=2, z_planes=1) == flat
    assert flat.z_plan is None and "z" not in flat.used_axes
    seq = tray_scan_sequence(core, rows=2, cols=2, z_planes=3, z_step_um=40.0)
    events = list(seq)
    assert len(events) == 12 and seq.used_axes == "pgz"
    # z innermost: the three planes of each field one after the other, XY unchanged
    order = [(e.index["g"], e.index["z"]) for e in events]
    assert order == [(g, z) for g in range(4) for z in range(3)]
    for g in range(4):
        field = events[3 * g : 3 * g + 3]
        assert len({(e.x_pos, e.y_pos) for e in field}) == 1
        assert [e.z_pos for e in field] == pytest.approx([z0 - 40.0, z0, z0 + 40.0])
    around = tray_scan_sequence(core, rows=1, cols=1, z_planes=4, z_step_um=25.0, center_z_um=0)
    assert [e.z_pos for e in around] == pytest.approx([-37.5, -12.5, 12.5, 37.5])
    with pytest.raises(ValueError, match="z_planes"):
        tray_scan_sequence(core, rows=1, cols=1, z_planes=0)
    with pytest.raises(ValueError, match="z_step_um"):
        tray_scan_sequence(core, rows=1, cols=1, z_planes=3, z_step_um=0.0)


@pytest.mark.acquisition
def test_z_stack_scan_fuses_sharper_than_every_plane_and_detects_all(make_core, tray, heights):
    """The main job: a real z-stack through run_scan, fused, then detected."""
    core = make_core(tray, height_map=heights, noise=True, seed=3)
    scope = simulated_microscope(core)
    tops = _tops(tray, heights)
    n = 5  # planes from the tray floor to the highest top
    step = float(tops.max()) / (n - 1)
    seq = tray_scan_sequence(
        core, rows=1, cols=1, z_planes=n, z_step_um=step, center_z_um=float(tops.max()) / 2
    )
    planes: list[Frame] = []
    fused: list[Frame] = []
    assembler = ZStackAssembler(n, fused.append)

    def on_frame(frame: Frame) -> None:
        planes.append(frame)
        assembler.add(frame)

    result = run_scan(core, seq, on_frame)
    assert result.ok and len(planes) == n and len(fused) == 1
    assert [p.metadata["mda_index"]["z"] for p in planes] == list(range(n))
    edf = fused[0]
    stack_info = edf.metadata["focus_stack"]
    assert stack_info["planes"] == n and stack_info["complete"]
    assert edf.stage_xy_um == planes[0].stage_xy_um and edf.pixel_size_um == tray.pixel_size_um

    # Sharper than every plane, as a whole ...
    plane_focus = [focus_measure(p.image) for p in planes]
    assert stack_info["plane_focus"] == pytest.approx(plane_focus)
    assert stack_info["sharpest_plane"] == int(np.argmax(plane_focus))
    assert focus_measure(edf.image) > 1.2 * max(plane_focus)
    # ... and specimen by specimen, while no single plane is the sharpest for all of them.
    best_plane = []
    for spec in tray.specimens:
        r0, c0, r1, c1 = spec.bbox
        per_plane = [focus_measure(p.image[r0:r1, c0:c1]) for p in planes]
        assert focus_measure(edf.image[r0:r1, c0:c1]) > max(per_plane)
        best_plane.append(int(np.argmax(per_plane)))
    assert len(set(best_plane)) > 1, best_plane
    # Closer to the sharp (noise-free, in-focus) tray than any plane, on the specimens.
    truth = scope.window().astype(np.float32)
    on_specimens = tray.labels > 0
    errors = [np.abs(p.image - truth)[on_specimens].mean() for p in planes]
    assert np.abs(edf.image - truth)[on_specimens].mean() < 0.85 * min(errors)

    # Detection on the fused image finds every whole specimen where it is.
    whole = [s for s in tray.specimens if not s.clipped]
    true_yx = np.array([s.centroid_yx for s in whole])
    radius = np.array([s.diameter_um / 2 / tray.pixel_size_um for s in whole])

    def matched(image: np.ndarray) -> int:
        det = detect(image, pixel_size_um=tray.pixel_size_um, crops=False)
        return match_points(det.centroid[det.whole], true_yx, radius).matched

    assert matched(edf.image) == len(whole) == 6
    # The best single plane, for comparison: on this tray it finds them all too (6 of 6
    # when this was written): defocus blurs these large, bright specimens but does not
    # hide them from the threshold detector. What the fusion buys is the sharp crops
    # checked above, which the classifier sees.
    assert matched(planes[stack_info["sharpest_plane"]].image) <= len(whole)


@pytest.mark.acquisition
def test_assembler_groups_a_2x2_grid_of_3_planes(make_core, tray, heights):
    core = make_core(tray, camera_shape=SMALL_CAM, height_map=heights, noise=False)
    planes: list[Frame] = []
    fused: list[Frame] = []
    assembler = ZStackAssembler(3, fused.append)

    def on_frame(frame: Frame) -> None:
        planes.append(frame)
        assembler.add(frame)

    seq = tray_scan_sequence(core, rows=2, cols=2, z_planes=3, z_step_um=60.0)
    assert run_scan(core, seq, on_frame).ok
    assert len(planes) == 12 and len(fused) == 4 and assembler.pending == 0
    assert len({p.stage_xy_um for p in planes}) == 4
    for g, edf in enumerate(fused):
        field = planes[3 * g : 3 * g + 3]
        assert {p.metadata["mda_index"]["g"] for p in field} == {g}
        assert edf.index == g and edf.metadata["mda_index"] == {"p": 0, "g": g}
        assert "z" not in edf.metadata["mda_index"]
        assert edf.stage_xy_um == field[0].stage_xy_um
        info = edf.metadata["focus_stack"]
        assert info["frame_indices"] == [p.index for p in field] and info["z_indices"] == [0, 1, 2]
        np.testing.assert_array_equal(edf.image, fuse_stack([p.image for p in field]))


@pytest.mark.acquisition
def test_scan_stopping_mid_stack_drops_or_fuses_the_incomplete_field(make_core, tray, heights):
    # The camera breaks after 7 frames: two whole fields, then one plane of the third.
    core = make_core(tray, camera_shape=SMALL_CAM, height_map=heights, fail_after_frames=7)
    planes: list[Frame] = []
    seq = tray_scan_sequence(core, rows=2, cols=2, z_planes=3, z_step_um=60.0)
    result = run_scan(core, seq, planes.append)
    assert not result.ok and result.frames_delivered == 7

    fused: list[Frame] = []
    dropping = ZStackAssembler(3, fused.append)
    for frame in planes:
        dropping.add(frame)
    assert len(fused) == 2 and dropping.pending == 1
    assert dropping.flush() == 1  # default: the incomplete field is dropped
    assert len(fused) == 2 and dropping.pending == 0 and dropping.stacks_dropped == 1
    assert dropping.flush() == 0

    kept: list[Frame] = []
    fusing = ZStackAssembler(3, kept.append)
    for frame in planes:
        fusing.add(frame)
    assert fusing.flush(fuse_incomplete=True) == 1
    assert len(kept) == 3 and fusing.stacks_dropped == 0
    last = kept[-1]
    info = last.metadata["focus_stack"]
    assert (info["planes"], info["expected_planes"], info["complete"]) == (1, 3, False)
    assert [f.metadata["focus_stack"]["complete"] for f in kept[:2]] == [True, True]
    np.testing.assert_array_equal(last.image, planes[6].image)  # one plane: itself
