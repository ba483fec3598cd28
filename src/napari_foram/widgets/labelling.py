"""Label as you count: select specimens on the canvas and press a class key.

Works on every Points layer of counted specimens whose store rows can be known:

- the layers of a tally store (the napari-foram reader's ``"<sample> specimens"``, which
  Foram review's "Show in frame" opens too): the store and sample in the layer's
  metadata, each point's row in its features (``row``);
- Batch folders' ``"batch specimens"`` (one counted file): its rows are those the store
  records for that file, matched by centroid (pixels);
- Foram live's ``"counted specimens"``: matched to the sample's rows by stage position.

(The widgets that draw the last two say which store and sample they show through
`_active.Hub.layer_context`.)

Select specimens with napari's own tools (the Points layer's select mode: click,
shift-click, drag a box; napari 0.9 has no lasso for points), then press **1..9** to
label every selected specimen with that class of the store (confirmed where it is the
predicted class, relabelled otherwise) or **X** to reject them (not specimens). The
reviewer is Foram review's reviewer name, else the login name; the time is stored with
it. Writes go through the widget that holds the store open for writing (`_active`), else
the store is opened for the write and closed. The labelled specimens are filled with
their class colour, rejected ones crossed out; Foram review, Foram tally and Foram live
hear of it (`Hub.labelled`).

The keys act only while the active layer is such a layer with a selection; otherwise
they are napari's (or Foram review's, for the specimen it shows).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtGui import QKeyEvent
from qtpy.QtOpenGLWidgets import QOpenGLWidget

from napari_foram.review import REVIEW_COLUMNS
from napari_foram.tally.stats import (
    REVIEW_CONFIRMED,
    REVIEW_REJECTED,
    REVIEW_RELABELLED,
)
from napari_foram.widgets._active import hub, open_writer, reviewer_name, unwrap

if TYPE_CHECKING:
    from qtpy.QtWidgets import QWidget

    from napari_foram.tally.store import TallyStore

#: Alpha of the fill of a labelled specimen (the border keeps its class colour).
LABELLED_FILL_ALPHA = 0.45
#: A live specimen is matched to the store row nearest its stage position within this (um).
POSITION_TOLERANCE_UM = 25.0
#: A batch specimen is matched to its file's row nearest its centroid within this (px).
CENTROID_TOLERANCE_PX = 3.0
REJECTED_COLOUR = (0.6, 0.6, 0.6, 1.0)

_DIGITS = {int(getattr(Qt.Key, f"Key_{d}")): d for d in range(1, 10)}


@dataclass
class LabelTarget:
    """Where the points of a layer live in a store."""

    store_path: Path
    sample_id: str
    how: str  # "rows" (features), "file" (centroids of one file), "position" (stage)


@dataclass
class LabelOutcome:
    """What one labelling did."""

    store_path: Path
    sample_id: str
    layer_name: str
    points: np.ndarray  # indices into the layer
    rows: np.ndarray  # store rows, same order
    action: str  # "class" or "reject" (or "undo")
    class_index: int = -1
    class_name: str = ""
    confirmed: int = 0
    relabelled: int = 0
    reviewer: str = ""
    before: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Specimens this labelling touched."""
        return len(self.rows)

    @property
    def message(self) -> str:
        """What was done, in one line for the viewer's notification (e.g. "s1: 3
        specimen(s) labelled Globigerina (2 confirmed, 1 relabelled)").
        """
        where = f"{self.sample_id}"
        if self.action == "reject":
            return f"{where}: {self.n} specimen(s) rejected (not specimens)"
        if self.action == "undo":
            return f"{where}: labels of {self.n} specimen(s) undone"
        parts = []
        if self.confirmed:
            parts.append(f"{self.confirmed} confirmed")
        if self.relabelled:
            parts.append(f"{self.relabelled} relabelled")
        return f"{where}: {self.n} specimen(s) labelled {self.class_name} ({', '.join(parts)})"


# ----------------------------------------------------------------------------- layers
def _is_points(layer: Any) -> bool:
    from napari.layers import Points

    return isinstance(layer, Points)


