"""The one loop that trains a dense head on cached conv features (the study's phase 1).

Both the demo model (`napari_foram.classify.demo_model`) and the training package
(`napari_foram.training.train.train_head`, which adds feature standardisation and pooled
features around it) train heads with this loop. It lives in `classify` because the demo
model does: the training package builds on `classify`, never the other way round.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from napari_foram.classify.rng import seeded

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from napari_foram._progress import ProgressCallback

__all__ = [
    "OPTIMIZERS",
    "autocast_for",
    "better_score",
    "fit_head",
    "head_scores",
    "make_optimizer",
    "seeded",
]

OPTIMIZERS = ("adam", "rmsprop", "sgd")


def autocast_for(
    device: torch.device, precision: str = "auto"
) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA ("auto"), or on any device when asked for ("bf16")."""
    if precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    ):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(
    name: str, params: Sequence[nn.Parameter] | Iterator[nn.Parameter], lr: float
) -> torch.optim.Optimizer:
    """Adam, RMSprop or SGD (momentum 0.9) over `params`."""
    params = list(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def head_scores(
    head: nn.Module, feats: torch.Tensor, labels: torch.Tensor, device: torch.device
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the head with dropout off; (nan, nan) if empty."""
    if feats.shape[0] == 0:
        return float("nan"), float("nan")
    head.eval()
    with torch.inference_mode(), autocast_for(device):
        logits = torch.cat([head(feats[s : s + 512]).float() for s in range(0, len(feats), 512)])
    loss = float(nn.functional.cross_entropy(logits, labels))
    return float((logits.argmax(1) == labels).float().mean()), loss


def better_score(score: tuple[float, float], best: tuple[float, float]) -> bool:
    """Higher accuracy wins; at equal accuracy the lower loss wins (NaN never wins)."""
    acc, loss = score
    if np.isnan(acc):
        return False
    return (acc, -loss) > best


def fit_head(
    head: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor,
    tr: torch.Tensor,
    va: torch.Tensor,
    device: torch.device,
    *,
    optimizer: str = "adam",
    lr: float = 1e-4,
    batch_size: int = 32,
    max_epochs: int = 50,
    patience: int = 5,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    label: str = "",
) -> dict[str, Any]:
    """Train `head` in place on features already on `device`; restore the best epoch.

    Cross-entropy, shuffled batches, early stopping on validation accuracy (ties: lower
    validation loss; without a validation set, on training accuracy) with `patience`.
    The head is left on `device`, in whatever mode the last evaluation left it.

    Parameters
    ----------
    head
        The head to train (its weights end as the best epoch's).
    x, y
        (N, D) float features and (N,) int64 labels, on `device`.
    tr, va
        int64 indices of the training and validation rows, on `device`.
    device
        Where `x`, `y`, `tr` and `va` are; the head is moved there.
    optimizer, lr, batch_size, max_epochs, patience
        "adam", "rmsprop" or "sgd"; its learning rate; rows per step; epoch limit;
        epochs without a better score before stopping.
    seed
        Seeds shuffling and dropout in forked RNGs (the global RNG is left untouched).
    progress, label
        ``progress(epoch, max_epochs, f"{label}val acc ...")`` after every epoch.

    Returns
    -------
    dict
        ``best_epoch``, ``epochs_run``, ``val_accuracy``, ``val_loss``,
        ``train_accuracy``, ``history`` (per epoch), ``interrupted`` (Ctrl-C).

    Raises
    ------
    KeyboardInterrupt
        Ctrl-C before the first epoch finished (there is nothing to keep).
    """
    head.to(device)
    optimiser = make_optimizer(optimizer, head.parameters(), lr)
    best: tuple[float, float] = (-1.0, -float("inf"))
    best_state: dict[str, torch.Tensor] = {}
    best_epoch, stale, interrupted = 0, 0, False
    history: list[dict[str, float]] = []
    with seeded(seed, device):
        try:
            for epoch in range(1, max_epochs + 1):
                head.train()
                order = tr[torch.randperm(tr.numel()).to(device)]
                for start in range(0, order.numel(), batch_size):
                    batch = order[start : start + batch_size]
                    optimiser.zero_grad(set_to_none=True)
                    with autocast_for(device):
                        logits = head(x[batch])
                    loss = nn.functional.cross_entropy(logits.float(), y[batch])
                    loss.backward()
                    optimiser.step()
                val_acc, val_loss = head_scores(head, x[va], y[va], device)
                train_acc, train_loss = head_scores(head, x[tr], y[tr], device)
                history.append(
                    {
                        "epoch": epoch,
                        "train_loss": train_loss,
                        "train_accuracy": train_acc,
                        "val_loss": val_loss,
                        "val_accuracy": val_acc,
                    }
                )
                if progress is not None:
                    progress(epoch, max_epochs, f"{label}val acc {val_acc:.3f}")
                # Without a validation set, "best" is the last epoch (training accuracy).
                score = (val_acc, val_loss) if va.numel() else (train_acc, train_loss)
                if not best_state or better_score(score, best):
                    best, best_epoch, stale = (score[0], -score[1]), epoch, 0
                    best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
                else:
                    stale += 1
                    if stale >= patience:
                        break
        except KeyboardInterrupt:
            if not best_state:
                raise
            interrupted = True
    head.load_state_dict(best_state)
    row = history[best_epoch - 1]
    return {
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "val_accuracy": row["val_accuracy"],
        "val_loss": row["val_loss"],
        "train_accuracy": row["train_accuracy"],
        "history": history,
        "interrupted": interrupted,
    }
