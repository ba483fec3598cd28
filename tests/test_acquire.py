"""Acquisition layer: a real UniMMCore with the simulated Python devices, scans, queues."""

from __future__ import annotations

import os

# Before pymmcore-plus is imported anywhere: silence its harmless "run mmcore install" error.
os.environ["PYMM_LOG_LEVEL"] = "CRITICAL"

import ast
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_foram.acquire import (
    FrameQueue,
    LiveStream,
    ProcessingError,
    ProcessingWorker,
    QueueClosed,
    SimulatedMicroscope,
    cancel_scan,
    create_simulated_core,
    load_config_core,
    run_scan,
    simulated_microscope,
    snap_frame,
    stage_xy_for_window,
    tray_extent_scan_sequence,
    tray_scan_sequence,
    world_extent_um,
    world_window,
)
from napari_foram.frames import Frame

pytestmark = pytest.mark.acquisition

PX_UM = 2.5  # world and camera pixel size
CAM = (64, 96)  # small camera: fast tests
# (row, col, radius, RGB) of bright "specimens" on the dark tray
DISCS = (
    (40, 60, 9, (250, 210, 120)),
    (150, 220, 12, (230, 240, 250)),
    (200, 80, 7, (200, 90, 60)),
)


def make_world(h: int = 240, w: int = 320) -> np.ndarray:
    """Dark tray with bright discs at known places and a faint texture.

    The texture makes every window of the world unique, so "the right window" is a real
    check, not one dark field matching another.
    """
    yy, xx = np.mgrid[0:h, 0:w]
    world = np.zeros((h, w, 3), np.uint8)
    world[..., 0] = 10 + (xx * 7 + yy * 3) % 23
    world[..., 1] = 12 + (xx * 5 + yy * 11) % 19
    world[..., 2] = 8 + (xx + yy * 13) % 17
    for r, c, rad, color in DISCS:
        world[(yy - r) ** 2 + (xx - c) ** 2 <= rad**2] = color
    return world


@pytest.fixture
def world() -> np.ndarray:
    return make_world()


@pytest.fixture
def make_core():
    """Factory of small, noise-free, instant simulated cores, released after the test.

    (No gc.collect() here: with torch loaded it costs ~0.5 s a test. Cores still alive at
    interpreter exit are made safe by acquire._mm's exit guard.)
    """
    cores = []

    def factory(world: np.ndarray, **kwargs):
        kwargs.setdefault("camera_shape", CAM)
        kwargs.setdefault("noise", False)
        kwargs.setdefault("simulate_exposure_time", False)
        core = create_simulated_core(world, PX_UM, **kwargs)
        cores.append(core)
        return core

    yield factory
    cores.clear()


# ---------------------------------------------------------------------- snapping
def test_snap_returns_exact_world_window(make_core, world):
    core = make_core(world)
    top, left = 17, 33
    core.setXYPosition(*stage_xy_for_window(top, left, CAM, PX_UM))
    frame = snap_frame(core, index=5)
    assert isinstance(frame, Frame)
    assert frame.image.shape == (*CAM, 3) and frame.image.dtype == np.uint8
    np.testing.assert_array_equal(frame.image, world[top : top + CAM[0], left : left + CAM[1]])
    assert frame.pixel_size_um == pytest.approx(PX_UM)
    assert frame.source == "simulated" and frame.index == 5
    assert frame.metadata["exposure_ms"] == pytest.approx(10.0)


def test_frame_pixel_to_stage_agrees_with_world(make_core, world):
    """Frame.pixel_to_stage_um of every pixel lands on the world pixel it shows."""
    core = make_core(world)
    r, c, _, color = DISCS[0]
    disc_xy = (c * PX_UM, r * PX_UM)  # world pixel (r, c) <-> sample (c * px, r * px)
    # an arbitrary, not pixel-aligned position with the disc in the field
    core.setXYPosition(disc_xy[0] + 31.3, disc_xy[1] - 17.9)
    frame = snap_frame(core)
    h, w = CAM
    yy, xx = np.mgrid[0:h, 0:w]
    sx, sy = frame.pixel_to_stage_um(yy, xx)
    world_rows = np.floor(sy / PX_UM + 0.5).astype(int)
    world_cols = np.floor(sx / PX_UM + 0.5).astype(int)
    np.testing.assert_array_equal(frame.image, world[world_rows, world_cols])
    # the disc's centroid in the frame maps back to where it is on the tray
    mask = np.all(frame.image == color, axis=2)
    cy, cx = np.argwhere(mask).mean(axis=0)
    got = frame.pixel_to_stage_um(cy, cx)
    assert got == pytest.approx(disc_xy, abs=PX_UM / 2 + 1e-9)


