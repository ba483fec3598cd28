"""Unsure specimens: a classifier's unsure rule puts them in no class, everywhere alike."""

from __future__ import annotations

import copy
import csv
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from napari_foram.tally import (
    SampleRecord,
    SpecimenBatch,
    TallyStore,
    UnsureRule,
    stats,
    unsure_mask,
)
from napari_foram.tally.export import UNSURE_COLOUR, UNSURE_LABEL, export_csv, plot_tally
from napari_foram.tally.stats import (
    REVIEW_CONFIRMED,
    REVIEW_DUBIOUS,
    REVIEW_NONE,
    REVIEW_REJECTED,
    REVIEW_RELABELLED,
    sample_summary,
)

CLASSES = ["planktic", "calcareous_benthic", "agglutinated_benthic", "sediment"]
MI_RULE = {"measure": "mutual_information", "threshold": 0.2, "target_coverage": 0.9}


def _specimens() -> dict[str, np.ndarray]:
    """Ten rows: mutual information 0.5 on rows 0-4 (above the 0.2 threshold), 0.1 on the
    rest; row 1 confirmed, row 2 dubious, row 3 rejected, row 4 a duplicate, row 5
    relabelled, so row 0 (planktic) is the only unsure one under MI_RULE.
    """
    classes = np.array([0, 0, 1, 2, 0, 0, 1, 2, 3, 0])
    probs = np.full((10, 4), 0.1, dtype=np.float32)
    probs[np.arange(10), classes] = 0.7
    status = np.full(10, REVIEW_NONE, dtype=np.int8)
    status[[1, 2, 3, 5]] = [REVIEW_CONFIRMED, REVIEW_DUBIOUS, REVIEW_REJECTED, REVIEW_RELABELLED]
    reviewed = np.full(10, -1)
    reviewed[5] = 1
    duplicate = np.full(10, -1)
    duplicate[4] = 0
    return {
        "class_index": classes,
        "mean_probs": probs,
        "entropy": np.full(10, 0.3, dtype=np.float32),
        "mutual_information": np.array([0.5] * 5 + [0.1] * 5, dtype=np.float32),
        "vote_fraction": np.ones(10, dtype=np.float32),
        "review_status": status,
        "reviewed_class": reviewed,
        "duplicate_of": duplicate,
    }


# ----------------------------------------------------------------------------- the rule
def test_rule_from_dict_reads_and_keeps_the_rule() -> None:
    for empty in ({}, None):
        rule = UnsureRule.from_dict(empty)
        assert not rule.active and rule.to_dict() == {} and rule.describe() == ""
    rule = UnsureRule.from_dict(MI_RULE)
    assert rule.active and rule.measure == "mutual_information" and rule.threshold == 0.2
    assert rule.details == {"target_coverage": 0.9}
    assert rule.to_dict() == MI_RULE  # the informative keys survive a round trip
    assert UnsureRule.from_dict(rule.to_dict()) == rule
    assert UnsureRule.from_dict({"measure": "vote", "threshold": 0}).threshold == 0.0
    assert rule.describe() == "mutual_information > 0.2"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"measure": "softmax", "threshold": 0.2}, "unknown measure 'softmax'"),
        ({"threshold": 0.2}, "unknown measure None"),
        ({"measure": "entropy"}, "threshold must be a number, got None"),
        ({"measure": "entropy", "threshold": "0.2"}, "threshold must be a number"),
        ({"measure": "entropy", "threshold": True}, "threshold must be a number"),
        ({"measure": "entropy", "threshold": float("nan")}, "finite and >= 0"),
        ({"measure": "entropy", "threshold": float("inf")}, "finite and >= 0"),
        ({"measure": "vote", "threshold": -0.1}, "finite and >= 0"),
        (["entropy", 0.2], "must be a mapping"),
    ],
)
def test_rule_errors_are_one_line(rule: Any, message: str) -> None:
    with pytest.raises(ValueError, match="unsure rule") as info:
        UnsureRule.from_dict(rule)
    assert message in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- the mask
