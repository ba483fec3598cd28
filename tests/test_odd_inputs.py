"""Odd files, odd paths and odd option values: a valid result or one line that says why."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_foram.cli import main
from napari_foram.frames import IMAGE_SUFFIXES, read_image


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("napari-foram: error:"), err
    assert "Traceback" not in err
    return err


# ----------------------------------------------------------------------------- images
def test_planar_and_interleaved_rgb_tiff_read_the_same(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, 2, 0), photometric="rgb",
                     planarconfig="separate")  # fmt: skip
    tifffile.imwrite(tmp_path / "inter.tif", rgb, photometric="rgb")
    iio.imwrite(tmp_path / "same.png", rgb)
    for name in ("planar.tif", "inter.tif", "same.png"):
        assert np.array_equal(read_image(tmp_path / name), rgb), name


def test_two_channels_grey_alpha_read_as_grey_else_refused(tmp_path):
    grey = np.random.default_rng(1).integers(0, 255, (40, 50), dtype=np.uint8)
    la = np.stack([grey, np.full_like(grey, 255)], axis=2)
    iio.imwrite(tmp_path / "la.png", la)
    assert np.array_equal(read_image(tmp_path / "la.png"), grey)
    tifffile.imwrite(
        tmp_path / "ga.tif", la, photometric="minisblack", extrasamples=["unassalpha"]
    )
    assert np.array_equal(read_image(tmp_path / "ga.tif"), grey)
    tifffile.imwrite(tmp_path / "two.tif", np.stack([grey, grey]))
    with pytest.raises(ValueError, match=r"two.tif: holds a stack"):
        read_image(tmp_path / "two.tif")


def test_multipage_tiff_is_refused_with_the_number_of_planes(tmp_path):
    tifffile.imwrite(tmp_path / "z.tif", np.zeros((5, 40, 50), dtype=np.uint16))
    with pytest.raises(ValueError, match=r"z.tif: holds a stack of images \(5 along"):
        read_image(tmp_path / "z.tif")


def test_only_regular_files_are_opened(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    with pytest.raises(ValueError, match=r"pipe.png: is not a regular file"):
        read_image(fifo)
    with pytest.raises(ValueError, match=r"zero.png: is not a regular file"):
        read_image(tmp_path / "zero.png")
    with pytest.raises(ValueError, match=r"loop.png: cannot open \(Too many levels"):
        read_image(tmp_path / "loop.png")


def test_pixel_limit_is_checked_from_the_header(tmp_path, capsys):
    from PIL import Image

    Image.new("L", (16000, 10000)).save(tmp_path / "big.png")  # 160 MP, a small file
    with pytest.raises(ValueError, match=r"big.png: too large: 16000 x 10000 px"):
        read_image(tmp_path / "big.png")
    Image.new("L", (3000, 2000)).save(tmp_path / "six.png")
    with pytest.raises(ValueError, match=r"six.png: too large: 3000 x 2000 px = 6 MP \(limit 5"):
        read_image(tmp_path / "six.png", max_megapixels=5)
    assert read_image(tmp_path / "six.png", max_megapixels=None).shape == (2000, 3000)
    # detect shares the limit (batch has its own setting, passed through).
    assert main(["detect", str(tmp_path / "big.png")]) == 1
    assert "too large" in capsys.readouterr().err


def test_huge_tiff_refused_before_decoding(tmp_path):
    # An 8 x 8 TIFF whose header says 30000 x 30000: refused from the header alone.
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((8, 8), np.uint8))
    raw = bytearray(buf.getvalue())
    ifd = int.from_bytes(raw[4:8], "little")
    for i in range(int.from_bytes(raw[ifd : ifd + 2], "little")):
        entry = ifd + 2 + 12 * i
        if int.from_bytes(raw[entry : entry + 2], "little") in (256, 257):  # width, length
            kind = int.from_bytes(raw[entry + 2 : entry + 4], "little")
            raw[entry + 8 : entry + 12] = (
                (30000).to_bytes(2 if kind == 3 else 4, "little").ljust(4, b"\x00")
            )
    (tmp_path / "huge.tif").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"huge.tif: too large: 30000 x 30000 px"):
        read_image(tmp_path / "huge.tif")


# ----------------------------------------------------------------------------- fuzz
_SUFFIXES = st.sampled_from(IMAGE_SUFFIXES)


def _check_read(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"odd{suffix}"
        path.write_bytes(data)
        try:
            image = read_image(path)
        except ValueError as exc:
            text = str(exc)
            assert text.startswith(f"{path}: ") and "\n" not in text, text
            return
        assert isinstance(image, np.ndarray) and image.ndim in (2, 3) and image.size > 0
        if image.ndim == 3:
            assert image.shape[2] in (1, 3, 4)


def _encoded(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == ".tif":
        tifffile.imwrite(buf, image)
    else:
        iio.imwrite(buf, image, extension=fmt)
    return buf.getvalue()


_IMAGES = st.tuples(
    st.integers(1, 40),
    st.integers(1, 40),
    st.sampled_from([None, 1, 2, 3, 4]),
    st.sampled_from([np.uint8, np.uint16]),
    st.integers(0, 2**16),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600), suffix=_SUFFIXES)
def test_fuzz_random_bytes(data, suffix):
    _check_read(data, suffix)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=_IMAGES, fmt=st.sampled_from([".png", ".tif"]), cut=st.floats(0, 1))
def test_fuzz_truncated_and_odd_images(spec, fmt, cut):
    h, w, c, dtype, seed = spec
    shape = (h, w) if c is None else (h, w, c)
    image = np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    try:
        raw = _encoded(image, fmt)
    except Exception:  # the encoder cannot write this combination: nothing to read
        return
    _check_read(raw, fmt)  # whole
    _check_read(raw[: int(len(raw) * cut)], fmt)  # truncated


def test_corpus_of_odd_files(tmp_path):
    png = _encoded(np.zeros((8, 8), np.uint8), ".png")
    odd = {
        "empty.png": b"",
        "text.jpg": b"hello",
        "png_named.tif": png,
        "tiny.png": _encoded(np.zeros((1, 1), np.uint8), ".png"),
        "rgba16.tif": _encoded(np.zeros((40, 40, 4), np.uint16), ".tif"),
        "rgba8.png": _encoded(np.zeros((40, 40, 4), np.uint8), ".png"),
        "head.tif": b"II*\x00" + b"\x00" * 20,
    }
    for name, data in odd.items():
        _check_read(data, Path(name).suffix)


# ----------------------------------------------------------------------------- CLI
def test_output_paths_checked_before_work(tmp_path, capsys):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    cases = [
        (["synth", str(a_file), "--trays", "0", "--crops-per-class", "0"], "a_file.txt"),
        (["train", str(tmp_path / "no_data"), "-o", str(folder)], "a_folder: is a folder"),
        (["train", str(tmp_path), "-o", str(a_file / "m.safetensors")], "is a file"),
        (["evaluate", str(tmp_path), "--model", "m", "--report", str(a_file)], "is a file"),
        (["export", str(tmp_path / "x.zarr"), "-o", str(folder)], "a_folder: is a folder"),
    ]
    for argv, fragment in cases:
        assert main(argv) == 1, argv
        assert fragment in _one_error_line(capsys), argv


def test_mc_has_a_bound(capsys):
    for value in ("1e20", "100000000000000000000", "10001", "0"):
        assert main(["classify", "x.png", "--mc", value]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--mc" in err


def test_os_errors_and_surprises_are_one_line(monkeypatch, tmp_path, capsys):
    from napari_foram.tally import store as store_mod

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro.zarr"))

    monkeypatch.setattr(store_mod.TallyStore, "open", classmethod(denied))
    assert main(["export", str(tmp_path / "ro.zarr"), "-o", str(tmp_path / "c.csv")]) == 1
    assert "ro.zarr: Permission denied" in _one_error_line(capsys)

    def surprise(*args, **kwargs):
        raise KeyError("class_names")

    monkeypatch.setattr(store_mod.TallyStore, "open", classmethod(surprise))
    assert main(["export", str(tmp_path / "ro.zarr"), "-o", str(tmp_path / "c.csv")]) == 1
    assert "KeyError" in _one_error_line(capsys)


def test_classify_carries_on_past_bad_files(random_checkpoint, tmp_path, capsys):
    from napari_foram.synthetic import render_crop

    good = tmp_path / "good.png"
    iio.imwrite(good, render_crop("planktic", seed=0))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    dot = tmp_path / "dot.png"
    iio.imwrite(dot, np.zeros((1, 1, 3), np.uint8))
    argv = ["classify", str(good), str(bad), str(dot), "--model", str(random_checkpoint)]
    assert main([*argv, "--mc", "2", "--device", "cpu", "--json"]) == 1
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert rows[0]["path"] == str(good) and rows[0]["class"] is not None
    assert "bad.png: cannot read image" in rows[1]["error"]
    assert "dot.png: too small to hold a specimen (1 x 1 px" in rows[2]["error"]
    assert "2 of 3 file(s) failed" in captured.err


def test_batch_reports_into_a_folder_and_names_non_utf8_files(random_checkpoint, tmp_path, capsys):
    """`--report DIR` writes the report in DIR; a file name that is not UTF-8 is counted
    and reported (escaped), with no half-written report left behind; a report path under
    a file is refused before anything is counted.
    """
    from napari_foram.synthetic import render_tray

    folder = tmp_path / "trays" / "S1"
    folder.mkdir(parents=True)
    tray = render_tray(3, shape=(300, 400), n_specimens=3, clipped=False, border=False)
    odd_name = os.fsdecode(b"tray\xff.png")  # what os.listdir gives for such bytes
    iio.imwrite(folder / odd_name, tray.image)
    store = tmp_path / "run.zarr"
    base = ["batch", str(folder.parent), "--store", str(store)]
    base += ["--model", str(random_checkpoint), "--mc", "2", "--device", "cpu"]

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main([*base, "--report", str(a_file / "r.json")]) == 1
    assert "is a file, not a folder" in _one_error_line(capsys)
    assert not store.exists()  # refused before the store or the model were touched

    reports = tmp_path / "reports"
    reports.mkdir()
    assert main([*base, "--report", str(reports)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in reports.iterdir()) == [
        "run_batch_report.csv",
        "run_batch_report.json",
    ]
    report = json.loads((reports / "run_batch_report.json").read_text())
    (line,) = report["files"]
    assert line["status"] == "processed" and line["file"] == f"S1/{odd_name}"
    assert "tray\\udcff.png" in (reports / "run_batch_report.csv").read_text()
