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

Two feature layouts (`FEATURE_LAYOUTS`) say what the head reads:

``flat``
    The study's: block 5's pooled output flattened, 25088 values.
``pooled``
    The small-data recipe's (docs/benchmarks.md, "Training on small real sets"): the
    activations after conv4_3 and conv5_3 (the last ReLU of blocks 4 and 5), each
    averaged over the whole image and over its centre (the middle 3/7 of each side,
    where a detector crop puts its specimen), 4 x 512 = 2048 values. Averages describe
    *what* is there nearly wherever it lies; the centre keeps a tray crop's neighbours
    from speaking for its specimen; block 4 adds finer texture (pores, spines, chamber
    walls) than block 5 alone. Measured against global max pooling and block 5 alone on
    real genera and synthetic trays (docs/benchmarks.md). The head then starts with a
    `Standardize` layer (training-set mean and SD, kept as buffers), so its dropout acts
    on standardised values.

Backbone weights come from ``"imagenet"`` (found as `napari_foram.classify.backbone`
says: an environment variable, torch hub's cache, then torchvision's download unless
turned off), a
local file (``.safetensors`` or ``.pth``, tensors only), or ``"none"`` (random He-normal
initialisation from a seed); never silently swapped for another. Which input convention
the weights expect travels with them (`napari_foram.classify.backbone`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from napari_foram.classify.architecture import (
    CENTRE_MARGIN,
    VGG16,
    ConvBackbone,
    flat_dim,
    pooled_dim,
)
from napari_foram.classify.backbone import (
    IMAGENET_FILENAME,
    IMAGENET_URL,
    BackboneWeights,
    MissingWeightsError,
    file_sha256,
    imagenet_weights_path,
    resolve_backbone,
    vgg16_conv_shapes,
)
from napari_foram.classify.rng import seeded
from napari_foram.defaults import CROP_SIZE

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = [
    "DEFAULT_DROPOUT",
    "DEFAULT_HIDDEN_UNITS",
    "FEATURE_DIM",
    "FEATURE_LAYOUTS",
    "IMAGENET_FILENAME",
    "IMAGENET_URL",
    "INPUT_SIZE",
    "POOLED_DIM",
    "POOLED_TAPS",
    "FORAMNet",
    "MissingWeightsError",
    "Standardize",
    "build_model",
    "build_model_with_weights",
    "describe_weights_source",
    "feature_dim",
    "feature_function",
    "features_and_pooled",
    "imagenet_weights_path",
    "vgg16_conv_shapes",
]

#: Side of the square input crop in pixels: the crop size itself (crops are not rescaled).
INPUT_SIZE = CROP_SIZE
#: Length of VGG16's flattened conv features for a 224 x 224 input: 512 * 7 * 7.
FEATURE_DIM = flat_dim(VGG16)
#: The study's head: hidden units per dense layer and dropout rate (authors' code).
DEFAULT_HIDDEN_UNITS: tuple[int, ...] = (512, 64)
DEFAULT_DROPOUT = 0.2
#: What the head reads: layout name -> description (module docstring).
FEATURE_LAYOUTS: dict[str, str] = {
    "flat": "VGG16 block 5 output flattened (512 x 7 x 7 = 25088, the study's)",
    "pooled": "conv4_3 and conv5_3 averaged over the image and over its centre (4 x 512)",
}
#: Indices in ``vgg16().features`` of the ReLUs after conv4_3 and conv5_3: VGG16's
#: "pooled" layout taps (`architecture.VGG16Backbone`).
POOLED_TAPS: tuple[int, ...] = VGG16.taps
#: Length of VGG16's "pooled" feature vector: whole-image and centre means of 512
#: channels per tap, in the order (tap 22: mean, centre), (tap 29: mean, centre).
POOLED_DIM = pooled_dim(VGG16)


def feature_dim(layout: str, backbone: ConvBackbone = VGG16) -> int:
    """Length of the feature vector the head of a `layout` on `backbone` reads."""
    check_layout(layout)
    return flat_dim(backbone) if layout == "flat" else pooled_dim(backbone)


def check_layout(layout: str) -> str:
    """`layout` if it is a known feature layout, else ValueError naming them."""
    if layout not in FEATURE_LAYOUTS:
        raise ValueError(
            f"unknown feature layout {layout!r} (use one of {', '.join(FEATURE_LAYOUTS)})"
        )
    return layout


def feature_function(
    conv: nn.Module, layout: str, offset: int = 0, backbone: ConvBackbone = VGG16
) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B, 3, S, S) network input -> (B, D) features, through the conv blocks `conv`.

    `conv` is ``FORAMNet.conv`` (an ``nn.Sequential``) or, for "flat", any callable with
    its output (e.g. compiled or quantised blocks). `offset`: `conv` holds only the layers
    from that index of ``vgg16().features`` on, and takes their input (fine-tuning runs
    the frozen layers before it separately); the taps (`backbone.taps`) keep their
    absolute indices.
    """
    check_layout(layout)
    if layout == "flat":
        return lambda x: torch.flatten(conv(x), 1)
    if not isinstance(conv, nn.Sequential):
        raise ValueError("the pooled layout taps the conv blocks: they must be nn.Sequential")
    taps = backbone.taps
    if offset > min(taps):
        raise ValueError(f"the pooled layout taps layer {min(taps)}: start at or before it")
    last = max(taps)

    def pooled(x: torch.Tensor) -> torch.Tensor:
        parts = []
        for index, layer in enumerate(conv, start=offset):
            x = layer(x)
            if index in taps:
                parts += _tap_means(x)
            if index == last:
                break
        return torch.cat([p.float() for p in parts], dim=1)

    return pooled


def _tap_means(x: torch.Tensor) -> list[torch.Tensor]:
    """A tap's activations (B, C, H, W) averaged over the image and over its centre."""
    side = x.shape[-1]
    cut = round(side * CENTRE_MARGIN)
    centre = x[:, :, cut : side - cut, cut : side - cut]
    return [x.mean(dim=(2, 3)), centre.mean(dim=(2, 3))]


