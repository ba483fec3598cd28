"""Progress bars for long work, as a plain callback the core can call.

Core functions take ``progress: Callable[[int, int, str], None] | None`` and know nothing
about terminals or Qt; the CLI passes a rich progress bar, widgets pass a signal emitter.
A call with ``total`` 0 names a stage whose size is not known yet (the message only).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

ProgressCallback = Callable[[int, int, str], None]


def _noop(done: int, total: int, message: str = "") -> None:
    return None


@contextmanager
def progress_callback(description: str, enabled: bool = True) -> Iterator[ProgressCallback]:
    """A rich progress bar on stderr, yielded as a ``(done, total, message)`` callback.

    The bar appears on the first call only, so work that turns out to be instant (a
    cached model) prints nothing.
    """
    if not enabled:
        yield _noop
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(file=sys.stderr)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[message]}"),
        console=console,
        transient=False,
    )
    task: list[Any] = []

    def update(done: int, total: int, message: str = "") -> None:
        # total <= 0: a stage before the count is known (loading a model, hashing
        # files): the message changes, the bar pulses.
        known = total > 0
        if not task:
            bar.start()
            task.append(bar.add_task(description, total=total if known else None, message=message))
        if known:
            bar.update(task[0], completed=done, total=total, message=message)
        else:
            bar.update(task[0], message=message)

    try:
        yield update
    finally:
        if task:
            bar.stop()
