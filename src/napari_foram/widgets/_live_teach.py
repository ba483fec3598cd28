"""Foram live and the teaching loop: its model follows the viewer's active model, its
store is the writer canvas labels go through, and its "counted specimens" can be
labelled on the canvas (kept apart so that widgets/live.py holds the live view itself).
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

from napari_foram.widgets import labelling
from napari_foram.widgets._active import active_model, hub, register_writer
from napari_foram.widgets.layers import SPECIMENS_LAYER


def connect_live(widget: Any) -> None:
    """Wire a `LiveWidget` (widgets/live.py, which imports this module) to its
    viewer's shared state (see the module docstring).
    """
    viewer = widget.viewer
    state = hub(viewer)
    ref = weakref.ref(widget)

    def store_of(w: Any) -> Any:
        return w.counter.store if w.counter is not None else None

    def context(_layer: Any) -> tuple[Path, str] | None:
        w = ref()
        if w is None or w.counter is None or w.counter.sample_id is None:
            return None
        return Path(w.counter.store.path), str(w.counter.sample_id)

    def follow(model: Any) -> None:
        w = ref()
        if w is None:
            active_model(viewer).changed.disconnect(follow, missing_ok=True)
            return
        w.model = model.source  # the next Connect loads it
        if w.counter is not None:
            w._set_status(f"the active model is now {model.name}: Connect again to count with it")

    if str(widget.model) == "demo":  # the default: the viewer's active model instead
        widget.model = active_model(viewer).source
    register_writer(widget, store_of)
    state.layer_context[SPECIMENS_LAYER] = context
    active_model(viewer).changed.connect(follow)
    state.labelled.connect(_on_labelled_for(ref))
    labelling.enable_canvas_keys(widget, viewer)


def _on_labelled_for(ref: weakref.ref[Any]) -> Any:
    def on_labelled(outcome: labelling.LabelOutcome) -> None:
        w = ref()
        if w is None:
            return
        counter = w.counter
        if counter is None or counter.sample_id != outcome.sample_id:
            return
        if Path(counter.store.path).resolve() != Path(outcome.store_path).resolve():
            return
        if outcome.layer_name == SPECIMENS_LAYER and len(w._shown):
            _update_shown(w, counter.store, outcome)
        w._reload_tally()
        w._refresh_tally()
        w._show_specimens()

    return on_labelled


def _update_shown(widget: Any, store: Any, outcome: labelling.LabelOutcome) -> None:
    """The live view's specimens as labelled: their class, no longer unsure; rejected
    ones leave the view (not specimens).
    """
    from napari_foram.tally import stats

    data = store.read_specimens(
        outcome.sample_id, columns=("class_index", "reviewed_class", "review_status")
    )
    labels = stats.final_labels(data)
    names = store.class_names
    gone = []
    for point, row in zip(outcome.points, outcome.rows, strict=True):
        if not 0 <= point < len(widget._shown):
            continue
        k = int(labels[row])
        if k < 0:
            gone.append(int(point))
            continue
        shown = widget._shown[point]
        widget._shown[point] = shown._replace(name=names[k], unsure=False, uncertain=False)
    for point in sorted(gone, reverse=True):
        del widget._shown[point]
