"""Damaged stores: nothing deleted or overwritten, every damage named, `check --repair`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_foram.cli import main
from napari_foram.tally.store import (
    LOCK_NAME,
    DamagedSampleError,
    SampleRecord,
    SpecimenBatch,
    TallyStore,
)
from napari_foram.tally.store.integrity import store_problems

CLASSES = ["planktic", "calcareous_benthic", "agglutinated_benthic", "sediment"]


def _batch(n: int, seed: int, crops: bool = True) -> SpecimenBatch:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=n)
    return SpecimenBatch(
        frame_index=np.zeros(n, dtype=int),
        centroid_y=rng.random(n) * 100,
        centroid_x=rng.random(n) * 100,
        bbox=np.tile([0, 0, 10, 10], (n, 1)),
        area_px=np.full(n, 100),
        mean_probs=probs,
        crops=rng.integers(0, 255, (n, 224, 224, 3), dtype=np.uint8) if crops else None,
    )


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Two samples: S1 (10 rows in two commits, crops) and S2 (5 rows, no crops)."""
    path = tmp_path / "run.zarr"
    with TallyStore.create(path, classes=CLASSES) as st:
        st.add_sample(SampleRecord("S1"))
        st.add_sample(SampleRecord("S2"))
        st.append_specimens("S1", _batch(6, 1))
        st.append_specimens("S1", _batch(4, 2))
        st.append_specimens("S2", _batch(5, 3, crops=False))
    return path