def test_snap_outside_world_is_dark(make_core, world):
    core = make_core(world)
    top, left = -20, world.shape[1] - 50  # above the world and past its right edge
    core.setXYPosition(*stage_xy_for_window(top, left, CAM, PX_UM))
    img = snap_frame(core).image
    assert not img[:20].any() and not img[:, 50:].any()
    np.testing.assert_array_equal(img[20:, :50], world[0 : CAM[0] - 20, left:])
    # far away: all dark, no error
    core.setXYPosition(-1e5, 1e5)
    assert not snap_frame(core).image.any()


def test_exposure_scales_brightness_and_saturates(make_core, world):
    core = make_core(world, exposure_ms=10.0)
    r, c, _, _ = DISCS[1]
    core.setXYPosition(c * PX_UM, r * PX_UM)  # a bright disc in the field
    base = snap_frame(core).image.astype(int)
    core.setExposure(20.0)
    double = snap_frame(core).image.astype(int)
    np.testing.assert_array_equal(double, np.minimum(base * 2, 255))
    assert (double == 255).any()  # bright discs saturate
    core.setExposure(5.0)
    half = snap_frame(core).image.astype(int)
    np.testing.assert_array_equal(half, np.floor(base / 2 + 0.5).astype(int))


def test_noise_is_seeded_and_unbiased(make_core, world):
    a = snap_frame(make_core(world, noise=True, seed=3)).image
    b = snap_frame(make_core(world, noise=True, seed=3)).image
    c = snap_frame(make_core(world, noise=True, seed=4)).image
    clean = snap_frame(make_core(world, noise=False)).image
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, clean)
    diff = a.astype(float) - clean
    assert abs(diff.mean()) < 0.5 and 0.5 < diff.std() < 10


def test_grey_world_gives_grey_frames(make_core, world):
    grey = world[..., 1].copy()
    frame = snap_frame(make_core(grey))
    assert frame.image.shape == CAM


def test_bad_simulation_input_is_valueerror(world):
    with pytest.raises(ValueError, match="uint8"):
        SimulatedMicroscope(world=world.astype(np.float32), pixel_size_um=1.0)
    with pytest.raises(ValueError, match="pixel_size_um"):
        SimulatedMicroscope(world=world, pixel_size_um=0.0)
    with pytest.raises(ValueError, match="shape"):
        SimulatedMicroscope(world=world[..., :2], pixel_size_um=1.0)
    with pytest.raises(ValueError, match="exposure"):
        SimulatedMicroscope(world=world, pixel_size_um=1.0, exposure_ms=-1.0)


# ------------------------------------------------------------------------- scans
def test_grid_scan_returns_12_frames_covering_the_grid(make_core, world):
    core = make_core(world)
    center = simulated_microscope(core).world_center_um
    seq = tray_scan_sequence(core, rows=3, cols=4, overlap_fraction=0.15, center_xy_um=center)
    frames: list[Frame] = []
    progress: list[tuple[int, int]] = []
    result = run_scan(core, seq, frames.append, progress=lambda d, t: progress.append((d, t)))

    assert result.ok and result.error is None and not result.cancelled
    assert (result.frames_expected, result.frames_delivered, result.frames_failed) == (12, 12, 0)
    assert progress[-1] == (12, 12)
    assert [f.index for f in frames] == list(range(12))
    xs = sorted({round(f.stage_xy_um[0], 6) for f in frames})
    ys = sorted({round(f.stage_xy_um[1], 6) for f in frames})
    assert len(xs) == 4 and len(ys) == 3
    step_x, step_y = CAM[1] * PX_UM * 0.85, CAM[0] * PX_UM * 0.85
    np.testing.assert_allclose(np.diff(xs), step_x)
    np.testing.assert_allclose(np.diff(ys), step_y)
    assert np.mean(xs) == pytest.approx(center[0]) and np.mean(ys) == pytest.approx(center[1])
    for f in frames:
        assert f.image.shape == (*CAM, 3) and f.image.dtype == np.uint8
        assert f.pixel_size_um == pytest.approx(PX_UM) and f.source == "simulated"
        assert f.metadata["exposure_ms"] == pytest.approx(10.0)
        np.testing.assert_array_equal(f.image, world_window(world, f.stage_xy_um, CAM, PX_UM))


