"""The Foram live widget in a real napari viewer (Xvfb): connect the simulated microscope,
fill in the sample, scan, watch layers and tally update; live preview; switch sample.

The GUI thread is watched by a 10 ms timer during the scan: a gap over 100 ms between its
ticks is a stall, and fails the test.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.acquisition]


def _small_widget(viewer, qtbot, checkpoint, store, **options):
    """A Foram live widget on a small simulated camera (486 x 648), CPU, random model."""
    from napari_foram.widgets.live import LiveWidget

    settings = {"mc_samples": 1, "specimens": 8, **options}
    widget = LiveWidget(
        viewer,
        model=checkpoint,
        store_path=store,
        camera_shape=(486, 648),
        device="cpu",
        **settings,
    )
    qtbot.addWidget(widget)
    return widget


class _StallWatch:
    """Largest gap between ticks of a 10 ms timer on the GUI thread."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.last = time.perf_counter()
        self.worst = 0.0
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.worst = max(self.worst, now - self.last)
        self.last = now

    def start(self) -> None:
        self.last = time.perf_counter()
        self.timer.start()

    def stop(self) -> float:
        self.timer.stop()
        return self.worst


def test_live_widget_scans_counts_and_never_stalls(
    make_napari_viewer, qtbot, tmp_path, random_checkpoint
):
    from napari_foram.widgets.live import SPECIMENS_LAYER

    viewer = make_napari_viewer()
    widget = _small_widget(viewer, qtbot, random_checkpoint, tmp_path / "live.zarr", mc_samples=2)
    assert not widget.scan_button.isEnabled()  # nothing to scan before a sample exists
    # Fields overlap by more than the largest specimen (0.45 x 486 px > 200 px), so each
    # specimen is whole in some field; the simulated tray is sized for this scan.
    widget.overlap.setValue(0.45)
    widget.connect_microscope()
    qtbot.waitUntil(lambda: "connect" in widget.last_outcome, timeout=60_000)
    assert widget.counter is not None, widget.last_outcome

    widget.sample_fields["sample_id"].setText("U1308A-12H-3")
    widget.sample_fields["depth"].setText("104.5")
    widget.sample_fields["dry_weight_g"].setText("2.5")
    widget.start_sample()
    assert widget.scan_button.isEnabled()
    assert widget.counter.store.sample_record("U1308A-12H-3").depth == 104.5

    watch = _StallWatch()
    widget.start_scan()  # 3 x 3 fields over the simulated tray (layers made before it runs)
    watch.start()
    qtbot.waitUntil(lambda: "scan" in widget.last_outcome, timeout=180_000)
    worst = watch.stop()
    report = widget.last_outcome["scan"]
    assert not isinstance(report, Exception), report
    assert report.frames_processed == 9 and report.error is None

    # Layers and tally follow the store.
    counter = widget.counter
    stored = counter.store.n_specimens("U1308A-12H-3")
    truth = [s for s in counter.rig.world.specimens if not s.clipped]
    assert stored == len(truth) > 0
    assert len(viewer.layers[SPECIMENS_LAYER].data) == stored
    assert np.isfinite(viewer.layers[SPECIMENS_LAYER].data).all()
    overview = viewer.layers["tray overview"].data  # every field pasted, at display size
    assert overview.shape[0] < 3 * 486 and (overview.reshape(-1, 3).max(axis=1) > 0).mean() > 0.9
    table = {
        widget.table.item(r, 0).text(): widget.table.item(r, 1).text()
        for r in range(widget.table.rowCount())
    }
    assert table["total objects"] == str(stored)
    summary = counter.summary()
    # The bar counts forams (sediment and unsure left out), as the tally widget does.
    assert widget.target_bar.value() == summary["total_forams"]
    assert widget.target_bar.maximum() == 300
    assert table["uncertain (to review)"] == str(summary["n_uncertain"])
    assert "frames/s" in widget.rate_label.text()
    assert widget.scan_bar.format() == "scan: 9 / 9 fields"
    assert "um/px" in widget.camera_label.text() and "8-bit" in widget.camera_label.text()
    # Labels only where they help at tray zoom: the uncertain and unsure specimens.
    features = viewer.layers[SPECIMENS_LAYER].features
    labelled = features["label"] != ""
    assert (labelled == (features["uncertain"] | features["unsure"])).all()
    layer = viewer.layers[SPECIMENS_LAYER]
    plain = np.flatnonzero(~labelled)
    if plain.size:  # a specimen the user selects is labelled at any zoom
        layer.selected_data = {int(plain[0])}
        assert layer.features["label"][plain[0]].startswith(layer.features["class"][plain[0]][:4])
    # Zoomed in until a typical specimen is ~120 px across, every one is labelled.
    from napari_foram.widgets.layers import LABEL_ALL_FROM_PX

    camera = viewer.scene.camera
    camera.zoom = 2 * LABEL_ALL_FROM_PX / float(np.median(layer.size / 1.3))
    assert (layer.features["label"] != "").all()
    assert worst < 0.100, f"GUI thread stalled for {worst * 1000:.0f} ms"

    # Switching sample is one action; the new sample starts empty, then counts a snap.
    widget.sample_fields["sample_id"].setText("U1308A-12H-4")
    widget.start_sample()
    assert counter.sample_id == "U1308A-12H-4"
    assert len(viewer.layers[SPECIMENS_LAYER].data) == 0  # the old sample's are gone
    widget.snap()
    qtbot.waitUntil(lambda: "snap" in widget.last_outcome, timeout=60_000)
    assert not isinstance(widget.last_outcome["snap"], Exception)
    assert counter.store.n_specimens("U1308A-12H-4") > 0
    assert counter.store.n_specimens("U1308A-12H-3") == stored

    # Live preview runs until Stop, and says what it dropped.
    # The session's "processed" counts every frame it has seen (the snap above too).
    before = counter.stats()["processed"]
    widget.start_live()
    qtbot.waitUntil(lambda: counter.stats()["processed"] >= before + 3, timeout=60_000)
    widget.stop()
    qtbot.waitUntil(lambda: "live" in widget.last_outcome, timeout=60_000)
    live = widget.last_outcome["live"]
    assert live.error == "stopped by the user" and live.frames_processed >= 3
    assert "dropped" in widget.status_label.text()
    widget.close()


