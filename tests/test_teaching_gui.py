"""Teaching the classifier inside napari (issue 25), driven as a user would: label
specimens selected on the canvas with a class key, add a class by name, retrain from
Foram review (by hand and automatically), recount with the active model (the same
counts as ``napari-foram reclassify``), order the queue by "suggest next", and train a
model in the Train classifier widget; every widget shows the active model.

Screenshots go to /tmp/teach_shots/ (the window at 1366 x 768, a laptop screen).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_foram.synthetic import render_crop
from napari_foram.tally import SampleRecord, SpecimenBatch, TallyStore
from napari_foram.tally.stats import (
    REVIEW_CONFIRMED,
    REVIEW_NONE,
    REVIEW_REJECTED,
    REVIEW_RELABELLED,
)

pytestmark = pytest.mark.gui

CLASSES = ["planktic", "calcareous_benthic", "agglutinated_benthic", "sediment"]
N_PER_CLASS = 6
TRUE = [c for c in range(len(CLASSES)) for _ in range(N_PER_CLASS)]
SHOTS = Path("/tmp/teach_shots")
SCREEN = (1366, 768)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-backbone model (seed 0) whose backbone a head-only taught checkpoint
    can rebuild; its head is untrained (the store's first counts are arbitrary).
    """
    from napari_foram.classify.checkpoint import new_classifier, save_checkpoint

    model, info = new_classifier(CLASSES, backbone_weights="none", seed=0)
    path = tmp_path_factory.mktemp("teach_model") / "base.safetensors"
    save_checkpoint(path, model, info, head_only=True)
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, base_model: Path) -> Path:
    """24 specimens (6 per class) on a stage, with arbitrary first predictions and the
    pooled features of `base_model`'s backbone kept (as a count keeps them).
    """
    rng = np.random.default_rng(3)
    n = len(TRUE)
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=n).astype(np.float32)
    path = tmp_path_factory.mktemp("teach") / "run.zarr"
    with TallyStore.create(path, classes=CLASSES) as store:
        store.add_sample(SampleRecord("S1", depth=1.0))
        store.set_provenance("S1", {"pixel_size_um": 2.0})
        batch = SpecimenBatch(
            frame_index=np.zeros(n, dtype=int),
            centroid_y=300.0 + 40.0 * (np.arange(n) // 6),
            centroid_x=400.0 + 40.0 * (np.arange(n) % 6),
            bbox=np.tile([250, 350, 350, 450], (n, 1)),
            area_px=np.full(n, 3000),
            mean_probs=probs,
            variance=np.full(probs.shape, 0.004),
            crops=np.stack([render_crop(CLASSES[c], 500 + i) for i, c in enumerate(TRUE)]),
        )
        grid = np.arange(n)
        batch.stage_x_um = 1000.0 + 150.0 * (grid % 6)
        batch.stage_y_um = 500.0 + 150.0 * (grid // 6)
        # As a batch run records the file they were counted in (Batch folders' "show file").
        record = {"file": "tray1.png", "first_row": 0, "n_specimens": n, "path": "gone.png"}
        store.append_specimens("S1", batch, processed={"f" * 64: record})
        from napari_foram.classify.predict import Predictor
        from napari_foram.reclassify import sample_features

        # The pooled features a count keeps (computed once here: VGG16 on 24 crops).
        sample_features(store, "S1", Predictor.from_checkpoint(base_model, device="cpu"))
    return path


@pytest.fixture
def store_path(template: Path, tmp_path: Path) -> Path:
    path = tmp_path / "run.zarr"
    shutil.copytree(template, path)
    return path


def _shot(viewer, name: str, qtbot) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    qtbot.wait(200)
    path = SHOTS / name
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    return path


def _assert_docks_fit(window, docks, *, half: bool = True) -> None:
    """The canvas keeps half the window (`half`); no dock's contents are cut at the
    right.
    """
    from qtpy.QtOpenGLWidgets import QOpenGLWidget
    from qtpy.QtWidgets import QScrollArea

    canvas = max(
        (c for c in window.findChildren(QOpenGLWidget) if c.isVisible()), key=lambda c: c.width()
    )
    assert not half or canvas.width() >= 0.5 * window.width(), (canvas.width(), window.width())
    for dock in docks:
        for area in dock.findChildren(QScrollArea):
            need = area.widget().minimumSizeHint().width()
            assert need <= area.viewport().width(), (type(dock).__name__, need)


def _review(viewer, store_path: Path | None = None):
    from napari_foram.widgets.review import ReviewWidget

    _dock, widget = viewer.window.add_plugin_dock_widget("napari-foram", "Foram review")
    assert isinstance(widget, ReviewWidget)
    widget.reviewer_edit.setText("tester")
    if store_path is not None:
        assert widget.open_store(store_path), widget.message.text()
    return widget


def _canvas(widget):
    from qtpy.QtOpenGLWidgets import QOpenGLWidget

    canvases = [c for c in widget.window().findChildren(QOpenGLWidget) if c.isVisible()]
    assert canvases
    return max(canvases, key=lambda c: c.width())


def _specimens_layer(viewer, store_path: Path):
    viewer.open(str(store_path), plugin="napari-foram")
    layer = viewer.layers["S1 specimens"]
    viewer.layers.selection.active = layer
    layer.mode = "select"
    return layer


def test_label_selected_specimens_on_the_canvas(make_napari_viewer, qtbot, store_path):
    from napari_foram.widgets import labelling
    from napari_foram.widgets.tally import TallyWidget

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(*SCREEN)
    review = _review(viewer, store_path)
    review.sections["teach"].toggle.setChecked(True)
    # Tabbed with the review: the two fit a 768 px screen only one above the other.
    _, tally = viewer.window.add_plugin_dock_widget("napari-foram", "Foram tally", tabify=True)
    assert isinstance(tally, TallyWidget)
    tally.set_store(store_path)
    layer = _specimens_layer(viewer, store_path)
    rows = np.asarray(layer.features["row"])
    qtbot.waitUntil(review.isVisible)
    canvas = _canvas(review)
    current = review.session.current

    # Three specimens selected (a click and two shift-clicks, or a box), key 3; not the
    # one the review shows (a labelled specimen leaves its "unreviewed" queue).
    pts = np.flatnonzero(rows != current)
    layer.selected_data = set(pts[:3].tolist())
    qtbot.keyClick(canvas, Qt.Key.Key_3)
    keys = labelling.canvas_keys(viewer)
    assert isinstance(keys.last, labelling.LabelOutcome), keys.last
    assert keys.last.n == 3 and keys.last.class_name == "agglutinated_benthic"
    assert review.session.current == current  # the review's own specimen untouched
    assert review.teach.labels_since == 3
    with TallyStore.open(store_path, mode="r") as store:
        d = store.read_specimens("S1")
        assert store.reviewers("S1") == ["tester"]
    picked = rows[pts[:3]]
    predicted = d["class_index"][picked]
    expected = np.where(predicted == 2, REVIEW_CONFIRMED, REVIEW_RELABELLED)
    assert d["review_status"][picked].tolist() == expected.tolist()
    assert (d["reviewed_class"][picked][expected == REVIEW_RELABELLED] == 2).all()
    assert np.isfinite(d["review_time"][picked]).all()
    # Labelled specimens are filled with their class colour; the others are not.
    alpha = layer.face_color[:, 3]
    assert (alpha[pts[:3]] > 0.3).all() and (alpha[pts[3:]] == 0).all()
    assert list(layer.features["class"][pts[:3]]) == ["agglutinated_benthic"] * 3
    # The tally followed (it re-reads the store on every label).
    table = tally.table.value
    col = table["columns"].index("count")
    counted = dict(zip(table["index"], [r[col] for r in table["data"]], strict=True))
    with TallyStore.open(store_path, mode="r") as store:
        assert counted["agglutinated_benthic"] == store.counts("S1")[2]

    # X rejects (crossed out, out of the counts); undo puts it back.
    layer.selected_data = {int(pts[3])}
    qtbot.keyClick(canvas, Qt.Key.Key_X)
    with TallyStore.open(store_path, mode="r") as store:
        assert store.read_specimens("S1")["review_status"][rows[pts[3]]] == REVIEW_REJECTED
    assert str(layer.symbol[pts[3]].value) == "x"
    assert review.teach.undo_labels()
    with TallyStore.open(store_path, mode="r") as store:
        assert store.read_specimens("S1")["review_status"][rows[pts[3]]] == REVIEW_NONE
    assert str(layer.symbol[pts[3]].value) != "x"

    # A new class by name (species level): it gets the next number key.
    review.teach.class_edit.setText("Globigerinoides ruber")
    review.teach.add_button.click()
    assert review.teach.result_label.text() == "class 5 Globigerinoides ruber added: key 5"
    assert review.class_box.itemText(5) == "5 Globigerinoides ruber"
    layer.selected_data = set(pts[4:6].tolist())
    qtbot.keyClick(canvas, Qt.Key.Key_5)
    with TallyStore.open(store_path, mode="r") as store:
        assert store.class_names[-1] == "Globigerinoides ruber"
        d = store.read_specimens("S1")
    assert d["review_status"][rows[pts[4:6]]].tolist() == [REVIEW_RELABELLED] * 2
    assert d["reviewed_class"][rows[pts[4:6]]].tolist() == [4, 4]
    # The review bars show the new class too (its probability unknown until a retrain).
    assert review.bars.class_names[-1] == "Globigerinoides ruber"

    # Without a selection the keys are the review's again (its current specimen).
    layer.selected_data = set()
    qtbot.keyClick(canvas, Qt.Key.Key_A)
    assert review.message.text() == f"row {current}: accepted"
    # The "Label" button (the class chosen beside it) reaches every class (keys stop at 9).
    layer.selected_data = {int(pts[6])}
    review.teach.label_box.setCurrentIndex(4)
    review.teach.label_button.click()
    assert "1 specimen(s) labelled Globigerinoides ruber" in review.teach.result_label.text()
    viewer.reset_view()
    shot = _shot(viewer, "01_canvas_labels_review_teach.png", qtbot)
    assert shot.stat().st_size > 10_000
    window = review.window()
    assert window.width() <= SCREEN[0] and window.height() <= SCREEN[1], window.size()
    # (A Points layer's controls widen napari's left column; Foram tally is 250 px wide.)
    _assert_docks_fit(window, (review,), half=False)
    review.sections["teach"].grab().save(str(SHOTS / "01b_review_teach_section.png"))


def test_retrain_reclassify_and_suggest_next_in_review(
    make_napari_viewer, qtbot, store_path, base_model, tmp_path
):
    from napari_foram import teaching
    from napari_foram.classify.loading import load_predictor
    from napari_foram.reclassify import reclassify_store
    from napari_foram.review._queue import SUGGEST_NEXT, suggested_order
    from napari_foram.widgets._active import active_model

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(*SCREEN)
    review = _review(viewer, store_path)
    review.model_edit.setText(str(base_model))
    review.model_edit.model_typed()  # as Enter in the field does
    active = active_model(viewer)
    assert active.source == str(base_model)
    assert review.model_label.text() == f"model: base.safetensors (sha {active.info.sha256[:12]})"
    assert "classes (4): planktic" in review.model_label.toolTip()
    review.sections["teach"].toggle.setChecked(True)
    teach = review.teach

    # Too few labels: one line says what is needed.
    assert teach.retrain()
    qtbot.waitUntil(lambda: teach.last_result is not None, timeout=120_000)
    assert isinstance(teach.last_result, ValueError)
    assert teach.result_label.text().startswith(
        "retrain failed: label specimens of at least two classes"
    )

    # Label the first six of the queue 1 1 2 2 3 3 (keys in the widget).
    K = Qt.Key
    for key in (K.Key_1, K.Key_1, K.Key_2, K.Key_2, K.Key_3, K.Key_3):
        qtbot.keyClick(review, key)
    with TallyStore.open(store_path, mode="r") as store:
        before = store.counts("S1").tolist()
    assert teach.retrain_button.isEnabled()
    teach.retrain_button.click()
    assert teach.is_running() and not teach.retrain_button.isEnabled()
    qtbot.waitUntil(lambda: teach.last_result is not None, timeout=300_000)
    result = teach.last_result
    assert isinstance(result, teaching.RetrainResult), result
    assert result.path.parent == teaching.models_folder(store_path)
    assert active.source == str(result.path) and active.info.sha256 == result.taught.info.sha256
    assert review.model_edit.text() == str(result.path)
    assert (
        review.model_label.text() == f"model: {result.path.name} (sha {active.info.sha256[:12]})"
    )
    (report,) = result.reports
    assert report.counts_before == before
    text = teach.result_label.text()
    assert text.startswith(f"taught {result.path.name} on 6 labels, 3 classes in ")
    assert "S1: " in text
    with TallyStore.open(store_path, mode="r") as store:
        assert store.counts("S1").tolist() == report.counts_after
        assert len(store.classification_history("S1")) == 1
        assert store.latest_provenance("S1", "model_sha256") == result.taught.info.sha256
    print(f"retrain: {result.seconds:.2f} s (teach {result.taught.seconds:.2f} s)")
    shot = _shot(viewer, "02_review_after_retrain.png", qtbot)
    assert shot.stat().st_size > 10_000

    # "Reclassify" with the active model equals `napari-foram reclassify` on a copy.
    review.close_store()
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store_path, copy)
    assert review.open_store(store_path)
    assert teach.reclassify(all_samples=True)
    qtbot.waitUntil(lambda: teach.last_result is not None, timeout=120_000)
    reports = teach.last_result
    assert isinstance(reports, list) and reports[0].source == "kept", reports
    predictor = load_predictor(result.path, device="cpu", progress=False)
    with TallyStore.open(copy, mode="a") as store:
        cli_reports = reclassify_store(store, predictor)
        cli = store.read_specimens("S1")
    assert cli_reports[0].counts_after == reports[0].counts_after
    with TallyStore.open(store_path, mode="r") as store:
        gui = store.read_specimens("S1")
    for name in ("class_index", "mean_probs", "entropy", "mutual_information"):
        assert np.array_equal(gui[name], cli[name]), name
    print(
        f"reclassify in the widget: {reports[0].seconds:.3f} s for {reports[0].rows} "
        f"specimens ({1000 * reports[0].seconds_per_specimen:.1f} ms each)"
    )

    # "Suggest next": the queue is teaching.suggest_next's order of the unreviewed rows.
    review.measure_box.setCurrentIndex(review.measure_box.findData(SUGGEST_NEXT))
    session = review.session
    with TallyStore.open(store_path, mode="r") as store:
        feats, space = store.read_features("S1")
        data = store.read_specimens("S1")
    assert space is not None and np.isfinite(feats).all()
    assert session.rows.tolist() == suggested_order(data, feats).tolist()
    labelled = np.isin(data["review_status"], (REVIEW_CONFIRMED, REVIEW_RELABELLED))
    first = teaching.suggest_next(feats, data["mean_probs"], labelled, 5)
    assert session.rows[:5].tolist() == first.tolist()
    assert session.current == int(first[0])

    # Auto-retrain after every 2 labels: two keys, and a new model is taught.
    teach.auto_spin.setValue(2)
    teach.auto_check.setChecked(True)
    qtbot.keyClick(review, K.Key_4)
    assert not teach.is_running()
    qtbot.keyClick(review, K.Key_4)
    assert teach.is_running()
    qtbot.waitUntil(lambda: teach.last_result is not None, timeout=300_000)
    auto = teach.last_result
    assert isinstance(auto, teaching.RetrainResult), auto
    assert auto.path != result.path and active.source == str(auto.path)
    assert sum(auto.taught.info.training["labels_per_class"].values()) == 8
    assert teach.labels_since == 0
    print(f"auto-retrain: {auto.seconds:.2f} s")


def test_train_widget_and_the_active_model_in_every_widget(
    make_napari_viewer, qtbot, tmp_path, store_path, base_model
):
    from napari_foram.classify.backbone import file_sha256
    from napari_foram.synthetic import write_synth
    from napari_foram.widgets._active import active_model
    from napari_foram.widgets.train import REPORT_IMAGES, TrainWidget

    crops = Path(write_synth(tmp_path / "synth", trays=0, crops_per_class=6)["crops_dir"])
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(*SCREEN)
    _, train = viewer.window.add_plugin_dock_widget("napari-foram", "Train classifier")
    assert isinstance(train, TrainWidget)
    _, batch = viewer.window.add_plugin_dock_widget("napari-foram", "Batch folders")
    _, tally = viewer.window.add_plugin_dock_widget("napari-foram", "Foram tally")
    _, live = viewer.window.add_plugin_dock_widget("napari-foram", "Foram live")
    review = _review(viewer)
    labels = {
        "train": train.findChildren(type(review.model_label))[0],
        "batch": batch.findChildren(type(review.model_label))[0],
        "live": live.findChildren(type(review.model_label))[0],
        "review": review.model_label,
    }
    for label in labels.values():
        assert label.text() == "model: demo (loaded at first use)"
    assert tally.model_label.value == "model: demo (loaded at first use)"

    # Train on a folder of crops (one subfolder per class), random backbone (offline).
    train.set_source("folder")
    train.folder_edit.setText(str(crops))
    train.backbone_box.setCurrentIndex(train.backbone_box.findData("none"))
    out = tmp_path / "mine.safetensors"
    train.output_edit.setText(str(out))
    assert train.make_active_check.isChecked()
    assert train.train()
    assert train.is_running() and train.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: train.last_result is not None, timeout=600_000)
    result = train.last_result
    assert isinstance(result, dict), result
    assert out.is_file() and result["checkpoint"] == out
    out_sha = file_sha256(out)
    print(f"train widget (folder of {4 * 6} crops): {result['seconds']:.1f} s")
    shown = [f"mine: {what}" for file, what in REPORT_IMAGES.items()]
    assert [name for name in shown if name in viewer.layers] == train.report_layers
    assert {"mine: confusion matrix", "mine: reliability diagram"} <= set(train.report_layers)
    card = train.card.toPlainText()
    assert card.startswith(f"model: mine.safetensors  sha256 {out_sha[:12]}")
    assert "classes (4): agglutinated_benthic, calcareous_benthic, planktic, sediment" in card
    assert train.status_label.text().startswith(f"wrote {out} in ")
    active = active_model(viewer)
    assert active.source == str(out)
    sha = active.info.sha256[:12]
    for name, label in labels.items():
        assert label.text() == f"model: mine.safetensors (sha {sha})", name
        assert "recipe: pooled-linear" in label.toolTip(), name
    assert tally.model_label.value == f"model: mine.safetensors (sha {sha})"
    assert batch.model_edit.text() == str(out) and review.model_edit.text() == str(out)
    assert live.model == str(out)  # its next Connect loads it
    # The laptop screen: Train classifier and Foram review docked, the report in view.
    for widget in (batch, tally, live):
        viewer.window.remove_dock_widget(getattr(widget, "native", widget))
    qtbot.wait(100)  # the docks gone, the window may shrink
    viewer.window.resize(*SCREEN)
    qtbot.wait(300)
    train.show_report()
    _shot(viewer, "03_train_widget_report.png", qtbot)
    train.grab().save(str(SHOTS / "03b_train_widget.png"))

    # The store's labelled specimens: taught from the active model's backbone, every
    # sample counted again. Start from the base model (the store's backbone).
    active.set(base_model)
    assert labels["train"].text().startswith("model: base.safetensors")
    assert review.open_store(store_path)
    session = review.session
    for k in (0, 0, 1, 1):
        session.relabel(k)
    train.set_source("store")
    train.store_edit.setText(str(store_path))
    out2 = tmp_path / "from_store.safetensors"
    train.output_edit.setText(str(out2))
    assert train.train()
    qtbot.waitUntil(lambda: train.last_result is not None, timeout=300_000)
    result = train.last_result
    assert isinstance(result, dict), result
    assert result["checkpoint"] == out2 and out2.is_file()
    assert active.source == str(out2)
    assert "out-of-fold" in train.card.toPlainText() or "oof_accuracy" in train.card.toPlainText()
    (report,) = result["reports"]
    with TallyStore.open(store_path, mode="r") as store:
        assert store.counts("S1").tolist() == report.counts_after
    _shot(viewer, "04_train_from_store.png", qtbot)
    window = review.window()
    assert window.width() <= SCREEN[0] and window.height() <= SCREEN[1], window.size()
    _assert_docks_fit(window, (train, review))


