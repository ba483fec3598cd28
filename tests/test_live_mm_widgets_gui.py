"""Foram live's microscope controls are pymmcore-widgets' own (issue 29), bound to the
connected core: exposure, stage, ROI on the simulated microscope; the configuration
loader connects a real C++ demo configuration; reconnecting rebinds them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.gui, pytest.mark.acquisition]

MM_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "micromanager"
DEMO_CFG = MM_DIR / "MMConfig_demo.cfg"


def _widget(viewer, qtbot, checkpoint, store, **options):
    from napari_foram.widgets.live import LiveWidget

    widget = LiveWidget(
        viewer,
        model=checkpoint,
        store_path=store,
        camera_shape=(486, 648),
        device="cpu",
        mc_samples=1,
        specimens=8,
        **options,
    )
    qtbot.addWidget(widget)
    return widget


def _connect(widget, qtbot) -> None:
    widget.last_outcome.pop("connect", None)
    widget.connect_microscope()
    qtbot.waitUntil(lambda: "connect" in widget.last_outcome, timeout=180_000)
    assert not isinstance(widget.last_outcome["connect"], Exception), widget.last_outcome


def test_pymmcore_widgets_drive_the_connected_core(
    make_napari_viewer, qtbot, tmp_path, random_checkpoint
):
    from pymmcore_widgets import CameraRoiWidget, ExposureWidget, StageWidget

    viewer = make_napari_viewer()
    widget = _widget(viewer, qtbot, random_checkpoint, tmp_path / "mm.zarr")
    _connect(widget, qtbot)
    core = widget.counter.mm_core()
    controls = widget.controls
    assert isinstance(controls.exposure, ExposureWidget) and controls.exposure._mmc is core
    assert isinstance(controls.xy_stage, StageWidget) and controls.xy_stage._mmc is core
    assert isinstance(controls.roi, CameraRoiWidget)

    # Exposure through pymmcore-widgets' control sets the core's exposure.
    controls.exposure.spinBox.setValue(37.0)
    assert core.getExposure() == pytest.approx(37.0)

    # The stage moved through StageWidget; the next counted field records where.
    start = core.getXYPosition()
    stage = controls.xy_stage
    stage._step.setValue(150.0)
    from pymmcore_widgets.control._stage_widget import MoveStageButton

    buttons = stage._move_btns.findChildren(MoveStageButton)
    right = next(b for b in buttons if (b.xmag, b.ymag) == (1, 0))
    right.click()
    qtbot.waitUntil(lambda: core.getXYPosition()[0] > start[0] + 100, timeout=10_000)
    moved = core.getXYPosition()
    widget.sample_fields["sample_id"].setText("MOVED-1")
    widget.start_sample()
    counted: list = []
    widget.runner.on("result", lambda r: (counted.append(r), widget._pending.append(r)))
    widget.snap()
    qtbot.waitUntil(lambda: "snap" in widget.last_outcome, timeout=60_000)
    assert not isinstance(widget.last_outcome["snap"], Exception), widget.last_outcome
    assert len(counted) == 1
    assert counted[0].frame.stage_xy_um == pytest.approx(moved, abs=1e-6)

    # The property browser opens in its own window, on the same core.
    controls.show_properties()
    assert controls.property_window.isWindow() and controls.property_window._mmc is core

    # Reconnecting (a new simulated microscope) rebinds every control to the new core.
    widget.seed.setValue(8)
    _connect(widget, qtbot)
    new_core = widget.counter.mm_core()
    assert new_core is not core
    assert widget.controls.exposure._mmc is new_core
    widget.controls.exposure.spinBox.setValue(12.0)
    assert new_core.getExposure() == pytest.approx(12.0)
    assert widget.controls.xy_stage._mmc is new_core
    widget.close()


def test_view_only_snap_is_shown_not_counted(
    make_napari_viewer, qtbot, tmp_path, random_checkpoint
):
    from napari_foram.widgets.live import FRAME_LAYER

    viewer = make_napari_viewer()
    widget = _widget(viewer, qtbot, random_checkpoint, tmp_path / "view.zarr")
    _connect(widget, qtbot)
    widget.sample_fields["sample_id"].setText("VIEW-1")
    widget.start_sample()
    widget.controls.snap_view.click()
    qtbot.waitUntil(lambda: viewer.layers[FRAME_LAYER].data.max() > 0, timeout=30_000)
    assert widget.counter.store.n_specimens("VIEW-1") == 0  # shown, never counted
    assert "counts nothing" in widget.controls.snap_view.toolTip()
    widget.close()


@pytest.mark.mmcore
def test_configuration_loader_connects_the_demo_microscope(
    make_napari_viewer, qtbot, tmp_path, random_checkpoint
):
    if not (MM_DIR / "adapters" / "libmmgr_dal_DemoCamera.so.0").is_file():
        pytest.skip(f"Micro-Manager demo adapters not found in {MM_DIR}")
    from pymmcore_widgets import ConfigurationWidget

    viewer = make_napari_viewer()
    widget = _widget(viewer, qtbot, random_checkpoint, tmp_path / "cfg.zarr")
    loader = widget.config_loader
    assert isinstance(loader, ConfigurationWidget)
    widget.adapter_path.setText(str(MM_DIR / "adapters"))
    loader.cfg_LineEdit.setText(str(DEMO_CFG))
    widget.last_outcome.pop("connect", None)
    loader.load_cfg_Button.click()
    qtbot.waitUntil(lambda: "connect" in widget.last_outcome, timeout=60_000)
    assert not isinstance(widget.last_outcome["connect"], Exception), widget.last_outcome
    core = widget.counter.mm_core()
    assert widget.counter.microscope_info["config"] == str(DEMO_CFG)
    assert core.getCameraDevice() == "Camera" and widget.controls.exposure._mmc is core
    assert widget.controls.z_stage is not None  # the demo has a focus drive
    widget.close()
