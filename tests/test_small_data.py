"""Training right on small real sets (issue 24): pictures of any size, the pooled-linear
recipe, its calibration and learning curve, and the bad inputs it refuses.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from napari_foram.classify.checkpoint import ModelInfo, load_checkpoint, save_checkpoint
from napari_foram.classify.model import POOLED_DIM, FORAMNet, build_model, feature_function
from napari_foram.classify.predict import Predictor
from napari_foram.pictures import fit_to_window, picture_to_crop
from napari_foram.training.curve import learning_curve
from napari_foram.training.train import TrainConfig, check_trainable
from napari_foram.training.train._linear import (
    fit_linear_head,
    fit_temperature,
    mean_prob_nll,
)


# ----------------------------------------------------------------------------- pictures
def test_fit_to_window_scales_the_longer_side_and_pads_with_the_background() -> None:
    pic = np.full((50, 100, 3), 30, np.uint8)  # dark background, a bright bar inside
    pic[20:30, 10:90] = 220
    out = fit_to_window(pic)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    # 100 px -> 224 px wide: the bar spans about 80 * 2.24 = 179 columns.
    bright = np.flatnonzero(out[112, :, 0] > 128)
    assert 170 <= bright.size <= 188
    # Padding (top and bottom rows) is the picture's own border colour, not black.
    assert out[0, 0].tolist() == [30, 30, 30] and out[-1, 112].tolist() == [30, 30, 30]
    # A 224 px crop is left as it is.
    crop = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    assert np.array_equal(fit_to_window(crop), crop)


def test_picture_policies_differ_only_for_pictures_not_224_crops() -> None:
    small = np.full((40, 60), 200, np.uint8)  # greyscale, 40 x 60: a tiny picture
    fitted, how_fit = picture_to_crop(small, "fit")
    native, how_native = picture_to_crop(small, "native")
    assert (how_fit, how_native) == ("fitted", "centred")
    # Native keeps it a 60 px patch on black; fit fills the window's width.
    assert np.count_nonzero(native[112, :, 0]) == 60
    assert np.count_nonzero(fitted[112, :, 0] == 200) == 224
    crop = np.random.default_rng(1).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    assert np.array_equal(picture_to_crop(crop, "fit")[0], picture_to_crop(crop, "native")[0])
    with pytest.raises(ValueError, match="unknown crop policy 'zoom'"):
        picture_to_crop(small, "zoom")


# ----------------------------------------------------------------------------- pooled model
def test_pooled_layout_taps_blocks_four_and_five() -> None:
    model = build_model(3, backbone_weights="none", hidden_units=(), feature_layout="pooled")
    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        feats = model.features(x)
        h = x
        acts = {}
        for i, layer in enumerate(model.conv):
            h = layer(h)
            acts[i] = h
    assert feats.shape == (2, POOLED_DIM) == (2, 2048)
    # Whole-image and centre means (the middle 3/7 of each side: 12 of 28, 6 of 14 px).
    want = torch.cat(
        [
            acts[22].mean((2, 3)),
            acts[22][:, :, 8:20, 8:20].mean((2, 3)),
            acts[29].mean((2, 3)),
            acts[29][:, :, 4:10, 4:10].mean((2, 3)),
        ],
        1,
    )
    assert torch.allclose(feats, want)
    # The flat (study) layout is unchanged: block 5's pooled output flattened.
    flat = feature_function(model.conv, "flat")(x)
    assert flat.shape == (2, 25088)


def test_pooled_checkpoint_round_trip_predicts_the_same(tmp_path: Path) -> None:
    model = build_model(
        3, backbone_weights="none", hidden_units=(), dropout=0.2, feature_layout="pooled"
    )
    std = model.head[1]
    std.set(torch.full((POOLED_DIM,), 0.5), torch.full((POOLED_DIM,), 2.0))
    info = ModelInfo.for_model(model, ("a", "b", "c"), crop_policy="fit", temperature=1.3)
    path = tmp_path / "pooled.safetensors"
    save_checkpoint(path, model, info)
    loaded, loaded_info = load_checkpoint(path)
    assert loaded_info.feature_layout == "pooled" and loaded_info.crop_policy == "fit"
    assert loaded_info.temperature == pytest.approx(1.3)
    assert torch.equal(loaded.head[1].scale, std.scale)
    crops = np.random.default_rng(2).integers(0, 255, (3, 224, 224, 3), dtype=np.uint8)
    a = Predictor(model, info, device="cpu", precision="fp32").predict(crops, 10)
    b = Predictor(loaded, loaded_info, device="cpu", precision="fp32").predict(crops, 10)
    np.testing.assert_allclose(a.mean_probs, b.mean_probs, atol=1e-6)
    assert a.variance.max() > 0  # the input dropout makes the MC passes differ
    with pytest.raises(ValueError, match=r"features must be \(N, 2048\)"):
        Predictor(loaded, loaded_info, device="cpu").predict_features(torch.zeros(2, 25088))


def test_a_study_checkpoint_written_before_layouts_still_loads(random_checkpoint: Path) -> None:
    _, info = load_checkpoint(random_checkpoint)
    assert (info.feature_layout, info.crop_policy, info.temperature) == ("flat", "native", 1.0)


# ----------------------------------------------------------------------------- the head
def _blobs(n_per_class: int, seed: int, dim: int = 64, classes: int = 3) -> tuple:
    """Gaussian classes that overlap (about 80-90 % separable): calibration has work."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, (classes, dim))
    x = np.concatenate([c + rng.normal(0, 4.0, (n_per_class, dim)) for c in centres])
    y = np.repeat(np.arange(classes), n_per_class)
    return torch.from_numpy(x.astype(np.float32)), y


