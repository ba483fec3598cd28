"""napari-micromanager and Foram live side by side: one napari, one microscope.

The lab opens napari-micromanager to drive the microscope and Foram live to count, in one
napari window, on one core (``CMMCorePlus.instance()``, which Foram live's "Micro-Manager
already open in this napari" source uses). Real throughout: napari-micromanager's
`MainWindow` docked in a real viewer, the C++ MMCore with Micro-Manager's demo adapters
and MMConfig_demo.cfg (../shared/micromanager, as tests/test_mm_cpp.py finds them), Foram
live's widget with VGG16 (random weights) and a tally store.

napari-micromanager 0.3.1 creates a core of its own when napari opens it from the
Plugins menu (``MainWindow(viewer)``: it deliberately avoids ``CMMCorePlus.instance()``).
Sharing is ``MainWindow(viewer, mmcore=CMMCorePlus.instance())``: the plugin then drives
the process-wide core without owning it. The last test shows what a user gets from the
menu path today.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari_micromanager", reason="napari-micromanager is not installed")

from test_mm_cpp import _REASON, ADAPTERS, DEMO_CFG

if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = [
    pytest.mark.gui,
    pytest.mark.mmcore,
    pytest.mark.acquisition,
    # napari-micromanager's and pymmcore-widgets' buttons fetch their icons from
    # api.iconify.design (superqt); offline they warn and draw a fallback.
    pytest.mark.filterwarnings("ignore:Error fetching icon:UserWarning"),
]

SHARED_SOURCE = "Micro-Manager already open in this napari"
TIMEOUT_MS = 120_000


@pytest.fixture
def shared_core():
    """The process-wide core, pointed at the demo adapters; unloaded afterwards. Yields it
    with the list of configuration files loaded into it.

    Loads are counted at ``loadSystemConfiguration`` itself (napari-micromanager's
    MainWindow wraps that method on the core and calls what it found there), not by
    ``systemConfigurationLoaded``: MMCore 12 also emits that signal when devices are
    unloaded, from its notification thread, so a previous test's unload can arrive late.
    """
    from pymmcore_plus import CMMCorePlus

    core = CMMCorePlus.instance()
    core.unloadAllDevices()
    core.setDeviceAdapterSearchPaths([str(ADAPTERS)])
    loads: list[str] = []
    load = core.loadSystemConfiguration

    def counted_load(path) -> None:
        loads.append(str(path))
        load(path)

    core.loadSystemConfiguration = counted_load
    yield core, loads
    if core.isSequenceRunning():
        core.stopSequenceAcquisition()
    core.mda.cancel()
    for wrapped in ("loadSystemConfiguration", "_nmm_original_loadSystemConfiguration"):
        core.__dict__.pop(wrapped, None)
    # napari-micromanager's widgets outlive its window (its clean-up runs only when napari
    # closes) and stay connected to this core; unloading it, here or in a later test,
    # would call their slots on devices that are gone. Later tests get a core of their
    # own: this one is left as it is, no longer the process's instance.
    import pymmcore_plus.core._mmcore_plus as mmcore_plus

    mmcore_plus._instance = None


@pytest.fixture
def viewer(make_napari_viewer):
    """A napari viewer as the lab has it. napari's `make_napari_viewer` stands a bare
    QWidget in for napari-console's QtConsole (no IPython kernel in tests);
    napari-micromanager pushes its names (``mmcore``, ``MDASequence``) into the console
    and would fail on the stand-in with "'QWidget' object has no attribute 'push'", so
    the stand-in takes them and drops them, as nothing reads them here.
    """
    v = make_napari_viewer()
    console = v.window._qt_viewer.console
    if console is not None and not hasattr(console, "push"):
        console.push = lambda namespace: None
    return v


def _micromanager(viewer, core):
    """napari-micromanager's window docked, loading the lab's configuration itself."""
    from napari_micromanager import MainWindow

    window = MainWindow(viewer, config=str(DEMO_CFG), mmcore=core)
    dock = viewer.window.add_dock_widget(window, name="Micro-Manager", area="top")
    return window, dock


def _foram_live(viewer, qtbot, tmp_path, checkpoint):
    """Foram live docked, connected to the microscope napari-micromanager opened."""
    from napari_foram.widgets.live import LiveWidget

    widget = LiveWidget(
        viewer, model=checkpoint, store_path=tmp_path / "live.zarr", device="cpu", mc_samples=1
    )
    dock = viewer.window.add_dock_widget(widget, name="Foram live", area="right")
    widget.source.setCurrentIndex(widget.source.findText(SHARED_SOURCE))
    assert widget.source.currentText() == SHARED_SOURCE
    widget.connect_microscope()
    qtbot.waitUntil(lambda: "connect" in widget.last_outcome, timeout=TIMEOUT_MS)
    assert widget.counter is not None, widget.last_outcome
    widget.sample_fields["sample_id"].setText("MM-1")
    widget.start_sample()
    assert widget.counter.sample_id == "MM-1"
    return widget, dock


def _finished(widget, what: str, qtbot) -> object:
    qtbot.waitUntil(lambda: what in widget.last_outcome, timeout=TIMEOUT_MS)
    outcome = widget.last_outcome.pop(what)
    assert not isinstance(outcome, Exception), outcome
    return outcome


def test_foram_live_counts_the_stream_napari_micromanager_shows(
    viewer, qtbot, tmp_path, random_checkpoint, shared_core
):
    core, loads = shared_core
    window, _ = _micromanager(viewer, core)
    assert window.core is core and loads == [str(DEMO_CFG)]
    core.setExposure(5.0)
    widget, _ = _foram_live(viewer, qtbot, tmp_path, random_checkpoint)
    assert widget.counter.core is core

    # napari-micromanager's Live button: a continuous acquisition it previews.
    core.startContinuousSequenceAcquisition()
    qtbot.waitUntil(lambda: "preview" in viewer.layers, timeout=TIMEOUT_MS)
    preview = viewer.layers["preview"]

    # Foram live counts what the camera streams; napari-micromanager keeps previewing
    # the same stream (its preview restarts with the stream Foram's live runs).
    widget.start_live()
    qtbot.waitUntil(lambda: widget.counter.stats()["processed"] >= 3, timeout=TIMEOUT_MS)
    seen = np.array(preview.data, copy=True)
    qtbot.waitUntil(lambda: not np.array_equal(np.asarray(preview.data), seen), timeout=TIMEOUT_MS)
    assert core.isSequenceRunning()
    widget.stop()
    _finished(widget, "live", qtbot)
    assert widget.counter.stats()["processed"] >= 3

    # A tray scan by Foram live is an MDA on the shared core: napari-micromanager's MDA
    # viewer shows its fields too, and the count is Foram's.
    widget.rows.setValue(1)
    widget.cols.setValue(2)
    layers_before = set(viewer.layers)
    widget.start_scan()
    report = _finished(widget, "scan", qtbot)
    assert report.error is None and report.frames_processed == 2
    mda_layers = [layer for layer in viewer.layers if layer not in layers_before]
    assert any(layer.metadata.get("napari_micromanager") for layer in mda_layers), [
        (layer.name, list(layer.metadata)) for layer in mda_layers
    ]
    assert loads == [str(DEMO_CFG)]  # loaded once, by napari-micromanager


def test_closing_napari_micromanagers_dock_leaves_foram_live_counting(
    viewer, qtbot, tmp_path, random_checkpoint, shared_core
):
    core, loads = shared_core
    _, mm_dock = _micromanager(viewer, core)
    core.setExposure(2.0)
    widget, _ = _foram_live(viewer, qtbot, tmp_path, random_checkpoint)
    viewer.window.remove_dock_widget(mm_dock)
    qtbot.wait(50)
    # The core stays loaded (napari-micromanager never owned it): Foram live counts on.
    assert core.getCameraDevice() == "Camera"
    widget.snap()
    _finished(widget, "snap", qtbot)
    widget.rows.setValue(1)
    widget.cols.setValue(2)
    widget.start_scan()
    report = _finished(widget, "scan", qtbot)
    assert report.error is None and report.frames_processed == 2
    assert widget.counter.stats()["processed"] == 3  # the snap and the two fields
    assert loads == [str(DEMO_CFG)]


def test_closing_foram_lives_dock_leaves_napari_micromanager_working(
    viewer, qtbot, tmp_path, random_checkpoint, shared_core
):
    import useq

    from napari_foram.tally.store import TallyStore

    core, loads = shared_core
    _micromanager(viewer, core)
    core.setExposure(2.0)
    widget, foram_dock = _foram_live(viewer, qtbot, tmp_path, random_checkpoint)
    widget.snap()
    _finished(widget, "snap", qtbot)
    store_path = widget.counter.store.path
    viewer.window.remove_dock_widget(foram_dock)
    qtbot.waitUntil(lambda: widget.counter is None, timeout=TIMEOUT_MS)
    # Foram live let go of its store (the writer lock is free) and of nothing else.
    with TallyStore.open(store_path, mode="a") as store:
        assert store.n_specimens("MM-1") >= 0
    assert core.getCameraDevice() == "Camera" and core.getExposure() == 2.0

    # napari-micromanager on its own: a snap is previewed, an MDA gets its layer.
    core.snapImage()
    qtbot.waitUntil(lambda: "preview" in viewer.layers, timeout=TIMEOUT_MS)
    before = set(viewer.layers)
    core.run_mda(useq.MDASequence(time_plan={"interval": 0, "loops": 3}))
    qtbot.waitUntil(lambda: not core.mda.is_running(), timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: len(set(viewer.layers) - before) > 0, timeout=TIMEOUT_MS)
    (layer,) = set(viewer.layers) - before
    assert layer.metadata.get("napari_micromanager")
    assert np.asarray(layer.data).shape[-2:] == (512, 512)
    # napari-micromanager fills its layer from queued Qt signals: every frame arrives.
    qtbot.waitUntil(
        lambda: np.asarray(layer.data).reshape(-1, 512, 512).max(axis=(1, 2)).all(),
        timeout=TIMEOUT_MS,
    )
    assert loads == [str(DEMO_CFG)]


def _run_micromanager_mda(core, qtbot, sequence) -> None:
    """What napari-micromanager's MDA widget does: the MDA on a thread of the core's."""
    core.run_mda(sequence)
    qtbot.waitUntil(core.mda.is_running, timeout=TIMEOUT_MS)


def test_a_micromanager_mda_keeps_the_camera_and_foram_live_says_so(
    viewer, qtbot, tmp_path, random_checkpoint, shared_core
):
    import useq

    core, loads = shared_core
    _micromanager(viewer, core)
    widget, _ = _foram_live(viewer, qtbot, tmp_path, random_checkpoint)
    core.setExposure(10.0)
    # A time lapse, one snap per time point: the camera is the MDA's between them too.
    timelapse = useq.MDASequence(time_plan={"interval": 0.2, "loops": 100})
    _run_micromanager_mda(core, qtbot, timelapse)
    widget.snap()
    qtbot.waitUntil(lambda: "snap" in widget.last_outcome, timeout=TIMEOUT_MS)
    refused = widget.last_outcome.pop("snap")
    assert isinstance(refused, Exception) and "an acquisition (MDA) is running" in str(refused)
    assert core.mda.is_running()  # napari-micromanager's MDA goes on
    assert widget.counter.stats()["processed"] == 0
    core.mda.cancel()
    qtbot.waitUntil(lambda: not core.mda.is_running(), timeout=TIMEOUT_MS)
    widget.snap()
    _finished(widget, "snap", qtbot)
    assert widget.counter.stats()["processed"] == 1
    assert loads == [str(DEMO_CFG)]


def test_a_sequenced_micromanager_mda_is_not_cut_short_by_a_foram_snap(
    viewer, qtbot, tmp_path, random_checkpoint, shared_core
):
    import useq

    core, _ = shared_core
    _micromanager(viewer, core)
    widget, _ = _foram_live(viewer, qtbot, tmp_path, random_checkpoint)
    core.setExposure(20.0)
    frames: list[object] = []
    core.mda.events.frameReady.connect(lambda *args: frames.append(args[0]))
    # No interval: pymmcore-plus streams the time points as one camera sequence.
    burst = useq.MDASequence(time_plan={"interval": 0, "loops": 60})
    _run_micromanager_mda(core, qtbot, burst)
    # napari-micromanager pauses a starting MDA until its layers exist; then the
    # camera streams the burst.
    qtbot.waitUntil(core.isSequenceRunning, timeout=TIMEOUT_MS)
    widget.snap()
    qtbot.waitUntil(lambda: "snap" in widget.last_outcome, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: not core.mda.is_running(), timeout=TIMEOUT_MS)
    # frameReady is delivered through Qt's queue: the last frames may land after the MDA
    # reports done. A snap that cut the burst short would leave fewer, and this times out.
    qtbot.waitUntil(lambda: len(frames) >= 60, timeout=TIMEOUT_MS)
    assert len(frames) == 60


def test_napari_micromanager_from_the_plugins_menu_is_found_in_the_viewer(
    viewer, qtbot, tmp_path, random_checkpoint, shared_core
):
    """What napari's Plugins menu does (``MainWindow(viewer)``): napari-micromanager
    0.3.1 makes a private core, not ``CMMCorePlus.instance()``; Foram live's shared
    source finds its window in the viewer and counts with that core.
    """
    from napari_micromanager import MainWindow

    core, _ = shared_core
    window = MainWindow(viewer)
    viewer.window.add_dock_widget(window, name="Micro-Manager", area="top")
    window.core.setDeviceAdapterSearchPaths([str(ADAPTERS)])
    window.core.loadSystemConfiguration(str(DEMO_CFG))
    assert window.core is not core and window.core.getCameraDevice() == "Camera"
    from napari_foram.widgets.live import LiveWidget

    widget = LiveWidget(
        viewer,
        model=random_checkpoint,
        store_path=tmp_path / "live.zarr",
        device="cpu",
        mc_samples=1,
    )
    viewer.window.add_dock_widget(widget, name="Foram live", area="right")
    widget.source.setCurrentIndex(widget.source.findText(SHARED_SOURCE))
    widget.connect_microscope()
    qtbot.waitUntil(lambda: "connect" in widget.last_outcome, timeout=TIMEOUT_MS)
    outcome = widget.last_outcome["connect"]
    assert not isinstance(outcome, Exception), outcome
    assert widget.counter is not None and widget.counter.core is window.core
    assert widget.counter.core_is_shared  # napari-micromanager's: never unloaded by us