def test_unsure_mask_for_each_measure_is_strictly_above() -> None:
    base = {
        "class_index": np.zeros(4, dtype=int),
        "entropy": np.array([0.1, 0.5, 0.50001, 1.0], dtype=np.float32),
        "mutual_information": np.array([0.0, 0.05, 0.2, 0.3], dtype=np.float32),
        # 0.7 reads back from float32 as 0.69999999: 1 - it is not "above" 0.3.
        "vote_fraction": np.array([1.0, 0.7, 0.6, 0.5], dtype=np.float32),
    }
    cases = {
        "entropy": (0.5, [False, False, True, True]),
        "mutual_information": (0.05, [False, False, True, True]),
        "vote": (0.3, [False, False, True, True]),
    }
    for measure, (threshold, expected) in cases.items():
        rule = {"measure": measure, "threshold": threshold}
        assert unsure_mask(base, rule).tolist() == expected, measure
        # The same definition as the review queue's measure.
        from napari_foram import review

        values = review.uncertainty(base, measure)
        assert np.array_equal(values, stats.uncertainty(base, measure))
    assert not unsure_mask(base, {}).any() and not unsure_mask(base, None).any()
    # One definition of the measures, shared by the review queue.
    from napari_foram import review

    assert review.uncertainty is stats.uncertainty
    assert review.MEASURES is stats.UNCERTAINTY_MEASURES


def test_a_reviewed_specimen_is_never_unsure() -> None:
    d = _specimens()
    # Above the threshold: rows 0-4. Confirmed (1) and dubious (2) are settled by a
    # person, rejected (3) and duplicate (4) do not count: only row 0 stays unsure.
    assert np.flatnonzero(unsure_mask(d, MI_RULE)).tolist() == [0]
    # A relabelled row is settled too, whatever its measure.
    d["mutual_information"][5] = 0.9
    assert np.flatnonzero(unsure_mask(d, MI_RULE)).tolist() == [0]
    # Without review columns (fresh predictions) only duplicates are left out.
    fresh = {k: v for k, v in d.items() if k not in ("review_status", "reviewed_class")}
    assert np.flatnonzero(unsure_mask(fresh, MI_RULE)).tolist() == [0, 1, 2, 3, 5]


def test_unsure_and_high_entropy_are_two_rules() -> None:
    """`unsure_mask` applies the model's rule (here mutual information) to counted rows;
    `unreviewed_high_entropy_mask` flags any unreviewed row for a look by its entropy.
    """
    d = _specimens()
    d["entropy"] = np.where(np.arange(10) >= 5, 1.0, 0.1)  # high entropy: rows 5-9
    status = d["review_status"]
    assert np.flatnonzero(unsure_mask(d, MI_RULE)).tolist() == [0]
    look = stats.unreviewed_high_entropy_mask(d["entropy"], status, threshold=0.5)
    assert np.flatnonzero(look).tolist() == [6, 7, 8, 9]  # row 5 is relabelled: settled
    assert stats.n_uncertain(d, 0.5) == 4


# ----------------------------------------------------------------------------- summary
def test_sample_summary_without_a_rule_is_unchanged() -> None:
    d = _specimens()
    record = {"split_factor": 2.0, "dry_weight_g": 0.5}
    plain = sample_summary(d, record, CLASSES)
    for rule in (None, {}, UnsureRule()):
        again = sample_summary(d, record, CLASSES, unsure_rule=rule)
        assert again["n_unsure"] == 0 and again["unsure_rule"] == {}
        for key, value in plain.items():
            np.testing.assert_equal(again[key], value, err_msg=key)
    # Counted: rows 0, 1, 2, 5 (relabelled to 1), 6, 7, 8, 9 -> (3, 3, 1, 1).
    assert plain["counts"].tolist() == [3, 3, 1, 1]
    assert plain["total_objects"] == 8 and plain["total_forams"] == 7


