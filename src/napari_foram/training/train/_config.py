"""Training settings and results: the study's recipe as a dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram.classify.backbone import check_convention
from napari_foram.classify.head_fit import (
    OPTIMIZERS,
)
from napari_foram.classify.model import (
    DEFAULT_DROPOUT,
    DEFAULT_HIDDEN_UNITS,
    FORAMNet,
)
from napari_foram.pictures import check_crop_policy
from napari_foram.training.train._linear import DEFAULT_WEIGHT_DECAYS

if TYPE_CHECKING:
    from pathlib import Path

    from napari_foram.classify.checkpoint import ModelInfo

#: First layer of VGG16 block 4 in ``vgg16().features``: fine-tuning unfreezes from here.
FINE_TUNE_FROM_LAYER = 17

#: Training recipes: name -> one line (docs/benchmarks.md, "Training on small real sets").
RECIPES: dict[str, str] = {
    "pooled-linear": "linear head with input dropout on conv4+conv5 mean/max pooled features, "
    "L2 by cross-validation, balanced classes, temperature-calibrated (the default)",
    "study": "the study's (512, 64) head on VGG16 block-5 features, Adam 1e-4, early stopping",
}
#: Sizes of the learning curve: labelled crops per class (and then all of them).
LEARNING_CURVE_SIZES: tuple[int, ...] = (5, 10, 20, 50)

#: The default grid: 2 x 2 x 2 = 8 phase-1 runs on shared features (the study: 72).
DEFAULT_GRID: dict[str, list[Any]] = {
    "hidden_units": [(512, 64), (256, 32)],
    "dropout": [0.2, 0.5],
    "optimizer": ["adam", "rmsprop"],
}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run.

    Parameters
    ----------
    recipe
        "pooled-linear" (the default: right on small real sets) or "study" (the
        reference study's recipe); `RECIPES`. The pooled-linear head has no hidden
        layer, so `hidden_units` is () for it.
    crop_policy
        How pictures that are not tray frames become the 224 px input
        (`napari_foram.pictures`): "fit" (default) or "native". Recorded in the model.
    weight_decays
        pooled-linear: the L2 weights cross-validation chooses from.
    learning_curve
        Also measure accuracy against labels per class (`LEARNING_CURVE_SIZES`).
    refit_all
        pooled-linear: once its held-out figures are measured, fit the saved head again
        on every labelled crop (train, validation and test) with the L2 weight and the
        temperature chosen before. With 20 labels a class, the 20 % held out for the
        figures are labels the model would otherwise never learn from; the figures are
        then those of the slightly smaller training split (conservative).
    backbone_weights
        "imagenet", a torchvision vgg16 state_dict file, or "none" (random backbone).
    backbone_seed
        Seed of the random backbone when `backbone_weights` is "none" (kept apart from
        `seed`, so repeats share one backbone and one feature cache).
    hidden_units, dropout
        The head (the study: (512, 64), 0.2).
    optimizer
        "adam" (the study), "rmsprop" or "sgd" (momentum 0.9).
    lr, batch_size, max_epochs, patience
        Phase 1: learning rate, crops per step, epoch limit, epochs without a better
        validation score before stopping.
    fine_tune, fine_tune_lr, fine_tune_epochs, fine_tune_from
        Phase 2: on/off, learning rate (the paper: 1e-7), epoch limit, first conv layer
        index trained (17 = VGG16 block 4).
    seed
        Seeds head initialisation, shuffling, dropout and augmentation.
    input_convention
        How pixels become network input: "torchvision", "caffe" or "study"
        (`napari_foram.classify.backbone.INPUT_CONVENTIONS`); "" (the default) uses the
        convention the backbone weights carry ("caffe" for Keras's ImageNet weights,
        "torchvision" for torchvision's and for a random backbone).
    download_weights
        With "imagenet": whether torchvision may download its weights (528 MB, into torch
        hub's cache, checksum checked) when no file is found. None (default): yes, unless
        ``$NAPARI_FORAM_NO_DOWNLOAD`` says no (`classify.backbone.download_allowed`).
    standardize_features
        Train phase 1 on features standardised per dimension (training-set mean and SD),
        then fold that affine map into the head's first Linear layer, so the saved head
        takes raw features like any other. Random-backbone features are nearly identical
        across crops and need it; the study's ImageNet recipe did not use it.
    device
        "cpu" (default), "cuda[:i]" or "auto".
    precision
        Phase 2's conv passes: "auto" (bf16 autocast on CUDA, fp32 on a CPU), "fp32", or
        "bf16" (also on a CPU: about twice as fast on CPUs with bf16 instructions).
    init_head
        A checkpoint whose dense head starts phase 1 instead of a fresh one (a warm start:
        retraining a model on new, e.g. reviewed, crops without forgetting what it knew).
        Its classes, in order, and its head layout must be those being trained. "" (the
        default): a fresh head from `seed`.
    """

    recipe: str = "pooled-linear"
    crop_policy: str = "fit"
    weight_decays: tuple[float, ...] = DEFAULT_WEIGHT_DECAYS
    learning_curve: bool = True
    refit_all: bool = True
    backbone_weights: str = "imagenet"
    backbone_seed: int = 0
    hidden_units: tuple[int, ...] = DEFAULT_HIDDEN_UNITS
    dropout: float = DEFAULT_DROPOUT
    optimizer: str = "adam"
    lr: float = 1e-4
    batch_size: int = 32
    max_epochs: int = 50
    patience: int = 5
    fine_tune: bool = False
    fine_tune_lr: float = 1e-7
    fine_tune_epochs: int = 10
    fine_tune_from: int = FINE_TUNE_FROM_LAYER
    seed: int = 0
    input_convention: str = ""
    download_weights: bool | None = None
    standardize_features: bool = False
    pooled_features: bool = False
    device: str = "cpu"
    precision: str = "auto"
    init_head: str = ""

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        check_crop_policy(self.crop_policy)
        # The pooled-linear head is one Linear layer by definition (module _linear).
        units = () if self.recipe == "pooled-linear" else self.hidden_units
        object.__setattr__(self, "hidden_units", tuple(int(u) for u in units))
        decays = tuple(float(w) for w in self.weight_decays)
        if not decays or not all(np.isfinite(w) and w >= 0 for w in decays):
            raise ValueError(f"weight_decays must be finite and >= 0, got {self.weight_decays}")
        object.__setattr__(self, "weight_decays", decays)

        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("lr", "fine_tune_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("batch_size", "max_epochs", "patience", "fine_tune_epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.fine_tune_from <= 29:
            raise ValueError("fine_tune_from must index a VGG16 conv layer (0-29)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.input_convention:
            check_convention(self.input_convention)
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")

    @property
    def feature_layout(self) -> str:
        """What the head reads: "pooled" for the pooled-linear recipe, else "flat"."""
        return "pooled" if self.recipe == "pooled-linear" else "flat"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden_units"] = list(self.hidden_units)
        d["weight_decays"] = list(self.weight_decays)
        return d


@dataclass
class RunResult:
    """One training run: the model (best weights restored) and its record."""

    model: FORAMNet
    info: ModelInfo
    config: TrainConfig
    val_accuracy: float
    val_loss: float
    test_accuracy: float | None
    train_accuracy: float
    phase1: dict[str, Any]
    phase2: dict[str, Any] | None = None
    interrupted: bool = False

    def score(self) -> tuple[float, float]:
        """Selection key: validation accuracy, then lower validation loss."""
        return (self.val_accuracy, -self.val_loss)


@dataclass
class TrainingOutcome:
    """What `train_classifier` did: the saved run, all runs, and the files written."""

    best: RunResult
    runs: list[RunResult] = field(default_factory=list)
    grid: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None
    files: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