def test_live_widget_explains_what_is_missing(make_napari_viewer, qtbot, tmp_path):
    from napari_foram.widgets.live import LiveWidget

    widget = LiveWidget(make_napari_viewer(), store_path=tmp_path / "x.zarr")
    qtbot.addWidget(widget)
    widget.start_sample()
    assert "connect a microscope first" in widget.status_label.text()
    widget.source.setCurrentIndex(1)  # Micro-Manager, but no file chosen
    widget.connect_microscope()
    assert "configuration file" in widget.status_label.text()


def test_live_widget_downloads_weights_unless_told_not_to(make_napari_viewer, qtbot, tmp_path):
    """The demo model's first run fetches ImageNet VGG16 by default; `napari-foram demo
    --no-download-weights` arrives unticked; the tooltip names the variable's opt-out.
    """
    from napari_foram.widgets.live import LiveWidget

    viewer = make_napari_viewer()
    default = LiveWidget(viewer, store_path=tmp_path / "a.zarr")
    qtbot.addWidget(default)
    assert default.download_weights.isChecked()
    assert "NAPARI_FORAM_NO_DOWNLOAD" in default.download_weights.toolTip()
    told_not_to = LiveWidget(viewer, store_path=tmp_path / "b.zarr", download_weights=False)
    qtbot.addWidget(told_not_to)
    assert not told_not_to.download_weights.isChecked()


