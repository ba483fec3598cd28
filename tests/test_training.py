"""Training and evaluation (napari_foram.training): metrics, data, training loops, CLI.

Metrics are checked against hand computations on small fixed prediction arrays; the
training loops run on small synthetic feature tensors (no VGG16 pass); only the
end-to-end CLI test and the fine-tuning test run the real (random-backbone) network.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from torch import nn

from napari_foram.classify.model import FORAMNet
from napari_foram.cli import main
from napari_foram.training.data import (
    LabelledCrops,
    contact_sheet,
    image_to_crop,
    load_image_folder,
    load_split,
    save_split,
    split_indices,
)
from napari_foram.training.evaluate import evaluate_predictions, mc_sample_probs
from napari_foram.training.metrics import (
    accuracy,
    calibration,
    confusion_matrix,
    macro_scores,
    mc_dropout_accuracy,
    mean_sd,
    per_class_scores,
    sample_votes,
)
from napari_foram.training.train import (
    TrainConfig,
    augment,
    train_classifier,
    train_head,
)

# ----------------------------------------------------------------------------- metrics
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
Y_PRED = np.array([0, 1, 0, 1, 1, 2, 0, 2, 1])


def test_accuracy_confusion_and_per_class_scores_match_hand_counts() -> None:
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    # rows: true class, columns: predicted class
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 2, 0], [1, 1, 2]])
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(6 / 9)
    s = per_class_scores(cm)
    np.testing.assert_allclose(s["precision"], [2 / 3, 2 / 4, 2 / 2])
    np.testing.assert_allclose(s["recall"], [2 / 3, 2 / 2, 2 / 4])
    np.testing.assert_allclose(s["f1"], [2 / 3, 2 * 0.5 * 1 / 1.5, 2 * 1 * 0.5 / 1.5])
    np.testing.assert_array_equal(s["support"], [3, 2, 4])
    macro = macro_scores(s)
    assert macro["precision"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert macro["recall"] == pytest.approx((2 / 3 + 1 + 0.5) / 3)


def test_class_never_predicted_has_no_precision_and_zero_f1() -> None:
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 0, 0, 2])  # class 1 is never predicted
    s = per_class_scores(confusion_matrix(y_true, y_pred, 3))
    assert np.isnan(s["precision"][1])
    assert s["recall"][1] == 0.0
    assert s["f1"][1] == 0.0
    assert s["precision"][0] == pytest.approx(0.5)
    # the macro mean counts the unpredicted class as precision 0, not as missing
    assert macro_scores(s)["precision"] == pytest.approx((0.5 + 0 + 1) / 3)


def test_confusion_matrix_rejects_out_of_range_labels() -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="differ in length"):
        accuracy([0, 1], [0])


def test_calibration_bins_and_ece_match_hand_computation() -> None:
    conf = np.array([0.95, 0.91, 0.85, 0.65, 0.55, 0.9])
    correct = np.array([True, False, False, True, True, True])
    c = calibration(conf, correct, n_bins=10)
    # bins are right-closed: 0.9 belongs to (0.8, 0.9], not to (0.9, 1.0]
    np.testing.assert_array_equal(c["count"], [0, 0, 0, 0, 0, 1, 1, 0, 2, 2])
    assert c["confidence"][9] == pytest.approx(0.93)
    assert c["accuracy"][9] == pytest.approx(0.5)
    assert c["confidence"][8] == pytest.approx(0.875)
    assert c["accuracy"][8] == pytest.approx(0.5)
    expected = (
        2 / 6 * abs(0.5 - 0.93)
        + 2 / 6 * abs(0.5 - 0.875)
        + 1 / 6 * abs(1 - 0.65)
        + 1 / 6 * abs(1 - 0.55)
    )
    assert c["ece"] == pytest.approx(expected)
    assert np.isnan(c["confidence"][0])
    perfect = calibration(np.array([1.0, 1.0]), np.array([True, True]))
    assert perfect["ece"] == pytest.approx(0.0)


def test_mc_dropout_accuracy_per_sample_mean_sd_and_vote() -> None:
    # S = 3 passes, N = 4 crops, K = 2 classes; truth [0, 1, 1, 0]
    y = np.array([0, 1, 1, 0])
    p0 = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])  # right: 0, 1      -> 2/4
    p1 = np.array([[0.8, 0.2], [0.4, 0.6], [0.4, 0.6], [0.6, 0.4]])  # right: all      -> 4/4
    p2 = np.array([[0.4, 0.6], [0.3, 0.7], [0.7, 0.3], [0.2, 0.8]])  # right: 1        -> 1/4
    samples = np.stack([p0, p1, p2])
    mc = mc_dropout_accuracy(samples, y)
    np.testing.assert_allclose(mc["per_sample"], [0.5, 1.0, 0.25])
    assert mc["mean"] == pytest.approx(1.75 / 3)
    assert mc["sd"] == pytest.approx(np.std([0.5, 1.0, 0.25]))
    # votes: crop0 0,0,1 -> 0 ok; crop1 1,1,1 -> 1 ok; crop2 0,1,0 -> 0 wrong;
    # crop3 1,0,1 -> 1 wrong
    np.testing.assert_array_equal(sample_votes(samples), [[2, 1], [0, 3], [2, 1], [1, 2]])
    np.testing.assert_array_equal(mc["vote_class"], [0, 1, 0, 1])
    assert mc["vote_accuracy"] == pytest.approx(0.5)
    # mean probs: crop2 (0.567, 0.433) -> 0 wrong; crop3 (0.367, 0.633) -> 1 wrong
    assert mc["mean_prob_accuracy"] == pytest.approx(0.5)


def test_vote_ties_go_to_the_lowest_class() -> None:
    samples = np.array([[[0.9, 0.1]], [[0.1, 0.9]]])  # one vote each
    assert sample_votes(samples).argmax(axis=1)[0] == 0
    assert mc_dropout_accuracy(samples, np.array([0]))["vote_accuracy"] == 1.0


def test_evaluate_predictions_report_is_strict_json_with_the_same_numbers() -> None:
    k = 3
    probs = np.full((len(Y_TRUE), k), 0.1)
    probs[np.arange(len(Y_TRUE)), Y_PRED] = 0.8
    rng = np.random.default_rng(0)
    samples = rng.dirichlet(np.ones(k), size=(5, len(Y_TRUE)))
    report = evaluate_predictions(Y_TRUE, probs, ("a", "b", "c"), samples)
    json.dumps(report, allow_nan=False)  # no NaN leaks into report.json
    assert report["accuracy"] == pytest.approx(6 / 9)
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 1, 2]]
    assert report["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert report["calibration"]["ece"] == pytest.approx(abs(6 / 9 - 0.8))
    mc = mc_dropout_accuracy(samples, Y_TRUE)
    assert report["mc"]["mean_accuracy"] == pytest.approx(mc["mean"])
    assert report["mc"]["vote_accuracy"] == pytest.approx(mc["vote_accuracy"])
    assert report["mc"]["samples"] == 5
    with pytest.raises(ValueError, match="probs must be"):
        evaluate_predictions(Y_TRUE, probs[:, :2], ("a", "b", "c"))


def test_mean_sd_of_repeats() -> None:
    assert mean_sd([0.9, 1.0]) == pytest.approx((0.95, np.std([0.9, 1.0], ddof=1)))
    assert mean_sd([0.7]) == (0.7, 0.0)


# ----------------------------------------------------------------------------- splits
def test_split_is_stratified_disjoint_and_reproducible() -> None:
    labels = np.repeat([0, 1, 2], [10, 20, 5])
    split = split_indices(labels, seed=3)
    parts = np.concatenate([split["train"], split["val"], split["test"]])
    np.testing.assert_array_equal(np.sort(parts), np.arange(labels.size))  # disjoint + complete
    counts = {name: np.bincount(labels[idx], minlength=3) for name, idx in split.items()}
    np.testing.assert_array_equal(counts["val"], [1, 2, 1])
    np.testing.assert_array_equal(counts["test"], [1, 2, 1])
    np.testing.assert_array_equal(counts["train"], [8, 16, 3])
    again = split_indices(labels, seed=3)
    for name in split:
        np.testing.assert_array_equal(split[name], again[name])
    other = split_indices(labels, seed=4)
    assert not np.array_equal(split["test"], other["test"])
    with pytest.raises(ValueError, match="needs 3"):
        split_indices(np.array([0, 0, 1, 1, 1]), seed=0)
    with pytest.raises(ValueError, match="summing to 1"):
        split_indices(labels, fractions=(0.5, 0.1, 0.1))


def _crops_in_memory(tmp_path: Path, n_per_class: int = 4) -> LabelledCrops:
    labels = np.repeat([0, 1, 2], n_per_class)
    paths = [tmp_path / "abc"[k] / f"{i}.png" for i, k in enumerate(labels)]
    crops = np.zeros((labels.size, 224, 224, 3), np.uint8)
    return LabelledCrops(crops, labels, ("a", "b", "c"), paths, root=tmp_path)


def test_split_file_round_trip_and_mismatch(tmp_path: Path) -> None:
    data = _crops_in_memory(tmp_path)
    split = split_indices(data.labels, seed=1)
    path = tmp_path / "split.json"
    save_split(path, split, data, seed=1)
    loaded = load_split(path, data)
    for name in split:
        np.testing.assert_array_equal(loaded[name], split[name])
    # the same files listed in another order map to the same images
    shuffled = data.subset(np.arange(len(data))[::-1])
    back = load_split(path, shuffled)
    assert sorted(shuffled.relative_paths()[i] for i in back["test"]) == sorted(
        data.relative_paths()[i] for i in split["test"]
    )
    small = data.subset([0, 1, 2, 4, 5, 6, 8, 9, 10])  # 3 per class
    with pytest.raises(ValueError, match="not in the data"):
        load_split(path, small)  # files gone since the split
    small_split = split_indices(small.labels, seed=1)
    save_split(tmp_path / "small.json", small_split, small, seed=1)
    with pytest.raises(ValueError, match="covers 9 files but the data has 12"):
        load_split(tmp_path / "small.json", data)  # files added since the split
    with pytest.raises(ValueError, match="not a napari-foram split"):
        (tmp_path / "bad.json").write_text("{}")
        load_split(tmp_path / "bad.json", data)


# ----------------------------------------------------------------------------- image folders
def _blob_image(size: tuple[int, int], centre: tuple[int, int], colour: int = 220) -> np.ndarray:
    img = np.full((*size, 3), 25, np.uint8)
    yy, xx = np.mgrid[: size[0], : size[1]]
    img[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < 45**2] = colour
    return img


def test_load_image_folder_handles_odd_files(tmp_path: Path) -> None:
    a, b = tmp_path / "alpha", tmp_path / "beta"
    a.mkdir()
    b.mkdir()
    sixteen = np.full((224, 224), 40000, np.uint16)
    iio.imwrite(a / "sixteen.png", sixteen)
    rgba = np.zeros((100, 120, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    iio.imwrite(a / "rgba.png", rgba)
    iio.imwrite(b / "small.png", np.full((30, 40, 3), 90, np.uint8))
    iio.imwrite(b / "tiny.png", np.full((4, 4, 3), 90, np.uint8))
    (b / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (b / "notes.txt").write_text("not an image")
    frame = _blob_image((600, 800), (150, 560))
    iio.imwrite(b / "frame.png", frame)
    (tmp_path / "README.md").write_text("files at the top level are not data")

    # The study's "native" policy: pictures at their own scale (test_small_data has "fit").
    data = load_image_folder(tmp_path, crop_policy="native")
    crops, labels, class_names, paths = data  # unpacks as (crops, labels, names, paths)
    assert class_names == ("alpha", "beta")
    assert crops.shape == (4, 224, 224, 3) and crops.dtype == np.uint8
    assert sorted(p.name for p in paths) == ["frame.png", "rgba.png", "sixteen.png", "small.png"]
    by_name = {p.name: i for i, p in enumerate(paths)}
    np.testing.assert_array_equal(labels[[by_name["sixteen.png"], by_name["frame.png"]]], [0, 1])
    # 16-bit: 40000 of 65535 -> 156 of 255, grey replicated to RGB
    assert tuple(crops[by_name["sixteen.png"], 112, 112]) == (156, 156, 156)
    # RGBA: alpha dropped, the 100 x 120 image centred on a black canvas
    rgba_crop = crops[by_name["rgba.png"]]
    assert tuple(rgba_crop[112, 112]) == (200, 0, 0)
    assert tuple(rgba_crop[10, 10]) == (0, 0, 0)
    # a small 30 x 40 image is padded, not stretched
    small = crops[by_name["small.png"]]
    assert (small[:, :, 0] == 90).sum() == 30 * 40
    # the frame was detected and the crop centred on its specimen
    i = by_name["frame.png"]
    assert data.how[i] == "detected"
    assert crops[i, 112, 112, 0] == 220 and crops[i, 112, 112 + 100, 0] == 25
    reasons = {line.split(": ", 1)[0].rsplit("/", 1)[-1]: line for line in data.skipped}
    assert set(reasons) == {"tiny.png", "corrupt.png", "notes.txt"}
    assert "smaller than 16 px" in reasons["tiny.png"]
    assert "cannot read image" in reasons["corrupt.png"]
    assert "not an image file" in reasons["notes.txt"]


def test_load_image_folder_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class subfolders"):
        load_image_folder(tmp_path)
    (tmp_path / "gamma").mkdir()
    (tmp_path / "gamma" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="no usable images"):
        load_image_folder(tmp_path)
    with pytest.raises(ValueError, match=r"\['gamma'\] are not among"):
        load_image_folder(tmp_path, class_names=("a", "b"))


def test_frame_without_specimen_is_cut_at_its_centre() -> None:
    crop, how = image_to_crop(np.full((500, 700, 3), 30, np.uint8), crop_policy="native")
    assert how == "centre" and crop.shape == (224, 224, 3)
    # Under "fit" 500 x 700 is a picture; a frame is larger than 1024 px a side.
    crop, how = image_to_crop(np.full((1100, 1500, 3), 30, np.uint8), crop_policy="fit")
    assert how == "centre" and crop.shape == (224, 224, 3)


def test_contact_sheet_grid() -> None:
    crops = np.zeros((70, 224, 224, 3), np.uint8)
    sheet = contact_sheet(crops)  # only 64 used: 8 x 8 tiles of 112 px + 2 px gutters
    assert sheet.shape == (8 * 114 + 2, 8 * 114 + 2, 3)


# ----------------------------------------------------------------------------- training loops
def _separable_features(
    n_per_class: int, dim: int, seed: int = 0
) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class)
    centres = rng.normal(0, 3, size=(3, dim))
    x = centres[labels] + rng.normal(0, 0.5, size=(labels.size, dim))
    return torch.from_numpy(x.astype(np.float32)), labels


def _small_head(dim: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(dim, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3)
    )


def test_train_head_learns_restores_best_and_is_reproducible() -> None:
    x, y = _separable_features(10, 12)
    split = split_indices(y, seed=0, fractions=(0.6, 0.2, 0.2))
    config = TrainConfig(recipe="study", lr=1e-2, max_epochs=30, patience=3, seed=5)
    head = _small_head(12)
    rec = train_head(head, x, y, split["train"], split["val"], config)
    assert rec["val_accuracy"] == 1.0
    assert rec["epochs_run"] <= rec["best_epoch"] + config.patience  # early stopping
    assert not head.training
    with torch.inference_mode():
        test_acc = (head(x[split["test"]]).argmax(1).numpy() == y[split["test"]]).mean()
    assert test_acc == 1.0
    again = _small_head(12)
    rec2 = train_head(again, x, y, split["train"], split["val"], config)
    assert rec2["history"] == rec["history"]
    for p, q in zip(head.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)


def test_ctrl_c_keeps_the_best_epoch_so_far() -> None:
    x, y = _separable_features(6, 8)
    split = split_indices(y, seed=0, fractions=(0.5, 0.5, 0.0))
    config = TrainConfig(recipe="study", lr=1e-2, max_epochs=20, patience=20)

    def interrupt_at(epoch_to_stop: int) -> Callable[[int, int, str], None]:
        def progress(done: int, total: int, message: str) -> None:
            if done == epoch_to_stop:
                raise KeyboardInterrupt

        return progress

    rec = train_head(
        _small_head(8), x, y, split["train"], split["val"], config, progress=interrupt_at(3)
    )
    assert rec["interrupted"] and rec["best_epoch"] in (1, 2)
    with pytest.raises(KeyboardInterrupt):  # nothing to keep before the first epoch ends
        train_head(
            _small_head(8), x, y, split["train"], split["val"], config, progress=interrupt_at(1)
        )


def test_augment_is_per_image_seeded_and_in_range() -> None:
    crops = torch.zeros((8, 3, 32, 32), dtype=torch.uint8)
    crops[:, 0, :8, :16] = 200  # an asymmetric red patch: flips and turns move it
    crops[:, 1] = 90
    torch.manual_seed(0)
    out = augment(crops)
    torch.manual_seed(0)
    again = augment(crops)
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out, again)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # the same input image comes out differently across the batch
    assert len({tuple(o.flatten()[::97].tolist()) for o in out}) > 1
    # colour jitter stays within the study's +-10 % brightness (mean green ~ 90/255)
    assert abs(float(out[:, 1].mean()) - 90 / 255) < 0.15


def test_mc_sample_probs_match_predictor_statistics() -> None:
    from napari_foram.classify.checkpoint import new_classifier
    from napari_foram.classify.predict import Predictor

    model, info = new_classifier(("a", "b", "c"), backbone_weights="none", seed=1)
    predictor = Predictor(model, info, device="cpu", batch_size=4)
    features = torch.randn(6, 25088, generator=torch.Generator().manual_seed(0)) * 0.05
    samples = mc_sample_probs(predictor, features, 7, seed=11)
    assert samples.shape == (7, 6, 3)
    np.testing.assert_allclose(samples.sum(axis=2), 1.0, rtol=1e-5)
    reference = predictor.predict_features(features, mc_samples=7, seed=11)
    np.testing.assert_allclose(samples.mean(axis=0), reference.mean_probs, rtol=1e-5, atol=1e-6)
    votes = sample_votes(samples)
    np.testing.assert_allclose(votes.max(axis=1) / 7, reference.vote_fraction, rtol=1e-6)


def test_grid_and_repeats_write_tables_and_checkpoint(tmp_path: Path) -> None:
    from napari_foram.classify.checkpoint import load_checkpoint

    data = _crops_in_memory(tmp_path, n_per_class=5)
    feats, _ = _separable_features(5, 25088, seed=2)
    # No learning curve: its heads (5 repeats per point) are not what this test checks,
    # and each builds a VGG16 (test_small_data.py checks the curve).
    config = TrainConfig(
        recipe="study",
        backbone_weights="none",
        lr=1e-3,
        max_epochs=4,
        patience=2,
        learning_curve=False,
    )
    grid = {"dropout": [0.1, 0.4], "hidden_units": [(8, 4)]}
    out = train_classifier(
        data, tmp_path / "m.safetensors", config, repeats=2, grid=grid, features=feats
    )
    with Path(out.files["grid"]).open() as fh:
        grid_rows = list(csv.DictReader(fh))
    assert [r["dropout"] for r in grid_rows] == ["0.1", "0.4"]
    assert {r["hidden_units"] for r in grid_rows} == {"8x4"}
    with Path(out.files["repeats"]).open() as fh:
        repeat_rows = list(csv.DictReader(fh))
    assert [int(r["seed"]) for r in repeat_rows] == [0, 1]
    tests = [r.test_accuracy for r in out.runs]
    rep = out.metrics["repeats"]
    assert rep["test_accuracy_mean"] == pytest.approx(np.mean(tests))
    assert rep["test_accuracy_sd"] == pytest.approx(np.std(tests, ddof=1))
    best_grid = max(grid_rows, key=lambda r: (float(r["val_accuracy"]), -float(r["val_loss"])))
    _, info = load_checkpoint(tmp_path / "m.safetensors")
    assert info.hidden_units == (8, 4)
    assert info.dropout == pytest.approx(float(best_grid["dropout"]))
    assert info.training["repeats"] == 2 and info.training["grid"] is True
    assert info.training["phase1_augmentation"].startswith("none")
    assert info.metrics["val_accuracy"] == pytest.approx(max(r.val_accuracy for r in out.runs))


# ----------------------------------------------------------------------------- CLI end to end
def _write_class_folder(root: Path, n_per_class: int = 3) -> None:
    colours = {"red": (200, 50, 50), "green": (50, 200, 50), "blue": (50, 50, 200)}
    rng = np.random.default_rng(0)
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            img = np.full((224, 224, 3), 20, np.uint8)
            jitter = rng.integers(-20, 20, 3)
            img[60:170, 50:160] = np.clip(np.array(colour) + jitter, 0, 255)
            iio.imwrite(root / name / f"{name}_{i}.png", img)


def test_cli_train_then_evaluate_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from napari_foram.classify.predict import Predictor

    data = tmp_path / "data"
    _write_class_folder(data)
    (data / "red" / "broken.png").write_bytes(b"garbage")
    ckpt = tmp_path / "model.safetensors"
    # --no-learning-curve: the curve is test_small_data.py's subject, and costs 5 heads
    # (each on a fresh VGG16) per point here.
    rc = main(
        ["train", str(data), "-o", str(ckpt), "--backbone-weights", "none", "--epochs", "2",
         "--lr", "1e-3", "--device", "cpu", "--no-learning-curve"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "skipped" in captured.err and "broken.png" in captured.err
    split = tmp_path / "model.split.json"
    assert ckpt.is_file() and split.is_file()

    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    assert predictor.class_names == ("blue", "green", "red")
    assert predictor.info.training["config"]["max_epochs"] == 2
    assert predictor.info.training["data"]["split_counts"]["test"] == {
        "blue": 1, "green": 1, "red": 1
    }  # fmt: skip

    report = tmp_path / "report"
    rc = main(
        ["evaluate", str(data), "--model", str(ckpt), "--mc", "5", "--report", str(report),
         "--split", str(split), "--device", "cpu", "--json"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    printed = json.loads(captured.out)
    for name in (
        "report.json",
        "predictions.csv",
        "confusion_matrix.csv",
        "confusion_matrix.png",
        "reliability.png",
        "gallery.png",
    ):
        assert (report / name).is_file(), name
    saved = json.loads((report / "report.json").read_text())
    assert saved["accuracy"] == printed["accuracy"]
    assert saved["n"] == 3 and saved["data"]["subset"] == "test"
    assert saved["mc"]["samples"] == 5 and len(saved["mc"]["per_sample_accuracy"]) == 5
    with (report / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3
    assert np.mean([int(r["correct"]) for r in rows]) == pytest.approx(
        saved["mc"]["mean_prob_accuracy"]
    )
    cm = np.array(saved["confusion_matrix"])
    assert cm.sum() == 3 and np.trace(cm) / 3 == pytest.approx(saved["accuracy"])


def test_cli_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["train", str(tmp_path / "nope"), "-o", str(tmp_path / "m.safetensors")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "not found" in err
    rc = main(
        ["evaluate", str(tmp_path), "--model", str(tmp_path / "m.safetensors"),
         "--report", str(tmp_path / "r")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "checkpoint not found" in err


def test_cli_extract_crops(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "frames"
    (src / "planktic").mkdir(parents=True)
    (src / "sediment").mkdir(parents=True)
    two = _blob_image((600, 800), (200, 250))
    two = np.maximum(two, _blob_image((600, 800), (380, 560)))
    iio.imwrite(src / "planktic" / "tray1.png", two)
    iio.imwrite(src / "sediment" / "tray2.png", _blob_image((600, 800), (300, 400), 180))
    (src / "sediment" / "bad.tif").write_bytes(b"nope")
    out = tmp_path / "crops"
    rc = main(["extract-crops", str(src), str(out), "--no-border", "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["crops"] == {"planktic": 2, "sediment": 1}
    assert "bad.tif" in captured.err
    assert sorted(p.name for p in (out / "planktic").iterdir()) == ["tray1_0.png", "tray1_1.png"]
    with (out / "crops.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and {r["class"] for r in rows} == {"planktic", "sediment"}
    centres = sorted((round(float(r["centroid_y"])), round(float(r["centroid_x"]))) for r in rows)
    assert np.allclose(centres, [(200, 250), (300, 400), (380, 560)], atol=3)
    assert (out / "contact_sheet_planktic.png").is_file()
    crop = iio.imread(out / "planktic" / "tray1_0.png")
    assert crop.shape == (224, 224, 3) and crop[112, 112, 0] == 220
    # the output is itself a data folder (top-level CSV and sheets are ignored)
    data = load_image_folder(out)
    assert data.counts() == {"planktic": 2, "sediment": 1} and not data.skipped


@pytest.mark.slow
def test_fine_tune_phase_two_runs_and_is_recorded(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _write_class_folder(data_dir)
    data = load_image_folder(data_dir)
    config = TrainConfig(
        recipe="study", backbone_weights="none", lr=1e-3, max_epochs=2, fine_tune=True,
        fine_tune_epochs=1,
        fine_tune_lr=1e-5,
    )  # fmt: skip
    out = train_classifier(data, tmp_path / "ft.safetensors", config)
    phase2 = out.best.info.training["phase2"]
    assert phase2 is not None and phase2["epochs_run"] == 1
    assert phase2["layers"].startswith("conv[17:]")


@pytest.mark.parametrize("name", ["extract-crops", "train", "evaluate"])
def test_training_commands_explain_themselves(name: str, capsys: pytest.CaptureFixture) -> None:
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage:" in out and len(out.splitlines()) > 4


def test_folded_standardisation_matches_training_on_standardised_features() -> None:
    """The head saved after standardised training gives the same logits on raw features."""
    import torch
    from torch import nn

    from napari_foram.training.train import fold_standardisation

    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    x = torch.randn(5, 6) * 3 + 7
    mu, sd = x.mean(0), x.std(0) + 1e-6
    expected = head((x - mu) / sd)
    fold_standardisation(head, mu, sd)
    assert torch.allclose(head(x), expected, atol=1e-5)


def test_warm_start_from_a_checkpoint_head_keeps_what_it_learnt(tmp_path: Path) -> None:
    """init_head: phase 1 starts from a checkpoint's head (through the standardised
    feature space and back, exactly); with a vanishing learning rate nothing moves.
    """
    import torch
    from torch import nn

    from napari_foram.classify.checkpoint import load_checkpoint
    from napari_foram.training.train import fold_standardisation, unfold_standardisation

    head = nn.Sequential(nn.Flatten(), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(5, 6)
    mu, sd = torch.randn(6), torch.rand(6) + 0.5
    before = head(x)
    unfold_standardisation(head, mu, sd)
    torch.testing.assert_close(head((x - mu) / sd), before, rtol=1e-5, atol=1e-5)
    fold_standardisation(head, mu, sd)
    torch.testing.assert_close(head(x), before, rtol=1e-5, atol=1e-5)

    data = _crops_in_memory(tmp_path, n_per_class=5)
    feats, _ = _separable_features(5, 25088, seed=3)
    first = TrainConfig(
        recipe="study",
        backbone_weights="none",
        standardize_features=True,
        lr=1e-3,
        max_epochs=5,
        patience=5,
        learning_curve=False,  # not checked here; each of its heads builds a VGG16
    )
    train_classifier(data, tmp_path / "first.safetensors", first, features=feats)
    again = TrainConfig(
        recipe="study",
        backbone_weights="none",
        standardize_features=True,
        lr=1e-12,
        max_epochs=1,
        init_head=str(tmp_path / "first.safetensors"),
        learning_curve=False,  # each of its heads would load first.safetensors again
    )
    train_classifier(data, tmp_path / "again.safetensors", again, features=feats)
    m1, _ = load_checkpoint(tmp_path / "first.safetensors")
    m2, _ = load_checkpoint(tmp_path / "again.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(m2.head(feats), m1.head(feats), rtol=1e-3, atol=1e-3)

    other = _crops_in_memory(tmp_path / "x", n_per_class=5)
    other.class_names = ("a", "b", "z")
    with pytest.raises(ValueError, match="predicts"):
        train_classifier(other, tmp_path / "bad.safetensors", again, features=feats)


def test_pooled_phase1_folds_into_the_table1_head() -> None:
    """Class information in the channel means: the pooled head learns it, and the folded
    Table-1 head gives exactly the proxy's predictions on the raw 25088 features.
    """
    gen = torch.Generator().manual_seed(0)
    labels = np.repeat(np.arange(3), 20)
    channel_means = torch.rand(3, 512, generator=gen)
    grid = channel_means[labels][:, :, None].expand(60, 512, 49)
    features = (grid + 0.3 * torch.rand(60, 512, 49, generator=gen)).reshape(60, -1)
    head = FORAMNet(3, hidden_units=(16,)).head
    tr, va = np.arange(0, 60, 2), np.arange(1, 60, 2)
    config = TrainConfig(
        recipe="study", pooled_features=True, lr=1e-2, max_epochs=30, patience=30, seed=1
    )
    record = train_head(head, features, labels, tr, va, config)
    assert record["val_accuracy"] == 1.0
    with torch.no_grad():
        predicted = head.eval()(features).argmax(1).numpy()
    assert (predicted[va] == labels[va]).mean() == record["val_accuracy"]
    with pytest.raises(ValueError, match="warm-start"):
        bad = TrainConfig(recipe="study", pooled_features=True, init_head="x")
        train_head(head, features, labels, tr, va, bad)


def test_trained_checkpoint_carries_density_and_unsure_rule(tmp_path: Path) -> None:
    from napari_foram.classify.checkpoint import load_checkpoint

    data = tmp_path / "data"
    _write_class_folder(data, n_per_class=6)
    ckpt = tmp_path / "m.safetensors"
    rc = main(
        ["train", str(data), "-o", str(ckpt), "--backbone-weights", "none", "--epochs", "2",
         "--device", "cpu", "--no-learning-curve"]
    )  # fmt: skip
    assert rc == 0
    model, info = load_checkpoint(ckpt)
    assert model.density is not None and model.density.class_means.shape[0] == 3
    rule = info.unsure_rule
    assert rule["measure"] == "feature_distance" and rule["threshold"] > 0
    assert "validation" in rule["set_on"]
