"""Classifier: MC-dropout statistics, devices, checkpoints, weights sources, demo model.

VGG16 on two CPU cores takes ~0.3 s per crop, so the fast tests make only a handful of
real conv passes (3 crops, computed once per module) and exercise the head on those
cached features; the real demo training is marked slow.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_foram.classify.checkpoint import (
    ModelInfo,
    _content_digest,
    file_sha256,
    load_checkpoint,
    read_model_info,
    save_checkpoint,
)
from napari_foram.classify.model import (
    FEATURE_DIM,
    IMAGENET_FILENAME,
    FORAMNet,
    MissingWeightsError,
    build_model,
)
from napari_foram.classify.predict import (
    Predictor,
    check_crops,
    measure_bf16_agreement,
    resolve_device,
)

CLASSES = ("planktic", "calcareous benthic", "agglutinated benthic", "sediment")
SMALL_HEAD = (16, 8)  # keeps head-only test checkpoints under 2 MB


@pytest.fixture(scope="module")
def model() -> FORAMNet:
    return build_model(len(CLASSES), backbone_weights="none", seed=3).eval()


@pytest.fixture(scope="module")
def info(model: FORAMNet) -> ModelInfo:
    return ModelInfo.for_model(model, CLASSES, backbone_weights="none", backbone_seed=3)


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """Three crops with structure (a bright disc on dark ground), not just noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:224, :224]
    out = []
    for r in (40, 60, 80):
        disc = ((yy - 112) ** 2 + (xx - 112) ** 2 < r * r)[..., None]
        img = rng.integers(0, 60, (224, 224, 3)) + disc * rng.integers(120, 190, 3)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def predictor(model: FORAMNet, info: ModelInfo) -> Predictor:
    return Predictor(model, info, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def features(predictor: Predictor, crops: np.ndarray) -> torch.Tensor:
    return predictor.extract_features(crops)


def _reference_mc(model: FORAMNet, f: torch.Tensor, n: int, seed: int) -> dict[str, np.ndarray]:
    """The whole head run n times per crop, every layer (the deterministic ones too), with
    each crop's dropout masks as `dropout_uniforms` defines them; statistics in numpy.
    """
    from napari_foram.classify.predict import dropout_uniforms, feature_keys

    keys = torch.from_numpy(feature_keys(f, seed))
    with torch.no_grad():
        layers = list(model.head)
        x = layers[0](f).unsqueeze(0).repeat(n, 1, 1)  # Flatten, then (n, B, D)
        layer = 0
        for m in layers[1:]:
            if isinstance(m, torch.nn.Dropout):
                keep = dropout_uniforms(keys, n, x.shape[-1], layer) >= m.p
                x = x * keep / (1.0 - m.p)
                layer += 1
            else:
                x = m(x)
        probs = torch.softmax(x, dim=-1).numpy()
    probs = probs.astype(np.float64)
    mean = probs.mean(axis=0)
    entropy = -(mean * np.log(mean)).sum(-1)
    sample_entropy = -(probs * np.log(probs)).sum(-1).mean(axis=0)
    votes = np.stack([np.bincount(v, minlength=probs.shape[2]) for v in probs.argmax(-1).T])
    return {
        "probs": probs,
        "mean": mean,
        "variance": ((probs - mean) ** 2).sum(axis=0) / n,
        "entropy": entropy,
        "mi": entropy - sample_entropy,
        "vote_class": votes.argmax(1),
        "vote_fraction": votes.max(1) / n,
    }


# ---------------------------------------------------------------- MC dropout statistics


def test_features_match_plain_forward(model, predictor, crops, features):
    assert features.shape == (3, FEATURE_DIM)
    x = torch.from_numpy(crops[:2]).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        direct = model.features(x)
    # channels_last changes the summation order, not the values beyond float rounding
    torch.testing.assert_close(features[:2], direct, rtol=1e-4, atol=1e-5)


def test_dropout_masks_belong_to_the_crop_not_the_batch(predictor, crops):
    """A crop's MC statistics do not depend on its batch, batch size or neighbours."""
    alone = [predictor.predict(crops[i : i + 1], mc_samples=20) for i in range(3)]
    together = predictor.predict(crops[::-1], mc_samples=20)
    for i in range(3):
        np.testing.assert_allclose(
            alone[i].mean_probs[0], together.mean_probs[2 - i], rtol=1e-5, atol=1e-6
        )
        assert alone[i].vote_fraction[0] == together.vote_fraction[2 - i]
    # Reproducible without a seed, different with another seed, uses no global RNG.
    state = torch.random.get_rng_state()
    again = predictor.predict(crops[:1], mc_samples=20)
    assert torch.equal(state, torch.random.get_rng_state())
    np.testing.assert_array_equal(again.mean_probs, alone[0].mean_probs)
    other = predictor.predict(crops[:1], mc_samples=20, seed=5)
    assert not np.array_equal(other.variance, alone[0].variance)


def test_dropout_uniforms_are_uniform_and_distinct():
    from napari_foram.classify.predict import dropout_uniforms

    u = dropout_uniforms(torch.tensor([1, 2]), 200, 512, 0)
    assert u.shape == (200, 2, 512) and float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float((u < 0.2).float().mean()) - 0.2) < 0.01
    assert not torch.equal(u[:, 0], u[:, 1])  # two crops
    assert not torch.equal(u[0], u[1])  # two passes
    assert not torch.equal(u, dropout_uniforms(torch.tensor([1, 2]), 200, 512, 1))  # two layers


