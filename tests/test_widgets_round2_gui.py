"""Issue 27 ("the widgets as a microscopist meets them, round 2"), part A: Enter on a
control of Foram review, Foram tally's dropdown and its following the review, the unsure
rule and uncluttered labels on the batch canvas, Detection preview's marks, its wording
and legend, the store reader's choice and legend, long class names and crop grids.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_foram.synthetic import render_crop
from napari_foram.tally import SampleRecord, SpecimenBatch, TallyStore, export_csv
from napari_foram.tally.export import UNSURE_COLOUR, class_colour
from napari_foram.tally.stats import REVIEW_NONE, unsure_mask

pytestmark = pytest.mark.gui

CLASSES = ["planktic", "calcareous_benthic", "agglutinated_benthic", "sediment"]
RULE = {"measure": "mutual_information", "threshold": 0.25}


def _specimens(n: int, seed: int, *, stage: bool, crowded: bool = False) -> SpecimenBatch:
    """`n` specimens; every other one above the unsure rule's threshold."""
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, len(CLASSES), n)
    probs = np.full((n, len(CLASSES)), 0.04, dtype=np.float32)
    probs[np.arange(n), pred] = 0.88
    spread = 120.0 if crowded else 400.0  # crowded: labels would cover each other
    batch = SpecimenBatch(
        frame_index=np.zeros(n, dtype=int),
        centroid_y=rng.uniform(40, 40 + spread, n),
        centroid_x=rng.uniform(40, 40 + spread, n),
        bbox=np.tile([10, 10, 40, 40], (n, 1)),
        area_px=np.full(n, 700),
        mean_probs=probs,
        mutual_information=np.where(np.arange(n) % 2 == 0, 0.5, 0.05),
        crops=np.stack([render_crop(CLASSES[c], seed * 100 + i) for i, c in enumerate(pred)]),
    )
    if stage:
        batch.stage_x_um = rng.uniform(0, 5000, n)
        batch.stage_y_um = rng.uniform(0, 3000, n)
    return batch


def _make_store(path: Path, *, samples=("S1", "S2"), n: int = 10, stage: bool = True) -> Path:
    with TallyStore.create(path, classes=CLASSES) as store:
        for k, sid in enumerate(samples):
            store.add_sample(SampleRecord(sid, depth=float(k + 1)))
            store.set_provenance(sid, {"pixel_size_um": 2.0, "unsure_rule": RULE})
            store.append_specimens(sid, _specimens(n + k, seed=k + 1, stage=stage))
    return path


def _statuses(path: Path, sid: str = "S1") -> list[int]:
    with TallyStore.open(path, mode="r") as store:
        return store.read_specimens(sid)["review_status"].tolist()


# ----------------------------------------------------------------------------- 1: Enter
def test_enter_on_a_review_control_accepts_nothing(make_napari_viewer, qtbot, tmp_path):
    store = _make_store(tmp_path / "run.zarr")
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-foram", "Foram review")
    assert widget.open_store(store), widget.message.text()
    session = widget.session
    first = session.current
    controls = {
        "sample": widget.sample_box,
        "measure": widget.measure_box,
        "class": widget.class_box,
        "status": widget.status_box,
        "review until": widget.target_check,
        "unsure only": widget.unsure_check,
        "uncertainty from": widget.range_check,
        "Export": widget.export_button,
        "Fine-tune": widget.tune_button,
        "Prev": widget.prev_button,
        "Show in frame": widget.frame_button,
    }
    for name, control in controls.items():
        for key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            control.setFocus()
            qtbot.keyClick(control, key)
            assert session.undo_depth == 0, f"Enter on {name} did something"
            assert "accepted" not in widget.message.text(), name
    assert set(_statuses(store)) == {REVIEW_NONE}  # nothing written
    assert session.current == first and not widget.is_running()
    # The review's own area (the widget, the crop) focused: Enter accepts.
    widget.setFocus()
    qtbot.keyClick(widget, Qt.Key.Key_Return)
    assert widget.message.text() == f"row {first}: accepted"
    assert _statuses(store).count(REVIEW_NONE) == len(_statuses(store)) - 1