def test_live_widget_shows_a_mono_12_bit_camera(
    make_napari_viewer, qtbot, tmp_path, random_checkpoint
):
    from napari_foram.widgets.live import FRAME_LAYER

    viewer = make_napari_viewer()
    store = tmp_path / "mono.zarr"
    options = {"specimens": 6, "bit_depth": 12, "mono": True}
    widget = _small_widget(viewer, qtbot, random_checkpoint, store, **options)
    widget.rows.setValue(1)
    widget.cols.setValue(1)
    widget.start_demo("MONO-1")  # connect, start the sample, scan the one field
    qtbot.waitUntil(lambda: "scan" in widget.last_outcome, timeout=60_000)
    assert not isinstance(widget.last_outcome["scan"], Exception)
    assert widget.counter is not None and widget.counter.store.n_specimens("MONO-1") > 0
    widget.snap()
    qtbot.waitUntil(lambda: "snap" in widget.last_outcome, timeout=60_000)
    qtbot.wait(600)  # two redraw ticks
    shown = viewer.layers[FRAME_LAYER].data
    # Grey, 8-bit for display, scaled by the camera's 12 bits: the tray floor stays dark
    # and the specimens bright, as in the 8-bit picture.
    assert shown.ndim == 2 and shown.dtype == np.uint8
    assert np.median(shown) < 60 and shown.max() > 150
    widget.close()


def test_overview_gets_every_field_when_results_pile_up(
    make_napari_viewer, qtbot, tmp_path, random_checkpoint
):
    """On a busy machine several fields arrive between two redraws: each must be pasted
    into the tray overview, not just the newest (the others would stay black).
    """
    from napari_foram.widgets.live import OVERVIEW_LAYER

    viewer = make_napari_viewer()
    widget = _small_widget(viewer, qtbot, random_checkpoint, tmp_path / "pile.zarr")
    widget.rows.setValue(2)
    widget.cols.setValue(2)
    widget.overlap.setValue(0.45)
    widget._timer.stop()  # no redraws during the scan: all four results wait for the end
    widget.start_demo("PILE-1")
    qtbot.waitUntil(lambda: "scan" in widget.last_outcome, timeout=120_000)
    report = widget.last_outcome["scan"]
    assert not isinstance(report, Exception) and report.frames_processed == 4
    overview = viewer.layers[OVERVIEW_LAYER].data
    lit = overview.reshape(-1, 3).max(axis=1) > 0
    assert lit.mean() > 0.9, f"only {lit.mean():.0%} of the overview was drawn"
    widget.close()


