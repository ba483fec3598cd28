"""Batch folders: a folder of images counted into a tally store, resumably, on Dask too.

A random-weights VGG16 stands in for a trained model (classes are then arbitrary), so the
checks are on what does not depend on training: every specimen counted once per sample,
nothing counted twice after a kill, odd files reported, Dask equal to a local run. Trays
are small (400 x 500 px, 4 specimens) because VGG16 costs ~0.2 s per crop on two cores.
"""

from __future__ import annotations

import contextlib
import csv
import json
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_foram.batch import (
    BatchConfig,
    BatchReport,
    plan_batch,
    run_batch,
)
from napari_foram.cli import main
from napari_foram.synthetic import CLASSES, render_tray
from napari_foram.tally.store import SampleRecord, SpecimenBatch, TallyStore

# No tray wall: in frames this small the wall can hide a specimen resting against it, and
# the detector is tested elsewhere; here every specimen must be findable.
TRAY = {
    "shape": (400, 500),
    "n_specimens": 4,
    "clipped": False,
    "touching_pairs": 0,
    "border": False,
}
# More than one MC pass, so that equal results also mean equal (seeded) dropout masks.
MC = 3
# Tasks of two files: the 3 files of a sample make two tasks, so a kill can fall between.
FILES_PER_TASK = 2


def _tray(seed: int) -> tuple[np.ndarray, int]:
    """A tray image and its number of specimens (the ground truth)."""
    tray = render_tray(seed, **TRAY)
    return tray.image, sum(not s.clipped for s in tray.specimens)


@pytest.fixture(scope="module")
def checkpoint(random_checkpoint: Path) -> Path:
    return random_checkpoint


