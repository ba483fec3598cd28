"""Tallies: the Zarr store of counted specimens, counting statistics, count sheets and plots.

Core logic only (no Qt, no napari, no torch). Typical use::

    from napari_foram.tally import SampleRecord, SpecimenBatch, TallyStore, export_csv

    with TallyStore.create("run.zarr", classes=CLASSES) as store:
        store.add_sample(SampleRecord("S1", depth=1.25, depth_unit="mbsf", dry_weight_g=2.0))
        store.append_specimens("S1", batch)
    with TallyStore.open("run.zarr") as store:
        export_csv(store, "counts.csv", fmt="wide")
"""

from __future__ import annotations

from napari_foram.tally.export import export_csv, plot_tally, safe_text
from napari_foram.tally.stats import (
    REVIEW_CONFIRMED,
    REVIEW_NONE,
    REVIEW_REJECTED,
    REVIEW_RELABELLED,
    UnsureRule,
    class_counts,
    expected_counts,
    final_labels,
    planktic_benthic,
    progress,
    sample_summary,
    specimens_per_gram,
    unsure_mask,
    wilson_interval,
)
from napari_foram.tally.store import (
    CROP_SIZE,
    SAMPLE_TYPES,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    SPECIMEN_COLUMNS,
    SampleRecord,
    SpecimenBatch,
    TallyStore,
)

__all__ = [
    "CROP_SIZE",
    "REVIEW_CONFIRMED",
    "REVIEW_NONE",
    "REVIEW_REJECTED",
    "REVIEW_RELABELLED",
    "SAMPLE_TYPES",
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "SPECIMEN_COLUMNS",
    "SampleRecord",
    "SpecimenBatch",
    "TallyStore",
    "UnsureRule",
    "class_counts",
    "expected_counts",
    "export_csv",
    "final_labels",
    "planktic_benthic",
    "plot_tally",
    "progress",
    "safe_text",
    "sample_summary",
    "specimens_per_gram",
    "unsure_mask",
    "wilson_interval",
]
