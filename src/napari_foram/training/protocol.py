"""The study's protocol on the synthetic benchmark, for any backbone and input convention.

One fixed benchmark (`benchmark_data`): detector crops of synthetic trays, 60 per class to
train on (80/20 train/validation, stratified) and 40 per class held out from trays no
training run sees, plus an out-of-distribution set (`napari_foram.synthetic_ood`: kinds of
object none of the four classes is). For each backbone (`ProtocolArm`), repeated with
seeds 0..R-1 on the same split:

- phase 1: the Table-1 head on frozen conv features (`train.train_head`);
- phase 2 (optional): VGG16 blocks 4-5 and the head on augmented crops
  (`train.fine_tune_conv`, the study's augmentation);
- after each phase, on the held-out crops: deterministic accuracy, MC dropout (N passes)
  mean +- sd of the per-pass accuracies, majority vote, accuracy of the mean
  probabilities, ECE (`evaluate.evaluate_predictions`);
- after phase 1, "not one of these classes": AUROC of each uncertainty measure for
  held-out crops against the out-of-distribution set, and a rule ("feature distance above
  its 95th percentile on the validation crops") with its false-flag rate on the held-out
  crops and its flag rate on the strangers.

`run_protocol` returns JSON-ready records; `scripts/study_protocol.py` runs it and writes
the tables in docs/benchmarks.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_foram.classify.density import (
    DEFAULT_FALSE_FLAG_RATE,
    FeatureDensity,
    auroc,
    columns_for,
    fit_threshold,
    pooling_for,
)
from napari_foram.classify.predict import Predictor
from napari_foram.training.data import LabelledCrops, split_indices
from napari_foram.training.evaluate import evaluate_predictions, mc_sample_probs
from napari_foram.training.train import (
    TrainConfig,
    _fresh_model,
    build_base_model,
    compute_features,
    fine_tune_conv,
    train_head,
)

Progress = Callable[[str], None]
#: Seeds of the benchmark's tray sets (training and held out never share a tray).
TRAIN_SEED = 123
HELD_OUT_SEED = 456
OOD_SEED = 789


@dataclass(frozen=True)
class BenchmarkData:
    """The fixed synthetic benchmark: training crops, held-out crops, strangers."""

    train: LabelledCrops
    held_out: LabelledCrops
    ood_crops: np.ndarray
    ood_kinds: list[str]


@dataclass(frozen=True)
class ProtocolArm:
    """One backbone setting of the comparison."""

    name: str
    backbone_weights: str  # "imagenet", "none" or a file
    recipe: str = "study"  # `train.RECIPES`
    input_convention: str = ""  # "" = the weights' own
    standardize_features: bool = False
    pooled_features: bool = False
    fine_tune: bool = True
    ood: bool = True


def benchmark_data(
    n_train_per_class: int = 60, n_held_per_class: int = 40, n_ood_per_kind: int = 25
) -> BenchmarkData:
    """Render the benchmark (deterministic): detector crops of synthetic trays."""
    from napari_foram.classify.demo_model import HELD_OUT_OFFSET, render_demo_crops
    from napari_foram.synthetic_ood import render_ood_set

    def labelled(n: int, seed: int, start: int) -> LabelledCrops:
        crops, labels, names = render_demo_crops(n, seed=seed, start=start)
        return LabelledCrops(crops, labels, names, [Path(f"crop-{i}") for i in range(len(crops))])

    ood, kinds = render_ood_set(n_ood_per_kind, seed=OOD_SEED)
    return BenchmarkData(
        train=labelled(n_train_per_class, TRAIN_SEED, 0),
        held_out=labelled(n_held_per_class, HELD_OUT_SEED, HELD_OUT_OFFSET),
        ood_crops=ood,
        ood_kinds=list(kinds),
    )


def _table_row(report: dict[str, Any]) -> dict[str, Any]:
    mc = report.get("mc") or {}
    return {
        "accuracy": report["accuracy"],
        "mc_mean_accuracy": mc.get("mean_accuracy"),
        "mc_sd_accuracy": mc.get("sd_accuracy"),
        "vote_accuracy": mc.get("vote_accuracy"),
        "mean_prob_accuracy": mc.get("mean_prob_accuracy"),
        "ece": report["calibration"]["ece"],
        "mc_ece": mc.get("ece"),
    }


def _score(
    predictor: Predictor, features: torch.Tensor, labels: np.ndarray, mc: int, seed: int
) -> dict[str, Any]:
    """Table-2 numbers of a model on held-out features."""
    with torch.inference_mode():
        logits = torch.cat(
            [predictor.model.head(features[s : s + 256]) for s in range(0, len(features), 256)]
        )
    probs = torch.softmax(logits.float(), dim=1).numpy()
    samples = mc_sample_probs(predictor, features, mc, seed=seed)
    return _table_row(
        evaluate_predictions(labels, probs, predictor.info.class_names, sample_probs=samples)
    )


def _ood_record(
    predictor: Predictor,
    train_features: torch.Tensor,
    train_labels: np.ndarray,
    val_features: torch.Tensor,
    held_features: torch.Tensor,
    ood_features: torch.Tensor,
    ood_kinds: Sequence[str],
    mc: int,
) -> dict[str, Any]:
    """AUROC of every measure (held-out crops vs strangers) and the default rule's rates."""
    k = predictor.info.num_classes
    density = FeatureDensity.fit(
        train_features,
        train_labels,
        k,
        pooling=pooling_for(predictor.model.feature_layout),
        columns=columns_for(predictor.model.feature_layout),
    )
    predictor.model.density = density.to(predictor.device)
    pin = predictor.predict_features(held_features, mc_samples=mc, seed=0)
    pout = predictor.predict_features(ood_features, mc_samples=mc, seed=0)
    pval = predictor.predict_features(val_features, mc_samples=1)
    measures = {
        "mutual_information": (pin.mutual_information, pout.mutual_information),
        "entropy": (pin.entropy, pout.entropy),
        "vote": (1.0 - pin.vote_fraction, 1.0 - pout.vote_fraction),
        "max_probability": (-pin.mean_probs.max(1), -pout.mean_probs.max(1)),
        "feature_distance": (pin.feature_distance, pout.feature_distance),
    }
    kinds = np.asarray(ood_kinds)
    record: dict[str, Any] = {
        "auroc": {m: round(auroc(a, b), 4) for m, (a, b) in measures.items()},
        "auroc_by_kind": {
            kind: {
                m: round(auroc(a, b[kinds == kind]), 4)
                for m, (a, b) in measures.items()
                if m in ("mutual_information", "feature_distance")
            }
            for kind in sorted(set(ood_kinds))
        },
        "ood_predicted_as": {
            kind: np.bincount(pout.class_index[kinds == kind], minlength=k).tolist()
            for kind in sorted(set(ood_kinds))
        },
    }
    threshold = fit_threshold(pval.feature_distance, DEFAULT_FALSE_FLAG_RATE)
    record["rule"] = {
        "measure": "feature_distance",
        "threshold": round(threshold, 4),
        "set_on": f"{len(val_features)} validation crops, {DEFAULT_FALSE_FLAG_RATE:.0%} flagged",
        "false_flag_rate_held_out": round(float(np.mean(pin.feature_distance > threshold)), 4),
        "flag_rate_ood": round(float(np.mean(pout.feature_distance > threshold)), 4),
    }
    predictor.model.density = None
    return record