def test_mc_statistics_equal_direct_computation(model, predictor, features):
    n, seed = 40, 7
    got = predictor.predict_features(features, mc_samples=n, seed=seed)
    ref = _reference_mc(model, features, n, seed)
    # the samples really differ (dropout is on), so the comparison below means something
    assert ref["variance"].max() > 0
    np.testing.assert_allclose(got.mean_probs, ref["mean"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.variance, ref["variance"], rtol=1e-3, atol=1e-8)
    np.testing.assert_allclose(got.entropy, ref["entropy"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.mutual_information, ref["mi"], rtol=1e-2, atol=1e-6)
    np.testing.assert_array_equal(got.vote_class, ref["vote_class"])
    np.testing.assert_allclose(got.vote_fraction, ref["vote_fraction"])
    np.testing.assert_array_equal(got.class_index, ref["mean"].argmax(1))
    assert got.mc_samples == n and got.class_names == CLASSES
    assert got.mean_probs.shape == got.variance.shape == (3, 4)
    np.testing.assert_allclose(got.mean_probs.sum(1), 1.0, rtol=1e-5)


def test_mc_statistics_on_a_known_distribution():
    """Hand-checkable case: 3 samples, 2 classes."""
    from napari_foram.classify.predict import mc_statistics

    probs = torch.tensor([[[0.9, 0.1]], [[0.7, 0.3]], [[0.2, 0.8]]])
    s = mc_statistics(probs)
    np.testing.assert_allclose(s["mean"].numpy(), [[0.6, 0.4]], rtol=1e-6)
    # population variance of (0.9, 0.7, 0.2) = ((.3)^2 + (.1)^2 + (.4)^2) / 3
    np.testing.assert_allclose(s["variance"].numpy(), [[0.26 / 3, 0.26 / 3]], rtol=1e-5)
    h_mean = -(0.6 * np.log(0.6) + 0.4 * np.log(0.4))
    assert s["entropy"].item() == pytest.approx(h_mean, rel=1e-6)
    h_samples = [-(p * np.log(p) + (1 - p) * np.log(1 - p)) for p in (0.9, 0.7, 0.2)]
    assert s["mutual_information"].item() == pytest.approx(h_mean - np.mean(h_samples), rel=1e-5)
    assert s["vote_class"].item() == 0
    assert s["vote_fraction"].item() == pytest.approx(2 / 3)


def test_seed_reproducible_and_global_rng_untouched(predictor, features):
    state = torch.random.get_rng_state()
    a = predictor.predict_features(features, mc_samples=20, seed=1)
    b = predictor.predict_features(features, mc_samples=20, seed=1)
    c = predictor.predict_features(features, mc_samples=20, seed=2)
    assert torch.equal(state, torch.random.get_rng_state())
    np.testing.assert_array_equal(a.variance, b.variance)
    assert not np.array_equal(a.variance, c.variance)


def test_predict_from_crops_equals_predict_from_features(predictor, crops, features):
    from napari_foram.classify.predict import crop_keys

    from_crops = predictor.predict(list(crops), mc_samples=10, seed=5)  # list input too
    keys = crop_keys(crops, seed=5)
    from_features = predictor.predict_features(features, mc_samples=10, keys=keys)
    np.testing.assert_allclose(from_crops.mean_probs, from_features.mean_probs, atol=1e-6)
    np.testing.assert_allclose(from_crops.variance, from_features.variance, atol=1e-8)


@pytest.mark.parametrize("n", [0, 1])
def test_deterministic_mode_matches_eval_forward(model, predictor, features, n):
    pred = predictor.predict_features(features, mc_samples=n)
    with torch.no_grad():
        expected = torch.softmax(model.head(features), dim=-1).numpy()
    assert pred.mc_samples == 1
    np.testing.assert_allclose(pred.mean_probs, expected, rtol=1e-5, atol=1e-7)
    assert not pred.variance.any() and not pred.mutual_information.any()
    np.testing.assert_array_equal(pred.vote_class, expected.argmax(1))
    np.testing.assert_array_equal(pred.vote_fraction, 1.0)
    # and the model was left in eval mode
    assert not any(m.training for m in model.modules())


def test_empty_input_gives_empty_predictions(predictor):
    pred = predictor.predict(np.zeros((0, 224, 224, 3), np.uint8), mc_samples=5)
    assert len(pred) == 0 and pred.mean_probs.shape == (0, 4)
    assert predictor.predict([], mc_samples=5).variance.shape == (0, 4)


@pytest.mark.parametrize(
    ("crops", "match"),
    [
        (np.zeros((2, 224, 224), np.uint8), "shape"),
        (np.zeros((2, 100, 100, 3), np.uint8), "shape"),
        (np.zeros((2, 224, 224, 4), np.uint8), "shape"),
        (np.zeros((224, 224, 3), np.uint8), "one crop"),
        (np.zeros((1, 224, 224, 3), np.float32), "uint8"),
        ([np.zeros((224, 224, 3), np.uint8), np.zeros((200, 224, 3), np.uint8)], "different"),
    ],
)
def test_bad_crops_refused(predictor, crops, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict(crops)


def test_negative_mc_samples_refused(predictor, features):
    with pytest.raises(ValueError, match="mc_samples"):
        predictor.predict_features(features, mc_samples=-1)


def test_list_of_crops_stacks(crops):
    np.testing.assert_array_equal(check_crops(list(crops), 224), crops)


# ---------------------------------------------------------------- devices and precision


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_selection_without_cuda(model, info):
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        Predictor(model, info, device="cuda")
    p = Predictor(model, info)
    assert p.device.type == "cpu" and p.dtype == torch.float32  # fp32 by default on CPU


@pytest.mark.parametrize("device", ["tpu", "mps", "gpu0"])
def test_unknown_devices_refused(device):
    with pytest.raises(ValueError, match="device"):
        resolve_device(device)


def test_bad_precision_and_batch_refused(model, info):
    with pytest.raises(ValueError, match="precision"):
        Predictor(model, info, device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="batch_size"):
        Predictor(model, info, device="cpu", batch_size=-2)


def test_model_and_info_must_agree(model):
    wrong = ModelInfo(class_names=("a", "b", "c"), backbone_weights="none")
    with pytest.raises(ValueError, match="3 classes"):
        Predictor(model, wrong, device="cpu")


@pytest.mark.slow
def test_bf16_agreement_on_cpu(model, info, crops):
    result = measure_bf16_agreement(model, info, crops, device="cpu")
    assert result.n == 3 and 0.0 <= result.agreement <= 1.0
    assert result.max_abs_prob_diff < 0.05


@pytest.mark.gpu
def test_gpu_matches_cpu(model, info, crops):
    cpu = Predictor(model, info, device="cpu").predict(crops, mc_samples=1)
    gpu_fp32 = Predictor(model, info, device="cuda", precision="fp32")
    np.testing.assert_allclose(
        gpu_fp32.predict(crops, mc_samples=1).mean_probs, cpu.mean_probs, atol=1e-3
    )
    gpu = Predictor(model, info, device="cuda")  # auto: bf16 autocast, channels_last
    assert gpu.dtype == torch.bfloat16
    mc = gpu.predict(crops, mc_samples=100, seed=0)
    np.testing.assert_allclose(mc.mean_probs, cpu.mean_probs, atol=0.02)
    assert mc.variance.max() > 0
    model.to("cpu")


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path, model, info, features):
    path = tmp_path / "model.safetensors"
    sha = save_checkpoint(path, model, info)
    assert sha == file_sha256(path) == info.sha256
    loaded, loaded_info = load_checkpoint(path)
    assert loaded_info.class_names == CLASSES
    assert loaded_info.sha256 == sha and file_sha256(path) == sha  # stable
    assert loaded_info.backbone_weights == "none" and not loaded_info.head_only
    assert loaded_info.software["torch"] == torch.__version__
    assert loaded_info.hidden_units == (512, 64) and loaded_info.dropout == 0.2
    for (k, a), (k2, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b)
    a = Predictor(model, info, device="cpu").predict_features(features, 30, seed=4)
    b = Predictor(loaded, loaded_info, device="cpu").predict_features(features, 30, seed=4)
    np.testing.assert_array_equal(a.mean_probs, b.mean_probs)
    np.testing.assert_array_equal(a.variance, b.variance)
    assert read_model_info(path).class_names == CLASSES


@pytest.fixture(scope="module")
def small(model) -> tuple[FORAMNet, ModelInfo]:
    """Same seeded random backbone as `model`, small head: head-only files stay tiny."""
    net = build_model(4, backbone_weights="none", hidden_units=SMALL_HEAD, seed=3)
    rec = ModelInfo.for_model(
        net,
        CLASSES,
        backbone_weights="none",
        backbone_seed=3,
        training={"epochs": 2},
        metrics={"val_accuracy": 0.5},
    )
    return net, rec


@pytest.fixture
def head_only_file(tmp_path, small) -> Path:
    path = tmp_path / "head.safetensors"
    save_checkpoint(path, *small, head_only=True)
    return path


def test_head_only_round_trip(head_only_file, small, features):
    net, _ = small
    assert head_only_file.stat().st_size < 2_000_000
    loaded, rec = load_checkpoint(head_only_file)
    assert rec.head_only and rec.metrics == {"val_accuracy": 0.5}
    for k, v in net.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    with torch.no_grad():
        torch.testing.assert_close(loaded.head(features), net.head(features))


def _rewrite_record(path: Path, edit, *, fix_digest: bool = False) -> None:
    """Rewrite the JSON record inside a safetensors file, keeping the tensors."""
    from safetensors.torch import load_file

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    record = json.loads(header["__metadata__"]["napari_foram.model"])
    edit(record)
    if fix_digest:
        record["content_sha256"] = _content_digest(record, load_file(str(path)))
    header["__metadata__"]["napari_foram.model"] = json.dumps(record)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])


