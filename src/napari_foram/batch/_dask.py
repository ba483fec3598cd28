"""Batch tasks on Dask: the cluster or scheduler a run uses, a window of tasks on its
workers with results in task order, and how many local workers a machine accepts.

The local run and the single writer are `_run`'s; this module is where the workers are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections import deque
from typing import TYPE_CHECKING, Any

from napari_foram.reasons import one_line

from ._tasks import run_chunk

if TYPE_CHECKING:
    import threading
    from collections.abc import Generator, Iterator

    from distributed import Client

    from ._run import BatchConfig
    from ._tasks import ChunkTask, FileResult


#: Local Dask workers allowed per CPU core: each worker is a process with its own VGG16
#: (~0.6 GB); past a few per core they only add memory and start-up time.
MAX_WORKERS_PER_CORE = 4


def max_workers() -> int:
    """The most local Dask workers a batch accepts on this machine."""
    return MAX_WORKERS_PER_CORE * (os.cpu_count() or 1)


def workers_reason(workers: int) -> str:
    """One line: why `workers` local workers are refused."""
    cores = os.cpu_count() or 1
    return (
        f"{workers} workers is more than {MAX_WORKERS_PER_CORE} x the {cores} CPU "
        f"core(s) of this machine ({max_workers()}); each worker process holds its own "
        "VGG16 (~0.6 GB)"
    )


def _run_dask(
    client: Client, tasks: list[ChunkTask], stop: threading.Event, abandoned: list[str]
) -> Generator[tuple[ChunkTask, list[FileResult]], None, None]:
    """Tasks on a Dask cluster, results yielded in task order.

    A window of tasks runs ahead (two per worker thread), so workers never wait for the
    writer while results, which hold crops (150 kB each), do not pile up in memory.
    """
    window = max(2, 2 * sum(client.nthreads().values()))
    pending = iter(tasks)
    running: deque[tuple[ChunkTask, Any]] = deque()

    def submit() -> None:
        task = next(pending, None)
        if task is not None:
            running.append((task, client.submit(run_chunk, task, pure=False)))

    try:
        for _ in range(window):
            submit()
        while running:
            task, future = running[0]
            while not future.done() and not stop.wait(0.2):
                pass
            if stop.is_set():
                # Tasks under way are cancelled on the workers: nothing of them is kept.
                abandoned.extend(f.name for t, _ in running for f in t.files)
                return
            running.popleft()
            results = future.result()
            submit()
            yield task, results
    finally:
        for _, future in running:
            future.cancel()


@contextlib.contextmanager
def _dask_client(
    config: BatchConfig, client: Client | None
) -> Iterator[tuple[Client | None, int | None]]:
    """(client, torch threads per worker): the given client, a new LocalCluster's, a
    scheduler's, or (None, None) for a local run. Clusters made here are closed here.
    """
    if client is not None:
        yield client, None
        return
    if not config.workers and not config.scheduler:
        yield None, None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError(
            "Dask workers need dask.distributed: pip install 'dask[distributed]'"
        ) from None
    if config.scheduler:
        try:
            remote = Client(config.scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ValueError(
                f"cannot reach the Dask scheduler at {config.scheduler} ({one_line(exc)})"
            ) from None
        try:
            yield remote, None
        finally:
            with contextlib.suppress(Exception):
                remote.close()
        return
    # Processes, one thread each: the GIL-bound parts (reading, detection) run in parallel
    # and each process's torch gets its share of the cores.
    cluster = LocalCluster(
        n_workers=config.workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    local = Client(cluster)
    try:
        # A Ctrl-C in the terminal reaches the worker processes too: they leave stopping
        # to this process, which cancels their tasks and closes the cluster.
        local.run(_ignore_interrupts)
        yield local, max(1, (os.cpu_count() or 1) // config.workers)
    finally:
        with contextlib.suppress(Exception):
            local.close()
        with contextlib.suppress(Exception):
            cluster.close()


def _ignore_interrupts() -> None:
    """Ignore SIGINT in this (worker) process; run on a worker's main thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
