"""The convolutional backbone as a seam: what the classifier needs of one, and VGG16.

Everything downstream of the conv blocks reads their shape from a `ConvBackbone`, never
from constants: the head's input width (`model.feature_dim`), the "pooled" layout's taps
(`model.feature_function`), the feature density's grid (`density`), the checkpoint's
rebuilt skeleton (`checkpoint`, by the name a checkpoint records). A second backbone
(another torchvision CNN) is one new class here, registered in `BACKBONES`, plus where its
pretrained weights come from (`backbone.py` does that for VGG16).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import nn

from napari_foram.classify.backbone import VGG16_PLAN, vgg16_conv_shapes
from napari_foram.defaults import CROP_SIZE

__all__ = [
    "BACKBONES",
    "CENTRE_MARGIN",
    "VGG16",
    "ConvBackbone",
    "VGG16Backbone",
    "backbone_named",
    "flat_dim",
    "pooled_dim",
]

#: The centre a "pooled" feature and the feature density also average over: this share of
#: each side is cut from each edge (2/7: the middle 3 x 3 of VGG16's 7 x 7 grid).
CENTRE_MARGIN = 2 / 7


@runtime_checkable
class ConvBackbone(Protocol):
    """A stack of conv blocks that turns a ``CROP_SIZE`` crop into features.

    Attributes
    ----------
    name
        What checkpoints record (``ModelInfo.backbone``), e.g. "vgg16".
    output_shape
        (C, H, W) of the last block's output for a ``CROP_SIZE`` x ``CROP_SIZE`` input: the
        "flat" layout reads its C * H * W values.
    taps
        Indices (in the ``nn.Sequential`` `conv_blocks` returns) of the layers whose
        activations the "pooled" layout averages, in order.
    tap_channels
        Channels of the activations at each tap.
    """

    @property
    def name(self) -> str:
        """What checkpoints record (``ModelInfo.backbone``), e.g. "vgg16"."""
        ...

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the last block's output for a ``CROP_SIZE`` square crop."""
        ...

    @property
    def taps(self) -> tuple[int, ...]:
        """Indices in `conv_blocks` of the layers the "pooled" layout averages, in order."""
        ...

    @property
    def tap_channels(self) -> tuple[int, ...]:
        """Channels of the activations at each tap."""
        ...

    def conv_blocks(self) -> nn.Sequential:
        """New conv blocks, randomly initialised (weights are loaded by the caller)."""
        ...

    def conv_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every tensor of `conv_blocks`' state dict (to check a weights file)."""
        ...


def flat_dim(backbone: ConvBackbone) -> int:
    """Length of the "flat" layout's features: the last block's output flattened."""
    c, h, w = backbone.output_shape
    return c * h * w


def pooled_dim(backbone: ConvBackbone) -> int:
    """Length of the "pooled" layout's features: a whole-image and a centre mean per
    channel of every tap.
    """
    return 2 * sum(backbone.tap_channels)


@dataclass(frozen=True)
class VGG16Backbone:
    """VGG16's 13 conv layers and 5 max-pools, torchvision's ``vgg16().features`` layout
    (same layer indices, so its keys load), the study's backbone.

    The taps are the ReLUs after conv4_3 and conv5_3 (measured against block 5 alone and
    the pooling layers in docs/benchmarks.md).
    """

    name: str = "vgg16"
    output_shape: tuple[int, int, int] = (512, CROP_SIZE // 32, CROP_SIZE // 32)
    taps: tuple[int, ...] = (22, 29)
    tap_channels: tuple[int, ...] = (512, 512)

    def conv_blocks(self) -> nn.Sequential:
        """The conv blocks, He-normal (fan_out) initialised as torchvision does.

        Built here rather than with ``torchvision.models.vgg16()`` because that also
        allocates the 120 M-parameter ImageNet classifier, which we would throw away.
        """
        layers: list[nn.Module] = []
        in_channels = 3
        for item in VGG16_PLAN:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            assert isinstance(item, int)
            conv = nn.Conv2d(in_channels, item, kernel_size=3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            assert conv.bias is not None
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            in_channels = item
        return nn.Sequential(*layers)

    def conv_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shapes of VGG16's conv weights and biases, keyed as torchvision's ``features``."""
        return vgg16_conv_shapes()


#: The study's backbone.
VGG16 = VGG16Backbone()
#: Backbones by the name a checkpoint records.
BACKBONES: dict[str, ConvBackbone] = {VGG16.name: VGG16}


def backbone_named(name: str) -> ConvBackbone:
    """The registered backbone called `name` ("" means VGG16: records written before
    the name was kept); one-line ValueError naming the known ones otherwise.
    """
    if not name:
        return VGG16
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        raise ValueError(f"unknown backbone {name!r} (this version knows {known})") from None