# ----------------------------------------------------------------------------- 3: tally
def _tally_numbers(tally) -> dict[str, str]:
    table = tally.table.value
    col = table["columns"].index("count")
    return {name: str(row[col]) for name, row in zip(table["index"], table["data"], strict=True)}


def _csv_row(store_path: Path, sid: str, out: Path) -> dict[str, str]:
    with TallyStore.open(store_path, mode="r") as store:
        export_csv(store, out, fmt="wide")
    with out.open(encoding="utf-8", newline="") as fh:
        return next(r for r in csv.DictReader(fh) if r["sample_id"] == sid)


def _assert_tally_is_the_csv(tally, store_path: Path, tmp_path: Path) -> None:
    from napari_foram.tally.export import class_slug

    sid = tally.sample_id
    row = _csv_row(store_path, sid, tmp_path / f"check_{sid}.csv")
    shown = _tally_numbers(tally)
    for name in CLASSES:
        assert shown[name] == row[f"count_{class_slug(name)}"], name
    assert shown["unsure"] == row["unsure"]
    assert shown["total forams"] == row["total_forams"]
    assert shown["total objects"] == row["total_objects"]
    assert f"{row['n_reviewed']} reviewed" in tally.summary_label.value


def test_tally_sample_dropdown_survives_layer_changes(make_napari_viewer, tmp_path):
    store = _make_store(tmp_path / "run.zarr")
    viewer = make_napari_viewer()
    _dock, tally = viewer.window.add_plugin_dock_widget("napari-foram", "Foram tally")
    tally.set_store(store)
    tally._sample.value = "S2"
    before = _tally_numbers(tally)
    image = viewer.add_image(np.zeros((20, 20), np.uint8), name="frame")
    viewer.add_points(np.array([[1.0, 1.0]]), name="marks")
    viewer.layers.remove(image)
    viewer.layers.remove("marks")
    # The dropdown kept the store's samples and the one chosen, and the table is its.
    assert list(tally._sample.choices) == ["S1", "S2"]
    assert tally.sample_id == "S2"
    assert _tally_numbers(tally) == before
    _assert_tally_is_the_csv(tally, store, tmp_path)


def test_tally_follows_review_recount_and_a_new_store(
    make_napari_viewer, qtbot, tmp_path, random_checkpoint, random_predictor
):
    from napari_foram.widgets._active import active_model

    store = _make_store(tmp_path / "run.zarr")
    viewer = make_napari_viewer()
    _dock, tally = viewer.window.add_plugin_dock_widget("napari-foram", "Foram tally")
    _dock, review = viewer.window.add_plugin_dock_widget("napari-foram", "Foram review")
    tally.set_store(store)
    assert review.open_store(store) and tally.sample_id == review.session.sample_id == "S1"
    before = _tally_numbers(tally)
    _assert_tally_is_the_csv(tally, store, tmp_path)

    # Relabel, reject and accept in the review: the tally follows with no Refresh.
    predicted = review.session.specimen(review.session.current)["predicted"]
    other = (predicted + 1) % len(CLASSES)
    assert review.do(f"class {other + 1}") and review.do("reject") and review.do("accept")
    assert _tally_numbers(tally) != before
    _assert_tally_is_the_csv(tally, store, tmp_path)
    review.do("undo")
    _assert_tally_is_the_csv(tally, store, tmp_path)

    # Recount with another model (the review's teach panel): the tally follows.
    active_model(viewer).set(random_checkpoint, predictor=random_predictor)
    shown = _tally_numbers(tally)
    assert review.teach.reclassify(all_samples=False)
    qtbot.waitUntil(lambda: review.teach.last_result is not None, timeout=300_000)
    assert not isinstance(review.teach.last_result, Exception), review.teach.last_result
    _assert_tally_is_the_csv(tally, store, tmp_path)
    assert _tally_numbers(tally) != shown  # a random model counts differently

    # Another store: its numbers, not the old ones.
    other_store = _make_store(tmp_path / "other.zarr", samples=("S1", "B7"), n=4)
    tally.set_store(other_store)
    assert list(tally._sample.choices) == ["S1", "B7"]
    _assert_tally_is_the_csv(tally, other_store, tmp_path)
    tally._sample.value = "B7"
    _assert_tally_is_the_csv(tally, other_store, tmp_path)
    review.close()


