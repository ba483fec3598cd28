"""The classifier of Johansen & Sorensen (2020, Table 1): VGG16 conv blocks + a small head.

::

    crop (N, 3, 224, 224), 0-1
      -> VGG16 conv blocks (13 conv + 5 max-pool)      -> (N, 512, 7, 7)
      -> flatten                                       -> (N, 25088)
      -> Linear 512 -> ReLU -> Dropout(p)
      -> Linear 64  -> ReLU -> Dropout(p)
      -> Linear K   (logits; softmax at prediction)    -> (N, K)

`FORAMNet.features` and `FORAMNet.head` are callable separately because dropout lives only
in the head: Monte Carlo dropout computes the conv features once and runs the head N times.

Backbone weights come from one of three places, never silently swapped for another:
``"imagenet"`` (torchvision's VGG16 ImageNet weights, from torch hub's cache, downloaded
only when asked to), a local file (a full torchvision ``vgg16`` state_dict such as
``vgg16-397923af.pth``), or ``"none"`` (random He-normal initialisation from a seed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

#: VGG16 layer plan (torchvision's configuration "D"): channels per conv, "M" = max-pool.
VGG16_PLAN: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)
#: Side of the square input crop in pixels (the conv blocks then give 7 x 7 x 512).
INPUT_SIZE = 224
#: Length of the flattened conv features for a 224 x 224 input: 512 * 7 * 7.
FEATURE_DIM = 512 * 7 * 7
#: The study's head: hidden units per dense layer and dropout rate (authors' code).
DEFAULT_HIDDEN_UNITS: tuple[int, ...] = (512, 64)
DEFAULT_DROPOUT = 0.2
#: File name of torchvision's ImageNet VGG16 weights (as in torch hub's cache).
IMAGENET_FILENAME = "vgg16-397923af.pth"
IMAGENET_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"


class MissingWeightsError(FileNotFoundError, ValueError):
    """Pretrained backbone weights are not on this machine (also a ValueError: bad input)."""


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

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened conv features, (N, 3, 224, 224) -> (N, 25088)."""
        return torch.flatten(self.conv(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) for preprocessed crops (N, 3, 224, 224)."""
        return self.head(self.features(x))

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the head's tensors, keyed as in `state_dict` (``head.1.weight`` ...)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("head.")}


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


def imagenet_weights_path() -> Path:
    """Where torch hub keeps torchvision's ImageNet VGG16 weights on this machine."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILENAME


def load_backbone_state(source: str | Path, *, download: bool = False) -> dict[str, torch.Tensor]:
    """The conv-block tensors (keys ``0.weight`` ... ``28.bias``) from a weights source.

    Parameters
    ----------
    source
        ``"imagenet"`` or the path of a torchvision ``vgg16`` state_dict file.
    download
        With ``"imagenet"`` and no cached file: let torchvision download it (needs the
        internet). Without it a missing file raises at once instead of trying the network.

    Raises
    ------
    MissingWeightsError
        The weights file is not there.
    ValueError
        The file holds no VGG16 conv tensors.
    """
    if str(source) == "imagenet":
        path = imagenet_weights_path()
        if not path.is_file():
            if not download:
                raise MissingWeightsError(
                    f"ImageNet VGG16 weights not found: put {IMAGENET_FILENAME} "
                    f"({IMAGENET_URL}) at {path}, or pass the file path as backbone weights"
                )
            # torchvision's own download path: verifies the hash in the file name.
            state = torch.hub.load_state_dict_from_url(
                IMAGENET_URL,
                progress=True,
                check_hash=True,
                map_location="cpu",
                weights_only=True,
            )
            return _conv_tensors(state, IMAGENET_URL)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise MissingWeightsError(f"backbone weights file not found: {path}")
    try:
        # weights_only: a plain tensor dict; never unpickle arbitrary objects.
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise ValueError(f"cannot read backbone weights {path}: {exc}".splitlines()[0]) from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a state_dict (got {type(state).__name__})")
    return _conv_tensors(state, str(path))


def _conv_tensors(state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Keep the ``features.*`` tensors of a full vgg16 state_dict, prefix stripped."""
    conv = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    if not conv:
        # Also accept a bare conv-block state_dict (keys "0.weight", ...).
        conv = {k: v for k, v in state.items() if k.split(".", 1)[0].isdigit()}
    if not conv:
        raise ValueError(f"{where} holds no VGG16 conv tensors ('features.*' keys)")
    return conv


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
        ``"imagenet"`` (torch hub cache, see `imagenet_weights_path`), a path to a
        torchvision vgg16 state_dict, or ``"none"`` for a random backbone.
    hidden_units, dropout
        Head configuration (the study: (512, 64), 0.2).
    seed
        Seeds the random initialisation (of the head, and of the backbone with "none"),
        without disturbing the global RNG.
    download
        Allow torchvision to download the ImageNet weights when they are not cached.

    Raises
    ------
    MissingWeightsError
        Pretrained weights were asked for but are not on this machine.
    """
    state = None
    if str(backbone_weights) != "none":
        state = load_backbone_state(backbone_weights, download=download)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = FORAMNet(num_classes, hidden_units=hidden_units, dropout=dropout)
    if state is not None:
        try:
            model.conv.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"backbone weights {backbone_weights} do not fit VGG16: "
                + str(exc).splitlines()[0]
            ) from exc
    return model.eval()


def describe_weights_source(backbone_weights: str | Path) -> str:
    """A short, reproducible name for a weights source ("imagenet", "none", "file:NAME:SHA")."""
    if str(backbone_weights) in ("imagenet", "none"):
        return str(backbone_weights)
    path = Path(backbone_weights)
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"file:{path.name}:{digest.hexdigest()[:16]}"