@pytest.fixture(scope="module")
def trays(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """Two samples of three trays in PNG, TIFF and JPEG, grey, RGB and 16-bit; truth."""
    folder = tmp_path_factory.mktemp("batch") / "trays"
    truth = {"S1": 0, "S2": 0}
    s1, s2 = folder / "S1", folder / "S2"
    s1.mkdir(parents=True)
    s2.mkdir()
    writers = [
        (s1 / "tray1.png", lambda p, im: iio.imwrite(p, im)),
        (s1 / "tray2.tif", lambda p, im: tifffile.imwrite(p, im)),
        (s1 / "tray10.jpg", lambda p, im: iio.imwrite(p, im, quality=95)),
        (s2 / "a.png", lambda p, im: iio.imwrite(p, im.mean(axis=2).astype(np.uint8))),
        (s2 / "b.tif", lambda p, im: tifffile.imwrite(p, im.astype(np.uint16) * 257)),
        (s2 / "c.png", lambda p, im: iio.imwrite(p, im)),
    ]
    for seed, (path, write) in enumerate(writers, start=1):
        image, n = _tray(seed)
        write(path, image)
        truth[path.parent.name] += n
    (folder / "notes.txt").write_text("not an image\n")
    return folder, truth


def _config(folder: Path, store: Path, checkpoint: Path, **kwargs: object) -> BatchConfig:
    settings: dict[str, object] = {"mc_samples": MC, "files_per_task": FILES_PER_TASK}
    settings.update(kwargs)
    return BatchConfig(folder=folder, store=store, model=checkpoint, **settings)


@pytest.fixture(scope="module")
def local_run(trays, checkpoint, tmp_path_factory) -> tuple[Path, BatchReport]:
    """The reference: an uninterrupted run in this process."""
    folder, _ = trays
    out = tmp_path_factory.mktemp("local")
    store = out / "local.zarr"
    report = run_batch(_config(folder, store, checkpoint, export=out / "counts.csv"))
    return store, report


def _same_store(a: Path, b: Path) -> None:
    """Every committed column, crop and processed-file record of `a` equals `b`'s."""
    with TallyStore.open(a) as sa, TallyStore.open(b) as sb:
        assert sa.samples() == sb.samples()
        for sid in sa.samples():
            ra, rb = sa.read_specimens(sid), sb.read_specimens(sid)
            for col in ra:
                assert np.array_equal(ra[col], rb[col], equal_nan=True), (sid, col)
            assert np.array_equal(sa.read_crops(sid), sb.read_crops(sid)), sid
            assert list(sa.processed_files(sid).items()) == list(sb.processed_files(sid).items())
            assert sa.counts(sid).tolist() == sb.counts(sid).tolist()


# ----------------------------------------------------------------------------- the count
def test_counts_per_sample_equal_the_truth(local_run, trays):
    _, truth = trays
    store, report = local_run
    assert not report.interrupted
    assert report.count("processed") == 6 and report.count("bad") == 0
    assert [(f.file, f.status) for f in report.files if f.status == "ignored"] == [
        ("notes.txt", "ignored")
    ]
    assert {sid: s["total"] for sid, s in report.samples.items()} == truth
    with TallyStore.open(store) as tally:
        assert tally.samples() == ["S1", "S2"]
        for sid, n in truth.items():
            assert int(tally.counts(sid).sum()) == n == tally.n_specimens(sid)
        # Natural order (tray2 before tray10), one frame index per file, 16-bit noted.
        files = list(tally.processed_files("S1").values())
        assert [f["file"] for f in files] == ["S1/tray1.png", "S1/tray2.tif", "S1/tray10.jpg"]
        assert [f["frame_index"] for f in files] == [0, 1, 2]
        rows = tally.read_specimens("S1", columns=["frame_index"])["frame_index"]
        assert rows.tolist() == [i for i, f in enumerate(files) for _ in range(f["n_specimens"])]
        assert tally.provenance("S1")["mc_samples"] == MC
    notes = {f.file: f.reason for f in report.files}
    assert notes["S2/b.tif"] == "uint16 pixels scaled to 8 bits"
    with open(report.export_csv, encoding="utf-8") as fh:
        rows = {r["sample_id"]: int(r["total_objects"]) for r in csv.DictReader(fh)}
    assert rows == truth
    assert json.loads(Path(report.report_json).read_text())["summary"]["processed"] == 6


def test_a_rerun_skips_every_file(local_run, trays, checkpoint, tmp_path):
    folder, truth = trays
    store, _ = local_run
    again = run_batch(_config(folder, store, checkpoint, report=tmp_path / "again.json"))
    assert again.count("processed") == 0 and again.count("skipped") == 6
    assert all(f.reason.startswith("already in the store") for f in again.files[1:])
    assert {sid: s["total"] for sid, s in again.samples.items()} == truth
    assert {sid: s["new"] for sid, s in again.samples.items()} == {"S1": 0, "S2": 0}


# ----------------------------------------------------------------------------- resume
def _committed(store: Path) -> int:
    """Rows committed so far, read the way any reader would (attrs are replaced atomically)."""
    total = 0
    for meta in store.glob("samples/*/zarr.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):  # a sample being created
            total += json.loads(meta.read_text())["attributes"].get("n_committed", 0)
    return total


def test_killed_run_resumes_to_the_uninterrupted_result(local_run, trays, checkpoint, tmp_path):
    folder, truth = trays
    store = tmp_path / "killed.zarr"
    argv = [
        sys.executable, "-m", "napari_foram.cli", "batch", str(folder), "--store", str(store),
        "--model", str(checkpoint), "--mc", str(MC), "--files-per-task", str(FILES_PER_TASK),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while _committed(store) == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]  # killed, not finished
    killed_at = _committed(store)
    assert 0 < killed_at < sum(truth.values())

    # The dead writer's lock is taken over, and the rows it left above the commit counter
    # (preallocated or uncommitted) are trimmed; both say so.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = run_batch(_config(folder, store, checkpoint))
    assert any("stale lock" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert resumed.count("skipped") >= FILES_PER_TASK  # the committed task is not redone
    assert resumed.count("processed") + resumed.count("skipped") == 6
    assert {sid: s["total"] for sid, s in resumed.samples.items()} == truth
    _same_store(store, local_run[0])  # same rows, crops, files: nothing counted twice


def test_stop_mid_classification_drops_the_file_in_flight_and_a_rerun_counts_the_rest(
    local_run, trays, checkpoint, tmp_path
):
    """Stop set while the second task (S1/tray10.jpg) is being classified: the run ends
    before another layer of VGG16 runs, nothing of that file reaches the store, the first
    task's two files stay; a rerun counts the four left and ends equal to an
    uninterrupted run (no file counted twice).
    """
    import threading

    import torch

    folder, truth = trays
    store = tmp_path / "stopped.zarr"
    stop = threading.Event()
    events: list[tuple[str, str]] = []
    layers_after_stop = []

    def progress(done: int, total: int, message: str = "") -> None:
        events.append(("progress", message))
        if message.endswith("detecting and classifying") and "tray10" in message:
            stop.set()

    def on_file(line, result) -> None:
        events.append(("file", line.file))

    def count_layer(module, args, output) -> None:
        if stop.is_set() and not list(module.children()):  # a layer, not a container
            layers_after_stop.append(type(module).__name__)

    hook = torch.nn.modules.module.register_module_forward_hook(count_layer)
    try:
        report = run_batch(
            _config(folder, store, checkpoint), progress=progress, on_file=on_file, stop=stop
        )
    finally:
        hook.remove()
    assert stop.is_set() and report.interrupted
    assert layers_after_stop == []  # no layer of the classifier ran once stop was set
    # Order: the first task's files committed, then tray10 began and was dropped.
    files = [name for kind, name in events if kind == "file"]
    assert files == ["S1/tray1.png", "S1/tray2.tif"]
    began = events.index(("progress", "S1/tray10.jpg: detecting and classifying"))
    assert all(kind == "progress" for kind, _ in events[began:])
    assert report.abandoned == ["S1/tray10.jpg"]
    assert report.not_counted == ["S1/tray10.jpg", "S2/a.png", "S2/b.tif", "S2/c.png"]
    assert "4 file(s) left for the next run (1 dropped in flight" in report.summary_line()
    saved = json.loads(Path(report.report_json).read_text())
    assert saved["interrupted"] and saved["abandoned"] == ["S1/tray10.jpg"]
    with TallyStore.open(store) as tally:
        assert [f["file"] for f in tally.processed_files("S1").values()] == files
        assert tally.samples() == ["S1"]  # S2 never began
        kept = int(tally.counts("S1").sum())
    assert report.samples["S1"] == {"new": kept, "total": kept}

    resumed = run_batch(_config(folder, store, checkpoint))
    assert not resumed.interrupted and resumed.not_counted == []
    processed = [f.file for f in resumed.files if f.status == "processed"]
    assert processed == report.not_counted
    assert [f.file for f in resumed.files if f.status == "skipped"] == files
    assert {sid: s["total"] for sid, s in resumed.samples.items()} == truth
    _same_store(store, local_run[0])


def test_stop_before_counting_writes_nothing(trays, checkpoint, tmp_path):
    import threading

    folder, _ = trays
    store = tmp_path / "never.zarr"
    stop = threading.Event()
    stages: list[tuple[int, int, str]] = []

    def progress(done: int, total: int, message: str = "") -> None:
        stages.append((done, total, message))
        stop.set()  # at the first status line

    report = run_batch(_config(folder, store, checkpoint), progress=progress, stop=stop)
    assert stages == [(0, 0, "reading the folder")]  # a stage: no file count yet
    assert report.interrupted and report.abandoned == []
    assert len(report.not_counted) == 6
    assert not store.exists()
    assert Path(report.report_json).is_file()


# ----------------------------------------------------------------------------- odd files
def test_odd_files_are_reported_and_the_good_ones_counted(checkpoint, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    image, n = _tray(7)
    iio.imwrite(folder / "good.png", image)
    png = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "text.tif").write_text("this is not a TIFF\n")
    (folder / "empty.png").write_bytes(b"")
    tifffile.imwrite(folder / "deep16.tif", image.astype(np.uint16) * 257)
    alpha = np.full((*image.shape[:2], 1), 255, np.uint8)
    iio.imwrite(folder / "rgba.png", np.concatenate([image, alpha], axis=2))
    iio.imwrite(folder / "tiny.png", image[:10, :10])
    iio.imwrite(folder / "huge.png", np.zeros((1200, 1000), np.uint8))  # 1.2 MP > 1 MP
    (folder / "readme.md").write_text("# trays\n")

    store = tmp_path / "odd.zarr"
    config = _config(folder, store, checkpoint, mc_samples=1, max_megapixels=1.0)
    report = run_batch(config)
    status = {f.file: f.status for f in report.files}
    reason = {f.file: f.reason for f in report.files}
    assert {f for f, s in status.items() if s == "processed"} == {
        "good.png", "deep16.tif", "rgba.png"
    }  # fmt: skip
    assert {f for f, s in status.items() if s == "bad"} == {
        "truncated.png", "text.tif", "empty.png", "tiny.png", "huge.png"
    }  # fmt: skip
    assert status["readme.md"] == "ignored"
    assert reason["empty.png"] == "empty file (0 bytes)"
    assert reason["tiny.png"].startswith("too small: 10 x 10 px")
    assert reason["huge.png"].startswith("too large: 1000 x 1200 px")
    assert reason["text.tif"].startswith("cannot read image")
    assert reason["truncated.png"].startswith("cannot read image")
    assert reason["deep16.tif"] == "uint16 pixels scaled to 8 bits"
    assert reason["rgba.png"] == "alpha channel dropped"
    for line in report.files:
        assert "\n" not in line.reason
    assert {f.file: f.n_specimens for f in report.files if f.status == "processed"} == {
        "good.png": n, "deep16.tif": n, "rgba.png": n
    }  # fmt: skip
    assert report.samples == {"odd": {"new": 3 * n, "total": 3 * n}}
    assert "3 files processed, 0 skipped, 5 bad, 1 ignored" in report.summary_line()
    with open(report.report_csv, encoding="utf-8") as fh:
        rows = {r["file"]: r for r in csv.DictReader(fh)}
    assert rows["tiny.png"]["status"] == "bad" and rows["tiny.png"]["reason"].startswith("too")
    bad = json.loads(Path(report.report_json).read_text())["summary"]["bad"]
    assert bad == 5


def test_sample_sheet_maps_files_to_records(trays, checkpoint, tmp_path):
    folder, _ = trays
    sheet = tmp_path / "samples.csv"
    sheet.write_text(
        "file,sample_id,depth,depth_unit,dry_weight_g\n"
        "S2/c.png,CORE-1,12.5,mbsf,0.8\n"
        f"{folder / 'S1' / 'tray1.png'},CORE-2,13.0,mbsf,\n",
        encoding="utf-8",
    )
    plan = plan_batch(folder, sheet)
    assert [(f.name, f.sample_id) for f in plan.files] == [
        ("S2/c.png", "CORE-1"), ("S1/tray1.png", "CORE-2")
    ]  # fmt: skip
    assert plan.records["CORE-1"] == SampleRecord(
        "CORE-1", depth=12.5, depth_unit="mbsf", dry_weight_g=0.8
    )
    assert {r.file for r in plan.ignored} == {
        "S1/tray2.tif",
        "S1/tray10.jpg",
        "S2/a.png",
        "S2/b.tif",
    }

    report = run_batch(_config(folder, tmp_path / "sheet.zarr", checkpoint, samples_csv=sheet))
    assert report.count("processed") == 2 and report.count("ignored") == 4
    with TallyStore.open(tmp_path / "sheet.zarr") as tally:
        assert tally.sample_record("CORE-1").dry_weight_g == 0.8
        assert tally.n_specimens("CORE-1") == report.samples["CORE-1"]["total"] > 0

    sheet.write_text("file,sample,depth\nS2/c.png,X,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing column"):
        plan_batch(folder, sheet)


def test_store_records_processed_files_in_the_commit(tmp_path):
    """The store API the resume rests on: files recorded with the rows, never twice."""
    with TallyStore.create(tmp_path / "s.zarr", classes=CLASSES) as store:
        store.add_sample(SampleRecord("A"))
        probs = np.full((2, 4), 0.25)
        batch = SpecimenBatch(
            frame_index=np.zeros(2, int), centroid_y=np.zeros(2), centroid_x=np.zeros(2),
            bbox=np.zeros((2, 4), int), area_px=np.ones(2, int), mean_probs=probs,
        )  # fmt: skip
        assert store.append_specimens("A", batch, processed={"h1": {"file": "a.png"}}) == 2
        # A file that yielded nothing: recorded, no rows, no tally row.
        empty = SpecimenBatch(
            frame_index=np.zeros(0, int), centroid_y=np.zeros(0), centroid_x=np.zeros(0),
            bbox=np.zeros((0, 4), int), area_px=np.zeros(0, int), mean_probs=np.zeros((0, 4)),
        )  # fmt: skip
        assert store.append_specimens("A", empty, processed={"h2": {"file": "b.png"}}) == 2
        with pytest.raises(ValueError, match="already recorded"):
            store.append_specimens("A", batch, processed={"h1": {"file": "a.png"}})
        assert store.n_specimens("A") == 2
        assert list(store.processed_files("A")) == ["h1", "h2"]
        assert len(store.read_tally("A")[0]) == 1
        store.append_specimens("A", batch)  # the old call still works, records nothing
        assert list(store.processed_files("A")) == ["h1", "h2"]


# ----------------------------------------------------------------------------- Dask
def test_local_cluster_equals_the_local_run(local_run, trays, checkpoint, tmp_path):
    """Two worker processes (what --workers 2 starts), results committed in file order.

    Processes, not threads: they are what users run, and starting them costs ~2 s here;
    each builds its predictor once (~5 s of imports and loading on two shared cores).
    """
    folder, truth = trays
    store = tmp_path / "dask.zarr"
    export = tmp_path / "dask.csv"
    report = run_batch(_config(folder, store, checkpoint, workers=2, export=export))
    assert report.count("processed") == 6
    assert {sid: s["total"] for sid, s in report.samples.items()} == truth
    _same_store(store, local_run[0])
    assert _export_rows(export) == _export_rows(local_run[1].export_csv)


# ----------------------------------------------------------------------------- CLI
def test_batch_help(capsys):
    assert main(["batch", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--store", "--model", "--samples", "--workers", "--scheduler", "--mc"):
        assert option in out


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--workers", "-1"], 2, "Invalid value for '--workers'"),
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], 1, "not both"),
        (["--device", "tpu"], 1, "--device must be"),
        (["--samples", "missing.csv"], 1, "no such sample sheet"),
    ],
)
def test_batch_bad_arguments_give_one_line(args, code, fragment, tmp_path, capsys):
    argv = ["batch", str(tmp_path), "--store", str(tmp_path / "out.zarr"), *args]
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert fragment in err
    assert len(err.splitlines()) == 1 and err.startswith("napari-foram: error:")


def test_batch_missing_folder_is_one_line(tmp_path, capsys):
    assert main(["batch", str(tmp_path / "nope"), "--store", str(tmp_path / "o.zarr")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"napari-foram: error: {tmp_path / 'nope'}: no such folder"


# ----------------------------------------------------------------------------- widget
@pytest.mark.gui
def test_batch_widget_counts_a_folder(make_napari_viewer, qtbot, checkpoint, tmp_path):
    from napari_foram.widgets.batch import FRAME_LAYER, SPECIMENS_LAYER, BatchWidget

    folder = tmp_path / "tiny"
    (folder / "S1").mkdir(parents=True)
    counts = []
    for seed in (1, 2):
        image, n = _tray(seed)
        iio.imwrite(folder / "S1" / f"tray{seed}.png", image)
        counts.append(n)
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-foram", "Batch folders")
    assert isinstance(widget, BatchWidget)
    widget.folder_edit.setText(str(folder))
    widget.store_edit.setText(str(tmp_path / "tiny.zarr"))
    widget.model_edit.setText(str(checkpoint))
    widget.mc.setValue(1)
    widget.start()
    qtbot.waitUntil(lambda: widget.report is not None, timeout=120_000)
    assert isinstance(widget.report, BatchReport), widget.report
    assert widget.report.samples == {"S1": {"new": sum(counts), "total": sum(counts)}}

    # The last file, its specimens circled in class colours, and the crops gallery.
    assert viewer.layers[FRAME_LAYER].metadata["file"] == "S1/tray2.png"
    assert len(viewer.layers[SPECIMENS_LAYER].data) == counts[1]
    # The crops as one grid picture beside the frame (no extra slider), one tile a crop.
    crops = viewer.layers["S1 crops"]
    assert crops.rgb and crops.data.ndim == 3
    assert crops.metadata["grid"]["n"] == sum(counts)
    table = widget.table
    # This run's files, their specimens, bad files; the store's total apart.
    assert [table.item(0, c).text() for c in range(5)] == [
        "S1", "2", str(sum(counts)), "0", str(sum(counts))
    ]  # fmt: skip
    assert widget.progress_bar.value() == widget.progress_bar.maximum() == 2
    assert f"2 file(s) counted in this run ({sum(counts)} specimens)" in widget.status_label.text()

    # Browse back to the first file: read from the store on a background thread.
    assert widget.frames.count() == 2
    widget._show_selected(0)
    qtbot.waitUntil(
        lambda: viewer.layers[FRAME_LAYER].metadata["file"] == "S1/tray1.png", timeout=10_000
    )
    assert len(viewer.layers[SPECIMENS_LAYER].data) == counts[0]


def test_counts_do_not_depend_on_files_per_task(local_run, trays, checkpoint, tmp_path):
    """MC-dropout masks belong to each specimen, so cutting the folder into tasks of one
    file gives the uninterrupted run's store exactly (MC statistics included): the
    reference ran tasks of 2 files (a sample's 3 files in two tasks), the killed and
    Dask runs below cut it again their own ways.
    """
    folder, _ = trays
    reference = _export_rows(local_run[1].export_csv)
    for per_task in (1,):
        store = tmp_path / f"per{per_task}.zarr"
        export = tmp_path / f"per{per_task}.csv"
        run_batch(_config(folder, store, checkpoint, files_per_task=per_task, export=export))
        _same_store(local_run[0], store)
        assert _export_rows(export) == reference, per_task


def _export_rows(path: str | Path) -> list[dict[str, str]]:
    """The count sheet's rows, less the export time (the one column that must differ)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        del row["export_date"]
    return rows


def test_plan_leaves_out_label_and_mask_images(tmp_path):
    from napari_foram.batch import LABEL_IMAGE_REASON, is_label_image_name
    from napari_foram.synthetic import write_synth

    # What `napari-foram synth` writes: frames, their label images, JSON and truth CSV.
    info = write_synth(tmp_path / "synth", trays=2, crops_per_class=0, shape=(256, 320))
    trays = Path(info["trays"][0]).parent
    (trays / "extra").mkdir()
    iio.imwrite(trays / "extra" / "field_mask.png", np.zeros((80, 80), dtype=np.uint8))
    iio.imwrite(trays / "extra" / "field.png", np.zeros((80, 80), dtype=np.uint8))
    plan = plan_batch(trays)
    assert [f.name for f in plan.files] == ["tray_000.png", "tray_001.png", "extra/field.png"]
    reasons = {r.file: (r.status, r.reason) for r in plan.ignored}
    for name in ("tray_000_labels.png", "tray_001_labels.png", "extra/field_mask.png"):
        assert reasons[name] == ("ignored", LABEL_IMAGE_REASON), name
    assert reasons["truth.csv"][0] == "ignored"
    # Only the file's own name counts: a sample folder called "masks" keeps its frames.
    assert not is_label_image_name("masks/tray_1.png")
    assert is_label_image_name("S1/Tray_2_Labels.TIF")
