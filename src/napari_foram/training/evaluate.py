"""Evaluate a checkpoint on labelled crops and write a report folder (the study's section 5).

Numbers (all in ``report.json``):

- accuracy of the deterministic network (dropout off), per-class precision, recall, F1
  and support, their macro means, and the confusion matrix (true classes in rows);
- Monte Carlo dropout over N passes: accuracy of every pass, their mean +- sd (the study:
  97.9 +- 0.5 %), the majority-vote accuracy (98.5 %) and the accuracy of the mean
  probabilities;
- calibration: expected calibration error (ECE, 10 equal-width bins) of the deterministic
  and of the MC-mean probabilities.

Files: ``report.json``, ``predictions.csv`` (one row per crop), ``confusion_matrix.csv``
and ``.png``, ``reliability.png``, ``learning_curve.png`` (accuracy against labels per
class, `evaluation_learning_curve`; for a study model the one recorded at training) and
``gallery.png`` -- the most uncertain crops
(highest predictive entropy) and the confidently wrong ones, each with a bar chart of how
the N passes voted, like the study's Fig. 5.

The conv features of each crop are computed once; only the head runs N times, with the
same sampling as `Predictor.predict` (so a seed gives the same numbers there and here),
but here every pass's probabilities are kept: the per-pass accuracies need them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram.training.data import (
    SPLIT_NAMES,
    LabelledCrops,
    load_image_folder,
    load_split,
    split_indices,
)
from napari_foram.training.metrics import (
    DEFAULT_CALIBRATION_BINS,
    accuracy,
    calibration,
    confusion_matrix,
    entropy,
    macro_scores,
    mc_dropout_accuracy,
    per_class_scores,
    sample_votes,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from napari_foram._progress import ProgressCallback

#: Crops per gallery section.
GALLERY_SIZE = 8

#: The files `evaluate` writes in the report folder (the learning curve's when it has one).
REPORT_FILES = (
    "report.json",
    "predictions.csv",
    "confusion_matrix.csv",
    "confusion_matrix.png",
    "reliability.png",
    "gallery.png",
    "learning_curve.png",
)


def _num(x: Any) -> float | None:
    """A JSON-safe float (NaN -> None)."""
    x = float(x)
    return x if np.isfinite(x) else None


def evaluate_predictions(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    sample_probs: np.ndarray | None = None,
    *,
    n_bins: int = DEFAULT_CALIBRATION_BINS,
) -> dict[str, Any]:
    """All report numbers from predictions (pure numpy, JSON-ready result).

    Parameters
    ----------
    y_true
        (N,) true class indices.
    probs
        (N, K) softmax outputs of the deterministic network (dropout off).
    class_names
        The K class names.
    sample_probs
        (S, N, K) softmax outputs of S Monte Carlo dropout passes, or None.
    n_bins
        Calibration bins.

    Returns
    -------
    dict
        ``n``, ``accuracy``, ``per_class`` {name: precision, recall, f1, support},
        ``macro`` {precision, recall, f1}, ``confusion_matrix`` (K x K lists),
        ``calibration`` {ece, bins...}; with samples also ``mc`` {samples,
        mean_accuracy, sd_accuracy, vote_accuracy, mean_prob_accuracy, ece,
        per_sample_accuracy}. Undefined values are None.
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    if p.shape != (y.size, k):
        raise ValueError(f"probs must be (N, K) = ({y.size}, {k}), got {p.shape}")
    pred = p.argmax(axis=1)
    cm = confusion_matrix(y, pred, k)
    scores = per_class_scores(cm)
    calib = calibration(p.max(axis=1), pred == y, n_bins)
    report: dict[str, Any] = {
        "n": int(y.size),
        "class_names": list(class_names),
        "accuracy": _num(accuracy(y, pred)),
        "per_class": {
            name: {
                "precision": _num(scores["precision"][i]),
                "recall": _num(scores["recall"][i]),
                "f1": _num(scores["f1"][i]),
                "support": int(scores["support"][i]),
            }
            for i, name in enumerate(class_names)
        },
        "macro": {key: _num(v) for key, v in macro_scores(scores).items()},
        "confusion_matrix": cm.tolist(),
        "calibration": _calibration_json(calib),
    }
    if sample_probs is not None:
        sp = np.asarray(sample_probs, dtype=np.float64)
        if sp.ndim != 3 or sp.shape[1:] != p.shape:
            raise ValueError(f"sample_probs must be (S, {y.size}, {k}), got {sp.shape}")
        mc = mc_dropout_accuracy(sp, y)
        mean = sp.mean(axis=0)
        mc_calib = calibration(mean.max(axis=1), mean.argmax(axis=1) == y, n_bins)
        report["mc"] = {
            "samples": int(sp.shape[0]),
            "mean_accuracy": _num(mc["mean"]),
            "sd_accuracy": _num(mc["sd"]),
            "vote_accuracy": _num(mc["vote_accuracy"]),
            "mean_prob_accuracy": _num(mc["mean_prob_accuracy"]),
            "ece": _num(mc_calib["ece"]),
            "calibration": _calibration_json(mc_calib),
            "per_sample_accuracy": [round(float(a), 6) for a in mc["per_sample"]],
        }
    return report


