"""Retraining the head on validated crops (fine-tuning the current model)."""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._queue import DEFAULT_VAL_FRACTION

if TYPE_CHECKING:
    import os

    from napari_foram._progress import ProgressCallback
    from napari_foram.training.train import TrainingOutcome


# ----------------------------------------------------------------------------- retraining
@dataclass
class FineTuneResult:
    """A checkpoint trained on reviewed crops.

    Attributes
    ----------
    checkpoint
        The new ``.safetensors`` file.
    base_model
        The checkpoint whose backbone, head layout and classes it kept.
    val_accuracy
        Accuracy on the held-out validated crops (the `DEFAULT_VAL_FRACTION` split).
    n_train, n_val
        Crops trained on and validated on.
    class_counts
        Crops per class in the data set.
    outcome
        The training code's full record.
    """

    checkpoint: Path
    base_model: Path
    val_accuracy: float
    n_train: int
    n_val: int
    class_counts: dict[str, int]
    outcome: TrainingOutcome

    def summary(self) -> str:
        return (
            f"wrote {self.checkpoint}: validation accuracy {self.val_accuracy:.3f} "
            f"({self.n_val} crops held out, {self.n_train} trained on)"
        )


def resolve_model(model: str | os.PathLike[str], progress: ProgressCallback | None = None) -> Path:
    """The checkpoint file of `model`: a path, or the cached demo model for "demo"
    (trained at first use, reporting through `progress`).
    """
    from napari_foram.classify.loading import checkpoint_file

    return checkpoint_file(model, progress)


def default_checkpoint_path(store_path: str | os.PathLike[str]) -> Path:
    """``<store folder>/<store name>_reviewed-<UTC time>.safetensors``, beside the store."""
    store = Path(store_path)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return store.with_name(f"{store.name.removesuffix('.zarr')}_reviewed-{stamp}.safetensors")


def default_export_dir(store_path: str | os.PathLike[str]) -> Path:
    """``<store folder>/<store name>_reviewed_crops``, beside the store."""
    store = Path(store_path)
    return store.with_name(f"{store.name.removesuffix('.zarr')}_reviewed_crops")


def _backbone_source(base: Path, info: Any, workdir: Path) -> str:
    """Backbone weights for `TrainConfig` that rebuild `base`'s backbone exactly.

    "imagenet" or "none" (with the recorded seed) when the base model's conv tensors
    are those untouched, so the new checkpoint records the same source; otherwise (a
    fine-tuned backbone, or one from a file) the base model's conv tensors are written
    to a state file in `workdir` and that file is the source.
    """
    import torch

    from napari_foram.classify.checkpoint import conv_sha256, load_checkpoint, new_classifier
    from napari_foram.classify.model import MissingWeightsError

    if info.head_only and info.backbone_weights in ("imagenet", "none"):
        return str(info.backbone_weights)  # rebuilt from that source on every load anyway
    model, _ = load_checkpoint(base)
    if info.backbone_weights in ("imagenet", "none"):
        with contextlib.suppress(MissingWeightsError, ValueError):
            pristine, _ = new_classifier(
                info.class_names,
                backbone_weights=info.backbone_weights,
                seed=info.backbone_seed or 0,
            )
            if conv_sha256(pristine) == conv_sha256(model):
                return str(info.backbone_weights)
    path = workdir / "backbone.pt"
    torch.save(model.conv.state_dict(), path)
    return str(path)


