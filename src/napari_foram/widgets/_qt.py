"""Small Qt building blocks the widgets share."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from qtpy.QtWidgets import QDoubleSpinBox, QHBoxLayout, QLineEdit, QPushButton, QSpinBox, QWidget

SpinT = TypeVar("SpinT", QSpinBox, QDoubleSpinBox)


def spin(box: SpinT, low: float, high: float, value: float, step: float = 1) -> SpinT:
    """Configure a spin box (PyQt6's stubs take no property keywords)."""
    box.setRange(low, high)  # type: ignore[arg-type]
    box.setSingleStep(step)  # type: ignore[arg-type]
    box.setValue(value)  # type: ignore[arg-type]
    return box


def with_browse(edit: QLineEdit, pick: Callable[[], object]) -> QWidget:
    """A path field with a "..." button beside it that calls `pick`."""
    row = QWidget()
    box = QHBoxLayout(row)
    box.setContentsMargins(0, 0, 0, 0)
    button = QPushButton("...")
    button.setMaximumWidth(32)
    button.clicked.connect(pick)
    box.addWidget(edit)
    box.addWidget(button)
    return row
