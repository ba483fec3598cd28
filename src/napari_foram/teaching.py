"""Teaching the classifier while counting: labels from the store, a head retrained on the
specimens' kept features, and which specimen to label next.

The loop a microscopist runs (the Foram review / batch / live widgets drive it; nothing
here imports Qt):

1. label some specimens (`TallyStore.set_review`: confirmed = "this class is right",
   relabelled = "it is that class"; who and when are stored);
2. `retrain` fits the small-data recipe's linear head (`training.train._linear`) on the
   kept pooled features of every labelled specimen of the store: no backbone pass for
   specimens whose features are kept, so it takes about a second on two cores;
3. the new model is saved as a head-only checkpoint with its model card, and every
   specimen of the sample is classified again (`napari_foram.reclassify`): the counts
   change, the earlier ones stay as history;
4. `suggest_next` orders the unlabelled specimens by how much a label would help.

A label counts as training data when a person confirmed or relabelled it; rejected
(not a specimen) and dubious rows, duplicates and unreviewed rows do not.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram.defaults import MC_SAMPLES
from napari_foram.tally import stats
from napari_foram.tally.stats import REVIEW_CONFIRMED, REVIEW_RELABELLED

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from napari_foram.classify.checkpoint import ModelInfo
    from napari_foram.classify.model import FORAMNet
    from napari_foram.classify.predict import Predictor
    from napari_foram.reclassify import ReclassifyReport
    from napari_foram.tally.store import TallyStore

#: Labels a class needs before a taught model knows it (fewer: left out, said so). One:
#: with two, a class labelled once stayed unknown until a second specimen of its kind
#: was labelled, which "suggest next" (rightly) puts off in favour of unseen kinds; on
#: the real genera that cost the suggested order its lead over random order.
MIN_LABELS_PER_CLASS = 1
#: Input dropout of the taught linear head (the small-data recipe's).
TAUGHT_DROPOUT = 0.2
#: Share of labelled specimens the taught model's unsure rule may flag.
TAUGHT_FALSE_FLAG_RATE = 0.05


@dataclass
class LabelSet:
    """Labelled specimens of a store: features, labels (store class indices), where."""

    features: np.ndarray  # (m, D) float32
    labels: np.ndarray  # (m,) int64, indices into class_names
    class_names: list[str]
    where: list[tuple[str, int]]  # (sample_id, row)
    feature_space: dict[str, Any]
    #: Features of every specimen of the samples, labelled or not (finite rows): their
    #: mean and SD standardise the head's input (`fit_linear_head`'s standardize_on).
    reference: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def per_class(self) -> dict[str, int]:
        """Labelled specimens per class name (every class, zero included)."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts, strict=True)}

    def digest(self) -> str:
        """sha256 over the labels, their specimens and their features: which data taught
        a model (the model card's data digest).
        """
        h = hashlib.sha256()
        for (sid, row), label in zip(self.where, self.labels, strict=True):
            h.update(f"{sid}|{row}|{self.class_names[int(label)]}\n".encode())
        h.update(np.ascontiguousarray(self.features, dtype=np.float32).tobytes())
        return h.hexdigest()


