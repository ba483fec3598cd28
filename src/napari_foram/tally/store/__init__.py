"""The tally store: one Zarr v3 group holding every counted specimen of a run.

Layout (a directory store)::

    run.zarr/
      zarr.json                 root attrs: schema, versions, created/updated, class names
      .napari-foram.lock        present while a writer has the store open (PID, host)
      samples/
        <sample_id>/            attrs: the sample record, n_committed, n_tally, provenance,
                                processed_files (source files committed, for batch resume),
                                reviewers (names; reviewer_index points into it)
          frame_index (n,)  stage_x_um (n,)  stage_y_um (n,)  centroid_y (n,)  centroid_x (n,)
          bbox (n, 4)  area_px (n,)  class_index (n,)  mean_probs (n, K)  variance (n, K)
          entropy (n,)  mutual_information (n,)  vote_fraction (n,)  review_status (n,)
          reviewed_class (n,)  review_time (n,)  duplicate_of (n,)  crops (n, 224, 224, 3)
          reviewer_index (n,)   added later: stores without it read -1 (no reviewer)
          feature_distance (n,) added later: stores without it read NaN (not measured)
          tally_time (m,)  tally_counts (m, K)     one row per commit (the running tally)
          features (n, 2048)    added later, optional: each specimen's pooled backbone
                                features (a cache; attrs feature_space says whose), so a
                                head can be retrained and the rows classified again
          history/<i>/          the classification columns a reclassification replaced
                                (attrs classification_history lists them with the model)

Classes can be added (`TallyStore.add_classes`): new ones go at the end, so old indices
keep their meaning; per-class arrays written before read 0 for them (attrs class_width).
See `_kept` for the features, the history and the class width.

Crash safety (see docs and environment notes: zarr's ``append`` grows the shape before it
writes, so a killed writer leaves "ghost" rows of fill values):

1. a batch's rows are written to every column first,
2. then the sample group's ``n_committed`` counter is bumped in one attrs write (zarr's
   local store writes each file atomically, by rename);
3. readers trust only rows below the counter; a writer that opens the store trims the
   rows above it (and `close` trims the preallocated slack: arrays grow in steps of 4096
   rows so that a batch rewrites no array metadata).

One writer at a time: the writer holds a lock file with its PID and host; a lock left by a
dead process (or a zombie: killed, not yet reaped) on this host is taken over with a warning.

Damage (see `napari_foram.tally.store.integrity`): a sample whose files cannot be read as they
were written (metadata unreadable, a chunk file missing or undecodable) is never deleted
or rewritten. Reading it raises `DamagedSampleError` naming the sample, array and chunk,
writing into it is refused, and the other samples stay usable; ``napari-foram check``
lists every problem and ``--repair`` moves what cannot be derived into ``quarantine/``.
"""

from napari_foram.defaults import CROP_SIZE

from ._files import check_root_attrs, read_zarr_json
from ._schema import (
    LOCK_NAME,
    REVIEW_STATUS_NAMES,
    SAMPLE_TYPES,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    SPECIMEN_COLUMNS,
    DamagedSampleError,
    SampleRecord,
    SpecimenBatch,
)
from ._store import TallyStore

__all__ = [
    "CROP_SIZE",
    "LOCK_NAME",
    "REVIEW_STATUS_NAMES",
    "SAMPLE_TYPES",
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "SPECIMEN_COLUMNS",
    "DamagedSampleError",
    "SampleRecord",
    "SpecimenBatch",
    "TallyStore",
    "check_root_attrs",
    "read_zarr_json",
]