def test_edited_record_refused(head_only_file):
    _rewrite_record(head_only_file, lambda r: r.update(class_names=["w", "x", "y", "z"]))
    with pytest.raises(ValueError, match="digest mismatch"):
        load_checkpoint(head_only_file)


def test_edited_tensor_bytes_refused(head_only_file):
    raw = bytearray(head_only_file.read_bytes())
    raw[-3] ^= 0xFF
    head_only_file.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="digest mismatch"):
        load_checkpoint(head_only_file)


def test_class_count_not_matching_tensors_refused(head_only_file):
    _rewrite_record(
        head_only_file, lambda r: r.update(class_names=["a", "b", "c"]), fix_digest=True
    )
    with pytest.raises(ValueError, match=r"head\.\d+\.weight has shape .* needs"):
        load_checkpoint(head_only_file)


def test_hidden_units_not_matching_tensors_refused(head_only_file):
    _rewrite_record(head_only_file, lambda r: r.update(hidden_units=[16, 9]), fix_digest=True)
    with pytest.raises(ValueError, match="shape"):
        load_checkpoint(head_only_file)


def test_wrong_format_version_refused(head_only_file):
    _rewrite_record(head_only_file, lambda r: r.update(format_version=99), fix_digest=True)
    with pytest.raises(ValueError, match="format version 99"):
        load_checkpoint(head_only_file)


