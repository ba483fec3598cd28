"""Small Qt building blocks the widgets share."""

from __future__ import annotations

import threading
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


def thread_running(thread: threading.Thread | None) -> bool:
    """Whether a widget's background thread exists and is still working."""
    return thread is not None and thread.is_alive()


def join_thread(thread: threading.Thread | None, timeout: float | None = None) -> bool:
    """Wait for a widget's background thread (tests and scripts); True once it has ended."""
    if thread is None:
        return True
    thread.join(timeout)
    return not thread.is_alive()
