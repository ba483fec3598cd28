"""Parts of the Foram review widget: its keys, the crop picture, the probability bars
and small helpers (kept apart so that widgets/review.py holds the widget itself).
"""

from __future__ import annotations

import getpass
import math
from typing import Any

import numpy as np
from qtpy.QtCore import QEvent, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QFontMetrics, QImage, QKeyEvent, QPainter, QPen, QPixmap
from qtpy.QtWidgets import QDoubleSpinBox, QSizePolicy, QToolTip, QWidget

from napari_foram.tally.export import class_colour

#: Side of the crop shown in the widget (px): the 224 px crop, enlarged.
CROP_DISPLAY_PX = 256

_KEY_ACTIONS = {
    int(Qt.Key.Key_Return): "accept",
    int(Qt.Key.Key_Enter): "accept",
    int(Qt.Key.Key_A): "accept",
    int(Qt.Key.Key_D): "dubious",
    int(Qt.Key.Key_X): "reject",
    int(Qt.Key.Key_Backspace): "undo",
    int(Qt.Key.Key_U): "undo",
    int(Qt.Key.Key_Right): "next",
    int(Qt.Key.Key_Left): "previous",
}
_DIGITS = {int(getattr(Qt.Key, f"Key_{d}")): d for d in range(1, 10)}


def key_action(event: QKeyEvent) -> str | None:
    """The review action a key press asks for ("accept", "class 2", ...), or None.

    Only plain keys (no Ctrl, Alt, Shift or Meta): napari's and Qt's shortcuts keep theirs.
    """
    no_modifier = event.modifiers() in (
        Qt.KeyboardModifier.NoModifier,
        Qt.KeyboardModifier.KeypadModifier,
    )
    if not no_modifier:
        return None
    key = int(event.key())
    if key in _DIGITS:
        return f"class {_DIGITS[key]}"
    return _KEY_ACTIONS.get(key)


def crop_pixmap(crop: np.ndarray, side: int = CROP_DISPLAY_PX) -> QPixmap:
    """A (224, 224, 3) uint8 crop as a QPixmap of `side` px (smoothly scaled)."""
    rgb = np.ascontiguousarray(crop[..., :3], dtype=np.uint8)
    h, w = rgb.shape[:2]
    image = QImage(rgb.tobytes(), w, h, 3 * w, QImage.Format.Format_RGB888)
    # copy(): the QImage borrows the bytes' buffer, which dies with this function.
    pixmap = QPixmap.fromImage(image.copy())
    return pixmap.scaled(
        side,
        side,
        Qt.AspectRatioMode.KeepAspectRatio,
        Qt.TransformationMode.SmoothTransformation,
    )