def labelled_rows(specimens: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, labels) of the specimens a person labelled: confirmed rows with their
    predicted class, relabelled rows with the person's class; rows that do not count
    (duplicates, rejected) left out. Foram review's export uses the same rows.
    """
    status = np.asarray(specimens["review_status"])
    keep = np.isin(status, (REVIEW_CONFIRMED, REVIEW_RELABELLED)) & stats.counted_mask(specimens)
    rows = np.flatnonzero(keep).astype(np.int64)
    return rows, stats.final_labels(specimens)[rows].astype(np.int64)


def gather_labels(
    store: TallyStore,
    predictor: Predictor,
    sample_ids: Sequence[str] | None = None,
) -> LabelSet:
    """Every labelled specimen of the samples (default: all) with its pooled features in
    `predictor`'s feature space (kept ones read, missing ones computed from the crops).
    """
    from napari_foram.reclassify import sample_features

    ids = list(sample_ids) if sample_ids is not None else store.samples()
    feats, labels, where, reference = [], [], [], []
    for sid in ids:
        cols = ("review_status", "reviewed_class", "class_index", "duplicate_of")  # counts
        rows, lab = labelled_rows(store.read_specimens(sid, columns=cols))
        if not len(rows):
            continue
        all_feats, _ = sample_features(store, sid, predictor)
        reference.append(all_feats[np.isfinite(all_feats).all(axis=1)])
        feats.append(all_feats[rows])
        labels.append(lab)
        where += [(sid, int(r)) for r in rows]
    space = predictor.feature_space
    dim = int(space["dim"])
    return LabelSet(
        features=np.concatenate(feats) if feats else np.zeros((0, dim), np.float32),
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
        class_names=store.class_names,
        where=where,
        feature_space=space,
        reference=np.concatenate(reference) if reference else None,
    )


@dataclass
class TaughtModel:
    """A head taught on a store's labels, ready to classify and to save."""

    model: FORAMNet
    info: ModelInfo
    labels: LabelSet
    classes_left_out: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def teachable(labels: LabelSet) -> tuple[list[int], dict[str, int]]:
    """(class indices a model can learn, classes left out with their label counts);
    ValueError (one line) when fewer than two classes have enough labels.
    """
    counts = np.bincount(labels.labels, minlength=len(labels.class_names))
    keep = [int(i) for i in np.flatnonzero(counts >= MIN_LABELS_PER_CLASS)]
    left = {
        labels.class_names[i]: int(c) for i, c in enumerate(counts) if 0 < c < MIN_LABELS_PER_CLASS
    }
    if len(keep) < 2:
        have = ", ".join(f"{n} {c}" for n, c in labels.per_class().items() if c) or "none"
        raise ValueError(
            f"label specimens of at least two classes to teach a model (labelled so far: {have})"
        )
    return keep, left


def teach(
    labels: LabelSet,
    base: Predictor,
    *,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
    unsure_rule: bool = True,
) -> TaughtModel:
    """Fit the small-data recipe's linear head on `labels` (cross-validated L2, balanced
    class weights, temperature on out-of-fold predictions) on `base`'s backbone.

    The model knows the classes with at least `MIN_LABELS_PER_CLASS` labels, in the
    store's order; its unsure rule is a feature-distance threshold set on the labelled
    specimens, each scored by a density fitted without it (`TAUGHT_FALSE_FLAG_RATE` of
    them flagged; `unsure_rule=False` skips it, for studies that score accuracy only),
    and its record is the model card (`model_card`).
    """
    import torch

    from napari_foram.classify.checkpoint import ModelInfo
    from napari_foram.classify.density import (
        FeatureDensity,
        columns_for,
        fit_threshold,
        pooling_for,
    )
    from napari_foram.classify.model import FORAMNet
    from napari_foram.training.train._linear import fit_linear_head, threads_for

    t0 = time.perf_counter()
    keep, left = teachable(labels)
    if not np.all(np.isfinite(labels.features)):
        raise ValueError("some labelled specimens have no features (their crops are missing)")
    mask = np.isin(labels.labels, keep)
    remap = {old: new for new, old in enumerate(keep)}
    y = np.array([remap[int(v)] for v in labels.labels[mask]], dtype=np.int64)
    x = torch.from_numpy(np.ascontiguousarray(labels.features[mask], dtype=np.float32))
    names = [labels.class_names[i] for i in keep]

    # A few dozen labels make steps too small to share between threads: one thread is
    # several times faster, and much faster on a busy machine (`threads_for`).
    with threads_for(len(y) * x.shape[1] * len(names) * 16):
        # The head alone is new: the base's conv blocks are shared, not copied.
        model = FORAMNet(
            len(names),
            hidden_units=(),
            dropout=TAUGHT_DROPOUT,
            feature_layout="pooled",
            conv=base.model.conv,
        )
        record = fit_linear_head(
            model.head,
            x,
            y,
            np.arange(len(y)),
            np.zeros(0, np.int64),
            dropout=TAUGHT_DROPOUT,
            seed=seed,
            progress=progress,
            label="teaching: ",
            standardize_on=None
            if labels.reference is None
            else torch.from_numpy(labels.reference),
        )
        if not all(torch.isfinite(p).all() for p in model.head.parameters()):
            raise ValueError("the taught head is not finite (features out of range?); not saved")

        def fit_density(rows: np.ndarray) -> FeatureDensity:
            return FeatureDensity.fit(
                x[rows],
                y[rows],
                len(names),
                pooling=pooling_for("pooled"),
                columns=columns_for("pooled"),
            )

        rule: dict[str, Any] = {}
        if unsure_rule:
            model.density = fit_density(np.arange(len(y)))
            distances, calibrated_on = _held_out_distances(y, fit_density, x, seed)
            if distances is None:  # too few labels to hold any out: the training ones (lenient)
                distances = np.asarray(model.density.score(x))
            rule = {
                "measure": "feature_distance",
                "threshold": round(fit_threshold(distances, TAUGHT_FALSE_FLAG_RATE), 4),
                "false_flag_rate": TAUGHT_FALSE_FLAG_RATE,
                "set_on": calibrated_on,
            }
        space = labels.feature_space
        info = ModelInfo.for_model(
            model,
            tuple(names),
            backbone_weights=str(space.get("backbone_weights") or "imagenet"),
            backbone_id=str(space.get("backbone") or ""),
            backbone_seed=space.get("backbone_seed"),
            input_convention=str(space["input_convention"]),
            crop_policy="native",
            temperature=float(record["temperature"]),
        )
        info.unsure_rule = rule
        chosen = next(
            (r for r in record["cross_validation"] if r["weight_decay"] == record["weight_decay"]),
            None,
        )
        info.training = {
            "kind": "taught in napari-foram from a tally store's labels",
            "recipe": "pooled-linear",
            "data": "labelled specimens of a tally store (kept pooled features)",
            "data_sha256": labels.digest(),
            "labels_per_class": {n: int((y == i).sum()) for i, n in enumerate(names)},
            "classes_left_out": left,
            "samples": sorted({sid for sid, _ in labels.where}),
            "weight_decay": record["weight_decay"],
            "folds": record["folds"],
            "temperature": record["temperature"],
            "seed": seed,
        }
        info.metrics = {
            "held_out": "out-of-fold cross-validation on the labels" if chosen else "none",
            "oof_accuracy": None if chosen is None else round(float(chosen["oof_accuracy"]), 4),
            "oof_loss": None if chosen is None else round(float(chosen["oof_loss"]), 4),
            "train_accuracy": round(float(record["train_accuracy"]), 4),
            "n_labels": len(y),
        }
    return TaughtModel(model, info, labels, left, time.perf_counter() - t0)