def test_sample_summary_leaves_unsure_specimens_out_of_the_classes() -> None:
    d = _specimens()
    record = {"split_factor": 2.0, "dry_weight_g": 0.5}
    plain = sample_summary(d, record, CLASSES)
    s = sample_summary(d, record, CLASSES, unsure_rule=MI_RULE)
    assert s["n_unsure"] == 1 and s["unsure_rule"] == MI_RULE
    assert s["counts"].tolist() == [2, 3, 1, 1]  # row 0 (planktic) is unsure
    assert s["total_objects"] == 8 == s["counts"].sum() + s["n_unsure"]
    assert s["total_forams"] == 6
    np.testing.assert_allclose(s["pct"][:3], [100 * 2 / 6, 50.0, 100 / 6])
    assert np.isnan(s["pct"][3])
    assert s["per_gram"] == pytest.approx(6 * 2.0 / 0.5)
    assert s["pb_ratio"] == pytest.approx(2 / 4)
    assert s["progress"] == pytest.approx(6 / 300)
    # The expected counts still use every counted row's probabilities.
    np.testing.assert_allclose(s["expected"], plain["expected"])
    assert s["n_uncertain"] == plain["n_uncertain"]
    assert s["n_reviewed"] == plain["n_reviewed"] and s["n_rejected"] == 1


# ----------------------------------------------------------------------------- a store
def _batch(mi: list[float], pred: list[int], seed: int = 0) -> SpecimenBatch:
    rng = np.random.default_rng(seed)
    n = len(pred)
    probs = np.full((n, len(CLASSES)), 0.1, dtype=np.float32)
    probs[np.arange(n), pred] = 0.7
    return SpecimenBatch(
        frame_index=np.zeros(n, dtype=int),
        centroid_y=rng.uniform(0, 500, n),
        centroid_x=rng.uniform(0, 500, n),
        bbox=np.tile([10, 10, 60, 60], (n, 1)),
        area_px=np.full(n, 1963),
        mean_probs=probs,
        mutual_information=np.asarray(mi, dtype=np.float32),
        stage_x_um=rng.uniform(0, 5000, n),
        stage_y_um=rng.uniform(0, 3000, n),
    )


@pytest.fixture
def rule_store(tmp_path: Path) -> Path:
    """S1 counted by a model with MI_RULE: 6 rows, rows 1 and 4 above the threshold, row
    4 then confirmed by a person; S2 by an old model without a rule.
    """
    path = tmp_path / "rule.zarr"
    with TallyStore.create(path, classes=CLASSES) as store:
        store.add_sample(SampleRecord("S1", depth=1.0, dry_weight_g=1.0))
        store.set_provenance(
            "S1", {"model_sha256": "abc", "pixel_size_um": 2.5, "unsure_rule": MI_RULE}
        )
        store.append_specimens("S1", _batch([0.0, 0.9, 0.1, 0.0, 0.5, 0.0], [0, 0, 1, 2, 1, 3]))
        store.set_review("S1", [4], status=REVIEW_CONFIRMED, reviewed_class=-1)
        # A later note (e.g. frames counted per frame at the end of a scan) keeps the rule.
        store.set_provenance("S1", {"frames_counted_per_frame": 2, "why": "no stage"})
        store.add_sample(SampleRecord("S2", depth=2.0))
        store.set_provenance("S2", {"model_sha256": "old"})
        store.append_specimens("S2", _batch([0.9, 0.9], [0, 1], seed=1))
    return path


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_store_rule_comes_from_the_latest_model_entry(rule_store: Path) -> None:
    with TallyStore.open(rule_store, mode="a") as store:
        assert store.unsure_rule("S1").to_dict() == MI_RULE
        assert not store.unsure_rule("S2").active
        s1 = store.sample_summary("S1")
        assert s1["n_unsure"] == 1 and s1["counts"].tolist() == [1, 2, 1, 1]
        assert s1["total_objects"] == 6
        assert store.counts("S1").tolist() == [2, 2, 1, 1]  # the classes, rule not applied
        # A new model without a rule: nothing is unsure any more.
        store.set_provenance("S1", {"model_sha256": "new"})
        assert not store.unsure_rule("S1").active
        assert store.sample_summary("S1")["n_unsure"] == 0
        # A malformed rule (a hand-edited store) is a one-line error.
        store.set_provenance("S1", {"unsure_rule": {"measure": "softmax", "threshold": 1}})
        with pytest.raises(ValueError, match="unknown measure"):
            store.sample_summary("S1")


