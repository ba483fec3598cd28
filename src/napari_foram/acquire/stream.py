"""A bounded queue and one processing worker between acquisition and analysis.

Pure Python (no pymmcore-plus, no Qt). The acquisition thread (``run_scan``'s caller, or
`LiveStream`'s thread) only calls `FrameQueue.put`; one `ProcessingWorker` thread takes
frames and runs the slow part (detect, de-duplicate, classify, store).

Two policies, because the two ways of imaging want opposite things:

* ``"scan"``: a tray scan must never lose a field, so a full queue *blocks* the producer
  (the stage simply waits for the analysis).
* ``"live"``: live preview wants the present, so a full queue drops its *oldest* frame to
  make room for the newest. Dropped frames are counted, never silently lost.

If the worker's handler raises, the worker records the exception and closes the queue so a
producer blocked in ``put`` wakes up with `QueueClosed` instead of hanging; `stop` and
`raise_if_failed` re-raise it as `ProcessingError`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

from napari_foram.reasons import one_line

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["FrameQueue", "ProcessingError", "ProcessingWorker", "QueueClosed", "QueuePolicy"]

T = TypeVar("T")
QueuePolicy = Literal["scan", "live"]


class QueueClosed(Exception):
    """The queue was closed: no more puts; gets after the last item raise this too."""


class ProcessingError(RuntimeError):
    """The processing handler raised; the original exception is the __cause__."""


class FrameQueue(Generic[T]):
    """Bounded, thread-safe FIFO with a "scan" (block) or "live" (drop oldest) policy.

    Parameters
    ----------
    maxsize
        Items held at most (>= 1). Frames are large (a 5 MP RGB frame is 15 MB), so keep
        it small: it bounds memory, not throughput.
    policy
        "scan": `put` blocks while full. "live": `put` never blocks; it drops the oldest.
    """

    def __init__(self, maxsize: int = 8, policy: QueuePolicy = "scan") -> None:
        if int(maxsize) != maxsize or maxsize < 1:
            raise ValueError(f"maxsize must be a positive integer, got {maxsize!r}")
        if policy not in ("scan", "live"):
            raise ValueError(f"policy must be 'scan' or 'live', got {policy!r}")
        self.maxsize = int(maxsize)
        self.policy: QueuePolicy = policy
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._close_reason = ""
        self._held = False
        self.put_count = 0
        self.dropped = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return self._closed

    @property
    def held(self) -> bool:
        """True while `hold` keeps consumers waiting."""
        return self._held

    def hold(self, held: bool = True) -> None:
        """Keep consumers waiting (`get` returns nothing) until released; puts go on.

        A paused scan holds its queue: the fields already imaged wait here instead of
        being processed, and release continues with them in order. Closing the queue
        releases it (a stop must not leave the worker waiting).
        """
        with self._cond:
            self._held = bool(held)
            self._cond.notify_all()

    def put(self, item: T, timeout: float | None = None) -> None:
        """Add `item` (producer side).

        Parameters
        ----------
        timeout
            "scan" policy only: seconds to wait for room; None waits as long as needed.

        Raises
        ------
        QueueClosed
            The queue is (or became, while waiting) closed.
        TimeoutError
            "scan" policy: still full after `timeout` seconds.
        """
        with self._cond:
            if self._closed:
                raise QueueClosed(self._close_reason or "queue is closed")
            if self.policy == "live":
                while len(self._items) >= self.maxsize:
                    self._items.popleft()
                    self.dropped += 1
            else:
                deadline = None if timeout is None else time.monotonic() + timeout
                while len(self._items) >= self.maxsize and not self._closed:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(f"queue still full after {timeout} s")
                    self._cond.wait(remaining)
                if self._closed:
                    raise QueueClosed(self._close_reason or "queue is closed")
            self._items.append(item)
            self.put_count += 1
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> T:
        """Take the oldest item (consumer side).

        Raises
        ------
        QueueClosed
            The queue is closed and empty: nothing will ever come.
        TimeoutError
            Nothing arrived within `timeout` seconds.
        """
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items or (self._held and not self._closed):
                if self._closed and not self._items:
                    raise QueueClosed(self._close_reason or "queue is closed")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no item within {timeout} s")
                self._cond.wait(remaining)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def get_many(self, max_items: int, timeout: float | None = None) -> list[T]:
        """Wait for one item like `get`, then take up to `max_items` in all without waiting.

        What is already queued goes in one batch (a GPU classifies the crops of several
        frames in one pass); nothing waits for a batch to fill, so latency stays that of
        `get` when frames arrive slower than they are processed.
        """
        if int(max_items) < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items!r}")
        first = self.get(timeout)
        with self._cond:
            items = [first]
            while self._items and len(items) < max_items and not self._held:
                items.append(self._items.popleft())
            self._cond.notify_all()
            return items

    def close(self, reason: str = "") -> None:
        """No more puts; wake every waiting producer and consumer. Items left stay gettable."""
        with self._cond:
            if not self._closed:
                self._closed = True
                self._close_reason = reason
            self._cond.notify_all()

    def discard_pending(self) -> int:
        """Remove and count the items not yet taken (used when stopping without draining)."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self._cond.notify_all()
            return n


