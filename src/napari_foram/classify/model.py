"""The classifier of Johansen & Sorensen (2020, Table 1): VGG16 conv blocks + a small head.

::

    crop (N, 3, 224, 224), scaled by the model's input convention
      -> VGG16 conv blocks (13 conv + 5 max-pool)      -> (N, 512, 7, 7)
      -> flatten                                       -> (N, 25088)
      -> Linear 512 -> ReLU -> Dropout(p)
      -> Linear 64  -> ReLU -> Dropout(p)
      -> Linear K   (logits; softmax at prediction)    -> (N, K)

`FORAMNet.features` and `FORAMNet.head` are callable separately because dropout lives only
in the head: Monte Carlo dropout computes the conv features once and runs the head N times.

Backbone weights come from ``"imagenet"`` (found as `napari_foram.classify.backbone`
says: an environment variable, torch hub's cache, or a download only when asked to), a
local file (``.safetensors`` or ``.pth``, tensors only), or ``"none"`` (random He-normal
initialisation from a seed); never silently swapped for another. Which input convention
the weights expect travels with them (`napari_foram.classify.backbone`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from napari_foram.classify.backbone import (
    IMAGENET_FILENAME,
    IMAGENET_URL,
    VGG16_PLAN,
    BackboneWeights,
    MissingWeightsError,
    file_sha256,
    imagenet_weights_path,
    resolve_backbone,
    vgg16_conv_shapes,
)
from napari_foram.classify.rng import seeded
from napari_foram.defaults import CROP_SIZE

__all__ = [
    "DEFAULT_DROPOUT",
    "DEFAULT_HIDDEN_UNITS",
    "FEATURE_DIM",
    "IMAGENET_FILENAME",
    "IMAGENET_URL",
    "INPUT_SIZE",
    "FORAMNet",
    "MissingWeightsError",
    "build_model",
    "build_model_with_weights",
    "describe_weights_source",
    "imagenet_weights_path",
    "vgg16_conv_shapes",
]

#: Side of the square input crop in pixels: the crop size itself (crops are not rescaled).
INPUT_SIZE = CROP_SIZE
#: Length of the flattened conv features for a 224 x 224 input: 512 * 7 * 7.
FEATURE_DIM = 512 * 7 * 7
#: The study's head: hidden units per dense layer and dropout rate (authors' code).
DEFAULT_HIDDEN_UNITS: tuple[int, ...] = (512, 64)
DEFAULT_DROPOUT = 0.2


class FORAMNet(nn.Module):
    """VGG16 conv blocks followed by the study's dense head.

    Parameters
    ----------
    num_classes
        K, the number of output classes (4 in the study).
    hidden_units
        Units of the hidden dense layers, in order (the study: (512, 64)).
    dropout
        Dropout rate after each hidden dense layer (the study: 0.2).

    Attributes
    ----------
    conv
        The VGG16 conv blocks, torchvision's ``vgg16().features`` layout: (N, 3, 224, 224)
        -> (N, 512, 7, 7).
    head
        ``nn.Sequential``: Flatten -> [Linear -> ReLU -> Dropout] per hidden layer ->
        Linear K. Takes (N, 512, 7, 7) or (N, 25088) and returns logits (N, K).
    density
        None, or a `napari_foram.classify.density.FeatureDensity` fitted on the training
        crops' features: how far a crop lies from every trained class.

    Notes
    -----
    The conv layers are randomly initialised here; use `build_model` to load weights.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        hidden_units: Sequence[int] = DEFAULT_HIDDEN_UNITS,
        dropout: float = DEFAULT_DROPOUT,
    ) -> None:
        super().__init__()
        hidden_units = tuple(int(u) for u in hidden_units)
        if int(num_classes) < 2:
            raise ValueError(f"need at least 2 classes, got {num_classes}")
        if not hidden_units or min(hidden_units) < 1:
            raise ValueError(f"hidden_units must be positive integers, got {hidden_units}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_classes = int(num_classes)
        self.hidden_units = hidden_units
        self.dropout = float(dropout)
        self.conv = _vgg16_conv_blocks()
        layers: list[nn.Module] = [nn.Flatten()]
        width = FEATURE_DIM
        for units in hidden_units:
            layers += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(self.dropout)]
            width = units
        layers.append(nn.Linear(width, self.num_classes))
        self.head = nn.Sequential(*layers)
        # Optional "how unlike the training crops" model (`classify.density`), fitted after
        # training; a submodule so it is saved, loaded and moved with the network.
        self.density: nn.Module | None = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened conv features, (N, 3, 224, 224) -> (N, 25088)."""
        return torch.flatten(self.conv(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) for preprocessed crops (N, 3, 224, 224)."""
        return self.head(self.features(x))

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the head's tensors, keyed as in `state_dict` (``head.1.weight`` ...)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("head.")}

    def feature_distance(self, features: torch.Tensor) -> torch.Tensor | None:
        """(N,) distance of conv features from the training crops, or None without a
        fitted density."""
        if self.density is None:
            return None
        out: torch.Tensor = self.density(features)
        return out


