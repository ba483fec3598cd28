"""Training the dense head on features, and fine-tuning the last convolutional block."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from napari_foram.classify.density import (
    fit_on_pooled,
)
from napari_foram.classify.head_fit import autocast_for as _autocast
from napari_foram.classify.head_fit import better_score as _better

# The head-training loop lives in classify: the demo model trains heads too, and
# classify must not import training.
from napari_foram.classify.head_fit import (
    fit_head,
    make_optimizer,
)
from napari_foram.classify.model import FORAMNet, feature_function
from napari_foram.classify.predict import resolve_device
from napari_foram.classify.rng import seeded

from ._linear import fit_linear_head
from ._model import augment, fold_standardisation, preprocess, unfold_standardisation

if TYPE_CHECKING:
    from collections.abc import Iterator

    from napari_foram._progress import ProgressCallback

    from ._config import TrainConfig


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

    The "pooled-linear" recipe fits its linear head instead (`_linear.fit_linear_head`:
    L2 by cross-validation, temperature), returning the same keys and more.

    Raises
    ------
    KeyboardInterrupt
        Ctrl-C before the first epoch finished (there is nothing to keep).
    """
    if config.recipe == "pooled-linear":
        return fit_linear_head(
            head,
            features,
            labels,
            train_idx,
            val_idx,
            dropout=config.dropout,
            weight_decays=config.weight_decays,
            seed=config.seed,
            progress=progress,
            label=label,
        )
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


def fine_tune_conv(
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
    # The head's input from the tuned layers: block 5 flattened, or the pooled taps.
    features = feature_function(tuned, model.feature_layout, offset=config.fine_tune_from)
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
    with seeded(config.seed + 1, device):
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
                        logits = model.head(features(mid))
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
