"""Backbone weights: where they come from, what input they expect, how unsafe files fail.

The ImageNet tests use the real Keras VGG16 weights that `.ci/run` and `make test` point
``$NAPARI_FORAM_VGG16_WEIGHTS`` at (``../shared/weights``); they are skipped, with the
reason, where that file is absent. Everything else builds small weight files itself.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import pickle
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_foram.classify import backbone
from napari_foram.classify.backbone import (
    IMAGENET_FILENAME,
    INPUT_CONVENTIONS,
    KERAS_IMAGENET,
    NO_DOWNLOAD_ENV,
    TORCHVISION_IMAGENET,
    WEIGHTS_ENV,
    MissingWeightsError,
    convention_affine,
    download_allowed,
    download_unreachable_reason,
    read_weights_file,
    resolve_backbone,
    to_network_input,
)
from napari_foram.classify.checkpoint import (
    FORMAT_NAME,
    FORMAT_VERSION,
    METADATA_KEY,
    ModelInfo,
    _content_digest,
    load_checkpoint,
    new_classifier,
    save_checkpoint,
)
from napari_foram.classify.density import (
    FeatureDensity,
    auroc,
    fit_threshold,
    pool_features,
    pooling_matrix,
)
from napari_foram.classify.model import FEATURE_DIM, build_model
from napari_foram.classify.predict import Predictor

SHARED_WEIGHTS = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "weights"
    / "vgg16_imagenet_features.safetensors"
)


def _imagenet_file() -> Path | None:
    env = os.environ.get(WEIGHTS_ENV)
    if env and Path(env).is_file():
        return Path(env)
    return SHARED_WEIGHTS if SHARED_WEIGHTS.is_file() else None


@pytest.fixture(scope="module")
def keras_weights() -> Path:
    """The Keras ImageNet VGG16 conv weights file; skip without it."""
    path = _imagenet_file()
    if path is None:
        pytest.skip(f"ImageNet VGG16 weights not found (${WEIGHTS_ENV} unset, {SHARED_WEIGHTS})")
    return path


@pytest.fixture
def no_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No environment variable and an empty torch hub: nothing to find."""
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def _random_vgg16_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A full torchvision-style vgg16 state_dict (conv part) with random weights."""
    net = build_model(2, backbone_weights="none", hidden_units=(4,), seed=seed)
    return {f"features.{k}": v.clone() for k, v in net.conv.state_dict().items()}


def _test_image() -> np.ndarray:
    """A fixed analytic RGB image: red ramps left-right, green top-bottom, blue in stripes.

    Every channel differs, so swapping R and B or mis-scaling changes the features.
    """
    y, x = np.mgrid[0:224, 0:224]
    return np.stack([x * 255 // 223, y * 255 // 223, ((x + y) % 64) * 4], -1).astype(np.uint8)


# ------------------------------------------------------------------ the real weights
def test_keras_weights_are_recognised(keras_weights: Path) -> None:
    weights = read_weights_file(keras_weights)
    assert weights.name == KERAS_IMAGENET
    assert weights.convention == "caffe"
    assert len(weights.conv) == 26


def test_imagenet_feature_checksum(keras_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pinned pooled features of a fixed image through the Keras weights (caffe input).

    Measured once with this code; a wrong channel order (BGR: sum 796.3, other top
    channels) or scaling (0-1 normalised: sum 52.7) cannot reproduce them.
    """
    monkeypatch.setenv(WEIGHTS_ENV, str(keras_weights))
    model, info = new_classifier(("a", "b"), backbone_weights="imagenet")
    assert info.input_convention == "caffe" and info.backbone_id == KERAS_IMAGENET
    predictor = Predictor(model, info, device="cpu", precision="fp32")
    features = predictor.extract_features(_test_image()[None])
    pooled = pool_features(features, pooling_matrix())[0, :512]
    assert float(pooled.sum()) == pytest.approx(766.293, rel=1e-3)
    top = torch.topk(pooled, 5)
    assert top.indices.tolist() == [146, 276, 438, 502, 505]
    np.testing.assert_allclose(
        top.values.numpy(), [48.35, 47.9315, 44.0472, 41.6074, 31.8505], rtol=1e-3
    )
    # The same weights fed the wrong way round give other features.
    bgr = predictor.extract_features(_test_image()[None, :, :, ::-1].copy())
    assert float(pool_features(bgr, pooling_matrix())[0, :512].sum()) == pytest.approx(
        796.27, rel=1e-3
    )