def test_rebuilt_backbone_must_match(head_only_file):
    _rewrite_record(head_only_file, lambda r: r.update(backbone_seed=4), fix_digest=True)
    with pytest.raises(ValueError, match="backbone rebuilt from none differs"):
        load_checkpoint(head_only_file)


def test_truncated_file_refused(head_only_file):
    raw = head_only_file.read_bytes()
    head_only_file.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_checkpoint(head_only_file)


def test_pickle_and_other_files_refused(tmp_path, small):
    pt = tmp_path / "model.pt"
    torch.save(small[0].head.state_dict(), pt)
    pk = tmp_path / "model.pkl"
    pk.write_bytes(pickle.dumps({"class_names": CLASSES}))
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    for path in (pt, pk, tiny):
        with pytest.raises(ValueError, match="not a safetensors file"):
            load_checkpoint(path)
    with pytest.raises(ValueError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_foreign_safetensors_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a napari-foram checkpoint"):
        load_checkpoint(path)


def test_save_refuses_inconsistent_info(tmp_path, small):
    net, _ = small
    with pytest.raises(ValueError, match="outputs"):
        save_checkpoint(tmp_path / "x.safetensors", net, ModelInfo(class_names=("a", "b")))
    bad = ModelInfo.for_model(net, CLASSES, backbone_weights="none", training={"x": object()})
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "x.safetensors", net, bad)
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


