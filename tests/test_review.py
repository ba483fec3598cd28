"""Review (napari_foram.review): the uncertainty-ranked queue, its actions and undo, the
expected number of misclassified specimens, exports with reviewed labels, the
ImageFolder export of validated crops and a short real retraining run from it.

Stores are built with real `TallyStore` appends of synthetic crops and hand-set
probabilities, so every number below is checked against a hand computation.
"""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from napari_foram.cli import main
from napari_foram.review import (
    QueueFilter,
    ReviewSession,
    expected_misclassified,
    export_validated_crops,
    fine_tune,
    misclassification_probability,
    queue_order,
    uncertainty,
    validated_rows,
)
from napari_foram.synthetic import render_crop
from napari_foram.tally import SampleRecord, SpecimenBatch, TallyStore, export_csv
from napari_foram.tally.stats import (
    REVIEW_CONFIRMED,
    REVIEW_DUBIOUS,
    REVIEW_NONE,
    REVIEW_REJECTED,
    REVIEW_RELABELLED,
    sample_summary,
)

CLASSES = ["planktic", "calcareous_benthic", "agglutinated_benthic", "sediment"]

# Sample S1: 8 rows with hand-set MC statistics. Row 6 is a duplicate of row 0 (never in
# the queue, never counted) although its mutual information is the highest.
PROBS = np.array(
    [
        [0.90, 0.05, 0.03, 0.02],  # 0  planktic, sure
        [0.40, 0.35, 0.15, 0.10],  # 1  planktic?
        [0.20, 0.60, 0.10, 0.10],  # 2  calcareous?
        [0.10, 0.10, 0.75, 0.05],  # 3  agglutinated
        [0.34, 0.33, 0.23, 0.10],  # 4  planktic??
        [0.05, 0.05, 0.05, 0.85],  # 5  sediment
        [0.88, 0.06, 0.03, 0.03],  # 6  duplicate of 0
        [0.55, 0.15, 0.15, 0.15],  # 7  planktic?
    ],
    dtype=np.float32,
)
MI = np.array([0.05, 0.30, 0.50, 0.10, 0.20, 0.01, 0.90, 0.40])
VOTE = np.array([0.95, 0.50, 0.70, 0.60, 0.40, 0.99, 0.90, 0.80])
DUPLICATE_OF = np.array([-1, -1, -1, -1, -1, -1, 0, -1])
# The class each crop is rendered as (what a person would see).
TRUE = [0, 2, 1, 2, 0, 3, 0, 0]
# Orders worked out by hand (row 6, the duplicate, is never listed).
ORDER = {
    "mutual_information": [2, 7, 1, 4, 3, 0, 5],
    # predictive entropy of PROBS (nats): 4 1.301, 1 1.249, 7 1.183, 2 1.089, 3 0.826,
    # 5 0.588, 0 0.428
    "entropy": [4, 1, 7, 2, 3, 5, 0],
    # 1 - vote fraction: 4 0.6, 1 0.5, 3 0.4, 2 0.3, 7 0.2, 0 0.05, 5 0.01
    "vote": [4, 1, 3, 2, 7, 0, 5],
}
# 1 - max p of the counted rows 0-5 and 7: 0.10 + 0.60 + 0.40 + 0.25 + 0.66 + 0.15 + 0.45
E0 = 2.61