def _linear_head(dim: int, classes: int, dropout: float = 0.2) -> torch.nn.Sequential:
    from napari_foram.classify.model import Standardize

    return torch.nn.Sequential(
        torch.nn.Flatten(),
        Standardize(dim),
        torch.nn.Dropout(dropout),
        torch.nn.Linear(dim, classes),
    )


def test_linear_head_chooses_l2_by_cross_validation_and_calibrates() -> None:
    x, y = _blobs(80, seed=3)
    rows = np.random.default_rng(0).permutation(len(y))
    tr, va, te = rows[:150], rows[150:190], rows[190:]
    head = _linear_head(x.shape[1], 3)
    record = fit_linear_head(head, x, y, tr, va, dropout=0.2, weight_decays=(1e-3, 1e-1), seed=0)
    assert record["weight_decay"] in (1e-3, 1e-1) and record["folds"] == 4
    assert [r["weight_decay"] for r in record["cross_validation"]] == [1e-3, 1e-1]
    assert 0.2 < record["temperature"] < 5 and record["temperature_fitted_on"] == 150 + 40
    with torch.inference_mode():
        acc = float((head.eval()(x[te]).argmax(1).numpy() == y[te]).mean())
    assert acc > 0.75
    # Deterministic for a seed.
    again = _linear_head(x.shape[1], 3)
    fit_linear_head(again, x, y, tr, va, dropout=0.2, weight_decays=(1e-3, 1e-1), seed=0)
    assert torch.equal(again[3].weight, head[3].weight)


def test_fit_temperature_recovers_a_known_overconfidence() -> None:
    rng = np.random.default_rng(4)
    calibrated = torch.from_numpy(rng.normal(0, 1.5, (1, 4000, 4)).astype(np.float32))
    # Labels drawn from the calibrated probabilities, then the logits made 3x too sharp.
    probs = torch.softmax(calibrated[0], -1).numpy()
    y = torch.from_numpy(np.array([rng.choice(4, p=p / p.sum()) for p in probs]))
    t = fit_temperature(calibrated * 3.0, y)
    assert t == pytest.approx(3.0, rel=0.1)
    assert mean_prob_nll(calibrated * 3.0, y, t) < mean_prob_nll(calibrated * 3.0, y, 1.0)