def target_of(viewer: Any, layer: Any) -> LabelTarget | None:
    """Where `layer`'s points are in a store, or None when it is not a layer of counted
    specimens (cheap: reads no store).
    """
    if layer is None or not _is_points(layer):
        return None
    meta = dict(layer.metadata or {})
    if meta.get("store") and meta.get("sample_id") and "row" in layer.features:
        return LabelTarget(Path(meta["store"]), str(meta["sample_id"]), "rows")
    context = hub(viewer).layer_context.get(layer.name)
    found = context(layer) if context is not None else None
    if found is None:
        return None
    path, sid = found
    return LabelTarget(Path(path), str(sid), "file" if meta.get("file") else "position")


def rows_of(store: TallyStore, target: LabelTarget, layer: Any) -> np.ndarray:
    """(n_points,) the store row of each point of `layer` (-1: not found)."""
    n = len(layer.data)
    if target.how == "rows":
        return np.asarray(layer.features["row"], dtype=np.int64)
    yx = np.asarray(layer.data, dtype=np.float64).reshape(-1, 2)
    if target.how == "file":
        name = str(layer.metadata.get("file"))
        record = next(
            (r for r in store.processed_files(target.sample_id).values() if r.get("file") == name),
            None,
        )
        if record is None:
            return np.full(n, -1, np.int64)
        first = int(record["first_row"])
        candidates = np.arange(first, first + int(record["n_specimens"]))
        cols = store.read_specimens(target.sample_id, columns=("centroid_y", "centroid_x"))
        where = np.column_stack([cols["centroid_y"], cols["centroid_x"]])[candidates]
        tolerance = CENTROID_TOLERANCE_PX
    else:
        cols = store.read_specimens(
            target.sample_id, columns=("stage_y_um", "stage_x_um", "duplicate_of")
        )
        candidates = np.flatnonzero(cols["duplicate_of"] < 0)
        where = np.column_stack([cols["stage_y_um"], cols["stage_x_um"]])[candidates]
        tolerance = POSITION_TOLERANCE_UM
    rows = np.full(n, -1, np.int64)
    if not len(candidates):
        return rows
    where = where.astype(np.float64)
    for i, point in enumerate(yx):
        d = np.hypot(*(where - point).T)
        d[~np.isfinite(d)] = np.inf
        j = int(np.argmin(d))
        if d[j] <= tolerance:
            rows[i] = candidates[j]
    return rows


def restyle(layer: Any, store: TallyStore, sample_id: str, rows: np.ndarray) -> None:
    """Colour `layer`'s points from the store: border = the class each counts as (grey
    when unsure), filled when a person labelled it, a grey cross when rejected. Points
    without a row keep their look.
    """
    from napari_foram.tally import stats
    from napari_foram.tally.export import UNSURE_COLOUR, class_colour

    if not len(layer.data):
        return
    data = store.read_specimens(sample_id)
    names = store.class_names
    labels = stats.final_labels(data)
    unsure = stats.unsure_mask(data, store.unsure_rule(sample_id))
    status = np.asarray(data["review_status"])
    border = np.array(layer.border_color, dtype=np.float64).reshape(-1, 4).copy()
    face = np.array(layer.face_color, dtype=np.float64).reshape(-1, 4).copy()
    symbols = np.array([str(getattr(s, "value", s)) for s in np.ravel(layer.symbol)], dtype=object)
    if symbols.size != len(rows):
        symbols = np.full(len(rows), symbols[0] if symbols.size else "disc", dtype=object)
    classes = list(layer.features["class"]) if "class" in layer.features else None
    for i, r in enumerate(rows):
        if r < 0 or r >= len(labels):
            continue
        k = int(labels[r])
        if k < 0:
            border[i], face[i], symbols[i] = REJECTED_COLOUR, (0, 0, 0, 0), "x"
            if classes is not None:
                classes[i] = ""
            continue
        colour = UNSURE_COLOUR if unsure[r] else class_colour(names[k], k)
        border[i] = colour
        labelled = status[r] in (REVIEW_CONFIRMED, REVIEW_RELABELLED)
        face[i] = (*colour[:3], LABELLED_FILL_ALPHA) if labelled else (0, 0, 0, 0)
        if symbols[i] == "x":
            symbols[i] = "disc"
        if classes is not None:
            classes[i] = names[k]
    if classes is not None:
        features = layer.features.copy()
        features["class"] = classes
        layer.features = features
    layer.border_color = border
    layer.face_color = face
    layer.symbol = np.asarray(symbols, dtype=str)
    layer.refresh()