# ----------------------------------------------------------------------------- 5, 9, legend
def _disc_image() -> np.ndarray:
    yy, xx = np.mgrid[:300, :400]
    image = np.full((300, 400), 20, np.uint8)
    for cy, cx in ((80, 90), (150, 250), (220, 120)):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 30**2] = 200
    return image


def test_detection_marks_stay_above_images_added_later(make_napari_viewer, qtbot):
    from napari_foram.detect import DetectionParams
    from napari_foram.widgets.detection import PREVIEW_LAYERS

    viewer = make_napari_viewer()
    viewer.add_image(_disc_image(), name="tray")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-foram", "Detection preview")
    qtbot.waitUntil(lambda: "specimens" in widget.result.value, timeout=60_000)
    viewer.add_image(np.zeros((300, 400), np.uint8), name="another frame")
    viewer.add_image(np.zeros((300, 400, 3), np.uint8), name="rgb frame", rgb=True)

    def on_top() -> bool:
        names = [layer.name for layer in viewer.layers]
        return set(names[-len(PREVIEW_LAYERS) :]) == set(PREVIEW_LAYERS)

    qtbot.waitUntil(on_top, timeout=5_000)
    # It says what the detector does: the tray floor's level, not Otsu (the default).
    assert DetectionParams().threshold_method == "background"
    assert "Otsu" not in widget._auto.label and "floor" in widget._auto.label
    assert "floor" in widget.result.value
    # A legend of the marks' colours.
    assert "whole specimen" in widget.legend.value and "clipped" in widget.legend.value