def run_arm(
    arm: ProtocolArm,
    data: BenchmarkData,
    *,
    repeats: int = 5,
    mc: int = 100,
    fine_tune_lr: float = 1e-7,
    fine_tune_epochs: int = 3,
    precision: str = "auto",
    feature_cache: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Phase 1 (and 2) `repeats` times for one backbone setting; JSON-ready records."""
    say = progress or (lambda message: None)
    t0 = time.perf_counter()
    config = TrainConfig(
        recipe=arm.recipe,
        backbone_weights=arm.backbone_weights,
        input_convention=arm.input_convention,
        standardize_features=arm.standardize_features,
        pooled_features=arm.pooled_features,
        fine_tune_lr=fine_tune_lr,
        fine_tune_epochs=fine_tune_epochs,
        precision=precision,
        patience=5,
        max_epochs=50,
    )
    names = data.train.class_names
    base = build_base_model(config, names)
    say(f"{arm.name}: VGG16 features")
    train_f = compute_features(
        base[0], base[1], data.train.crops, cache_dir=feature_cache, data_hash=None
    )
    held_f = compute_features(
        base[0], base[1], data.held_out.crops, cache_dir=feature_cache, data_hash=None
    )
    ood_f = (
        compute_features(base[0], base[1], data.ood_crops, cache_dir=feature_cache)
        if arm.ood
        else None
    )
    t_features = time.perf_counter() - t0
    split = split_indices(data.train.labels, 0, (0.8, 0.2, 0.0))
    tr, va = split["train"], split["val"]
    y, y_held = data.train.labels, data.held_out.labels
    runs = []
    for r in range(repeats):
        cfg = replace(config, seed=r)
        model, info = _fresh_model(base[0], base[1], cfg, names)
        t1 = time.perf_counter()
        phase1 = train_head(model.head, train_f, y, tr, va, cfg)
        predictor = Predictor(model, info, device="cpu", precision="fp32")
        run: dict[str, Any] = {
            "seed": r,
            "phase1": {
                "best_epoch": phase1["best_epoch"],
                "val_accuracy": phase1["val_accuracy"],
                **_score(predictor, held_f, y_held, mc, seed=r),
            },
        }
        if ood_f is not None:
            run["ood"] = _ood_record(
                predictor,
                train_f[tr],
                y[tr],
                train_f[va],
                held_f,
                ood_f,
                data.ood_kinds,
                mc,
            )
        run["phase1"]["seconds"] = round(time.perf_counter() - t1, 1)
        say(f"{arm.name} run {r + 1}/{repeats}: head {run['phase1']['accuracy']:.3f}")
        if arm.fine_tune:
            t2 = time.perf_counter()
            phase2 = fine_tune_conv(
                model,
                data.train.crops,
                y,
                tr,
                va,
                cfg,
                baseline=(phase1["val_accuracy"], phase1["val_loss"]),
                input_convention=info.input_convention,
            )
            tuned_f = (
                compute_features(model, info, data.held_out.crops)
                if phase2["best_epoch"] > 0
                else held_f
            )
            predictor = Predictor(model, info, device="cpu", precision="fp32")
            run["phase2"] = {
                "best_epoch": phase2["best_epoch"],
                "epochs_run": phase2["epochs_run"],
                "val_accuracy": phase2["val_accuracy"],
                **_score(predictor, tuned_f, y_held, mc, seed=r),
                "seconds": round(time.perf_counter() - t2, 1),
            }
            say(f"{arm.name} run {r + 1}/{repeats}: fine-tuned {run['phase2']['accuracy']:.3f}")
        runs.append(run)
    return {
        "arm": arm.name,
        "recipe": arm.recipe,
        "backbone": base[1].backbone_id,
        "input_convention": base[1].input_convention,
        "standardize_features": arm.standardize_features,
        "pooled_features": arm.pooled_features,
        "n_train": len(tr),
        "n_val": len(va),
        "n_held_out": len(y_held),
        "n_ood": 0 if ood_f is None else len(ood_f),
        "mc_samples": mc,
        "fine_tune_lr": fine_tune_lr if arm.fine_tune else None,
        "fine_tune_epochs": fine_tune_epochs if arm.fine_tune else None,
        "precision_phase2": precision,
        "seconds_features": round(t_features, 1),
        "seconds_total": round(time.perf_counter() - t0, 1),
        "runs": runs,
        "summary": summarise(runs),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sd over the repeats of every number in the runs' phase and OOD records."""

    def stat(values: list[float]) -> dict[str, float | None]:
        v = np.asarray([x for x in values if x is not None], dtype=np.float64)
        if v.size == 0:
            return {"mean": None, "sd": None}
        return {
            "mean": round(float(v.mean()), 4),
            "sd": round(float(v.std(ddof=1)) if v.size > 1 else 0.0, 4),
        }

    out: dict[str, Any] = {}
    for phase in ("phase1", "phase2"):
        rows = [r[phase] for r in runs if phase in r]
        if rows:
            keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float))]
            out[phase] = {k: stat([row[k] for row in rows]) for k in keys}
    oods = [r["ood"] for r in runs if "ood" in r]
    if oods:
        out["ood_auroc"] = {m: stat([o["auroc"][m] for o in oods]) for m in oods[0]["auroc"]}
        out["rule"] = {
            k: stat([o["rule"][k] for o in oods])
            for k in ("threshold", "false_flag_rate_held_out", "flag_rate_ood")
        }
    return out