def _batch(probs: np.ndarray, true: list[int], *, seed: int, **extra: np.ndarray) -> SpecimenBatch:
    n = len(probs)
    rows = np.arange(n)
    return SpecimenBatch(
        frame_index=rows // 4,
        centroid_y=100.0 + rows,
        centroid_x=200.0 + rows,
        bbox=np.tile([50, 60, 150, 160], (n, 1)),
        area_px=np.full(n, 7000),
        mean_probs=probs,
        variance=np.full(probs.shape, 0.01),
        stage_x_um=1000.0 + 100.0 * rows,
        stage_y_um=500.0 + 50.0 * rows,
        crops=np.stack([render_crop(CLASSES[c], seed * 100 + i) for i, c in enumerate(true)]),
        **extra,
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("review") / "run.zarr"
    with TallyStore.create(path, classes=CLASSES) as store:
        store.add_sample(SampleRecord("S1", depth=1.0, dry_weight_g=0.5))
        store.append_specimens(
            "S1",
            _batch(
                PROBS, TRUE, seed=1, mutual_information=MI, vote_fraction=VOTE,
                duplicate_of=DUPLICATE_OF,
            ),
        )  # fmt: skip
        store.add_sample(SampleRecord("S2", depth=2.0))
        store.append_specimens("S2", _batch(PROBS[:3], TRUE[:3], seed=2))
    return path


@pytest.fixture
def store_path(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the S1/S2 store for each test."""
    path = tmp_path / "run.zarr"
    shutil.copytree(template, path)
    return path


# ----------------------------------------------------------------------------- queue
@pytest.mark.parametrize("measure", sorted(ORDER))
def test_queue_order_for_each_measure(store_path: Path, measure: str) -> None:
    with ReviewSession.open(store_path, "S1", measure=measure, mode="r") as session:
        assert session.rows.tolist() == ORDER[measure]
        assert session.current == ORDER[measure][0]
        # the same order as a direct sort of the column (duplicate left out)
        u = uncertainty(session.data, measure)
        direct = [int(i) for i in np.argsort(-u, kind="stable") if DUPLICATE_OF[i] < 0]
        assert direct == ORDER[measure]
        # walking the queue
        assert [session.current, session.next(), session.next()] == ORDER[measure][:3]
        assert session.previous() == ORDER[measure][1]
        session.set_measure("vote")
        assert session.rows.tolist() == ORDER["vote"] and session.position == 0
    with pytest.raises(ValueError, match="unknown uncertainty measure 'bald'"):
        ReviewSession.open(store_path, "S1", measure="bald", mode="r")


def test_queue_filters(store_path: Path) -> None:
    with ReviewSession.open(store_path, "S1", mode="a", reviewer="ann") as session:
        data = session.data
        # predicted class: planktic (0) rows in MI order
        session.set_filter(QueueFilter(classes=(0,)))
        assert session.rows.tolist() == [7, 1, 4, 0]
        session.set_filter(QueueFilter(classes=(1, 3)))
        assert session.rows.tolist() == [2, 5]
        # uncertainty range, inclusive
        session.set_filter(QueueFilter(min_uncertainty=0.1, max_uncertainty=0.4))
        assert session.rows.tolist() == [7, 1, 4, 3]
        # status: review two, then ask for each status
        session.set_filter(QueueFilter(statuses=None))
        session.accept(2)
        session.dubious(4)
        session.reject(5)
        cases = {
            (REVIEW_NONE,): [7, 1, 3, 0],
            (REVIEW_CONFIRMED,): [2],
            (REVIEW_DUBIOUS,): [4],
            (REVIEW_REJECTED,): [5],
            None: ORDER["mutual_information"],
        }
        for statuses, rows in cases.items():
            session.set_filter(QueueFilter(statuses=statuses))
            assert session.rows.tolist() == rows, statuses
        # combined, and the plain function agrees
        flt = QueueFilter(
            classes=(0,), statuses=(REVIEW_NONE, REVIEW_DUBIOUS), max_uncertainty=0.35
        )
        assert queue_order(data, "mutual_information", flt).tolist() == [1, 4, 0]
        with pytest.raises(ValueError, match="class index 4 is out of range: this store has 4"):
            session.set_filter(QueueFilter(classes=(4,)))
        with pytest.raises(ValueError, match="uncertainty range is empty"):
            QueueFilter(min_uncertainty=0.5, max_uncertainty=0.1)
        with pytest.raises(ValueError, match="unknown review status 9"):
            session.set_filter(QueueFilter(statuses=(9,)))


def test_expected_misclassified_matches_a_direct_computation(store_path: Path) -> None:
    def direct(data: dict[str, np.ndarray]) -> float:
        total = 0.0
        for i in range(len(data["class_index"])):
            if data["duplicate_of"][i] >= 0 or data["review_status"][i] == REVIEW_REJECTED:
                continue  # not counted
            if data["review_status"][i] in (REVIEW_CONFIRMED, REVIEW_RELABELLED):
                continue  # a person fixed the label
            total += 1.0 - float(max(data["mean_probs"][i]))
        return total

    with ReviewSession.open(store_path, "S1", reviewer="ann") as session:
        assert session.expected_misclassified() == pytest.approx(E0, abs=1e-6)
        assert direct(session.data) == pytest.approx(E0, abs=1e-6)
        p_wrong = misclassification_probability(session.data)
        assert p_wrong[6] == 0.0 and p_wrong[4] == pytest.approx(0.66)
        steps = [
            (lambda: session.accept(2), E0 - 0.40),
            (lambda: session.relabel(2, row=1), E0 - 0.40 - 0.60),
            (lambda: session.dubious(7), E0 - 0.40 - 0.60),  # dubious still counts
            (lambda: session.reject(4), E0 - 0.40 - 0.60 - 0.66),
        ]
        for act, expected in steps:
            act()
            assert session.expected_misclassified() == pytest.approx(expected, abs=1e-6)
            assert expected_misclassified(session.data) == pytest.approx(direct(session.data))
        assert session.progress().line() == (
            "4 reviewed (2 validated, 1 dubious, 1 rejected), expected misclassified now 0.95"
        )


def test_review_until_expected_misclassified_is_below_a_target(store_path: Path) -> None:
    with ReviewSession.open(store_path, "S1", reviewer="ann") as session:
        session.set_filter(QueueFilter(statuses=None))  # the target mode ignores it
        session.dubious(0)  # reviewed: no longer in the target queue
        session.set_target(1.7)
        assert session.rows.tolist() == [2, 7, 1, 4, 3, 5]
        seen = []
        while session.current is not None:
            seen.append(session.current)
            session.accept()
        # 2.61 -> 2.21 (row 2) -> 1.76 (row 7) -> 1.16 (row 1) < 1.7: stop
        assert seen == [2, 7, 1]
        progress = session.progress()
        assert progress.target_reached and progress.expected_misclassified == pytest.approx(1.16)
        assert progress.line().endswith("expected misclassified now 1.16 (target < 1.7: reached)")
        session.undo()  # above the target again: row 1 is back
        assert session.current == 1 and not session.progress().target_reached
        session.set_target(None)
        session.set_filter(QueueFilter())  # the plain queue: unreviewed, row 1 again
        assert session.rows.tolist() == [1, 4, 3, 5]
        with pytest.raises(ValueError, match="target must be > 0"):
            session.set_target(0)


# ----------------------------------------------------------------------------- actions
def test_actions_store_status_reviewer_and_time_and_undo_every_level(store_path: Path) -> None:
    t0 = time.time()
    with ReviewSession.open(store_path, "S1", reviewer="ann") as session:
        assert session.current == 2
        session.accept()  # row 2: confirmed as predicted (calcareous)
        assert session.current == 7  # moved on
        session.relabel(0)  # row 7 predicted planktic, key "1": accept
        session.relabel(2)  # row 1: relabelled to agglutinated
        session.dubious()  # row 4
        session.reject()  # row 3
        assert session.current == 0 and session.undo_depth == 5
        with pytest.raises(ValueError, match="class index 7 is out of range"):
            session.relabel(7)
    t1 = time.time()
    with TallyStore.open(store_path) as store:
        d = store.read_specimens("S1")
        assert store.reviewers("S1") == ["ann"]
    assert d["review_status"].tolist() == [0, 2, 1, 3, 4, 0, 0, 1]
    assert d["reviewed_class"].tolist() == [-1, 2, -1, -1, -1, -1, -1, -1]
    reviewed = [1, 2, 3, 4, 7]
    assert d["reviewer_index"].tolist() == [0 if i in reviewed else -1 for i in range(8)]
    assert np.all((d["review_time"][reviewed] >= t0) & (d["review_time"][reviewed] <= t1))
    assert np.isnan(d["review_time"][[0, 5, 6]]).all()

    # Another reviewer changes row 7; each undo restores the state before, reviewer and
    # time included, and goes back to the row.
    with ReviewSession.open(store_path, "S1", reviewer="bob") as session:
        session.set_filter(QueueFilter(statuses=None))
        before = {k: session.data[k].copy() for k in ("review_status", "review_time")}
        session.go_to(7)
        session.reject()
        session.relabel(3, row=0)
        assert session.store.reviewers("S1") == ["ann", "bob"]
        step = session.undo()
        assert step is not None and step.row == 0 and session.current == 0
        step = session.undo()
        assert step is not None and step.action == "reject" and session.current == 7
        assert session.data["review_status"].tolist() == before["review_status"].tolist()
        np.testing.assert_array_equal(session.data["review_time"], before["review_time"])
        assert session.data["reviewer_index"][7] == 0  # ann again
        assert session.undo() is None  # this session's stack is empty
    with TallyStore.open(store_path) as store:
        assert store.read_specimens("S1")["reviewer_index"][7] == 0


def test_counts_and_exports_use_reviewed_labels_with_n_reviewed(
    store_path: Path, tmp_path: Path
) -> None:
    with ReviewSession.open(store_path, "S1", reviewer="ann") as session:
        # predictions (rows 0-5, 7; 6 is a duplicate): planktic 0 1 4 7, calc 2, aggl 3, sed 5
        assert session.counts().tolist() == [4, 1, 1, 1]
        session.relabel(2, row=1)  # planktic -> agglutinated
        session.accept(2)
        session.dubious(4)  # stays planktic, reported
        session.reject(5)  # sediment leaves the count
        counts = session.counts().tolist()
    assert counts == [3, 1, 2, 0]
    with TallyStore.open(store_path) as store:
        summary = sample_summary(store.read_specimens("S1"), None, CLASSES)
        assert summary["n_reviewed"] == 3 and summary["n_dubious"] == 1
        assert summary["n_rejected"] == 1
        export_csv(store, tmp_path / "wide.csv", fmt="wide")
        export_csv(store, tmp_path / "long.csv", fmt="long")
        export_csv(store, tmp_path / "spec.csv", fmt="specimens")
    wide = _read_csv(tmp_path / "wide.csv")
    s1 = wide[0]
    assert [s1[f"count_{c}"] for c in CLASSES] == ["3", "1", "2", "0"]
    assert s1["total_forams"] == "6"
    assert (s1["n_reviewed"], s1["n_dubious"], s1["n_rejected"]) == ("3", "1", "1")
    assert (wide[1]["n_reviewed"], wide[1]["n_dubious"]) == ("0", "0")
    long_s1 = [r for r in _read_csv(tmp_path / "long.csv") if r["sample_id"] == "S1"]
    assert [r["count"] for r in long_s1] == ["3", "1", "2", "0"]
    assert {(r["n_reviewed"], r["n_dubious"]) for r in long_s1} == {("3", "1")}
    spec = [r for r in _read_csv(tmp_path / "spec.csv") if r["sample_id"] == "S1"]
    assert spec[1]["class"] == "agglutinated_benthic" and spec[1]["reviewer"] == "ann"
    assert spec[4]["review_status"] == "dubious" and spec[4]["class"] == "planktic"
    assert spec[5]["counted"] == "0" and spec[0]["reviewer"] == ""


def test_store_written_before_the_reviewer_column_still_works(store_path: Path) -> None:
    shutil.rmtree(store_path / "samples" / "S1" / "reviewer_index")
    with TallyStore.open(store_path) as store:  # a reader fills the column in
        assert store.read_specimens("S1")["reviewer_index"].tolist() == [-1] * 8
    with ReviewSession.open(store_path, "S1", reviewer="ann") as session:  # a writer adds it
        session.accept()
    with TallyStore.open(store_path) as store:
        assert store.read_specimens("S1")["reviewer_index"].tolist()[2] == 0
        assert store.counts("S1").tolist() == [4, 1, 1, 1]


# ----------------------------------------------------------------------------- bad input
def test_bad_input_gives_one_line_messages(store_path: Path, tmp_path: Path) -> None:
    import zarr

    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(foreign, mode="w", zarr_format=3).attrs["schema"] = "other"
    cases = [
        (lambda: ReviewSession.open(foreign, "S1"), "not a napari-foram tally store"),
        (lambda: ReviewSession.open(tmp_path / "missing.zarr"), "no tally store at"),
        (lambda: ReviewSession.open(store_path, "S9"), "no sample 'S9'"),
    ]
    for make, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            make()
        assert "\n" not in str(info.value)
    # a store refused or missing leaves no writer lock behind
    with ReviewSession.open(store_path, "S1", reviewer="ann") as session:
        with pytest.raises(ValueError, match=r"class index -1 is out of range.*0-3: planktic"):
            session.relabel(-1)
        with pytest.raises(ValueError, match="not a specimen of 'S1'"):
            session.accept(99)
        with pytest.raises(ValueError, match="printable name"):
            session.store.set_review("S1", [0], status=REVIEW_CONFIRMED, reviewer="a\nb")
    with (
        ReviewSession.open(store_path, "S1", mode="r") as session,
        pytest.raises(ValueError, match="read-only"),
    ):
        session.accept()
    with ReviewSession.open(store_path, "S2", reviewer="ann") as session:
        session.set_filter(QueueFilter(statuses=(REVIEW_REJECTED,)))
        assert session.current is None
        with pytest.raises(ValueError, match="queue is finished"):
            session.accept()


# ----------------------------------------------------------------------------- export
def test_export_validated_crops_as_image_folder(store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "reviewed"
    (out / "planktic").mkdir(parents=True)
    (out / "planktic" / "from_elsewhere.png").write_bytes(b"kept as is")
    with ReviewSession.open(store_path, "S1", reviewer="ann") as session:
        session.relabel(2, row=1)
        session.accept(2)
        session.accept(7)
        session.dubious(4)  # not validated: not exported
        session.reject(5)  # not a specimen: not exported
        session.accept(6)  # a duplicate: never exported (the specimen is row 0)
        rows, labels = validated_rows(session.data)
        assert rows.tolist() == [1, 2, 7] and labels.tolist() == [2, 1, 0]
        result = export_validated_crops(session.store, out)
        crops = session.store.read_crops("S1", [1, 2, 7])
    assert result.counts == {
        "planktic": 1, "calcareous_benthic": 1, "agglutinated_benthic": 1, "sediment": 0
    }  # fmt: skip
    expected = [
        out / "agglutinated_benthic" / "S1_1.png",
        out / "calcareous_benthic" / "S1_2.png",
        out / "planktic" / "S1_7.png",
    ]
    assert sorted(result.files) == sorted(expected)
    for path, crop in zip(expected, crops, strict=True):
        np.testing.assert_array_equal(iio.imread(path), crop)  # lossless, the stored crop
    assert (out / "sediment").is_dir()  # every class has its folder
    assert result.summary().startswith(f"wrote 3 validated crops to {out} (planktic 1,")

    # A later review moves or removes crops on the next export; other files stay.
    with ReviewSession.open(store_path, "S1", reviewer="ann") as session:
        session.relabel(3, row=7)
        session.reject(2)
        again = export_validated_crops(session.store, out, samples=["S1"])
    assert again.removed == 2
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert names == [
        "agglutinated_benthic/S1_1.png", "planktic/from_elsewhere.png", "sediment/S1_7.png"
    ]  # fmt: skip

    with TallyStore.open(store_path) as store:
        with pytest.raises(ValueError, match="inside the tally store"):
            export_validated_crops(store, store_path / "crops")
        with pytest.raises(ValueError, match=r"no sample.*'S7'"):
            export_validated_crops(store, out, samples=["S7"])


def test_cli_export_reviewed(
    store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export-reviewed", "--help"]) == 0
    assert "Usage:" in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert "export-reviewed" in capsys.readouterr().out
    out = tmp_path / "data"
    assert main(["export-reviewed", str(store_path), str(out)]) == 0
    captured = capsys.readouterr()
    assert "wrote 0 validated crops" in captured.out and "review some first" in captured.err
    with ReviewSession.open(store_path, "S2", reviewer="ann") as session:
        session.accept()
    with ReviewSession.open(store_path, "S1", reviewer="ann") as session:
        session.accept()
    assert main(["export-reviewed", str(store_path), str(out), "--sample", "S2"]) == 0
    assert "wrote 1 validated crops" in capsys.readouterr().out
    assert [p.name for p in out.rglob("*.png")] == ["S2_0.png"]  # S2 has no MI: row order
    assert main(["export-reviewed", str(store_path), str(out), "--sample", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("napari-foram: error: no sample(s) 'nope'") and err.count("\n") == 1
    assert main(["export-reviewed", str(tmp_path), str(out)]) == 1
    assert "not a Zarr v3 store" in capsys.readouterr().err


# ----------------------------------------------------------------------------- retraining
def test_a_data_set_exported_from_reviewed_crops_trains(tmp_path: Path) -> None:
    """Review -> export -> fine-tune -> a checkpoint that loads: the loop closes.

    A real (short) run: 16 crops through a random-weight VGG16 (~0.2 s a crop on 2 CPU
    cores), 2 epochs of phase 1.
    """
    from napari_foram.classify.checkpoint import load_checkpoint, new_classifier, save_checkpoint

    true = [c for c in range(4) for _ in range(4)] + [0, 3]  # 16 to validate, 2 not
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=len(true)).astype(np.float32)
    path = tmp_path / "run.zarr"
    with TallyStore.create(path, classes=CLASSES) as store:
        store.add_sample(SampleRecord("T1"))
        store.append_specimens("T1", _batch(probs, true, seed=5))
    with ReviewSession.open(path, "T1", reviewer="ann") as session:
        while session.current is not None:
            row = session.current
            if row == 16:
                session.dubious()
            elif row == 17:
                session.reject()
            else:
                session.relabel(true[row])  # accept where the model was right
        assert session.progress().n_validated == 16
        exported = export_validated_crops(session.store, tmp_path / "data")
    assert len(exported) == 16 and set(exported.counts.values()) == {4}

    # The current model: a random backbone from a seed, stored head-only (small file).
    base, info = new_classifier(CLASSES, backbone_weights="none", seed=11)
    save_checkpoint(tmp_path / "base.safetensors", base, info, head_only=True)
    seen: list[str] = []
    result = fine_tune(
        tmp_path / "data",
        tmp_path / "base.safetensors",
        tmp_path / "tuned.safetensors",
        max_epochs=2,
        lr=1e-3,
        progress=lambda done, total, message: seen.append(message),
    )
    assert result.n_train == 12 and result.n_val == 4
    assert 0.0 <= result.val_accuracy <= 1.0
    assert "VGG16 features" in seen
    model, loaded = load_checkpoint(result.checkpoint)
    assert loaded.class_names == tuple(CLASSES)  # the model's order, not sorted folders
    assert loaded.backbone_weights == "none" and loaded.backbone_seed == 11
    assert loaded.training["review"]["base_model_sha256"] == info.sha256
    assert loaded.training["review"]["class_counts"] == dict.fromkeys(CLASSES, 4)
    assert loaded.metrics["val_accuracy"] == pytest.approx(result.val_accuracy)
    assert (tmp_path / "tuned.split.json").is_file()
    assert model.num_classes == 4


def test_fine_tune_refuses_too_few_crops(tmp_path: Path) -> None:
    from napari_foram.classify.checkpoint import new_classifier, save_checkpoint

    data = tmp_path / "data"
    for name, n in (("planktic", 2), ("sediment", 1)):
        (data / name).mkdir(parents=True)
        for i in range(n):
            iio.imwrite(data / name / f"S_{i}.png", render_crop(name, i))
    base, info = new_classifier(CLASSES, backbone_weights="none", seed=1)
    save_checkpoint(tmp_path / "base.safetensors", base, info, head_only=True)
    with pytest.raises(ValueError, match="class 'sediment' has 1 validated crop"):
        fine_tune(data, tmp_path / "base.safetensors", tmp_path / "x.safetensors")
    (data / "elsewhere").mkdir()
    with pytest.raises(ValueError, match="not among the classes"):
        fine_tune(data, tmp_path / "base.safetensors", tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="checkpoint not found"):
        fine_tune(data, tmp_path / "missing.safetensors", tmp_path / "x.safetensors")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_fine_tuning_keeps_the_current_models_backbone(tmp_path: Path) -> None:
    """A full checkpoint whose conv tensors are the recorded random backbone's is retrained
    from that source; one whose backbone changed (phase 2) from its own tensors.
    """
    import torch

    from napari_foram.classify.checkpoint import new_classifier, read_model_info, save_checkpoint
    from napari_foram.review import _backbone_source

    model, info = new_classifier(CLASSES, backbone_weights="none", seed=4)
    full = tmp_path / "full.safetensors"
    save_checkpoint(full, model, info)
    assert _backbone_source(full, read_model_info(full), tmp_path) == "none"
    with torch.no_grad():
        model.conv[28].bias.add_(0.5)  # as fine-tuning block 5 would
    tuned = tmp_path / "tuned.safetensors"
    save_checkpoint(tuned, model, info)
    source = _backbone_source(tuned, read_model_info(tuned), tmp_path)
    assert source == str(tmp_path / "backbone.pt")
    state = torch.load(source, weights_only=True)
    torch.testing.assert_close(state["28.bias"], model.conv[28].bias)
