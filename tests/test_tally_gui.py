"""The napari side of the tally: the store reader and the "Foram tally" widget."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from napari_foram._reader import get_reader, is_tally_store, read_tally_stores
from napari_foram.tally import (
    REVIEW_REJECTED,
    REVIEW_RELABELLED,
    SampleRecord,
    SpecimenBatch,
    TallyStore,
    wilson_interval,
)
from napari_foram.widgets.layers import class_colour

pytestmark = pytest.mark.gui

CLASSES = ["planktic", "calcareous_benthic", "agglutinated_benthic", "sediment"]
# Predicted classes of the 9 rows of sample S1; row 1 is relabelled to class 2, row 6 is a
# duplicate of row 0 and row 8 is rejected, so S1 counts (planktic, calc, agg, sediment)
# = (3, 1, 2, 1): 6 forams, 7 objects.
S1_PRED = [0, 1, 0, 1, 2, 0, 0, 3, 1]
S1_COUNTS = [3, 1, 2, 1]
PIXEL_UM = 2.5


def _batch(pred: list[int], *, crops: bool, stage: bool, seed: int) -> SpecimenBatch:
    rng = np.random.default_rng(seed)
    n = len(pred)
    probs = np.full((n, len(CLASSES)), 0.1)
    probs[np.arange(n), pred] = 0.7
    batch = SpecimenBatch(
        frame_index=np.zeros(n, dtype=int),
        centroid_y=rng.uniform(0, 500, n),
        centroid_x=rng.uniform(0, 500, n),
        bbox=np.tile([10, 10, 60, 60], (n, 1)),
        area_px=np.full(n, 1963),  # a 50 px disc
        mean_probs=probs,
    )
    if stage:
        batch.stage_x_um = rng.uniform(0, 5000, n)
        batch.stage_y_um = rng.uniform(0, 3000, n)
    if crops:
        from napari_foram.synthetic import render_crop

        batch.crops = np.stack(
            [render_crop(CLASSES[c], seed * 100 + i) for i, c in enumerate(pred)]
        )
    return batch


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with S1 (crops, stage positions, reviews, a duplicate) and S2 (no stage)."""
    path = tmp_path_factory.mktemp("tally") / "run.zarr"
    with TallyStore.create(path, classes=CLASSES) as store:
        store.add_sample(
            SampleRecord("S1", depth=1.5, depth_unit="mbsf", split_factor=2.0, dry_weight_g=0.5)
        )
        store.set_provenance("S1", {"pixel_size_um": PIXEL_UM})
        batch = _batch(S1_PRED, crops=True, stage=True, seed=1)
        batch.duplicate_of = np.array([-1] * 6 + [0] + [-1] * 2)
        store.append_specimens("S1", batch)
        store.set_review("S1", [1], status=REVIEW_RELABELLED, reviewed_class=2)
        store.set_review("S1", [8], status=REVIEW_REJECTED)
        store.add_sample(SampleRecord("S2", depth=2.0, depth_unit="mbsf"))
        store.append_specimens("S2", _batch([3, 0, 0], crops=False, stage=False, seed=2))
        assert store.counts("S1").tolist() == S1_COUNTS
    return path


# ----------------------------------------------------------------------------- reader
def test_reader_refuses_what_is_not_a_store(tmp_path):
    import zarr

    plain = tmp_path / "plain.zarr"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    foreign = tmp_path / "foreign.zarr"
    group = zarr.open_group(foreign, mode="w", zarr_format=3)
    group.attrs.update({"schema": "someone-else", "class_names": ["a"]})
    group.create_array("x", shape=(3,), dtype="int8")
    broken = tmp_path / "broken.zarr"
    broken.mkdir()
    (broken / "zarr.json").write_text("{not json")
    no_classes = tmp_path / "no_classes.zarr"
    no_classes.mkdir()
    (no_classes / "zarr.json").write_text(
        json.dumps(
            {
                "zarr_format": 3,
                "node_type": "group",
                "attributes": {"schema": "napari-foram-tally", "schema_version": 1},
            }
        )
    )
    a_file = tmp_path / "image.zarr"
    a_file.write_text("a file, not a folder")
    for path in (plain, foreign, broken, no_classes, a_file, tmp_path / "missing.zarr"):
        assert not is_tally_store(path), path
        assert get_reader(str(path)) is None, path
    assert get_reader([str(plain), str(foreign)]) is None