def test_learning_curve_points_and_repeats() -> None:
    x, y = _blobs(40, seed=5)
    tr = np.concatenate([np.flatnonzero(y == c)[:30] for c in range(3)])
    te = np.setdiff1d(np.arange(len(y)), tr)
    seen: list[int] = []

    def fit(rows: np.ndarray):
        seen.append(rows.size)
        head = _linear_head(x.shape[1], 3)
        fit_linear_head(
            head, x, y, rows, np.zeros(0, np.int64), dropout=0.2, weight_decays=(1e-2,)
        )
        return lambda test: head.eval()(x[test]).argmax(1).detach().numpy()

    curve = learning_curve(y, tr, te, fit, sizes=(5, 10, 20, 50), repeats=3, seed=0)
    assert curve["sizes"] == ["5", "10", "20", "all"]  # 50 > the 30 per class there are
    assert [p["n_train"] for p in curve["points"]] == [15, 30, 60, 90]
    assert all(len(p["accuracies"]) == 3 for p in curve["points"])
    assert curve["points"][-1]["accuracy_mean"] >= curve["points"][0]["accuracy_mean"] - 0.05
    assert curve["n_test"] == te.size and seen[:3] == [15, 15, 15]


# ---------------------------------------------------------------------- config and bad input
def test_recipes_set_the_head_and_layout() -> None:
    assert TrainConfig().recipe == "pooled-linear" and TrainConfig().hidden_units == ()
    assert TrainConfig().feature_layout == "pooled" and TrainConfig().crop_policy == "fit"
    study = TrainConfig(recipe="study")
    assert study.hidden_units == (512, 64) and study.feature_layout == "flat"
    with pytest.raises(ValueError, match="recipe must be one of"):
        TrainConfig(recipe="magic")
    with pytest.raises(ValueError, match="weight_decays"):
        TrainConfig(weight_decays=(float("nan"),))


def _folder(root: Path, counts: dict[str, int], bad: dict[str, int] | None = None) -> Path:
    rng = np.random.default_rng(6)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
    for name, n in (bad or {}).items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / name / f"broken{i}.png").write_bytes(b"not a png")
    return root


@pytest.mark.parametrize(
    ("counts", "bad", "message"),
    [
        ({"a": 4}, None, r"at least 2 classes with images, found 1 \(a\)"),
        ({"a": 4, "b": 2}, None, r"fewer than 3 images: b \(2\)"),
        ({"a": 4, "b": 4}, {"c": 2}, "class folder .*c has no readable image: 2 file"),
    ],
)
def test_untrainable_folders_get_one_line(
    tmp_path: Path,
    counts: dict[str, int],
    bad: dict[str, int] | None,
    message: str,
    capsys: pytest.CaptureFixture,
) -> None:
    from napari_foram.cli import main
    from napari_foram.training.data import load_image_folder

    root = _folder(tmp_path / "data", counts, bad)
    with pytest.raises(ValueError, match=message):
        check_trainable(load_image_folder(root))
    rc = main(["train", str(root), "-o", str(tmp_path / "m.safetensors")])
    err = capsys.readouterr().err
    assert rc != 0
    lines = [line for line in err.splitlines() if line.startswith("napari-foram: error")]
    assert len(lines) == 1, err
    assert not (tmp_path / "m.safetensors").exists()


