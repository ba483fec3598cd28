"""Nothing silently wrong (issue 26): every fault below ends with one line that says why,
and loses nothing.

Real commands on real files: `napari_foram.cli.main` (the console script's own entry,
which turns errors into one line) in this process, or the console module in a subprocess
where a regression would block (a FIFO opened for reading waits for a writer forever).
In-process runs that touch a FIFO or a device are also guarded by an alarm.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from napari_foram.cli import main

#: Seconds a refusal may take before the test calls it a hang.
HANG_LIMIT_S = 60


class _Hung(BaseException):
    """Raised by the alarm: a BaseException, so that no `except Exception` hides it."""


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Fail (rather than block the suite) if the test runs past `HANG_LIMIT_S`."""

    def ring(signum: int, frame: object) -> None:
        raise _Hung(f"no answer within {HANG_LIMIT_S} s: a FIFO or device was read")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(HANG_LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("napari-foram: error:"), err
    assert "Traceback" not in err
    return err


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The console module in a subprocess, killed after `HANG_LIMIT_S`."""
    env = {**os.environ, "NAPARI_FORAM_NO_DOWNLOAD": "1"}
    return subprocess.run(
        [sys.executable, "-m", "napari_foram.cli", *args],
        capture_output=True,
        text=True,
        timeout=HANG_LIMIT_S,
        env=env,
    )


def _tray_folder(root: Path) -> Path:
    """root/trays/S1/tray.png: a small synthetic tray with three whole specimens."""
    from napari_foram.synthetic import render_tray

    folder = root / "trays"
    (folder / "S1").mkdir(parents=True)
    tray = render_tray(3, shape=(300, 400), n_specimens=3, clipped=False, border=False)
    iio.imwrite(folder / "S1" / "tray.png", tray.image)
    return folder


def _blob_image(size: tuple[int, int], centre: tuple[int, int]) -> np.ndarray:
    img = np.full((*size, 3), 25, np.uint8)
    yy, xx = np.mgrid[: size[0], : size[1]]
    img[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < 45**2] = 220
    return img


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """An empty tally store."""
    from napari_foram.synthetic import CLASSES
    from napari_foram.tally.store import TallyStore

    path = tmp_path / "run.zarr"
    TallyStore.create(path, classes=list(CLASSES)).close()
    return path


# ----------------------------------------------------------------------------- 1. outputs
def test_export_never_writes_inside_a_store(store, tmp_path, capsys):
    from napari_foram._outputs import TALLY_SCHEMA
    from napari_foram.tally.store._schema import SCHEMA_NAME

    assert TALLY_SCHEMA == SCHEMA_NAME  # the copy the light module keeps is the same
    before = _tree(store)
    other = tmp_path / "other.zarr"
    (store.parent / "elsewhere").mkdir()
    cases = [
        (["export", str(store), "-o", str(store / "zarr.json")], "inside the tally store"),
        (["export", str(store), "-o", str(store / "samples" / "x.csv")], "inside the tally"),
        (["export", str(store), "-o", str(store)], "is a folder"),
        (
            ["export", str(store), "-o", str(tmp_path / "c.csv"), "--plot", str(store / "p.png")],
            "inside the tally store",
        ),
        (["export-reviewed", str(store), str(store / "crops")], "inside the tally store"),
    ]
    for argv, fragment in cases:
        assert main(argv) == 1, argv
        assert fragment in _one_error_line(capsys), argv
    # Any store counts, not only the one read: a file deep inside another store too.
    shutil.copytree(store, other)
    argv = ["export", str(store), "-o", str(other / "samples" / "deep" / "c.csv")]
    assert main(argv) == 1
    assert f"inside the tally store {other}" in _one_error_line(capsys)
    assert _tree(store) == before  # nothing written, not even a probe


def test_batch_outputs_never_replace_inputs(store, tmp_path, capsys):
    folder = _tray_folder(tmp_path)
    tray = folder / "S1" / "tray.png"
    pixels = tray.read_bytes()
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("file,sample_id\nS1/tray.png,S1\n")
    new_store = tmp_path / "new.zarr"
    base = ["batch", str(folder), "--store", str(new_store), "--model", "demo"]
    cases = [
        (["--report", str(tray)], "would overwrite the input"),
        (["--export", str(tray)], "would overwrite the input"),
        (["--samples", str(sheet), "--export", str(sheet)], "would overwrite the input"),
        (["--report", str(folder / "S1" / "report.png")], "read it as a frame"),
        (["--report", str(new_store / "r.json")], "inside the input folder"),
        (["--report", str(store / "r.json")], "inside the tally store"),
        (["--report", str(tmp_path / "r.json"), "--export", str(tmp_path / "r.json")], "both"),
        (["--report", str(tmp_path / "r.csv")], "both the batch report and"),
    ]
    for extra, fragment in cases:
        assert main([*base, *extra]) == 1, extra
        assert fragment in _one_error_line(capsys), extra
    assert tray.read_bytes() == pixels
    assert sheet.read_text() == "file,sample_id\nS1/tray.png,S1\n"
    assert not new_store.exists()  # refused before the store or the model were touched


def test_train_outputs_never_replace_inputs(tmp_path, capsys, no_hang):
    data = tmp_path / "data"
    (data / "planktic").mkdir(parents=True)
    image = data / "planktic" / "a.png"
    iio.imwrite(image, _blob_image((224, 224), (112, 112)))
    pixels = image.read_bytes()
    fifo = tmp_path / "split.fifo"
    os.mkfifo(fifo)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    base = ["train", str(data), "--backbone-weights", "none", "--device", "cpu"]
    cases = [
        (["-o", str(image)], "would overwrite a file inside the input folder"),
        (["-o", str(data / "planktic" / "m.safetensors")], "inside the input folder"),
        (["-o", str(data / "m.safetensors")], "inside the input folder"),
        (["-o", str(tmp_path / "m.safetensors"), "--split", "/dev/null"], "character device"),
        (["-o", str(tmp_path / "m.safetensors"), "--split", str(fifo)], "(a FIFO)"),
        (["-o", str(tmp_path / "m.safetensors"), "--split", str(data / "s.json")], "inside the"),
        (["-o", str(weights), "--backbone-weights", str(weights)], "would overwrite the input"),
    ]
    for extra, fragment in cases:
        assert main([*base, *extra]) == 1, extra
        assert fragment in _one_error_line(capsys), extra
    assert image.read_bytes() == pixels and weights.read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "split.fifo", "w.pth"]


def test_bench_json_is_checked_before_measuring(store, tmp_path, capsys, no_hang):
    fifo = tmp_path / "bench.json"
    os.mkfifo(fifo)
    assert main(["bench", "--quick", "--json", str(fifo)]) == 1
    assert "bench.json: is not a regular file (a FIFO)" in _one_error_line(capsys)
    assert main(["bench", "--quick", "--json", str(store / "bench.json")]) == 1
    assert "inside the tally store" in _one_error_line(capsys)


def test_extract_crops_never_writes_into_its_source(tmp_path, capsys):
    src = tmp_path / "frames"
    (src / "planktic").mkdir(parents=True)
    iio.imwrite(src / "planktic" / "tray.png", _blob_image((400, 400), (200, 200)))
    before = _tree(src)
    for out in (src, src / "crops", src / "planktic"):
        assert main(["extract-crops", str(src), str(out), "--no-border"]) == 1, out
        assert "inside the input folder" in _one_error_line(capsys)
    # OUT/<class> would be the source folder itself.
    src2 = tmp_path / "planktic"
    src2.mkdir()
    (src2 / "planktic").mkdir()
    iio.imwrite(src2 / "planktic" / "tray.png", _blob_image((400, 400), (200, 200)))
    assert main(["extract-crops", str(src2), str(tmp_path), "--no-border"]) == 1
    assert "into the source folder" in _one_error_line(capsys)
    assert _tree(src) == before  # a rerun finds frames only, never crops


def test_evaluate_report_never_inside_the_data(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "planktic").mkdir(parents=True)
    iio.imwrite(data / "planktic" / "a.png", _blob_image((224, 224), (112, 112)))
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"not read: the report is refused first")
    for report in (data, data / "report", data / "planktic"):
        argv = ["evaluate", str(data), "--model", str(model), "--report", str(report)]
        assert main(argv) == 1, report
        assert "inside the input folder" in _one_error_line(capsys)
    argv = ["evaluate", str(data), "--model", str(model), "--report", str(tmp_path / "r")]
    fifo = tmp_path / "r" / "report.json"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    assert main(argv) == 1
    assert "report.json: is not a regular file (a FIFO)" in _one_error_line(capsys)
    assert not (data / "report").exists()


# ----------------------------------------------------------------------------- 2. small files
def test_sheets_and_splits_only_from_regular_files(tmp_path, capsys, no_hang):
    # In this process (a subprocess per case cost ~15 s): `no_hang` fails the test
    # instead of blocking the suite, should a FIFO ever be opened for reading.
    folder = _tray_folder(tmp_path)
    fifo = tmp_path / "sheet.csv"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.csv"
    with huge.open("wb") as fh:
        fh.truncate(17 * 1024 * 1024)  # sparse: no time, no disk
    batch = ["batch", str(folder), "--store", str(tmp_path / "s.zarr"), "--samples"]
    for sheet, fragment in (
        (fifo, "is not a regular file (a FIFO), not a sample sheet"),
        ("/dev/zero", "is not a regular file (a character device), not a sample sheet"),
        (huge, "is larger than 16 MB; not a sample sheet"),
    ):
        assert main([*batch, str(sheet)]) == 1
        assert fragment in _one_error_line(capsys)
    data = tmp_path / "data"
    (data / "planktic").mkdir(parents=True)
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"x")
    evaluate = ["evaluate", str(data), "--model", str(model), "--report", str(tmp_path / "r")]
    for split in (fifo, "/dev/zero", huge):
        assert main([*evaluate, "--split", str(split)]) == 1
        assert "not a split file" in _one_error_line(capsys)


def test_split_file_reader_refuses_fifos_and_huge_files(tmp_path, no_hang):
    from napari_foram.training.data import LabelledCrops, load_split

    data = LabelledCrops(np.zeros((0, 224, 224, 3), np.uint8), np.zeros(0, np.int64), ("a",), [])
    fifo = tmp_path / "split.json"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"is not a regular file \(a FIFO\)"):
        load_split(fifo, data)
    with pytest.raises(ValueError, match="character device"):
        load_split("/dev/zero", data)
    huge = tmp_path / "huge.json"
    with huge.open("wb") as fh:
        fh.truncate(17 * 1024 * 1024)
    with pytest.raises(ValueError, match="larger than 16 MB"):
        load_split(huge, data)


# ----------------------------------------------------------------------------- 3. bounds
def test_workers_and_mc_have_bounds(tmp_path, capsys):
    folder = _tray_folder(tmp_path)
    base = ["batch", str(folder), "--store", str(tmp_path / "s.zarr")]
    assert main([*base, "--workers", str(4 * (os.cpu_count() or 1) + 1)]) == 2
    err = _one_error_line(capsys)
    assert "--workers" in err and "CPU core" in err
    assert main([*base, "--mc", "10001"]) == 2
    assert "--mc" in _one_error_line(capsys)
    assert main(["batch", "--help"]) == 0
    assert "4 x the CPU cores" in " ".join(capsys.readouterr().out.split())
    assert not (tmp_path / "s.zarr").exists()


# ----------------------------------------------------------------------------- 4, 7, 8. batch
def test_model_that_is_a_folder_or_fifo_is_named_so(tmp_path, capsys, no_hang):
    folder = _tray_folder(tmp_path)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    image = str(folder / "S1" / "tray.png")
    for model, fragment in ((model_dir, "is a folder"), (fifo, "is not a regular file")):
        for argv in (
            ["batch", str(folder), "--store", str(tmp_path / "s.zarr"), "--model", str(model)],
            ["classify", image, "--model", str(model), "--device", "cpu"],
            ["evaluate", str(folder), "--model", str(model), "--report", str(tmp_path / "r")],
        ):
            assert main(argv) == 1, argv
            err = _one_error_line(capsys)
            assert fragment in err and "not found" not in err, argv
    assert main(["classify", image, "--model", str(tmp_path / "nope.safetensors")]) == 1
    assert "checkpoint not found" in _one_error_line(capsys)


def test_batch_names_fifos_devices_and_hidden_folders_and_exits_3(
    random_checkpoint, tmp_path, capsys, no_hang
):
    folder = _tray_folder(tmp_path)
    os.mkfifo(folder / "S1" / "pipe.png")
    (folder / "S1" / "zero.png").symlink_to("/dev/zero")
    (folder / "S1" / ".thumbs").mkdir()
    iio.imwrite(folder / "S1" / ".thumbs" / "t.png", np.zeros((80, 80, 3), np.uint8))
    (folder / ".cache").mkdir()
    store = tmp_path / "run.zarr"
    argv = ["batch", str(folder), "--store", str(store), "--model", str(random_checkpoint)]
    argv += ["--mc", "2", "--device", "cpu"]
    assert main(argv) == 3
    captured = capsys.readouterr()
    assert "bad file S1/pipe.png: not a regular file (a FIFO)" in captured.err
    assert "bad file S1/zero.png: not a regular file (a character device)" in captured.err
    assert "empty" not in captured.err
    assert "2 file(s) could not be counted; exit status 3" in captured.err
    assert "incomplete: 2 bad file(s) not counted" in captured.out
    report = json.loads((tmp_path / "run_batch_report.json").read_text())
    lines = {row["file"]: row for row in report["files"]}
    assert lines["S1/tray.png"]["status"] == "processed"
    for hidden in ("S1/.thumbs/", ".cache/"):
        assert lines[hidden]["status"] == "skipped", hidden
        assert lines[hidden]["reason"].startswith("hidden folder"), hidden
    assert "S1/.thumbs/t.png" not in lines
    with (tmp_path / "run_batch_report.csv").open(encoding="utf-8") as fh:
        rows = {r["file"]: r for r in csv.DictReader(fh)}
    assert rows["S1/.thumbs/"]["status"] == "skipped"
    # The same folder without the bad files: a complete count exits 0.
    (folder / "S1" / "pipe.png").unlink()
    (folder / "S1" / "zero.png").unlink()
    assert main(argv) == 0
    assert "incomplete" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- 5, 6. names
def test_extract_crops_skips_non_utf8_names_and_neutralises_formulas(tmp_path, capsys):
    src = tmp_path / "frames"
    formula = src / "=1+1"
    formula.mkdir(parents=True)
    iio.imwrite(formula / "tray.png", _blob_image((400, 400), (200, 200)))
    bad = Path(os.fsdecode(os.fsencode(formula) + b"/bad\xff.png"))
    bad.write_bytes(iio.imwrite("<bytes>", _blob_image((400, 400), (200, 200)), extension=".png"))
    out = tmp_path / "crops"
    assert main(["extract-crops", str(src), str(out), "--no-border", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["crops"] == {"=1+1": 1} and summary["images"] == 1
    (skip,) = [line for line in captured.err.splitlines() if "skipped" in line]
    assert "bad\\xff.png: file name is not valid UTF-8" in skip
    text = (out / "crops.csv").read_text(encoding="utf-8")  # whole and valid UTF-8
    rows = list(csv.DictReader(text.splitlines()))
    assert len(rows) == 1
    assert rows[0]["class"] == "'=1+1" and rows[0]["crop"].startswith("'=1+1/")
    assert all(not v.startswith(("=", "+", "-", "@")) for v in rows[0].values())
    assert sorted(p.name for p in (out / "=1+1").iterdir()) == ["tray_0.png"]


def test_evaluate_skips_non_utf8_names(random_checkpoint, tmp_path, capsys):
    from napari_foram.synthetic import render_crop

    data = tmp_path / "data"
    (data / "planktic").mkdir(parents=True)
    iio.imwrite(data / "planktic" / "good.png", render_crop("planktic", seed=0))
    bad = Path(os.fsdecode(os.fsencode(data / "planktic") + b"/bad\xff.png"))
    bad.write_bytes(iio.imwrite("<bytes>", render_crop("planktic", seed=1), extension=".png"))
    report = tmp_path / "report"
    argv = ["evaluate", str(data), "--model", str(random_checkpoint), "--mc", "2"]
    assert main([*argv, "--report", str(report), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "bad\\xff.png: file name is not valid UTF-8" in err
    saved = json.loads((report / "report.json").read_text(encoding="utf-8"))
    assert saved["n"] == 1
    assert any("not valid UTF-8" in line for line in saved["data"]["skipped"])
    with (report / "predictions.csv").open(encoding="utf-8") as fh:
        assert [r["path"] for r in csv.DictReader(fh)] == ["planktic/good.png"]
    for name in ("report.json", "predictions.csv", "confusion_matrix.csv", "gallery.png"):
        assert (report / name).is_file(), name


# ----------------------------------------------------------------------------- 9. pixel size
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "0", "-1", "0.001", "1e6"])
def test_pixel_size_must_be_plausible(value, tmp_path, capsys):
    folder = _tray_folder(tmp_path)
    image = str(folder / "S1" / "tray.png")
    for argv in (
        ["detect", image, "--pixel-size", value],
        ["batch", str(folder), "--store", str(tmp_path / "s.zarr"), "--pixel-size", value],
    ):
        assert main(argv) == 2, argv
        err = _one_error_line(capsys)
        assert "--pixel-size" in err and "not plausible" in err, err
    assert not (tmp_path / "s.zarr").exists()


def test_plausible_pixel_size_is_used(tmp_path, capsys):
    folder = _tray_folder(tmp_path)
    argv = ["detect", str(folder / "S1" / "tray.png"), "--pixel-size", "5", "--json"]
    assert main(argv) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["pixel_size_um"] == 5.0
