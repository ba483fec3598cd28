"""Raw frames of colour cameras: saved as OME-Zarr, read back, recounted to the live tally.

Foram trays are photographed with colour cameras. pymmcore-plus 0.18's data sink takes
monochrome frames only, so the adapter writes a colour camera's frames through
ome-writers itself, in the sink's layout plus a channel axis "c" of red, green and blue
(`acquire._mm_scan._RgbRawWriter`); `acquire.saved` reads both layouts.

Real throughout: the simulated microscope's RGB camera under pymmcore-plus, ome-writers,
zarr, the detector, VGG16 with random weights, tally stores, the `live` and `batch`
commands, and napari's own zarr reader. (The C++ DemoCamera in 32bitRGB: test_mm_cpp.py.)
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

pytestmark = pytest.mark.acquisition

WORLD_SHAPE = (300, 360, 3)
CAMERA = (100, 120)


def _core(bit_depth: int = 8):
    from napari_foram.acquire import create_simulated_core

    world = np.random.default_rng(0).integers(0, 256, WORLD_SHAPE, dtype=np.uint8)
    return create_simulated_core(
        world, 2.0, camera_shape=CAMERA, bit_depth=bit_depth, simulate_exposure_time=False
    )


def _attrs(path, series):
    return json.loads((path / series / "zarr.json").read_text())["attributes"]


@pytest.mark.parametrize(("bit_depth", "z_planes"), [(8, 1), (12, 3)])
def test_colour_scan_saved_as_ome_zarr_reads_back_frame_for_frame(tmp_path, bit_depth, z_planes):
    from napari_foram.acquire import read_saved_scan, run_scan, tray_scan_sequence

    core = _core(bit_depth)
    frames = []
    path = tmp_path / "rgb.ome.zarr"
    seq = tray_scan_sequence(core, rows=2, cols=2, z_planes=z_planes, z_step_um=10.0)
    result = run_scan(core, seq, frames.append, save_to=path)
    assert result.ok and len(frames) == 4 * z_planes
    assert frames[0].image.shape == (*CAMERA, 3)

    saved = read_saved_scan(path)
    assert saved.rgb and saved.z_planes == z_planes
    assert (saved.bit_depth, saved.pixel_size_um) == (bit_depth, 2.0)
    back = list(saved.frames())
    assert len(back) == len(frames)
    for a, b in zip(back, frames, strict=True):
        assert a.image.shape == b.image.shape and a.image.dtype == b.image.dtype
        assert np.array_equal(a.image, b.image)  # red stays red: channels in order
        assert a.stage_xy_um == b.stage_xy_um
        assert a.metadata["mda_index"].get("z") == b.metadata["mda_index"].get("z")

    # OME-NGFF 0.5 as viewers read it: a channel axis before the space axes, coloured.
    attrs = _attrs(path, saved.series[0])
    (multiscale,) = attrs["ome"]["multiscales"]
    axes = [(a["name"], a["type"]) for a in multiscale["axes"]]
    space = [("z", "space")] if z_planes > 1 else []
    assert axes == [("c", "channel"), *space, ("y", "space"), ("x", "space")]
    channels = attrs["ome"]["omero"]["channels"]
    assert [(c["label"], c["color"]) for c in channels] == [
        ("R", "FF0000"),
        ("G", "00FF00"),
        ("B", "0000FF"),
    ]
    # pymmcore-plus's summary metadata, as its own sink writes it for mono cameras.
    summary = attrs["pymmcore_plus"]["summary_metadata"]
    assert summary["image_infos"][0]["pixel_size_um"] == 2.0


def test_mono_and_colour_scans_share_one_layout(tmp_path):
    """The same tray with a mono camera (pymmcore-plus's sink) and a colour one (ours):
    the same fields, positions and metadata keys; only the colour axis differs.
    """
    from napari_foram.acquire import (
        create_simulated_core,
        read_saved_scan,
        run_scan,
        tray_scan_sequence,
    )

    grey = np.random.default_rng(0).integers(0, 256, WORLD_SHAPE[:2], dtype=np.uint8)
    mono = create_simulated_core(grey, 2.0, camera_shape=CAMERA, simulate_exposure_time=False)
    colour = _core()
    for core, name in ((mono, "mono"), (colour, "rgb")):
        assert run_scan(
            core,
            tray_scan_sequence(core, rows=1, cols=2),
            lambda f: None,
            save_to=tmp_path / f"{name}.ome.zarr",
        ).ok
    a, b = read_saved_scan(tmp_path / "mono.ome.zarr"), read_saved_scan(tmp_path / "rgb.ome.zarr")
    assert a.series == b.series and (a.rgb, b.rgb) == (False, True)
    assert [f.stage_xy_um for f in a.frames()] == [f.stage_xy_um for f in b.frames()]
    for name in a.series:
        ma, mb = _attrs(a.path, name), _attrs(b.path, name)
        assert set(ma) == set(mb) == {"ome", "ome_writers", "pymmcore_plus"}
        keys_a = set(ma["ome_writers"]["frame_metadata"][0])
        assert keys_a == set(mb["ome_writers"]["frame_metadata"][0])


def test_a_stopped_colour_scan_keeps_the_fields_it_imaged(tmp_path):
    from napari_foram.acquire import cancel_scan, read_saved_scan, run_scan, tray_scan_sequence

    core = _core()
    frames = []

    def on_frame(frame):
        frames.append(frame)
        if len(frames) == 2:
            cancel_scan(core)

    path = tmp_path / "stopped.ome.zarr"
    result = run_scan(core, tray_scan_sequence(core, rows=2, cols=2), on_frame, save_to=path)
    assert result.cancelled and result.frames_delivered == 2
    saved = read_saved_scan(path)
    assert len(saved.series) == 4  # the plan's fields, two of them never imaged
    back = list(saved.frames())
    # The fields never imaged are not read as black frames without a position.
    assert [f.stage_xy_um for f in back] == [f.stage_xy_um for f in frames]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(back, frames, strict=True))


def test_raw_frames_are_refused_before_the_scan_with_one_line(tmp_path):
    from napari_foram.acquire import run_scan, tray_scan_sequence

    core = _core()
    seq = tray_scan_sequence(core, rows=1, cols=1)
    (tmp_path / "taken.ome.zarr").mkdir()
    with pytest.raises(ValueError, match="never overwritten"):
        run_scan(core, seq, lambda f: None, save_to=tmp_path / "taken.ome.zarr")
    with pytest.raises(ValueError, match=r"raw frames go to \.ome\.zarr"):
        run_scan(core, seq, lambda f: None, save_to=tmp_path / "x.ome.tif")
    with pytest.raises(ValueError, match="no such folder"):
        run_scan(core, seq, lambda f: None, save_to=tmp_path / "missing" / "x.ome.zarr")


def _cli(*argv: str) -> dict:
    from napari_foram.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    assert code == 0
    return json.loads(out.getvalue())


#: Specimen columns compared between the live count and a recount.
COLUMNS = ["stage_x_um", "stage_y_um", "area_px", "class_index", "mean_probs"]


def _live_and_recounts(
    tmp_path, live_args: list[str], model, rows: int = 2, cols: int = 2
) -> dict:
    """`live ... --save-raw X.ome.zarr --store A` over rows x cols fields; then `batch` of a
    folder whose sample S1 holds X into B, and `batch X.ome.zarr` itself into D (both
    recount through `session.count_saved_scan`). Returns the live and batch JSON, the
    stores' rows and B's tally.
    """
    from napari_foram.tally.store import TallyStore

    raw = tmp_path / "X.ome.zarr"
    common = ["--model", str(model), "--mc", "1", "--device", "cpu"]
    live = _cli(
        "live", "--headless", "--mode", "scan", "--rows", str(rows), "--cols", str(cols),
        "--save-raw", str(raw), "--store", str(tmp_path / "A.zarr"), "--sample-id", "S1",
        *common, *live_args,
    )  # fmt: skip
    assert live["error"] is None and live["frames_processed"] == rows * cols, live

    folder = tmp_path / "frames"
    (folder / "S1").mkdir(parents=True)
    raw.rename(folder / "S1" / raw.name)
    batch = _cli("batch", str(folder), "--store", str(tmp_path / "B.zarr"), "--json", *common)
    # The saved scan given as the batch itself: one sample named after it.
    direct = _cli(
        "batch", str(folder / "S1" / raw.name), "--store", str(tmp_path / "D.zarr"), "--json",
        *common,
    )  # fmt: skip
    assert list(direct["samples"]) == ["X"], direct["samples"]
    with TallyStore.open(tmp_path / "D.zarr") as store:
        direct_rows = store.read_specimens("X", columns=COLUMNS)
    rows_of = {"D": direct_rows}
    for name in ("A", "B"):
        with TallyStore.open(tmp_path / f"{name}.zarr") as store:
            rows_of[name] = store.read_specimens("S1", columns=COLUMNS)
            if name == "B":
                counts = store.counts("S1")
                batch_tally = {c: int(n) for c, n in zip(store.class_names, counts, strict=True)}
    return {"live": live, "batch": batch, "batch_tally": batch_tally, "rows": rows_of}


def _same_specimens(rows_a, rows_b) -> None:
    """The same specimens at the same sample positions, seen in the same view (size in
    pixels) and classified alike.
    """

    def table(rows):
        t = np.column_stack([rows[c] for c in COLUMNS])
        return t[np.lexsort(t.T[1::-1])]  # by stage x, then y

    a, b = table(rows_a), table(rows_b)
    assert a.shape == b.shape
    differ = np.flatnonzero((a[:, :4] != b[:, :4]).any(axis=1))
    assert not len(differ), (a[differ], b[differ])
    assert np.allclose(a[:, 4:], b[:, 4:], atol=1e-5)


def _check_recounts(runs: dict) -> None:
    live, batch = runs["live"], runs["batch"]
    assert live["specimens"] > 0
    # `batch`: the live tally, the live number of specimens.
    (line,) = batch["files"]
    assert line["status"] == "processed" and line["file"] == "S1/X.ome.zarr", line
    assert f"{live['frames_processed']} fields" in line["reason"]
    assert batch["samples"]["S1"]["total"] == live["specimens"]
    assert runs["batch_tally"] == live["tally"]
    # Specimen for specimen too (positions, the view kept, classes): batch recounts into a
    # scratch store, as the live count writes into its own, so sharper views win alike.
    _same_specimens(runs["rows"]["A"], runs["rows"]["B"])
    _same_specimens(runs["rows"]["A"], runs["rows"]["D"])


# ~25 s on two cores; its twin in the default suite, on the C++ core's colour camera, is
# test_mm_cpp.py::test_colour_scan_with_the_cli_recounted_by_batch_gives_the_live_tally.
@pytest.mark.slow
def test_live_colour_scan_saved_raw_and_recounted_by_batch_gives_the_live_tally(
    tmp_path, random_checkpoint
):
    # The simulated microscope's default camera is the colour one. Two fields, one
    # overlap: the better view of a specimen in both is the one every count keeps.
    runs = _live_and_recounts(tmp_path, ["--simulate"], random_checkpoint, rows=1, cols=2)
    assert runs["rows"]["A"]["stage_x_um"].size == runs["live"]["specimens"]
    _check_recounts(runs)


@pytest.mark.gui
def test_napari_opens_a_saved_colour_field_with_its_builtin_zarr_reader(
    make_napari_viewer, tmp_path
):
    from napari_foram.acquire import read_saved_scan, run_scan, tray_scan_sequence

    core = _core()
    frames = []
    path = tmp_path / "rgb.ome.zarr"
    assert run_scan(core, tray_scan_sequence(core, rows=1, cols=2), frames.append, save_to=path).ok
    field = read_saved_scan(path).series[1]
    viewer = make_napari_viewer()
    # One field's image array, its channel axis split into red, green and blue layers
    # blended additively: the colour frame the count saw.
    layers = viewer.open(
        path / field / "0",
        plugin="napari",
        channel_axis=0,
        colormap=["red", "green", "blue"],
        blending="additive",
        contrast_limits=[0, 255],
    )
    assert [layer.colormap.name for layer in layers] == ["red", "green", "blue"]
    shown = np.stack([np.asarray(layer.data) for layer in layers], axis=-1)
    assert np.array_equal(shown, frames[1].image)
    assert all(layer.blending == "additive" for layer in layers)