def test_checkpoint_carries_convention_and_inference_uses_it(
    keras_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WEIGHTS_ENV, str(keras_weights))
    model, info = new_classifier(("a", "b"), backbone_weights="imagenet", hidden_units=(8,))
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, info, head_only=True)
    loaded, linfo = load_checkpoint(path)
    assert linfo.input_convention == "caffe" and linfo.backbone_id == KERAS_IMAGENET
    assert linfo.backbone_sha256 == info.backbone_sha256
    image = _test_image()[None]
    got = Predictor(loaded, linfo, device="cpu").extract_features(image)
    x = torch.from_numpy(image).permute(0, 3, 1, 2).float()
    mean = torch.tensor([123.68, 116.779, 103.939]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = torch.flatten(loaded.conv(x - mean), 1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------ resolution order
def test_resolution_order_env_then_cache(
    no_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = no_weights / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(_random_vgg16_state(1), cache / IMAGENET_FILENAME)
    from_cache = resolve_backbone("imagenet")
    assert from_cache.name == TORCHVISION_IMAGENET and from_cache.convention == "torchvision"
    assert "torch hub cache" in from_cache.origin
    env_file = no_weights / "mine.pth"
    torch.save(_random_vgg16_state(2), env_file)
    monkeypatch.setenv(WEIGHTS_ENV, str(env_file))
    from_env = resolve_backbone("imagenet")
    assert WEIGHTS_ENV in from_env.origin
    assert torch.equal(from_env.conv["0.weight"], _random_vgg16_state(2)["features.0.weight"])


def test_missing_weights_names_all_three_ways(no_weights: Path) -> None:
    with pytest.raises(MissingWeightsError) as err:
        resolve_backbone("imagenet")  # the suite's $NAPARI_FORAM_NO_DOWNLOAD: no network
    message = str(err.value)
    assert "\n" not in message
    assert WEIGHTS_ENV in message and IMAGENET_FILENAME in message
    assert "--download-weights" in message
    assert str(no_weights / "torch" / "hub" / "checkpoints") in message
    assert isinstance(err.value, ValueError)


def test_env_pointing_nowhere_says_so(no_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WEIGHTS_ENV, str(no_weights / "gone.safetensors"))
    with pytest.raises(MissingWeightsError, match="not a file"):
        resolve_backbone("imagenet")


# ------------------------------------------------------------------ the download
class _FileServer(http.server.ThreadingHTTPServer):
    """A local stand-in for download.pytorch.org: path -> (bytes, Content-Length said)."""

    files: dict[str, tuple[bytes, int]]
    requests: list[str]  # "HEAD /path", "GET /path": what reached the server

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/models/{name}"


class _FileHandler(http.server.BaseHTTPRequestHandler):
    server: _FileServer

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        self.server.requests.append(f"{self.command} {self.path}")
        if self.path not in self.server.files:
            self.send_error(404)
            return
        data, declared = self.server.files[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(declared))
        self.end_headers()
        if body:
            self.wfile.write(data)  # fewer bytes than declared: a transfer cut short

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def weights_server(no_weights: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_FileServer]:
    """No weights on the machine, the download allowed (the suite's opt-out lifted, the
    proxies out of the way, no remembered "unreachable"), and a local file server.
    """
    monkeypatch.delenv(NO_DOWNLOAD_ENV, raising=False)
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setattr(backbone, "_UNREACHABLE", {})
    server = _FileServer(("127.0.0.1", 0), _FileHandler)
    server.files, server.requests = {}, []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _serve(server: _FileServer, name: str, data: bytes, declared: int | None = None) -> str:
    server.files[f"/models/{name}"] = (data, len(data) if declared is None else declared)
    return server.url(name)


def _vgg16_file_bytes(seed: int) -> tuple[bytes, str]:
    """A VGG16 conv state_dict as torch.save bytes, and torchvision's kind of file name
    for it (the sha256 prefix that torch hub checks).
    """
    buffer = io.BytesIO()
    torch.save(_random_vgg16_state(seed), buffer)
    data = buffer.getvalue()
    return data, f"vgg16-{hashlib.sha256(data).hexdigest()[:8]}.pth"


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/models/{IMAGENET_FILENAME}"  # nothing listens there


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []


def test_download_is_allowed_by_default_and_the_variable_turns_it_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(NO_DOWNLOAD_ENV, raising=False)
    assert download_allowed() is True
    for word in ("1", "true", "YES", " on "):
        monkeypatch.setenv(NO_DOWNLOAD_ENV, word)
        assert download_allowed() is False, word
        assert download_allowed(True) is True  # an explicit choice wins
    for word in ("", "0", "false", "No", "off"):
        monkeypatch.setenv(NO_DOWNLOAD_ENV, word)
        assert download_allowed() is True, word
        assert download_allowed(False) is False


def test_default_downloads_through_torchvision_into_the_hub_cache(
    weights_server: _FileServer, no_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, name = _vgg16_file_bytes(3)
    monkeypatch.setattr(backbone, "IMAGENET_URL", _serve(weights_server, name, data))
    weights = resolve_backbone("imagenet")  # no download argument: the default
    assert weights.origin.startswith("download (") and weights.convention == "torchvision"
    assert torch.equal(weights.conv["28.bias"], _random_vgg16_state(3)["features.28.bias"])
    cache = no_weights / "torch" / "hub" / "checkpoints"
    assert _leftovers(cache) == [name]  # the whole file, nothing half-written beside it
    assert weights.file_sha256 == hashlib.sha256(data).hexdigest()
    assert weights_server.requests == [f"HEAD /models/{name}", f"GET /models/{name}"]


def test_demo_first_run_downloads_the_backbone(
    weights_server: _FileServer, no_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from napari_foram.classify.demo_model import demo_backbone

    data, name = _vgg16_file_bytes(4)
    monkeypatch.setattr(backbone, "IMAGENET_URL", _serve(weights_server, name, data))
    weights, reason = demo_backbone()
    assert (weights, reason) == (hashlib.sha256(data).hexdigest(), "")
    assert (no_weights / "torch" / "hub" / "checkpoints" / name).is_file()


def test_opt_out_never_asks_the_server(
    weights_server: _FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from napari_foram.classify.demo_model import demo_backbone

    data, name = _vgg16_file_bytes(5)
    monkeypatch.setattr(backbone, "IMAGENET_URL", _serve(weights_server, name, data))
    with pytest.raises(MissingWeightsError) as err:
        resolve_backbone("imagenet", download=False)  # the option's "no"
    assert "--download-weights" in str(err.value) and "failed" not in str(err.value)
    monkeypatch.setenv(NO_DOWNLOAD_ENV, "1")
    with pytest.raises(MissingWeightsError) as err:
        resolve_backbone("imagenet")
    assert f"unset ${NO_DOWNLOAD_ENV}" in str(err.value) and "\n" not in str(err.value)
    weights, reason = demo_backbone()
    assert weights is None and NO_DOWNLOAD_ENV in reason
    assert weights_server.requests == []  # nothing reached the network


def test_unreachable_server_falls_back_fast_in_one_line(
    weights_server: _FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from napari_foram.classify.demo_model import demo_backbone

    monkeypatch.setattr(backbone, "IMAGENET_URL", _closed_port_url())
    start = time.perf_counter()
    with pytest.raises(MissingWeightsError) as err:
        resolve_backbone("imagenet")
    message = str(err.value)
    assert time.perf_counter() - start < 2.0
    assert "\n" not in message and WEIGHTS_ENV in message and IMAGENET_FILENAME in message
    assert "download of" in message and "failed" in message and "unreachable" in message
    assert "refused" in message.lower()
    weights, reason = demo_backbone()  # the demo falls back to its random backbone
    assert weights is None and "unreachable" in reason


def test_silent_server_is_given_up_within_the_timeout_once(
    weights_server: _FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A listener that never answers: what a firewall that drops packets looks like.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/models/{IMAGENET_FILENAME}"
        monkeypatch.setattr(backbone, "IMAGENET_URL", url)
        monkeypatch.setattr(backbone, "REACHABILITY_TIMEOUT_S", 0.5)
        start = time.perf_counter()
        with pytest.raises(MissingWeightsError, match="unreachable"):
            resolve_backbone("imagenet")
        assert time.perf_counter() - start < 1.5
        start = time.perf_counter()
        reason = download_unreachable_reason()  # remembered for the process: no new wait
        assert time.perf_counter() - start < 0.05 and "unreachable" in reason


@pytest.mark.parametrize("damage", ["wrong bytes", "cut short"])
def test_bad_download_never_lands_as_weights(
    weights_server: _FileServer, no_weights: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    data, _ = _vgg16_file_bytes(6)
    if damage == "wrong bytes":
        url = _serve(weights_server, IMAGENET_FILENAME, data)  # not the hash its name says
    else:
        url = _serve(weights_server, IMAGENET_FILENAME, data[:100_000], declared=len(data))
    monkeypatch.setattr(backbone, "IMAGENET_URL", url)
    with pytest.raises(MissingWeightsError) as err:
        resolve_backbone("imagenet")
    message = str(err.value)
    assert "\n" not in message and "failed: invalid hash value" in message
    # torchvision wrote to a ".partial" file and removed it: nothing to be found later.
    assert _leftovers(no_weights / "torch" / "hub" / "checkpoints") == []
    assert backbone.locate_imagenet_weights() is None


def test_cli_train_offline_says_why_in_one_line(
    weights_server: _FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import imageio.v3 as iio

    from napari_foram.cli import main

    for k, name in enumerate(("red", "green", "blue")):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(3):
            img = np.full((224, 224, 3), 20, np.uint8)
            img[60:170, 50:160, k] = 200 + i
            iio.imwrite(tmp_path / "data" / name / f"{i}.png", img)
    args = ["train", str(tmp_path / "data"), "-o", str(tmp_path / "m.safetensors")]
    args += ["--epochs", "1", "--device", "cpu", "--json"]  # --json: no progress bar
    monkeypatch.setattr(backbone, "IMAGENET_URL", _closed_port_url())
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "download of" in err and "unreachable" in err
    monkeypatch.setattr(backbone, "IMAGENET_URL", weights_server.url(IMAGENET_FILENAME))
    assert main([*args, "--no-download-weights"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--download-weights" in err and "failed" not in err
    assert weights_server.requests == []  # --no-download-weights: nothing asked
    assert not (tmp_path / "m.safetensors").exists()


def test_safetensors_metadata_sets_convention(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = _random_vgg16_state(3)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path), metadata={"input_convention": "study"})
    assert read_weights_file(path).convention == "study"
    save_file(state, str(path), metadata={"input": "RGB, 0-255, minus mean (1, 2, 3)"})
    assert read_weights_file(path).convention == "caffe"
    assert read_weights_file(path, convention="torchvision").convention == "torchvision"
    with pytest.raises(ValueError, match="unknown input convention"):
        read_weights_file(path, convention="bgr")


# ------------------------------------------------------------------ unsafe and wrong files
class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.target), "ran"))  # type: ignore[return-value]


def test_pickled_object_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    with path.open("wb") as fh:
        pickle.dump({"features.0.weight": _Payload(str(marker))}, fh)
    with pytest.raises(ValueError) as err:
        build_model(2, backbone_weights=path)
    assert "\n" not in str(err.value) and "evil.pth" in str(err.value)
    assert not marker.exists()
    # Through torch.save's zip format too.
    path2 = tmp_path / "evil2.pth"
    torch.save({"features.0.weight": _Payload(str(marker))}, path2)
    with pytest.raises(ValueError, match="pickled"):
        build_model(2, backbone_weights=path2)
    assert not marker.exists()


def test_truncated_and_foreign_files_fail_in_one_line(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    save_file(_random_vgg16_state(4), str(good))
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    vgg11 = tmp_path / "vgg11.pth"
    state = _random_vgg16_state(5)
    del state["features.28.weight"], state["features.28.bias"]
    torch.save(state, vgg11)
    wrong_shape = tmp_path / "wide.pth"
    state = _random_vgg16_state(6)
    state["features.0.weight"] = torch.zeros(32, 3, 3, 3)
    torch.save(state, wrong_shape)
    garbage = tmp_path / "noise.pth"
    garbage.write_bytes(b"\x00\x01garbage" * 100)
    for path, match in (
        (truncated, r"cut\.safetensors"),
        (vgg11, "not VGG16"),
        (wrong_shape, "shape"),
        (garbage, r"noise\.pth"),
    ):
        with pytest.raises(ValueError, match=match) as err:
            build_model(2, backbone_weights=path)
        assert "\n" not in str(err.value)


# ------------------------------------------------------------------ conventions
def test_conventions_affine_matches_their_definitions() -> None:
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()
    torch.testing.assert_close(to_network_input(x, "study"), x)
    caffe = to_network_input(x, "caffe")
    torch.testing.assert_close(caffe[0, :, 0, 0], torch.tensor([-123.68, 10.721, 151.061]))
    tv = to_network_input(x, "torchvision")
    want = (torch.tensor([0.0, 0.5, 1.0]) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    torch.testing.assert_close(tv[0, :, 0, 0], want)
    assert set(INPUT_CONVENTIONS) == {"torchvision", "caffe", "study"}
    scale, offset = convention_affine("caffe")
    assert scale == (1.0, 1.0, 1.0) and offset[0] == -123.68


def test_checkpoint_without_convention_loads_as_before(tmp_path: Path) -> None:
    """A record written before `input_convention` existed: imagenet_normalize decides."""
    from safetensors.torch import save_file

    net = build_model(2, backbone_weights="none", hidden_units=(4,), seed=0)
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    for normalize, expected in ((True, "torchvision"), (False, "study")):
        record = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "class_names": ["a", "b"],
            "hidden_units": [4],
            "dropout": 0.2,
            "input_size": 224,
            "scale": "0-1",
            "imagenet_normalize": normalize,
            "backbone": "vgg16",
            "backbone_weights": "none",
            "backbone_seed": 0,
            "head_only": False,
            "backbone_sha256": "",
            "training": {},
            "metrics": {},
            "software": {},
            "created": "2026-01-01T00:00:00+00:00",
        }
        record["content_sha256"] = _content_digest(record, tensors)
        path = tmp_path / f"old-{normalize}.safetensors"
        save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(record)})
        _, info = load_checkpoint(path)
        assert info.input_convention == expected
        assert info.imagenet_normalize is normalize
        assert info.backbone_id == "" and info.unsure_rule == {}


def test_model_info_refuses_unknown_convention() -> None:
    with pytest.raises(ValueError, match="unknown input convention"):
        ModelInfo(class_names=("a", "b"), input_convention="bgr")


# ------------------------------------------------------------------ feature density
def test_feature_density_separates_strangers_and_travels_with_the_checkpoint(
    tmp_path: Path,
) -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.rand(3, FEATURE_DIM, generator=gen) * 2
    labels = np.repeat(np.arange(3), 40)
    train = centres[labels] + 0.3 * torch.rand(120, FEATURE_DIM, generator=gen)
    held = centres[np.repeat(np.arange(3), 10)] + 0.3 * torch.rand(30, FEATURE_DIM, generator=gen)
    strangers = torch.rand(30, FEATURE_DIM, generator=gen) * 2
    density = FeatureDensity.fit(train, labels, 3)
    d_in, d_out = density.score(held), density.score(strangers)
    assert auroc(d_in, d_out) > 0.95
    threshold = fit_threshold(d_in, 0.1)
    assert np.mean(d_in > threshold) <= 0.1 + 1e-9

    net = build_model(3, backbone_weights="none", hidden_units=(4,), seed=0)
    net.density = density
    info = ModelInfo.for_model(net, ("a", "b", "c"), backbone_weights="none", backbone_seed=0)
    for head_only in (False, True):
        path = tmp_path / f"d{head_only}.safetensors"
        save_checkpoint(path, net, info, head_only=head_only)
        loaded, _ = load_checkpoint(path)
        assert loaded.density is not None
        np.testing.assert_allclose(loaded.density.score(strangers), d_out, rtol=1e-5)
        pred = Predictor(loaded, info, device="cpu").predict_features(strangers[:4], 5, seed=0)
        np.testing.assert_allclose(pred.feature_distance, d_out[:4], rtol=1e-4)


def test_predictions_without_density_have_nan_distance(random_predictor: Predictor) -> None:
    pred = random_predictor.predict_features(torch.zeros(2, FEATURE_DIM), mc_samples=3, seed=0)
    assert pred.feature_distance.shape == (2,) and np.isnan(pred.feature_distance).all()


def test_auroc_counts_ties_as_half() -> None:
    assert auroc(np.zeros(4), np.zeros(4)) == pytest.approx(0.5)
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    with pytest.raises(ValueError):
        auroc(np.zeros(0), np.ones(2))


def test_demo_backbone_falls_back_with_a_reason(no_weights: Path) -> None:
    from napari_foram.classify.demo_model import demo_backbone, demo_model_path

    weights, reason = demo_backbone()
    assert weights is None and WEIGHTS_ENV in reason
    random_path = demo_model_path(no_weights, weights_sha256=None)
    assert "random" in random_path.name


def test_header_length_guard_reads_no_garbage(tmp_path: Path) -> None:
    """A .safetensors whose header length field is absurd fails before any allocation."""
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    with pytest.raises(ValueError, match=r"huge\.safetensors"):
        read_weights_file(path)