# ----------------------------------------------------------------------------- end to end
def test_train_json_has_calibration_learning_curve_and_evaluate_plots_it(
    tmp_path: Path,
) -> None:
    """The default recipe end to end on a random backbone (fast): the checkpoint carries
    its layout, crop policy and temperature; ``train --json`` the held-out ECE and the
    learning curve; ``evaluate`` writes learning_curve.png.
    """
    from napari_foram.cli import app

    rng = np.random.default_rng(7)
    root = tmp_path / "data"
    # 8 a class: the default split trains on 6, enough for a curve point at 5 per class.
    for k, colour in enumerate((200, 60)):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(8):
            img = np.full((50 + 3 * i, 70, 3), 20, np.uint8)
            img[10:40, 15:55] = colour + rng.integers(0, 20)
            Image.fromarray(img).save(root / f"c{k}" / f"{i}.png")
    ckpt = tmp_path / "m.safetensors"
    result = CliRunner().invoke(
        app, ["train", str(root), "-o", str(ckpt), "--backbone-weights", "none", "--json"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{") :])
    m = out["metrics"]
    assert m["calibrated_on"] == "test" and 0 <= m["test_ece_mc"] <= 1
    assert [p["per_class"] for p in m["learning_curve"]["points"]] == [5, "all"]
    assert Path(out["files"]["learning_curve"]).is_file()
    assert m["precision"]["path"] == "fp32"  # too few held-out crops to prove a fast path
    _, info = load_checkpoint(ckpt)
    assert (info.feature_layout, info.crop_policy) == ("pooled", "fit")
    assert info.temperature == pytest.approx(m["temperature"])
    report = tmp_path / "report"
    result = CliRunner().invoke(
        app, ["evaluate", str(root), "--model", str(ckpt), "--report", str(report), "--mc", "5"]
    )
    assert result.exit_code == 0, result.output
    assert (report / "learning_curve.png").is_file()
    rep = json.loads((report / "report.json").read_text())
    assert rep["learning_curve"]["source"].startswith("the evaluated crops")


def _radiolarian_recipe_accuracy(realdata: Path, tmp_path: Path, n_train: int, n_held: int):
    """Train the default recipe on `n_train` real pictures of each of 3 genera, evaluate on
    `n_held` others of each (one seeded draw); returns (outcome, evaluate's report).
    """
    from napari_foram.classify.backbone import locate_imagenet_weights
    from napari_foram.training.evaluate import evaluate
    from napari_foram.training.train import train_from_folder

    if locate_imagenet_weights() is None:
        pytest.skip("ImageNet VGG16 weights not on this machine")
    src = realdata / "radiolaria_genera"
    rng = np.random.default_rng(0)
    for genus in ("circulaforma", "longtanella", "protoalbaillella"):
        files = sorted((src / genus).iterdir())
        pick = rng.permutation(len(files))[: n_train + n_held]
        for part, rows in (("train", pick[:n_train]), ("held", pick[n_train:])):
            (tmp_path / part / genus).mkdir(parents=True)
            for i in rows:
                (tmp_path / part / genus / files[i].name).symlink_to(files[i])
    outcome = train_from_folder(
        tmp_path / "train", tmp_path / "m.safetensors", TrainConfig(learning_curve=False)
    )
    report = evaluate(
        tmp_path / "held", tmp_path / "m.safetensors", mc=10, report_dir=tmp_path / "r"
    )
    return outcome, report


@pytest.mark.realdata
@pytest.mark.slow
def test_default_recipe_on_real_radiolarian_genera(realdata: Path, tmp_path: Path) -> None:
    """Real, greyscale, odd-sized pictures: 3 genera, 15 training images each, the rest of
    a 30-image draw held out. The ImageNet path where the weights are on this machine.
    """
    outcome, report = _radiolarian_recipe_accuracy(realdata, tmp_path, 15, 15)
    assert outcome.best.info.crop_policy == "fit"
    assert report["accuracy"] >= 0.8, report["confusion_matrix"]


@pytest.mark.realdata
def test_default_recipe_on_a_few_real_radiolarian_genera(realdata: Path, tmp_path: Path) -> None:
    """As above on fewer pictures (the default suite's version: 12 to train on and 6 held
    out per genus, 54 VGG16 passes instead of 90): the same recipe, the same bar.
    """
    outcome, report = _radiolarian_recipe_accuracy(realdata, tmp_path, 12, 6)
    assert outcome.best.info.crop_policy == "fit"
    assert report["accuracy"] >= 0.8, report["confusion_matrix"]


def test_int8_is_not_offered_for_a_pooled_model() -> None:
    model = FORAMNet(3, hidden_units=(), feature_layout="pooled")
    info = ModelInfo.for_model(model, ("a", "b", "c"))
    with pytest.raises(ValueError, match="taps it midway"):
        Predictor(model, info, device="cpu", precision="int8")