# ----------------------------------------------------------------------------- 4: canvas
def test_batch_canvas_draws_the_store_unsure_rows_unsure(make_napari_viewer, qtbot, tmp_path):
    import imageio.v3 as iio

    from napari_foram.widgets.batch import SPECIMENS_LAYER
    from napari_foram.widgets.layers import LABEL_CHAR_WIDTH, LABEL_LINE_HEIGHT, viewer_zoom

    frame = tmp_path / "tray_01.png"
    iio.imwrite(frame, np.full((240, 240, 3), 30, np.uint8))
    path = tmp_path / "batch.zarr"
    n = 30
    with TallyStore.create(path, classes=CLASSES) as store:
        store.add_sample(SampleRecord("S1", depth=1.0))
        store.set_provenance("S1", {"unsure_rule": RULE})
        record = {"file": frame.name, "path": str(frame), "frame_index": 0}
        store.append_specimens(
            "S1",
            _specimens(n, seed=5, stage=False, crowded=True),
            processed={"a" * 64: {**record, "first_row": 0, "n_specimens": n}},
        )
        n_unsure = int(unsure_mask(store.read_specimens("S1"), store.unsure_rule("S1")).sum())
    assert 0 < n_unsure < n

    viewer = make_napari_viewer(show=True)
    _dock, batch = viewer.window.add_plugin_dock_widget("napari-foram", "Batch folders")
    batch.store_edit.setText(str(path))
    batch.show_crops(visible=False)  # reads the store: lists its files
    batch.frames.activated.emit(0)  # "show file": the first
    qtbot.waitUntil(
        lambda: SPECIMENS_LAYER in viewer.layers and len(viewer.layers[SPECIMENS_LAYER].data) == n,
        timeout=30_000,
    )
    layer = viewer.layers[SPECIMENS_LAYER]
    grey = np.all(np.isclose(layer.border_color, UNSURE_COLOUR), axis=1)
    assert int(grey.sum()) == n_unsure
    assert layer.features["unsure"].tolist() == grey.tolist()
    for colour, name, unsure in zip(
        layer.border_color, layer.features["class"], grey, strict=True
    ):
        if not unsure:
            assert tuple(colour) == pytest.approx(class_colour(name, CLASSES.index(name)))
    wanted = layer.features["label_wanted"]
    assert all(w == "unsure" for w in wanted[grey])
    assert not any("unsure" in w for w in wanted[~grey])

    # No two labels drawn cover each other, at this zoom and zoomed in or out.
    camera = viewer.scene.camera
    for factor in (1.0, 3.0, 0.3):
        camera.zoom = camera.zoom * factor
        zoom = viewer_zoom(viewer)
        labels = layer.features["label"].tolist()
        shown = [i for i, t in enumerate(labels) if t]
        assert all(labels[i] == wanted[i] for i in shown)
        size = layer.text.size
        for a in shown:
            for b in shown:
                if a >= b:
                    continue
                ya, xa = layer.data[a] * zoom
                yb, xb = layer.data[b] * zoom
                apart_y = abs(ya - yb) >= LABEL_LINE_HEIGHT * size / 1.1
                wa, wb = (LABEL_CHAR_WIDTH * size * len(labels[i]) / 1.1 for i in (a, b))
                apart_x = xa + wa <= xb or xb + wb <= xa
                assert apart_y or apart_x, (labels[a], labels[b], factor)
    assert 0 < sum(1 for t in layer.features["label"] if t) < n or n < 3
    batch.close()


# ----------------------------------------------------------------------------- reader
def test_store_reader_is_napari_choice_and_has_a_legend(make_napari_viewer, qtbot, tmp_path):
    from napari.errors import MultipleReaderError

    from napari_foram._reader import LEGEND_SUFFIX
    from napari_foram.widgets.layers import class_colour as colour_of

    store = _make_store(tmp_path / "run.zarr")
    viewer = make_napari_viewer()
    # A folder: every directory reader may read it, napari's builtin one too, so napari
    # 0.9 asks when no reader is named and no preference saved (a drop, File > Open; a
    # script's `viewer.open(path)` names napari's own reader by default); the plugin
    # is offered ...
    with pytest.raises(MultipleReaderError) as info:
        viewer.open(str(store), plugin=None)
    assert "napari-foram" in info.value.available_plugins
    # ... and preselected in napari's own dialog: OK (the user's click) opens the store.
    from napari._qt.dialogs import qt_reader_dialog

    picked = []

    def press_ok(dialog):
        picked.append(dialog._get_plugin_choice())
        return qt_reader_dialog.QDialog.DialogCode.Accepted

    mp = pytest.MonkeyPatch()
    mp.setattr(qt_reader_dialog.QtReaderDialog, "exec_", press_ok)
    try:
        viewer.window._qt_viewer._qt_open([str(store)], stack=False)
    finally:
        mp.undo()
    assert picked and "napari-foram" in picked[0]
    names = [layer.name for layer in viewer.layers]
    assert "S1 specimens" in names and "S2 crops" in names

    # A legend: one marker per class and one for unsure, in the layers' colours.
    legend = viewer.layers[f"run{LEGEND_SUFFIX}"]
    entries = legend.features["entry"].tolist()
    assert entries == [*(c.replace("_", " ") for c in CLASSES), "unsure"]
    for k, name in enumerate(CLASSES):
        assert tuple(legend.face_color[k]) == pytest.approx(colour_of(name, k))
    assert tuple(legend.face_color[-1]) == pytest.approx(UNSURE_COLOUR)
    specimens = viewer.layers["S1 specimens"]
    grey = np.all(np.isclose(specimens.border_color, UNSURE_COLOUR), axis=1)
    assert grey.tolist() == specimens.features["unsure"].tolist() and grey.any()

    # A part of the store dropped: one line naming the store to open.
    with pytest.raises(ValueError) as refused:  # napari's ReaderPluginError is one too
        viewer.open(str(store / "samples" / "S1"), plugin="napari-foram")
    reason = str(refused.value.__cause__ or refused.value)
    assert reason == f"samples/S1 is part of the tally store {store}: open {store} instead"


