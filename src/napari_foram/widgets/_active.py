"""What the plugin's widgets of one napari viewer share: the active model, the stores
open for writing, and the events that tell the others what changed.

- `ActiveModel`: the model new counts, retraining and recounts use (a checkpoint path or
  "demo", its `ModelInfo` and, once loaded, its `Predictor`), with the psygnal signal
  `changed`. Foram live, Batch folders, Foram review, Foram tally and Train classifier
  show it in one line (`ModelLabel`: "model: NAME (sha 123456789abc)", the model card as
  its tooltip) and follow it.
- Writers: a store has one writer at a time (the writer lock). A widget that holds one
  open registers it here (`register_writer`), so that labelling on the canvas writes
  through it instead of failing to open a second writer (`open_writer`).
- `Hub.labelled` (specimens labelled on the canvas), `Hub.recounted` (samples
  classified again) and `Hub.reviewed` (verdicts Foram review wrote: accept, relabel,
  dubious, reject, undo, a class added): the review widget counts labels for its
  auto-retrain, the tally widget re-reads its table, the live widget its counts.

Signals are emitted on the GUI thread only: background work reports through its widget's
`Runner`, whose handler (on the GUI thread) then updates the hub.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psygnal import Signal
from qtpy.QtWidgets import QLabel

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from napari_foram.classify.checkpoint import ModelInfo
    from napari_foram.classify.predict import Predictor
    from napari_foram.tally.store import TallyStore

#: What the active model is before anyone chooses one.
DEFAULT_MODEL = "demo"
#: Longest model name the one-line label shows whole (docks are ~270 px wide).
LABEL_NAME_CHARS = 40


class ActiveModel:
    """The model of a viewer's widgets (see the module docstring).

    `source` is "demo" or a checkpoint path; `info` its record (None for the demo model
    until it is loaded: it is trained at first use). `predictor()` loads it once (on a
    worker thread: it may take minutes the first time for the demo model) and keeps it.
    """

    changed = Signal(object)  # the ActiveModel

    def __init__(self) -> None:
        self.source: str = DEFAULT_MODEL
        self.info: ModelInfo | None = None
        self._predictor: Predictor | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ reading
    @property
    def name(self) -> str:
        from napari_foram.reclassify import model_name

        if self.info is not None:
            return model_name(self.info)
        return Path(self.source).name if self.source != DEFAULT_MODEL else DEFAULT_MODEL

    def label_text(self) -> str:
        """One line: "model: NAME (sha 12 hex)", or the demo model not loaded yet (a
        long name is shortened in its middle: the card, the tooltip, has it whole).
        """
        name = self.name
        if len(name) > LABEL_NAME_CHARS:
            half = (LABEL_NAME_CHARS - 1) // 2
            name = f"{name[:half]}\u2026{name[-half:]}"
        if self.info is None:
            return f"model: {name} (loaded at first use)"
        return f"model: {name} (sha {self.info.sha256[:12]})"

    def card_text(self) -> str:
        """The model card (`teaching.model_card_text`) for a tooltip."""
        if self.info is None:
            return (
                "the demo model: trained on synthetic crops at first use (a minute or "
                "two, once), then cached; its card shows once it is loaded"
            )
        from napari_foram.teaching import model_card_text

        return model_card_text(self.info)

    # ------------------------------------------------------------------ changing
    def set(
        self,
        source: str | Path,
        info: ModelInfo | None = None,
        predictor: Predictor | None = None,
    ) -> None:
        """Make `source` the active model (GUI thread); ValueError (one line) if it is
        not a readable checkpoint. `predictor`: the model already loaded (e.g. the one
        retraining made), kept instead of loading the file again.
        """
        text = str(source).strip() or DEFAULT_MODEL
        if text != DEFAULT_MODEL and info is None:
            from napari_foram.classify.backbone import file_sha256
            from napari_foram.classify.checkpoint import read_model_info

            # The header only; the digest and path as the command line's model-card
            # fills them (a loaded predictor has the same).
            info = read_model_info(text)
            info.path, info.sha256 = text, file_sha256(text)
        if predictor is not None and info is not None and predictor.info.sha256 != info.sha256:
            predictor = None  # not this model's: loaded from the file when needed
        with self._lock:
            self.source, self.info, self._predictor = text, info, predictor
        self.changed.emit(self)

    def note_loaded(self, predictor: Predictor) -> None:
        """A predictor of the active model was loaded (GUI thread): the demo model's
        record is known now, so its card can be shown.
        """
        if self._predictor is not predictor:
            return
        if self.info is None or self.info.sha256 != predictor.info.sha256:
            self.info = predictor.info
            self.changed.emit(self)

    def predictor(
        self, *, progress: Callable[[int, int, str], None] | None = None, device: str = "auto"
    ) -> Predictor:
        """The active model loaded (`classify.loading.load_predictor`, as the command line does),
        once; safe to call from a worker thread.
        """
        with self._lock:
            source, cached = self.source, self._predictor
        if cached is not None:
            return cached
        from napari_foram.classify.loading import load_predictor

        loaded = load_predictor(source, device=device, progress=progress or False)
        with self._lock:
            if self.source == source and self._predictor is None:
                self._predictor = loaded
            return self._predictor if self.source == source else loaded  # type: ignore[return-value]


class Hub:
    """One viewer's shared state (`hub(viewer)`)."""

    labelled = Signal(object)  # labelling.LabelOutcome
    recounted = Signal(object, object)  # store path, sample ids (list[str])
    #: Foram review wrote to a store (its keys and buttons): store path, sample ids.
    reviewed = Signal(object, object)

    def __init__(self) -> None:
        self.model = ActiveModel()
        #: Who labels on the canvas: the review widget's reviewer field sets it.
        self.reviewer: Callable[[], str] | None = None
        #: Layer name -> function(layer) -> (store path, sample id), for Points layers
        #: whose widget knows them (Foram live's and Batch folders' specimen layers).
        self.layer_context: dict[str, Callable[[Any], tuple[Path, str] | None]] = {}
        #: What one widget keeps for the others (the canvas key filter).
        self.extras: dict[str, Any] = {}