def test_extent_scan_covers_whole_world(make_core, world):
    core = make_core(world)
    left, top, right, bottom = world_extent_um(world.shape, PX_UM)
    seq = tray_extent_scan_sequence(
        core, top=top, left=left, bottom=bottom, right=right, overlap_fraction=0.1
    )
    frames: list[Frame] = []
    assert run_scan(core, seq, frames.append).ok
    seen = np.zeros(world.shape[:2], bool)
    for f in frames:
        rows, cols = np.mgrid[0 : CAM[0], 0 : CAM[1]]
        sx, sy = f.pixel_to_stage_um(rows, cols)
        r = np.floor(sy / PX_UM + 0.5).astype(int)
        c = np.floor(sx / PX_UM + 0.5).astype(int)
        inside = (r >= 0) & (r < world.shape[0]) & (c >= 0) & (c < world.shape[1])
        seen[r[inside], c[inside]] = True
    assert seen.all()


def test_camera_failure_mid_scan_keeps_frames_and_reports_one_line(make_core, world):
    clean: list[Frame] = []
    core = make_core(world)
    run_scan(core, tray_scan_sequence(core, rows=3, cols=4), clean.append)

    core = make_core(world, fail_after_frames=5)
    frames: list[Frame] = []
    t0 = time.perf_counter()
    result = run_scan(core, tray_scan_sequence(core, rows=3, cols=4), frames.append)
    assert time.perf_counter() - t0 < 5.0  # no hang
    assert result.frames_delivered == 5 and result.frames_failed == 1 and not result.ok
    assert result.error is not None and "\n" not in result.error
    assert "simulated camera failure" in result.error and "5 of 12" in result.error
    for got, want in zip(frames, clean[:5], strict=True):
        assert got.stage_xy_um == pytest.approx(want.stage_xy_um)
        np.testing.assert_array_equal(got.image, want.image)
    # the core is usable again afterwards (the runner finished, the engine was restored)
    assert not core.mda.is_running()


def test_tolerated_failures_skip_fields(make_core, world):
    core = make_core(world, fail_after_frames=10)
    frames: list[Frame] = []
    result = run_scan(
        core, tray_scan_sequence(core, rows=3, cols=4), frames.append, max_failed_frames=5
    )
    assert (result.frames_delivered, result.frames_failed) == (10, 2)
    assert result.error is not None and "failed 2 time(s)" in result.error


def test_failing_frame_handler_cancels_scan_with_reason(make_core, world):
    core = make_core(world)
    seen: list[int] = []

    def handler(frame: Frame) -> None:
        seen.append(frame.index)
        if frame.index == 2:
            raise KeyError("disk full")

    result = run_scan(core, tray_scan_sequence(core, rows=3, cols=4), handler)
    assert result.cancelled and result.frames_delivered == 2 and seen == [0, 1, 2]
    assert result.error == "frame handler failed: KeyError: 'disk full'"


def test_cancel_scan_stops_after_current_field(make_core, world):
    core = make_core(world)
    frames: list[Frame] = []

    def handler(frame: Frame) -> None:
        frames.append(frame)
        if len(frames) == 3:
            cancel_scan(core)

    result = run_scan(core, tray_scan_sequence(core, rows=3, cols=4), handler)
    assert result.cancelled and result.error is None and not result.ok
    assert result.frames_delivered == 3


def test_scan_planning_rejects_bad_input(make_core, world):
    core = make_core(world)
    with pytest.raises(ValueError, match="rows and cols"):
        tray_scan_sequence(core, rows=0, cols=3)
    with pytest.raises(ValueError, match="overlap"):
        tray_scan_sequence(core, rows=2, cols=2, overlap_fraction=1.0)
    with pytest.raises(ValueError, match="empty"):
        tray_extent_scan_sequence(core, top=0, left=0, bottom=0, right=10)
    with pytest.raises(ValueError, match="MDASequence"):
        run_scan(core, [1, 2], print)  # type: ignore[arg-type]


