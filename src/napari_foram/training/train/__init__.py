"""Training: the small-data recipe (default) and the study's (Johansen & Sorensen 2020).

Two recipes (`RECIPES`, ``TrainConfig.recipe``):

``pooled-linear`` (the default; `_linear`)
    A linear head with input dropout on 2048 pooled conv4 + conv5 features (mean and max
    over the image), L2 chosen by stratified cross-validation, balanced class weights,
    and a temperature fitted on out-of-fold and validation predictions (folded into the
    head, recorded in the checkpoint). Right on tens to hundreds of real images per
    class; docs/benchmarks.md has the comparison. Phase 2 is available as below.
``study``
    The reference study's recipe, as follows.

Phase 1 -- feature extraction (always)
    The VGG16 conv blocks are frozen, so each crop's conv features (25088 values) are the
    same in every epoch: they are computed once (in memory, optionally cached to an .npy
    file keyed by the data and the exact backbone) and only the dense head is trained on
    them. Adam, lr 1e-4, batches of 32, cross-entropy, early stopping on validation
    accuracy (ties: lower validation loss) with patience; the best epoch's weights are
    restored. **No augmentation in phase 1**: cached features belong to the unaugmented
    crops (augmenting would mean recomputing the conv features every epoch, which is
    what phase 2 pays for anyway).

Phase 2 -- fine-tuning (``fine_tune=True``, `fine_tune_conv`)
    The last two conv blocks (VGG16 block 4 and 5: ``conv[17:]``) are unfrozen and trained
    together with the head at a tiny learning rate (the paper: 1e-7), on crops augmented
    afresh per image and batch as in the study: horizontal flip, rotation by a multiple of
    90 degrees, brightness/contrast/saturation +-10 %, hue +-5 %. Early stopping as in
    phase 1, starting from phase 1's best validation score: if fine-tuning never beats
    it, phase 1's weights are kept.

Around them: ``repeats`` (the same split, different seeds, mean +- sd reported; the run
best on validation is saved), and a grid search over head units x dropout x optimiser on
phase 1 (cheap: the features are shared), the configuration best on validation then
being trained for real. Ctrl-C keeps the best model found so far and saves it.

Runs are seeded and reproducible on the CPU (the global RNG is left untouched). The
device defaults to the CPU; on CUDA the forward passes run under bf16 autocast.
"""

from ._classifier import (
    MIN_PER_CLASS,
    check_trainable,
    fit_unsure_rule,
    train_classifier,
    train_from_folder,
)
from ._config import (
    DEFAULT_GRID,
    FINE_TUNE_FROM_LAYER,
    LEARNING_CURVE_SIZES,
    RECIPES,
    RunResult,
    TrainConfig,
    TrainingOutcome,
)
from ._head import (
    fine_tune_conv,
    train_head,
)
from ._model import (
    _fresh_model,
    augment,
    build_base_model,
    compute_features,
    fold_standardisation,
    preprocess,
    unfold_standardisation,
)
from ._runs import (
    grid_configs,
    train_run,
)

__all__ = [
    "DEFAULT_GRID",
    "FINE_TUNE_FROM_LAYER",
    "LEARNING_CURVE_SIZES",
    "MIN_PER_CLASS",
    "RECIPES",
    "RunResult",
    "TrainConfig",
    "TrainingOutcome",
    "_fresh_model",
    "augment",
    "build_base_model",
    "check_trainable",
    "compute_features",
    "fine_tune_conv",
    "fit_unsure_rule",
    "fold_standardisation",
    "grid_configs",
    "preprocess",
    "train_classifier",
    "train_from_folder",
    "train_head",
    "train_run",
    "unfold_standardisation",
]