class ProbabilityBars(QWidget):
    """The MC-dropout mean probability of every class as a horizontal bar, with +-1 SD.

    One row per class, numbered as the keys that choose it; the predicted class's name is
    bold, a class a person gave is marked. Drawn with QPainter: no matplotlib canvas.
    """

    ROW_PX = 22
    #: Width of the "0.93 +- 0.04" column (px).
    VALUE_PX = 92
    #: The bars keep at least this much of the width (px); the names get the rest.
    MIN_BAR_PX = 40

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.class_names: list[str] = []
        self.probs = np.zeros(0)
        self.sd = np.zeros(0)
        self.predicted = -1
        self.reviewed = -1
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMouseTracking(True)

    # ------------------------------------------------------------------ the names
    def full_name(self, k: int) -> str:
        """Row `k`'s whole text: key number, class name (spaces for underscores) and the
        mark of a class a person gave.
        """
        mark = " \u2714" if k == self.reviewed else ""
        return f"{k + 1} {self.class_names[k].replace('_', ' ')}{mark}"

    def label_width(self) -> int:
        """Pixels for the names: as wide as the longest needs (bold), within what the
        bars and values leave.
        """
        bold = QFont(self.font())
        bold.setBold(True)
        metrics = QFontMetrics(bold)
        need = max(
            (metrics.horizontalAdvance(self.full_name(k)) for k in range(len(self.class_names))),
            default=0,
        )
        room = max(40, self.width() - self.VALUE_PX - self.MIN_BAR_PX - 4)
        return min(need + 6, room, int(self.width() * 0.6))

    def shown_name(self, k: int) -> str:
        """Row `k`'s text as drawn: elided in the middle where the dock is too narrow
        (the tooltip has it whole; species names such as Globigerinoides_ruber_white
        were clipped at the right).
        """
        font = QFont(self.font())
        font.setBold(k == self.predicted)
        return QFontMetrics(font).elidedText(
            self.full_name(k), Qt.TextElideMode.ElideMiddle, self.label_width()
        )

    def row_at(self, y: float) -> int:
        """The class row at height `y` (px), or -1."""
        k = int((y - 4) // self.ROW_PX)
        return k if 0 <= k < len(self.class_names) and y >= 4 else -1

    def tooltip_at(self, y: float) -> str:
        """The tooltip of the row at height `y`: its whole name and its probability."""
        k = self.row_at(y)
        if k < 0:
            return ""
        text = self.full_name(k)
        if k < self.probs.size and math.isfinite(float(self.probs[k])):
            sd = float(self.sd[k]) if k < self.sd.size else 0.0
            text += f": p = {float(self.probs[k]):.2f} \u00b1 {sd:.2f}"
        return text

    def event(self, event: QEvent | None) -> bool:
        if event is not None and event.type() == QEvent.Type.ToolTip:
            pos = event.pos()  # type: ignore[attr-defined]
            text = self.tooltip_at(pos.y())
            if text:
                QToolTip.showText(event.globalPos(), text, self)  # type: ignore[attr-defined]
            else:
                QToolTip.hideText()
            return True
        return super().event(event)

    def set_values(
        self,
        class_names: list[str],
        probs: np.ndarray,
        sd: np.ndarray,
        predicted: int,
        reviewed: int = -1,
    ) -> None:
        """Show one specimen (probs and sd: (K,)); an empty `probs` clears the chart."""
        self.class_names = list(class_names)
        self.probs = np.asarray(probs, dtype=np.float64)
        self.sd = np.asarray(sd, dtype=np.float64)
        self.predicted, self.reviewed = int(predicted), int(reviewed)
        self.setFixedHeight(max(1, len(self.class_names)) * self.ROW_PX + 8)
        self.update()

    def paintEvent(self, event: Any) -> None:
        painter = QPainter(self)
        try:
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            width = self.width()
            label_w = self.label_width()
            value_w = self.VALUE_PX
            bar_x = label_w + 4
            bar_w = max(10, width - bar_x - value_w)
            text = self.palette().windowText().color()
            normal, bold = QFont(self.font()), QFont(self.font())
            bold.setBold(True)
            for k, name in enumerate(self.class_names):
                top = 4 + k * self.ROW_PX
                p = float(self.probs[k]) if k < self.probs.size else math.nan
                sd = float(self.sd[k]) if k < self.sd.size else 0.0
                painter.setFont(bold if k == self.predicted else normal)
                painter.setPen(text)
                painter.drawText(
                    QRectF(0, top, label_w, self.ROW_PX),
                    int(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft),
                    self.shown_name(k),
                )
                painter.setPen(QPen(QColor(128, 128, 128)))
                painter.drawRect(QRectF(bar_x, top + 4, bar_w, self.ROW_PX - 8))
                if not math.isfinite(p):
                    continue
                r, g, b, _ = class_colour(name, k)
                painter.fillRect(
                    QRectF(bar_x, top + 4, bar_w * min(max(p, 0.0), 1.0), self.ROW_PX - 8),
                    QColor.fromRgbF(r, g, b),
                )
                if math.isfinite(sd) and sd > 0:  # the MC spread: +-1 SD whisker
                    lo = bar_x + bar_w * min(max(p - sd, 0.0), 1.0)
                    hi = bar_x + bar_w * min(max(p + sd, 0.0), 1.0)
                    mid = top + self.ROW_PX / 2
                    painter.setPen(QPen(text, 1.5))
                    painter.drawLine(int(lo), int(mid), int(hi), int(mid))
                    painter.drawLine(int(lo), int(mid - 4), int(lo), int(mid + 4))
                    painter.drawLine(int(hi), int(mid - 4), int(hi), int(mid + 4))
                painter.setPen(text)
                painter.setFont(normal)
                painter.drawText(
                    QRectF(bar_x + bar_w + 4, top, value_w - 4, self.ROW_PX),
                    int(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft),
                    f"{p:.2f} \u00b1 {sd:.2f}",
                )
        finally:
            painter.end()


def double_spin(low: float, high: float, value: float, step: float) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setDecimals(3)
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setValue(value)
    return box


def camera_and_canvas(viewer: Any) -> tuple[Any, tuple[int, ...]]:
    """The viewer's camera and canvas size in pixels (napari >= 0.9 keeps them on
    ``scene`` and ``canvas``; ``viewer.camera`` is deprecated there).
    """
    scene = getattr(viewer, "scene", None)
    camera = scene.camera if scene is not None else viewer.camera
    canvas = getattr(viewer, "canvas", None)
    size = tuple(int(v) for v in getattr(canvas, "size", ())) or (600, 800)
    return camera, size


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user database entry (containers)
        return ""