def _held_out_distances(
    y: np.ndarray, fit_density: Callable[[np.ndarray], Any], x: Any, seed: int
) -> tuple[np.ndarray | None, str]:
    """Feature distances of labelled specimens from a density fitted without them
    (stratified folds): what an unseen specimen of a taught class scores, so that the
    unsure rule flags `TAUGHT_FALSE_FLAG_RATE` of such specimens, not of the training
    ones (which lie closer to their own class means than any new specimen).
    """
    from napari_foram.training.train._linear import MAX_FOLDS, stratified_folds

    smallest = int(np.bincount(y).min())
    folds = min(MAX_FOLDS, smallest)
    if folds < 2:
        n = len(y)
        return None, f"{n} labelled specimens (too few to hold any out: a lenient rule)"
    fold = stratified_folds(y, folds, seed)
    out = np.zeros(len(y))
    for f in range(folds):
        held = fold == f
        out[held] = np.asarray(fit_density(np.flatnonzero(~held)).score(x[held]))
    return out, f"{len(y)} labelled specimens, each scored by a density fitted without it"


def save_taught(taught: TaughtModel, folder: str | Path, *, name: str | None = None) -> Path:
    """Save a taught model as a head-only checkpoint (a few kB of head, its density and
    its card; the backbone is rebuilt from its source on load) in `folder`.
    """
    from napari_foram.classify.checkpoint import save_checkpoint

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = folder / (name or f"taught-{stamp}.safetensors")
    save_checkpoint(path, taught.model, taught.info, head_only=True)
    return path


def models_folder(store_path: str | Path) -> Path:
    """Where models taught on a store go by default: beside it, never inside it
    (``run.zarr`` -> ``run-models/``).
    """
    p = Path(store_path)
    return p.with_name(f"{p.name.removesuffix('.zarr')}-models")


def predictor_for(taught: TaughtModel, base: Predictor) -> Predictor:
    """A predictor of a taught model on `base`'s device (its conv blocks are shared)."""
    from napari_foram.classify.predict import Predictor

    return Predictor(taught.model, taught.info, device=base.device, precision="fp32")


