"""Shared fixtures.

torch and torchvision are imported here, before any napari viewer exists: once napari has
drawn a canvas with Mesa's llvmpipe, a first `import torchvision` segfaults (triton's
bundled LLVM clashes with Mesa's). `import napari_foram` also blocks triton on machines
without a CUDA driver; doing both makes the crash impossible in the suite.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("PYMM_LOG_LEVEL", "CRITICAL")
# Predictors default to precision "auto", which on a CPU measures the fast paths on first
# use with each model (~30 s) and caches the decision in the user's cache. The suite pins
# fp32 (exact reference numbers, no calibration per random model); the precision tests
# unset it to exercise "auto" in a temporary cache.
os.environ.setdefault("NAPARI_FORAM_PRECISION", "fp32")
# ImageNet weights not on the machine would be downloaded by default (528 MB): the suite
# never does that, online or not, so tests without weights see the offline fallbacks. The
# tests of the download path itself unset it and serve files from this machine.
os.environ.setdefault("NAPARI_FORAM_NO_DOWNLOAD", "1")

import pytest
import torch
import torchvision  # noqa: F401

import napari_foram  # noqa: F401  (blocks triton first)

# Under pytest-xdist (`make test`: two workers) each worker takes its share of the cores
# for torch's intra-op threads: two workers with a thread per core each would run four
# busy threads on two cores, and every forward pass would wait on the other's.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, torch.get_num_threads() // _WORKERS))

REPO_ROOT = Path(__file__).resolve().parents[1]


def realdata_dir() -> Path:
    """../shared/realdata beside the checkout, or NAPARI_FORAM_REALDATA."""
    env = os.environ.get("NAPARI_FORAM_REALDATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "realdata"


@pytest.fixture
def realdata() -> Path:
    """The third-party real images; the test is skipped when they are absent."""
    path = realdata_dir()
    if not path.is_dir():
        pytest.skip(f"real images not found at {path}")
    return path


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of VGG16 + the study's head with random weights (seed 0), four classes:
    the real network's speed and shapes, with arbitrary classes.
    """
    from napari_foram.classify.checkpoint import ModelInfo, save_checkpoint
    from napari_foram.classify.model import build_model
    from napari_foram.synthetic import CLASSES

    model = build_model(len(CLASSES), backbone_weights="none", seed=0)
    path = tmp_path_factory.mktemp("model") / "random.safetensors"
    save_checkpoint(path, model, ModelInfo.for_model(model, CLASSES))
    return path


@pytest.fixture(scope="session")
def random_predictor(random_checkpoint: Path) -> object:
    """A CPU `Predictor` of `random_checkpoint`, built once for the session."""
    from napari_foram.classify.predict import Predictor

    return Predictor.from_checkpoint(random_checkpoint, device="cpu")


@pytest.fixture(scope="session", autouse=True)
def _internet_refused_at_once() -> Iterator[None]:
    """The suite never uses the internet; make a try fail in a millisecond, not a DNS wait.

    pyconify (pymmcore-widgets' stage icons, in Foram live) asks api.iconify.design for
    every icon missing from its cache, three requests an icon: without internet each
    waits for its DNS lookup to fail (~0.15 s; ~20 s for every Connect of Foram live).
    A proxy on this machine's discard port refuses at once, so the widget draws its own
    icons, as it does offline, straight away. A proxy already set is kept; servers on
    this machine (the download tests') are reached directly.
    """
    with pytest.MonkeyPatch.context() as mp:
        if not any(os.environ.get(k) for k in ("https_proxy", "HTTPS_PROXY", "all_proxy")):
            mp.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
            if not any(os.environ.get(k) for k in ("no_proxy", "NO_PROXY")):
                mp.setenv("NO_PROXY", "localhost,127.0.0.1,::1")
        yield


def _wait_by_the_clock(self: object, ms: int) -> None:
    """`qtbot.wait(ms)` (and so `qtbot.waitUntil`, which waits 10 ms between its checks)
    as a loop bounded by the clock: Qt events processed until `ms` have passed.

    pytest-qt's own wait runs a nested `QEventLoop` that a single-shot 10 ms `QTimer`
    quits. A slot that calls `QApplication.processEvents()` (napari's progress bars do, on
    every change: Foram live's scan progress, drawn from a timer slot) can handle that
    timer inside its own call, where the quit is lost: the wait, and `waitUntil`'s
    timeout with it, never ends (pytest-qt issue 284). Seen here as a test idle in that
    loop for minutes; on CI it held the suite until CI's clock ran out.
    """
    from qtpy.QtCore import QCoreApplication, QEvent, QEventLoop

    deadline = time.monotonic() + max(0, ms) / 1000
    while True:
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 10)
        # What a returning event loop does: objects given to deleteLater() go now.
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete.value)
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.002))


@pytest.fixture(autouse=True, scope="session")
def _qt_waits_end_on_time() -> Iterator[None]:
    """Every `qtbot.wait` / `waitUntil` of the suite ends on time (`_wait_by_the_clock`)."""
    from pytestqt.qtbot import QtBot

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(QtBot, "wait", _wait_by_the_clock)
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests without CUDA; `slow` ones run only with -m slow or RUN_SLOW=1."""
    has_cuda = torch.cuda.is_available()
    markexpr = config.getoption("-m") or ""
    run_slow = "slow" in markexpr or os.environ.get("RUN_SLOW") == "1"
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with -m slow or RUN_SLOW=1"))
        if "slow" in item.keywords and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(1800))  # [tool.pytest] timeout is for the rest