def _calibration_json(calib: dict[str, Any]) -> dict[str, Any]:
    return {
        "ece": _num(calib["ece"]),
        "edges": [round(float(e), 6) for e in calib["edges"]],
        "count": [int(c) for c in calib["count"]],
        "confidence": [_num(c) for c in calib["confidence"]],
        "accuracy": [_num(a) for a in calib["accuracy"]],
    }


def mc_sample_probs(
    predictor: Any,
    features: Any,
    mc_samples: int,
    *,
    seed: int | None = 0,
) -> np.ndarray:
    """Softmax outputs of every Monte Carlo dropout pass, (S, N, K) float32.

    Runs the head exactly as `Predictor.predict_features` does (the same per-crop dropout
    masks), so with the same seed its mean equals that method's ``mean_probs``.

    Parameters
    ----------
    predictor
        A `napari_foram.classify.predict.Predictor`.
    features
        (N, 25088) conv features (`Predictor.extract_features`).
    mc_samples
        S >= 1 passes with dropout on.
    seed
        Mixed into each crop's dropout key (`napari_foram.classify.mc_dropout.feature_keys`).
    """
    import torch

    from napari_foram.classify.mc_dropout import feature_keys

    n = int(mc_samples)
    if n < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
    k = predictor.info.num_classes
    out = []
    with torch.inference_mode():
        for start in range(0, features.shape[0], predictor.batch_size):
            f = features[start : start + predictor.batch_size]
            keys = torch.from_numpy(feature_keys(f, seed))
            probs = predictor.sample_probs(f.to(predictor.device), n, keys)
            out.append(probs.float().cpu().numpy())
    if not out:
        return np.zeros((n, 0, k), np.float32)
    return np.concatenate(out, axis=1).astype(np.float32)


#: Share of each class held out when `evaluate` measures a learning curve on its crops.
CURVE_HELD_OUT = 0.3


