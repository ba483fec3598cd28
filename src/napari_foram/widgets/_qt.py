"""Small Qt building blocks the widgets share: spin boxes, path fields, scroll docks, the
background-thread runner and napari activity-dock progress.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any, TypeVar

from qtpy.QtCore import QEvent, QObject, QSize, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    from collections.abc import Callable

SpinT = TypeVar("SpinT", QSpinBox, QDoubleSpinBox)


def spin(box: SpinT, low: float, high: float, value: float, step: float = 1) -> SpinT:
    """Configure a spin box (PyQt6's stubs take no property keywords)."""
    box.setRange(low, high)  # type: ignore[arg-type]
    box.setSingleStep(step)  # type: ignore[arg-type]
    box.setValue(value)  # type: ignore[arg-type]
    return box


def with_browse(edit: QLineEdit, pick: Callable[[], object]) -> QWidget:
    """A path field with a "..." button beside it that calls `pick`.

    The field may shrink (a long path scrolls inside it) and shows its whole text as a
    tooltip, so a path never forces the dock wider than a laptop screen allows.
    """
    row = QWidget()
    box = QHBoxLayout(row)
    box.setContentsMargins(0, 0, 0, 0)
    button = QPushButton("...")
    button.setMaximumWidth(32)
    button.clicked.connect(pick)
    edit.setMinimumWidth(60)
    edit.textChanged.connect(edit.setToolTip)
    box.addWidget(edit)
    box.addWidget(button)
    return row


#: Width (px) a dock asks for: on a 1366 px screen napari's layer docks take ~270 px,
#: so two docks of ours on the right leave the canvas more than half the window.
DOCK_WIDTH_HINT = 380


class _DockScroll(QScrollArea):
    """A scroll area that asks for a laptop-sized share of the window (`sizeHint`)
    instead of its whole contents' size; what does not fit scrolls.
    """

    def __init__(self, height_hint: int) -> None:
        super().__init__()
        self._height_hint = height_hint
        self._asked = False

    def sizeHint(self) -> QSize:
        content = self.widget()
        width = content.sizeHint().width() + 20 if content is not None else DOCK_WIDTH_HINT
        return QSize(min(width, DOCK_WIDTH_HINT), self._height_hint)

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        if not self._asked:
            # Qt gives a dock added below another only its minimum height; the minimum
            # is small (every dock of the plugin fits a 768 px screen), so the dock asks
            # once for its hint, which Qt grants from the space the others can spare.
            self._asked = True
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, self._ask_for_room)

    def _ask_for_room(self) -> None:
        from qtpy.QtWidgets import QDockWidget, QMainWindow

        try:
            dock = self.parentWidget()
            while dock is not None and not isinstance(dock, QDockWidget):
                dock = dock.parentWidget()
            main = dock.parentWidget() if dock is not None else None
            if isinstance(main, QMainWindow) and dock is not None and not dock.isFloating():
                main.resizeDocks([dock], [self._height_hint], Qt.Orientation.Vertical)
        except RuntimeError:  # closed before the event loop came back
            pass


def scrolling(content: QWidget, height_hint: int = 360, min_height: int = 90) -> QScrollArea:
    """`content` in a vertical scroll area: a dock taller than the screen scrolls instead
    of forcing napari's window (and every other dock) taller. `height_hint` is the height
    it asks for, `min_height` the least it keeps when docks share a column (Qt gives a
    dock added beside another only its minimum until the user drags the divider).
    """
    area = _DockScroll(height_hint)
    area.setMinimumHeight(min_height)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(content)
    # The area never takes the keyboard: arrow keys would scroll it instead of reaching
    # the widget (the review keys Left / Right).
    area.setFocusPolicy(Qt.FocusPolicy.NoFocus)
    return area


def scroll_layout(widget: QWidget, height_hint: int = 360, min_height: int = 90) -> QVBoxLayout:
    """Give `widget` one scroll area filling it; the layout to put its contents in."""
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    inner = QWidget()
    outer.addWidget(scrolling(inner, height_hint, min_height))
    layout = QVBoxLayout(inner)
    layout.setContentsMargins(4, 4, 4, 4)  # every pixel of a narrow dock for its fields
    return layout


def scroll_container(
    outer: Any, body: Any, height_hint: int = 360, min_height: int = 120
) -> QScrollArea:
    """Put magicgui container `body` inside `outer` (a magicgui container napari docks)
    in a scroll area: magicgui's own ``scrollable=True`` is lost when napari docks the
    container (it takes ``.native``, the widget inside the scroll area). `body` stays a
    child of `outer` for magicgui, so napari's ``reset_choices`` still reaches it.
    """
    outer.append(body)
    layout = outer.native.layout()
    layout.setContentsMargins(0, 0, 0, 0)
    layout.removeWidget(body.native)
    area = scrolling(body.native, height_hint, min_height)
    layout.addWidget(area)
    return area


class Section(QWidget):
    """A titled section that folds away with a click on its title (collapsible docks)."""

    def __init__(self, title: str, content: QWidget, *, expanded: bool = True) -> None:
        super().__init__()
        self.toggle = QToolButton()
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setChecked(expanded)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.content = content
        self.toggle.toggled.connect(self._set_expanded)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.setSpacing(2)
        box.addWidget(self.toggle)
        box.addWidget(content)
        self._set_expanded(expanded)

    def _set_expanded(self, expanded: bool) -> None:
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        self.content.setVisible(expanded)


class _Bridge(QObject):
    """Carries a worker thread's events to the GUI thread (a queued connection: the
    bridge lives on the GUI thread, the worker emits from its own).
    """

    event = Signal(str, object)


