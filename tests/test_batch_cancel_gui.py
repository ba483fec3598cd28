"""Batch folders: Cancel and resume in a real napari at 1366 x 768 (issue 27).

The issue: nothing moved for ~20 s after Count, Cancel let four more files finish (33 s),
"files" and "specimens" counted different runs, typing a folder did not fill in the
store, and an earlier store's layers stayed on the canvas. Here: 20 real-size frames
(2592 x 1944, as a tray camera gives) with a couple of specimens each. The checks are on
the order of events and on what the store holds, never on wall time; the times are
printed (run with -s) for the record.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_foram.batch import BatchReport
from napari_foram.synthetic import render_tray
from napari_foram.tally.store import TallyStore

pytestmark = pytest.mark.gui

SCREEN = (1366, 768)
N_FILES = 20
#: Screenshots go here too when set (docs/images/round2_batch_cancel.png is made so).
SHOTS_ENV = "NAPARI_FORAM_SHOTS"


@pytest.fixture(scope="module")
def trays(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """20 real-size frames in two samples, two specimens each (VGG16 costs ~0.3 s a
    crop on two cores); TIFF, so writing and reading them is quick. The truth: the
    specimens rendered.
    """
    folder = tmp_path_factory.mktemp("cancel") / "trays"
    truth = 0
    for i in range(N_FILES):
        sample = folder / ("S1" if i < N_FILES // 2 else "S2")
        sample.mkdir(parents=True, exist_ok=True)
        tray = render_tray(
            100 + i, n_specimens=2, clipped=False, touching_pairs=0, border=False, lint=0
        )
        tifffile.imwrite(sample / f"tray{i + 1}.tif", tray.image)
        truth += sum(not s.clipped for s in tray.specimens)
    return folder, truth


def _record(widget) -> list[tuple[float, str, tuple]]:
    """Every event the batch thread sends the widget, with its time, in order."""
    events: list[tuple[float, str, tuple]] = []
    handlers = widget.runner._handlers
    for kind in ("progress", "file", "finished"):
        original = handlers[kind]

        def handler(*args, _kind=kind, _original=original):
            events.append((time.monotonic(), _kind, args))
            return _original(*args)

        handlers[kind] = handler
    return events


def _fits(widget, qtbot) -> None:
    """The window is the laptop's size and the status shows its whole text."""
    qtbot.wait(200)  # the layout follows a new text on the next pass of the event loop
    main = widget.window()
    assert main.width() <= SCREEN[0] and main.height() <= SCREEN[1], main.size()
    label = widget.status_label
    assert label.width() <= label.parentWidget().width()
    assert label.heightForWidth(label.width()) <= label.height() + 1, label.text()


def _shot(viewer, qtbot, path: Path) -> np.ndarray:
    qtbot.wait(300)
    return viewer.screenshot(str(path), canvas_only=False, flash=False)