def test_reader_opens_a_store_into_layers(store_path):
    reader = get_reader(str(store_path))
    assert reader is not None
    layers = reader(str(store_path))
    names = [kw["name"] for _, kw, _ in layers]
    # S2 was counted without a stage: crops but no map of positions. Last, the legend
    # of the specimens' colours (issue 27).
    assert names == ["S1 crops", "S1 specimens", "S2 crops", "run legend"]

    crops, crops_kw, kind = layers[0]
    assert kind == "image" and crops_kw["rgb"]
    assert crops.shape == (9, 224, 224, 3) and crops.dtype == np.uint8
    with TallyStore.open(store_path) as store:
        stored = store.read_crops("S1")
        specimens = store.read_specimens("S1")
    assert np.array_equal(np.asarray(crops), stored)
    meta = crops_kw["metadata"]
    assert meta["predicted_class"] == [CLASSES[c] for c in S1_PRED]
    assert meta["class_names"][1] == "agglutinated_benthic"  # the reviewed label wins
    assert meta["class_names"][6] == meta["class_names"][8] == ""  # duplicate, rejected
    assert meta["counted"] == [True] * 6 + [False, True, False]
    assert np.allclose(meta["entropy"], specimens["entropy"], atol=1e-4)

    points, points_kw, kind = layers[1]
    assert kind == "points"
    counted = [0, 1, 2, 3, 4, 5, 7]
    assert points.shape == (7, 2)
    assert np.allclose(points[:, 0], specimens["stage_y_um"][counted])
    assert np.allclose(points[:, 1], specimens["stage_x_um"][counted])
    features = points_kw["features"]
    assert list(features["class"]) == [
        "planktic", "agglutinated_benthic", "planktic", "calcareous_benthic",
        "agglutinated_benthic", "planktic", "sediment",
    ]  # fmt: skip
    assert np.allclose(features["probability"], 0.7)
    expected_colours = [class_colour(c, CLASSES.index(c)) for c in features["class"]]
    assert np.allclose(points_kw["border_color"], expected_colours)
    # Marker size from the recorded pixel size: 1.3 x the 50 px disc's diameter in um.
    assert np.allclose(points_kw["size"], 1.3 * 2 * math.sqrt(1963 / math.pi) * PIXEL_UM)

    # With a map in um, the 224 px crops stack starts hidden (it is no place on the
    # sample); without one (S2) the crops are the sample's view.
    assert crops_kw["visible"] is False
    assert layers[2][1].get("visible", True)
    s2_crops = layers[2][0]
    assert s2_crops.shape == (3, 224, 224, 3)
    assert not np.asarray(s2_crops).any()  # stored without crops: zeros


def test_reader_skips_a_damaged_sample(tmp_path, store_path):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(store_path, copy)
    shutil.rmtree(copy / "samples" / "S1" / "crops")
    # Not shown, and not silently: a warning (a napari notification) names it and why.
    with pytest.warns(UserWarning, match=r"sample 'S1'.*array crops"):
        layers = read_tally_stores(str(copy))
    assert [kw["name"] for _, kw, _ in layers] == ["S2 crops"]


def test_viewer_opens_a_store_with_the_plugin(make_napari_viewer, store_path):
    viewer = make_napari_viewer()
    viewer.open(str(store_path), plugin="napari-foram")
    assert [layer.name for layer in viewer.layers] == [
        "S1 crops",
        "S1 specimens",
        "S2 crops",
        "run legend",
    ]
    assert viewer.layers["S1 crops"].rgb
    assert len(viewer.layers["S1 specimens"].data) == 7
    assert viewer.layers["S1 specimens"].features["class"].tolist()[1] == "agglutinated_benthic"


# ----------------------------------------------------------------------------- widget
def _open_widget(viewer):
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-foram", "Foram tally")
    return widget


def _table_column(widget, name):
    table = widget.table.value
    col = table["columns"].index(name)
    return dict(zip(table["index"], [row[col] for row in table["data"]], strict=True))