def test_exports_count_unsure_specimens_apart(rule_store: Path, tmp_path: Path) -> None:
    with TallyStore.open(rule_store) as store:
        wide = _read(export_csv(store, tmp_path / "wide.csv", fmt="wide"))
        long = _read(export_csv(store, tmp_path / "long.csv", fmt="long"))
        rows = _read(export_csv(store, tmp_path / "specimens.csv", fmt="specimens"))
    header = list(wide[0])
    # New columns come last, after the columns of before.
    assert header[-4:] == ["export_date", "unsure", "unsure_measure", "unsure_threshold"]
    s1, s2 = wide
    assert s1["unsure"] == "1" and s1["unsure_measure"] == "mutual_information"
    assert s1["unsure_threshold"] == "0.2"
    assert (s1["count_planktic"], s1["total_forams"], s1["total_objects"]) == ("1", "4", "6")
    assert s1["specimens_per_gram"] == "4"
    assert (s2["unsure"], s2["unsure_measure"], s2["unsure_threshold"]) == ("0", "", "")
    assert s2["count_planktic"] == "1" and s2["total_objects"] == "2"

    assert list(long[0])[-1] == "unsure" and len(long) == 2 * len(CLASSES)
    assert {r["unsure"] for r in long if r["sample_id"] == "S1"} == {"1"}
    assert {r["unsure"] for r in long if r["sample_id"] == "S2"} == {"0"}

    assert list(rows[0])[-2:] == ["unsure", "feature_distance"]
    flags = [(r["sample_id"], r["row"], r["unsure"]) for r in rows if r["unsure"] == "1"]
    assert flags == [("S1", "1", "1")]  # row 4 was confirmed by a person


