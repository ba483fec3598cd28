"""Foram review's "Retrain from the validated crops": the background job behind its
"Export validated crops" and "Fine-tune model" buttons (`napari_foram.review` does the
work; the widget shows its progress and outcome).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari_foram.review import default_checkpoint_path

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def export_or_fine_tune(
    what: str,
    store_path: Path,
    out: Path,
    model: str,
    emit: Callable[..., None],
    fine_tune_options: dict[str, Any],
) -> None:
    """Export the store's validated crops to `out` and, when `what` is "fine-tune",
    retrain `model` on them into a checkpoint beside the store; run on a background
    thread. It reports through `emit` (`Runner.emit`): ``("progress", done, total,
    message)``, then ``("finished", what, outcome)``, the outcome being the export's or
    the fine-tuning's result, or the exception that stopped it.
    """
    from napari_foram.classify.checkpoint import read_model_info
    from napari_foram.review import export_validated_crops, fine_tune, resolve_model
    from napari_foram.tally.store import TallyStore

    def progress(done: int, total: int, message: str = "") -> None:
        emit("progress", done, total, message)

    try:
        base = None
        if what == "fine-tune":
            base = resolve_model(model, progress=progress)
        # A reader of its own: the GUI thread keeps writing verdicts meanwhile.
        with TallyStore.open(store_path, mode="r") as store:
            classes = store.class_names
            if base is not None and list(read_model_info(base).class_names) != classes:
                raise ValueError(
                    f"the model's classes {list(read_model_info(base).class_names)} "
                    f"differ from the store's {classes}"
                )
            exported = export_validated_crops(store, out, progress=progress)
        if base is None:
            emit("finished", what, exported)
            return
        result = fine_tune(
            out,
            base,
            default_checkpoint_path(store_path),
            progress=progress,
            **fine_tune_options,
        )
        emit("finished", what, result)
    except Exception as exc:  # shown to the user, not swallowed
        emit("finished", what, exc)