def test_tally_widget_shows_the_counts(make_napari_viewer, store_path):
    from napari_foram.widgets.tally import TallyWidget

    viewer = make_napari_viewer()
    widget = _open_widget(viewer)
    assert isinstance(widget, TallyWidget)
    widget.set_store(store_path)
    assert list(widget._sample.choices) == ["S1", "S2"]
    assert widget.sample_id == "S1"

    counts = _table_column(widget, "count")
    with TallyStore.open(store_path) as store:
        stored = store.counts("S1").tolist()
    assert [counts[c] for c in CLASSES] == stored == S1_COUNTS
    assert counts["total forams"] == 6 and counts["total objects"] == 7
    # % of the foram assemblage (sediment left out) with the Wilson 95 % interval.
    pct = _table_column(widget, "%")
    low = _table_column(widget, "low 95%")
    high = _table_column(widget, "high 95%")
    for name, k in zip(CLASSES[:3], S1_COUNTS[:3], strict=True):
        assert float(pct[name]) == pytest.approx(100 * k / 6, abs=0.05)
        lo, hi = wilson_interval(k, 6)
        assert float(low[name]) == pytest.approx(100 * lo, abs=0.05)
        assert float(high[name]) == pytest.approx(100 * hi, abs=0.05)
    assert pct["sediment"] == "-"
    # 6 forams x split 2 / 0.5 g = 24 per g; P/B = 3 / (1 + 2) = 1.
    assert "24.0 per g" in widget.summary_label.value
    assert "P/B 1.00" in widget.summary_label.value
    bars = widget._figure.axes[0].patches
    assert [b.get_height() for b in bars] == pytest.approx([50.0, 100 / 6, 100 / 3])

    widget._sample.value = "S2"  # no dry weight, two planktic forams
    counts = _table_column(widget, "count")
    assert [counts[c] for c in CLASSES] == [2, 0, 0, 1]
    assert "n/a" in widget.summary_label.value


def test_tally_widget_refresh_sees_new_rows(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    widget = _open_widget(viewer)
    path = tmp_path / "live.zarr"
    with TallyStore.create(path, classes=CLASSES) as writer:
        writer.add_sample(SampleRecord("A"))
        widget.set_store(path)  # read-only while the writer holds the store
        assert widget.summary is not None and widget.summary["total_objects"] == 0
        writer.append_specimens("A", _batch([0, 0, 1], crops=False, stage=False, seed=3))
        widget.refresh()
        assert _table_column(widget, "count")["total forams"] == 3
        writer.add_sample(SampleRecord("B"))
        widget.refresh()
    assert list(widget._sample.choices) == ["A", "B"]
    assert widget.sample_id == "A"  # the choice survives a refresh


def test_tally_widget_exports(make_napari_viewer, store_path, tmp_path):
    import csv

    viewer = make_napari_viewer()
    widget = _open_widget(viewer)
    widget.set_store(store_path)
    widget._export_dir.value = tmp_path
    widget._export_csv_button.native.click()
    csv_path = tmp_path / "run_counts.csv"
    assert widget.message.value == f"wrote {csv_path}"
    with csv_path.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["sample_id"] for r in rows] == ["S1", "S2"]
    assert int(rows[0]["count_planktic"]) == 3
    widget._export_plot_button.native.click()
    png = tmp_path / "run_tally.png"
    assert widget.message.value == f"wrote {png}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tally_widget_bad_store_gives_a_message(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    widget = _open_widget(viewer)
    widget.set_store(tmp_path)  # a folder, not a store
    assert widget.message.value.startswith("cannot open store:")
    assert "\n" not in widget.message.value
    assert list(widget._sample.choices) == []
    assert widget.summary is None
    assert widget.export_csv() is None  # nothing written, no exception
    assert not (tmp_path.parent / f"{tmp_path.name}_counts.csv").exists()


