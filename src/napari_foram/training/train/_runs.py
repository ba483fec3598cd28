"""One training run of the grid, and the grid's rows for the CSV."""

from __future__ import annotations

import csv
import itertools
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from napari_foram.classify.head_fit import head_scores as _head_scores

from ._config import DEFAULT_GRID, RunResult, TrainConfig
from ._head import fine_tune_conv, train_head
from ._model import _fresh_model, compute_features

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

    from napari_foram._progress import ProgressCallback
    from napari_foram.classify.checkpoint import ModelInfo
    from napari_foram.classify.model import (
        FORAMNet,
    )
    from napari_foram.training.data import (
        LabelledCrops,
    )


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
        phase2 = fine_tune_conv(
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
