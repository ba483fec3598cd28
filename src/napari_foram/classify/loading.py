"""From what a user names ("demo" or a checkpoint file) to a ready `Predictor`.

The one place that resolves "demo": every command, widget and runner goes through
`checkpoint_file` (or `load_predictor`, which uses it), so the demo model is trained,
cached and found the same way everywhere.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from napari_foram._progress import ProgressCallback, progress_callback

if TYPE_CHECKING:
    import os
    from collections.abc import Callable

    from napari_foram.classify.predict import Predictor

__all__ = ["DEMO_MODEL", "checkpoint_file", "load_predictor"]

#: What names the demo model wherever a checkpoint is asked for.
DEMO_MODEL = "demo"


def checkpoint_file(
    model: str | os.PathLike[str],
    progress: ProgressCallback | None = None,
    *,
    download: bool | None = None,
) -> Path:
    """The checkpoint file `model` names, as an absolute path: the cached demo model for
    "demo" (trained at first use, reporting through `progress`; `download` says whether
    its ImageNet weights may be fetched, None: yes unless ``$NAPARI_FORAM_NO_DOWNLOAD``),
    else the file itself, which must be a regular file (a folder or a FIFO is said to be
    one in a line: a FIFO's read would block).
    """
    if str(model) == DEMO_MODEL:
        from napari_foram.classify.demo_model import demo_checkpoint

        return Path(demo_checkpoint(progress=progress, download=download)).resolve()
    from napari_foram._outputs import check_input_file

    return check_input_file(Path(model).expanduser(), "checkpoint").resolve()


def load_predictor(
    model: str | Path,
    *,
    device: str = "auto",
    progress: bool | Callable[[int, int, str], None] = True,
    cpu_threads: int | None = None,
    precision: str = "auto",
    download_weights: bool | None = None,
) -> Predictor:
    """A predictor from a checkpoint path, or from the demo model when `model` is "demo".

    The demo model is trained on synthetic crops at first use and cached (see
    `napari_foram.classify.demo_model`); `progress` (a terminal bar when True, or a
    ``(done, total, message)`` callback) shows that first run, and the first-use
    measurement of the CPU precision paths (`napari_foram.classify.precision`; with a
    terminal bar, the choice is then printed to stderr). `download_weights` says whether
    the demo model's ImageNet weights may be downloaded when not on this machine (None:
    yes unless ``$NAPARI_FORAM_NO_DOWNLOAD`` says no).
    """
    from napari_foram.classify.predict import Predictor

    if callable(progress) or str(model) != DEMO_MODEL:
        path = checkpoint_file(
            model, progress if callable(progress) else None, download=download_weights
        )
    else:
        with progress_callback("training the demo model (first run only)", progress) as cb:
            path = checkpoint_file(model, cb, download=download_weights)
    if callable(progress):
        return Predictor.from_checkpoint(
            path,
            device=device,
            cpu_threads=cpu_threads,
            precision=precision,
            precision_progress=progress,
        )
    with progress_callback("choosing the CPU precision (first run only)", progress) as cb:
        predictor = Predictor.from_checkpoint(
            path,
            device=device,
            cpu_threads=cpu_threads,
            precision=precision,
            precision_progress=cb,
        )
    if progress is True:
        print(f"napari-foram: {predictor.precision_choice.describe()}", file=sys.stderr)
    return predictor
