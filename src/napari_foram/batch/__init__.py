"""Batch folders: count a folder of microscope images into a tally store, resumably.

The folder's layout says which sample each image belongs to::

    FOLDER/                     images directly in FOLDER form one sample named FOLDER
      S1/  tray1.tif ...        every subfolder is one sample (images below it, any depth)
      S2/  a.png  b.png ...

or a sample sheet (CSV) maps files to samples, with their count-sheet fields: columns
``file`` (relative to FOLDER, or absolute) and ``sample_id``, plus any `SampleRecord` field
(``depth``, ``depth_unit``, ``dry_weight_g``, ...).

Every file goes through the same counting code as a tray scan (`CountingPipeline`:
detection, then VGG16 + MC dropout); files carry no stage position, so each file's whole
specimens are counted (files are taken to show different specimens). One writer, this
process, appends the results to a `TallyStore` in a fixed order: samples in plan order,
files in natural name order (``tray2`` before ``tray10``), or in sample-sheet order.

Resuming. Each file's SHA-256 is committed in the same atomic attrs write as its specimens
(`TallyStore.append_specimens(..., processed=...)`), files without specimens included. A
rerun skips the files a sample already holds, so a run killed at any moment and started
again ends with exactly the tallies of an uninterrupted run. Files are classified in
*tasks* of a few consecutive files of one sample (crops of all of them in one classifier
call: a GPU wants hundreds of crops per call); a task is committed as one commit and its
MC-dropout masks are seeded from its files' hashes, so a resumed run, a local run and a
Dask run compute every task alike.

Odd files (corrupt, empty, not an image, too small, too large) are listed in the report
with a one-line reason and never stop the run; 16-bit and RGBA images are converted, as
`napari_foram.frames` defines.

Stopping: a stop event set during a run ends it within a layer of the classifier; the
task under way is dropped whole (nothing of it reaches the store, whose commit counter
moves only with a whole task), what was committed stays, and the report lists the files
left for the next run.

Scale-out: with a `dask.distributed` client (a `LocalCluster` of worker processes, or an
existing scheduler), workers read, detect and classify (each builds its `Predictor` once
and keeps it); results come back to this process, which commits them in the same fixed
order as a local run.

Qt-free: the CLI (`napari-foram batch`) and the widget (`widgets/batch.py`) drive it.
"""

from ._browse import (
    FrameView,
    frame_view,
    processed_frames,
)
from ._plan import (
    DEFAULT_FILES_PER_TASK,
    DEFAULT_MAX_MEGAPIXELS,
    DEFAULT_MIN_SIDE_PX,
    LABEL_IMAGE_REASON,
    SHEET_FILE_COLUMN,
    SHEET_SAMPLE_COLUMN,
    BatchPlan,
    FileReport,
    FileStatus,
    SourceFile,
    is_label_image_name,
    natural_key,
    path_sha256,
    plan_batch,
    safe_sample_id,
)
from ._report import (
    BatchReport,
    default_report_paths,
)
from ._run import (
    BatchConfig,
    FileCallback,
    resolve_checkpoint,
    run_batch,
)
from ._tasks import (
    ChunkTask,
    FileResult,
    ModelRef,
    StepCallback,
    TaskCancelled,
    cached_predictor,
    run_chunk,
    warm_up,
)

__all__ = [
    "DEFAULT_FILES_PER_TASK",
    "DEFAULT_MAX_MEGAPIXELS",
    "DEFAULT_MIN_SIDE_PX",
    "LABEL_IMAGE_REASON",
    "SHEET_FILE_COLUMN",
    "SHEET_SAMPLE_COLUMN",
    "BatchConfig",
    "BatchPlan",
    "BatchReport",
    "ChunkTask",
    "FileCallback",
    "FileReport",
    "FileResult",
    "FileStatus",
    "FrameView",
    "ModelRef",
    "SourceFile",
    "StepCallback",
    "TaskCancelled",
    "cached_predictor",
    "default_report_paths",
    "frame_view",
    "is_label_image_name",
    "natural_key",
    "path_sha256",
    "plan_batch",
    "processed_frames",
    "resolve_checkpoint",
    "run_batch",
    "run_chunk",
    "safe_sample_id",
    "warm_up",
]