def evaluation_learning_curve(
    predictor: Any,
    features: Any,
    labels: np.ndarray,
    *,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> dict[str, Any] | None:
    """The learning curve of a "pooled" model's recipe on the crops being evaluated.

    Each class is split (seeded) into 70 % to draw training crops from and 30 % held out
    (at least one); heads of the model's own kind (a linear head with its dropout and the
    L2 weight it was trained with) are fitted on 5, 10, 20, 50 and all per class of the
    first part and scored on the second (`napari_foram.training.curve`). Features are the
    ones already computed. None for a study ("flat") model or when a class has fewer than
    3 crops: then the checkpoint's own curve, from training, is reported instead.
    """
    import copy

    import torch

    from napari_foram.training.curve import learning_curve
    from napari_foram.training.train._linear import fit_linear_head

    model = predictor.model
    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y)
    present = counts[counts > 0]
    if model.feature_layout != "pooled" or present.size < 2 or present.min() < 3:
        return None
    # The training code's stratified split: every class keeps one held-out crop at least.
    cut = split_indices(y, seed, (1.0 - CURVE_HELD_OUT, CURVE_HELD_OUT, 0.0))
    training = (predictor.info.training or {}).get("phase1") or {}
    decay = float(training.get("weight_decay", 1e-3))
    feats = features.float().cpu()

    def fit(rows: np.ndarray) -> Any:
        head = copy.deepcopy(model.head).cpu()
        fit_linear_head(
            head, feats, y, rows, np.zeros(0, np.int64), dropout=model.dropout,
            weight_decays=(decay,), seed=seed,
        )  # fmt: skip

        def predict(test: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return head(feats[test]).argmax(1).numpy()

        return predict

    curve = learning_curve(y, cut["train"], cut["val"], fit, seed=seed, progress=progress)
    curve["source"] = (
        f"the evaluated crops: {100 - 100 * CURVE_HELD_OUT:.0f} % per class to draw from, "
        f"{100 * CURVE_HELD_OUT:.0f} % held out; linear heads with L2 {decay:g}"
    )
    return curve


# ----------------------------------------------------------------------------- figures
def _figure(width: float, height: float) -> Any:
    # A bare Figure with an Agg canvas: no pyplot, no global backend switch (napari may
    # be running in this process).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: Path) -> None:
    """Counts with row-normalised colour (recall per true class)."""
    cm = np.asarray(cm)
    k = len(class_names)
    fig = _figure(1.6 + 1.1 * k, 1.2 + 1.0 * k)
    ax = fig.add_subplot(1, 1, 1)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(
                j, i, str(int(cm[i, j])), ha="center", va="center",
                color="white" if frac[i, j] > 0.5 else "black",
            )  # fmt: skip
    ax.set_xticks(range(k), class_names, rotation=30, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path)


def plot_reliability(curves: dict[str, dict[str, Any]], path: Path) -> None:
    """Reliability diagram: accuracy per confidence bin against the diagonal."""
    fig = _figure(4.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect calibration")
    for name, calib in curves.items():
        conf = np.array([np.nan if c is None else c for c in calib["confidence"]], float)
        acc = np.array([np.nan if a is None else a for a in calib["accuracy"]], float)
        ok = np.isfinite(conf)
        ece = calib["ece"]
        label = f"{name} (ECE {ece:.3f})" if ece is not None else name
        ax.plot(conf[ok], acc[ok], marker="o", label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (probability of the predicted class)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def plot_gallery(
    crops: np.ndarray,
    sections: list[tuple[str, np.ndarray]],
    votes: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    confidence: np.ndarray,
    class_names: Sequence[str],
    path: Path,
) -> None:
    """Crops in titled sections, each above a bar chart of its MC-pass votes (Fig. 5)."""
    cols = max([len(idx) for _, idx in sections] + [1])
    nrows = 2 * len(sections)
    fig = _figure(1.9 * cols, 4.0 * len(sections))
    grid = fig.add_gridspec(nrows, cols, height_ratios=[2.2, 1.0] * len(sections))
    k = len(class_names)
    short = [name[:4] for name in class_names]
    for s, (title, idx) in enumerate(sections):
        if len(idx) == 0:
            ax = fig.add_subplot(grid[2 * s, :])
            ax.axis("off")
            ax.text(0.5, 0.5, f"{title}: none", ha="center", va="center")
            continue
        for c, i in enumerate(idx):
            ax = fig.add_subplot(grid[2 * s, c])
            ax.imshow(crops[i])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(
                f"true {class_names[y_true[i]]}\npred {class_names[y_pred[i]]} "
                f"({confidence[i]:.2f})",
                fontsize=7,
                color="black" if y_true[i] == y_pred[i] else "crimson",
            )
            bar = fig.add_subplot(grid[2 * s + 1, c])
            total = max(int(votes[i].sum()), 1)
            colours = ["seagreen" if j == y_true[i] else "grey" for j in range(k)]
            bar.bar(range(k), votes[i] / total, color=colours)
            bar.set_ylim(0, 1)
            bar.set_xticks(range(k), short, fontsize=6)
            bar.tick_params(axis="y", labelsize=6)
        fig.text(0.01, 1 - (s / len(sections)) - 0.01, title, fontsize=10, va="top")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path)


# ----------------------------------------------------------------------------- evaluate
def evaluate(
    data: str | Path | LabelledCrops,
    checkpoint: str | Path,
    *,
    mc: int = 100,
    report_dir: str | Path,
    split_file: str | Path | None = None,
    subset: str | None = None,
    device: str = "cpu",
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Score a checkpoint on labelled crops and write the report folder.

    Parameters
    ----------
    data
        A data folder (DATA/<class>/images, classes named as in the checkpoint) or
        `LabelledCrops`.
    checkpoint
        The ``.safetensors`` classifier.
    mc
        Monte Carlo dropout passes (the study: 100); 1 turns the MC section off.
    report_dir
        Folder for the report files (created).
    split_file, subset
        Score only one part of a split written by training: `subset` "train", "val" or
        "test" (default "test" when a split file is given; "all" scores everything).
    device
        "cpu", "cuda" or "auto".
    seed
        Seeds the dropout masks.

    Returns
    -------
    dict
        The report (as in ``report.json``), with ``files`` naming what was written.
    """
    from napari_foram.classify.predict import Predictor

    if int(mc) < 1:
        raise ValueError(f"mc must be >= 1, got {mc}")
    if not isinstance(data, LabelledCrops) and not Path(data).is_dir():
        raise ValueError(f"data folder not found: {data}")
    if not isinstance(data, LabelledCrops):
        from napari_foram._outputs import check_output_dir

        # Before any work: a report folder inside the data would be read as a class
        # folder by the next run, and one inside a tally store would damage it.
        check_output_dir(report_dir, "report folder", inputs=[data])
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    names = predictor.class_names
    if isinstance(data, LabelledCrops):
        crops_data = data
        if tuple(data.class_names) != tuple(names):
            raise ValueError(
                f"data classes {list(data.class_names)} differ from the model's {list(names)}"
            )
    else:
        crops_data = load_image_folder(
            data, class_names=names, progress=progress, crop_policy=predictor.info.crop_policy
        )
    subset = subset or ("test" if split_file is not None else "all")
    if subset != "all":
        if subset not in SPLIT_NAMES:
            raise ValueError(f"subset must be train, val, test or all, got {subset!r}")
        if split_file is None:
            raise ValueError(f"subset {subset!r} needs a split file")
        indices = load_split(split_file, crops_data)[subset]
        if len(indices) == 0:
            raise ValueError(f"the {subset} part of {split_file} is empty")
        crops_data = crops_data.subset(indices)

    crops, y = crops_data.crops, crops_data.labels
    import torch

    parts = []
    for start in range(0, len(crops), 32):
        parts.append(predictor.extract_features(crops[start : start + 32]))
        if progress is not None:
            progress(min(start + 32, len(crops)), len(crops), "VGG16 features")
    features = torch.cat(parts)
    deterministic = predictor.predict_features(features, mc_samples=1)
    probs = deterministic.mean_probs
    samples = mc_sample_probs(predictor, features, mc, seed=seed) if mc > 1 else None
    report = evaluate_predictions(y, probs, names, samples)

    # Per crop: what the gallery and predictions.csv show.
    mean = samples.mean(axis=0) if samples is not None else probs.astype(np.float64)
    pred = mean.argmax(axis=1)
    conf = mean.max(axis=1)
    ent = entropy(mean)
    votes = (
        sample_votes(samples)
        if samples is not None
        else np.eye(len(names), dtype=np.int64)[probs.argmax(axis=1)]
    )
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {name: str(out / name) for name in REPORT_FILES if name != "learning_curve.png"}
    rel = crops_data.relative_paths()
    # Crops given as `LabelledCrops` may carry names that are not UTF-8 (a data folder's
    # are skipped when loaded): escaped, never a failure after half the report is out.
    with Path(files["predictions.csv"]).open(
        "w", newline="", encoding="utf-8", errors="backslashreplace"
    ) as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["path", "true", "predicted", "probability", "entropy", "vote_fraction", "correct"]
            + [f"p_{n}" for n in names]
        )
        for i in range(len(y)):
            writer.writerow(
                [
                    rel[i],
                    names[y[i]],
                    names[pred[i]],
                    round(float(conf[i]), 5),
                    round(float(ent[i]), 5),
                    round(float(votes[i].max() / max(votes[i].sum(), 1)), 4),
                    int(pred[i] == y[i]),
                ]
                + [round(float(v), 5) for v in mean[i]]
            )
    with Path(files["confusion_matrix.csv"]).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["true \\ predicted", *names])
        for i, row in enumerate(report["confusion_matrix"]):
            writer.writerow([names[i], *row])
    plot_confusion_matrix(np.asarray(report["confusion_matrix"]), names, Path(files[
        "confusion_matrix.png"]))  # fmt: skip
    curves = {"deterministic": report["calibration"]}
    if "mc" in report:
        curves[f"MC mean ({mc} passes)"] = report["mc"]["calibration"]
    plot_reliability(curves, Path(files["reliability.png"]))
    uncertain = np.argsort(-ent, kind="stable")[:GALLERY_SIZE]
    wrong = np.flatnonzero(pred != y)
    confident_wrong = wrong[np.argsort(-conf[wrong], kind="stable")][:GALLERY_SIZE]
    plot_gallery(
        crops,
        [
            ("most uncertain (highest predictive entropy)", uncertain),
            ("confidently wrong (highest probability, wrong class)", confident_wrong),
        ],
        votes,
        y,
        pred,
        conf,
        names,
        Path(files["gallery.png"]),
    )

    info = predictor.info
    report["ece"] = report["calibration"]["ece"]
    report["model"] = {
        "path": str(checkpoint),
        "sha256": info.sha256,
        "class_names": list(names),
        "backbone_weights": info.backbone_weights,
        "training_metrics": info.metrics,
    }
    report["data"] = {
        "root": str(crops_data.root) if crops_data.root is not None else None,
        "subset": subset,
        "split_file": None if split_file is None else str(split_file),
        "counts": crops_data.counts(),
        "skipped": list(crops_data.skipped),
    }
    report["settings"] = {"mc_samples": int(mc), "seed": int(seed), "device": str(device)}
    curve = evaluation_learning_curve(predictor, features, y, seed=seed, progress=progress)
    if curve is None:
        curve = (info.metrics or {}).get("learning_curve")
        if curve:
            curve = {**curve, "source": "the checkpoint's training record"}
    report["learning_curve"] = curve
    if curve:
        from napari_foram.training.curve import plot_learning_curve

        files["learning_curve.png"] = str(out / "learning_curve.png")
        plot_learning_curve(curve, files["learning_curve.png"])
    report["gallery"] = {
        "most_uncertain": [rel[i] for i in uncertain],
        "confidently_wrong": [rel[i] for i in confident_wrong],
    }
    report["files"] = files
    Path(files["report.json"]).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
