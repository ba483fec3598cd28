"""Waiting for a real napari window in the screenshot scripts (not part of the package).

The scripts drive napari as a user would and must let Qt run while they wait: these two
helpers are the one way they do it.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from qtpy.QtWidgets import QApplication

if TYPE_CHECKING:
    from collections.abc import Callable


def wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    """Process Qt events until `predicate()` holds; exit the script after `timeout` s."""
    app = QApplication.instance()
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            sys.exit("timed out")
        app.processEvents()
        time.sleep(0.02)


def settle(seconds: float = 1.0) -> None:
    """Let Qt draw (napari's canvas and the widgets) for a moment."""
    end = time.monotonic() + seconds
    wait_for(lambda: time.monotonic() > end, seconds + 5)
