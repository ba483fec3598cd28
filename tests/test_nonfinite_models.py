"""Nothing silently wrong: NaN/inf weights, NaN probabilities, fp16 heads, diverged training.

The bad checkpoints here are "valid" files (their content digest recomputed), as a broken
training or anyone editing the file on purpose would produce.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, safe_open, save_file

from napari_foram.classify.checkpoint import (
    METADATA_KEY,
    _content_digest,
    load_checkpoint,
    new_classifier,
    save_checkpoint,
)
from napari_foram.classify.predict import NonFiniteOutputError, Predictor
from napari_foram.cli import main
from napari_foram.synthetic import CLASSES, render_crop

Edit = Callable[[dict[str, torch.Tensor]], None]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nonfinite")
    model, info = new_classifier(CLASSES, backbone_weights="none", seed=0)
    full, head = root / "full.safetensors", root / "head.safetensors"
    save_checkpoint(full, model, info)
    model, info = new_classifier(CLASSES, backbone_weights="none", seed=0)
    save_checkpoint(head, model, info, head_only=True)
    crop = root / "crop.png"
    iio.imwrite(crop, render_crop(CLASSES[0], 0))
    return {"full": full, "head": head, "crop": crop}


def _edited(src: Path, dst: Path, edit: Edit) -> Path:
    """`src` with its tensors changed by `edit`, digest recomputed (a "valid" file)."""
    with safe_open(str(src), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(src))
    edit(tensors)
    record = json.loads(meta[METADATA_KEY])
    record["content_sha256"] = _content_digest(record, tensors)
    save_file(tensors, str(dst), metadata={**meta, METADATA_KEY: json.dumps(record)})
    return dst


def _first(tensors: dict[str, torch.Tensor], prefix: str) -> str:
    return sorted(k for k in tensors if k.startswith(prefix) and k.endswith("weight"))[0]


def _poison(prefix: str, value: float) -> Edit:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors[_first(tensors, prefix)].view(-1)[:3] = value

    return edit


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error" in line]


@pytest.mark.parametrize(
    ("kind", "prefix", "value"),
    [("full", "head.", float("nan")), ("head", "head.", float("inf")), ("full", "conv.", np.nan)],
)
def test_load_refuses_nonfinite_tensors_naming_them(
    good: dict[str, Path], tmp_path: Path, kind: str, prefix: str, value: float
) -> None:
    bad = _edited(good[kind], tmp_path / "bad.safetensors", _poison(prefix, value))
    name = _first(load_file(str(bad)), prefix)
    with pytest.raises(ValueError, match=rf"checkpoint bad\.safetensors: tensor {name} holds NaN"):
        load_checkpoint(bad)


def test_classify_with_nan_weights_is_one_line_and_fails(
    good: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for prefix in ("head.", "conv."):
        bad = _edited(good["full"], tmp_path / "bad.safetensors", _poison(prefix, np.nan))
        rc = main(["classify", str(good["crop"]), "--model", str(bad), "--device", "cpu"])
        captured = capsys.readouterr()
        assert rc != 0
        assert "nan" not in captured.out.lower()
        lines = _error_lines(captured.err)
        assert len(lines) == 1 and "NaN/inf" in lines[0] and prefix in lines[0], captured.err


def _overflowing(tensors: dict[str, torch.Tensor]) -> None:
    # Finite weights whose outputs overflow to inf: softmax(inf, ...) is NaN.
    for name, t in tensors.items():
        if name.startswith("head."):
            t.fill_(1e30 if name.endswith("weight") else 1.0)


def test_nonfinite_probabilities_are_refused_not_printed(
    good: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = _edited(good["full"], tmp_path / "huge.safetensors", _overflowing)
    predictor = Predictor.from_checkpoint(bad, device="cpu")  # finite: it loads
    crop = render_crop(CLASSES[0], 0)[None]
    with pytest.raises(NonFiniteOutputError, match=r"non-finite probabilities for 1 crop"):
        predictor.predict(crop, mc_samples=3)
    with pytest.raises(NonFiniteOutputError):
        predictor.predict_features(predictor.extract_features(crop), mc_samples=1)

    rc = main(
        ["classify", str(good["crop"]), str(good["crop"]), "--model", str(bad), "--device",
         "cpu", "--precision", "fp32"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc != 0 and "nan" not in captured.out.lower()
    lines = _error_lines(captured.err)
    assert len(lines) == 1 and "non-finite" in lines[0], captured.err


@pytest.mark.parametrize("kind", ["full", "head"])
def test_fp16_head_loads_as_float32(
    good: dict[str, Path], tmp_path: Path, kind: str, capsys: pytest.CaptureFixture
) -> None:
    def to_fp16(tensors: dict[str, torch.Tensor]) -> None:
        for name in [k for k in tensors if k.startswith("head.")]:
            tensors[name] = tensors[name].half()

    half = _edited(good[kind], tmp_path / "half.safetensors", to_fp16)
    model, info = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    reference, _ = load_checkpoint(good[kind])
    crop = render_crop(CLASSES[0], 0)[None]
    p16 = Predictor(model, info, device="cpu", precision="fp32").predict(crop, 1).mean_probs
    p32 = Predictor(reference, info, device="cpu", precision="fp32").predict(crop, 1).mean_probs
    np.testing.assert_allclose(p16, p32, atol=1e-2)

    rc = main(["classify", str(good["crop"]), "--model", str(half), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err


def test_save_refuses_nan_weights_and_writes_nothing(tmp_path: Path) -> None:
    model, info = new_classifier(CLASSES, backbone_weights="none", seed=0)
    with torch.no_grad():
        next(model.head.parameters()).view(-1)[0] = float("nan")
    out = tmp_path / "m.safetensors"
    with pytest.raises(ValueError, match=r"refusing to save m\.safetensors: tensor head\."):
        save_checkpoint(out, model, info)
    assert list(tmp_path.iterdir()) == []


def test_training_that_diverges_writes_no_model(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "data"
    for k, name in enumerate(CLASSES[:3]):
        (data / name).mkdir(parents=True)
        for i in range(3):
            iio.imwrite(data / name / f"{i}.png", render_crop(name, 10 * k + i))
    out = tmp_path / "m.safetensors"
    rc = main(
        ["train", str(data), "-o", str(out), "--backbone-weights", "none", "--recipe", "study",
         "--epochs", "2", "--lr", "1e12", "--device", "cpu", "--no-learning-curve"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 1
    assert not out.exists()
    lines = _error_lines(captured.err)
    assert len(lines) == 1 and "training diverged" in lines[0] and "--lr" in lines[0], captured.err