def test_load_config_core_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="no such Micro-Manager configuration file"):
        load_config_core(tmp_path / "missing.cfg")
    cfg = tmp_path / "broken.cfg"
    cfg.write_text("Device,Camera,NoSuchAdapterLibrary,NoSuchCamera\n")
    with pytest.raises(ValueError, match="could not load") as info:
        load_config_core(cfg)
    assert "\n" not in str(info.value)


def test_adapter_errors_keep_the_cores_reason_in_one_line():
    from napari_foram.acquire._mm import _config_error

    # MMCore's text for an adapter built for another device interface (multi-line,
    # reason nested in brackets): the line keeps the adapter, the reason, the folders.
    text = (
        "Line 3: Device,Cam,DemoCamera,DCam\n"
        'Failed to load device adapter "DemoCamera" from "libmmgr_dal_DemoCamera.so.0" '
        "[ Incompatible module interface version (required = 75; found = 74) ]\n"
    )
    line = _config_error(Path("lab.cfg"), OSError(text), ["/opt/mm", "/usr/local/lib/mm"])
    assert line == (
        "lab.cfg: Micro-Manager could not load device adapter DemoCamera (line 3): "
        "Incompatible module interface version (required = 75; found = 74); looked in "
        "/opt/mm, /usr/local/lib/mm; give --adapter-path DIR, set MICROMANAGER_PATH, or "
        "run `mmcore use DIR`"
    )
    # Not an adapter: the core's words after the line number, still one line.
    other = _config_error(Path("lab.cfg"), RuntimeError("Line 9: Foo\nInvalid command"), [])
    assert other == "lab.cfg: Micro-Manager could not load it (line 9): Foo Invalid command"


def test_live_stream_delivers_frames(make_core, world):
    core = make_core(world, simulate_exposure_time=True, exposure_ms=5.0)
    queue: FrameQueue[Frame] = FrameQueue(maxsize=2, policy="live")
    with LiveStream(core, queue.put) as live:
        deadline = time.monotonic() + 5.0
        while queue.put_count < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert not core.isSequenceRunning()
    assert live.frames_delivered >= 4 and live.error is None
    newest = queue.get(timeout=1)
    assert newest.image.shape == (*CAM, 3) and newest.stage_xy_um is not None
    assert queue.put_count == live.frames_delivered


# ------------------------------------------------------------------ queue/worker
def test_scan_queue_never_drops_and_blocks_producer():
    queue: FrameQueue[int] = FrameQueue(maxsize=2, policy="scan")
    queue.put(0)
    queue.put(1)
    with pytest.raises(TimeoutError):
        queue.put(2, timeout=0.05)  # full: the producer waits instead of dropping
    assert queue.get() == 0

    received: list[int] = []

    def produce() -> None:
        for i in range(2, 60):
            queue.put(i)
        queue.close()

    producer = threading.Thread(target=produce)
    producer.start()
    while True:
        try:
            received.append(queue.get(timeout=5))
        except QueueClosed:
            break
        if len(received) % 10 == 0:
            time.sleep(0.005)  # a slow consumer
        assert len(queue) <= 2
    producer.join(5)
    assert received == list(range(1, 60)) and queue.dropped == 0


def test_live_queue_drops_oldest_and_counts():
    queue: FrameQueue[int] = FrameQueue(maxsize=3, policy="live")
    for i in range(100):
        queue.put(i)  # never blocks
    assert queue.dropped == 97 and len(queue) == 3
    assert [queue.get(), queue.get(), queue.get()] == [97, 98, 99]

    queue2: FrameQueue[int] = FrameQueue(maxsize=2, policy="live")
    received: list[int] = []
    worker = ProcessingWorker(queue2, lambda i: (received.append(i), time.sleep(0.002)))
    worker.start()
    for i in range(300):
        queue2.put(i)
    worker.stop(drain=True, timeout=5)
    assert received == sorted(received) and received[-1] == 299  # newest always kept
    assert worker.processed + worker.dropped == 300 and worker.dropped > 0


