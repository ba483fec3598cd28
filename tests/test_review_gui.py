"""The "Foram review" widget: keys pressed in the widget change the store, the tally and
the export; filters, the target mode, "show in frame", and retraining from the export.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_foram.synthetic import render_crop
from napari_foram.tally import SampleRecord, SpecimenBatch, TallyStore, export_csv
from napari_foram.tally.stats import (
    REVIEW_CONFIRMED,
    REVIEW_DUBIOUS,
    REVIEW_NONE,
    REVIEW_RELABELLED,
)

pytestmark = pytest.mark.gui

CLASSES = ["planktic", "calcareous_benthic", "agglutinated_benthic", "sediment"]
# As in test_review.py: the queue by mutual information is rows 2, 7, 1, 4, 3, 0, 5 (row 6
# is a duplicate of row 0); predicted (arg-max) classes 0 0 1 2 0 3 0 0; the counted rows'
# 1 - max p sum to 2.61.
PROBS = np.array(
    [
        [0.90, 0.05, 0.03, 0.02],
        [0.40, 0.35, 0.15, 0.10],
        [0.20, 0.60, 0.10, 0.10],
        [0.10, 0.10, 0.75, 0.05],
        [0.34, 0.33, 0.23, 0.10],
        [0.05, 0.05, 0.05, 0.85],
        [0.88, 0.06, 0.03, 0.03],
        [0.55, 0.15, 0.15, 0.15],
    ],
    dtype=np.float32,
)
MI = np.array([0.05, 0.30, 0.50, 0.10, 0.20, 0.01, 0.90, 0.40])
VOTE = np.array([0.95, 0.50, 0.70, 0.60, 0.40, 0.99, 0.90, 0.80])
TRUE = [0, 2, 1, 2, 0, 3, 0, 0]
STAGE_X = 1000.0 + 100.0 * np.arange(8)
STAGE_Y = 500.0 + 50.0 * np.arange(8)


def _batch(
    probs: np.ndarray, true: list[int], *, seed: int, stage: bool, **extra
) -> SpecimenBatch:
    n = len(probs)
    batch = SpecimenBatch(
        frame_index=np.zeros(n, dtype=int),
        centroid_y=np.full(n, 300.0),
        centroid_x=np.full(n, 400.0),
        bbox=np.tile([250, 350, 350, 450], (n, 1)),
        area_px=np.full(n, 7000),
        mean_probs=probs,
        variance=np.full(probs.shape, 0.004),
        crops=np.stack([render_crop(CLASSES[c], seed * 100 + i) for i, c in enumerate(true)]),
        **extra,
    )
    if stage:
        batch.stage_x_um, batch.stage_y_um = STAGE_X[:n], STAGE_Y[:n]
    return batch


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("review_gui") / "run.zarr"
    with TallyStore.create(path, classes=CLASSES) as store:
        store.add_sample(SampleRecord("S1", depth=1.0))
        store.set_provenance("S1", {"pixel_size_um": 2.0})
        extra = {"mutual_information": MI, "vote_fraction": VOTE}
        batch = _batch(PROBS, TRUE, seed=1, stage=True, **extra)
        batch.duplicate_of = np.array([-1, -1, -1, -1, -1, -1, 0, -1])
        store.append_specimens("S1", batch)
        store.add_sample(SampleRecord("S2", depth=2.0))  # an image folder: no stage
        store.append_specimens("S2", _batch(PROBS[:3], TRUE[:3], seed=2, stage=False))
    return path


@pytest.fixture
def store_path(template: Path, tmp_path: Path) -> Path:
    path = tmp_path / "run.zarr"
    shutil.copytree(template, path)
    return path


def _open(viewer, store_path: Path | None = None):
    from napari_foram.widgets.review import ReviewWidget

    _dock, widget = viewer.window.add_plugin_dock_widget("napari-foram", "Foram review")
    assert isinstance(widget, ReviewWidget)
    widget.reviewer_edit.setText("tester")
    if store_path is not None:
        assert widget.open_store(store_path), widget.message.text()
    return widget


def _press(qtbot, widget, *keys) -> None:
    for key in keys:
        qtbot.keyClick(widget, key)


def test_keys_review_the_store_and_the_tally_follows(make_napari_viewer, qtbot, store_path):
    from napari_foram.widgets.review import CROP_DISPLAY_PX
    from napari_foram.widgets.tally import TallyWidget

    viewer = make_napari_viewer()
    widget = _open(viewer, store_path)
    session = widget.session
    assert widget.sample_box.currentText() == "S1" and session.current == 2
    assert "row 2: predicted <b>calcareous_benthic</b>" in widget.info_label.text()
    assert widget.bars.predicted == 1 and np.allclose(widget.bars.probs, PROBS[2])
    assert widget.crop_label.pixmap().width() == CROP_DISPLAY_PX

    K = Qt.Key
    _press(qtbot, widget, K.Key_2)  # row 2's predicted class: accept
    assert session.current == 7
    _press(qtbot, widget, K.Key_3)  # row 7: relabel to agglutinated
    _press(qtbot, widget, K.Key_D)  # row 1: dubious
    _press(qtbot, widget, K.Key_X)  # row 4: reject
    assert session.current == 3
    _press(qtbot, widget, K.Key_Backspace)  # undo the reject: back on row 4
    assert session.current == 4 and widget.message.text() == "undone: reject of row 4"
    _press(qtbot, widget, K.Key_Return)  # row 4: accept
    _press(qtbot, widget, K.Key_Right)
    assert session.current == 0
    _press(qtbot, widget, K.Key_Left)
    assert session.current == 3
    _press(qtbot, widget, K.Key_9)  # no such class: nothing happens, one line says why
    assert widget.message.text() == "no class 9: this store has 4 classes (keys 1-4)"
    _press(qtbot, widget, K.Key_U)  # undo the accept of row 4
    assert session.current == 4
    _press(qtbot, widget, K.Key_A)  # and accept it again
    assert widget.message.text() == "row 4: accepted"

    with TallyStore.open(store_path) as store:
        d = store.read_specimens("S1")
        counts = store.counts("S1").tolist()
        assert store.reviewers("S1") == ["tester"]
    status = d["review_status"].tolist()
    assert [status[r] for r in (2, 7, 1, 4, 3, 0)] == [
        REVIEW_CONFIRMED, REVIEW_RELABELLED, REVIEW_DUBIOUS, REVIEW_CONFIRMED,
        REVIEW_NONE, REVIEW_NONE,
    ]  # fmt: skip
    assert d["reviewed_class"][7] == 2
    assert d["reviewer_index"][[1, 2, 4, 7]].tolist() == [0, 0, 0, 0]
    assert np.isfinite(d["review_time"][[1, 2, 4, 7]]).all()
    # predictions: planktic 0 1 4 7, calc 2, aggl 3, sediment 5; row 7 is agglutinated now
    assert counts == [3, 1, 2, 1]
    # 2.61 - 0.40 (row 2) - 0.45 (row 7) - 0.66 (row 4); the dubious row 1 still counts
    assert widget.progress_label.text().startswith(
        "4 reviewed (3 validated, 1 dubious, 0 rejected), expected misclassified now 1.10"
    )

    _dock, tally = viewer.window.add_plugin_dock_widget("napari-foram", "Foram tally")
    assert isinstance(tally, TallyWidget)
    tally.set_store(store_path)  # read-only beside the review's writer
    table = tally.table.value
    col = table["columns"].index("count")
    shown = dict(zip(table["index"], [row[col] for row in table["data"]], strict=True))
    assert [shown[c] for c in CLASSES] == counts
    assert "4 reviewed" in tally.summary_label.value

    out = store_path.with_name("sheet.csv")
    with TallyStore.open(store_path) as store:
        export_csv(store, out, fmt="wide")
    with out.open(encoding="utf-8", newline="") as fh:
        row = next(csv.DictReader(fh))
    assert (row["n_reviewed"], row["n_dubious"], row["count_agglutinated_benthic"]) == (
        "4", "1", "2"
    )  # fmt: skip


def test_export_button_writes_the_validated_crops(make_napari_viewer, qtbot, store_path):
    viewer = make_napari_viewer()
    widget = _open(viewer, store_path)
    K = Qt.Key
    _press(qtbot, widget, K.Key_Return, K.Key_3, K.Key_D, K.Key_X, K.Key_1)
    # rows: 2 accepted, 7 relabelled agglutinated, 1 dubious, 4 rejected, 3 relabelled planktic
    widget.export_button.click()
    qtbot.waitUntil(lambda: widget.last_result is not None, timeout=60_000)
    out = store_path.with_name("run_reviewed_crops")
    assert widget.result_label.text().startswith(f"wrote 3 validated crops to {out}")
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert names == [
        "agglutinated_benthic/S1_7.png", "calcareous_benthic/S1_2.png", "planktic/S1_3.png"
    ]  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == sorted(CLASSES)


def test_filters_measure_and_target_mode(make_napari_viewer, qtbot, store_path):
    viewer = make_napari_viewer()
    widget = _open(viewer, store_path)
    session = widget.session
    widget.measure_box.setCurrentIndex(widget.measure_box.findData("vote"))
    assert session.rows.tolist() == [4, 1, 3, 2, 7, 0, 5]
    widget.measure_box.setCurrentIndex(widget.measure_box.findData("mutual_information"))
    widget.class_box.setCurrentIndex(widget.class_box.findData(0))  # predicted planktic
    assert session.rows.tolist() == [7, 1, 4, 0]
    widget.class_box.setCurrentIndex(0)  # all classes
    widget.min_spin.setValue(0.1)
    widget.max_spin.setValue(0.4)
    widget.range_check.setChecked(True)
    assert session.rows.tolist() == [7, 1, 4, 3]
    widget.range_check.setChecked(False)

    widget.target_spin.setValue(1.7)
    widget.target_check.setChecked(True)
    _press(qtbot, widget, Qt.Key.Key_A, Qt.Key.Key_A, Qt.Key.Key_A)  # rows 2, 7, 1
    assert session.current is None
    assert widget.info_label.text() == "target reached: expected misclassified 1.16 < 1.7"
    assert "(target < 1.7: reached)" in widget.progress_label.text()
    assert not widget.accept_button.isEnabled()
    widget.target_check.setChecked(False)
    widget.status_box.setCurrentText("validated")
    assert session.rows.tolist() == [2, 7, 1]
    widget.status_box.setCurrentText("unreviewed")
    assert session.rows.tolist() == [4, 3, 0, 5]


def test_show_in_frame_centres_the_specimen_or_opens_its_crop(
    make_napari_viewer, qtbot, store_path
):
    from napari_foram.widgets.review import HIGHLIGHT_LAYER

    viewer = make_napari_viewer()
    widget = _open(viewer, store_path)
    _press(qtbot, widget, Qt.Key.Key_Right)  # row 7
    widget.frame_button.click()
    assert "S1 specimens" in viewer.layers and HIGHLIGHT_LAYER in viewer.layers
    assert np.allclose(viewer.scene.camera.center[-2:], (STAGE_Y[7], STAGE_X[7]))
    points = viewer.layers["S1 specimens"]
    (selected,) = points.selected_data
    assert points.features["row"][selected] == 7
    assert np.allclose(viewer.layers[HIGHLIGHT_LAYER].data, [[STAGE_Y[7], STAGE_X[7]]])
    assert widget.message.text() == "row 7 at x = 1700 um, y = 850 um on S1"

    widget.sample_box.setCurrentText("S2")  # no stage positions: the crops stack
    assert widget.session.sample_id == "S2" and widget.session.current == 0
    _press(qtbot, widget, Qt.Key.Key_Right)
    assert widget.show_in_frame() == "S2 crops"
    assert viewer.dims.current_step[0] == 1


def test_bad_store_and_a_store_another_program_writes(
    make_napari_viewer, qtbot, tmp_path, store_path
):
    viewer = make_napari_viewer()
    widget = _open(viewer)
    assert not widget.open_store(tmp_path)  # a folder, not a store
    assert widget.message.text().startswith("cannot open store:")
    assert "\n" not in widget.message.text()
    _press(qtbot, widget, Qt.Key.Key_A)
    assert widget.message.text() == "open a store and a sample first"
    assert not widget.export_crops()

    with TallyStore.open(store_path, mode="a"):  # a scan writing the store
        assert widget.open_store(store_path)
        assert "read-only" in widget.message.text()
        assert not widget.accept_button.isEnabled()
        _press(qtbot, widget, Qt.Key.Key_A)
        assert "read-only" in widget.message.text()
    widget.close_store()
    with TallyStore.open(store_path) as store:
        assert store.read_specimens("S1")["review_status"].tolist() == [0] * 8


def test_fine_tune_button_trains_a_checkpoint_beside_the_store(
    make_napari_viewer, qtbot, store_path
):
    """A real, short run: 5 validated crops through a random-weight VGG16, 1 epoch."""
    from napari_foram.classify.checkpoint import load_checkpoint, new_classifier, save_checkpoint

    base, info = new_classifier(CLASSES, backbone_weights="none", seed=2)
    model = store_path.with_name("base.safetensors")
    save_checkpoint(model, base, info, head_only=True)
    viewer = make_napari_viewer()
    widget = _open(viewer, store_path)
    widget.model_edit.setText(str(model))
    widget.fine_tune_options = {"max_epochs": 1, "lr": 1e-3}
    K = Qt.Key
    # rows 2 (calc), 7 (planktic), 1 -> calc, 4 (planktic), 3 -> calc: 2 planktic, 3 calc
    _press(qtbot, widget, K.Key_A, K.Key_A, K.Key_2, K.Key_A, K.Key_2)
    widget.tune_button.click()
    assert widget.is_running() and not widget.tune_button.isEnabled()
    qtbot.waitUntil(lambda: widget.last_result is not None, timeout=300_000)
    result = widget.last_result
    assert not isinstance(result, Exception), result
    assert result.checkpoint.parent == store_path.parent
    assert result.checkpoint.name.startswith("run_reviewed-")
    assert widget.result_label.text().startswith(f"wrote {result.checkpoint}: validation accuracy")
    _, loaded = load_checkpoint(result.checkpoint)
    assert loaded.class_names == tuple(CLASSES)
    assert loaded.training["review"]["class_counts"] == {
        "planktic": 2, "calcareous_benthic": 3, "agglutinated_benthic": 0, "sediment": 0
    }  # fmt: skip
    assert widget.tune_button.isEnabled()


def test_enter_in_the_store_field_opens_it_and_accepts_nothing(
    make_napari_viewer, qtbot, store_path
):
    viewer = make_napari_viewer()
    widget = _open(viewer)
    qtbot.keyClicks(widget.store_edit, str(store_path))
    qtbot.keyClick(widget.store_edit, Qt.Key.Key_Return)
    session = widget.session
    assert session is not None and session.current == 2  # opened, the first specimen shown
    assert session.undo_depth == 0 and "accepted" not in widget.message.text()
    # Review keys typed into a text field are text, and Enter in a spin box confirms it.
    qtbot.keyClicks(widget.reviewer_edit, "ada")
    qtbot.keyClick(widget.reviewer_edit, Qt.Key.Key_Return)
    qtbot.keyClick(widget.target_spin, Qt.Key.Key_Enter)
    assert widget.reviewer_edit.text() == "testerada"
    assert session.current == 2 and session.undo_depth == 0
    with TallyStore.open(store_path, mode="r") as store:
        assert (store.read_specimens("S1")["review_status"] == REVIEW_NONE).all()
    # The widget itself (or the crop) focused: the keys act.
    _press(qtbot, widget, Qt.Key.Key_Return)
    assert widget.message.text() == "row 2: accepted"


def test_review_keys_act_on_the_napari_canvas(make_napari_viewer, qtbot, store_path):
    from qtpy.QtOpenGLWidgets import QOpenGLWidget

    viewer = make_napari_viewer(show=True)
    widget = _open(viewer, store_path)
    qtbot.waitUntil(widget.isVisible)
    # A Points layer active: its own A (select all) and 1-5 (modes) would take the keys.
    points = viewer.add_points(np.array([[10.0, 10.0]]))
    canvases = widget.window().findChildren(QOpenGLWidget)
    assert canvases
    canvas = canvases[0]
    qtbot.keyClick(canvas, Qt.Key.Key_A)
    assert widget.message.text() == "row 2: accepted" and widget.session.current == 7
    qtbot.keyClick(canvas, Qt.Key.Key_3)
    assert widget.message.text() == "row 7: relabelled agglutinated_benthic"
    assert points.mode == "pan_zoom" and len(points.data) == 1
    # Without a sample open the canvas keys are napari's again.
    widget.close_store()
    qtbot.keyClick(canvas, Qt.Key.Key_2)
    assert points.mode == "add"