class Runner:
    """A widget's background threads and the one bridge that brings their events back.

    Every widget uses this one runner instead of its own QObject and threads: a worker
    calls `emit(kind, *args)`, the handler registered with `on(kind, ...)` runs on the
    GUI thread. `close()` (from the widget's closeEvent) asks the workers to stop and
    waits for them, so no thread outlives its widget.
    """

    def __init__(self, parent: QObject) -> None:
        self._bridge = _Bridge(parent)
        self._bridge.event.connect(self._dispatch)
        self._handlers: dict[str, Callable[..., object]] = {}
        self._threads: list[threading.Thread] = []
        #: Set by `close()` (and by widgets' Cancel buttons): long work checks it.
        self.stop = threading.Event()

    def on(self, kind: str, handler: Callable[..., object]) -> None:
        """Call `handler(*args)` on the GUI thread for every `emit(kind, *args)`."""
        self._handlers[kind] = handler

    def emit(self, kind: str, *args: Any) -> None:
        """Send an event to the GUI thread (safe from any thread)."""
        # RuntimeError: the widget (and its bridge) is gone: nobody to tell.
        with contextlib.suppress(RuntimeError):
            self._bridge.event.emit(kind, args)

    def _dispatch(self, kind: str, args: tuple[Any, ...]) -> None:
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(*args)

    def start(self, name: str, target: Callable[[], object]) -> threading.Thread:
        """Run `target` on a new daemon thread named napari-foram-`name`."""
        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(target=target, daemon=True, name=f"napari-foram-{name}")
        self._threads.append(thread)
        thread.start()
        return thread

    def busy(self, name: str | None = None) -> bool:
        """Whether a worker (the one named napari-foram-`name`, or any) is running."""
        return any(
            t.is_alive() and (name is None or t.name == f"napari-foram-{name}")
            for t in self._threads
        )

    def threads(self) -> list[threading.Thread]:
        """The workers still running."""
        return [t for t in self._threads if t.is_alive()]

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every worker (tests, scripts, closing); True once all have ended."""
        for thread in list(self._threads):
            thread.join(timeout)
        return not self.threads()

    def close(self, timeout: float | None = 60.0) -> bool:
        """Ask the workers to stop, wait for them, and drop the handlers; True if all
        ended within `timeout`.
        """
        self.stop.set()
        ended = self.wait(timeout)
        self._handlers.clear()
        return ended


class _CloseWatch(QObject):
    """Closes a runner when the watched widget closes or is destroyed."""

    def __init__(self, widget: QWidget, runner: Runner) -> None:
        super().__init__(widget)
        self._runner = runner
        widget.installEventFilter(self)
        widget.destroyed.connect(lambda *_: runner.close())

    def eventFilter(self, watched: QObject | None, event: QEvent | None) -> bool:
        if event is not None and event.type() == QEvent.Type.Close:
            self._runner.close()
        return False


def close_with(widget: QWidget, runner: Runner) -> None:
    """Stop and join `runner`'s threads when `widget` closes (for magicgui containers,
    whose Qt widget has no closeEvent of ours to override).
    """
    _CloseWatch(widget, runner)


class ActivityProgress:
    """A progress bar in napari's activity dock (`napari.utils.progress`), kept in step
    with a widget's own; created on first use, closed when the work ends.

    napari's bar calls ``QApplication.processEvents()`` on every change. Changed from
    inside one of our slots, it would run the event loop there: a queued result could
    enter its slot again before the first call returned. So `update` only records the
    latest figures, and a zero-delay timer applies them from the event loop itself, one
    change for however many updates came in between.
    """

    def __init__(self) -> None:
        self._bar: Any = None
        self._latest: tuple[int, int, str] | None = None
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._apply)

    def update(self, done: int, total: int, description: str) -> None:
        """Show `done` of `total` with `description` (applied once control returns to
        the event loop).
        """
        self._latest = (done, total, description)
        if not self._timer.isActive():
            self._timer.start()

    def _apply(self) -> None:
        from napari.utils import progress

        if self._latest is None:
            return
        done, total, description = self._latest
        self._latest = None
        if self._bar is None:
            self._bar = progress(total=max(total, 1), desc=description)
        bar = self._bar
        if bar.total != max(total, 1):
            bar.total = max(total, 1)
        bar.set_description(description)
        bar.n = min(max(done, 0), bar.total)
        bar.refresh()

    def close(self) -> None:
        """Drop a change not yet shown and close the bar."""
        self._timer.stop()
        self._latest = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _hex(rgba: tuple[float, ...]) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgba[:3])


class ClassLegend(QLabel):
    """The class colours (and the marks for unsure and uncertain specimens) as a one- or
    two-line legend: the same colours as the layers and the plots (`class_colour`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.setWordWrap(True)
        self.setTextFormat(Qt.TextFormat.RichText)
        self.classes: list[str] = []

    def set_classes(
        self, classes: list[str], *, unsure: bool = True, uncertain: bool = False
    ) -> None:
        from napari_foram.tally.export import UNSURE_COLOUR, UNSURE_LABEL, class_colour

        self.classes = list(classes)
        items = [
            f'<span style="color:{_hex(class_colour(name, k))}">&#9679;</span>&nbsp;'
            f"{name.replace('_', ' ')}"
            for k, name in enumerate(classes)
        ]
        if unsure:
            items.append(
                f'<span style="color:{_hex(UNSURE_COLOUR)}">&#9679;</span>&nbsp;{UNSURE_LABEL}'
            )
        if uncertain:
            red_square = '<span style="color:#ff0000">&#9633;</span>'
            items.append(f"{red_square}&nbsp;uncertain (to review)")
        self.setText(" &nbsp; ".join(items))