# ----------------------------------------------------------------------------- names
def test_long_class_names_are_elided_with_a_tooltip(qtbot):
    from qtpy.QtGui import QFont, QFontMetrics

    from napari_foram.widgets._review_parts import ProbabilityBars

    names = [
        "Globigerinoides_ruber_white",
        "Neogloboquadrina_pachyderma_sinistral",
        "sediment",
    ]
    bars = ProbabilityBars()
    qtbot.addWidget(bars)
    bars.resize(300, 100)
    bars.set_values(names, np.array([0.6, 0.3, 0.1]), np.array([0.1, 0.05, 0.0]), 0)
    bold = QFont(bars.font())
    bold.setBold(True)
    for k, name in enumerate(names):
        shown = bars.shown_name(k)
        # Fits the names' column, as drawn (the predicted one in bold).
        assert QFontMetrics(bold).horizontalAdvance(shown) <= bars.label_width()
        whole = name.replace("_", " ")
        row_y = 4 + k * bars.ROW_PX + bars.ROW_PX / 2
        assert whole in bars.tooltip_at(row_y)
    assert bars.shown_name(2) == "3 sediment"  # short names are whole
    bars.resize(900, 100)  # a wide dock: every name whole
    assert all(bars.shown_name(k).endswith(n.replace("_", " ")) for k, n in enumerate(names))


# ----------------------------------------------------------------------------- crops
def test_crop_grid_lies_beside_the_frame_with_no_slider(make_napari_viewer, tmp_path):
    from napari_foram.widgets.layers import crop_tile_centre, show_crop_grids

    store = _make_store(tmp_path / "run.zarr", stage=False)
    viewer = make_napari_viewer()
    frame = viewer.add_image(np.zeros((600, 800, 3), np.uint8), name="batch frame", rgb=True)
    names = show_crop_grids(viewer, store)
    assert names == ["S1 crops", "S2 crops"]
    assert viewer.dims.ndim == 2  # no slider of a stack
    frame_right = float(np.asarray(frame.extent.world)[1, -1])
    with TallyStore.open(store, mode="r") as st:
        crops = st.read_crops("S2")
    for name in names:
        grid = viewer.layers[name]
        assert float(np.asarray(grid.extent.world)[0, -1]) > frame_right
    grid = viewer.layers["S2 crops"]
    assert grid.metadata["grid"]["n"] == 11 and len(grid.metadata["row"]) == 11
    # Crop 5's tile, where `crop_tile_centre` says, is crop 5.
    y, x = crop_tile_centre(grid, 5)
    iy, ix = (int(v) for v in grid.world_to_data((y, x))[-2:])
    tile = grid.metadata["grid"]["tile_px"]
    r, c = divmod(5, grid.metadata["grid"]["columns"])
    assert (iy // tile, ix // tile) == (r, c)
    step = math.ceil(224 / tile)
    got = np.asarray(grid.data)[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]
    assert np.array_equal(got, np.asarray(crops[5])[::step, ::step])
    # Again (a second "show crops"): updated in place, same place.
    before = tuple(grid.translate)
    assert show_crop_grids(viewer, store, visible=False) == names
    assert tuple(viewer.layers["S2 crops"].translate) == before
    assert not viewer.layers["S2 crops"].visible