def test_worker_surfaces_handler_exception_and_unblocks_producer():
    queue: FrameQueue[int] = FrameQueue(maxsize=1, policy="scan")

    def handler(i: int) -> None:
        if i == 3:
            raise ValueError("bad frame\nsecond line")

    worker = ProcessingWorker(queue, handler).start()
    with pytest.raises(QueueClosed, match="processing failed: ValueError: bad frame"):
        for i in range(1000):  # would block forever if the dead worker left the queue open
            queue.put(i, timeout=5)
    with pytest.raises(ProcessingError, match="after 3 frames: ValueError: bad frame") as info:
        worker.stop(timeout=5)
    assert isinstance(info.value.__cause__, ValueError)
    assert not worker.is_alive and worker.processed == 3


def test_worker_stop_drains_pending_frames():
    queue: FrameQueue[int] = FrameQueue(maxsize=50, policy="scan")
    done: list[int] = []
    for i in range(20):
        queue.put(i)
    worker = ProcessingWorker(queue, done.append).start()
    worker.stop(drain=True, timeout=5)
    assert done == list(range(20)) and worker.stats() == {
        "processed": 20,
        "dropped": 0,
        "pending": 0,
    }


def test_batch_worker_takes_what_is_queued_in_order():
    queue: FrameQueue[int] = FrameQueue(maxsize=50, policy="scan")
    batches: list[list[int]] = []
    for i in range(10):
        queue.put(i)  # all waiting before the worker starts: batches of at most 4
    worker = ProcessingWorker(queue, batch_handler=batches.append, max_batch=4).start()
    worker.stop(drain=True, timeout=5)
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert worker.processed == 10 and worker.largest_batch == 4
    with pytest.raises(QueueClosed):
        queue.get_many(3, timeout=0)
    with pytest.raises(ValueError, match="exactly one"):
        ProcessingWorker(queue)
    with pytest.raises(ValueError, match="max_items"):
        FrameQueue[int]().get_many(0)


def test_get_many_does_not_wait_for_a_full_batch():
    queue: FrameQueue[int] = FrameQueue(maxsize=8, policy="scan")
    queue.put(1)
    assert queue.get_many(5, timeout=1) == [1]  # one waiting: returns it at once
    with pytest.raises(TimeoutError):
        queue.get_many(5, timeout=0.01)


def test_worker_stop_without_drain_discards_and_counts():
    queue: FrameQueue[int] = FrameQueue(maxsize=50, policy="live")
    busy, gate = threading.Event(), threading.Event()
    done: list[int] = []

    def handler(i: int) -> None:
        busy.set()
        gate.wait(5)  # the first frame takes long: the rest are still queued at stop
        done.append(i)

    for i in range(20):
        queue.put(i)
    worker = ProcessingWorker(queue, handler).start()
    assert busy.wait(5)
    opener = threading.Timer(0.05, gate.set)
    opener.start()
    worker.stop(drain=False, timeout=5)
    opener.join()
    assert done == [0] and worker.processed == 1 and worker.dropped == 19


def test_scan_through_queue_and_worker(make_core, world):
    core = make_core(world)
    queue: FrameQueue[Frame] = FrameQueue(maxsize=2, policy="scan")
    positions: list[tuple[float, float]] = []

    def slow_handler(frame: Frame) -> None:
        time.sleep(0.005)  # slower than the camera: the scan must wait, not drop
        positions.append(frame.stage_xy_um)

    with ProcessingWorker(queue, slow_handler) as worker:
        result = run_scan(core, tray_scan_sequence(core, rows=3, cols=4), queue.put)
    assert result.ok and worker.processed == 12 and worker.dropped == 0
    assert len(set(positions)) == 12


