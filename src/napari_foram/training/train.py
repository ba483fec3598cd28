"""Training with the study's recipe (Johansen & Sorensen 2020, section 4).

Phase 1 -- feature extraction (always)
    The VGG16 conv blocks are frozen, so each crop's conv features (25088 values) are the
    same in every epoch: they are computed once (in memory, optionally cached to an .npy
    file keyed by the data and the exact backbone) and only the dense head is trained on
    them. Adam, lr 1e-4, batches of 32, cross-entropy, early stopping on validation
    accuracy (ties: lower validation loss) with patience; the best epoch's weights are
    restored. **No augmentation in phase 1**: cached features belong to the unaugmented
    crops (augmenting would mean recomputing the conv features every epoch, which is
    what phase 2 pays for anyway).

Phase 2 -- fine-tuning (``fine_tune=True``)
    The last two conv blocks (VGG16 block 4 and 5: ``conv[17:]``) are unfrozen and trained
    together with the head at a tiny learning rate (the paper: 1e-7), on crops augmented
    afresh per image and batch as in the study: horizontal flip, rotation by a multiple of
    90 degrees, brightness/contrast/saturation +-10 %, hue +-5 %. Early stopping as in
    phase 1, starting from phase 1's best validation score: if fine-tuning never beats
    it, phase 1's weights are kept.

Around them: ``repeats`` (the same split, different seeds, mean +- sd reported; the run
best on validation is saved), and a grid search over head units x dropout x optimiser on
phase 1 (cheap: the features are shared), the configuration best on validation then
being trained for real. Ctrl-C keeps the best model found so far and saves it.

Runs are seeded and reproducible on the CPU (the global RNG is left untouched). The
device defaults to the CPU; on CUDA the forward passes run under bf16 autocast.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_foram._progress import ProgressCallback
from napari_foram.classify.backbone import check_convention, to_network_input
from napari_foram.classify.checkpoint import ModelInfo, conv_sha256, save_checkpoint
from napari_foram.classify.density import (
    DEFAULT_FALSE_FLAG_RATE,
    FeatureDensity,
    fit_on_pooled,
    fit_threshold,
)

# The head-training loop and its helpers live in classify (the demo model trains heads
# too, and classify must not import training); the old names stay importable here.
from napari_foram.classify.head_fit import (
    OPTIMIZERS,
    fit_head,
    make_optimizer,
)
from napari_foram.classify.head_fit import autocast_for as _autocast
from napari_foram.classify.head_fit import better_score as _better
from napari_foram.classify.head_fit import head_scores as _head_scores
from napari_foram.classify.head_fit import seeded as _seeded
from napari_foram.classify.model import (
    DEFAULT_DROPOUT,
    DEFAULT_HIDDEN_UNITS,
    FEATURE_DIM,
    FORAMNet,
)
from napari_foram.classify.predict import Predictor, resolve_device
from napari_foram.training.data import (
    DEFAULT_FRACTIONS,
    LabelledCrops,
    load_image_folder,
    load_split,
    save_split,
    split_indices,
)
from napari_foram.training.metrics import mean_sd

#: First layer of VGG16 block 4 in ``vgg16().features``: fine-tuning unfreezes from here.
FINE_TUNE_FROM_LAYER = 17
#: The default grid: 2 x 2 x 2 = 8 phase-1 runs on shared features (the study: 72).
DEFAULT_GRID: dict[str, list[Any]] = {
    "hidden_units": [(512, 64), (256, 32)],
    "dropout": [0.2, 0.5],
    "optimizer": ["adam", "rmsprop"],
}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (defaults: the study's recipe).

    Parameters
    ----------
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
        With "imagenet": let torchvision download its weights when no file is found.
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
    download_weights: bool = False
    standardize_features: bool = False
    pooled_features: bool = False
    device: str = "cpu"
    precision: str = "auto"
    init_head: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_units", tuple(int(u) for u in self.hidden_units))
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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden_units"] = list(self.hidden_units)
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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config.seed))
        model = FORAMNet(
            len(class_names), hidden_units=config.hidden_units, dropout=config.dropout
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
    """Conv features (N, 25088) float32 on the CPU, computed once and optionally cached.

    The cache file ``<cache_dir>/features-<key>.npy`` is keyed by the crops (their hash),
    the exact backbone tensors, the input normalisation and the precision, so a cached
    file is only reused for the very same inputs and network.
    """
    predictor = Predictor(model, info, device=device)
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(
            "|".join(
                [
                    data_hash or hashlib.sha256(np.ascontiguousarray(crops).tobytes()).hexdigest(),
                    conv_sha256(model),
                    info.input_convention,
                    predictor.precision,
                ]
            ).encode()
        ).hexdigest()[:20]
        path = Path(cache_dir) / f"features-{digest}.npy"
        if path.is_file():
            cached = np.load(path)
            if cached.shape == (len(crops), FEATURE_DIM):
                if progress is not None:
                    progress(len(crops), len(crops), "features from cache")
                return torch.from_numpy(cached)
    parts = []
    for start in range(0, len(crops), chunk):
        parts.append(predictor.extract_features(crops[start : start + chunk]))
        if progress is not None:
            progress(min(start + chunk, len(crops)), len(crops), "VGG16 features")
    features = torch.cat(parts) if parts else torch.zeros((0, FEATURE_DIM))
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
    (x - mu) / sd instead, computing the same function (exact, in place)."""
    first = next(m for m in head.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        w = first.weight.clone()
        first.weight.mul_(sd.to(first.weight)[None, :])
        if first.bias is not None:
            first.bias.add_(w @ mu.to(first.weight))


def train_head(
    head: nn.Sequential,
    features: torch.Tensor,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig,
    *,
    progress: ProgressCallback | None = None,
    label: str = "",
) -> dict[str, Any]:
    """Phase 1: train `head` in place on cached features, restore the best epoch.

    Returns the record: ``best_epoch``, ``epochs_run``, ``val_accuracy``, ``val_loss``,
    ``train_accuracy``, ``history`` (per epoch), ``interrupted`` (Ctrl-C).

    Raises
    ------
    KeyboardInterrupt
        Ctrl-C before the first epoch finished (there is nothing to keep).
    """
    if config.pooled_features:
        return _train_pooled_head(
            head, features, labels, train_idx, val_idx, config, progress=progress, label=label
        )
    device = resolve_device(config.device)
    x = features.float().to(device)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    tr = torch.from_numpy(np.asarray(train_idx, dtype=np.int64)).to(device)
    if config.standardize_features:
        mu = x[tr].mean(0)
        sd = x[tr].std(0) + 1e-6
        x = (x - mu) / sd
        if config.init_head:
            # A warm-started head takes raw features: bring it to the standardised ones
            # it trains on here (folded back at the end, so nothing is lost either way).
            unfold_standardisation(head, mu.cpu(), sd.cpu())
    va = torch.from_numpy(np.asarray(val_idx, dtype=np.int64)).to(device)
    record = fit_head(
        head,
        x,
        y,
        tr,
        va,
        device,
        optimizer=config.optimizer,
        lr=config.lr,
        batch_size=config.batch_size,
        max_epochs=config.max_epochs,
        patience=config.patience,
        seed=config.seed,
        progress=progress,
        label=label,
    )
    if config.standardize_features:
        fold_standardisation(head, mu, sd)
    head.eval().to("cpu")
    return record


def _train_pooled_head(
    head: nn.Sequential,
    features: torch.Tensor,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig,
    *,
    progress: ProgressCallback | None = None,
    label: str = "",
) -> dict[str, Any]:
    """`train_head` on standardised pooled features, folded into `head` afterwards."""
    if config.init_head:
        raise ValueError("pooled features cannot warm-start a head (init_head): train afresh")
    plain = replace(config, pooled_features=False, standardize_features=False)
    return fit_on_pooled(
        head,
        features,
        np.asarray(train_idx),
        config.seed,
        lambda proxy, z: train_head(
            proxy, z, labels, train_idx, val_idx, plain, progress=progress, label=label
        ),
    )


def _crop_batches(
    crops: np.ndarray, idx: np.ndarray, size: int, device: torch.device
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    for start in range(0, len(idx), size):
        batch = idx[start : start + size]
        x = torch.from_numpy(np.ascontiguousarray(crops[batch])).to(device)
        yield batch, x.permute(0, 3, 1, 2)


def _model_scores(
    model: FORAMNet,
    crops: np.ndarray,
    labels: np.ndarray,
    idx: np.ndarray,
    convention: str,
    device: torch.device,
    precision: str = "auto",
) -> tuple[float, float]:
    """(accuracy, loss) of the whole network on crops `idx`, dropout off, no augmentation."""
    if len(idx) == 0:
        return float("nan"), float("nan")
    model.eval()
    logits = []
    with torch.inference_mode(), _autocast(device, precision):
        for _, x in _crop_batches(crops, idx, 64, device):
            xin = preprocess(x.float() / 255.0, convention)
            logits.append(model(xin).float())
    out = torch.cat(logits)
    y = torch.from_numpy(labels[idx]).to(device)
    return float((out.argmax(1) == y).float().mean()), float(nn.functional.cross_entropy(out, y))


def fine_tune(
    model: FORAMNet,
    crops: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig,
    *,
    baseline: tuple[float, float],
    input_convention: str = "study",
    progress: ProgressCallback | None = None,
    label: str = "",
) -> dict[str, Any]:
    """Phase 2: train ``conv[fine_tune_from:]`` and the head on augmented crops.

    `baseline` is phase 1's (val accuracy, val loss): fine-tuned weights replace phase 1's
    only if they beat it. The model is left on the CPU in eval mode with the best weights.
    """
    device = resolve_device(config.device)
    labels = np.asarray(labels, dtype=np.int64)
    model.to(device)
    frozen = nn.Sequential(*list(model.conv)[: config.fine_tune_from])
    tuned = nn.Sequential(*list(model.conv)[config.fine_tune_from :])
    for p in frozen.parameters():
        p.requires_grad_(False)
    for p in [*tuned.parameters(), *model.head.parameters()]:
        p.requires_grad_(True)
    optimiser = make_optimizer(
        config.optimizer, [*tuned.parameters(), *model.head.parameters()], config.fine_tune_lr
    )

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    best = (baseline[0], -baseline[1])
    best_state = snapshot()
    best_epoch, stale, interrupted = 0, 0, False
    history: list[dict[str, float]] = []
    steps_per_epoch = -(-len(train_idx) // config.batch_size)
    with _seeded(config.seed + 1, device):
        try:
            for epoch in range(1, config.fine_tune_epochs + 1):
                order = np.asarray(train_idx)[torch.randperm(len(train_idx)).numpy()]
                running = 0.0
                for step, (batch, x) in enumerate(
                    _crop_batches(crops, order, config.batch_size, device), start=1
                ):
                    xin = preprocess(augment(x), input_convention)
                    y = torch.from_numpy(labels[batch]).to(device)
                    model.head.train()
                    optimiser.zero_grad(set_to_none=True)
                    with _autocast(device, config.precision):
                        with torch.no_grad():  # frozen blocks: no graph to keep
                            mid = frozen(xin)
                        logits = model.head(torch.flatten(tuned(mid), 1))
                    loss = nn.functional.cross_entropy(logits.float(), y)
                    loss.backward()
                    optimiser.step()
                    running += float(loss.detach())
                    if progress is not None:
                        progress(
                            (epoch - 1) * steps_per_epoch + step,
                            config.fine_tune_epochs * steps_per_epoch,
                            f"{label}fine-tune epoch {epoch}",
                        )
                val_acc, val_loss = _model_scores(
                    model,
                    crops,
                    labels,
                    np.asarray(val_idx),
                    input_convention,
                    device,
                    config.precision,
                )
                history.append(
                    {
                        "epoch": epoch,
                        "train_loss": running / max(1, steps_per_epoch),
                        "val_loss": val_loss,
                        "val_accuracy": val_acc,
                    }
                )
                if _better((val_acc, val_loss), best):
                    best, best_epoch, stale = (val_acc, -val_loss), epoch, 0
                    best_state = snapshot()
                else:
                    stale += 1
                    if stale >= config.patience:
                        break
        except KeyboardInterrupt:
            interrupted = True
    for p in model.parameters():
        p.requires_grad_(True)
    model.load_state_dict(best_state)
    model.eval().to("cpu")
    return {
        "best_epoch": best_epoch,  # 0: no fine-tuned epoch beat phase 1, its weights kept
        "epochs_run": len(history),
        "val_accuracy": best[0],
        "val_loss": -best[1],
        "lr": config.fine_tune_lr,
        "layers": f"conv[{config.fine_tune_from}:] (VGG16 blocks 4-5) + head",
        "augmentation": "hflip, rot90 k, brightness/contrast/saturation +-10 %, hue +-5 %",
        "history": history,
        "interrupted": interrupted,
    }


def train_run(
    data: LabelledCrops,
    split: dict[str, np.ndarray],
    config: TrainConfig,
    base: tuple[FORAMNet, ModelInfo],
    features: torch.Tensor,
    *,
    progress: ProgressCallback | None = None,
    label: str = "",
) -> RunResult:
    """One run: a fresh head on `base`'s backbone, phase 1 and (optionally) phase 2."""
    model, info = _fresh_model(base[0], base[1], config, data.class_names)
    labels = data.labels
    t0 = time.perf_counter()
    phase1 = train_head(
        model.head, features, labels, split["train"], split["val"], config,
        progress=progress, label=label,
    )  # fmt: skip
    phase2 = None
    test_feats = features[split["test"]]
    if config.fine_tune and not phase1["interrupted"]:
        phase2 = fine_tune(
            model,
            data.crops,
            labels,
            split["train"],
            split["val"],
            config,
            baseline=(phase1["val_accuracy"], phase1["val_loss"]),
            input_convention=info.input_convention,
            progress=progress,
            label=label,
        )
        if phase2["best_epoch"] > 0:  # the conv blocks changed: fresh test features
            test_feats = compute_features(
                model, info, data.crops[split["test"]], device=config.device
            )
    val_acc = phase2["val_accuracy"] if phase2 else phase1["val_accuracy"]
    val_loss = phase2["val_loss"] if phase2 else phase1["val_loss"]
    test_acc = None
    if len(split["test"]):
        y_test = torch.from_numpy(labels[split["test"]])
        test_acc, _ = _head_scores(model.head, test_feats, y_test, torch.device("cpu"))
    phase1["seconds"] = round(time.perf_counter() - t0, 2)
    return RunResult(
        model=model,
        info=info,
        config=config,
        val_accuracy=float(val_acc),
        val_loss=float(val_loss),
        test_accuracy=test_acc,
        train_accuracy=float(phase1["train_accuracy"]),
        phase1=phase1,
        phase2=phase2,
        interrupted=bool(phase1["interrupted"] or (phase2 or {}).get("interrupted")),
    )


def grid_configs(
    config: TrainConfig, grid: dict[str, list[Any]] | None = None
) -> list[TrainConfig]:
    """Every combination of the grid's values (keys: TrainConfig fields), from `config`."""
    grid = grid or DEFAULT_GRID
    keys = sorted(grid)
    for key in keys:
        if key not in TrainConfig.__dataclass_fields__:
            raise ValueError(f"grid key {key!r} is not a training setting")
    return [
        replace(config, **dict(zip(keys, values, strict=True)))
        for values in itertools.product(*(grid[k] for k in keys))
    ]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _run_row(run: RunResult, **extra: Any) -> dict[str, Any]:
    c = run.config
    return {
        **extra,
        "hidden_units": "x".join(str(u) for u in c.hidden_units),
        "dropout": c.dropout,
        "optimizer": c.optimizer,
        "lr": c.lr,
        "seed": c.seed,
        "best_epoch": run.phase1["best_epoch"],
        "epochs_run": run.phase1["epochs_run"],
        "train_accuracy": round(run.train_accuracy, 6),
        "val_accuracy": round(run.val_accuracy, 6),
        "val_loss": round(run.val_loss, 6),
        "test_accuracy": "" if run.test_accuracy is None else round(run.test_accuracy, 6),
        "fine_tuned_epochs": "" if run.phase2 is None else run.phase2["best_epoch"],
    }


def train_classifier(
    data: LabelledCrops,
    output: str | Path,
    config: TrainConfig | None = None,
    *,
    split: dict[str, np.ndarray] | None = None,
    repeats: int = 1,
    grid: bool | dict[str, list[Any]] = False,
    feature_cache: str | Path | None = None,
    features: torch.Tensor | None = None,
    progress: ProgressCallback | None = None,
) -> TrainingOutcome:
    """Train with the study's recipe and save the checkpoint best on validation.

    Parameters
    ----------
    data
        Labelled crops (`load_image_folder`).
    output
        Checkpoint path (``.safetensors``). Beside it: ``<stem>.grid.csv`` (with `grid`)
        and ``<stem>.repeats.csv`` (with `repeats` > 1).
    config
        Settings; default `TrainConfig()`.
    split
        ``{"train", "val", "test"}`` indices; default `split_indices(labels, config.seed)`.
    repeats
        Independent runs with seeds ``seed, seed + 1, ...`` on the same split; their
        mean +- sd go into the checkpoint's metrics.
    grid
        True (`DEFAULT_GRID`) or a dict of TrainConfig field -> values: phase 1 over every
        combination first; the one best on validation is then trained (with `repeats`
        and fine-tuning).
    feature_cache
        Folder for the ``.npy`` feature cache (None: in memory only).
    features
        Precomputed conv features (N, 25088) of ``data.crops`` through this backbone
        (`compute_features`), to skip the VGG16 pass.
    progress
        ``progress(done, total, message)``.

    Returns
    -------
    TrainingOutcome
    """
    config = config or TrainConfig()
    if int(repeats) < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    split = split if split is not None else split_indices(data.labels, config.seed)
    if len(split["train"]) == 0:
        raise ValueError("the training split is empty")
    output = Path(output)
    device = resolve_device(config.device)
    config = replace(config, device=str(device))
    t0 = time.perf_counter()
    base = build_base_model(config, data.class_names)
    data_hash = data.data_hash()
    if features is None:
        features = compute_features(
            base[0],
            base[1],
            data.crops,
            device=device,
            cache_dir=feature_cache,
            data_hash=data_hash,
            progress=progress,
        )
    elif tuple(features.shape) != (len(data), FEATURE_DIM):
        raise ValueError(
            f"features must be ({len(data)}, {FEATURE_DIM}), got {tuple(features.shape)}"
        )
    t_features = time.perf_counter() - t0
    outcome_grid: list[dict[str, Any]] = []
    runs: list[RunResult] = []
    interrupted = False
    files: dict[str, str] = {}
    chosen = config
    grid_runs: list[RunResult] = []
    try:
        if grid:
            configs = grid_configs(config, grid if isinstance(grid, dict) else None)
            for i, cfg in enumerate(configs, start=1):
                run = train_run(
                    data, split, replace(cfg, fine_tune=False), base, features,
                    progress=progress, label=f"grid {i}/{len(configs)}: ",
                )  # fmt: skip
                grid_runs.append(run)
                outcome_grid.append(_run_row(run, config=i))
                if run.interrupted:
                    raise KeyboardInterrupt
            chosen = replace(max(grid_runs, key=RunResult.score).config, seed=config.seed)
            chosen = replace(chosen, fine_tune=config.fine_tune)
        if grid_runs and repeats == 1 and not config.fine_tune:
            # The grid already trained this exact configuration and seed.
            runs.append(max(grid_runs, key=RunResult.score))
        else:
            for r in range(int(repeats)):
                run = train_run(
                    data, split, replace(chosen, seed=config.seed + r), base, features,
                    progress=progress,
                    label=f"run {r + 1}/{repeats}: " if repeats > 1 else "",
                )  # fmt: skip
                runs.append(run)
                if run.interrupted:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        # Ctrl-C: keep the best model trained so far (train_head re-raises only when a
        # run had not finished a single epoch).
        interrupted = True
        if not runs and grid_runs:
            runs.append(max(grid_runs, key=RunResult.score))
        if not runs:
            raise
    if outcome_grid:
        files["grid"] = str(output.with_name(f"{output.stem}.grid.csv"))
        _write_csv(Path(files["grid"]), outcome_grid)
    best = max(runs, key=RunResult.score)
    val_ms = mean_sd([r.val_accuracy for r in runs])
    tests = [r.test_accuracy for r in runs if r.test_accuracy is not None]
    test_ms = mean_sd(tests) if tests else (float("nan"), float("nan"))
    if len(runs) > 1:
        files["repeats"] = str(output.with_name(f"{output.stem}.repeats.csv"))
        _write_csv(Path(files["repeats"]), [_run_row(r, repeat=i) for i, r in enumerate(runs, 1)])
    metrics: dict[str, Any] = {
        "val_accuracy": best.val_accuracy,
        "val_loss": best.val_loss,
        "train_accuracy": best.train_accuracy,
        "test_accuracy": best.test_accuracy,
    }
    if len(runs) > 1:
        metrics["repeats"] = {
            "n": len(runs),
            "val_accuracy_mean": val_ms[0],
            "val_accuracy_sd": val_ms[1],
            "test_accuracy_mean": None if np.isnan(test_ms[0]) else test_ms[0],
            "test_accuracy_sd": None if np.isnan(test_ms[1]) else test_ms[1],
            "seeds": [r.config.seed for r in runs],
        }
    counts = {
        name: {
            c: int(np.sum(data.labels[split[name]] == i)) for i, c in enumerate(data.class_names)
        }
        for name in ("train", "val", "test")
    }
    best.info.training = {
        "kind": "study-recipe",
        "config": best.config.to_dict(),
        "phase1": {k: v for k, v in best.phase1.items() if k != "history"},
        "phase1_history": best.phase1["history"],
        "phase1_augmentation": "none (cached conv features)",
        "phase2": None
        if best.phase2 is None
        else {k: v for k, v in best.phase2.items() if k != "history"},
        "data": {
            "root": str(data.root) if data.root is not None else None,
            "n": len(data),
            "sha256": data_hash,
            "class_counts": data.counts(),
            "split_counts": counts,
            "skipped_files": len(data.skipped),
        },
        "grid": bool(grid),
        "repeats": len(runs),
        "interrupted": interrupted,
        "seconds": {
            "features": round(t_features, 2),
            "total": round(time.perf_counter() - t0, 2),
        },
        "device": str(device),
        "precision": "bf16" if device.type == "cuda" else "fp32",
    }
    best.info.unsure_rule = fit_unsure_rule(best, data, split, features)
    metrics["unsure_rule"] = best.info.unsure_rule
    best.info.metrics = _json_clean(metrics)
    best.info.training = _json_clean(best.info.training)
    save_checkpoint(output, best.model, best.info)
    files["checkpoint"] = str(output)
    return TrainingOutcome(
        best=best,
        runs=runs,
        grid=outcome_grid,
        checkpoint=output,
        files=files,
        interrupted=interrupted,
        metrics=best.info.metrics,
    )


def fit_unsure_rule(
    run: RunResult,
    data: LabelledCrops,
    split: dict[str, np.ndarray],
    features: torch.Tensor,
    false_flag_rate: float = DEFAULT_FALSE_FLAG_RATE,
) -> dict[str, Any]:
    """Fit the model's feature density on its training crops and set its unsure rule.

    The density (`napari_foram.classify.density`) is attached to ``run.model``; the rule
    flags crops whose feature distance exceeds what `false_flag_rate` of the validation
    crops (in-distribution, unseen by the head) reach. Features are recomputed when
    fine-tuning changed the conv blocks. Without a validation split the training crops
    set the threshold (it is then lower than it should be: more false flags).
    """
    tr, va = np.asarray(split["train"]), np.asarray(split["val"])
    if run.phase2 is not None and run.phase2.get("best_epoch", 0) > 0:
        idx = np.concatenate([tr, va])
        fresh = compute_features(run.model, run.info, data.crops[idx], device=run.config.device)
        feats = torch.zeros((len(data), fresh.shape[1]))
        feats[torch.from_numpy(idx)] = fresh
    else:
        feats = features
    run.model.density = FeatureDensity.fit(feats[tr], data.labels[tr], len(data.class_names))
    calibration = va if len(va) else tr
    distances = run.model.density.score(feats[calibration])
    return {
        "measure": "feature_distance",
        "threshold": round(fit_threshold(distances, false_flag_rate), 4),
        "false_flag_rate": false_flag_rate,
        "set_on": f"{len(calibration)} {'validation' if len(va) else 'training'} crops",
    }


def _json_clean(obj: Any) -> Any:
    """NaN -> None, numpy scalars -> Python, tuples -> lists (checkpoint records are JSON)."""
    if isinstance(obj, dict):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def train_from_folder(
    data_dir: str | Path,
    output: str | Path,
    config: TrainConfig | None = None,
    *,
    split_file: str | Path | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    repeats: int = 1,
    grid: bool | dict[str, list[Any]] = False,
    feature_cache: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> TrainingOutcome:
    """Load DATA/<class>/ images, split (or reuse a split file), train, save.

    The split is read from `split_file` when that file exists, else made with
    `config.seed` and written there (default ``<output stem>.split.json``), so
    ``evaluate --split`` can score exactly the held-out test images later.
    """
    config = config or TrainConfig()
    data = load_image_folder(data_dir, progress=progress)
    output = Path(output)
    split_path = (
        Path(split_file)
        if split_file is not None
        else output.with_name(f"{output.stem}.split.json")
    )
    if split_file is not None and split_path.is_file():
        split = load_split(split_path, data)
    else:
        split = split_indices(data.labels, config.seed, fractions)
        save_split(split_path, split, data, seed=config.seed, fractions=fractions)
    outcome = train_classifier(
        data,
        output,
        config,
        split=split,
        repeats=repeats,
        grid=grid,
        feature_cache=feature_cache,
        progress=progress,
    )
    outcome.files["split"] = str(split_path)
    outcome.metrics = {**outcome.metrics, "skipped": data.skipped}
    return outcome