_HUBS: weakref.WeakKeyDictionary[Any, Hub] = weakref.WeakKeyDictionary()


def unwrap(obj: Any) -> Any:
    """The object behind napari's proxies: a plugin widget gets the viewer (and what it
    hands out: layers...) wrapped in a new `PublicOnlyProxy` each time, so identity,
    weak references and dictionary keys need the object itself.
    """
    for _ in range(8):
        inner = getattr(obj, "__wrapped__", None)
        if inner is None:
            return obj
        obj = inner
    return obj


def hub(viewer: Any) -> Hub:
    """The shared state of `viewer`'s widgets (made on first use)."""
    viewer = unwrap(viewer)
    found = _HUBS.get(viewer)
    if found is None:
        found = _HUBS[viewer] = Hub()
    return found


def active_model(viewer: Any) -> ActiveModel:
    """The active model of `viewer`'s widgets."""
    return hub(viewer).model


def reviewer_name(viewer: Any) -> str:
    """The name stored with canvas labels: the review widget's reviewer, else the login."""
    from napari_foram.widgets._review_parts import login_name

    source = hub(viewer).reviewer
    try:
        name = source() if source is not None else ""
    except RuntimeError:  # the review widget is gone
        name = ""
    return name.strip() or login_name()


# ----------------------------------------------------------------------------- the label
def bind_model_label(viewer: Any, label: QLabel) -> ActiveModel:
    """Show the active model in `label` (text and card as tooltip) and follow it."""
    model = active_model(viewer)
    ref = weakref.ref(label)

    def update(m: ActiveModel) -> None:
        target = ref()
        if target is None:
            model.changed.disconnect(update)
            return
        try:
            target.setText(m.label_text())
            target.setToolTip(m.card_text())
        except RuntimeError:  # the Qt object is gone
            model.changed.disconnect(update)

    update(model)
    # `update` lets go by itself once the label is gone. No `destroyed` hook: Qt emits it
    # while the C++ object is half torn down, and touching the signal then crashed the
    # process (a later test's event loop ran it).
    model.changed.connect(update)
    return model