@dataclass
class RetrainResult:
    """What `retrain` did: the model, where it was saved, and the recount."""

    taught: TaughtModel
    path: Path
    reports: list[ReclassifyReport]
    seconds: float


def retrain(
    store: TallyStore,
    base: Predictor,
    *,
    sample_ids: Sequence[str] | None = None,
    label_samples: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    mc_samples: int = MC_SAMPLES,
    seed: int = 0,
    cancel: Callable[[], bool] | None = None,
) -> RetrainResult:
    """Teach a head on the store's labels, save it and classify the samples again.

    Parameters
    ----------
    store
        Open for writing.
    base
        The predictor whose backbone gives the features (the model that counted).
    sample_ids
        Samples to classify again (default: every sample with specimens).
    label_samples
        Samples whose labels teach (default: every sample).
    out_dir
        Where the checkpoint goes (default: `models_folder` of the store).
    """
    from napari_foram.reclassify import reclassify_store

    t0 = time.perf_counter()
    labels = gather_labels(store, base, label_samples)
    taught = teach(labels, base, seed=seed)
    path = save_taught(taught, out_dir or models_folder(store.path))
    predictor = predictor_for(taught, base)
    reports = reclassify_store(
        store, predictor, sample_ids=sample_ids, mc_samples=mc_samples, cancel=cancel
    )
    return RetrainResult(taught, path, reports, time.perf_counter() - t0)


#: Neighbours whose mean distance measures how typical a specimen is (`suggest_next`).
TYPICAL_NEIGHBOURS = 10
#: A specimen this many typical neighbour distances from every labelled one counts as
#: far as it gets: beyond, distance stops adding to its claim (outliers would win).
FAR_CAP = 3.0


def suggest_next(
    features: np.ndarray,
    mean_probs: np.ndarray | None,
    labelled: np.ndarray,
    n: int = 20,
    *,
    candidates: np.ndarray | None = None,
) -> np.ndarray:
    """Rows to label next, best first: uncertain, unlike what is labelled, and typical.

    Greedy: each pick maximises ``uncertainty x novelty x typicality``:

    - uncertainty: the rank of the predictive entropy of `mean_probs` among the rows,
      scaled to (0, 1] (1 for every row without a model yet);
    - novelty: the distance, in standardised feature space, to the nearest labelled or
      already picked row, in units of the typical neighbour distance and capped at
      `FAR_CAP` (a row near a pick loses its claim, so one batch spreads over the kinds
      of specimens instead of ten copies of one puzzling grain);
    - typicality: the typical neighbour distance over the row's own (mean distance to
      its `TYPICAL_NEIGHBOURS` nearest rows): dense kinds first, lone oddities last.

    Without typicality and the cap, the first picks were outliers (odd grains, debris)
    whose labels teach little: on the real radiolarian genera this order needed fewer
    labels than random order to reach 80 and 90 % of the full-data accuracy only with
    both (docs/benchmarks.md, "Teaching while counting").

    Parameters
    ----------
    features
        (N, D) features of every row (NaN rows are never suggested).
    mean_probs
        (N, K) current predictions, or None (no model yet: novelty x typicality).
    labelled
        (N,) bool, rows labelled already.
    n
        How many to suggest.
    candidates
        (N,) bool, rows that may be suggested (default: every unlabelled one).
    """
    x = np.asarray(features, dtype=np.float32)
    ok = np.asarray(np.isfinite(x).all(axis=1), dtype=bool)
    labelled = np.asarray(labelled, dtype=bool)
    pool = ~labelled & ok
    if candidates is not None:
        pool &= np.asarray(candidates, dtype=bool)
    if not pool.any() or n <= 0:
        return np.zeros(0, dtype=np.int64)
    mu = x[ok].mean(0)
    sd = x[ok].std(0) + 1e-6
    z = np.where(ok[:, None], (np.nan_to_num(x) - mu) / sd, 0.0).astype(np.float32)
    sq = (z**2).sum(1)

    def distances(rows: np.ndarray) -> np.ndarray:
        """(N, len(rows)) Euclidean distances in standardised space."""
        return np.sqrt(np.maximum(sq[:, None] + sq[rows][None, :] - 2 * z @ z[rows].T, 0))

    # Typical neighbour distance per row, in blocks (N x N at once is too big for a
    # sample of several thousand specimens).
    valid = np.flatnonzero(ok)
    knn = np.full(len(x), np.inf, dtype=np.float32)
    k = min(TYPICAL_NEIGHBOURS, max(len(valid) - 1, 1))
    for start in range(0, len(valid), 512):
        rows = valid[start : start + 512]
        d = distances(rows)[valid].T  # (block, valid)
        d[np.arange(len(rows)), np.searchsorted(valid, rows)] = np.inf  # not itself
        knn[rows] = np.sort(d, axis=1)[:, :k].mean(axis=1) if len(valid) > 1 else 1.0
    unit = float(np.median(knn[valid])) or 1.0
    typicality = np.where(ok, unit / np.maximum(knn, 1e-12), 0.0)
    if mean_probs is not None and len(mean_probs):
        p = np.clip(np.asarray(mean_probs, dtype=np.float64), 1e-12, 1.0)
        entropy = -(p * np.log(p)).sum(1)
        # By rank among the rows (0 .. 1]: the order, not the scale, of the entropies
        # matters, and a model taught on a few labels is calibrated with a large
        # temperature that pushes every entropy near its maximum.
        from scipy.stats import rankdata

        uncertainty = rankdata(np.round(entropy, 6), method="average") / len(entropy)
    else:
        uncertainty = np.ones(len(x))
    anchors = np.flatnonzero(labelled & ok)
    nearest = distances(anchors).min(axis=1) / unit if len(anchors) else np.full(len(x), FAR_CAP)
    picks: list[int] = []
    remaining = pool.copy()
    for _ in range(min(n, int(pool.sum()))):
        novelty = np.minimum(nearest, FAR_CAP)
        score = np.where(remaining, (0.05 + uncertainty) * novelty * typicality, -np.inf)
        best = int(np.argmax(score))
        picks.append(best)
        remaining[best] = False
        nearest = np.minimum(nearest, distances(np.array([best]))[:, 0] / unit)
    return np.asarray(picks, dtype=np.int64)