def test_tally_widget_sample_with_more_sediment_than_forams(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    widget = _open_widget(viewer)
    path = tmp_path / "sandy.zarr"
    with TallyStore.create(path, classes=CLASSES) as writer:
        writer.add_sample(SampleRecord("sandy"))
        writer.append_specimens("sandy", _batch([3, 3, 3, 0], crops=False, stage=False, seed=4))
    widget.set_store(path)
    assert widget.message.value.startswith("sandy:"), widget.message.value
    counts = _table_column(widget, "count")
    assert [counts[c] for c in CLASSES] == [1, 0, 0, 3]
    assert float(_table_column(widget, "%")["planktic"]) == 100.0


# ----------------------------------------------------------------------------- one truth
def test_live_tally_csv_and_plot_show_the_same_numbers(
    make_napari_viewer, qtbot, tmp_path, random_checkpoint
):
    """Issue 15: Foram live said 32.6 % planktic of 43 specimens (sediment included),
    the tally and the CSV 46.7 % of 30 forams. All four now read `stats.assemblage`.
    """
    import csv

    from napari_foram.tally.export import class_slug, export_csv, tally_figure
    from napari_foram.widgets.live import UNCERTAIN_ROW, LiveWidget
    from napari_foram.widgets.tally import TallyWidget

    viewer = make_napari_viewer()
    store_path = tmp_path / "live.zarr"
    live = LiveWidget(
        viewer,
        model=random_checkpoint,
        store_path=store_path,
        camera_shape=(486, 648),
        device="cpu",
        mc_samples=2,
        specimens=12,
    )
    qtbot.addWidget(live)
    live.rows.setValue(1)
    live.cols.setValue(2)
    live.start_demo("ONE-1")
    qtbot.waitUntil(lambda: "scan" in live.last_outcome, timeout=120_000)
    assert not isinstance(live.last_outcome["scan"], Exception), live.last_outcome
    # A random model's classes are arbitrary: a person's verdicts make a sample with
    # sediment (counted, not a foram) and two foram classes, whatever it predicted.
    store = live.counter.store
    n = store.n_specimens("ONE-1")
    assert n >= 8
    store.set_review("ONE-1", [0, 1, 2], status=REVIEW_RELABELLED, reviewed_class=3)
    store.set_review("ONE-1", [3, 4], status=REVIEW_RELABELLED, reviewed_class=0)
    store.set_review("ONE-1", [5], status=REVIEW_RELABELLED, reviewed_class=2)
    live.start_sample()  # resume the sample: the live table reads the store again
    live_rows = {
        live.table.item(r, 0).text(): (live.table.item(r, 1).text(), live.table.item(r, 2).text())
        for r in range(live.table.rowCount())
    }

    tally = TallyWidget(viewer)
    tally.set_store(store_path)
    assert tally.sample_id == "ONE-1"
    counts, pct = _table_column(tally, "count"), _table_column(tally, "%")

    out = export_csv(live.counter.store, tmp_path / "counts.csv")
    with out.open(encoding="utf-8") as fh:
        (row,) = list(csv.DictReader(fh))
    figure = tally_figure(live.counter.store)
    bars = figure.axes[1].patches  # the stacked bar: one segment per foram class, in order
    classes = live.counter.store.class_names
    forams = [c for c in classes if c != "sediment"]
    assert len(bars) >= len(forams)

    assert int(counts["sediment"]) >= 3 and int(counts["planktic"]) >= 2
    assert int(counts["total forams"]) == int(counts["total objects"]) - int(counts["sediment"])
    for name in classes:
        shown = name.replace("_", " ")
        assert live_rows[shown][0] == str(counts[name]) == row[f"count_{class_slug(name)}"]
        assert live_rows[shown][1] == pct[name]
        if name == "sediment":  # counted, but not a foram: no % anywhere
            assert pct[name] == "-" and f"pct_{class_slug(name)}" not in row
            continue
        csv_pct = float(row[f"pct_{class_slug(name)}"])
        plot_pct = bars[forams.index(name)].get_width()
        assert f"{csv_pct:.1f}" == pct[name] == f"{plot_pct:.1f}", name
    assert live_rows["total forams"][0] == str(counts["total forams"]) == row["total_forams"]
    assert live_rows["total objects"][0] == str(counts["total objects"]) == row["total_objects"]
    assert live_rows["unsure"][0] == str(counts["unsure"]) == row["unsure"]
    assert live.target_bar.value() == int(row["total_forams"])
    n_uncertain = tally.summary["n_uncertain"]
    assert live_rows[UNCERTAIN_ROW][0] == str(n_uncertain) == row["n_uncertain"]
    assert f"{n_uncertain} uncertain" in tally.summary_label.value
    # One colour per class: the chart's bars, the plot's and the live canvas's circles.
    from napari_foram.widgets.layers import SPECIMENS_LAYER

    layer = viewer.layers[SPECIMENS_LAYER]
    names = layer.features["class"]
    for k, (name, colour) in enumerate(zip(names, layer.border_color, strict=True)):
        if not layer.features["unsure"][k]:
            assert tuple(colour) == pytest.approx(class_colour(name, classes.index(name)))
    for j, name in enumerate(forams):
        assert tuple(bars[j].get_facecolor()) == pytest.approx(
            class_colour(name, classes.index(name))
        )
    assert all(name.replace("_", " ") in live.legend.text() for name in classes)
    live.close()