class ProcessingWorker(Generic[T]):
    """One thread that takes items from a `FrameQueue` and calls `handler` on each.

    Parameters
    ----------
    queue
        Where the frames come from.
    handler
        Called with each item in the worker thread. If it raises, the worker stops, closes
        the queue (producers get `QueueClosed`) and keeps the exception in `error`.
    name
        Thread name (shows in debuggers and thread dumps).
    batch_handler, max_batch
        Instead of `handler`: called with a list of up to `max_batch` items, all those
        queued when the worker comes round (see `FrameQueue.get_many`). Items keep their
        order.
    """

    def __init__(
        self,
        queue: FrameQueue[T],
        handler: Callable[[T], None] | None = None,
        *,
        name: str = "napari-foram-processing",
        batch_handler: Callable[[list[T]], None] | None = None,
        max_batch: int = 1,
    ) -> None:
        if (handler is None) == (batch_handler is None):
            raise ValueError("give exactly one of handler and batch_handler")
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        self.queue = queue
        self.handler = handler
        self.batch_handler = batch_handler
        self.max_batch = int(max_batch) if batch_handler is not None else 1
        #: Size of the largest batch handled so far (1 without a batch handler).
        self.largest_batch = 0
        self.processed = 0
        self.discarded = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    @property
    def dropped(self) -> int:
        """Frames the queue dropped ("live" policy) plus those discarded at stop."""
        return self.queue.dropped + self.discarded

    @property
    def is_alive(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()

    def start(self) -> ProcessingWorker[T]:
        """Start the thread (once)."""
        if self._started:
            raise ValueError("worker already started")
        self._started = True
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                items = self.queue.get_many(self.max_batch)
            except QueueClosed:
                return
            try:
                if self.batch_handler is not None:
                    self.batch_handler(items)
                else:
                    assert self.handler is not None
                    self.handler(items[0])
            except Exception as exc:
                self.error = exc
                self.queue.close(f"processing failed: {type(exc).__name__}: {one_line(exc)}")
                return
            self.processed += len(items)
            self.largest_batch = max(self.largest_batch, len(items))

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Close the queue, finish (or discard) what is pending, join the thread.

        Parameters
        ----------
        drain
            True: process every frame already queued (a scan's frames all count). False:
            discard them (live preview), counting them in `dropped`.
        timeout
            Seconds to wait for the thread; None waits until it ends.

        Raises
        ------
        ProcessingError
            The handler raised at some point (the original is chained).
        TimeoutError
            The thread did not finish within `timeout`.
        """
        if not drain:
            self.discarded += self.queue.discard_pending()
        self.queue.close("worker stopped")
        if self._started:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"processing worker still busy after {timeout} s")
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        """Re-raise the handler's exception as `ProcessingError`, if there was one."""
        if self.error is not None:
            raise ProcessingError(
                f"processing failed after {self.processed} frames: "
                f"{type(self.error).__name__}: {one_line(self.error)}"
            ) from self.error

    def stats(self) -> dict[str, int]:
        """Counts for a status line: processed, dropped, pending."""
        return {"processed": self.processed, "dropped": self.dropped, "pending": len(self.queue)}

    def __enter__(self) -> ProcessingWorker[T]:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop(drain=exc_info[0] is None)