# ------------------------------------------------------------------ architecture
def test_only_mm_module_imports_pymmcore_plus_or_useq():
    src = Path(__file__).resolve().parents[1] / "src" / "napari_foram"
    offenders = []
    for path in src.rglob("*.py"):
        # The adapter: acquire/_mm.py and its siblings acquire/_mm_*.py.
        if path.parent.name == "acquire" and path.name.startswith("_mm"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # Imports under `if TYPE_CHECKING:` only name types and never run (session.py
        # types the core it accepts so); import-linter leaves them out too.
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in ("pymmcore_plus", "pymmcore", "useq", "ome_writers"):
                    offenders.append(f"{path.relative_to(src)}: {name}")
    assert not offenders, offenders


def test_importing_acquire_does_not_import_pymmcore_plus():
    code = (
        "import sys, napari_foram.acquire as a; "
        "assert 'pymmcore_plus' not in sys.modules; "
        "a.FrameQueue(2); "
        "assert 'pymmcore_plus' not in sys.modules; "
        "a.run_scan; assert 'pymmcore_plus' in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


# ------------------------------------------------------------------ bit depth
def _digitised(window: np.ndarray, bits: int, gain: float = 1.0) -> np.ndarray:
    """What a noise-free `bits`-bit camera makes of an 8-bit world window: the same
    float32 steps as `SimulatedMicroscope.snap_into`, so the comparison can be exact.
    """
    top = 2**bits - 1
    signal = window.astype(np.float32) * np.float32(gain) * np.float32(top / 255.0)
    return np.clip(signal + np.float32(0.5), 0, top).astype(np.uint16)


@pytest.mark.parametrize("bits", [10, 12, 14, 16])
def test_bit_depth_frames_are_the_8_bit_content_digitised_finer(make_core, world, bits):
    from napari_foram.acquire import camera_bit_depth
    from napari_foram.frames import to_uint8

    top = 2**bits - 1
    core = make_core(world, bit_depth=bits)
    eight = make_core(world)
    assert camera_bit_depth(core) == bits and camera_bit_depth(eight) == 8
    # UniMMCore reports the container (2 bytes, 16 bits); the PixelFormat property the
    # significant bits, which is what camera_bit_depth reads.
    assert core.getBytesPerPixel() == 2 and core.getProperty("Camera", "PixelFormat") == (
        f"RGB{bits}"
    )
    r, c, _, _ = DISCS[1]
    for c_ in (core, eight):
        c_.setXYPosition(c * PX_UM, r * PX_UM)  # a bright disc in the field
    frame, frame8 = snap_frame(core), snap_frame(eight)
    assert frame.image.dtype == np.uint16 and frame.image.shape == (*CAM, 3)
    assert frame.metadata["bit_depth"] == bits and frame8.metadata["bit_depth"] == 8
    window = world_window(world, frame.stage_xy_um, CAM, PX_UM)
    np.testing.assert_array_equal(frame.image, _digitised(window, bits))
    np.testing.assert_array_equal(to_uint8(frame.image, bits), frame8.image)
    # Saturation at the top of the range, as at 255 for 8 bits.
    core.setExposure(20.0)
    double = snap_frame(core).image
    assert int(double.max()) == top
    np.testing.assert_array_equal(double, _digitised(window, bits, gain=2.0))
    # Scans carry the depth too, read once per run.
    frames: list[Frame] = []
    assert run_scan(core, tray_scan_sequence(core, rows=1, cols=2), frames.append).ok
    assert [f.metadata["bit_depth"] for f in frames] == [bits, bits]
    assert all(f.image.dtype == np.uint16 and int(f.image.max()) <= top for f in frames)


def test_bit_depth_noise_and_grey_frames(make_core, world):
    from napari_foram.frames import to_uint8

    # The same seeded sensor at 8 and 16 bits: the same noisy picture, digitised finer.
    noisy8 = snap_frame(make_core(world, noise=True, seed=5)).image
    noisy16 = snap_frame(make_core(world, noise=True, seed=5, bit_depth=16)).image
    diff = to_uint8(noisy16, 16).astype(int) - noisy8
    assert np.abs(diff).max() <= 1 and abs(diff.mean()) < 0.05
    clean16 = snap_frame(make_core(world, bit_depth=16)).image.astype(float)
    noise8 = (noisy8 - snap_frame(make_core(world)).image.astype(float)).std()
    assert (noisy16 - clean16).std() == pytest.approx(257 * noise8, rel=0.05)
    # A grey world gives grey 12-bit frames: "Mono12".
    grey = make_core(world[..., 1].copy(), bit_depth=12)
    frame = snap_frame(grey)
    assert frame.image.shape == CAM and frame.image.dtype == np.uint16
    assert grey.getProperty("Camera", "PixelFormat") == "Mono12"
    assert frame.metadata["bit_depth"] == 12


def test_live_stream_frames_carry_the_bit_depth(make_core, world):
    core = make_core(world, bit_depth=14, simulate_exposure_time=True, exposure_ms=5.0)
    frames: list[Frame] = []
    with LiveStream(core, frames.append) as live:
        deadline = time.monotonic() + 5.0
        while live.frames_delivered < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert len(frames) >= 2
    assert all(f.image.dtype == np.uint16 and f.metadata["bit_depth"] == 14 for f in frames)


def test_dim_16_bit_frame_is_not_stretched(make_core, world):
    """The scaling; that the pipeline's detector uses it: tests/test_live.py."""
    from napari_foram.frames import to_uint8

    # A quarter of the nominal exposure: the data fit in 14 bits, and guessing the depth
    # from them would brighten the frame four times. The camera's depth keeps it dim.
    dim16 = make_core(world, bit_depth=16, exposure_ms=10.0)
    dim8 = make_core(world, exposure_ms=10.0)
    for core in (dim16, dim8):
        core.setExposure(2.5)
    frame, frame8 = snap_frame(dim16), snap_frame(dim8)
    assert int(frame.image.max()) < 2**14
    bits = frame.metadata["bit_depth"]
    assert np.abs(to_uint8(frame.image, bits).astype(int) - frame8.image).max() <= 1
    assert to_uint8(frame.image).max() > 2 * int(frame8.image.max())  # what guessing does


def test_bad_bit_depth_and_stage_fault_settings_are_valueerror(world):
    for bits in (0, 9, 32, True):
        with pytest.raises(ValueError, match="bit_depth"):
            SimulatedMicroscope(world=world, pixel_size_um=1.0, bit_depth=bits)
    with pytest.raises(ValueError, match="fail_after_moves"):
        SimulatedMicroscope(world=world, pixel_size_um=1.0, fail_after_moves=-1)
    scope = SimulatedMicroscope(world=world, pixel_size_um=1.0, camera_shape=CAM, bit_depth=12)
    with pytest.raises(ValueError, match="uint16"):
        scope.snap_into(np.empty((*CAM, 3), np.uint8))


# --------------------------------------------------------------- stage failure
def test_simulated_stage_fails_after_n_moves_and_stays_put(world):
    from napari_foram.acquire import SimulatedStageError

    scope = SimulatedMicroscope(world=world, pixel_size_um=PX_UM, fail_after_moves=2)
    scope.move_to(10.0, 20.0)
    scope.move_to(30.0, 40.0)
    with pytest.raises(SimulatedStageError, match="after 2 moves"):
        scope.move_to(50.0, 60.0)
    assert scope.stage_xy_um == (30.0, 40.0) and scope.moves_made == 2
    scope.move_z_to(5.0)  # the focus drive is another device: unaffected
    assert scope.z_um == 5.0


@pytest.mark.parametrize("hardware_sequencing", [False, True])
def test_stage_failure_mid_scan_stops_with_one_line_and_keeps_frames(
    make_core, world, hardware_sequencing
):
    clean: list[Frame] = []
    core = make_core(world)
    run_scan(core, tray_scan_sequence(core, rows=3, cols=4), clean.append)

    # Placing the stage at the start is not a move: the first 5 fields are imaged.
    core = make_core(world, fail_after_moves=5)
    frames: list[Frame] = []
    t0 = time.perf_counter()
    result = run_scan(
        core,
        tray_scan_sequence(core, rows=3, cols=4),
        frames.append,
        hardware_sequencing=hardware_sequencing,
    )
    assert time.perf_counter() - t0 < 5.0  # no hang
    assert result.frames_delivered == 5 and result.frames_failed == 0
    assert not result.ok and not result.cancelled
    assert result.error is not None and "\n" not in result.error
    assert "simulated stage failure" in result.error and "5 of 12" in result.error
    for got, want in zip(frames, clean[:5], strict=True):
        assert got.stage_xy_um == pytest.approx(want.stage_xy_um)
        np.testing.assert_array_equal(got.image, want.image)
    # The field the stage never reached was not imaged from the wrong place.
    scope = simulated_microscope(core)
    assert scope is not None and scope.frames_snapped == 5
    assert not core.mda.is_running()