def test_count_shows_progress_at_once_cancel_keeps_what_was_counted_and_resume_ends_it(
    make_napari_viewer, qtbot, random_checkpoint, trays, tmp_path
):
    from napari_foram.widgets.batch import SPECIMENS_LAYER, BatchWidget

    folder, truth = trays
    viewer = make_napari_viewer(show=True)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-foram", "Batch folders")
    assert isinstance(widget, BatchWidget)
    viewer.window.resize(*SCREEN)
    # Typed, as a user does: the store is filled in as for Browse.
    qtbot.keyClicks(widget.folder_edit, str(folder))
    store = folder.with_name("trays_tally.zarr")
    assert widget.store_edit.text() == str(store)
    widget.model_edit.setText(str(random_checkpoint))
    widget.mc.setValue(1)
    events = _record(widget)

    clicked = time.monotonic()
    qtbot.mouseClick(widget.start_button, _left())
    qtbot.waitUntil(lambda: any(kind == "progress" for _, kind, _ in events), timeout=60_000)
    first_progress = events[0][0] - clicked
    # The first word is a stage, before any file: the model, then the files, one by one.
    assert events[0][1:] == ("progress", (0, 0, "reading the model"))
    qtbot.waitUntil(lambda: widget._done >= 2, timeout=300_000)
    stages = [args[2] for _, kind, args in events if kind == "progress" and args[1] == 0]
    assert stages[:3] == ["reading the model", "reading the folder", "reading the model"]
    assert "loading the model" in stages
    assert stages.index("loading the model") > max(
        i for i, s in enumerate(stages) if s.startswith("checking the files")
    )
    # Mid-run: a moving clock, the file under way named, the dock within the screen.
    qtbot.waitUntil(lambda: ".tif: " in widget.status_label.text(), timeout=120_000)
    assert widget.eta_label.text().startswith(f"{widget._done}/{N_FILES} files")
    assert "left" in widget.eta_label.text() or "finishing" in widget.eta_label.text()
    _fits(widget, qtbot)
    mid = _shot(viewer, qtbot, tmp_path / "mid.png")

    # Cancel while a file is being classified.
    qtbot.waitUntil(
        lambda: widget.status_label.text().endswith("detecting and classifying"),
        timeout=120_000,
    )
    # Marked right after the widget's own slot has set the stop event.
    widget.cancel_button.clicked.connect(lambda: events.append((time.monotonic(), "cancel", ())))
    qtbot.mouseClick(widget.cancel_button, _left())
    qtbot.waitUntil(lambda: widget.report is not None, timeout=60_000)
    kinds = [kind for _, kind, _ in events]
    at = kinds.index("cancel")
    cancel_s = events[kinds.index("finished")][0] - events[at][0]
    report = widget.report
    assert isinstance(report, BatchReport), report
    assert report.interrupted
    kept = [f.file for f in report.files if f.status == "processed"]
    before = [args[0].file for _, kind, args in events[:at] if kind == "file"]
    # Shown after the click: at most the file whose work was done as Cancel came (its
    # commit may also have been on its way to this thread already). Nothing after it.
    files_after = [args[0].file for _, kind, args in events[at:] if kind == "file"]
    assert len(files_after) <= 1
    assert kept == before + files_after
    # The files kept, then the files left, the first of them the one dropped in flight:
    # none counted out of order, none lost, none twice.
    in_order = [f"{sid}/tray{i + 1}.tif" for i, sid in _names()]
    assert kept + report.not_counted == in_order
    assert len(report.abandoned) <= 1
    assert report.abandoned == report.not_counted[: len(report.abandoned)]
    with TallyStore.open(store) as tally:
        in_store = [
            f["file"] for sid in tally.samples() for f in tally.processed_files(sid).values()
        ]
        stored_specimens = sum(int(tally.counts(sid).sum()) for sid in tally.samples())
    assert in_store == kept  # nothing of the dropped file was written
    status = widget.status_label.text().replace("\u200b", "")
    assert status.startswith(f"cancelled: kept in the store: {len(kept)} file(s)")
    assert f"{len(report.not_counted)} file(s) left" in status
    for name in report.abandoned:
        assert name in status
    # The table says this run's numbers, as the report does; the store's apart.
    table = _table(widget)
    assert sum(row["files"] for row in table.values()) == len(kept)
    for sid, row in table.items():
        assert row["specimens"] == report.samples[sid]["new"]
        assert row["in store"] == report.samples[sid]["total"]
    assert sum(row["in store"] for row in table.values()) == stored_specimens
    assert widget.start_button.isEnabled() and not widget.cancel_button.isEnabled()
    _fits(widget, qtbot)
    after = _shot(viewer, qtbot, tmp_path / "after.png")
    _save_pair(mid, after)

    # Resume: the files kept are skipped, the others counted once.
    resumed_at = time.monotonic()
    widget.start()
    qtbot.waitUntil(lambda: widget.report is not None, timeout=600_000)
    resume_s = time.monotonic() - resumed_at
    again = widget.report
    assert isinstance(again, BatchReport) and not again.interrupted, again
    assert [f.file for f in again.files if f.status == "skipped"] == kept
    assert [f.file for f in again.files if f.status == "processed"] == report.not_counted
    with TallyStore.open(store) as tally:
        files = [f["file"] for sid in tally.samples() for f in tally.processed_files(sid).values()]
        total = sum(int(tally.counts(sid).sum()) for sid in tally.samples())
    assert sorted(files) == sorted(f"{sid}/tray{i + 1}.tif" for i, sid in _names())
    assert total == truth
    table = _table(widget)
    assert sum(row["files"] for row in table.values()) == len(report.not_counted)
    assert sum(row["in store"] for row in table.values()) == truth
    assert viewer.layers[SPECIMENS_LAYER].metadata["store"] == str(store)
    print(
        f"\nfirst status {first_progress:.2f} s after Count; Cancel took effect in "
        f"{cancel_s:.2f} s ({len(kept)} kept, {report.abandoned} dropped); resume of "
        f"{len(report.not_counted)} files {resume_s:.0f} s"
    )


