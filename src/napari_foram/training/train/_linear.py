"""The small-data recipe's head: a linear classifier with dropout on pooled features.

Why a linear head: with tens to a few hundred labelled images per class, the study's
(512, 64) head on 25088 raw values has ~13 M weights to fit from a few hundred crops; it
underfits under early stopping and overfits without it (62.5 % on held-out real genera,
where a logistic regression on pooled features reached 83-86 %). A linear map from
2048 standardised pooled features (`napari_foram.classify.model`, layout "pooled") is
what a logistic regression is, with three things added for this project:

- **dropout on its input**, so Monte Carlo dropout still gives the study's uncertainty
  (mean, variance, mutual information, vote) from the same head;
- **regularisation chosen by cross-validation** on the training crops (stratified
  k-fold, k <= 4): the L2 weight giving the best out-of-fold accuracy (ties: lower
  out-of-fold loss), never a fixed value;
- **balanced class weights**, so a class of 42 counts as much as one of 107.

Training is full-batch Adam to convergence (`STEPS` steps; a few hundred crops fit in one
batch), with a fresh dropout mask every step. It is deterministic for a seed.

**Calibration.** The out-of-fold Monte Carlo logits are predictions on crops the head did
not see: a temperature T is fitted on them (with the validation crops' when there are
some) by minimising the negative log-likelihood of the MC mean probability, then folded
into the last layer (weights and bias / T, exact), and recorded in the checkpoint.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from napari_foram.classify.model import Standardize
from napari_foram.classify.rng import seeded

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from napari_foram._progress import ProgressCallback

#: L2 weights tried by cross-validation (per feature weight, added to the mean loss).
DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (3e-3, 1e-2, 3e-2, 1e-1)
#: Full-batch Adam steps, and its learning rate (standardised inputs, zero start).
STEPS = 300
LEARNING_RATE = 0.01
#: Dropout masks drawn per fit (at most; and at most this many bytes of them).
MASK_BANK = 32
MASK_BANK_BYTES = 64e6
#: Dropout passes used to fit the temperature (the MC mean is what users read).
CALIBRATION_PASSES = 30
#: Folds of the cross-validation (fewer when the smallest class has fewer crops).
MAX_FOLDS = 4
#: Temperatures searched (log-spaced): a wide bracket, then refined.
_T_RANGE = (0.05, 20.0)


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Balanced weights n / (K n_k) (a class with no crops gets 0)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def fit_many(
    z: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    rows: torch.Tensor,
    weight_decays: Sequence[float],
    dropout: float,
    seed: int,
    steps: int = STEPS,
) -> list[nn.Linear]:
    """M linear layers trained at once on standardised features z (N, D) with input
    dropout: model m on the rows where ``rows[m]`` is True, with L2 ``weight_decays[m]``.

    One optimisation for all of them (the cross-validation's folds x L2 weights): the
    features pass through one (N, D) x (D, M K) product per step, and one dropout mask
    per step serves every model. Adam's updates are element-wise, so the models do not
    interact: each is what a separate fit with that mask sequence gives. On 2 cores,
    1,000 crops: 7 s for the 4-fold x 4-weight search and the final fit, against 22 s
    one model at a time.
    """
    m = int(rows.shape[0])
    n, d = z.shape
    k = int(num_classes)
    decays = torch.tensor([float(w) for w in weight_decays], dtype=z.dtype)
    if decays.shape != (m,):
        raise ValueError(f"need one weight decay per model, got {decays.shape[0]} for {m}")
    # Per model: balanced class weights of its own rows, normalised as cross_entropy's
    # weighted mean (sum w_i l_i / sum w_i).
    onehot = nn.functional.one_hot(y, k).to(z.dtype)  # (N, K)
    present = rows.to(z.dtype)  # (M, N)
    counts = present @ onehot  # (M, K)
    per_class = torch.where(
        counts > 0, present.sum(1, keepdim=True) / (k * counts.clamp_min(1)), counts
    )
    w = present * (per_class @ onehot.T)  # (M, N): each row's weight in each model
    w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
    weight = torch.zeros(d, m * k, dtype=z.dtype, requires_grad=True)
    bias = torch.zeros(m * k, dtype=z.dtype, requires_grad=True)
    optimiser = torch.optim.Adam([weight, bias], lr=LEARNING_RATE)
    picked = y.view(1, n, 1).expand(m, n, 1)
    # Dropout masks from a bank drawn once, each step taking one rolled by a random number
    # of rows: drawing a fresh (N, D) mask every step was 2/3 of the fit's time (CPU
    # Bernoulli sampling), and over the steps every row still meets many masks.
    bank_size = max(4, min(MASK_BANK, int(MASK_BANK_BYTES // max(1, n * d))))
    with seeded(seed), torch.enable_grad(), threads_for(n * d * m * k):
        bank = torch.rand(bank_size, n, d) >= dropout if dropout > 0 else None
        shifts = torch.randint(0, n, (steps,)).tolist()
        keep_scale = 1.0 / (1.0 - dropout)
        for step in range(steps):
            x = z
            if bank is not None:
                mask = torch.roll(bank[step % bank_size], shifts[step], dims=0)
                x = z * mask * keep_scale
            logits = (x @ weight + bias).view(n, m, k).transpose(0, 1)  # (M, N, K)
            nll = torch.logsumexp(logits, -1) - logits.gather(-1, picked).squeeze(-1)
            per_model = (w * nll).sum(1)
            l2 = (weight.view(d, m, k).square().sum((0, 2)) * decays).sum()
            loss = per_model.sum() + l2
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    layers = []
    with torch.no_grad():
        for i in range(m):
            layer = nn.Linear(d, k)
            layer.weight.copy_(weight[:, i * k : (i + 1) * k].T)
            layer.bias.copy_(bias[i * k : (i + 1) * k])
            layers.append(layer.eval())
    return layers


#: Multiply-adds per step below which one thread fits faster than several: the steps
#: of a few dozen labels are too small to share, and on a busy machine every op waited
#: for its second thread (40 labels x 2048 features x 16 models: 1.0-1.6 s with one
#: thread against 13-25 s with two, measured while other work shared the two cores).
SMALL_STEP_MACS = 20e6


@contextlib.contextmanager
def threads_for(macs_per_step: float) -> Iterator[None]:
    """One torch thread for small steps (`SMALL_STEP_MACS`), torch's setting otherwise."""
    before = torch.get_num_threads()
    if macs_per_step >= SMALL_STEP_MACS or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(
    z: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    dropout: float,
    seed: int,
    steps: int = STEPS,
) -> nn.Linear:
    """One linear layer trained on all of z (N, D) with input dropout (`fit_many`)."""
    every = torch.ones(1, z.shape[0], dtype=torch.bool)
    return fit_many(z, y, num_classes, every, [weight_decay], dropout, seed, steps)[0]


def _mc_logits(
    layer: nn.Linear, z: torch.Tensor, dropout: float, passes: int, seed: int
) -> torch.Tensor:
    """(passes, N, K) logits with fresh input-dropout masks (one pass without dropout)."""
    with torch.inference_mode(), seeded(seed):
        if dropout <= 0 or passes <= 1:
            return layer(z)[None]
        return torch.stack(
            [
                layer(z * (torch.rand_like(z) >= dropout).to(z.dtype) / (1.0 - dropout))
                for _ in range(passes)
            ]
        )


def mean_prob_nll(logits: torch.Tensor, y: torch.Tensor, temperature: float) -> float:
    """Negative log-likelihood of the MC mean probability at `temperature`."""
    probs = torch.softmax(logits.double() / temperature, dim=-1).mean(0)
    return float(-torch.log(probs[torch.arange(y.numel()), y].clamp_min(1e-12)).mean())


def fit_temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    """The T minimising `mean_prob_nll` (a log grid, then a golden-section refinement)."""
    if y.numel() == 0:
        return 1.0
    grid = np.exp(np.linspace(math.log(_T_RANGE[0]), math.log(_T_RANGE[1]), 60))
    nll = [mean_prob_nll(logits, y, float(t)) for t in grid]
    i = int(np.argmin(nll))
    lo, hi = math.log(grid[max(i - 1, 0)]), math.log(grid[min(i + 1, len(grid) - 1)])
    golden = (math.sqrt(5) - 1) / 2
    for _ in range(30):
        a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
        if mean_prob_nll(logits, y, math.exp(a)) < mean_prob_nll(logits, y, math.exp(b)):
            hi = b
        else:
            lo = a
    return float(math.exp((lo + hi) / 2))


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(N,) fold number per row: each class dealt round-robin after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    out = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        out[rows] = np.arange(rows.size) % folds
    return out


def fit_linear_head(
    head: nn.Sequential,
    features: torch.Tensor,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    *,
    dropout: float,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    seed: int = 0,
    temperature: float | None = None,
    progress: ProgressCallback | None = None,
    label: str = "",
    standardize_on: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Train a "pooled" linear head in place: standardisation, L2 by cross-validation,
    final fit, temperature; return the record.

    Parameters
    ----------
    head
        ``FORAMNet.head`` of a "pooled" model without hidden layers: Flatten ->
        Standardize -> Dropout -> Linear K.
    features, labels
        (N, D) features of all crops and their (N,) labels.
    train_idx, val_idx
        Rows to train on, and held-out rows for the record (and the temperature).
    dropout
        The head's input dropout (also used while training).
    weight_decays
        L2 weights to choose from by cross-validation.
    temperature
        Use this temperature instead of fitting one (a refit on every labelled crop
        keeps the one measured on held-out predictions).
    standardize_on
        Features (M, D) whose mean and SD standardise the input (default: the training
        rows'). Teaching passes every specimen of the sample, labelled or not: a few
        dozen labels of typical specimens spread less than the sample does, and scaling
        by their SD made the head overconfident on everything else.
    """
    std = next(m for m in head if isinstance(m, Standardize))
    last = [m for m in head if isinstance(m, nn.Linear)]
    if len(last) != 1:
        raise ValueError("fit_linear_head needs a head with one Linear layer (no hidden units)")
    tr = np.asarray(train_idx, dtype=np.int64)
    va = np.asarray(val_idx, dtype=np.int64)
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    k = last[0].out_features
    x = features.float()
    ref = x[tr] if standardize_on is None else standardize_on.float()
    mu = ref.mean(0)
    sd = ref.std(0) + 1e-6 if len(ref) > 1 else torch.ones_like(mu)
    z = (x - mu) / sd

    smallest = int(np.bincount(y_all[tr].numpy(), minlength=k)[np.unique(y_all[tr])].min())
    n_folds = min(MAX_FOLDS, smallest)
    cv: list[dict[str, float]] = []
    oof_logits: dict[float, torch.Tensor] = {}
    decays = [float(w) for w in weight_decays]
    # Progress in two steps: the whole (batched) cross-validation, then the final fit.
    total = 2
    if n_folds >= 2 and len(decays) > 1:
        folds = torch.from_numpy(stratified_folds(y_all[tr].numpy(), n_folds, seed))
        # Every (weight, fold) model in one optimisation: model i = (decay i // F, fold i % F).
        fit_rows = torch.zeros(len(decays) * n_folds, x.shape[0], dtype=torch.bool)
        tr_t = torch.from_numpy(tr)
        for i in range(fit_rows.shape[0]):
            fit_rows[i, tr_t[folds != i % n_folds]] = True
        if progress is not None:
            progress(0, total, f"{label}cross-validation of {len(decays)} L2 weights")
        layers = fit_many(
            z, y_all, k, fit_rows, [decays[i // n_folds] for i in range(len(fit_rows))],
            dropout, seed,
        )  # fmt: skip
        y_tr = y_all[tr]
        for j, wd in enumerate(decays):
            logits = torch.zeros(CALIBRATION_PASSES, len(tr), k)
            for f in range(n_folds):
                held = (folds == f).numpy()
                layer = layers[j * n_folds + f]
                logits[:, held] = _mc_logits(layer, z[tr[held]], dropout, CALIBRATION_PASSES, seed)
            probs = torch.softmax(logits, -1).mean(0)
            cv.append(
                {
                    "weight_decay": wd,
                    "oof_accuracy": float((probs.argmax(1) == y_tr).float().mean()),
                    "oof_loss": mean_prob_nll(logits, y_tr, 1.0),
                }
            )
            oof_logits[wd] = logits
        if progress is not None:
            progress(1, total, f"{label}cross-validation done")
        best = max(cv, key=lambda r: (r["oof_accuracy"], -r["oof_loss"]))
        chosen = float(best["weight_decay"])
    else:
        # Too few crops per class to hold any out: the middle of the range, said so.
        chosen = decays[len(decays) // 2]
    layer = _fit(z[tr], y_all[tr], k, chosen, dropout, seed)
    if progress is not None:
        progress(total, total, f"{label}final fit, L2 {chosen:g}")
    # Temperature on predictions of crops each model did not see: out-of-fold training
    # crops, and the validation crops under the final model.
    held_logits, held_y = [], []
    if chosen in oof_logits:
        held_logits.append(oof_logits[chosen])
        held_y.append(y_all[tr])
    if len(va):
        held_logits.append(_mc_logits(layer, z[va], dropout, CALIBRATION_PASSES, seed + 7))
        held_y.append(y_all[va])
    fitted_on = int(sum(int(t.numel()) for t in held_y))
    if temperature is not None:
        fitted_on = 0
    elif held_logits:
        temperature = fit_temperature(torch.cat(held_logits, 1), torch.cat(held_y))
    else:
        temperature = 1.0
    with torch.no_grad():
        layer.weight.div_(temperature)
        layer.bias.div_(temperature)
        std.set(mu, sd)
        last[0].weight.copy_(layer.weight)
        last[0].bias.copy_(layer.bias)
    head.eval()

    def accuracy(rows: np.ndarray) -> float:
        if len(rows) == 0:
            return float("nan")
        with torch.inference_mode():
            pred = head(x[rows]).argmax(1)
        return float((pred == y_all[rows]).float().mean())

    def loss(rows: np.ndarray) -> float:
        if len(rows) == 0:
            return float("nan")
        with torch.inference_mode():
            return float(nn.functional.cross_entropy(head(x[rows]), y_all[rows]))

    return {
        "recipe": "pooled-linear",
        "weight_decay": chosen,
        "weight_decays": decays,
        "cross_validation": cv,
        "folds": n_folds if n_folds >= 2 else 0,
        "temperature": temperature,
        "temperature_fitted_on": fitted_on,
        "steps": STEPS,
        "train_accuracy": accuracy(tr),
        "val_accuracy": accuracy(va),
        "val_loss": loss(va),
        "best_epoch": STEPS,
        "epochs_run": STEPS,
        "history": [],
        "interrupted": False,
    }
