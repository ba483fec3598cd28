"""A demo classifier trained on synthetic specimens at first use.

The demo model is the study's network -- VGG16 conv blocks plus the Table-1 head -- with
the head trained on synthetic specimens. Its backbone is ImageNet VGG16, found the usual
way (`napari_foram.classify.backbone.resolve_backbone`: the ``$NAPARI_FORAM_VGG16_WEIGHTS``
file, then torch hub's cache, then torchvision's download of 528 MB with a progress bar,
unless ``$NAPARI_FORAM_NO_DOWNLOAD`` or the caller says no), which is the study's transfer
learning. When none are found and none can be downloaded (an offline machine: the check
that the server answers takes at most a few seconds) it warns (`DemoBackboneWarning`) and
falls back to a *random* backbone from a fixed seed: a weak but real representation, far
less accurate. Each backbone gets its own cache file; the checkpoint, `summary.json` and
the tally provenance say which was used.

The training crops are made the way the study made its own and the way the counter sees
specimens: synthetic trays (`napari_foram.synthetic.render_tray`) go through the detector
(`napari_foram.detect.detect`) and every whole detection is labelled with the class of the
true specimen under its centre. Version 1 trained on isolated `render_crop` crops and lost
a third of its accuracy on detector crops (71 % vs 49 %); see docs/benchmarks.md.

The first call renders the trays, extracts the crops' conv features once (the slow part on
a CPU: ~0.2 s per crop), trains the head on the cached features with early stopping, and
writes ``${NAPARI_FORAM_CACHE:-~/.cache/napari-foram}/models/demo-v<version>.safetensors``.
Later calls return that path at once.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from napari_foram.classify.backbone import (
    MissingWeightsError,
    file_sha256,
    imagenet_weights_file,
)
from napari_foram.classify.checkpoint import new_classifier, read_model_info, save_checkpoint
from napari_foram.classify.density import pool_features
from napari_foram.classify.head_fit import fit_head
from napari_foram.defaults import CAMERA_SHAPE, default_cache_dir

if TYPE_CHECKING:
    from napari_foram.classify.model import FORAMNet

__all__ = [
    "DemoBackboneWarning",
    "demo_backbone",
    "demo_checkpoint",
    "demo_model_path",
    "demo_pooling_matrix",
    "fold_pooled_head",
    "pool_features",
    "render_demo_crops",
    "train_head_on_features",
]

#: Bump when the renderer, the recipe or the defaults change: old caches are then ignored.
DEMO_VERSION = 3
#: Seed of the random backbone (fixed: the demo must be the same model everywhere).
DEMO_BACKBONE_SEED = 20200113
#: Training crops per class on ImageNet features, and on a random backbone.
DEFAULT_N_PER_CLASS = 100
RANDOM_N_PER_CLASS = 150
#: Share of held-out (in-distribution) crops the demo model's unsure rule may flag.
UNSURE_FALSE_FLAG_RATE = 0.05
#: Tray seeds for the demo: training uses indices below this, held-out checks above it.
HELD_OUT_OFFSET = 50_000
#: Geometry of the training trays: one demo camera field, specimens apart and whole.
TRAY_SHAPE = CAMERA_SHAPE
TRAY_SPECIMENS = 24
#: Crops per class scored on held-out trays after training (recorded in the metrics).
HELD_OUT_PER_CLASS = 25

ProgressCallback = Callable[[int, int, str], None]


class DemoBackboneWarning(UserWarning):
    """No ImageNet VGG16 weights were found: the demo model uses a random backbone."""


def demo_backbone(*, download: bool | None = None) -> tuple[str | None, str]:
    """The sha256 of the ImageNet weights file the demo model would stand on, or (None,
    the reason none were found).

    Finds and hashes the file without loading it (this runs at every demo start; the
    tensors are read only when the model is trained). When none is on this machine,
    downloads torchvision's into torch hub's cache if `download` allows it
    (`napari_foram.classify.backbone.download_allowed`: None means yes unless
    ``$NAPARI_FORAM_NO_DOWNLOAD`` says no); an offline machine gets its answer within
    a few seconds, so the demo still starts there.
    """
    try:
        path, _ = imagenet_weights_file(download=download)
    except MissingWeightsError as exc:
        return None, str(exc)
    return file_sha256(path), ""


def demo_model_path(
    cache_dir: str | Path | None = None,
    *,
    weights_sha256: str | None,
    n_per_class: int = DEFAULT_N_PER_CLASS,
    seed: int = 0,
    default_n: int = DEFAULT_N_PER_CLASS,
) -> Path:
    """Cache path of the demo model for a weights file (by its digest; None: random)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    suffix = "" if (n_per_class, seed) == (default_n, 0) else f"-n{n_per_class}-s{seed}"
    tag = "random" if weights_sha256 is None else f"imagenet-{weights_sha256[:12]}"
    return root / "models" / f"demo-v{DEMO_VERSION}-{tag}{suffix}.safetensors"