class ModelLabel(QLabel):
    """The label "model: NAME (sha ...)" of a viewer's active model, its card as the tooltip."""

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self.setWordWrap(True)
        self.setStyleSheet("color: #9fc5e8;")
        bind_model_label(viewer, self)


# ----------------------------------------------------------------------------- writers
_WRITERS: list[tuple[weakref.ref[Any], Callable[[Any], TallyStore | None]]] = []


def register_writer(owner: Any, store_of: Callable[[Any], TallyStore | None]) -> None:
    """`owner` (a widget) may hold a store open for writing: `store_of(owner)` says which
    (None: none now). Entries go when the owner is collected.
    """
    _WRITERS.append((weakref.ref(owner), store_of))


def writer_stores() -> list[TallyStore]:
    """The stores widgets of this process hold open for writing now."""
    found = []
    for ref, store_of in list(_WRITERS):
        owner = ref()
        if owner is None:
            _WRITERS.remove((ref, store_of))
            continue
        try:
            store = store_of(owner)
        except (RuntimeError, AttributeError):  # a widget half closed
            continue
        if store is not None and store.mode == "a":
            found.append(store)
    return found


def writer_store(path: str | Path) -> TallyStore | None:
    """A store open for writing at `path` by a widget of this process, or None."""
    want = Path(path).resolve()
    return next((s for s in writer_stores() if Path(s.path).resolve() == want), None)


@contextlib.contextmanager
def open_writer(path: str | Path) -> Iterator[TallyStore]:
    """The store at `path` for writing: a widget's open writer when there is one (left
    open), else opened now and closed after. ValueError (one line) when another program
    writes it.
    """
    held = writer_store(path)
    if held is not None:
        yield held
        return
    from napari_foram.tally.store import TallyStore

    try:
        store = TallyStore.open(path, mode="a")
    except ValueError as exc:
        if "one writer at a time" in str(exc):
            raise ValueError(
                f"{Path(path).name} is being written (a scan or a batch run?): label it "
                "when that ends, or in the widget that writes it"
            ) from None
        raise
    with store:
        yield store


def bind_model_field(viewer: Any, edit: Any, say: Callable[[str], object]) -> ActiveModel:
    """A widget's model field (a QLineEdit: "demo" or a checkpoint path) and the active
    model, one thing: the field shows it and follows it, and a model typed (Enter or
    leaving the field) or picked there becomes the active one (`say` tells why not).
    """
    from napari_foram.reasons import one_line

    model = active_model(viewer)
    ref = weakref.ref(edit)

    def typed() -> None:
        field = ref()
        text = (field.text().strip() if field is not None else "") or DEFAULT_MODEL
        if text == model.source:
            return
        try:
            model.set(text)
        except (ValueError, OSError) as exc:
            say(f"cannot use that model: {one_line(exc)}")

    def follow(m: ActiveModel) -> None:
        field = ref()
        try:
            if field is not None and field.text().strip() != m.source:
                field.setText(m.source)
        except RuntimeError:  # the field is gone
            field = None
        if field is None:
            model.changed.disconnect(follow, missing_ok=True)

    edit.editingFinished.connect(typed)
    model.changed.connect(follow)  # `follow` lets go by itself (see `bind_model_label`)
    if edit.text().strip() not in ("", DEFAULT_MODEL):
        typed()  # a model given to the widget: the active one from now on
    else:
        follow(model)
    edit.model_typed = typed  # the "..." pickers call it after setting the text
    return model