def test_live_widget_releases_its_store_when_its_dock_goes(
    make_napari_viewer, qtbot, tmp_path, random_checkpoint
):
    """The next writer of the store must not find a lock of a widget that is gone (it
    would take it over as "stale" and trim rows: issue 26, 27).
    """
    import warnings

    from napari_foram.tally.store import TallyStore

    viewer = make_napari_viewer()
    store = tmp_path / "live.zarr"
    widget = _small_widget(viewer, qtbot, random_checkpoint, store)
    viewer.window.add_dock_widget(widget, name="Foram live")
    widget.connect_microscope()
    qtbot.waitUntil(lambda: "connect" in widget.last_outcome, timeout=60_000)
    widget.sample_fields["sample_id"].setText("S1")
    widget.start_sample()
    with pytest.raises(ValueError, match="already open for writing"):
        TallyStore.open(store, mode="a")
    viewer.window.remove_dock_widget(widget)
    qtbot.waitUntil(lambda: widget.counter is None, timeout=30_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "stale lock" taken over
        with TallyStore.open(store, mode="a") as again:
            assert "S1" in again.samples()


def test_closing_napari_releases_the_store(make_napari_viewer, qtbot, tmp_path, random_checkpoint):
    """Issue 27.2: closing napari (viewer.close) releases the store's writer lock: the
    next writer opens it without taking over a stale lock.
    """
    import warnings

    from napari_foram.tally.store import TallyStore

    viewer = make_napari_viewer()
    from napari_foram.widgets.live import LiveWidget

    store = tmp_path / "closed.zarr"
    # Not handed to qtbot: napari deletes it with the window, qtbot would close it again.
    widget = LiveWidget(
        viewer,
        model=random_checkpoint,
        store_path=store,
        camera_shape=(486, 648),
        device="cpu",
        mc_samples=1,
        specimens=8,
    )
    viewer.window.add_dock_widget(widget, name="Foram live")
    widget.connect_microscope()
    qtbot.waitUntil(lambda: "connect" in widget.last_outcome, timeout=120_000)
    widget.sample_fields["sample_id"].setText("S1")
    widget.start_sample()
    viewer.close()
    qtbot.waitUntil(lambda: widget.counter is None, timeout=30_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a "took over a stale lock" warning fails here
        with TallyStore.open(store, mode="a") as again:
            assert "S1" in again.samples()


def test_stop_in_the_widget_counts_no_field_after_the_one_in_flight(
    make_napari_viewer, qtbot, tmp_path, random_checkpoint
):
    """Issue 27.7 in the widget: Stop pressed while field k is in flight leaves fields
    <= k (+ at most the one in flight) in the store, and the status says so.
    """
    viewer = make_napari_viewer()
    widget = _small_widget(viewer, qtbot, random_checkpoint, tmp_path / "stop.zarr")
    widget.overlap.setValue(0.45)
    widget.connect_microscope()
    qtbot.waitUntil(lambda: "connect" in widget.last_outcome, timeout=120_000)
    widget.sample_fields["sample_id"].setText("STOP-1")
    widget.start_sample()
    widget.start_scan()  # 3 x 3 fields
    counter = widget.counter
    qtbot.waitUntil(lambda: counter.stats()["processed"] >= 2, timeout=120_000)
    at_stop = counter.stats()["processed"]
    widget.stop_button.click()
    qtbot.waitUntil(lambda: "scan" in widget.last_outcome, timeout=120_000)
    report = widget.last_outcome["scan"]
    assert report.frames_processed <= at_stop + 1 < 9
    rows = counter.store.read_specimens("STOP-1")
    assert int(np.asarray(rows["frame_index"]).max(initial=-1)) <= at_stop
    stored = counter.store.n_specimens("STOP-1")
    assert widget.status_label.text().startswith(
        f"scan stopped after field {report.frames_processed} of 9: {stored} specimen"
    )
    widget.close()


def test_failed_connect_clears_the_old_microscope(
    make_napari_viewer, qtbot, tmp_path, random_checkpoint
):
    """Issue 27.10: after a failed connect no read-out of the old microscope stays."""
    viewer = make_napari_viewer()
    widget = _small_widget(viewer, qtbot, random_checkpoint, tmp_path / "a.zarr")
    widget.connect_microscope()
    qtbot.waitUntil(lambda: "connect" in widget.last_outcome, timeout=120_000)
    assert "um/px" in widget.camera_label.text() and widget.controls.exposure is not None
    widget.last_outcome.pop("connect")
    widget.config_path.setText(str(tmp_path / "missing.cfg"))  # chooses the configuration
    widget.connect_microscope()
    qtbot.waitUntil(lambda: "connect" in widget.last_outcome, timeout=120_000)
    assert widget.counter is None
    text = widget.camera_label.text()
    assert text.startswith("not connected:") and "missing.cfg" in text and "\n" not in text
    assert "um/px" not in text and widget.controls.exposure is None
    widget.close()


def test_activity_progress_is_drawn_from_the_event_loop_with_the_latest_figures(qtbot):
    """The progress bar of napari runs the event loop on every change; Foram live's updates
    are applied later, from the loop itself, never inside the slot that made them.
    """
    from napari_foram.widgets._qt import ActivityProgress

    activity = ActivityProgress()
    for done in range(1, 4):
        activity.update(done, 9, "Foram live scan")
    assert activity._bar is None  # nothing drawn from inside the caller
    qtbot.waitUntil(lambda: activity._bar is not None, timeout=5_000)
    assert (activity._bar.n, activity._bar.total) == (3, 9)  # one change, the latest
    activity.update(5, 9, "Foram live scan")
    activity.close()  # a change not yet drawn is dropped with the bar
    qtbot.wait(50)
    assert activity._bar is None