def _tree(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file below `folder` (byte-for-byte comparison)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _counts(path: Path, sid: str) -> np.ndarray:
    with TallyStore.open(path) as st:
        return st.counts(sid)


@pytest.mark.parametrize("damage", ["truncate", "remove"])
def test_writer_never_deletes_a_sample_with_unreadable_metadata(store, damage, capsys):
    meta = store / "samples" / "S1" / "zarr.json"
    if damage == "truncate":
        meta.write_bytes(meta.read_bytes()[:40])
    else:
        meta.unlink()
    before = _tree(store / "samples" / "S1")
    s2 = _counts(store, "S2")
    with pytest.warns(RuntimeWarning, match=r"S1"):
        writer = TallyStore.open(store, mode="a")
    with writer:
        # The damaged sample is refused to writers with its reason...
        with pytest.raises(DamagedSampleError, match=r"S1.*zarr.json") as err:
            writer.add_sample(SampleRecord("S1"))
        assert "\n" not in str(err.value)
        with pytest.raises(DamagedSampleError):
            writer.append_specimens("S1", _batch(2, 9))
        # ...and the other samples stay usable.
        writer.append_specimens("S2", _batch(2, 4, crops=False))
        assert set(writer.damaged_samples()) == {"S1"}
    assert _tree(store / "samples" / "S1") == before
    assert _counts(store, "S2").sum() == s2.sum() + 2
    # Exports refuse rather than leave S1 out without a word.
    out = store.parent / "counts.csv"
    assert main(["export", str(store), "-o", str(out)]) == 1
    line = capsys.readouterr().err.strip()
    assert "S1" in line and "zarr.json" in line and "\n" not in line
    assert not out.exists()
    assert _tree(store / "samples" / "S1") == before


def test_missing_class_index_chunk_is_never_read_as_zero_counts(store, capsys):
    truth = _counts(store, "S1")
    chunk = store / "samples" / "S1" / "class_index" / "c" / "0"
    chunk.unlink()
    with TallyStore.open(store) as st:
        with pytest.raises(DamagedSampleError, match=r"class_index.*c/0.*missing"):
            st.counts("S1")
        with pytest.raises(DamagedSampleError, match=r"S1"):
            st.read_specimens("S1", columns=["class_index"])
        assert st.read_specimens("S2")["row"].size == 5  # the other sample reads
    assert main(["export", str(store), "-o", str(store.parent / "c.csv")]) == 1
    assert "class_index" in capsys.readouterr().err
    # check names sample, array and chunk; exit 1.
    assert main(["check", str(store)]) == 1
    out = capsys.readouterr().out
    assert "sample 'S1', array class_index, chunk c/0: chunk file missing" in out
    # --repair derives class_index from mean_probs (the store's default) and says so.
    assert main(["check", str(store), "--repair"]) == 0
    out = capsys.readouterr().out
    assert "class_index recomputed from mean_probs" in out
    assert np.array_equal(_counts(store, "S1"), truth)
    assert main(["check", str(store)]) == 0
    assert "all readable" in capsys.readouterr().out


def test_garbage_crop_chunk_named_refused_to_writers_and_quarantined(store, capsys):
    # S1 has 10 rows, 4 crops per chunk: c/2/0/0/0 is the last, the one an append rewrites.
    chunk = store / "samples" / "S1" / "crops" / "c" / "2" / "0" / "0" / "0"
    chunk.write_bytes(b"not zstd at all" * 10)
    before = _tree(store / "samples" / "S1")
    with TallyStore.open(store) as st:
        with pytest.raises(DamagedSampleError, match=r"crops.*decode"):
            st.read_crops("S1")
        assert st.read_crops("S1", [0]).shape == (1, 224, 224, 3)  # other chunks read
    with TallyStore.open(store, mode="a") as writer:
        with pytest.raises(DamagedSampleError, match=r"crops.*c/2/0/0/0") as err:
            writer.append_specimens("S1", _batch(1, 5))
        assert "\n" not in str(err.value)
    assert _tree(store / "samples" / "S1") == before
    # The napari reader shows the store without raising (the bad chunk draws black).
    from napari_foram._reader import store_layer_data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layers = store_layer_data(store)
    crops = next(d for d, kw, _ in layers if kw["name"] == "S1 crops")
    assert np.asarray(crops[9]).max() == 0 and np.asarray(crops[0]).max() > 0

    assert main(["check", str(store)]) == 1
    assert "array crops, chunk c/2/0/0/0: not decodable" in capsys.readouterr().out
    assert main(["check", str(store), "--repair"]) == 0
    out = capsys.readouterr().out
    assert "sample 'S1': moved to quarantine/" in out
    moved = next((store / "quarantine").glob("*/samples/S1"))
    assert _tree(moved) == before  # set aside byte for byte, never deleted
    with TallyStore.open(store) as st:
        assert st.samples() == ["S2"]
        assert st.quarantined()[0]["sample_id"] == "S1"
    out_csv = store.parent / "after.csv"
    assert main(["export", str(store), "-o", str(out_csv)]) == 0
    assert "set aside" in capsys.readouterr().err
    assert "S2" in out_csv.read_text()


def test_reader_marks_a_damaged_sample_instead_of_labelling_fill_values(store):
    (store / "samples" / "S1" / "class_index" / "c" / "0").unlink()
    from napari_foram._reader import read_tally_stores

    with pytest.warns(UserWarning, match=r"S1.*damaged.*class_index"):
        layers = read_tally_stores(str(store))
    names = [kw["name"] for _, kw, _ in layers]
    assert names == ["S2 crops"]


def test_writer_open_leaves_damage_untouched_and_recovers_the_rest(store):
    # A damaged array's metadata in S1, and ghost rows above S2's counter (a killed writer).
    (store / "samples" / "S1" / "entropy" / "zarr.json").write_text("{")
    before = _tree(store / "samples" / "S1")
    with pytest.warns(RuntimeWarning, match=r"S1.*entropy"):
        TallyStore.open(store, mode="a").close()
    assert _tree(store / "samples" / "S1") == before
    problems, found = store_problems(store)
    assert found == ["S1", "S2"]
    assert [(p.sample_id, p.array) for p in problems] == [("S1", "entropy")]


def test_half_made_sample_is_still_removed(store):
    import zarr

    zarr.open_group(store, mode="r+").create_group(
        "samples/S3", attributes={"initialised": False, "n_committed": 0, "n_tally": 0}
    )
    with pytest.warns(RuntimeWarning, match=r"removing incomplete sample 'S3'"):
        TallyStore.open(store, mode="a").close()
    assert not (store / "samples" / "S3").exists()


def test_check_reports_counter_and_length_problems(store, capsys):
    import json

    meta_file = store / "samples" / "S2" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["attributes"]["n_committed"] = 50  # more rows committed than the arrays hold
    meta_file.write_text(json.dumps(meta))
    assert main(["check", str(store), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    reasons = {(p["sample_id"], p["array"]) for p in report["problems"]}
    assert ("S2", "frame_index") in reasons
    assert all("50 are committed" in p["reason"] for p in report["problems"])


def test_check_of_a_healthy_store_and_of_no_store(store, tmp_path, capsys):
    assert main(["check", str(store)]) == 0
    assert "2 samples, all readable" in capsys.readouterr().out
    assert main(["check", str(tmp_path / "nothing.zarr")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-foram: error:") and "nothing.zarr" in err


def test_rows_without_crops_still_have_every_chunk(store):
    # S2 was stored without crops: zeros are written, so a missing chunk means damage.
    with TallyStore.open(store) as st:
        assert st.read_crops("S2").max() == 0
    assert store_problems(store) == ([], ["S1", "S2"])


def test_zombie_writer_lock_is_stale(store):
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs Linux's /proc")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.time() + 30
        while time.time() < deadline:  # never waited for: it stays a zombie
            state = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                break
            time.sleep(0.05)
        else:
            pytest.skip("the child did not become a zombie")
        import json
        import socket

        lock = {"pid": child.pid, "host": socket.gethostname(), "since": "", "token": "x"}
        (store / LOCK_NAME).write_text(json.dumps(lock))
        with pytest.warns(RuntimeWarning, match=r"stale lock"):
            TallyStore.open(store, mode="a").close()
    finally:
        child.wait()
    assert not (store / LOCK_NAME).exists()


def test_second_creator_is_not_told_about_an_option_the_cli_lacks(store):
    with pytest.raises(ValueError) as err:
        TallyStore.create(store, classes=CLASSES)
    assert "overwrite" not in str(err.value) and "open it to append" in str(err.value)


def test_root_metadata_unreadable_is_one_line_everywhere(store, capsys):
    (store / "zarr.json").write_bytes(b"\xff\xfe")
    assert main(["check", str(store)]) == 1
    assert main(["export", str(store), "-o", str(store.parent / "x.csv")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all("zarr.json" in line for line in lines)


def test_unreadable_samples_group_metadata_is_rebuilt(store, capsys):
    (store / "samples" / "zarr.json").write_text("")
    assert main(["export", str(store), "-o", str(store.parent / "x.csv")]) == 1
    assert "samples: zarr.json is unreadable" in capsys.readouterr().err
    assert main(["check", str(store), "--repair"]) == 0
    assert "rewrote samples/zarr.json" in capsys.readouterr().out
    assert _counts(store, "S1").sum() == 10
    assert os.listdir(store / "quarantine")


def test_batch_into_a_store_with_a_damaged_sample(random_checkpoint, tmp_path, capsys):
    import imageio.v3 as iio

    from napari_foram.synthetic import CLASSES as SYNTH_CLASSES
    from napari_foram.synthetic import render_tray

    folder = tmp_path / "trays"
    for sid, seed in (("S1", 1), ("S2", 2)):
        (folder / sid).mkdir(parents=True)
        tray = render_tray(seed, shape=(300, 400), n_specimens=3, clipped=False, border=False)
        iio.imwrite(folder / sid / "tray.png", tray.image)
    store = tmp_path / "run.zarr"
    argv = ["batch", str(folder), "--store", str(store), "--model", str(random_checkpoint)]
    argv += ["--mc", "2", "--device", "cpu"]
    assert main(argv) == 0
    capsys.readouterr()
    meta = store / "samples" / "S1" / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:25])
    before = _tree(store / "samples" / "S1")
    (folder / "S2" / "more.png").write_bytes((folder / "S1" / "tray.png").read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 1  # something needs a look: the damaged sample
    assert _tree(store / "samples" / "S1") == before  # byte for byte
    assert not [line for line in err.splitlines() if line.startswith("napari-foram: error")]
    notes = [line for line in err.splitlines() if line.startswith("napari-foram: note")]
    assert any("S1 is damaged" in n and "zarr.json is unreadable" in n for n in notes)
    # The healthy sample went on: its new file was counted into it.
    report = json.loads((tmp_path / "run_batch_report.json").read_text())
    lines = {row["file"]: row for row in report["files"]}
    assert lines["S2/more.png"]["status"] == "processed"
    assert lines["S1/tray.png"]["status"] == "skipped"
    assert "damaged" in lines["S1/tray.png"]["reason"]
    assert list(report["damaged_samples"]) == ["S1"]
    assert report["samples"]["S2"]["new"] == lines["S2/more.png"]["n_specimens"] > 0
    assert SYNTH_CLASSES  # the model's classes made the store


# ----------------------------------------------------------------------------- fuzz
@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A store to copy for each damage, and its true counts."""
    path = tmp_path_factory.mktemp("template") / "run.zarr"
    with TallyStore.create(path, classes=CLASSES) as st:
        for sid, seed in (("S1", 1), ("S2", 2)):
            st.add_sample(SampleRecord(sid))
            st.append_specimens(sid, _batch(5, seed))
            st.append_specimens(sid, _batch(3, seed + 10))
        truth = {sid: st.counts(sid) for sid in ("S1", "S2")}
    return path, truth


def _damage_any_file(data: object, store: Path) -> Path:
    """Damage one file of sample S1 (hypothesis picks which and how)."""
    from hypothesis import strategies as hst

    draw = data.draw  # type: ignore[attr-defined]
    files = sorted(p for p in (store / "samples" / "S1").rglob("*") if p.is_file())
    target = draw(hst.sampled_from(files))
    how = draw(hst.sampled_from(["delete", "truncate", "garbage", "flip"]))
    raw = target.read_bytes()
    if how == "delete":
        target.unlink()
    elif how == "truncate":
        target.write_bytes(raw[: draw(hst.integers(0, max(len(raw) - 1, 0)))])
    elif how == "garbage":
        target.write_bytes(draw(hst.binary(min_size=1, max_size=64)))
    else:
        i = draw(hst.integers(0, len(raw) - 1))
        target.write_bytes(raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1 :])
    return target


#: Damaged stores per run: each costs ~0.3 s (copy, open, append, count, check, repair).
#: The default suite draws a few on every run (hypothesis draws anew each time); the slow
#: one draws many.
FUZZ_EXAMPLES = 10
FUZZ_EXAMPLES_SLOW = 60


def test_fuzz_damaged_sample_never_changed_never_silently_wrong(template):
    _fuzz_damaged_sample(template, FUZZ_EXAMPLES)


@pytest.mark.slow
def test_fuzz_many_damaged_samples_never_changed_never_silently_wrong(template):
    _fuzz_damaged_sample(template, FUZZ_EXAMPLES_SLOW)


def _fuzz_damaged_sample(template, max_examples: int) -> None:
    import shutil

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as hst

    source, truth = template

    @settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=hst.data())
    def run(data: object) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            store = Path(folder) / "run.zarr"
            shutil.copytree(source, store)
            _damage_any_file(data, store)
            before = _tree(store / "samples" / "S1")
            wrote = False
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                try:
                    writer = TallyStore.open(store, mode="a")
                except ValueError as exc:  # refused as a whole: one line
                    assert "\n" not in str(exc)
                    writer = None
                if writer is not None:
                    with writer:
                        try:
                            writer.append_specimens("S1", _batch(1, 99))
                            wrote = True
                        except ValueError as exc:
                            assert "\n" not in str(exc)
                        writer.append_specimens("S2", _batch(1, 98))  # others stay usable
            if not wrote:
                assert _tree(store / "samples" / "S1") == before
            # Counts are right or refused, never made of fill values.
            with TallyStore.open(store) as st:
                try:
                    counts = st.counts("S1")
                except ValueError as exc:
                    assert "\n" not in str(exc)
                else:
                    added = counts - truth["S1"]
                    assert added.min() >= 0 and added.sum() == (1 if wrote else 0)
            problems, _ = store_problems(store)
            if not wrote:
                assert _tree(store / "samples" / "S1") == before
            if problems:
                assert main(["check", str(store), "--repair"]) in (0, 1)
                with TallyStore.open(store) as st:
                    assert "S2" in st.samples()
                    assert st.counts("S2").sum() == truth["S2"].sum() + 1

    run()


def test_reader_warns_about_a_store_it_cannot_open(store):
    from napari_foram._reader import read_tally_stores

    (store / "samples" / "zarr.json").write_text("{")
    with pytest.warns(UserWarning, match=r"cannot read tally store.*samples: zarr.json"):
        assert read_tally_stores(str(store)) == []
