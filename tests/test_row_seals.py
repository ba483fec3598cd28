"""Row seals: a chunk copied in from another place is caught; legitimate changes are not."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_foram.cli import main
from napari_foram.tally.stats import REVIEW_RELABELLED
from napari_foram.tally.store import SampleRecord, SpecimenBatch, TallyStore
from napari_foram.tally.store._seal import RESEALING_ATTR, SEAL_ARRAY, seal_mismatches
from napari_foram.tally.store.integrity import store_problems

CLASSES = ["planktic", "calcareous_benthic", "agglutinated_benthic", "sediment"]


def _batch(n: int, seed: int, k: int = len(CLASSES)) -> SpecimenBatch:
    rng = np.random.default_rng(seed)
    return SpecimenBatch(
        frame_index=np.zeros(n, dtype=int),
        centroid_y=rng.random(n) * 100,
        centroid_x=rng.random(n) * 100,
        bbox=np.tile([0, 0, 10, 10], (n, 1)),
        area_px=np.full(n, 100),
        mean_probs=rng.dirichlet(np.ones(k), size=n),
        crops=rng.integers(0, 255, (n, 224, 224, 3), dtype=np.uint8),
    )


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Samples A and B of 8 rows each (same shape, different values)."""
    path = tmp_path / "run.zarr"
    with TallyStore.create(path, classes=CLASSES) as st:
        for sid, seed in (("A", 1), ("B", 2)):
            st.add_sample(SampleRecord(sid))
            st.append_specimens(sid, _batch(5, seed))
            st.append_specimens(sid, _batch(3, seed + 10))
    return path


def _copy_chunk(store: Path, array: str, key: str, src: str = "A", dst: str = "B") -> None:
    a = store / "samples" / src / array / key
    b = store / "samples" / dst / array / key
    shutil.copyfile(a, b)


def test_healthy_store_has_no_seal_problems(store):
    assert store_problems(store, decode=True)[0] == []
    group = zarr.open_group(store / "samples" / "A", mode="r")
    assert group[SEAL_ARRAY].shape == (8, 2)
    assert np.all(group[SEAL_ARRAY][:] != 0)


def test_chunks_copied_from_another_sample_are_caught(store, capsys):
    with TallyStore.open(store, mode="r") as st:
        truth = st.counts("B")
    # class_index and mean_probs together: they agree with each other, so only the seals
    # can tell that they belong to sample A.
    _copy_chunk(store, "class_index", "c/0")
    _copy_chunk(store, "mean_probs", "c/0/0")
    problems, _ = store_problems(store, decode=True)
    assert [p.sample_id for p in problems] == ["B"]
    assert "do not match their seals" in problems[0].reason
    assert main(["check", str(store)]) == 1
    assert "sample 'B'" in capsys.readouterr().out
    # Repair moves B aside (which of its arrays is right cannot be known); A is untouched.
    assert main(["check", str(store), "--repair"]) == 0
    assert "sample 'B': moved to quarantine" in capsys.readouterr().out
    with TallyStore.open(store, mode="r") as st:
        assert st.samples() == ["A"]
    moved = next((store / "quarantine").rglob("B"))
    got = zarr.open_group(moved, mode="r")["class_index"][:8]
    assert not np.array_equal(np.bincount(got, minlength=4), truth)  # the swapped values


def test_a_crop_chunk_from_another_place_is_caught(store):
    # The first crop chunk of A copied over A's second one (same sample, another place).
    crops = store / "samples" / "A" / "crops" / "c"
    shutil.copyfile(crops / "0" / "0" / "0" / "0", crops / "1" / "0" / "0" / "0")
    problems, _ = store_problems(store, decode=True)
    assert len(problems) == 1
    assert problems[0].array == "crops"
    assert "4 crop(s) do not match their seals (first: row 4" in problems[0].reason


def test_the_seal_array_alone_swapped_is_caught(store):
    _copy_chunk(store, SEAL_ARRAY, "c/0/0")
    problems, _ = store_problems(store, decode=True)
    assert {p.sample_id for p in problems} == {"B"}


def test_reviews_reclassification_and_new_classes_keep_seals_valid(store):
    with TallyStore.open(store, mode="a") as st:
        st.set_review("A", [1, 6], status=REVIEW_RELABELLED, reviewed_class=2, reviewer="ann")
        st.update_specimens("A", [3], crops=np.full((1, 224, 224, 3), 7, np.uint8))
        st.add_classes(["Globigerinoides_ruber"])
        st.append_specimens("A", _batch(2, 5, k=5))
    # Adding a class padded the per-class columns of the old rows with zeros.
    assert store_problems(store, decode=True)[0] == []
    with TallyStore.open(store, mode="a") as st:
        n = st.n_specimens("A")
        rng = np.random.default_rng(0)
        probs = rng.dirichlet(np.ones(5), size=n)
        st.replace_classification(
            "A",
            {
                "mean_probs": probs,
                "class_index": probs.argmax(1),
                "variance": np.zeros_like(probs),
                "entropy": -(probs * np.log(probs)).sum(1),
                "mutual_information": np.zeros(n),
                "vote_fraction": probs.max(1),
                "feature_distance": np.full(n, np.nan),
            },
            {"model_sha256": "x" * 64},
            replaced={"model_sha256": "y" * 64},
        )
    assert store_problems(store, decode=True)[0] == []


def test_a_review_killed_before_its_seals_is_finished_by_the_next_writer(store):
    # What a kill between update_specimens' writes and its seals leaves behind: the
    # marker, the new value, the old seal.
    group = zarr.open_group(store / "samples" / "A", mode="r+")
    group.update_attributes({RESEALING_ATTR: [2]})
    group["review_status"][2] = 1
    assert store_problems(store, decode=True)[0] == []  # being resealed: not damage
    with TallyStore.open(store, mode="a"):  # the next writer reseals
        pass
    group = zarr.open_group(store / "samples" / "A", mode="r")
    assert group.attrs.get(RESEALING_ATTR) is None
    bad_crops, bad_rows = seal_mismatches(group, "A", 8)
    assert bad_crops.size == 0 and bad_rows.size == 0
    # Without the marker the same change is damage.
    group = zarr.open_group(store / "samples" / "A", mode="r+")
    group["review_status"][4] = 1
    assert "do not match their seals" in store_problems(store, decode=True)[0][0].reason


def test_a_store_written_before_seals_gets_them_for_new_rows(store):
    sample = store / "samples" / "A"
    shutil.rmtree(sample / SEAL_ARRAY)
    group = zarr.open_group(sample, mode="r+")
    attrs = dict(group.attrs)
    attrs.pop("row_seal_columns")
    group.attrs.clear()
    group.update_attributes(attrs)
    assert store_problems(store, decode=True)[0] == []
    with TallyStore.open(store, mode="a") as st:
        st.append_specimens("A", _batch(2, 9))
    seal = zarr.open_group(sample, mode="r")[SEAL_ARRAY][:]
    assert np.all(seal[:8] == 0) and np.all(seal[8:] != 0)  # old rows unsealed, not wrong
    assert store_problems(store, decode=True)[0] == []