# ---------------------------------------------------------------- backbone weights


def test_missing_imagenet_weights_one_line_error(tmp_path, monkeypatch):
    monkeypatch.delenv("NAPARI_FORAM_VGG16_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError) as err:
        build_model(4, backbone_weights="imagenet")
    message = str(err.value)
    assert "\n" not in message and IMAGENET_FILENAME in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert isinstance(err.value, ValueError)
    with pytest.raises(MissingWeightsError, match="not found"):
        build_model(4, backbone_weights=tmp_path / "nope.pth")


def test_torchvision_weights_file_and_cache(tmp_path, monkeypatch, small):
    """A torchvision-style vgg16 state_dict, as a local file and in torch hub's cache."""
    donor = small[0]
    state = {f"features.{k}": v for k, v in donor.conv.state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(1000)  # a full vgg16 file has these too
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / IMAGENET_FILENAME)
    from_file = build_model(2, backbone_weights=cache / IMAGENET_FILENAME, seed=9)
    monkeypatch.delenv("NAPARI_FORAM_VGG16_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from_cache = build_model(2, backbone_weights="imagenet", seed=9)
    for k, v in donor.conv.state_dict().items():
        assert torch.equal(from_file.conv.state_dict()[k], v)
        assert torch.equal(from_cache.conv.state_dict()[k], v)
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no VGG16 conv tensors"):
        build_model(2, backbone_weights=tmp_path / "other.pth")


def test_random_backbone_is_seeded():
    a = build_model(2, backbone_weights="none", hidden_units=(4,), seed=1)
    b = build_model(2, backbone_weights="none", hidden_units=(4,), seed=1)
    c = build_model(2, backbone_weights="none", hidden_units=(4,), seed=2)
    assert torch.equal(a.conv[0].weight, b.conv[0].weight)
    assert not torch.equal(a.conv[0].weight, c.conv[0].weight)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 1}, "2 classes"),
        ({"hidden_units": (64, 0)}, "hidden_units"),  # () is a linear head: allowed
        ({"feature_layout": "conv3"}, "unknown feature layout"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_head_config_refused(kwargs, match):
    args = {"num_classes": 4, **kwargs}
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        FORAMNet(args.pop("num_classes"), **args)


def test_lazy_package_exports():
    import napari_foram.classify as classify

    assert classify.Predictor is Predictor
    assert "demo_checkpoint" in classify.__all__
    with pytest.raises(AttributeError):
        _ = classify.no_such_name


# ---------------------------------------------------------------- head training and demo


def test_train_head_on_features_learns_and_restores_best():
    from napari_foram.classify.demo_model import train_head_on_features

    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 64, generator=gen) * 3
    labels = np.repeat(np.arange(3), 20)
    features = centres[labels] + torch.randn(60, 64, generator=gen)
    head = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(64, 16),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(16, 3),
    )
    result = train_head_on_features(features, labels, head, lr=1e-2, max_epochs=30, seed=0)
    assert result.n_train + result.n_val == 60 and result.n_val == 12  # stratified 20 %
    assert result.val_accuracy == 1.0
    best = result.history[result.best_epoch - 1]
    assert best["val_accuracy"] == result.val_accuracy
    assert not head.training
    with torch.no_grad():  # the restored weights are the best epoch's, not the last one's
        accuracy = (head(features).argmax(1).numpy() == labels).mean()
    assert accuracy == pytest.approx(best["train_accuracy"] * 48 / 60 + 12 / 60, abs=1e-6)
    with pytest.raises(ValueError, match="labels"):
        train_head_on_features(features, labels + 1, head)