def model_card(info: ModelInfo) -> dict[str, Any]:
    """What a checkpoint says about itself, for people: classes, backbone, recipe, data
    digest, held-out figures, unsure rule, when it was made and its file digest.
    """
    training = dict(info.training or {})
    metrics = dict(info.metrics or {})
    held: dict[str, Any] = {
        k: metrics[k]
        for k in (
            "test_accuracy",
            "test_mc_accuracy",
            "test_ece",
            "held_out_accuracy",
            "oof_accuracy",
            "val_accuracy",
            "held_out",
            "n_labels",
        )
        if metrics.get(k) is not None
    }
    data = training.get("data_sha256") or training.get("data_digest") or training.get("data", "")
    return {
        "name": Path(info.path).name if info.path else "",
        "sha256": info.sha256,
        "created": info.created,
        "classes": list(info.class_names),
        "backbone": info.backbone_id or info.backbone_weights,
        "backbone_sha256": info.backbone_sha256,
        "input_convention": info.input_convention,
        "feature_layout": info.feature_layout,
        "recipe": training.get("recipe") or training.get("kind") or "study",
        "data": data,
        "held_out": held,
        "unsure_rule": dict(info.unsure_rule or {}),
        "temperature": info.temperature,
        "head_only": info.head_only,
    }


def model_card_text(info: ModelInfo) -> str:
    """`model_card` as a few lines of text (the widgets' tooltip, the CLI's output)."""
    card = model_card(info)
    rule = card["unsure_rule"]
    rule_text = (
        f"{rule.get('measure')} > {rule.get('threshold')}" if rule.get("measure") else "none"
    )
    held = ", ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in card["held_out"].items()
    )
    lines = [
        f"model: {card['name'] or '(not saved)'}  sha256 {card['sha256'][:12]}",
        f"classes ({len(card['classes'])}): {', '.join(card['classes'])}",
        f"backbone: {card['backbone']} ({card['input_convention']}, {card['feature_layout']})",
        f"recipe: {card['recipe']}; data: {str(card['data'])[:64]}",
        f"held out: {held or 'not measured'}",
        f"unsure rule: {rule_text}",
        f"created: {card['created']}",
    ]
    return "\n".join(lines)
