"""The learning curve: held-out accuracy against labelled crops per class.

It answers the question a lab asks before picking specimens: how many per class are
enough? For each size n (5, 10, 20, 50 per class, then all), `repeats` times with
different seeds, n crops per class are drawn from the training rows, a head is trained on
their features with the model's recipe, and its accuracy is measured on the held-out
rows. A class with fewer than n training crops gives all it has (the point records how
many were used), and a size no class reaches beyond "all" is left out.

Heads train on cached features, so the whole curve costs seconds, not VGG16 passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pathlib import Path

#: Fit on rows, predict classes for other rows: ``fit(train_rows)(test_rows) -> labels``.
FitPredict = Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]


def draw_per_class(labels: np.ndarray, rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to `n` of `rows` per class, drawn at random (seeded), sorted."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels[rows]):
        mine = rows[labels[rows] == c]
        out.append(rng.permutation(mine)[:n])
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def learning_curve(
    labels: np.ndarray,
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    fit: FitPredict,
    *,
    sizes: Sequence[int] = (5, 10, 20, 50),
    repeats: int = 5,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Accuracy on `test_rows` of heads fitted on n per class of `train_rows`.

    Returns ``{"points": [{"per_class", "n_train", "accuracy_mean", "accuracy_sd",
    "accuracies"}...], "n_test", "repeats", "sizes"}``; the last point (``per_class``
    "all") uses every training row once (its SD then comes from the fit's own seeds).
    """
    y = np.asarray(labels, dtype=np.int64)
    tr = np.asarray(train_rows, dtype=np.int64)
    te = np.asarray(test_rows, dtype=np.int64)
    if te.size == 0:
        raise ValueError("a learning curve needs held-out crops")
    per_class = np.bincount(y[tr])
    largest = int(per_class[per_class > 0].max()) if tr.size else 0
    wanted: list[int | str] = [int(n) for n in sizes if int(n) < largest]
    wanted.append("all")
    total = len(wanted) * int(repeats)
    points = []
    done = 0
    for n in wanted:
        accs, used = [], []
        for r in range(int(repeats)):
            rows = tr if n == "all" else draw_per_class(y, tr, int(n), seed + 1000 * r)
            if np.unique(y[rows]).size < 2:
                continue
            predict = fit(rows)
            accs.append(float(np.mean(predict(te) == y[te])))
            used.append(int(rows.size))
            done += 1
            if progress is not None:
                progress(done, total, f"learning curve, {n} per class")
        if not accs:
            continue
        points.append(
            {
                "per_class": n,
                "n_train": int(np.mean(used)),
                "accuracy_mean": float(np.mean(accs)),
                "accuracy_sd": float(np.std(accs)),
                "accuracies": [round(a, 4) for a in accs],
            }
        )
    return {
        "points": points,
        "n_test": int(te.size),
        "classes": int(np.unique(y[tr]).size),
        "repeats": int(repeats),
        "sizes": [str(n) for n in wanted],
    }


def plot_learning_curve(curve: dict[str, Any], path: str | Path, title: str = "") -> None:
    """Accuracy (mean +- SD over repeats) against labelled crops per class, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = curve["points"]
    fig = Figure(figsize=(5.2, 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    # Each point sits at the crops per class it really used (a class smaller than n gives
    # all it has, so "50" on a set of 42-107 a class lies left of 50).
    classes = max(int(curve.get("classes", 1)), 1)
    xs = [p["n_train"] / classes for p in points]
    means = np.array([p["accuracy_mean"] for p in points]) * 100
    sds = np.array([p["accuracy_sd"] for p in points]) * 100
    ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, color="#1f77b4")
    for i, (x, m, p) in enumerate(zip(xs, means, points, strict=True)):
        label = "all" if p["per_class"] == "all" else f"{p['per_class']}/class"
        if i + 1 < len(xs) and xs[-1] < 1.1 * x:
            continue  # nearly every crop already: the "all" label says it
        # Below the point, centred: labels of close points then sit side by side.
        ax.annotate(f"{label}\n{m:.0f} %", (x, m), textcoords="offset points", xytext=(0, -24),
                    ha="center", fontsize=7)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks([t for t in (5, 10, 20, 50, 100, 200, 500) if t <= max(xs) * 1.5])
    ax.get_xaxis().set_major_formatter("{x:g}")
    ax.minorticks_off()
    ax.set_xlim(min(xs) / 1.3, max(xs) * 1.3)
    ax.set_xlabel("labelled crops per class, mean over classes (log scale)")
    ax.set_ylabel(f"held-out accuracy, % ({curve['n_test']} crops)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or f"Learning curve (mean +- SD of {curve['repeats']} draws)", fontsize=9)
    fig.tight_layout()
    fig.savefig(str(path))
