"""Specimen classification: VGG16 + dense head with Monte Carlo dropout (Table 1 of the study).

Importing this package is cheap: torch is imported only when one of the names below is
first used (PEP 562 lazy attributes), so widgets and the CLI can import it freely.

Main entry points
-----------------
- `Predictor` / `Predictor.from_checkpoint`: crops (N, 224, 224, 3) uint8 -> `Predictions`.
- `build_model`, `FORAMNet`: the network, with "imagenet", file or "none" backbone weights.
- `resolve_backbone`, `INPUT_CONVENTIONS`: where ImageNet weights come from and what input
  each set expects.
- `save_checkpoint`, `load_checkpoint`, `ModelInfo`: one safetensors file per model.
- `demo_checkpoint`: a small model trained on synthetic specimens at first use.
- `choose_precision`, `PrecisionChoice`: which compute path (fp32, bf16, int8) runs the
  conv blocks on this CPU, measured at first use and cached (`precision` module).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "FORAMNet": "model",
    "MissingWeightsError": "backbone",
    "BackboneWeights": "backbone",
    "INPUT_CONVENTIONS": "backbone",
    "WEIGHTS_ENV": "backbone",
    "resolve_backbone": "backbone",
    "build_model": "model",
    "imagenet_weights_path": "backbone",
    "ModelInfo": "checkpoint",
    "file_sha256": "backbone",
    "load_checkpoint": "checkpoint",
    "new_classifier": "checkpoint",
    "read_model_info": "checkpoint",
    "save_checkpoint": "checkpoint",
    "Predictions": "predict",
    "Predictor": "predict",
    "measure_bf16_agreement": "predict",
    "resolve_device": "predict",
    "demo_checkpoint": "demo_model",
    "checkpoint_file": "loading",
    "load_predictor": "loading",
    "train_head_on_features": "demo_model",
    "PrecisionChoice": "precision",
    "choose_precision": "precision",
}

__all__ = [
    "INPUT_CONVENTIONS",
    "WEIGHTS_ENV",
    "BackboneWeights",
    "FORAMNet",
    "MissingWeightsError",
    "ModelInfo",
    "PrecisionChoice",
    "Predictions",
    "Predictor",
    "build_model",
    "checkpoint_file",
    "choose_precision",
    "demo_checkpoint",
    "file_sha256",
    "imagenet_weights_path",
    "load_checkpoint",
    "load_predictor",
    "measure_bf16_agreement",
    "new_classifier",
    "read_model_info",
    "resolve_backbone",
    "resolve_device",
    "save_checkpoint",
    "train_head_on_features",
]

if TYPE_CHECKING:
    from napari_foram.classify.backbone import (
        INPUT_CONVENTIONS,
        WEIGHTS_ENV,
        BackboneWeights,
        MissingWeightsError,
        file_sha256,
        imagenet_weights_path,
        resolve_backbone,
    )
    from napari_foram.classify.checkpoint import (
        ModelInfo,
        load_checkpoint,
        new_classifier,
        read_model_info,
        save_checkpoint,
    )
    from napari_foram.classify.demo_model import demo_checkpoint, train_head_on_features
    from napari_foram.classify.loading import checkpoint_file, load_predictor
    from napari_foram.classify.model import FORAMNet, build_model
    from napari_foram.classify.precision import PrecisionChoice, choose_precision
    from napari_foram.classify.predict import (
        Predictions,
        Predictor,
        measure_bf16_agreement,
        resolve_device,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*globals(), *__all__]