def fine_tune(
    data_dir: str | os.PathLike[str],
    base_model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    backbone_weights: str | None = None,
    max_epochs: int = 50,
    patience: int = 5,
    lr: float = 1e-4,
    seed: int = 0,
    device: str = "cpu",
    val_fraction: float = DEFAULT_VAL_FRACTION,
    progress: ProgressCallback | None = None,
    warm_start: bool = True,
) -> FineTuneResult:
    """Train a new checkpoint on an ImageFolder of reviewed crops, from the current model.

    The project's training code runs as ``napari-foram train`` runs it (the stratified
    split written beside the checkpoint, phase 1: the dense head trained on cached conv
    features of the frozen backbone, Adam, early stopping on validation accuracy), with
    what the base model fixes: its classes *in its order* (``napari-foram train`` sorts
    the class folders, which would reorder the classes and drop empty ones), its head
    layout and input normalisation, and its backbone. With `warm_start` (the default)
    phase 1 starts from the base model's own head, so training on the reviewed crops
    adjusts what the model knew instead of starting over; ``warm_start=False`` trains a
    fresh head. The split keeps `val_fraction` of every
    class for validation and none for testing (score a model on a test set of your own
    with ``napari-foram evaluate``).

    Parameters
    ----------
    data_dir
        ImageFolder of reviewed crops (`export_validated_crops`); every class folder must
        be one of the base model's classes.
    base_model
        The current checkpoint (see `resolve_model` for "demo").
    output
        The new checkpoint (``.safetensors``); ``<stem>.split.json`` goes beside it.
    backbone_weights
        None (default): the base model's own backbone. Or "imagenet", "none" (a random
        backbone: tests) or a vgg16 state file, as ``napari-foram train
        --backbone-weights``.
    max_epochs, patience, lr, seed, device
        As ``napari-foram train`` (``--epochs``, ``--patience``, ``--lr``, ``--seed``,
        ``--device``).
    val_fraction
        Share of every class held out to validate (each class needs at least 2 crops).
    warm_start
        Start from the base model's head (True) or from a fresh one (False).
    progress
        ``progress(done, total, message)`` while loading, extracting features, training.

    Returns
    -------
    FineTuneResult
    """
    from napari_foram.classify.checkpoint import file_sha256, read_model_info, save_checkpoint
    from napari_foram.training.data import load_image_folder, save_split, split_indices
    from napari_foram.training.train import TrainConfig, train_classifier

    base = resolve_model(base_model)
    info = read_model_info(base)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    data = load_image_folder(Path(data_dir), class_names=info.class_names, progress=progress)
    counts = data.counts()
    present = {name: n for name, n in counts.items() if n > 0}
    if len(present) < 2:
        raise ValueError(
            f"fine-tuning needs validated crops of at least two classes; {data_dir} has "
            + (", ".join(f"{k} {v}" for k, v in present.items()) or "none")
        )
    few = [name for name, n in present.items() if n < 2]
    if few:
        raise ValueError(
            f"class {few[0]!r} has 1 validated crop; fine-tuning needs at least 2 of every "
            "class it holds (one to train on, one to validate): review more, or remove it"
        )
    output = Path(output)
    fractions = (1.0 - val_fraction, val_fraction, 0.0)
    split = split_indices(data.labels, seed, fractions)
    split_file = output.with_name(f"{output.stem}.split.json")
    save_split(split_file, split, data, seed=seed, fractions=fractions)
    with tempfile.TemporaryDirectory(prefix="napari-foram-review-") as tmp:
        source = backbone_weights or _backbone_source(base, info, Path(tmp))
        random_backbone = source == "none" or (
            backbone_weights is None and info.backbone_weights == "none"
        )
        # The base model's recipe: a pooled-linear head retrains from scratch in seconds
        # (no warm start needed); the study's head warm-starts from the base model's.
        pooled = info.feature_layout == "pooled"
        config = TrainConfig(
            recipe="pooled-linear" if pooled else "study",
            crop_policy=info.crop_policy,
            backbone_weights=source,
            backbone_seed=info.backbone_seed if info.backbone_seed is not None else 0,
            hidden_units=info.hidden_units,
            dropout=info.dropout,
            input_convention=info.input_convention,
            # As `napari-foram train` does: random conv features need standardising.
            standardize_features=random_backbone,
            max_epochs=max_epochs,
            patience=patience,
            lr=lr,
            seed=seed,
            device=device,
            init_head=str(base) if warm_start and backbone_weights is None and not pooled else "",
        )
        t0 = time.perf_counter()
        outcome = train_classifier(data, output, config, split=split, progress=progress)
    best = outcome.best
    best.info.training = {
        **best.info.training,
        "review": {
            "base_model": str(base),
            "base_model_sha256": file_sha256(base),
            "data_dir": str(data_dir),
            "class_counts": counts,
            "seconds": round(time.perf_counter() - t0, 2),
        },
    }
    # Saved again with the record of where the model came from (train_classifier wrote
    # the same tensors a moment ago, without it).
    save_checkpoint(output, best.model, best.info)
    return FineTuneResult(
        checkpoint=output,
        base_model=base,
        val_accuracy=float(best.val_accuracy),
        n_train=len(split["train"]),
        n_val=len(split["val"]),
        class_counts=counts,
        outcome=outcome,
    )