def _vgg16_conv_blocks() -> nn.Sequential:
    """torchvision's VGG16 ``features`` module (same layer indices, so its keys load).

    Built here rather than with ``torchvision.models.vgg16()`` because that also allocates
    the 120 M-parameter ImageNet classifier, which we would throw away.
    """
    layers: list[nn.Module] = []
    in_channels = 3
    for item in VGG16_PLAN:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            assert isinstance(item, int)
            conv = nn.Conv2d(in_channels, item, kernel_size=3, padding=1)
            # torchvision's VGG initialisation (He normal, fan_out), so "none" matches it.
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            assert conv.bias is not None
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            in_channels = item
    return nn.Sequential(*layers)


def build_model(
    num_classes: int,
    *,
    backbone_weights: str | Path = "imagenet",
    hidden_units: Sequence[int] = DEFAULT_HIDDEN_UNITS,
    dropout: float = DEFAULT_DROPOUT,
    seed: int = 0,
    download: bool = False,
) -> FORAMNet:
    """A `FORAMNet` with its backbone weights loaded; the head is freshly initialised.

    The model is returned in eval mode (dropout off); training code calls ``.train()``.

    Parameters
    ----------
    num_classes
        K output classes.
    backbone_weights
        ``"imagenet"`` (resolved as `napari_foram.classify.backbone.resolve_backbone`
        says: ``$NAPARI_FORAM_VGG16_WEIGHTS``, torch hub's cache, then a download if
        allowed), a path to a VGG16 weights file (``.safetensors`` or ``.pth``), or
        ``"none"`` for a random backbone.
    hidden_units, dropout
        Head configuration (the study: (512, 64), 0.2).
    seed
        Seeds the random initialisation (of the head, and of the backbone with "none"),
        without disturbing the global RNG.
    download
        Allow torchvision to download the ImageNet weights when they are not found.

    Raises
    ------
    MissingWeightsError
        Pretrained weights were asked for but are not on this machine.
    """
    model, _ = build_model_with_weights(
        num_classes,
        backbone_weights=backbone_weights,
        hidden_units=hidden_units,
        dropout=dropout,
        seed=seed,
        download=download,
    )
    return model


def build_model_with_weights(
    num_classes: int,
    *,
    backbone_weights: str | Path = "imagenet",
    hidden_units: Sequence[int] = DEFAULT_HIDDEN_UNITS,
    dropout: float = DEFAULT_DROPOUT,
    seed: int = 0,
    download: bool = False,
) -> tuple[FORAMNet, BackboneWeights | None]:
    """`build_model`, also returning what the backbone weights are (None for "none")."""
    weights = None
    if str(backbone_weights) != "none":
        weights = resolve_backbone(backbone_weights, download=download)
    with seeded(seed):
        model = FORAMNet(num_classes, hidden_units=hidden_units, dropout=dropout)
    if weights is not None:
        try:
            model.conv.load_state_dict(weights.conv, strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"backbone weights {backbone_weights} do not fit VGG16: "
                + str(exc).splitlines()[0]
            ) from exc
    return model.eval(), weights


def describe_weights_source(backbone_weights: str | Path) -> str:
    """A short, reproducible name for a weights source ("imagenet", "none", "file:NAME:SHA")."""
    if str(backbone_weights) in ("imagenet", "none"):
        return str(backbone_weights)
    path = Path(backbone_weights)
    return f"file:{path.name}:{file_sha256(path)[:16]}"
