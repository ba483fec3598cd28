"""The three count-sheet layouts, column by column, against the store they come from.

Each layout is one table of (column name, value) in `tally.export` (issue 28): these tests
pin the column lists as they were written by hand before, and read every value back
from the store by another route (the store's own columns and `sample_summary`), so a
column that drifts from its header, or a layout that changes, fails here.
"""

from __future__ import annotations

import csv
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from napari_foram.tally import (
    REVIEW_CONFIRMED,
    REVIEW_REJECTED,
    REVIEW_RELABELLED,
    SampleRecord,
    SpecimenBatch,
    TallyStore,
    export_csv,
)
from napari_foram.tally.export import EXPORT_FORMATS, RECORD_COLUMNS
from napari_foram.tally.stats import REVIEW_DUBIOUS, final_labels, unsure_mask

CLASSES = ["planktic", "calcareous_benthic", "agglutinated_benthic", "sediment", "Odd =name"]
SLUGS = ["planktic", "calcareous_benthic", "agglutinated_benthic", "sediment", "odd_name"]
FORAM_SLUGS = ["planktic", "calcareous_benthic", "agglutinated_benthic", "odd_name"]

WIDE = [
    *RECORD_COLUMNS,
    *[f"count_{s}" for s in SLUGS],
    "total_objects",
    "total_forams",
    *[c for s in FORAM_SLUGS for c in (f"pct_{s}", f"pct_{s}_low", f"pct_{s}_high")],
    *[c for s in SLUGS for c in (f"expected_{s}", f"expected_{s}_sd")],
    "specimens_per_gram", "pb_ratio", "planktic_pct_of_pb", "n_uncertain", "uncertain_entropy",
    "n_reviewed", "n_dubious", "n_duplicates", "n_rejected", "n_rows", "target", "progress",
    "model_sha256", "mc_samples", "software_version", "export_date",
    "unsure", "unsure_measure", "unsure_threshold",
]  # fmt: skip
LONG = [
    *RECORD_COLUMNS[:9], "class", "count", "is_foram", "pct", "pct_low", "pct_high",
    "expected", "expected_sd", "total_forams", "n_reviewed", "n_dubious",
    "model_sha256", "export_date", "unsure",
]  # fmt: skip
SPECIMENS = [
    "sample_id", "row", "frame_index", "stage_x_um", "stage_y_um", "centroid_y",
    "centroid_x", "bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col",
    "area_px", "predicted_class", "class", "counted",
    *[f"prob_{s}" for s in SLUGS], *[f"var_{s}" for s in SLUGS],
    "entropy", "mutual_information", "vote_fraction", "review_status",
    "reviewed_class", "review_time", "duplicate_of", "reviewer", "unsure",
    "feature_distance",
]  # fmt: skip


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three samples: one with an unsure rule, every review status, a duplicate and two
    reviewers; one with another model; one empty.
    """
    path = tmp_path_factory.mktemp("layouts") / "s.zarr"
    rng = np.random.default_rng(3)
    with TallyStore.create(path, classes=CLASSES) as store:
        store.add_sample(
            SampleRecord(
                "S1", depth=-5.0, split_factor=4, dry_weight_g=2.0, notes="=x", operator="+me",
                site_hole="@s", core="2H", section="3", interval_top_cm=10,
                interval_bottom_cm=12,
            )
        )  # fmt: skip
        store.add_sample(SampleRecord("S2", depth=12.5, notes="a, b"))
        store.add_sample(SampleRecord("S3"))
        for sid, n, prov in (
            ("S1", 40, {"model_sha256": "a" * 64, "mc_samples": 30,
                        "unsure_rule": {"measure": "entropy", "threshold": 0.8}}),
            ("S2", 7, {"model_sha256": "b" * 64, "mc_samples": 100}),
        ):  # fmt: skip
            probs = rng.dirichlet(np.full(5, 0.4), size=n).astype(np.float32)
            store.set_provenance(sid, prov)
            store.append_specimens(
                sid,
                SpecimenBatch(
                    frame_index=np.arange(n) // 3, centroid_y=rng.random(n) * 100,
                    centroid_x=rng.random(n) * 50, bbox=rng.integers(0, 500, (n, 4)),
                    area_px=rng.integers(100, 3000, n), mean_probs=probs, variance=probs * 0.01,
                    stage_x_um=rng.random(n) * 1e4,
                    stage_y_um=np.where(np.arange(n) % 5 == 0, np.nan, rng.random(n)),
                    feature_distance=rng.random(n).astype(np.float32),
                    vote_fraction=rng.random(n).astype(np.float32),
                    mutual_information=rng.random(n).astype(np.float32),
                ),
            )  # fmt: skip
        store.set_review("S1", [0, 1], status=REVIEW_CONFIRMED, reviewer="ann")
        store.set_review("S1", [2], status=REVIEW_RELABELLED, reviewed_class=4, reviewer="bob")
        store.set_review("S1", [3], status=REVIEW_REJECTED)
        store.set_review("S1", [4], status=REVIEW_DUBIOUS, reviewer="ann")
        store.update_specimens("S1", [5], duplicate_of=np.array([1]))
    return path


def read(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(encoding="utf-8", newline="") as fh:
        header, *rows = list(csv.reader(fh))
    return header, rows


def same(cell: str, value: object) -> bool:
    """A cell holds `value`: missing and non-finite as '', numbers exactly (the shortest
    form reads back as the same number in its own precision), text formula-safe.
    """
    if value is None or (isinstance(value, (float, np.floating)) and not np.isfinite(value)):
        return cell == ""
    if isinstance(value, (bool, np.bool_)):
        return cell == ("1" if value else "0")
    if isinstance(value, (int, np.integer)):
        return cell == str(int(value))
    if isinstance(value, np.floating):
        return type(value)(cell) == value
    if isinstance(value, float):
        return float(cell) == value
    text = str(value)
    return cell == ("'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text)


def check_row(header: list[str], row: list[str], expected: dict[str, object]) -> None:
    assert len(row) == len(header)
    cells = dict(zip(header, row, strict=True))
    for name, value in expected.items():
        assert same(cells[name], value), (name, cells[name], value)


def test_export_formats_are_the_three_layouts() -> None:
    assert EXPORT_FORMATS == ("wide", "long", "specimens")


def test_wide_layout_columns_and_values(store_path: Path, tmp_path: Path) -> None:
    with TallyStore.open(store_path) as store:
        out = export_csv(store, tmp_path / "wide.csv", fmt="wide", uncertain_entropy=0.3)
        header, rows = read(out)
        assert header == WIDE
        assert [r[0] for r in rows] == ["S1", "S2", "S3"]
        for sid, row in zip(["S1", "S2", "S3"], rows, strict=True):
            s = store.sample_summary(sid, uncertain_entropy=0.3)
            record = store.sample_record(sid).to_dict()
            forams = [j for j, c in enumerate(CLASSES) if c != "sediment"]
            expected: dict[str, object] = {c: record[c] for c in RECORD_COLUMNS}
            expected |= {f"count_{SLUGS[j]}": s["counts"][j] for j in range(5)}
            for j in forams:
                for end in ("", "_low", "_high"):
                    expected[f"pct_{SLUGS[j]}{end}"] = s[f"pct{end}"][j]
            for j in range(5):
                expected[f"expected_{SLUGS[j]}"] = s["expected"][j]
                expected[f"expected_{SLUGS[j]}_sd"] = s["expected_sd"][j]
            expected |= {
                "total_objects": s["total_objects"], "total_forams": s["total_forams"],
                "specimens_per_gram": s["per_gram"], "pb_ratio": s["pb_ratio"],
                "planktic_pct_of_pb": s["pct_planktic"], "n_uncertain": s["n_uncertain"],
                "uncertain_entropy": 0.3, "n_reviewed": s["n_reviewed"],
                "n_dubious": s["n_dubious"], "n_duplicates": s["n_duplicates"],
                "n_rejected": s["n_rejected"], "n_rows": s["n_rows"], "target": 300,
                "progress": s["progress"], "unsure": s["n_unsure"],
                "model_sha256": store.provenance(sid).get("model_sha256"),
                "mc_samples": store.provenance(sid).get("mc_samples"),
                "unsure_measure": s["unsure_rule"].get("measure"),
                "unsure_threshold": s["unsure_rule"].get("threshold"),
            }  # fmt: skip
            check_row(header, row, expected)
    s1 = dict(zip(header, rows[0], strict=True))
    # The numbers this store was built to give (reviews, duplicate, unsure rule).
    assert (s1["n_reviewed"], s1["n_dubious"], s1["n_rejected"], s1["n_duplicates"]) == (
        "4", "1", "1", "1",
    )  # fmt: skip
    assert s1["unsure_measure"] == "entropy" and s1["unsure_threshold"] == "0.8"
    assert int(s1["unsure"]) > 0 and s1["notes"] == "'=x" and s1["depth"] == "-5"
    assert datetime.fromisoformat(s1["export_date"]).tzinfo is not None


def test_long_layout_columns_and_values(store_path: Path, tmp_path: Path) -> None:
    with TallyStore.open(store_path) as store:
        out = export_csv(store, tmp_path / "long.csv", fmt="long", samples=["S2", "S1"])
        header, rows = read(out)
        assert header == LONG
        assert len(rows) == 2 * len(CLASSES)
        for k, row in enumerate(rows):
            sid, j = ["S2", "S1"][k // 5], k % 5
            s = store.sample_summary(sid)
            record = store.sample_record(sid).to_dict()
            expected: dict[str, object] = {c: record[c] for c in RECORD_COLUMNS[:9]}
            expected |= {
                "class": CLASSES[j], "count": s["counts"][j], "is_foram": j != 3,
                "pct": s["pct"][j], "pct_low": s["pct_low"][j], "pct_high": s["pct_high"][j],
                "expected": s["expected"][j], "expected_sd": s["expected_sd"][j],
                "total_forams": s["total_forams"], "n_reviewed": s["n_reviewed"],
                "n_dubious": s["n_dubious"], "unsure": s["n_unsure"],
                "model_sha256": store.provenance(sid)["model_sha256"],
            }  # fmt: skip
            check_row(header, row, expected)
    assert rows[4][header.index("class")] == "Odd =name"  # "O" first: nothing to defuse


def test_specimens_layout_columns_and_values(store_path: Path, tmp_path: Path) -> None:
    with TallyStore.open(store_path) as store:
        out = export_csv(store, tmp_path / "spec.csv", fmt="specimens")
        header, rows = read(out)
        assert header == SPECIMENS
        assert len(rows) == 40 + 7
        k = 0
        for sid in ("S1", "S2", "S3"):
            d = store.read_specimens(sid)
            labels = final_labels(d)
            unsure = unsure_mask(d, store.unsure_rule(sid))
            names = store.reviewers(sid)
            for i in range(len(d["row"])):
                t = float(d["review_time"][i])
                who = int(d["reviewer_index"][i])
                expected: dict[str, object] = {
                    "sample_id": sid,
                    **{
                        c: d[c][i]
                        for c in (
                            "row",
                            "frame_index",
                            "stage_x_um",
                            "stage_y_um",
                            "centroid_y",
                            "centroid_x",
                            "area_px",
                            "entropy",
                            "mutual_information",
                            "vote_fraction",
                            "duplicate_of",
                            "feature_distance",
                        )
                    },
                    **{
                        f"bbox_{end}": d["bbox"][i][m]
                        for m, end in enumerate(("min_row", "min_col", "max_row", "max_col"))
                    },
                    **{f"prob_{s}": d["mean_probs"][i][j] for j, s in enumerate(SLUGS)},
                    **{f"var_{s}": d["variance"][i][j] for j, s in enumerate(SLUGS)},
                    "predicted_class": CLASSES[int(d["class_index"][i])],
                    "class": CLASSES[labels[i]] if labels[i] >= 0 else "",
                    "counted": labels[i] >= 0,
                    "reviewed_class": CLASSES[int(d["reviewed_class"][i])]
                    if d["reviewed_class"][i] >= 0
                    else "",
                    "review_time": datetime.fromtimestamp(t, timezone.utc).isoformat(
                        timespec="seconds"
                    )
                    if math.isfinite(t)
                    else "",
                    "reviewer": names[who] if who >= 0 else "",
                    "unsure": bool(unsure[i]),
                }
                check_row(header, rows[k], expected)
                k += 1
    by_row = {int(r[1]): dict(zip(header, r, strict=True)) for r in rows if r[0] == "S1"}
    assert [by_row[i]["review_status"] for i in range(5)] == [
        "confirmed", "confirmed", "relabelled", "rejected", "dubious",
    ]  # fmt: skip
    assert by_row[2]["reviewed_class"] == "Odd =name" and by_row[2]["reviewer"] == "bob"
    assert by_row[3]["counted"] == "0" and by_row[5]["duplicate_of"] == "1"
    assert by_row[0]["stage_y_um"] == ""  # NaN: an empty cell
    assert "crops" not in header


def test_unknown_layout_names_the_three(store_path: Path, tmp_path: Path) -> None:
    with TallyStore.open(store_path) as store, pytest.raises(ValueError) as err:
        export_csv(store, tmp_path / "x.csv", fmt="pivot")
    assert str(err.value) == "fmt must be one of 'wide', 'long', 'specimens', got 'pivot'"