def test_pooled_head_folds_exactly_into_table1_head():
    from napari_foram.classify.demo_model import (
        _proxy_head,
        demo_pooling_matrix,
        fold_pooled_head,
        pool_features,
    )

    net = build_model(4, backbone_weights="none", hidden_units=SMALL_HEAD, seed=0)
    f = torch.rand(6, FEATURE_DIM, generator=torch.Generator().manual_seed(1))
    pooling = demo_pooling_matrix()
    z = pool_features(f, pooling)
    grid = f.view(6, 512, 7, 7)
    torch.testing.assert_close(z[:, :512], grid.mean((2, 3)))
    torch.testing.assert_close(z[:, 512:], grid[:, :, 2:5, 2:5].mean((2, 3)))
    mu, sd = z.mean(0), z.std(0) + 1e-6
    proxy = _proxy_head(net, z.shape[1]).eval()
    fold_pooled_head(proxy, net, pooling, mu, sd)
    with torch.no_grad():
        torch.testing.assert_close(net.head(f), proxy((z - mu) / sd), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
# Without ImageNet weights the demo model says it falls back to a random backbone.
@pytest.mark.filterwarnings("ignore::napari_foram.classify.demo_model.DemoBackboneWarning")
def test_demo_checkpoint_trains_once_and_classifies_held_out(tmp_path):
    from napari_foram.classify.demo_model import (
        HELD_OUT_OFFSET,
        demo_checkpoint,
        render_demo_crops,
    )

    calls = []
    path = demo_checkpoint(tmp_path, progress=lambda *a: calls.append(a), n_per_class=20)
    assert path.parent == tmp_path / "models" and calls and calls[-1][0] == calls[-1][1]
    assert (
        demo_checkpoint(tmp_path, progress=lambda *a: calls.append(("again", *a)), n_per_class=20)
        == path
    )
    assert not any(c[0] == "again" for c in calls)  # reused, not retrained
    predictor = Predictor.from_checkpoint(path, device="cpu")
    assert predictor.info.training["kind"] == "demo"
    assert 0.0 <= predictor.info.metrics["held_out_accuracy"] <= 1.0
    crops, labels, _ = render_demo_crops(6, start=HELD_OUT_OFFSET)  # trays unseen in training
    assert crops.shape == (24, 224, 224, 3) and np.bincount(labels).tolist() == [6, 6, 6, 6]
    pred = predictor.predict(crops, mc_samples=30, seed=0)
    assert (pred.class_index == labels).mean() > 0.4  # chance is 0.25
