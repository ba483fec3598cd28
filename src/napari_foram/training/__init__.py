"""Training and evaluation with the study's recipe (Johansen & Sorensen 2020, section 4-5).

Importing this package is cheap: torch is imported only when one of the names below is
first used (PEP 562 lazy attributes).

Main entry points
-----------------
- `load_image_folder`: DATA/<class>/<images> -> `LabelledCrops` (224 x 224 crops).
- `split_indices`, `save_split`, `load_split`: stratified 80/10/10 splits, as JSON.
- `extract_crops`: detect specimens in whole frames, write crops by class.
- `train_from_folder`, `train_classifier`, `TrainConfig`: phase 1 (head on cached
  features), phase 2 (fine-tune blocks 4-5 with augmentation), repeats, grid search.
- `evaluate`, `evaluate_predictions`: accuracy, per-class scores, confusion matrix,
  MC-dropout accuracy and vote, calibration (ECE), a report folder.
- `napari_foram.training.metrics`: the metric functions, pure numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "LabelledCrops": "data",
    "extract_crops": "data",
    "image_to_crop": "data",
    "load_image_folder": "data",
    "load_split": "data",
    "save_split": "data",
    "split_indices": "data",
    "TrainConfig": "train",
    "TrainingOutcome": "train",
    "train_classifier": "train",
    "train_from_folder": "train",
    "evaluate": "evaluate",
    "evaluate_predictions": "evaluate",
    "mc_sample_probs": "evaluate",
}

__all__ = [
    "LabelledCrops",
    "TrainConfig",
    "TrainingOutcome",
    "evaluate",
    "evaluate_predictions",
    "extract_crops",
    "image_to_crop",
    "load_image_folder",
    "load_split",
    "mc_sample_probs",
    "save_split",
    "split_indices",
    "train_classifier",
    "train_from_folder",
]

if TYPE_CHECKING:
    from napari_foram.training.data import (
        LabelledCrops,
        extract_crops,
        image_to_crop,
        load_image_folder,
        load_split,
        save_split,
        split_indices,
    )
    from napari_foram.training.evaluate import evaluate, evaluate_predictions, mc_sample_probs
    from napari_foram.training.train import (
        TrainConfig,
        TrainingOutcome,
        train_classifier,
        train_from_folder,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*globals(), *__all__]
