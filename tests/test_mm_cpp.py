"""The real C++ MMCore, as a lab runs it: Micro-Manager's demo configuration and demo
device adapters (built from mmCoreAndDevices, in ../shared/micromanager beside the clone).

Everything here goes through napari-foram's adapter (`napari_foram.acquire`) into
`pymmcore_plus.CMMCorePlus` and the C++ DemoCamera / DemoStage devices: configuration
loading and its errors, the configuration check, snaps at every pixel type, live
streaming, MDA tray scans with the configuration's pixel size, z-stacks, pause / resume /
stop, a camera lost mid-scan, raw frames saved and read back, a core shared with another
tool, and repeated connect / disconnect. Exposures are 1-20 ms to keep the file fast.

Skipped, with the reason, when the shared folder is absent or when the installed pymmcore
speaks another device interface than the adapters (75): MMCore would refuse them.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.mmcore, pytest.mark.acquisition]

#: The device interface the shared adapters were built for (see its README).
ADAPTER_INTERFACE = 75
MM_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "micromanager"
ADAPTERS = MM_DIR / "adapters"
DEMO_CFG = MM_DIR / "MMConfig_demo.cfg"


def _skip_reason() -> str | None:
    if not (ADAPTERS / "libmmgr_dal_DemoCamera.so.0").is_file() or not DEMO_CFG.is_file():
        return f"Micro-Manager demo adapters not found in {MM_DIR}"
    import pymmcore

    # pymmcore's version is MMCore.major.minor.DEVICE_INTERFACE.build.
    interface = int(pymmcore.__version__.split(".")[-2])
    if interface != ADAPTER_INTERFACE:
        return (
            f"pymmcore {pymmcore.__version__} speaks device interface {interface}; "
            f"the demo adapters are built for {ADAPTER_INTERFACE}"
        )
    return None


_REASON = _skip_reason()
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)


@pytest.fixture
def core():
    """A CMMCorePlus with MMConfig_demo.cfg, unloaded afterwards (frees the devices)."""
    from napari_foram.acquire import load_config_core, release_core

    c = load_config_core(DEMO_CFG, adapter_path=ADAPTERS)
    c.setExposure(1.0)
    yield c
    release_core(c)


# ------------------------------------------------------------------ configuration
def test_demo_configuration_loads_and_the_check_says_what_it_can_do(core):
    from napari_foram.acquire import microscope_capabilities

    caps = microscope_capabilities(core)
    assert (caps.camera, caps.xy_stage, caps.z_stage) == ("Camera", "XY", "Z")
    assert caps.frame_shape == (512, 512) and caps.bit_depth == 16 and not caps.rgb
    assert caps.pixel_size_um == 1.0 and caps.pixel_size_config == "Res10x"
    assert caps.pixel_affine is None  # the demo configuration calibrates no rotation
    assert caps.can_scan and caps.can_z_stack and caps.notes == ()
    assert caps.summary() == (
        "camera Camera 512 x 512 16-bit mono; XY stage XY; Z stage Z; 1 um/px (Res10x)"
    )
    # The check follows the configuration: the 8-bit RGB pixel type is seen as such.
    core.setProperty("Camera", "PixelType", "32bitRGB")
    caps = microscope_capabilities(core)
    assert caps.rgb and caps.bit_depth == 8 and caps.frame_shape == (512, 512, 3)


def test_a_missing_part_turns_off_what_needs_it_with_one_sentence(core):
    from napari_foram.acquire import microscope_capabilities

    core.setXYStageDevice("")  # as a configuration without a motorised stage
    core.setFocusDevice("")
    caps = microscope_capabilities(core)
    assert caps.can_snap and not caps.can_scan and not caps.can_z_stack
    assert caps.notes == (
        "No XY stage: snap and live only (a tray scan moves the stage).",
        "No Z stage: one focal plane per field (z-stacks are off).",
    )
    assert not caps.sample_coordinates


def _live_command(*args: str, env: dict[str, str] | None = None):
    """`napari-foram live` in a fresh process: a process that has loaded the demo adapter
    once finds it again by name wherever it is told to look (the dynamic loader keeps
    it), so a wrong path only shows in a process of its own, as for a user.
    """
    import subprocess
    import sys

    code = "from napari_foram.cli import main; raise SystemExit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, "live", "--headless", "--mode", "snap", *args],
        # Without PYMM_SIGNALS_BACKEND: pymmcore-widgets, once imported by a GUI test of
        # this process, sets it to "qt", and a headless command would warn about it.
        env={
            **{k: v for k, v in os.environ.items() if k != "PYMM_SIGNALS_BACKEND"},
            "PYMM_LOG_LEVEL": "CRITICAL",
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_wrong_adapter_path_gives_one_line_with_adapter_reason_and_folder(tmp_path):
    empty = tmp_path / "not-micro-manager"
    empty.mkdir()
    proc = _live_command("--config", str(DEMO_CFG), "--adapter-path", str(empty))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    # The adapter, the core's own reason, the configuration line, where it looked, and
    # what to do about it: everything the user needs, nothing cut away.
    message = lines[0]
    assert "could not load device adapter DemoCamera (line 7)" in message
    assert "cannot open shared object file" in message
    assert f"looked in {empty.resolve()}" in message
    assert "--adapter-path" in message and "MICROMANAGER_PATH" in message
    # MICROMANAGER_PATH pointing at the wrong folder: the same line names that folder.
    proc = _live_command("--config", str(DEMO_CFG), env={"MICROMANAGER_PATH": str(empty)})
    assert proc.returncode != 0 and f"looked in {empty}" in proc.stderr.strip()


def test_adapter_path_must_be_a_folder(tmp_path):
    from napari_foram.acquire import load_config_core

    with pytest.raises(ValueError, match="no such folder"):
        load_config_core(DEMO_CFG, adapter_path=tmp_path / "missing")


def test_micromanager_path_is_honoured(monkeypatch):
    from napari_foram.acquire import load_config_core, release_core

    # pymmcore-plus's discovery reads MICROMANAGER_PATH first (before `mmcore use`).
    monkeypatch.setenv("MICROMANAGER_PATH", str(ADAPTERS))
    c = load_config_core(DEMO_CFG)
    assert c.getDeviceAdapterSearchPaths() == (str(ADAPTERS),)
    assert c.getCameraDevice() == "Camera"
    release_core(c)


def test_the_folder_chosen_with_mmcore_use_is_honoured(monkeypatch, tmp_path):
    import pymmcore_plus._discovery as discovery

    from napari_foram.acquire import load_config_core, release_core

    # `mmcore use DIR` writes DIR into this file of the user's data folder; a private one
    # here, so the test leaves the user's choice alone.
    chosen = tmp_path / ".current_mm"
    chosen.write_text(str(ADAPTERS))
    monkeypatch.setattr(discovery, "CURRENT_MM_PATH", chosen)
    monkeypatch.delenv("MICROMANAGER_PATH", raising=False)
    c = load_config_core(DEMO_CFG)
    assert c.getDeviceAdapterSearchPaths() == (str(ADAPTERS),)
    release_core(c)


# ------------------------------------------------------------------ camera
def test_snap_exposure_and_every_pixel_type(core):
    from napari_foram.acquire import snap_frame

    frame = snap_frame(core)
    assert frame.image.shape == (512, 512) and frame.image.dtype == np.uint16
    assert frame.metadata["bit_depth"] == 16 and frame.pixel_size_um == 1.0
    assert frame.stage_xy_um == tuple(core.getXYPosition())
    assert frame.source == "micro-manager"
    core.setExposure(7.5)
    assert snap_frame(core).metadata["exposure_ms"] == 7.5
    # 12 significant bits in 16-bit pixels: the depth the frames are scaled by.
    core.setProperty("Camera", "BitDepth", "12")
    frame = snap_frame(core)
    assert frame.metadata["bit_depth"] == 12 and int(frame.image.max()) < 4096
    core.setProperty("Camera", "PixelType", "8bit")
    frame = snap_frame(core)
    assert frame.image.dtype == np.uint8 and frame.metadata["bit_depth"] == 8
    core.setProperty("Camera", "PixelType", "32bitRGB")
    frame = snap_frame(core)
    assert frame.image.shape == (512, 512, 3) and frame.image.dtype == np.uint8


def test_live_preview_delivers_n_frames_and_stops(core):
    from napari_foram.acquire import FrameQueue, LiveStream

    queue = FrameQueue(maxsize=4, policy="live")
    with LiveStream(core, queue.put) as live:
        deadline = time.monotonic() + 10
        while live.frames_delivered < 25 and time.monotonic() < deadline:
            time.sleep(0.005)
    assert live.frames_delivered >= 25 and live.error is None
    assert not core.isSequenceRunning()
    newest = queue.get(timeout=1)
    assert newest.image.shape == (512, 512) and newest.stage_xy_um is not None
    # The demo camera draws moving waves: live frames differ from one another.
    older = queue.get(timeout=1)
    assert not np.array_equal(newest.image, older.image)


# ------------------------------------------------------------------ scans
def test_tray_scan_uses_stage_positions_and_the_configurations_pixel_size(core):
    from napari_foram.acquire import run_scan, tray_scan_sequence

    frames = []
    core.setXYPosition(1000.0, -500.0)
    core.waitForDevice("XY")  # the demo stage takes its time, as a real one does
    result = run_scan(
        core, tray_scan_sequence(core, rows=2, cols=3, overlap_fraction=0.1), frames.append
    )
    assert result.ok and result.frames_delivered == 6
    xs = sorted({round(f.stage_xy_um[0], 1) for f in frames})
    ys = sorted({round(f.stage_xy_um[1], 1) for f in frames})
    # 512 px at Res10x's 1.0 um/px, 10 % overlap: fields 460.8 um apart around the stage.
    assert np.allclose(np.diff(xs), 460.8, atol=0.2) and np.allclose(np.diff(ys), 460.8, atol=0.2)
    assert np.isclose(np.mean(xs), 1000.0, atol=0.2) and np.isclose(np.mean(ys), -500.0, atol=0.2)
    assert all(f.pixel_size_um == 1.0 for f in frames)
    # Another objective, another pixel size (Res20x, 0.5 um/px): the grid shrinks with it.
    core.setConfig("Objective", "20X")
    assert core.getPixelSizeUm() == 0.5
    frames.clear()
    assert run_scan(
        core, tray_scan_sequence(core, rows=1, cols=2, overlap_fraction=0.1), frames.append
    ).ok
    dx = abs(frames[1].stage_xy_um[0] - frames[0].stage_xy_um[0])
    assert np.isclose(dx, 230.4, atol=0.2) and frames[0].pixel_size_um == 0.5


def test_z_stack_moves_the_focus_drive_per_field(core):
    from napari_foram.acquire import run_scan, tray_scan_sequence

    core.setPosition(100.0)
    frames = []
    seq = tray_scan_sequence(core, rows=1, cols=2, z_planes=3, z_step_um=5.0)
    result = run_scan(core, seq, frames.append)
    assert result.ok and len(frames) == 6
    # z innermost: each field's three planes in a row, 95, 100, 105 um on the Z stage.
    assert [f.metadata["mda_index"].get("z") for f in frames] == [0, 1, 2, 0, 1, 2]
    assert [round(f.metadata["z_um"], 3) for f in frames[:3]] == [95.0, 100.0, 105.0]
    assert len({f.stage_xy_um for f in frames}) == 2


def test_pause_resume_and_stop_a_running_scan(core):
    from napari_foram.acquire import cancel_scan, pause_scan, run_scan, tray_scan_sequence

    core.setExposure(20.0)
    arrived: list[float] = []
    paused_at: list[int] = []

    def on_frame(frame):
        arrived.append(time.monotonic())
        if len(arrived) == 2:
            pause_scan(core, True)
            paused_at.append(len(arrived))

    out: dict = {}
    worker = threading.Thread(
        target=lambda: out.update(
            result=run_scan(core, tray_scan_sequence(core, rows=3, cols=3), on_frame)
        )
    )
    worker.start()
    deadline = time.monotonic() + 10
    while not paused_at and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.4)  # paused: nothing may arrive (a frame takes ~20 ms)
    assert len(arrived) <= 3 and core.mda.is_paused()
    held = len(arrived)
    pause_scan(core, False)
    while len(arrived) < held + 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    cancel_scan(core)
    worker.join(10)
    result = out["result"]
    assert result.cancelled and result.error is None and not result.ok
    assert held + 2 <= result.frames_delivered < 9
    assert not core.mda.is_running()


def test_a_camera_lost_mid_scan_stops_the_scan_with_the_reason(core):
    from napari_foram.acquire import run_scan, tray_scan_sequence

    frames = []

    def on_frame(frame):
        frames.append(frame)
        if len(frames) == 2:
            # The camera goes away (cable pulled) between two fields: the next snap is a
            # real MMCore error, not a simulated one.
            core.unloadDevice("Camera")

    result = run_scan(core, tray_scan_sequence(core, rows=2, cols=2), on_frame)
    assert result.frames_delivered == 2 and not result.ok
    assert result.error is not None and "\n" not in result.error
    assert result.error.startswith("camera failed 1 time(s), 2 of 4 frames delivered")


def test_raw_frames_saved_as_ome_zarr_read_back_with_their_stage_positions(core, tmp_path):
    from napari_foram.acquire import read_saved_scan, run_scan, tray_scan_sequence

    frames = []
    path = tmp_path / "scan.ome.zarr"
    result = run_scan(core, tray_scan_sequence(core, rows=2, cols=2), frames.append, save_to=path)
    assert result.ok
    saved = read_saved_scan(path)
    assert saved.pixel_size_um == 1.0 and saved.bit_depth == 16 and saved.z_planes == 1
    back = list(saved.frames())
    assert [f.stage_xy_um for f in back] == [f.stage_xy_um for f in frames]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(back, frames, strict=True))
    with pytest.raises(ValueError, match="never overwritten"):
        run_scan(core, tray_scan_sequence(core, rows=1, cols=1), frames.append, save_to=path)


@pytest.mark.parametrize(
    ("pixel_type", "dtype", "bits"), [("32bitRGB", np.uint8, 8), ("64bitRGB", np.uint16, 16)]
)
def test_colour_frames_of_the_demo_camera_saved_and_read_back(
    core, tmp_path, pixel_type, dtype, bits
):
    from napari_foram.acquire import read_saved_scan, run_scan, tray_scan_sequence

    # The C++ camera delivers BGRA words; pymmcore-plus hands them over as (H, W, 3) RGB.
    core.setProperty("Camera", "PixelType", pixel_type)
    core.setProperty("Camera", "Mode", "Color Test Pattern")
    frames = []
    path = tmp_path / "rgb.ome.zarr"
    result = run_scan(core, tray_scan_sequence(core, rows=2, cols=2), frames.append, save_to=path)
    assert result.ok and frames[0].image.shape == (512, 512, 3)
    saved = read_saved_scan(path)
    assert saved.rgb and (saved.bit_depth, saved.pixel_size_um, saved.z_planes) == (bits, 1.0, 1)
    back = list(saved.frames())
    assert [f.stage_xy_um for f in back] == [f.stage_xy_um for f in frames]
    for a, b in zip(back, frames, strict=True):
        assert a.image.dtype == dtype and np.array_equal(a.image, b.image)
    # The pattern's colours, channel by channel: the planes were not swapped.
    assert len({tuple(frames[0].image[..., c].ravel()[::997]) for c in range(3)}) == 3


def test_colour_scan_with_the_cli_recounted_by_batch_gives_the_live_tally(
    tmp_path, random_checkpoint
):
    """`live --config` on a colour camera's configuration with `--save-raw`; the saved
    scan recounted gives the same specimens at the same places, and `batch` of it the
    live tally and number of specimens.
    """
    from test_rgb_raw import _check_recounts, _live_and_recounts

    # The lab's configuration of a colour camera: the demo one, started in 32bitRGB
    # showing its colour test pattern (the only demo image with objects in colour; its
    # "Fluorescent Beads" mode crashes the adapter in 32bitRGB).
    config = tmp_path / "colour.cfg"
    config.write_text(
        DEMO_CFG.read_text()
        + "\nConfigGroup,System,Startup,Camera,PixelType,32bitRGB"
        + "\nConfigGroup,System,Startup,Camera,Mode,Color Test Pattern"
        + "\nConfigGroup,System,Startup,Camera,Exposure,2\n"
    )
    runs = _live_and_recounts(
        tmp_path,
        ["--config", str(config), "--adapter-path", str(ADAPTERS), "--overlap", "0.1"],
        random_checkpoint,
    )
    _check_recounts(runs)


# ------------------------------------------------------------------ sharing, reconnecting
def test_counter_on_a_core_opened_elsewhere_leaves_its_configuration_alone(
    random_predictor, tmp_path
):
    from pymmcore_plus import CMMCorePlus

    from napari_foram.microscope import MicroscopeCounter, open_or_create_store
    from napari_foram.tally.store import SampleRecord

    # What napari-micromanager does: the process-wide core, loaded by the user there.
    shared = CMMCorePlus.instance()
    shared.setDeviceAdapterSearchPaths([str(ADAPTERS)])
    shared.loadSystemConfiguration(str(DEMO_CFG))
    shared.setExposure(2.0)
    try:
        before = (
            shared.getLoadedDevices(),
            shared.systemConfigurationFile(),
            shared.getExposure(),
        )
        store = open_or_create_store(tmp_path / "s.zarr", list(random_predictor.info.class_names))
        counter = MicroscopeCounter(random_predictor, store, mc_samples=1)
        counter.connect_shared()
        assert counter.core is shared and counter.capabilities is not None
        assert counter.capabilities.can_scan
        counter.start_sample(SampleRecord(sample_id="S1"))
        counter.snap()
        assert counter.session is not None and counter.session.stats()["processed"] == 1
        counter.close()
        after = (shared.getLoadedDevices(), shared.systemConfigurationFile(), shared.getExposure())
        assert after == before
        assert shared.getCameraDevice() == "Camera"
    finally:
        shared.unloadAllDevices()


def test_disconnect_and_reconnect_leaks_no_threads(random_predictor, tmp_path):
    from napari_foram.microscope import MicroscopeCounter, open_or_create_store
    from napari_foram.tally.store import SampleRecord

    def threads() -> list[str]:
        # zarr's asyncio loop grows its executor pool lazily ("asyncio_N", kept for reuse):
        # the store's, not the acquisition's; everything else must end with its run.
        return [
            t.name for t in threading.enumerate() if not t.name.startswith(("asyncio_", "zarr"))
        ]

    store = open_or_create_store(tmp_path / "s.zarr", list(random_predictor.info.class_names))
    counter = MicroscopeCounter(random_predictor, store, mc_samples=1)
    counts = []
    for i in range(3):
        counter.connect_config(DEMO_CFG, adapter_path=ADAPTERS)
        counter.core.setExposure(1.0)
        counter.start_sample(SampleRecord(sample_id=f"S{i}"))
        report = counter.live(max_frames=3, max_seconds=30)
        assert report.error is None and report.frames_processed >= 3
        assert counter.scan(1, 2, 0.1).error is None
        gc.collect()
        counts.append(len(threads()))
        if i == 0:
            first = threads()
    counter.close()
    # Live streams, MDA runs and processing workers end with their acquisitions: the
    # thread count after each connect-live-scan round stays where the first left it.
    assert counts[1:] == counts[:1] * 2, (counts, sorted(set(threads()) - set(first)))
    assert not any(name.startswith("napari-foram-live") for name in threads())


@pytest.mark.gui
# Foram live's pymmcore-widgets controls fetch their icons from api.iconify.design
# (superqt); offline they warn and draw a fallback.
@pytest.mark.filterwarnings("ignore:Error fetching icon:UserWarning")
def test_live_widget_counts_on_the_core_napari_micromanager_opened(
    make_napari_viewer, qtbot, tmp_path, random_checkpoint
):
    from pymmcore_plus import CMMCorePlus

    from napari_foram.widgets.live import LiveWidget

    # napari-micromanager's side: the process-wide core, the user's configuration in it.
    shared = CMMCorePlus.instance()
    shared.setDeviceAdapterSearchPaths([str(ADAPTERS)])
    shared.loadSystemConfiguration(str(DEMO_CFG))
    shared.setExposure(2.0)
    before = (shared.getLoadedDevices(), shared.systemConfigurationFile(), shared.getExposure())
    try:
        viewer = make_napari_viewer()
        widget = LiveWidget(
            viewer,
            model=random_checkpoint,
            store_path=tmp_path / "live.zarr",
            device="cpu",
            mc_samples=1,
        )
        qtbot.addWidget(widget)
        widget.source.setCurrentIndex(2)  # "Micro-Manager already open in this napari"
        widget.connect_microscope()
        qtbot.waitUntil(lambda: "connect" in widget.last_outcome, timeout=60_000)
        assert widget.counter is not None, widget.last_outcome
        assert widget.counter.core is shared
        # The configuration check, shown on connect.
        assert "camera Camera 512 x 512 16-bit mono; XY stage XY" in widget.status_label.text()
        widget.sample_fields["sample_id"].setText("MM-1")
        widget.start_sample()
        assert widget.scan_button.isEnabled() and widget.z_planes.isEnabled()
        widget.snap()
        qtbot.waitUntil(lambda: "snap" in widget.last_outcome, timeout=60_000)
        assert not isinstance(widget.last_outcome["snap"], Exception), widget.last_outcome
        assert widget.counter.stats()["processed"] == 1
        widget.close()
        after = (shared.getLoadedDevices(), shared.systemConfigurationFile(), shared.getExposure())
        assert after == before  # still loaded, same configuration, same settings
    finally:
        shared.unloadAllDevices()