def test_plot_shows_unsure_as_a_grey_segment(rule_store: Path, tmp_path: Path) -> None:
    from matplotlib.colors import to_rgba

    from napari_foram.tally.export import tally_figure

    with TallyStore.open(rule_store) as store:
        fig = tally_figure(store)
        png = plot_tally(store, tmp_path / "tally.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax_bar = fig.axes[1]
    unsure = [c for c in ax_bar.containers if c.get_label() == UNSURE_LABEL]
    assert len(unsure) == 1
    widths = [p.get_width() for p in unsure[0].patches]
    # S1: 1 unsure per 4 forams = 25 per 100, after the 100 % of the assemblage; S2: none.
    assert widths == pytest.approx([25.0, 0.0])
    assert unsure[0].patches[0].get_x() == pytest.approx(100.0)
    assert unsure[0].patches[0].get_facecolor() == pytest.approx(to_rgba(UNSURE_COLOUR))
    # The grey is no class's colour.
    class_colours = {
        tuple(p.get_facecolor()) for c in ax_bar.containers if c not in unsure for p in c
    }
    assert tuple(to_rgba(UNSURE_COLOUR)) not in class_colours
    labels = [t.get_text() for t in ax_bar.get_yticklabels()]
    assert any("1 unsure" in t for t in labels)
    assert UNSURE_LABEL in [t.get_text() for t in ax_bar.get_legend().get_texts()]


def test_plot_without_a_rule_has_no_unsure_segment(tmp_path: Path) -> None:
    from napari_foram.tally.export import tally_figure

    path = tmp_path / "plain.zarr"
    with TallyStore.create(path, classes=CLASSES) as store:
        store.add_sample(SampleRecord("A"))
        store.append_specimens("A", _batch([0.9, 0.9], [0, 1]))
        fig = tally_figure(store)
    ax_bar = fig.axes[1]
    assert all(c.get_label() != UNSURE_LABEL for c in ax_bar.containers)
    assert ax_bar.get_xlim() == (0.0, 100.0) and ax_bar.get_legend() is None


def test_reader_colours_unsure_specimens_grey(rule_store: Path) -> None:
    from napari_foram._reader import store_layer_data

    layers = {kw["name"]: (data, kw) for data, kw, _ in store_layer_data(rule_store)}
    _, crops_kw = layers["S1 crops"]
    assert crops_kw["metadata"]["unsure"] == [False, True, False, False, False, False]
    _, points_kw = layers["S1 specimens"]
    assert points_kw["features"]["unsure"].tolist() == [False, True, False, False, False, False]
    colours = np.asarray(points_kw["border_color"])
    assert np.allclose(colours[1], UNSURE_COLOUR)
    assert not np.allclose(colours[0], UNSURE_COLOUR)
    assert not any(layers["S2 specimens"][1]["features"]["unsure"])


def test_review_queue_unsure_only(rule_store: Path) -> None:
    from napari_foram.review import QueueFilter, ReviewSession, queue_order

    with TallyStore.open(rule_store) as store:
        d = store.read_specimens("S1")
    flt = QueueFilter(statuses=None, unsure_only=True)
    assert queue_order(d, "mutual_information", flt, MI_RULE).tolist() == [1]
    assert queue_order(d, "mutual_information", flt, None).tolist() == []
    with ReviewSession.open(rule_store, "S1") as session:
        session.set_filter(flt)
        assert session.rows.tolist() == [1]


# ----------------------------------------------------------------------------- counting
@pytest.fixture
def rule_predictor(random_predictor: Any) -> Any:
    """The random predictor with a rule that calls every specimen unsure (entropy > 0)."""
    predictor = copy.copy(random_predictor)
    rule = {"measure": "entropy", "threshold": 0.0, "note": "test"}
    predictor.info = dataclasses.replace(random_predictor.info, unsure_rule=rule)
    return predictor


def _frame(seed: int, x_um: float) -> Any:
    from napari_foram.frames import Frame
    from napari_foram.synthetic import render_tray

    tray = render_tray(
        seed, shape=(400, 500), n_specimens=3, clipped=False, touching_pairs=0, border=False
    )
    return Frame(image=tray.image, index=seed, stage_xy_um=(x_um, 0.0), pixel_size_um=2.0)


def test_pipeline_records_the_models_rule(
    rule_predictor: Any, random_predictor: Any, tmp_path: Path
) -> None:
    from napari_foram.pipeline import CountingPipeline

    assert "unsure_rule" not in CountingPipeline(random_predictor).provenance()
    assert CountingPipeline(rule_predictor).provenance()["unsure_rule"] == {
        "measure": "entropy",
        "threshold": 0.0,
        "note": "test",
    }
    bad = copy.copy(random_predictor)
    bad.info = dataclasses.replace(
        random_predictor.info, unsure_rule={"measure": "x", "threshold": 1}
    )
    with pytest.raises(ValueError, match="unsure rule"):
        CountingPipeline(bad).provenance()

    with TallyStore.create(
        tmp_path / "p.zarr", classes=list(rule_predictor.info.class_names)
    ) as st:
        st.add_sample(SampleRecord("S1"))
        pipeline = CountingPipeline(rule_predictor, store=st, sample_id="S1", mc_samples=2)
        pipeline.process(_frame(1, 0.0))
        n = st.n_specimens("S1")
        assert n > 0
        assert st.provenance("S1")["unsure_rule"]["measure"] == "entropy"
        summary = st.sample_summary("S1")
        assert summary["n_unsure"] == n and summary["counts"].sum() == 0
        # The same sample continued with a model without a rule: the old rule goes.
        again = CountingPipeline(random_predictor, store=st, sample_id="S1", mc_samples=2)
        again.process(_frame(2, 50_000.0))
        assert st.n_specimens("S1") > n
        assert "unsure_rule" not in st.provenance("S1")
        assert st.sample_summary("S1")["n_unsure"] == 0


def test_live_counter_tally_counts_unsure_apart(rule_predictor: Any, tmp_path: Path) -> None:
    from napari_foram.microscope import MicroscopeCounter

    classes = list(rule_predictor.info.class_names)
    with TallyStore.create(tmp_path / "live.zarr", classes=classes) as store:
        counter = MicroscopeCounter(rule_predictor, store, mc_samples=1)
        assert counter.unsure() == 0 and counter.summary() is None
        counter.start_sample(SampleRecord("L1"))
        assert counter.unsure_rule.measure == "entropy"
        batch = _batch([0.0, 0.0, 0.0], [0, 1, 1])
        batch.entropy = np.array([0.0, 0.5, 0.0], dtype=np.float32)
        store.set_provenance("L1", counter.pipeline.provenance())  # as the first rows do
        store.append_specimens("L1", batch)
        assert counter.unsure() == 1
        assert sum(counter.tally().values()) == 2 == counter.progress()[0]
        summary = counter.summary()
        assert summary is not None and summary["total_objects"] == 3


def test_batch_records_the_models_rule(
    random_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import imageio.v3 as iio

    from napari_foram import batch
    from napari_foram.classify import checkpoint

    real = checkpoint.read_model_info
    rule = {"measure": "entropy", "threshold": 0.0}

    def with_rule(path: Any) -> Any:
        return dataclasses.replace(real(path), unsure_rule=rule)

    monkeypatch.setattr(checkpoint, "read_model_info", with_rule)
    folder = tmp_path / "trays" / "B1"
    folder.mkdir(parents=True)
    iio.imwrite(folder / "t.png", _frame(3, 0.0).image)
    config = batch.BatchConfig(
        folder=tmp_path / "trays",
        store=tmp_path / "b.zarr",
        model=random_checkpoint,
        mc_samples=2,
        device="cpu",
    )
    report = batch.run_batch(config)
    with TallyStore.open(tmp_path / "b.zarr") as store:
        assert store.provenance("B1")["unsure_rule"] == rule
        n = store.n_specimens("B1")
        assert n > 0 and store.sample_summary("B1")["n_unsure"] == n
    assert report.samples["B1"] == {"new": n, "total": n, "unsure": n}


# ----------------------------------------------------------------------------- widget
@pytest.mark.gui
def test_tally_widget_shows_the_unsure_count(make_napari_viewer: Any, rule_store: Path) -> None:
    from napari_foram.widgets.tally import UNSURE_ROW, TallyWidget

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-foram", "Foram tally")
    assert isinstance(widget, TallyWidget)
    widget.set_store(rule_store)
    table = widget.table.value
    counts = dict(zip(table["index"], [row[0] for row in table["data"]], strict=True))
    assert counts[UNSURE_ROW] == 1
    assert [counts[c] for c in CLASSES] == [1, 2, 1, 1]
    assert counts["total forams"] == 4 and counts["total objects"] == 6
    assert "1 unsure (mutual_information > 0.2)" in widget.summary_label.value
    bars = widget._figure.axes[0].patches
    assert len(bars) == 4 and bars[-1].get_height() == pytest.approx(25.0)
    assert widget._figure.axes[0].get_xticklabels()[-1].get_text() == UNSURE_LABEL
    widget._sample.value = "S2"  # an old model: no rule, nothing unsure
    table = widget.table.value
    counts = dict(zip(table["index"], [row[0] for row in table["data"]], strict=True))
    assert counts[UNSURE_ROW] == 0 and counts["total objects"] == 2
    assert "unsure" not in widget.summary_label.value


def test_plot_uses_the_viewers_class_colours(rule_store: Path) -> None:
    from matplotlib.colors import to_rgba

    from napari_foram.tally.export import class_colour, tally_figure
    from napari_foram.tally.stats import foram_mask

    with TallyStore.open(rule_store) as store:
        classes = store.class_names
        fig = tally_figure(store)
    ax_depth, ax_bar = fig.axes[:2]
    forams = [classes[j] for j in np.flatnonzero(foram_mask(classes))]
    expected = {name: to_rgba(class_colour(name, classes.index(name))) for name in forams}
    # Every class's stacked bars, and its line on the depth panel, in the viewer's colour.
    bars = {c.get_label(): c for c in ax_bar.containers if c.get_label() != UNSURE_LABEL}
    assert set(bars) == set(forams)
    for name, container in bars.items():
        for patch in container.patches:
            assert patch.get_facecolor() == pytest.approx(expected[name]), name
    # ErrorbarContainer: (data line, caps, bars), labelled with the class.
    lines = {c.get_label(): c.lines[0] for c in ax_depth.containers}
    for name in forams:
        assert to_rgba(lines[name].get_color()) == pytest.approx(expected[name]), name
    # Unsure stays its own grey, which no class has.
    unsure = next(c for c in ax_bar.containers if c.get_label() == UNSURE_LABEL)
    assert unsure.patches[0].get_facecolor() == pytest.approx(to_rgba(UNSURE_COLOUR))
    assert to_rgba(UNSURE_COLOUR) not in expected.values()
