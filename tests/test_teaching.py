"""Teaching while counting (issue 25): kept features, a head retrained on the store's
labels, reclassification with history, classes matched by name, suggest next.

A real store is counted once per module: two synthetic trays through the real
`CountingPipeline` and a random-backbone VGG16 (the real network's shapes and speed;
`backbone_weights="none"`, so head-only checkpoints rebuild it exactly). Labels come
from each tray's ground truth (the nearest true specimen of each detection).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_foram.classify.checkpoint import new_classifier, save_checkpoint
from napari_foram.classify.predict import Predictor
from napari_foram.cli import main
from napari_foram.frames import Frame
from napari_foram.pipeline import CountingPipeline
from napari_foram.reclassify import reclassify_sample, reclassify_store, sample_features
from napari_foram.synthetic import CLASSES, render_tray
from napari_foram.tally import SampleRecord, TallyStore
from napari_foram.tally.stats import REVIEW_CONFIRMED, REVIEW_RELABELLED, final_labels
from napari_foram.tally.store.integrity import store_problems
from napari_foram.teaching import (
    gather_labels,
    model_card,
    retrain,
    save_taught,
    suggest_next,
    teach,
)

SAMPLE = "T1"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Predictor]:
    model, info = new_classifier(CLASSES, backbone_weights="none", seed=0)
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    save_checkpoint(path, model, info)
    return path, Predictor.from_checkpoint(path, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def counted(tmp_path_factory: pytest.TempPathFactory, base) -> tuple[Path, np.ndarray]:
    """A store counted from two trays; (path, true class per row)."""
    _, predictor = base
    path = tmp_path_factory.mktemp("store") / "run.zarr"
    truth: list[int] = []
    with TallyStore.create(path, classes=CLASSES) as store:
        store.add_sample(SampleRecord(SAMPLE))
        pipe = CountingPipeline(predictor, store=store, sample_id=SAMPLE, mc_samples=10)
        for i, seed in enumerate((3, 4)):
            tray = render_tray(seed, shape=(500, 700), n_specimens=12)
            out = pipe.process(Frame(image=tray.image, index=i))
            centres = np.array([s.centroid_yx for s in tray.specimens])
            for row in out.new_rows:
                d = np.linalg.norm(centres - out.detections.centroid[row], axis=1)
                truth.append(tray.specimens[int(np.argmin(d))].class_index)
    return path, np.array(truth)


@pytest.fixture
def store_path(counted, tmp_path: Path) -> Path:
    path = tmp_path / "run.zarr"
    shutil.copytree(counted[0], path)
    return path


def _label(store: TallyStore, truth: np.ndarray, per_class: int = 3) -> None:
    """Label up to `per_class` specimens of each class as a person would."""
    pred = store.read_specimens(SAMPLE)["class_index"]
    for c in range(len(CLASSES)):
        for row in np.flatnonzero(truth == c)[:per_class]:
            if pred[row] == c:
                store.set_review(SAMPLE, [row], status=REVIEW_CONFIRMED, reviewer="ana")
            else:
                store.set_review(
                    SAMPLE, [row], status=REVIEW_RELABELLED, reviewed_class=c, reviewer="ana"
                )


def test_counting_keeps_each_specimens_pooled_features(counted, base) -> None:
    path, truth = counted
    _, predictor = base
    with TallyStore.open(path) as store:
        feats, space = store.read_features(SAMPLE)
        crops = store.read_crops(SAMPLE)
    assert len(truth) == feats.shape[0] >= 12
    assert feats.shape[1] == 2048 and np.isfinite(feats).all()
    assert space == predictor.feature_space
    again = predictor.predict(crops[:4], mc_samples=1, keep_features=True).kept_features
    np.testing.assert_allclose(feats[:4], again, rtol=1e-4, atol=1e-5)


def test_one_pass_gives_the_flat_head_input_and_the_pooled_features(base, counted) -> None:
    from napari_foram.classify.model import feature_function, features_and_pooled

    _, predictor = base
    with TallyStore.open(counted[0]) as store:
        crops = store.read_crops(SAMPLE, [0, 1])
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    conv = predictor.model.conv
    with torch.inference_mode():
        flat, pooled = features_and_pooled(conv, "flat")(x)
        assert torch.equal(flat, feature_function(conv, "flat")(x))
        assert torch.equal(pooled, feature_function(conv, "pooled")(x))


def test_retrain_from_labels_recounts_with_history_and_the_cli_agrees(
    store_path: Path, counted, base, tmp_path: Path
) -> None:
    _, truth = counted
    _, predictor = base
    with TallyStore.open(store_path, mode="a") as store:
        _label(store, truth)
        before = store.read_specimens(SAMPLE)
        counts_before = store.counts(SAMPLE)
        n_tally = len(store.read_tally(SAMPLE)[0])
        result = retrain(store, predictor, out_dir=tmp_path / "models", mc_samples=10)
        after = store.read_specimens(SAMPLE)
        history = store.classification_history(SAMPLE)
        provenance = store.provenance_history(SAMPLE)
        tally_counts = store.read_tally(SAMPLE)[1]
        widget_counts = store.counts(SAMPLE)
        widget_summary = store.sample_summary(SAMPLE)["counts"]
    (report,) = result.reports
    assert report.source == "kept" and report.rows == len(truth)
    # The same specimens: positions and boxes untouched; every label a person gave
    # stands (a confirmation the new model disagrees with becomes a relabel to it).
    for column in ("centroid_y", "centroid_x", "bbox"):
        np.testing.assert_array_equal(after[column], before[column])
    labelled_before = before["review_status"] > 0
    np.testing.assert_array_equal(after["review_status"] > 0, labelled_before)
    np.testing.assert_array_equal(
        final_labels(after)[labelled_before], final_labels(before)[labelled_before]
    )
    # Labelled specimens now predicted as labelled (the head learnt its training labels).
    rows = np.flatnonzero(before["review_status"] > 0)
    labels = np.where(
        before["review_status"][rows] == REVIEW_RELABELLED,
        before["reviewed_class"][rows],
        before["class_index"][rows],
    )
    assert np.mean(after["class_index"][rows] == labels) >= 0.75
    # The earlier answer is history, with its counts; the tally has a row for the new one.
    assert history[0]["counts"] == counts_before.tolist()
    assert history[0]["model_sha256"] == predictor.info.sha256
    assert provenance[-1]["model_sha256"] == result.taught.info.sha256
    assert provenance[-1]["reclassified"] and provenance[-1]["reclassified_rows"] == len(truth)
    assert len(tally_counts) == n_tally + 1
    assert tally_counts[-1].tolist() == widget_counts.tolist() == report.counts_after
    assert store_problems(store_path)[0] == []

    # The command line with the saved checkpoint gives the same classification.
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store_path, copy)
    assert (
        main(["reclassify", str(copy), "--model", str(result.path), "--mc", "10", "--json"]) == 0
    )
    with TallyStore.open(copy) as store:
        cli = store.read_specimens(SAMPLE)
        assert store.counts(SAMPLE).tolist() == widget_counts.tolist()
    np.testing.assert_array_equal(cli["class_index"], after["class_index"])
    np.testing.assert_allclose(cli["mean_probs"], after["mean_probs"], atol=1e-6)

    # Export names the model whose counts it shows, and can show the earlier ones.
    new_csv, old_csv = tmp_path / "new.csv", tmp_path / "old.csv"
    assert main(["export", str(store_path), "-o", str(new_csv)]) == 0
    old_sha = predictor.info.sha256
    assert main(["export", str(store_path), "-o", str(old_csv), "--model", old_sha[:12]]) == 0
    new_row = next(csv.DictReader(new_csv.read_text(encoding="utf-8").splitlines()))
    old_row = next(csv.DictReader(old_csv.read_text(encoding="utf-8").splitlines()))
    assert new_row["model_sha256"] == result.taught.info.sha256
    assert old_row["model_sha256"] == old_sha
    slugs = ["planktic", "calcareous_benthic", "agglutinated_benthic", "sediment"]
    assert sum(int(old_row[f"count_{s}"]) for s in slugs) <= sum(counts_before)
    # (the wide sheet counts a model's unsure specimens apart, as every widget does)
    assert [int(new_row[f"count_{s}"]) for s in slugs] == list(widget_summary)


def test_kept_features_and_crops_give_the_same_recount(store_path: Path, counted, base) -> None:
    _, truth = counted
    _, predictor = base
    with TallyStore.open(store_path, mode="a") as store:
        _label(store, truth)
        taught = teach(gather_labels(store, predictor), predictor)
    path = save_taught(taught, store_path.parent / "models")
    model = Predictor.from_checkpoint(path, device="cpu", precision="fp32")
    # One copy loses its kept features: they are computed again from the crops.
    bare = store_path.parent / "bare.zarr"
    shutil.copytree(store_path, bare)
    shutil.rmtree(bare / "samples" / SAMPLE / "features")
    results = {}
    for p in (store_path, bare):
        with TallyStore.open(p, mode="a") as store:
            report = reclassify_sample(store, SAMPLE, model, mc_samples=10)
            results[p] = (report, store.read_specimens(SAMPLE), store.read_features(SAMPLE))
    (r1, d1, f1), (r2, d2, f2) = results[store_path], results[bare]
    assert (r1.source, r2.source) == ("kept", "crops")
    assert r1.counts_after == r2.counts_after
    np.testing.assert_allclose(d1["mean_probs"], d2["mean_probs"], atol=2e-4)
    # The crops path kept what it computed, for next time.
    assert np.isfinite(f2[0]).all() and f2[1] == f1[1]


def test_classes_are_matched_by_name_and_new_ones_extend_the_store(
    store_path: Path, counted, base
) -> None:
    _, truth = counted
    _, predictor = base
    species = "Globigerinoides ruber"
    with TallyStore.open(store_path, mode="a") as store:
        assert store.add_classes([species]) == [species]
        assert store.class_names == [*CLASSES, species]
        # Old rows read 0 for the class their model did not know.
        probs = store.read_specimens(SAMPLE)["mean_probs"]
        assert probs.shape[1] == 5 and not probs[:, 4].any()
        _label(store, truth, per_class=3)
        planktic = np.flatnonzero(truth == 0)[3:6]
        store.set_review(
            SAMPLE, planktic, status=REVIEW_RELABELLED, reviewed_class=4, reviewer="ana"
        )
        labels = gather_labels(store, predictor)
        taught = teach(labels, predictor)
        assert species in taught.info.class_names
        model = Predictor(taught.model, taught.info, device="cpu", precision="fp32")
        old_counts = store.counts(SAMPLE).tolist()  # the reviews count already
        report = reclassify_sample(store, SAMPLE, model, mc_samples=1)
        assert report.class_names == [*CLASSES, species]
        assert store.classification_history(SAMPLE)[0]["counts"] == old_counts
        data = store.read_specimens(SAMPLE)
    # The model's columns land in the store's columns of the same names.
    feats = torch.from_numpy(store_features(store_path))
    direct = model.predict_features(feats, mc_samples=1)
    where = [[*CLASSES, species].index(c) for c in taught.info.class_names]
    np.testing.assert_allclose(data["mean_probs"][:, where], direct.mean_probs, atol=1e-6)
    assert store_problems(store_path)[0] == []
    # A writer opening the store later appends rows 5 wide (the arrays were widened).
    with TallyStore.open(store_path) as store:
        assert store.read_tally(SAMPLE)[1].shape[1] == 5


def store_features(path: Path) -> np.ndarray:
    with TallyStore.open(path) as store:
        return store.read_features(SAMPLE)[0]


def test_an_interrupted_reclassification_is_undone_on_open(store_path: Path, counted) -> None:
    import zarr

    with TallyStore.open(store_path) as store:
        before = store.read_specimens(SAMPLE)
        n = store.n_specimens(SAMPLE)
    # What a writer killed midway leaves: the snapshot, the marker, half-new columns.
    group = zarr.open_group(store_path / "samples" / SAMPLE, mode="r+")
    snap = group.require_group("history").create_group("0-1")
    for name in ("class_index", "mean_probs", "variance", "entropy", "mutual_information",
                 "vote_fraction", "feature_distance"):  # fmt: skip
        values = before[name]
        arr = snap.create_array(name, shape=values.shape, dtype=values.dtype)
        arr[:] = values
    group.update_attributes({"reclassifying": "0-1"})
    group["class_index"][: n // 2] = (before["class_index"][: n // 2] + 1) % 4
    with pytest.warns(RuntimeWarning, match="interrupted reclassification was undone"):
        TallyStore.open(store_path, mode="a").close()
    with TallyStore.open(store_path) as store:
        after = store.read_specimens(SAMPLE)
        assert store.classification_history(SAMPLE) == []
    np.testing.assert_array_equal(after["class_index"], before["class_index"])
    assert store_problems(store_path)[0] == []


def test_too_few_labels_and_bad_models_give_one_line(store_path: Path, base, tmp_path) -> None:
    _, predictor = base
    with TallyStore.open(store_path, mode="a") as store:
        # Two labels, one class: nothing to tell apart yet.
        store.set_review(
            SAMPLE, [0, 1], status=REVIEW_RELABELLED, reviewed_class=2, reviewer="ana"
        )
        with pytest.raises(ValueError, match="label specimens of at least two classes") as e:
            teach(gather_labels(store, predictor), predictor)
        assert "\n" not in str(e.value)
        # Non-finite features never make a model.
        labels = gather_labels(store, predictor)
    labels.features[:] = np.nan
    labels.labels = np.array([0, 1], dtype=np.int64)
    labels.labels = np.array([0, 0, 1, 1])[: len(labels.labels)]
    with pytest.raises(ValueError):
        teach(labels, predictor)
    assert main(["reclassify", str(store_path), "--model", str(tmp_path)]) == 1


def test_suggest_next_spreads_over_kinds_and_prefers_uncertain_rows() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 10
    kind = np.repeat(np.arange(4), 25)
    feats = centres[kind] + rng.normal(size=(100, 16))
    feats[7] = np.nan  # no features: never suggested
    labelled = np.zeros(100, bool)
    labelled[kind == 0] = True  # kind 0 is labelled already
    picks = suggest_next(feats, None, labelled, n=3)
    assert len(set(kind[picks])) == 3 and not labelled[picks].any() and 7 not in picks
    # Among near-identical rows, the uncertain one goes first.
    probs = np.tile([0.97, 0.01, 0.01, 0.01], (100, 1))
    probs[60] = [0.25, 0.25, 0.25, 0.25]
    near = np.tile(centres[2], (100, 1)) + rng.normal(size=(100, 16)) * 0.01
    assert suggest_next(near, probs, np.zeros(100, bool), n=1)[0] == 60
    assert len(suggest_next(feats, None, np.ones(100, bool), n=5)) == 0


def test_model_card_of_a_taught_model(store_path: Path, counted, base, tmp_path: Path) -> None:
    _, truth = counted
    _, predictor = base
    with TallyStore.open(store_path, mode="a") as store:
        _label(store, truth)
        taught = teach(gather_labels(store, predictor), predictor)
    path = save_taught(taught, tmp_path)
    assert main(["model-card", str(path), "--json"]) == 0
    from napari_foram.classify.checkpoint import read_model_info

    card = model_card(read_model_info(path))
    assert card["classes"] == list(taught.info.class_names)
    assert card["recipe"] == "pooled-linear" and len(card["data"]) == 64
    assert card["unsure_rule"]["measure"] == "feature_distance"
    assert "oof_accuracy" in card["held_out"]
    json.dumps(card)


def test_reclassify_store_skips_empty_samples_and_refuses_unknown(
    store_path, counted, base
) -> None:
    _, truth = counted
    _, predictor = base
    with TallyStore.open(store_path, mode="a") as store:
        # A taught (pooled) head classifies again from the kept features, in milliseconds;
        # the base model's flat head would put every crop through VGG16 again (that path
        # is test_kept_features_and_crops_give_the_same_recount's).
        _label(store, truth)
        taught = teach(gather_labels(store, predictor), predictor)
        model = Predictor(taught.model, taught.info, device="cpu", precision="fp32")
        store.add_sample(SampleRecord("EMPTY"))
        assert [r.sample_id for r in reclassify_store(store, model, mc_samples=1)] == [SAMPLE]
        with pytest.raises(ValueError, match="no sample 'NOPE'"):
            reclassify_store(store, model, sample_ids=["NOPE"])
        feats, source = sample_features(store, SAMPLE, predictor)
        assert source == "kept" and np.isfinite(feats).all()
