"""The model to train: input scaling, augmentation, the base network and its features."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from napari_foram.classify.backbone import to_network_input
from napari_foram.classify.checkpoint import ModelInfo, conv_sha256
from napari_foram.classify.model import FEATURE_LAYOUTS, FORAMNet
from napari_foram.classify.predict import Predictor
from napari_foram.classify.rng import seeded

if TYPE_CHECKING:
    from collections.abc import Sequence

    from napari_foram._progress import ProgressCallback

    from ._config import TrainConfig


# ----------------------------------------------------------------------------- helpers
def preprocess(x: torch.Tensor, input_convention: str) -> torch.Tensor:
    """(B, 3, H, W) 0-1 float -> network input (as `Predictor` prepares crops)."""
    return to_network_input(x, input_convention)


def augment(crops: torch.Tensor) -> torch.Tensor:
    """The study's augmentation, drawn afresh per image from the global torch RNG.

    Parameters
    ----------
    crops
        (B, 3, H, W) uint8 (or 0-1 float) square crops.

    Returns
    -------
    (B, 3, H, W) float32 in 0-1: each image horizontally flipped with probability 1/2,
    rotated by k x 90 degrees (k uniform in 0-3), brightness, contrast and saturation
    scaled by factors in [0.9, 1.1] and hue shifted by up to +-0.05 of the colour circle
    (random order of the four, as torchvision's ColorJitter does).
    """
    from torchvision.transforms import v2

    x = crops.float() / 255.0 if crops.dtype == torch.uint8 else crops.float()
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
        raise ValueError(f"augment needs (B, 3, S, S) crops, got {tuple(x.shape)}")
    b = x.shape[0]
    flips = torch.rand(b) < 0.5
    turns = torch.randint(0, 4, (b,))
    jitter = v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.05)
    out = []
    for i in range(b):
        img = x[i].flip(-1) if flips[i] else x[i]
        img = torch.rot90(img, int(turns[i]), dims=(1, 2))
        # One ColorJitter call per image: called on the batch it would draw one set of
        # factors for all of them.
        out.append(jitter(img))
    return torch.stack(out).clamp_(0.0, 1.0)


def _fresh_model(
    base: FORAMNet, base_info: ModelInfo, config: TrainConfig, class_names: Sequence[str]
) -> tuple[FORAMNet, ModelInfo]:
    """A model with `base`'s backbone and a head initialised from `config.seed`."""
    with seeded(config.seed):
        model = FORAMNet(
            len(class_names),
            hidden_units=config.hidden_units,
            dropout=config.dropout,
            feature_layout=config.feature_layout,
            backbone=base.backbone,
        )
    model.conv.load_state_dict(base.conv.state_dict())
    if config.init_head:
        _load_head(model, config.init_head, class_names)
    info = ModelInfo.for_model(
        model,
        tuple(class_names),
        backbone_weights=base_info.backbone_weights,
        backbone_id=base_info.backbone_id,
        backbone_seed=base_info.backbone_seed,
        input_convention=base_info.input_convention,
        crop_policy=config.crop_policy,
    )
    return model.eval(), info


def _load_head(model: FORAMNet, path: str, class_names: Sequence[str]) -> None:
    """Copy the dense head of checkpoint `path` into `model` (same classes and layout)."""
    from napari_foram.classify.checkpoint import load_checkpoint

    source, info = load_checkpoint(path, device="cpu")
    if tuple(info.class_names) != tuple(class_names):
        raise ValueError(
            f"init_head {path} predicts {list(info.class_names)}, not {list(class_names)}"
        )
    theirs, ours = source.head.state_dict(), model.head.state_dict()
    if {k: tuple(v.shape) for k, v in theirs.items()} != {
        k: tuple(v.shape) for k, v in ours.items()
    }:
        raise ValueError(f"init_head {path} has another head layout than the one trained")
    model.head.load_state_dict(theirs)


def build_base_model(
    config: TrainConfig, class_names: Sequence[str]
) -> tuple[FORAMNet, ModelInfo]:
    """The backbone everything trains on ("imagenet", a file, or seeded "none")."""
    from napari_foram.classify.checkpoint import new_classifier

    return new_classifier(
        tuple(class_names),
        backbone_weights=config.backbone_weights,
        seed=config.backbone_seed,
        input_convention=config.input_convention or None,
        download=config.download_weights,
        feature_layout=config.feature_layout,
    )


def compute_features(
    model: FORAMNet,
    info: ModelInfo,
    crops: np.ndarray,
    *,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    data_hash: str | None = None,
    progress: ProgressCallback | None = None,
    chunk: int = 32,
) -> torch.Tensor:
    """The head's input features (N, D) float32 on the CPU, computed once and optionally
    cached (D: 25088 for the study's flat layout, 2048 for "pooled").

    The cache file ``<cache_dir>/features-<key>.npy`` is keyed by the crops (their hash),
    the exact backbone tensors, the input normalisation and the precision, so a cached
    file is only reused for the very same inputs and network.
    """
    # Training sees the network's fp32 features (the study's recipe); the CPU's fast
    # paths are chosen later, per trained model, by their agreement with fp32.
    predictor = Predictor(model, info, device=device, precision="fp32")
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(
            "|".join(
                [
                    data_hash or hashlib.sha256(np.ascontiguousarray(crops).tobytes()).hexdigest(),
                    conv_sha256(model),
                    info.input_convention,
                    predictor.precision,
                    # The layout's description: a changed pooling never reuses a cache.
                    FEATURE_LAYOUTS[model.feature_layout],
                ]
            ).encode()
        ).hexdigest()[:20]
        path = Path(cache_dir) / f"features-{digest}.npy"
        if path.is_file():
            cached = np.load(path)
            if cached.shape == (len(crops), model.feature_dim):
                if progress is not None:
                    progress(len(crops), len(crops), "features from cache")
                return torch.from_numpy(cached)
    parts = []
    for start in range(0, len(crops), chunk):
        parts.append(predictor.extract_features(crops[start : start + chunk]))
        if progress is not None:
            progress(min(start + chunk, len(crops)), len(crops), "VGG16 features")
    features = torch.cat(parts) if parts else torch.zeros((0, model.feature_dim))
    model.to("cpu")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, features.numpy())
        tmp.replace(path)
    return features


def fold_standardisation(head: nn.Sequential, mu: torch.Tensor, sd: torch.Tensor) -> None:
    """Fold x -> (x - mu) / sd into the head's first Linear layer, in place (exact)."""
    first = next(m for m in head.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        w = first.weight / sd.to(first.weight)[None, :]
        if first.bias is not None:
            first.bias.sub_(w @ mu.to(first.weight))
        first.weight.copy_(w)


def unfold_standardisation(head: nn.Sequential, mu: torch.Tensor, sd: torch.Tensor) -> None:
    """The inverse of `fold_standardisation`: make a head that takes raw features x take
    (x - mu) / sd instead, computing the same function (exact, in place).
    """
    first = next(m for m in head.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        w = first.weight.clone()
        first.weight.mul_(sd.to(first.weight)[None, :])
        if first.bias is not None:
            first.bias.add_(w @ mu.to(first.weight))
