"""The command line: help that explains, one-line errors, JSON where scripts want it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from napari_foram.cli import main

COMMANDS = [
    "demo",
    "synth",
    "detect",
    "classify",
    "export",
    "bench",
    "extract-crops",
    "train",
    "evaluate",
]


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "foraminifera" in out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_explains_itself(name, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage:" in out and len(out.splitlines()) > 4


@pytest.mark.parametrize(
    ("argv", "code", "fragment"),
    [
        (["frobnicate"], 2, "No such command"),
        (["detect"], 2, "Missing argument"),
        (["detect", "x.png", "--min-area", "lots"], 2, "Invalid value for '--min-area'"),
        (["classify", "x.png", "--device", "tpu"], 1, "--device must be"),
        (["bench", "--device", "gpu9"], 1, "--device must be"),
        (
            ["export", "none.zarr", "-o", "x.csv", "--format", "pivot"],
            1,
            "--format must be one of wide, long, specimens, not 'pivot'",
        ),
    ],
)
def test_bad_arguments_give_one_line_and_nonzero_exit(argv, code, fragment, capsys):
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert fragment in err
    assert len(err.splitlines()) == 1 and err.startswith("napari-foram: error:")


def test_detect_missing_or_broken_image_is_one_line(tmp_path, capsys):
    assert main(["detect", str(tmp_path / "nope.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert "no such file" in err and len(err.splitlines()) == 1
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00garbage")
    assert main(["detect", str(broken)]) == 1
    err = capsys.readouterr().err.strip()
    assert "broken.tif" in err and len(err.splitlines()) == 1


def test_detect_json_reports_counts_and_objects(tmp_path, capsys):
    yy, xx = np.mgrid[:400, :500]
    img = np.full((400, 500), 15, np.uint8)
    for cy, cx in [(100, 120), (250, 350)]:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 30**2] = 210
    img[(yy - 0) ** 2 + (xx - 250) ** 2 <= 30**2] = 210  # cut by the top edge
    path = tmp_path / "tray.png"
    iio.imwrite(path, img)
    assert main(["detect", str(path), "--json", "--no-border"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["count"] == 2 and data[0]["clipped"] == 1
    obj = data[0]["objects"][0]
    assert set(obj) >= {"centroid_yx", "bbox", "area_px", "clipped"}


def test_console_script_is_installed():
    exe = shutil.which("napari-foram") or str(
        __import__("pathlib").Path(sys.executable).parent / "napari-foram"
    )
    proc = subprocess.run([exe, "synth", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "ImageFolder" in proc.stdout
    proc = subprocess.run([exe, "export"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_synth_writes_trays_truth_and_imagefolder(tmp_path, capsys):
    out = tmp_path / "synth"
    argv = ["synth", str(out), "--trays", "1", "--crops-per-class", "2", "--specimens", "6"]
    assert main(argv) == 0
    assert (out / "trays" / "truth.csv").is_file()
    assert len(list((out / "trays").glob("tray_*.json"))) == 1
    classes = sorted(p.name for p in (out / "crops").iterdir())
    assert classes == sorted(
        ["planktic", "calcareous_benthic", "agglutinated_benthic", "sediment"]
    )
    for c in classes:
        crops = list((out / "crops" / c).glob("*.png"))
        assert len(crops) == 2
        assert iio.imread(crops[0]).shape == (224, 224, 3)


#: What `bench`'s JSON must hold, by the part that measures it.
BENCH_KEYS = {
    "machine": ("device", "cpu_count", "torch"),
    "detection": ("detect_s_per_frame_5mp_rgb",),
    "store": ("store_specimens_per_s", "store_rss_growth_ratio"),
    "pipeline": ("pipeline_frames_per_s", "pipeline_s_per_new_specimen"),
    "classification": ("mc_overhead_ratio", "vgg16_bare_crops_per_s"),
}


@pytest.mark.slow
def test_bench_quick_writes_json(tmp_path, capsys):
    """The whole command (~60 s on 2 cores: its classification part alone runs ~64 VGG16
    passes, its batch part starts two Dask clusters, its teaching part runs 128 passes);
    test_bench_parts_give_their_figures is the default suite's version.
    """
    out = tmp_path / "bench.json"
    # --quick keeps VGG16 passes to a handful of crops.
    assert main(["bench", "--quick", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    for key in (k for keys in BENCH_KEYS.values() for k in keys):
        assert key in data, key
    assert not any(k.endswith("_error") for k in data), data


def test_bench_parts_give_their_figures():
    """The parts of `bench` that have a size to shrink, each at its smallest, give the
    figures the JSON must hold; classification, batch and teaching have no smaller
    setting than --quick, so only the slow test above runs them.
    """
    from napari_foram import bench

    data = bench.machine_info("cpu")
    data.update(bench.bench_detection(repeats=1))
    data.update(bench.bench_store(200))
    data.update(bench.bench_pipeline("cpu", quick=True, precision="fp32"))
    for part, keys in BENCH_KEYS.items():
        if part != "classification":
            for key in keys:
                assert key in data, key
    assert data["store_specimens"] == 200 and data["store_specimens_per_s"] > 0
    assert data["pipeline_frames_per_s"] > 0