def test_label_on_batch_and_live_specimen_layers(make_napari_viewer, qtbot, store_path):
    """Batch folders' "batch specimens" (one counted file, rows by centroid) and Foram
    live's "counted specimens" (rows by stage position) take the class keys too.
    """
    from napari_foram.widgets import labelling
    from napari_foram.widgets._active import hub
    from napari_foram.widgets.batch import SPECIMENS_LAYER as BATCH_LAYER
    from napari_foram.widgets.layers import SPECIMENS_LAYER as LIVE_LAYER

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(*SCREEN)
    _, batch = viewer.window.add_plugin_dock_widget("napari-foram", "Batch folders")
    batch.store_edit.setText(str(store_path))
    batch.show_crops(visible=False)  # a store counted earlier: its files listed
    assert batch.frames.count() == 1
    batch.frames.activated.emit(0)  # "show file": the file's counted specimens
    qtbot.waitUntil(lambda: BATCH_LAYER in viewer.layers, timeout=20_000)
    layer = viewer.layers[BATCH_LAYER]
    assert len(layer.data) == len(TRUE)
    viewer.layers.selection.active = layer
    layer.mode = "select"
    layer.selected_data = {7, 8}  # rows 7 and 8: the points are in row order
    qtbot.waitUntil(batch.isVisible)
    qtbot.keyClick(_canvas(batch), Qt.Key.Key_4)
    outcome = labelling.canvas_keys(viewer).last
    assert isinstance(outcome, labelling.LabelOutcome), outcome
    assert outcome.rows.tolist() == [7, 8] and outcome.class_name == "sediment"
    with TallyStore.open(store_path, mode="r") as store:
        d = store.read_specimens("S1")
    final = np.where(d["reviewed_class"] >= 0, d["reviewed_class"], d["class_index"])
    assert final[[7, 8]].tolist() == [3, 3] and (d["review_status"][[7, 8]] > 0).all()
    assert (layer.face_color[[7, 8], 3] > 0.3).all()

    # Foram live draws the sample's specimens at their stage positions (um).
    with TallyStore.open(store_path, mode="r") as store:
        d = store.read_specimens("S1", columns=("stage_y_um", "stage_x_um"))
    yx = np.column_stack([d["stage_y_um"], d["stage_x_um"]]) + 3.0  # a shown, not stored, place
    live = viewer.add_points(yx, name=LIVE_LAYER, size=100, face_color="transparent")
    hub(viewer).layer_context[LIVE_LAYER] = lambda _layer: (store_path, "S1")
    viewer.layers.selection.active = live
    live.selected_data = {2}
    qtbot.keyClick(_canvas(batch), Qt.Key.Key_X)
    assert labelling.canvas_keys(viewer).last.rows.tolist() == [2]
    with TallyStore.open(store_path, mode="r") as store:
        assert store.read_specimens("S1")["review_status"][2] == REVIEW_REJECTED
    assert str(live.symbol[2].value) == "x"
    # Nothing selected: the keys are napari's again (the Points layer's own).
    live.selected_data = set()
    assert labelling.selection(viewer) is None
    live.visible = False  # in um; the batch file is in pixels
    viewer.layers.selection.active = layer
    viewer.scene.camera.center = tuple(layer.data.mean(axis=0))
    viewer.scene.camera.zoom = 2.5
    _shot(viewer, "05_batch_file_labels.png", qtbot)