def refresh_layers(
    viewer: Any, store_path: str | Path, sample_ids: list[str] | None = None
) -> list[str]:
    """Restyle every specimens layer of `viewer` that shows `store_path` (after a
    retrain or a recount); the names of the layers redrawn.
    """
    from napari_foram.tally.store import TallyStore

    want = Path(store_path).resolve()
    targets = []
    for layer in list(viewer.layers):
        target = target_of(viewer, layer)
        if target is None or Path(target.store_path).resolve() != want:
            continue
        if sample_ids is not None and target.sample_id not in sample_ids:
            continue
        targets.append((layer, target))
    if not targets:
        return []
    from napari_foram.widgets._active import writer_store

    held = writer_store(store_path)
    store = held if held is not None else TallyStore.open(store_path, mode="r")
    try:
        for layer, target in targets:
            restyle(layer, store, target.sample_id, rows_of(store, target, layer))
    finally:
        if held is None:
            store.close()
    return [layer.name for layer, _ in targets]


# ----------------------------------------------------------------------------- labelling
def selection(viewer: Any) -> tuple[Any, LabelTarget, np.ndarray] | None:
    """(active layer, where it is, selected point indices) when the active layer is a
    specimens layer with a selection, else None.
    """
    layer = viewer.layers.selection.active
    target = target_of(viewer, layer)
    if target is None:
        return None
    points = np.array(sorted(int(i) for i in layer.selected_data), dtype=np.int64)
    if not points.size:
        return None
    return layer, target, points


def label_points(
    viewer: Any,
    layer: Any,
    points: np.ndarray,
    action: str,
    class_index: int = -1,
    *,
    reviewer: str | None = None,
) -> LabelOutcome:
    """Label points of `layer`: `action` "class" (as `class_index`, 0-based) or "reject".
    ValueError (one line) when they cannot be (no such class, not in the store, the store
    being written by another program).
    """
    target = target_of(viewer, layer)
    if target is None:
        raise ValueError(f"layer {layer.name!r} shows no specimens of a tally store")
    who = reviewer if reviewer is not None else reviewer_name(viewer)
    with open_writer(target.store_path) as store:
        names = store.class_names
        if action == "class" and not 0 <= class_index < len(names):
            raise ValueError(
                f"no class {class_index + 1}: this store has {len(names)} classes "
                f"(keys 1-{min(len(names), 9)})"
            )
        all_rows = rows_of(store, target, layer)
        picked = np.asarray(points, dtype=np.int64)
        picked = picked[(picked >= 0) & (picked < len(all_rows))]
        picked = picked[all_rows[picked] >= 0]
        if not picked.size:
            raise ValueError("the selected points are not specimens of the store")
        rows = all_rows[picked]
        sid = target.sample_id
        data = store.read_specimens(sid, columns=("class_index", *REVIEW_COLUMNS))
        before = {c: np.asarray(data[c])[rows].copy() for c in REVIEW_COLUMNS}
        outcome = LabelOutcome(
            Path(store.path), sid, layer.name, picked, rows, action, class_index,
            reviewer=who, before=before,
        )  # fmt: skip
        if action == "reject":
            store.set_review(sid, rows, status=REVIEW_REJECTED, reviewer=who)
        elif action == "class":
            outcome.class_name = names[class_index]
            same = np.asarray(data["class_index"])[rows] == class_index
            if same.any():
                store.set_review(sid, rows[same], status=REVIEW_CONFIRMED, reviewer=who)
            if (~same).any():
                store.set_review(
                    sid,
                    rows[~same],
                    status=REVIEW_RELABELLED,
                    reviewed_class=class_index,
                    reviewer=who,
                )
            outcome.confirmed, outcome.relabelled = int(same.sum()), int((~same).sum())
        else:
            raise ValueError(f"unknown labelling action {action!r}")
        restyle(layer, store, sid, all_rows)
    state = hub(viewer)
    state.extras["last_labels"] = (weakref.ref(unwrap(layer)), outcome)
    state.labelled.emit(outcome)
    return outcome


def label_selected(viewer: Any, action: str, class_index: int = -1) -> LabelOutcome:
    """Label the selected points of the active layer (see `label_points`)."""
    found = selection(viewer)
    if found is None:
        raise ValueError(
            "select specimens first: a specimens layer active, its points selected "
            "(select mode: click, shift-click or drag a box)"
        )
    layer, _target, points = found
    return label_points(viewer, layer, points, action, class_index)