def tray_seed(seed: int, i: int) -> int:
    """Renderer seed of training tray `i` of data set `seed` (all distinct)."""
    return int(seed) * 1_000_003 + int(i)


@dataclass
class HeadTrainingResult:
    """Outcome of `train_head_on_features` (the best epoch's weights are in the model)."""

    best_epoch: int  # 1-based epoch whose weights were restored
    epochs_run: int
    train_accuracy: float  # at the best epoch, dropout off
    val_accuracy: float  # at the best epoch
    val_loss: float
    n_train: int
    n_val: int
    history: list[dict[str, float]] = field(default_factory=list)


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with `val_fraction` of every class (at least one) in val."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        if idx.size < 2:
            raise ValueError(f"class {cls} has {idx.size} example(s); need 2 for a val split")
        n_val = min(max(1, round(val_fraction * idx.size)), idx.size - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def train_head_on_features(
    features: torch.Tensor,
    labels: np.ndarray | Sequence[int],
    head: nn.Sequential,
    *,
    val_fraction: float = 0.2,
    lr: float = 5e-4,
    batch_size: int = 32,
    max_epochs: int = 40,
    patience: int = 8,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> HeadTrainingResult:
    """Train a head (e.g. ``model.head``) on cached conv features (the study's phase 1).

    Adam, cross-entropy, batches of 32, a stratified validation split and early stopping
    on validation accuracy (ties: lower validation loss); the best epoch's weights are
    restored. The conv blocks are not touched.

    Parameters
    ----------
    features
        (N, D) float32 conv features (`Predictor.extract_features`: D = 25088).
    labels
        (N,) class indices in 0 .. K-1.
    head
        The head to train in place (``FORAMNet.head``); its last layer is a Linear with K
        outputs. Left in eval mode with the best epoch's weights.
    val_fraction
        Share of every class held out for validation (early stopping).
    lr, batch_size, max_epochs, patience
        Optimiser and stopping settings (the study: lr 1e-4, batch 32, ~7 epochs).
    seed
        Seeds the split, shuffling and dropout (the global RNG is left untouched).
    progress
        Called as ``progress(epoch, max_epochs, message)`` after every epoch.

    Returns
    -------
    HeadTrainingResult
    """
    y = np.asarray(labels, dtype=np.int64)
    if features.ndim != 2 or features.shape[0] != y.shape[0]:
        raise ValueError(
            f"features {tuple(features.shape)} and labels {y.shape} do not match (N, D)/(N,)"
        )
    last = head[-1]
    if not isinstance(last, nn.Linear):
        raise ValueError(f"the head must end in a Linear layer, not {type(last).__name__}")
    num_classes = last.out_features
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    train_idx, val_idx = stratified_split(y, val_fraction, seed)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    for name, value in (
        ("batch_size", batch_size),
        ("max_epochs", max_epochs),
        ("patience", patience),
    ):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    # One training loop in the project (`head_fit`), shared with the training package's
    # phase 1; on the CPU, as the training package's default device.
    device = torch.device("cpu")
    record = fit_head(
        head,
        features.detach().float().cpu(),
        torch.from_numpy(y),
        torch.from_numpy(train_idx.astype(np.int64)),
        torch.from_numpy(val_idx.astype(np.int64)),
        device,
        lr=lr,
        batch_size=int(batch_size),
        max_epochs=int(max_epochs),
        patience=int(patience),
        seed=seed,
        progress=progress,
    )
    head.eval()
    return HeadTrainingResult(
        best_epoch=record["best_epoch"],
        epochs_run=record["epochs_run"],
        train_accuracy=record["train_accuracy"],
        val_accuracy=record["val_accuracy"],
        val_loss=record["val_loss"],
        n_train=int(train_idx.size),
        n_val=int(val_idx.size),
        history=record["history"],
    )


def render_demo_crops(
    n_per_class: int, *, seed: int = 0, start: int = 0, max_trays: int = 10_000
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Detector crops of synthetic specimens: (N, 224, 224, 3) uint8, labels (N,), classes.

    Trays ``tray_seed(seed, start)``, ``tray_seed(seed, start + 1)``, ... are rendered
    with every class equally likely and run through the detector until every class has
    `n_per_class` crops (later ones are dropped, so the set is balanced). A detection is
    kept when it is whole (not clipped, not an artifact) and a true specimen lies under
    its centre; that specimen's class is its label.
    """
    from napari_foram.detect import detect
    from napari_foram.synthetic import CLASSES, render_tray

    per_class: list[list[np.ndarray]] = [[] for _ in CLASSES]
    for i in range(start, start + max_trays):
        if all(len(c) >= n_per_class for c in per_class):
            break
        tray = render_tray(
            tray_seed(seed, i),
            shape=TRAY_SHAPE,
            n_specimens=TRAY_SPECIMENS,
            class_weights=[1.0] * len(CLASSES),
            clipped=False,
            touching_pairs=0,
        )
        found = detect(tray.image, pixel_size_um=tray.pixel_size_um)
        assert found.crops is not None
        for j in np.flatnonzero(~(found.clipped | found.artifact)):
            cy, cx = np.rint(found.centroid[j]).astype(int)
            label = int(tray.labels[cy, cx])
            if label == 0:
                continue
            k = tray.specimens[label - 1].class_index
            if len(per_class[k]) < n_per_class:
                per_class[k].append(found.crops[j])
    if not all(len(c) >= n_per_class for c in per_class):
        raise RuntimeError(f"{max_trays} trays did not give {n_per_class} crops of every class")
    # Class-interleaved, like the study's shuffled folders; deterministic.
    crops = [per_class[k][i] for i in range(n_per_class) for k in range(len(CLASSES))]
    labels = [k for _ in range(n_per_class) for k in range(len(CLASSES))]
    return np.stack(crops), np.asarray(labels, np.int64), tuple(CLASSES)


def demo_checkpoint(
    cache_dir: str | Path | None = None,
    *,
    progress: ProgressCallback | None = None,
    n_per_class: int | None = None,
    seed: int = 0,
    force: bool = False,
    backbone: str = "auto",
    download: bool | None = None,
) -> Path:
    """Path of the demo model, trained on synthetic specimens at first use and cached.

    Parameters
    ----------
    cache_dir
        Cache root (default: ``$NAPARI_FORAM_CACHE`` or ``~/.cache/napari-foram``); the
        model goes to ``<cache_dir>/models/``.
    progress
        ``progress(done, total, message)`` callback for a progress bar; called only when
        the model has to be trained.
    n_per_class
        Training crops per class; default 100 on ImageNet features (more gained nothing
        on held-out trays: docs/benchmarks.md) and 150 on a random backbone.
    seed
        Data set seed (crop seeds and the validation split).
    force
        Retrain even if a cached model exists.
    backbone
        "auto" (ImageNet weights if found, else a random backbone with a
        `DemoBackboneWarning`), "imagenet" (raise `MissingWeightsError` if not found) or
        "none" (random backbone).
    download
        Whether ImageNet weights not on this machine may be downloaded first (528 MB into
        torch hub's cache; `napari_foram.classify.backbone.download_allowed`: None means
        yes unless ``$NAPARI_FORAM_NO_DOWNLOAD`` says no).

    Returns
    -------
    Path
        The ``.safetensors`` checkpoint (full: backbone + head + feature density, 115 MB).
    """
    from napari_foram.classify.density import FeatureDensity, fit_on_pooled, fit_threshold
    from napari_foram.classify.predict import Predictor

    if backbone not in ("auto", "imagenet", "none"):
        raise ValueError(f"backbone must be auto, imagenet or none, not {backbone!r}")
    weights: str | None = None  # the weights file's sha256; None: random backbone
    if backbone == "imagenet":
        weights, reason = demo_backbone(download=download)
        if weights is None:
            raise MissingWeightsError(reason)
    elif backbone == "auto":
        weights, reason = demo_backbone(download=download)
        if weights is None:
            warnings.warn(
                "the demo model falls back to a random VGG16 backbone (far less accurate): "
                + reason,
                DemoBackboneWarning,
                stacklevel=2,
            )
    if n_per_class is None:
        n_per_class = DEFAULT_N_PER_CLASS if weights is not None else RANDOM_N_PER_CLASS
    if n_per_class < 5:
        raise ValueError(f"n_per_class must be at least 5, got {n_per_class}")
    default_n = DEFAULT_N_PER_CLASS if weights is not None else RANDOM_N_PER_CLASS
    path = demo_model_path(
        cache_dir,
        weights_sha256=weights,
        n_per_class=n_per_class,
        seed=seed,
        default_n=default_n,
    )
    if path.is_file() and not force:
        try:
            info = read_model_info(path)  # header + size check: catches truncated files
            if info.training.get("demo_version") == DEMO_VERSION:
                return path
        except ValueError:
            pass  # a broken or foreign cache entry: train afresh and replace it

    report = progress or (lambda done, total, message: None)
    max_epochs = 100
    n_crops = 4 * n_per_class
    n_held_out = 4 * HELD_OUT_PER_CLASS
    total = 2 * n_crops + max_epochs + 2 * n_held_out
    t0 = time.perf_counter()

    report(0, total, "rendering synthetic trays and detecting specimens")
    crops, labels, class_names = render_demo_crops(n_per_class, seed=seed)
    t_render = time.perf_counter() - t0
    report(n_crops, total, "computing VGG16 features")

    if weights is not None:
        model, info = new_classifier(class_names, backbone_weights="imagenet")
    else:
        model, info = new_classifier(class_names, backbone_weights="none", seed=DEMO_BACKBONE_SEED)
    predictor = Predictor(model, info, device="cpu", precision="fp32", batch_size=8)
    features = _features_with_progress(
        predictor, crops, lambda done: report(n_crops + done, total, "computing VGG16 features")
    )
    t_features = time.perf_counter() - t0 - t_render

    def epoch_progress(epoch: int, epochs: int, message: str) -> None:
        report(2 * n_crops + epoch, total, message)

    # With a few hundred crops a head on all 25088 conv values overfits (on ImageNet
    # features: 93-95 % held out, against 96-98 % this way). It does better trained on
    # standardised pooled features -- the mean over the 7 x 7 grid and over its central
    # 3 x 3, per channel (1024 wide, roughly translation-invariant). Pooling and
    # standardising are linear, so the trained first layer folds exactly into the
    # Table-1 head's 25088-input layer.
    result = fit_on_pooled(
        model.head,
        features,
        np.arange(len(features)),  # standardised over every training crop
        DEMO_BACKBONE_SEED + 1,
        lambda proxy, z: train_head_on_features(
            z,
            labels,
            proxy,
            lr=5e-4,
            max_epochs=max_epochs,
            patience=15,
            seed=seed,
            progress=epoch_progress,
        ),
    )
    model.density = FeatureDensity.fit(features, labels, len(class_names))

    # Held-out trays (seeds no training tray uses), scored with the folded Table-1 model
    # itself, deterministic: the figure a user can expect on the demo's specimens. Their
    # feature distances set the "unsure" threshold (5 % of them flagged).
    done = 2 * n_crops + max_epochs
    report(done, total, "rendering held-out synthetic trays")
    held_crops, held_labels, _ = render_demo_crops(
        HELD_OUT_PER_CLASS, seed=seed, start=HELD_OUT_OFFSET
    )
    report(done + n_held_out, total, "scoring held-out synthetic trays")
    held_features = _features_with_progress(
        predictor,
        held_crops,
        lambda k: report(done + n_held_out + k, total, "scoring held-out synthetic trays"),
    )
    held = predictor.predict_features(held_features, mc_samples=1)
    held_out_accuracy = float(np.mean(held.class_index == held_labels))
    threshold = fit_threshold(held.feature_distance, UNSURE_FALSE_FLAG_RATE)
    info.unsure_rule = {
        "measure": "feature_distance",
        "threshold": round(threshold, 4),
        "false_flag_rate": UNSURE_FALSE_FLAG_RATE,
        "set_on": f"{n_held_out} held-out synthetic crops",
    }
    report(total, total, f"demo model ready: held-out accuracy {held_out_accuracy:.3f}")

    info.training = _training_record(
        result, n_per_class, seed, t_render, t_features, time.perf_counter() - t0
    )
    info.training["backbone"] = info.backbone_id
    info.metrics = {
        "val_accuracy": result.val_accuracy,
        "val_loss": result.val_loss,
        "train_accuracy": result.train_accuracy,
        "held_out_accuracy": held_out_accuracy,
        "held_out_crops": n_held_out,
    }
    save_checkpoint(path, model, info)
    return path


def _features_with_progress(
    predictor: Any, crops: np.ndarray, done: Callable[[int], None], chunk: int = 8
) -> torch.Tensor:
    """Conv features of `crops` in chunks, calling ``done(n_so_far)`` after each."""
    parts = []
    for start in range(0, len(crops), chunk):
        parts.append(predictor.extract_features(crops[start : start + chunk]))
        done(min(start + chunk, len(crops)))
    return torch.cat(parts)


def demo_pooling_matrix() -> torch.Tensor:
    """The pooling the demo head is trained on (`napari_foram.classify.density.pooling_matrix`)."""
    from napari_foram.classify.density import pooling_matrix

    return pooling_matrix()


def _proxy_head(model: FORAMNet, in_features: int) -> nn.Sequential:
    """A copy of `model.head` whose first Linear takes `in_features` pooled inputs."""
    from napari_foram.classify.density import pooled_proxy_head

    return pooled_proxy_head(model.head, in_features, DEMO_BACKBONE_SEED + 1)


def fold_pooled_head(
    proxy: nn.Sequential,
    model: FORAMNet,
    pooling: torch.Tensor,
    mu: torch.Tensor,
    sd: torch.Tensor,
) -> None:
    """Copy a head trained on pooled, standardised features into `model.head`, exactly
    (`napari_foram.classify.density.fold_pooled_head_into`).
    """
    from napari_foram.classify.density import fold_pooled_head_into

    fold_pooled_head_into(proxy, model.head, pooling, mu, sd)
    model.eval()


def _training_record(
    result: HeadTrainingResult,
    n_per_class: int,
    seed: int,
    t_render: float,
    t_features: float,
    t_total: float,
) -> dict[str, Any]:
    return {
        "kind": "demo",
        "demo_version": DEMO_VERSION,
        "data": "detector crops of napari_foram.synthetic.render_tray trays",
        "n_per_class": n_per_class,
        "data_seed": seed,
        "tray_seeds": "tray_seed(data_seed, i) for i = 0, 1, ... until every class is full",
        "phase": "head only (VGG16 backbone frozen)",
        "head_input": "trained on standardised pooled features (7x7 mean, centre 3x3 mean), "
        "folded exactly into the 25088-input first layer",
        "optimizer": "Adam",
        "lr": 5e-4,
        "batch_size": 32,
        "val_fraction": 0.2,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "n_train": result.n_train,
        "n_val": result.n_val,
        "seconds": {
            "render": round(t_render, 1),
            "features": round(t_features, 1),
            "total": round(t_total, 1),
        },
    }
