"""Tests of the tally store, counting statistics, CSV export and plots."""

from __future__ import annotations

import csv
import hashlib
import math
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import napari_foram
from napari_foram.tally import (
    CROP_SIZE,
    REVIEW_CONFIRMED,
    REVIEW_REJECTED,
    REVIEW_RELABELLED,
    SampleRecord,
    SpecimenBatch,
    TallyStore,
    class_counts,
    expected_counts,
    export_csv,
    planktic_benthic,
    plot_tally,
    progress,
    safe_text,
    sample_summary,
    specimens_per_gram,
    wilson_interval,
)
from napari_foram.tally.store import LOCK_NAME

CLASSES = ["planktic", "calcareous_benthic", "agglutinated_benthic", "sediment"]


def make_batch(
    n: int, *, start: int = 0, seed: int = 0, crops: bool = True, k: int = 4
) -> SpecimenBatch:
    """A batch whose row i (global index start + i) is recognisable from its values."""
    rng = np.random.default_rng(seed)
    rows = np.arange(start, start + n)
    probs = rng.dirichlet(np.full(k, 0.5), size=n).astype(np.float32)
    crop_arr = None
    if crops:
        crop_arr = rng.integers(0, 256, (n, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
        crop_arr[:, 0, 0, 0] = rows % 251  # a fingerprint of the row
    return SpecimenBatch(
        frame_index=rows,
        centroid_y=rows * 0.5,
        centroid_x=rows * 0.25,
        bbox=np.stack([rows, rows + 1, rows + 30, rows + 40], axis=1),
        area_px=1024 + rows,
        mean_probs=probs,
        variance=probs * 0.01,
        stage_x_um=rows * 10.0,
        stage_y_um=-rows * 10.0,
        crops=crop_arr,
    )


def tree_snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "run.zarr"


# ------------------------------------------------------------------------------ store
def test_create_append_reopen_round_trip(store_path: Path) -> None:
    b1 = make_batch(3, start=0, seed=1)
    b2 = make_batch(2, start=3, seed=2)
    record = SampleRecord(
        "HH12-1_0-1cm",
        site_hole="HH12",
        core="1",
        section="2",
        interval_top_cm=0,
        interval_bottom_cm=1,
        depth=0.5,
        depth_unit="cm",
        size_fraction_um="100-1000",
        split_factor=2,
        dry_weight_g=1.5,
        operator="A. Counter",
    )
    with TallyStore.create(store_path, classes=CLASSES) as store:
        store.add_sample(record)
        store.set_provenance(
            record.sample_id,
            {"model_sha256": "ab" * 32, "class_names": CLASSES, "mc_samples": np.int64(100)},
        )
        assert store.append_specimens(record.sample_id, b1) == 3
        assert store.append_specimens(record.sample_id, b2) == 5
        assert store.append_specimens(record.sample_id, make_batch(0)) == 5  # no commit
        # read back while still open for writing
        assert store.n_specimens(record.sample_id) == 5

    attrs = zarr.open_group(store_path, mode="r").attrs
    assert attrs["schema"] == "napari-foram-tally"
    assert attrs["schema_version"] == 1
    assert attrs["class_names"] == CLASSES
    assert attrs["software"]["napari_foram"] == napari_foram.__version__
    assert attrs["created"] <= attrs["updated"]
    assert not (store_path / LOCK_NAME).exists()

    with TallyStore.open(store_path) as store:
        assert store.samples() == [record.sample_id]
        assert store.sample_record(record.sample_id) == record
        data = store.read_specimens(record.sample_id, crops=True)
        for name in ("frame_index", "centroid_y", "centroid_x", "bbox", "area_px", "stage_x_um"):
            np.testing.assert_array_equal(
                data[name], np.concatenate([getattr(b1, name), getattr(b2, name)])
            )
        probs = np.concatenate([b1.mean_probs, b2.mean_probs])
        np.testing.assert_array_equal(data["mean_probs"], probs)
        np.testing.assert_array_equal(data["class_index"], probs.argmax(axis=1))
        np.testing.assert_array_equal(data["crops"], np.concatenate([b1.crops, b2.crops]))
        np.testing.assert_array_equal(data["reviewed_class"], -1)
        np.testing.assert_array_equal(data["duplicate_of"], -1)
        # entropy defaults to the predictive entropy of the mean probabilities
        p = probs.astype(np.float64)
        np.testing.assert_allclose(data["entropy"], -(p * np.log(p)).sum(axis=1), rtol=1e-5)
        np.testing.assert_array_equal(store.read_crops(record.sample_id, [4, 0])[0], b2.crops[1])
        # running tally: one row per commit, cumulative counts
        times, counts = store.read_tally(record.sample_id)
        assert times.shape == (2,) and counts.shape == (2, 4)
        assert counts[0].sum() == 3 and counts[1].sum() == 5
        np.testing.assert_array_equal(counts[1], np.bincount(probs.argmax(1), minlength=4))
        np.testing.assert_array_equal(store.counts(record.sample_id), counts[1])
        prov = store.provenance(record.sample_id)
        assert prov["mc_samples"] == 100 and prov["from_row"] == 0
        # arrays at rest hold exactly the committed rows (no preallocated slack)
        group = zarr.open_group(store_path, path=f"samples/{record.sample_id}", mode="r")
        assert group["crops"].shape == (5, CROP_SIZE, CROP_SIZE, 3)
        assert group["entropy"].shape == (5,)
        with pytest.raises(ValueError, match="read-only"):
            store.append_specimens(record.sample_id, b1)

    # append mode continues where it stopped
    with TallyStore.open(store_path, mode="a", classes=CLASSES) as store:
        store.append_specimens(record.sample_id, make_batch(1, start=5, crops=False))
        assert store.n_specimens(record.sample_id) == 6
        assert not store.read_crops(record.sample_id, [5]).any()  # no crop kept: zeros


def test_reader_sees_only_committed_rows_and_ghost_rows_are_trimmed(store_path: Path) -> None:
    with TallyStore.create(store_path, classes=CLASSES) as store:
        store.add_sample(SampleRecord("S1"))
        store.append_specimens("S1", make_batch(3))
    # A writer killed between growing the arrays and bumping the counter: rows 3..8 exist
    # in every column (fill values or junk) but n_committed is still 3.
    group = zarr.open_group(store_path, path="samples/S1", mode="r+")
    for name in group.array_keys():
        arr = group[name]
        arr.resize((arr.shape[0] + 6, *arr.shape[1:]))
    group["frame_index"][3:] = 999
    group["crops"][3:] = 7  # uncommitted crops, partly in the chunk that holds rows 0-2
    with TallyStore.open(store_path) as reader:
        data = reader.read_specimens("S1")
        assert len(data["frame_index"]) == 3
        assert 999 not in data["frame_index"]
    with pytest.warns(RuntimeWarning, match="removed 6 row.* wrote but never committed"):
        writer = TallyStore.open(store_path, mode="a")
    with writer:
        group = zarr.open_group(store_path, path="samples/S1", mode="r")
        assert {group[name].shape[0] for name in group.array_keys() if "tally" not in name} == {3}
        assert writer.append_specimens("S1", make_batch(2, start=3, crops=False)) == 5
        np.testing.assert_array_equal(writer.read_specimens("S1")["frame_index"], np.arange(5))
        assert not writer.read_crops("S1", [3, 4]).any()  # no stale ghost crops resurface


def test_second_writer_refused_and_stale_lock_taken_over(store_path: Path) -> None:
    store = TallyStore.create(store_path, classes=CLASSES)
    with pytest.raises(ValueError, match=r"already open for writing by PID \d+"):
        TallyStore.open(store_path, mode="a")
    with TallyStore.open(store_path) as reader:  # readers need no lock
        assert reader.samples() == []
    store.close()

    # A lock left by a process that has died (a real, finished PID on this host).
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    import json
    import socket

    (store_path / LOCK_NAME).write_text(
        json.dumps({"pid": int(done.stdout), "host": socket.gethostname(), "token": "x"})
    )
    with pytest.warns(RuntimeWarning, match="stale lock"):
        store = TallyStore.open(store_path, mode="a")
    with store:
        assert json.loads((store_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (store_path / LOCK_NAME).exists()


def test_foreign_or_missing_store_refused_and_untouched(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.zarr"
    group = zarr.create_group(foreign, attributes={"owner": "someone else"})
    group.create_array("data", shape=(3,), dtype="int32")[:] = [1, 2, 3]
    before = tree_snapshot(foreign)
    with pytest.raises(ValueError, match="not a napari-foram tally store"):
        TallyStore.open(foreign, mode="a")
    with pytest.raises(ValueError, match="already exists"):
        TallyStore.create(foreign, classes=CLASSES)
    with pytest.raises(ValueError, match="not a napari-foram tally store"):
        TallyStore.create(foreign, classes=CLASSES, overwrite=True)
    assert tree_snapshot(foreign) == before

    plain = tmp_path / "photos"
    plain.mkdir()
    (plain / "tray.png").write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match=r"no zarr\.json"):
        TallyStore.open(plain)
    with pytest.raises(ValueError, match=r"not a napari-foram tally store|no zarr\.json"):
        TallyStore.create(plain, classes=CLASSES, overwrite=True)
    assert (plain / "tray.png").read_bytes() == b"\x89PNG"
    with pytest.raises(ValueError, match="not a directory"):
        TallyStore.open(tmp_path / "missing.zarr")
    array_store = tmp_path / "array.zarr"
    zarr.create_array(array_store, shape=(2,), dtype="int8")
    with pytest.raises(ValueError, match="array"):
        TallyStore.open(array_store)

    # overwrite=True does replace one of our own stores (and an empty folder is fine)
    ours = tmp_path / "ours.zarr"
    with TallyStore.create(ours, classes=CLASSES) as store:
        store.add_sample(SampleRecord("S1"))
    with TallyStore.create(ours, classes=CLASSES[:2], overwrite=True) as store:
        assert store.samples() == [] and store.class_names == CLASSES[:2]
    (tmp_path / "empty").mkdir()
    TallyStore.create(tmp_path / "empty", classes=CLASSES).close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sample_id": ""}, "not safe"),
        ({"sample_id": "core/1"}, "not safe"),
        ({"sample_id": "..x"}, "not safe"),
        ({"sample_id": "S1", "split_factor": 0.5}, "split_factor"),
        ({"sample_id": "S1", "dry_weight_g": 0.0}, "dry_weight_g"),
        ({"sample_id": "S1", "interval_top_cm": 5, "interval_bottom_cm": 3}, "interval_bottom"),
        ({"sample_id": "S1", "depth": float("nan")}, "finite"),
        ({"sample_id": "S1", "depth": "1.5"}, "number"),
        ({"sample_id": "S1", "sample_type": "mud"}, "sample_type"),
        ({"sample_id": "S1", "size_fraction_um": "big"}, "size_fraction"),
        ({"sample_id": "S1", "core": 12}, "text"),
    ],
)
def test_bad_sample_record(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SampleRecord(**kwargs)


def test_sample_record_from_sheet_row_and_duplicates(store_path: Path) -> None:
    rec = SampleRecord.from_dict(
        {"sample_id": "S2", "depth": "12.5", "dry_weight_g": "", "split_factor": "", "core": "3"}
    )
    assert rec.depth == 12.5 and rec.dry_weight_g is None and rec.split_factor == 1.0
    with pytest.raises(ValueError, match="not a number"):
        SampleRecord.from_dict({"sample_id": "S2", "depth": "deep"})
    with pytest.raises(ValueError, match="unknown sample record field"):
        SampleRecord.from_dict({"sample_id": "S2", "colour": "red"})
    with TallyStore.create(store_path, classes=CLASSES) as store:
        store.add_sample(rec)
        with pytest.raises(ValueError, match="already exists"):
            store.add_sample(rec)
        with pytest.raises(ValueError, match="no sample"):
            store.append_specimens("nope", make_batch(1, crops=False))


def test_classes_mismatch_and_bad_batches_refused(store_path: Path) -> None:
    with TallyStore.create(store_path, classes=CLASSES) as store:
        store.add_sample(SampleRecord("S1"))
        with pytest.raises(ValueError, match=r"mean_probs must have shape \(2, 4\)"):
            store.append_specimens("S1", make_batch(2, k=3, crops=False))
        bad = make_batch(2, crops=False)
        bad.class_index = np.array([0, 4])
        with pytest.raises(ValueError, match="class_index"):
            store.append_specimens("S1", bad)
        bad = make_batch(2, crops=False)
        bad.area_px = np.arange(3)
        with pytest.raises(ValueError, match="area_px"):
            store.append_specimens("S1", bad)
        bad = make_batch(2)
        bad.crops = bad.crops[:, :100]
        with pytest.raises(ValueError, match="crops"):
            store.append_specimens("S1", bad)
        bad = make_batch(2, crops=False)
        bad.duplicate_of = np.array([-1, 1])  # a row cannot duplicate itself
        with pytest.raises(ValueError, match="duplicate_of"):
            store.append_specimens("S1", bad)
        # A model's classes are matched by name (any order, a subset); one the store
        # does not know is refused (`add_classes` first).
        store.set_provenance("S1", {"class_names": CLASSES[::-1]})
        with pytest.raises(ValueError, match=r"class_names \['ostracod'\] are not among"):
            store.set_provenance("S1", {"class_names": ["planktic", "ostracod"]})
        with pytest.raises(ValueError, match="JSON"):
            store.set_provenance("S1", {"model": object()})
        assert store.n_specimens("S1") == 0  # nothing half-written
    with pytest.raises(ValueError, match="differ"):
        TallyStore.open(store_path, classes=["planktic", "benthic"])
    with pytest.raises(ValueError, match="unique"):
        TallyStore.create(store_path.with_name("x.zarr"), classes=["a", "a"])


def test_review_duplicates_and_counts(store_path: Path) -> None:
    batch = SpecimenBatch(
        frame_index=np.zeros(5, dtype=int),
        centroid_y=np.zeros(5),
        centroid_x=np.zeros(5),
        bbox=np.zeros((5, 4), dtype=int),
        area_px=np.full(5, 2000),
        mean_probs=np.eye(4, dtype=np.float32)[[0, 0, 1, 2, 3]],
        duplicate_of=np.array([-1, 0, -1, -1, -1]),  # row 1 is row 0 seen again
    )
    with TallyStore.create(store_path, classes=CLASSES) as store:
        store.add_sample(SampleRecord("S1"))
        store.append_specimens("S1", batch)
        np.testing.assert_array_equal(store.counts("S1"), [1, 1, 1, 1])
        store.set_review("S1", [2], status=REVIEW_RELABELLED, reviewed_class=0)
        store.set_review("S1", [3], status=REVIEW_REJECTED)
        store.set_review("S1", [4], status=REVIEW_CONFIRMED)
        np.testing.assert_array_equal(store.counts("S1"), [2, 0, 0, 1])
        data = store.read_specimens("S1")
        assert (
            np.isfinite(data["review_time"][2:]).all() and np.isnan(data["review_time"][:2]).all()
        )
        with pytest.raises(ValueError, match="rows must lie"):
            store.set_review("S1", [5], status=REVIEW_CONFIRMED)
        with pytest.raises(ValueError, match="reviewed_class >= 0"):
            store.set_review("S1", [0], status=REVIEW_RELABELLED)
        # the next commit's running tally starts from the reviewed counts
        store.append_specimens("S1", make_batch(1, crops=False))
        _, tally = store.read_tally("S1")
        assert tally[-1].sum() == 4


# ------------------------------------------------------------------------------ stats
def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(30, 100)
    # direct formula: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    z, n, p = 1.96, 100, 0.3
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    assert low == pytest.approx(centre - half, abs=1e-12)
    assert high == pytest.approx(centre + half, abs=1e-12)
    assert (round(low, 4), round(high, 4)) == (0.2189, 0.3959)
    lo0, hi0 = wilson_interval(0, 10)
    assert lo0 == 0.0 and hi0 == pytest.approx(0.2775, abs=1e-4)
    lows, highs = wilson_interval(np.array([0, 5]), np.array([0, 5]))
    assert math.isnan(lows[0]) and math.isnan(highs[0]) and highs[1] == 1.0
    with pytest.raises(ValueError, match="k <= n"):
        wilson_interval(5, 3)


def test_counts_expected_counts_per_gram_pb_progress() -> None:
    specimens = {
        "class_index": np.array([0, 1, 0, 2]),
        "reviewed_class": np.array([-1, -1, 1, -1]),
        "review_status": np.array([0, 0, REVIEW_RELABELLED, 0], dtype=np.int8),
        "duplicate_of": np.array([-1, -1, -1, 0]),
        "mean_probs": np.array([[0.9, 0.1, 0], [0.5, 0.5, 0], [0.6, 0.4, 0], [1, 0, 0]]),
        "entropy": np.array([0.33, 0.69, 0.67, 0.0]),
    }
    np.testing.assert_array_equal(class_counts(specimens, 3), [1, 2, 0])
    mean, var = expected_counts(specimens, 3)
    # row 0: p=(.9,.1); row 1: p=(.5,.5); row 2 reviewed -> (0,1,0) certain; row 3 duplicate
    np.testing.assert_allclose(mean, [1.4, 1.6, 0.0])
    np.testing.assert_allclose(var, [0.09 + 0.25, 0.09 + 0.25, 0.0])
    assert specimens_per_gram(150, 4, 2.5) == pytest.approx(240.0)
    assert math.isnan(specimens_per_gram(150, 4, None))
    ratio, pct = planktic_benthic(np.array([60, 30, 10, 100]), CLASSES)
    assert ratio == pytest.approx(1.5) and pct == pytest.approx(60.0)
    assert all(math.isnan(v) for v in planktic_benthic(np.array([3, 4]), ["Globigerina", "x"]))
    assert progress(150) == 0.5 and progress(400) == 1.0 and progress(10, target=20) == 0.5

    summary = sample_summary(
        specimens, {"split_factor": 2.0, "dry_weight_g": 0.5}, ["planktic", "benthic", "sediment"]
    )
    assert summary["total_forams"] == 3 and summary["total_objects"] == 3
    np.testing.assert_allclose(summary["pct"][:2], [100 / 3, 200 / 3])
    assert math.isnan(summary["pct"][2])  # sediment is not part of the assemblage
    assert summary["per_gram"] == pytest.approx(3 * 2 / 0.5)
    assert summary["pb_ratio"] == pytest.approx(0.5)
    assert summary["n_uncertain"] == 1  # row 1 (0.69 nats, unreviewed); row 2 is reviewed
    assert summary["n_duplicates"] == 1 and summary["n_reviewed"] == 1


# ------------------------------------------------------------------------------ export
def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def filled_store(store_path: Path) -> Path:
    """Two samples with known counts: S1 = (planktic 6, calc. 3, aggl. 1, sediment 2)."""
    labels = {"S1": [0] * 6 + [1] * 3 + [2] + [3] * 2, "S2": [0, 1, 1, 1]}
    with TallyStore.create(store_path, classes=CLASSES) as store:
        store.add_sample(
            SampleRecord(
                "S1", depth=-5.0, split_factor=4, dry_weight_g=2.0,
                notes="=HYPERLINK(\"http://evil\")", operator="+me", site_hole="@site",
            )
        )  # fmt: skip
        store.add_sample(SampleRecord("S2", depth=12.0, core="\tcore", notes="fine, with comma"))
        for sid, lab in labels.items():
            probs = np.full((len(lab), 4), 0.02, dtype=np.float32)
            probs[np.arange(len(lab)), lab] = 0.94
            n = len(lab)
            store.append_specimens(
                sid,
                SpecimenBatch(
                    frame_index=np.arange(n), centroid_y=np.ones(n), centroid_x=np.ones(n),
                    bbox=np.ones((n, 4), dtype=int), area_px=np.full(n, 1500), mean_probs=probs,
                    entropy=np.where(np.arange(n) == 0, 1.2, 0.1),
                ),
            )  # fmt: skip
            store.set_provenance(sid, {"model_sha256": "f" * 64, "mc_samples": 100})
    return store_path


def test_export_wide_numbers_and_formula_injection(filled_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "sheet.csv"
    with TallyStore.open(filled_store) as store:
        export_csv(store, out, fmt="wide", uncertain_entropy=1.0)
    rows = read_csv(out)
    assert [r["sample_id"] for r in rows] == ["S1", "S2"]
    s1 = rows[0]
    assert (s1["count_planktic"], s1["count_calcareous_benthic"]) == ("6", "3")
    assert (s1["count_agglutinated_benthic"], s1["count_sediment"]) == ("1", "2")
    assert s1["total_forams"] == "10" and s1["total_objects"] == "12"
    assert float(s1["pct_planktic"]) == pytest.approx(60.0)
    lo, hi = wilson_interval(6, 10)
    assert float(s1["pct_planktic_low"]) == pytest.approx(100 * lo)
    assert float(s1["pct_planktic_high"]) == pytest.approx(100 * hi)
    assert "pct_sediment" not in s1
    assert float(s1["specimens_per_gram"]) == pytest.approx(10 * 4 / 2.0)
    assert float(s1["pb_ratio"]) == pytest.approx(1.5)
    assert float(s1["planktic_pct_of_pb"]) == pytest.approx(60.0)
    assert float(s1["expected_planktic"]) == pytest.approx(6 * 0.94 + 6 * 0.02, rel=1e-6)
    assert s1["n_uncertain"] == "1" and s1["model_sha256"] == "f" * 64
    assert s1["mc_samples"] == "100" and s1["progress"] == pytest.approx(str(10 / 300))
    assert rows[1]["specimens_per_gram"] == ""  # no dry weight: empty, not "nan"
    # text cells are defused, numbers are not
    assert s1["notes"] == '\'=HYPERLINK("http://evil")'
    assert s1["operator"] == "'+me" and s1["site_hole"] == "'@site"
    assert rows[1]["core"] == "'\tcore" and rows[1]["notes"] == "fine, with comma"
    assert s1["depth"] == "-5"
    assert safe_text("-1+2") == "'-1+2" and safe_text("\rx") == "'\rx" and safe_text("ok") == "ok"


def test_export_long_and_specimens(filled_store: Path, tmp_path: Path) -> None:
    with TallyStore.open(filled_store) as store:
        export_csv(store, tmp_path / "long.csv", fmt="long")
        export_csv(store, tmp_path / "spec.csv", fmt="specimens")
        with pytest.raises(ValueError, match="fmt"):
            export_csv(store, tmp_path / "x.csv", fmt="pivot")  # type: ignore[arg-type]
    long_rows = read_csv(tmp_path / "long.csv")
    assert len(long_rows) == 2 * 4
    s2 = {r["class"]: r for r in long_rows if r["sample_id"] == "S2"}
    assert s2["calcareous_benthic"]["count"] == "3"
    assert float(s2["calcareous_benthic"]["pct"]) == pytest.approx(75.0)
    assert s2["sediment"]["pct"] == "" and s2["sediment"]["is_foram"] == "0"
    spec = read_csv(tmp_path / "spec.csv")
    assert len(spec) == 12 + 4
    assert spec[0]["class"] == "planktic" and spec[0]["counted"] == "1"
    assert float(spec[0]["prob_planktic"]) == pytest.approx(0.94)
    assert spec[0]["prob_planktic"] == "0.94"  # float32 written in its shortest form
    assert "crops" not in spec[0]


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_written(filled_store: Path, tmp_path: Path, suffix: str) -> None:
    with TallyStore.open(filled_store) as store:
        out = plot_tally(store, tmp_path / f"log{suffix}")
        single = plot_tally(store, tmp_path / f"one{suffix}", samples=["S2"])
        with pytest.raises(ValueError, match=r"\.png or \.svg"):
            plot_tally(store, tmp_path / "log.jpg")
    for path in (out, single):
        head = path.read_bytes()[:200]
        assert path.stat().st_size > 2000
        assert head.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in path.read_bytes()


# ------------------------------------------------------------------------------ crashes
_WRITER = textwrap.dedent(
    """
    import sys, warnings
    import numpy as np
    sys.path.insert(0, sys.argv[2])
    from test_tally import make_batch
    from napari_foram.tally import TallyStore
    warnings.simplefilter("ignore")
    store = TallyStore.open(sys.argv[1], mode="a")
    n = store.n_specimens("S1")
    print("ready", flush=True)
    while True:
        size = 1 + n % 7
        n = store.append_specimens("S1", make_batch(size, start=n, seed=n))
    """
)


# Not marked slow on purpose: a crash test belongs in the default suite (~10 s).
def test_sigkill_writer_store_stays_consistent(store_path: Path, tmp_path: Path) -> None:
    with TallyStore.create(store_path, classes=CLASSES) as store:
        store.add_sample(SampleRecord("S1"))
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    src = str(Path(napari_foram.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    rnd = random.Random(1234)
    committed = 0
    for _ in range(6):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(store_path), str(Path(__file__).parent)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else ""
        time.sleep(rnd.uniform(0.05, 0.4))
        proc.kill()
        proc.wait()  # reaped: its PID is gone, so the lock it left is stale
        proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
        with TallyStore.open(store_path) as reader:  # a reader copes with the wreck as is
            n = reader.n_specimens("S1")
            assert n >= committed
            committed = n
    assert committed > 0
    with pytest.warns(RuntimeWarning) as caught:
        store = TallyStore.open(store_path, mode="a")
    assert any("stale lock" in str(w.message) for w in caught)
    with store:
        data = store.read_specimens("S1", crops=True)
        n = len(data["row"])
        np.testing.assert_array_equal(data["frame_index"], np.arange(n))
        np.testing.assert_array_equal(data["area_px"], 1024 + np.arange(n))
        np.testing.assert_array_equal(data["crops"][:, 0, 0, 0], np.arange(n) % 251)
        np.testing.assert_allclose(data["mean_probs"].sum(axis=1), 1.0, rtol=1e-5)
        _, tally = store.read_tally("S1")
        assert tally[-1].sum() == n
        assert np.all(np.diff(tally.sum(axis=1)) > 0)
        store.append_specimens("S1", make_batch(2, start=n))
    assert not list(store_path.rglob("*.partial"))


def test_summary_when_sediment_outnumbers_forams() -> None:
    """Regression: the Wilson interval was taken of sediment over the foram total."""
    from napari_foram.tally.stats import sample_summary

    specimens = {
        "class_index": np.array([0, 3, 3, 3]),
        "mean_probs": np.eye(4, dtype=np.float32)[[0, 3, 3, 3]],
        "entropy": np.zeros(4),
        "review_status": np.zeros(4, np.int8),
        "reviewed_class": np.full(4, -1),
        "duplicate_of": np.full(4, -1),
    }
    summary = sample_summary(specimens, SampleRecord("S"), CLASSES)
    assert summary["total_forams"] == 1
    assert summary["pct"][0] == 100.0 and np.isnan(summary["pct"][3])


def test_wilson_interval_holds_the_proportion_even_at_the_ends():
    """At k = n rounding once left the upper bound at 1 - 1e-16: a negative error bar
    that made the tally plot of a one-class sample fail.
    """
    from napari_foram.tally.stats import wilson_interval

    k = np.arange(0, 400)
    for n in (1, 7, 35, 399):
        kk = k[k <= n]
        low, high = wilson_interval(kk, np.full(kk.shape, n))
        p = kk / n
        assert np.all(low <= p) and np.all(high >= p)
        assert np.all(100 * high - 100 * p >= 0) and np.all(100 * p - 100 * low >= 0)


def test_preallocated_rows_left_by_a_writer_are_trimmed_without_alarm(store_path: Path) -> None:
    """Arrays grow 4096 rows at a time; a writer that never closed leaves that slack
    above the counter. It holds no data: trimmed silently, never called "dropped".
    """
    import subprocess
    import sys
    import warnings

    # A writer process that appends and dies without closing (no trim, lock left).
    code = (
        "import os, numpy as np\n"
        "from napari_foram.tally import SampleRecord, SpecimenBatch, TallyStore\n"
        f"s = TallyStore.create({str(store_path)!r}, classes={list(CLASSES)!r})\n"
        "s.add_sample(SampleRecord('S1'))\n"
        "s.append_specimens('S1', SpecimenBatch(frame_index=np.zeros(3, int), "
        "centroid_y=np.ones(3), centroid_x=np.ones(3), bbox=np.zeros((3, 4), int), "
        "area_px=np.ones(3, int), mean_probs=np.full((3, 4), 0.25)))\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    group = zarr.open_group(store_path, path="samples/S1", mode="r")
    assert group["frame_index"].shape[0] > 3  # the preallocated slack is there
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with TallyStore.open(store_path, mode="a") as writer:
            assert writer.n_specimens("S1") == 3
    said = [str(w.message) for w in caught]
    assert any("stale lock" in m for m in said), said  # the dead writer's lock, taken over
    assert not any("removed" in m or "dropped" in m for m in said), said  # no alarm