def undo_last(viewer: Any) -> LabelOutcome | None:
    """Put back the review columns the last canvas labelling changed; None if none."""
    state = hub(viewer)
    last = state.extras.pop("last_labels", None)
    if last is None:
        return None
    ref, outcome = last
    with open_writer(outcome.store_path) as store:
        store.update_specimens(outcome.sample_id, outcome.rows, **outcome.before)
        layer = ref()
        if layer is not None and layer in viewer.layers:
            target = target_of(viewer, layer)
            if target is not None:
                restyle(layer, store, outcome.sample_id, rows_of(store, target, layer))
    undone = LabelOutcome(
        outcome.store_path, outcome.sample_id, outcome.layer_name, outcome.points,
        outcome.rows, "undo", reviewer=outcome.reviewer,
    )  # fmt: skip
    state.labelled.emit(undone)
    return undone


# ----------------------------------------------------------------------------- keys
def key_action(event: QKeyEvent) -> tuple[str, int] | None:
    """("class", k) for 1..9 (k 0-based), ("reject", -1) for X; plain keys only."""
    if event.modifiers() not in (
        Qt.KeyboardModifier.NoModifier,
        Qt.KeyboardModifier.KeypadModifier,
    ):
        return None
    key = int(event.key())
    if key in _DIGITS:
        return "class", _DIGITS[key] - 1
    if key == int(Qt.Key.Key_X):
        return "reject", -1
    return None


def handles_key(viewer: Any, event: QKeyEvent) -> bool:
    """Whether a key pressed on the canvas labels the selected specimens (then other
    key handlers, Foram review's included, leave it alone).
    """
    return key_action(event) is not None and selection(viewer) is not None


class CanvasKeys(QObject):
    """The event filter on napari's canvas that turns 1..9 / X into labels (one per
    viewer, installed by every widget of ours that is shown).
    """

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self._viewer = weakref.ref(unwrap(viewer))
        self.last: LabelOutcome | Exception | None = None

    def eventFilter(self, watched: QObject | None, event: QEvent | None) -> bool:
        """True for a 1..9 / X key press while specimens are selected: they are labelled
        (or why not is shown) and the key goes no further; False for anything else.
        """
        if not isinstance(event, QKeyEvent) or event.type() != QEvent.Type.KeyPress:
            return False
        viewer = self._viewer()
        if viewer is None or not handles_key(viewer, event):
            return False
        action, k = key_action(event)  # type: ignore[misc]
        from napari.utils.notifications import show_info, show_warning

        from napari_foram.reasons import one_line

        try:
            self.last = label_selected(viewer, action, k)
            show_info(self.last.message)
        except (ValueError, OSError) as exc:
            self.last = exc
            show_warning(one_line(exc))
        event.accept()
        return True


def canvas_keys(viewer: Any) -> CanvasKeys:
    """The viewer's `CanvasKeys` (made once)."""
    extras = hub(viewer).extras
    keys = extras.get("canvas_keys")
    if keys is None:
        keys = extras["canvas_keys"] = CanvasKeys(viewer)
    return keys


def install_canvas_keys(viewer: Any, window: QWidget | None) -> None:
    """Put the labelling keys on the canvases of `window` (napari's main window)."""
    if window is None:
        return
    keys = canvas_keys(viewer)
    for canvas in window.findChildren(QOpenGLWidget):
        canvas.installEventFilter(keys)


class _ShowWatch(QObject):
    def __init__(self, widget: QWidget, viewer: Any) -> None:
        super().__init__(widget)
        self._viewer = weakref.ref(unwrap(viewer))
        widget.installEventFilter(self)

    def eventFilter(self, watched: QObject | None, event: QEvent | None) -> bool:
        if event is not None and event.type() == QEvent.Type.Show:
            viewer = self._viewer()
            if viewer is not None and hasattr(watched, "window"):
                install_canvas_keys(viewer, watched.window())  # type: ignore[union-attr]
        return False


def enable_canvas_keys(widget: QWidget, viewer: Any) -> None:
    """Install the labelling keys on napari's canvas when `widget` (docked) is shown."""
    _ShowWatch(widget, viewer)