def _names() -> list[tuple[int, str]]:
    return [(i, "S1" if i < N_FILES // 2 else "S2") for i in range(N_FILES)]


def _left():
    from qtpy.QtCore import Qt

    return Qt.MouseButton.LeftButton


def _table(widget) -> dict[str, dict[str, int]]:
    from napari_foram.widgets.batch import TABLE_COLUMNS

    rows = {}
    for r in range(widget.table.rowCount()):
        cells = [widget.table.item(r, c).text() for c in range(len(TABLE_COLUMNS))]
        rows[cells[0]] = {
            name: int(v) for name, v in zip(TABLE_COLUMNS[1:], cells[1:], strict=True)
        }
    return rows


def _save_pair(mid: np.ndarray, after: np.ndarray) -> None:
    """Mid-run above, after Cancel below, into $NAPARI_FORAM_SHOTS when set."""
    folder = os.environ.get(SHOTS_ENV)
    if not folder:
        return
    import imageio.v3 as iio

    width = max(mid.shape[1], after.shape[1])
    pad = [np.pad(a, ((0, 8), (0, width - a.shape[1]), (0, 0))) for a in (mid, after)]
    Path(folder).mkdir(parents=True, exist_ok=True)
    iio.imwrite(Path(folder) / "round2_batch_cancel.png", np.concatenate(pad)[..., :3])


def test_typing_a_folder_fills_the_default_store_unless_the_user_chose_one(
    make_napari_viewer, qtbot, tmp_path
):
    from napari_foram.widgets.batch import BatchWidget

    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    viewer = make_napari_viewer()
    widget = BatchWidget(viewer)
    qtbot.addWidget(widget)
    qtbot.keyClicks(widget.folder_edit, str(first))
    assert widget.store_edit.text() == str(tmp_path / "first_tally.zarr")
    # A path that is not (yet) a folder leaves the store as it was.
    qtbot.keyClicks(widget.folder_edit, "x")
    assert widget.store_edit.text() == str(tmp_path / "first_tally.zarr")
    widget.folder_edit.clear()
    qtbot.keyClicks(widget.folder_edit, str(second))
    assert widget.store_edit.text() == str(tmp_path / "second_tally.zarr")
    # The user types a store: another folder no longer replaces it.
    widget.store_edit.selectAll()
    qtbot.keyClicks(widget.store_edit, str(tmp_path / "mine.zarr"))
    widget.folder_edit.clear()
    qtbot.keyClicks(widget.folder_edit, str(first))
    assert widget.store_edit.text() == str(tmp_path / "mine.zarr")
    # Emptied by the user: the folder's default again.
    widget.store_edit.selectAll()
    qtbot.keyClick(widget.store_edit, _key_backspace())
    assert widget.store_edit.text() == ""
    widget.folder_edit.clear()
    qtbot.keyClicks(widget.folder_edit, str(second))
    assert widget.store_edit.text() == str(tmp_path / "second_tally.zarr")


def _key_backspace():
    from qtpy.QtCore import Qt

    return Qt.Key.Key_Backspace


def test_counting_into_another_store_removes_the_first_stores_layers(
    make_napari_viewer, qtbot, random_checkpoint, tmp_path
):
    from napari_foram.widgets._active import hub
    from napari_foram.widgets.batch import FRAME_LAYER, SPECIMENS_LAYER, BatchWidget

    folder = tmp_path / "small"
    (folder / "S1").mkdir(parents=True)
    tray = render_tray(7, shape=(400, 500), n_specimens=2, clipped=False, touching_pairs=0,
                       border=False)  # fmt: skip
    tifffile.imwrite(folder / "S1" / "tray1.tif", tray.image)
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-foram", "Batch folders")
    assert isinstance(widget, BatchWidget)
    widget.folder_edit.setText(str(folder))
    widget.model_edit.setText(str(random_checkpoint))
    widget.mc.setValue(1)
    first = tmp_path / "first.zarr"
    widget.store_edit.setText(str(first))
    widget.start()
    qtbot.waitUntil(lambda: widget.report is not None, timeout=120_000)
    assert isinstance(widget.report, BatchReport), widget.report
    assert "S1 crops" in viewer.layers and FRAME_LAYER in viewer.layers
    assert viewer.layers[SPECIMENS_LAYER].metadata["store"] == str(first)
    crops_layer = viewer.layers["S1 crops"]

    second = tmp_path / "second.zarr"
    widget.store_edit.setText(str(second))
    widget.start()
    # At once, before a file of the new store is drawn: the first store's layers go.
    names = [layer.name for layer in viewer.layers]
    assert FRAME_LAYER not in names and SPECIMENS_LAYER not in names and "S1 crops" not in names
    qtbot.waitUntil(lambda: widget.report is not None, timeout=120_000)
    assert isinstance(widget.report, BatchReport), widget.report
    layer = viewer.layers[SPECIMENS_LAYER]
    assert layer.metadata["store"] == str(second)
    assert viewer.layers["S1 crops"] is not crops_layer
    # Labelling on the canvas writes to the store the shown file was counted into.
    assert hub(viewer).layer_context[SPECIMENS_LAYER](layer) == (second, "S1")
    # The same store again keeps its layers (a resume).
    widget.start()
    assert viewer.layers[SPECIMENS_LAYER] is layer
    qtbot.waitUntil(lambda: widget.report is not None, timeout=120_000)
    assert widget.report.count("skipped") == 1