def features_and_pooled(
    conv: nn.Module, layout: str, backbone: ConvBackbone = VGG16
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(B, 3, S, S) input -> (the head's features, the "pooled" features), one pass.

    What a tally store keeps per specimen is the "pooled" layout's vector whatever the
    head reads, so that any "pooled" head on the same backbone can classify it again
    later without the conv blocks. For a "flat" head the taps are read on the way to
    block 5's output (the same layers, no second pass); `conv` must then be the plain
    ``nn.Sequential`` (not compiled or quantised).
    """
    pooled = feature_function(conv, "pooled", backbone=backbone)
    if layout == "pooled":

        def both_pooled(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = pooled(x)
            return f, f

        return both_pooled
    check_layout(layout)
    if not isinstance(conv, nn.Sequential):
        raise ValueError(
            "keeping pooled features taps the conv blocks: they must be nn.Sequential"
        )

    def both_flat(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = []
        for index, layer in enumerate(conv):
            x = layer(x)
            if index in backbone.taps:
                parts += _tap_means(x)
        return torch.flatten(x, 1), torch.cat([p.float() for p in parts], dim=1)

    return both_flat


class Standardize(nn.Module):
    """``(x - mean) / scale`` per feature, with both kept as buffers (saved and moved with
    the head): the first layer of a "pooled" head, so that its dropout drops standardised
    values and its weights read comparable units.
    """

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def set(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """Use these statistics (e.g. the training crops' feature mean and SD)."""
        with torch.no_grad():
            self.mean.copy_(mean.to(self.mean))
            self.scale.copy_(scale.to(self.scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x` (N, dim) standardised: ``(x - mean) / scale``."""
        return (x - self.mean) / self.scale


class FORAMNet(nn.Module):
    """VGG16 conv blocks followed by the study's dense head.

    Parameters
    ----------
    num_classes
        K, the number of output classes (4 in the study).
    hidden_units
        Units of the hidden dense layers, in order (the study: (512, 64)).
    dropout
        Dropout rate after each hidden dense layer (the study: 0.2); with no hidden
        layer, on the head's input instead (a linear head with dropout).
    feature_layout
        What the head reads (`FEATURE_LAYOUTS`): "flat" (the study) or "pooled".
    conv
        Conv blocks to use (shared); default: new ones of `backbone`, randomly initialised.
    backbone
        The architecture of the conv blocks (`architecture.ConvBackbone`; VGG16, the
        study's): it fixes the head's input width and the "pooled" layout's taps.

    Attributes
    ----------
    conv
        The VGG16 conv blocks, torchvision's ``vgg16().features`` layout: (N, 3, 224, 224)
        -> (N, 512, 7, 7).
    head
        ``nn.Sequential``: Flatten -> [Standardize, "pooled" only] -> [Linear -> ReLU ->
        Dropout] per hidden layer (or one Dropout without hidden layers) -> Linear K.
        Takes the (N, D) features and returns logits (N, K).
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
        feature_layout: str = "flat",
        conv: nn.Sequential | None = None,
        backbone: ConvBackbone = VGG16,
    ) -> None:
        super().__init__()
        hidden_units = tuple(int(u) for u in hidden_units)
        if int(num_classes) < 2:
            raise ValueError(f"need at least 2 classes, got {num_classes}")
        if hidden_units and min(hidden_units) < 1:
            raise ValueError(f"hidden_units must be positive integers, got {hidden_units}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_classes = int(num_classes)
        self.hidden_units = hidden_units
        self.dropout = float(dropout)
        self.feature_layout = check_layout(feature_layout)
        # Given conv blocks are used as they are (shared, not copied): a new head on an
        # existing backbone, e.g. one taught on a store's kept features.
        self.backbone = backbone
        self.conv = backbone.conv_blocks() if conv is None else conv
        width = feature_dim(feature_layout, backbone)
        layers: list[nn.Module] = [nn.Flatten()]
        if feature_layout == "pooled":
            layers.append(Standardize(width))
        if not hidden_units:
            layers.append(nn.Dropout(self.dropout))
        for units in hidden_units:
            layers += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(self.dropout)]
            width = units
        layers.append(nn.Linear(width, self.num_classes))
        self.head = nn.Sequential(*layers)
        # Optional "how unlike the training crops" model (`classify.density`), fitted after
        # training; a submodule so it is saved, loaded and moved with the network.
        self.density: nn.Module | None = None

    @property
    def feature_dim(self) -> int:
        """D, the length of the feature vector the head reads."""
        return feature_dim(self.feature_layout, self.backbone)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input features, (N, 3, 224, 224) -> (N, D)."""
        return feature_function(self.conv, self.feature_layout, backbone=self.backbone)(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) for preprocessed crops (N, 3, 224, 224)."""
        return self.head(self.features(x))

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the head's tensors, keyed as in `state_dict` (``head.1.weight`` ...)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("head.")}

    def feature_distance(self, features: torch.Tensor) -> torch.Tensor | None:
        """(N,) distance of conv features from the training crops, or None without a
        fitted density.
        """
        if self.density is None:
            return None
        out: torch.Tensor = self.density(features)
        return out


def build_model(
    num_classes: int,
    *,
    backbone_weights: str | Path = "imagenet",
    hidden_units: Sequence[int] = DEFAULT_HIDDEN_UNITS,
    dropout: float = DEFAULT_DROPOUT,
    seed: int = 0,
    download: bool | None = None,
    feature_layout: str = "flat",
    backbone: ConvBackbone = VGG16,
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
    feature_layout
        What the head reads: "flat" (the study) or "pooled" (`FEATURE_LAYOUTS`).
    seed
        Seeds the random initialisation (of the head, and of the backbone with "none"),
        without disturbing the global RNG.
    download
        Whether torchvision may download the ImageNet weights when they are not found;
        None: yes unless ``$NAPARI_FORAM_NO_DOWNLOAD`` says no (`backbone.download_allowed`).

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
        feature_layout=feature_layout,
        backbone=backbone,
    )
    return model


def build_model_with_weights(
    num_classes: int,
    *,
    backbone_weights: str | Path = "imagenet",
    hidden_units: Sequence[int] = DEFAULT_HIDDEN_UNITS,
    dropout: float = DEFAULT_DROPOUT,
    seed: int = 0,
    download: bool | None = None,
    feature_layout: str = "flat",
    backbone: ConvBackbone = VGG16,
) -> tuple[FORAMNet, BackboneWeights | None]:
    """`build_model`, also returning what the backbone weights are (None for "none")."""
    weights = None
    if str(backbone_weights) != "none":
        if backbone.name != VGG16.name:
            # Where pretrained weights come from is known for VGG16 (`classify.backbone`).
            raise ValueError(
                f"pretrained weights for backbone {backbone.name!r} are not known here; "
                "use backbone_weights='none' or a full checkpoint"
            )
        weights = resolve_backbone(backbone_weights, download=download)
    with seeded(seed):
        model = FORAMNet(
            num_classes,
            hidden_units=hidden_units,
            dropout=dropout,
            feature_layout=feature_layout,
            backbone=backbone,
        )
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
