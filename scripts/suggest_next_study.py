"""How many labels "suggest next" needs against random order (issue 25, docs/benchmarks.md).

On a labelled image folder (default: ../shared/realdata/radiolaria_genera), with the
ImageNet VGG16 backbone: the pooled features of every picture are computed once (the
ones a tally store keeps), the pictures split per class into a pool (60 %) and a fixed
test set (40 %). A head trained on the whole pool gives the full-data accuracy. Then,
starting from no labels, labels are added five at a time, in `teaching.suggest_next`
order (uncertainty x diversity, from the head trained on the labels so far) or in random
order; after each step the head is trained again on the labels (`teaching.teach`, the
widget's retrain) and scored on the test set. Reported per repeat and as medians: the
labels each order needs to reach 80 % (and 90 %) of the full-data accuracy.

Run: NAPARI_FORAM_VGG16_WEIGHTS=... python scripts/suggest_next_study.py [FOLDER]
       [--repeats 5] [--step 5] [--max-labels 120] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def features_of(folder: Path, cache: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pooled ImageNet features of every picture (cached in `cache`)."""
    if cache.is_file():
        data = np.load(cache, allow_pickle=False)
        return data["features"], data["labels"], [str(c) for c in data["classes"]]
    from napari_foram.classify.checkpoint import new_classifier
    from napari_foram.classify.predict import Predictor
    from napari_foram.training.data import load_image_folder

    data = load_image_folder(folder, crop_policy="fit")
    model, info = new_classifier(list(data.class_names), backbone_weights="imagenet")
    predictor = Predictor(model, info, device="cpu", precision="fp32")
    parts = []
    for start in range(0, len(data.crops), 16):
        out = predictor.predict(data.crops[start : start + 16], mc_samples=1, keep_features=True)
        assert out.kept_features is not None
        parts.append(out.kept_features)
        print(f"features {start + 16}/{len(data.crops)}", file=sys.stderr)
    feats = np.concatenate(parts)
    np.savez(cache, features=feats, labels=data.labels, classes=np.array(data.class_names))
    return feats, np.asarray(data.labels), list(data.class_names)


class HeadOnFeatures:
    """`teaching.teach` on a subset of rows, predicting every row: the widget's loop."""

    def __init__(self, feats: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
        from napari_foram.classify.checkpoint import new_classifier
        from napari_foram.classify.predict import Predictor

        self.feats, self.labels, self.classes = feats, labels, classes
        model, info = new_classifier(classes, backbone_weights="none", feature_layout="pooled")
        self.base = Predictor(model, info, device="cpu", precision="fp32")

    def fit_predict(self, rows: np.ndarray) -> tuple[np.ndarray, list[int]] | None:
        """(probabilities of every row, store class index per model class), or None
        while fewer than two classes have two labels.
        """
        import torch

        from napari_foram.teaching import LabelSet, teach

        labels = LabelSet(
            self.feats[rows],
            self.labels[rows],
            self.classes,
            [("pool", int(r)) for r in rows],
            self.base.feature_space,
            reference=self.feats,  # every specimen of the "sample", as the widget has
        )
        try:
            taught = teach(labels, self.base, unsure_rule=False)
        except ValueError:
            return None
        where = [self.classes.index(c) for c in taught.info.class_names]
        with torch.inference_mode():
            logits = taught.model.head(torch.from_numpy(self.feats))
        probs = np.zeros((len(self.feats), len(self.classes)))
        probs[:, where] = torch.softmax(logits, 1).numpy()
        return probs, where


def run_order(
    head: HeadOnFeatures,
    pool: np.ndarray,
    test: np.ndarray,
    order: str,
    seed: int,
    step: int,
    max_labels: int,
) -> list[tuple[int, float]]:
    """(labels, test accuracy) after each step of one order."""
    from napari_foram.teaching import suggest_next

    rng = np.random.default_rng(seed)
    labelled: list[int] = []
    curve = []
    probs = None
    while len(labelled) < min(max_labels, len(pool)):
        mask = np.zeros(len(head.feats), bool)
        mask[labelled] = True
        candidates = np.zeros(len(head.feats), bool)
        candidates[pool] = True
        if order == "suggested":
            picks = suggest_next(head.feats, probs, mask, step, candidates=candidates)
        else:
            left = np.setdiff1d(pool, labelled)
            picks = rng.choice(left, size=min(step, len(left)), replace=False)
        labelled += [int(p) for p in picks if int(p) not in labelled]
        fit = head.fit_predict(np.array(labelled))
        if fit is None:
            probs = None
            curve.append((len(labelled), float("nan")))
            continue
        probs, _ = fit
        acc = float(np.mean(probs[test].argmax(1) == head.labels[test]))
        curve.append((len(labelled), acc))
    return curve


def labels_to_reach(curve: list[tuple[int, float]], level: float) -> int | None:
    for n, acc in curve:
        if np.isfinite(acc) and acc >= level:
            return n
    return None


def main() -> int:
    parser = argparse.ArgumentParser()
    default = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "radiolaria_genera"
    parser.add_argument("folder", nargs="?", type=Path, default=default)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--step", type=int, default=5)
    parser.add_argument("--max-labels", type=int, default=120)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/suggest_next_features.npz"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    t0 = time.perf_counter()
    feats, labels, classes = features_of(args.folder, args.cache)
    head = HeadOnFeatures(feats, labels, classes)
    results = []
    for r in range(args.repeats):
        rng = np.random.default_rng(1000 + r)
        pool, test = [], []
        for c in range(len(classes)):
            rows = rng.permutation(np.flatnonzero(labels == c))
            cut = round(0.6 * len(rows))
            pool += rows[:cut].tolist()
            test += rows[cut:].tolist()
        pool_a, test_a = np.array(pool), np.array(test)
        full = head.fit_predict(pool_a)
        assert full is not None
        full_acc = float(np.mean(full[0][test_a].argmax(1) == labels[test_a]))
        rec = {"repeat": r, "full_accuracy": full_acc, "pool": len(pool_a), "test": len(test_a)}
        for order in ("suggested", "random"):
            curve = run_order(head, pool_a, test_a, order, 77 + r, args.step, args.max_labels)
            rec[order] = {
                "curve": curve,
                "labels_to_80pct": labels_to_reach(curve, 0.8 * full_acc),
                "labels_to_90pct": labels_to_reach(curve, 0.9 * full_acc),
            }
        results.append(rec)
        print(json.dumps({k: v for k, v in rec.items() if k not in ("suggested", "random")}
                         | {o: {k: v for k, v in rec[o].items() if k != "curve"}
                            for o in ("suggested", "random")}), file=sys.stderr)  # fmt: skip

    def median(order: str, key: str) -> float | None:
        vals = [r[order][key] for r in results if r[order][key] is not None]
        return float(np.median(vals)) if len(vals) == len(results) else None

    summary = {
        "folder": str(args.folder),
        "images": len(labels),
        "classes": classes,
        "repeats": args.repeats,
        "step": args.step,
        "full_accuracy_median": float(np.median([r["full_accuracy"] for r in results])),
        "labels_to_80pct_median": {
            o: median(o, "labels_to_80pct") for o in ("suggested", "random")
        },
        "labels_to_90pct_median": {
            o: median(o, "labels_to_90pct") for o in ("suggested", "random")
        },
        "seconds": round(time.perf_counter() - t0, 1),
        "weights": os.environ.get("NAPARI_FORAM_VGG16_WEIGHTS", "torch hub cache"),
    }
    out = {"summary": summary, "repeats": results}
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
