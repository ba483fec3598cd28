"""Train a classifier end to end: grid search, final fit, unsure rule, saved model."""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from napari_foram.classify.checkpoint import nonfinite_tensor, save_checkpoint
from napari_foram.classify.density import (
    DEFAULT_FALSE_FLAG_RATE,
    FeatureDensity,
    columns_for,
    fit_threshold,
    pooling_for,
)
from napari_foram.classify.predict import resolve_device
from napari_foram.training.data import (
    DEFAULT_FRACTIONS,
    LabelledCrops,
    load_image_folder,
    load_split,
    save_split,
    split_indices,
)
from napari_foram.training.metrics import mean_sd

from ._config import RunResult, TrainConfig, TrainingOutcome
from ._model import build_base_model, compute_features
from ._runs import _run_row, _write_csv, grid_configs, train_run

if TYPE_CHECKING:
    from collections.abc import Sequence

    from napari_foram._progress import ProgressCallback


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
    """Train with `config.recipe` (default: pooled-linear) and save the checkpoint best on
    validation.

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
    elif tuple(features.shape) != (len(data), base[0].feature_dim):
        raise ValueError(
            f"features must be ({len(data)}, {base[0].feature_dim}), got {tuple(features.shape)}"
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
    _refuse_diverged(best, split)  # before anything is measured on (or fitted to) it
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
    if best.config.recipe == "pooled-linear":
        best.info.temperature = float(best.phase1["temperature"])
    held_name = "test" if len(split["test"]) else "val"
    held = np.asarray(split[held_name])
    # Fine-tuning changed the conv blocks: what follows reads the tuned model's features.
    tuned = best.phase2 is not None and best.phase2.get("best_epoch", 0) > 0
    if tuned:
        features = compute_features(best.model, best.info, data.crops, device=device)
    if len(held):
        metrics.update(_held_out_calibration(best, features[held], data.labels[held], held_name))
    if config.learning_curve and len(held) and not tuned:
        # Not after fine-tuning: the tuned blocks learnt from every training label, so
        # heads on their features at n labels per class would flatter the curve.
        curve = _learning_curve(best, base, features, data.labels, split, held, progress)
        metrics["learning_curve"] = curve
        from napari_foram.training.curve import plot_learning_curve

        files["learning_curve"] = str(output.with_name(f"{output.stem}.learning_curve.png"))
        plot_learning_curve(curve, files["learning_curve"])
    refit = _refit_on_all(best, features, data.labels, split)
    best.info.training = {
        "kind": f"{best.config.recipe}-recipe",
        "final_fit": refit,
        "recipe": best.config.recipe,
        "crop_policy": data.crop_policy,
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
    _refuse_diverged(best, split)  # the refit on all crops may have diverged too
    save_checkpoint(output, best.model, best.info)
    files["checkpoint"] = str(output)
    precision = _decide_precision(best, data, split, progress)
    return TrainingOutcome(
        best=best,
        runs=runs,
        grid=outcome_grid,
        checkpoint=output,
        files=files,
        interrupted=interrupted,
        metrics={**best.info.metrics, "precision": precision},
    )


def _refuse_diverged(run: RunResult, split: dict[str, np.ndarray]) -> None:
    """ValueError (one line, nothing written) when `run` diverged: a NaN/inf validation
    loss or NaN/inf weights. Such a model answers NaN for every crop.
    """
    problems = []
    if len(split["val"]) and not np.isfinite(run.val_loss):
        problems.append(f"validation loss {run.val_loss}")
    if (bad := nonfinite_tensor(run.model.state_dict())) is not None:
        problems.append(f"tensor {bad} holds NaN/inf values")
    if problems:
        hint = ""
        if run.phase2 and run.phase2.get("best_epoch", 0) > 0:
            hint = f"; try a lower --fine-tune-lr than {run.config.fine_tune_lr:g}"
        elif run.config.recipe != "pooled-linear":
            hint = f"; try a lower --lr than {run.config.lr:g}"
        raise ValueError(f"training diverged ({'; '.join(problems)}): no model written{hint}")


#: Fewest labelled images a class needs: one each to train on, validate and test with.
MIN_PER_CLASS = 3


def check_trainable(data: LabelledCrops) -> None:
    """One-line ValueError when `data` cannot train a classifier: a single class, a class
    folder with no readable image, or a class with fewer than `MIN_PER_CLASS` images.
    """
    counts = data.counts()
    root = data.root
    if root is not None:
        for name in data.class_names:
            folder = root / name
            if counts.get(name, 0) == 0 and folder.is_dir():
                lost = [line for line in data.skipped if line.startswith(f"{folder}/")]
                why = f" (first: {lost[0].removeprefix(f'{folder}/')})" if lost else ""
                raise ValueError(
                    f"class folder {folder} has no readable image: {len(lost)} file(s) "
                    f"skipped{why}"
                )
    present = [name for name, n in counts.items() if n > 0]
    if len(present) < 2:
        raise ValueError(
            f"training needs at least 2 classes with images, found {len(present)} "
            f"({', '.join(present) or 'none'}): add a folder per class"
        )
    few = {name: n for name, n in counts.items() if 0 < n < MIN_PER_CLASS}
    if few:
        listed = ", ".join(f"{name} ({n})" for name, n in few.items())
        raise ValueError(
            f"class(es) with fewer than {MIN_PER_CLASS} images: {listed}; label at least "
            f"{MIN_PER_CLASS} per class (one each to train, validate and test with)"
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
    run.model.density = FeatureDensity.fit(
        feats[tr],
        data.labels[tr],
        len(data.class_names),
        pooling=pooling_for(run.model.feature_layout),
        columns=columns_for(run.model.feature_layout),
    )
    calibration = va if len(va) else tr
    distances = run.model.density.score(feats[calibration])
    return {
        "measure": "feature_distance",
        "threshold": round(fit_threshold(distances, false_flag_rate), 4),
        "false_flag_rate": false_flag_rate,
        "set_on": f"{len(calibration)} {'validation' if len(va) else 'training'} crops",
    }


def _refit_on_all(
    run: RunResult, features: torch.Tensor, labels: np.ndarray, split: dict[str, np.ndarray]
) -> str:
    """`TrainConfig.refit_all`: the pooled-linear head fitted again, in place, on every
    labelled crop, with the chosen L2 weight and temperature. Returns what the saved head
    was fitted on, for the training record.
    """
    from ._linear import fit_linear_head

    trained_on = f"the training split ({len(split['train'])} crops)"
    rows = np.sort(np.concatenate([np.asarray(split[k]) for k in ("train", "val", "test")]))
    if (
        run.config.recipe != "pooled-linear"
        or not run.config.refit_all
        or rows.size == len(split["train"])
    ):
        return trained_on
    fit_linear_head(
        run.model.head,
        features,
        labels,
        rows,
        np.zeros(0, np.int64),
        dropout=run.config.dropout,
        weight_decays=(float(run.phase1["weight_decay"]),),
        seed=run.config.seed,
        temperature=float(run.phase1["temperature"]),
    )
    return (
        f"all {rows.size} labelled crops (refit after the held-out figures were measured on "
        f"a head fitted to {trained_on})"
    )


def _decide_precision(
    run: RunResult,
    data: LabelledCrops,
    split: dict[str, np.ndarray],
    progress: ProgressCallback | None,
) -> dict[str, Any] | None:
    """Decide this machine's CPU compute path for the new model on its own held-out crops
    (`napari_foram.classify.precision.decide_precision_on_crops`), so ``auto`` never
    reuses another model's decision; cached under the saved file's digest. With fewer
    held-out crops than the rule needs, fp32 stays ("not enough evidence"), at once.
    """
    from napari_foram.classify.precision import decide_precision_on_crops
    from napari_foram.classify.predict import fp32_reference

    if run.config.device != "cpu":
        return None
    rows = np.concatenate([np.asarray(split["val"]), np.asarray(split["test"])])
    if rows.size == 0:
        return None
    choice = decide_precision_on_crops(
        run.model,
        run.info,
        data.crops[np.sort(rows)],
        label="held-out crops of this training",
        progress=progress,
        reference=fp32_reference,
    )
    return {"path": choice.path, "note": choice.note, "describe": choice.describe()}


def _held_out_calibration(
    run: RunResult, features: torch.Tensor, labels: np.ndarray, name: str
) -> dict[str, Any]:
    """Accuracy and ECE of the MC mean (`MC_SAMPLES` passes) on held-out crops, as users
    read it (and the deterministic ECE beside it).
    """
    from napari_foram.classify.predict import Predictor
    from napari_foram.defaults import MC_SAMPLES
    from napari_foram.training.metrics import calibration

    predictor = Predictor(run.model, run.info, device="cpu", precision="fp32")
    mc = predictor.predict_features(features, mc_samples=MC_SAMPLES)
    one = predictor.predict_features(features, mc_samples=1)
    y = np.asarray(labels)
    return {
        f"{name}_mc_accuracy": float(np.mean(mc.class_index == y)),
        f"{name}_ece_mc": calibration(mc.mean_probs.max(1), mc.class_index == y)["ece"],
        f"{name}_ece": calibration(one.mean_probs.max(1), one.class_index == y)["ece"],
        "calibrated_on": name,
        "temperature": run.info.temperature,
    }


def _learning_curve(
    run: RunResult,
    base: tuple[Any, Any],
    features: torch.Tensor,
    labels: np.ndarray,
    split: dict[str, np.ndarray],
    held: np.ndarray,
    progress: ProgressCallback | None,
) -> dict[str, Any]:
    """`training.curve.learning_curve` of this run's recipe on its cached features:
    heads trained on n per class of the training crops, scored on the held-out ones. The
    pooled-linear recipe reuses the L2 weight the full run chose (no inner
    cross-validation per point: seconds instead of minutes); the temperature does not
    change the arg-max, so it is skipped.
    """
    from napari_foram.training.curve import learning_curve

    from ._head import train_head
    from ._model import _fresh_model

    config = replace(
        run.config,
        learning_curve=False,
        weight_decays=(float(run.phase1.get("weight_decay", run.config.weight_decays[0])),),
    )
    names = run.info.class_names
    # Every fit starts from the same head (`_fresh_model` draws it from `config.seed`, and
    # loads `init_head` where one is given): drawn once, copied per fit. Building the whole
    # network per fit drew a new VGG16 each time (a second or more on a CPU) for a head
    # of a few hundred thousand weights.
    start_head = _fresh_model(base[0], base[1], config, names)[0].head

    def fit(rows: np.ndarray) -> Any:
        head = copy.deepcopy(start_head)
        train_head(head, features, labels, rows, np.zeros(0, np.int64), config)

        def predict(test_rows: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return head(features[test_rows].float()).argmax(1).numpy()

        return predict

    curve = learning_curve(
        labels, np.asarray(split["train"]), held, fit, repeats=5, seed=run.config.seed,
        progress=progress,
    )  # fmt: skip
    curve["held_out"] = "test" if len(split["test"]) else "val"
    curve["recipe"] = run.config.recipe
    return curve


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
    data = load_image_folder(data_dir, progress=progress, crop_policy=config.crop_policy)
    check_trainable(data)
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
