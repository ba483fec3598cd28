"""The main job on the built-in simulated microscope, with and without a window.

A seeded synthetic tray becomes the simulated microscope's sample; a Micro-Manager MDA grid
scan (pymmcore-plus, Python camera and stage devices) images it field by field with
overlap; every frame goes through the counting pipeline (detect -> de-duplicate -> classify
with MC dropout -> Zarr store); the tally is exported as a core-log CSV and plot, and the
counts are compared with the synthetic ground truth.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram.defaults import MC_SAMPLES

# The scene lives in core (the live counter builds it too); re-exported for the app's users.
from napari_foram.demo_scene import DemoScan
from napari_foram.point_matching import match_points

if TYPE_CHECKING:
    from collections.abc import Callable

    from napari_foram.classify.predict import Predictor
    from napari_foram.demo_scene import SimulatedMicroscopeRig
    from napari_foram.mosaic import Mosaic
    from napari_foram.pipeline import CountingPipeline, FrameResult
    from napari_foram.session import CountingSession, ScanReport
    from napari_foram.synthetic import TrayRender
    from napari_foram.tally.store import TallyStore

DEMO_SAMPLE_ID = "DEMO-001"


def display_available() -> bool:
    """Whether a window can be opened (X11 or Wayland display set)."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def compare_with_truth(
    world: TrayRender,
    results: list[FrameResult],
    class_names: list[str],
    world_px_to_um: Callable[[float, float], tuple[float, float]],
) -> dict[str, Any]:
    """Counts found vs. the synthetic ground truth, with classification accuracy.

    A counted specimen matches a true one when its centre lies inside half the true
    specimen's diameter; each true specimen matches at most once, closest pairs first
    (`napari_foram.point_matching.match_points`).
    """
    truth = [s for s in world.specimens if not s.clipped]
    truth_xy = np.array([world_px_to_um(*s.centroid_yx) for s in truth]).reshape(-1, 2)
    truth_radius = np.array([s.diameter_um / 2 for s in truth])
    found_xy: list[list[float]] = []
    found_class: list[int] = []
    for r in results:
        if r.predictions is None:
            continue
        found_xy.extend(r.sample_xy_um[r.new_rows].tolist())
        found_class.extend(int(c) for c in r.predictions.class_index)
    found = np.array(found_xy, dtype=float).reshape(-1, 2)
    # The same scoring as the tests and the detection benchmark: closest pairs first.
    match = match_points(found, truth_xy, truth_radius)
    matched_truth = match.truth_of_found
    errors = match.distance[matched_truth >= 0].tolist()
    truth_counts = dict.fromkeys(class_names, 0)
    for s in truth:
        truth_counts[s.class_name] = truth_counts.get(s.class_name, 0) + 1
    predicted = dict.fromkeys(class_names, 0)
    for c in found_class:
        predicted[class_names[c]] += 1
    correct = sum(
        1
        for i, j in enumerate(matched_truth)
        if j >= 0 and class_names[found_class[i]] == truth[j].class_name
    )
    n_matched = int((matched_truth >= 0).sum())
    return {
        "truth_whole": len(truth),
        "found_whole": len(found),
        "matched": n_matched,
        "missed": int(len(truth) - n_matched),
        "false_detections": int(len(found) - n_matched),
        "centroid_error_um": {
            "mean": round(float(np.mean(errors)), 2) if errors else None,
            "max": round(float(np.max(errors)), 2) if errors else None,
        },
        "truth_counts": truth_counts,
        "predicted_counts": predicted,
        "classification_accuracy": round(correct / n_matched, 4) if n_matched else None,
    }


def model_summary(info: Any) -> dict[str, Any]:
    """What the summary says about the classifier: its backbone (ImageNet or random, by
    name and digest), input convention, held-out accuracy and unsure rule.
    """
    return {
        "backbone": info.backbone_id or info.backbone_weights,
        "backbone_sha256": info.backbone_sha256,
        "input_convention": info.input_convention,
        "held_out_accuracy": info.metrics.get("held_out_accuracy"),
        "unsure_rule": dict(info.unsure_rule),
        "path": info.path,
    }


@dataclass
class DemoRun:
    """Everything a demo scan needs, built once; `scan()` runs it.

    The headless demo's run; the GUI demo runs the same pipeline through the Foram live widget.
    """

    predictor: Predictor
    world: TrayRender
    microscope: SimulatedMicroscopeRig
    store: TallyStore
    store_path: Path
    pipeline: CountingPipeline
    session: CountingSession
    mosaic: Mosaic
    scan_plan: DemoScan

    @property
    def class_names(self) -> list[str]:
        """The model's classes, in its output order."""
        return list(self.predictor.info.class_names)

    def scan(
        self,
        *,
        on_result: Callable[[FrameResult], None] | None = None,
        progress: Callable[..., None] | None = None,
    ) -> ScanReport:
        """Run the grid scan through the pipeline; closes the store when done."""
        plan = self.scan_plan
        try:
            return self.session.scan(
                self.microscope.core,
                self.microscope.grid_sequence(plan.rows, plan.cols, plan.overlap_fraction),
                on_result=on_result,
                progress=progress,
            )
        finally:
            self.store.close()


def prepare_demo_run(
    store_path: Path,
    *,
    seed: int = 7,
    mc_samples: int = MC_SAMPLES,
    scan: DemoScan | None = None,
    model: str | Path = "demo",
    progress: Callable[[int, int, str], None] | bool = True,
    download_weights: bool | None = None,
) -> DemoRun:
    """Model, synthetic tray, simulated microscope, a fresh store and the pipeline.

    `model` is a checkpoint path, or "demo" for the demo model (trained on synthetic crops
    at first use, then cached; `download_weights` as in
    `napari_foram.classify.loading.load_predictor`).
    """
    from napari_foram.classify.loading import load_predictor
    from napari_foram.demo_scene import SimulatedMicroscopeSettings
    from napari_foram.microscope import MicroscopeCounter
    from napari_foram.tally.store import SampleRecord, TallyStore

    scan = scan or DemoScan()
    predictor = load_predictor(model, progress=progress, download_weights=download_weights)
    store_path = Path(store_path)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    store = TallyStore.create(store_path, classes=predictor.info.class_names, overwrite=True)
    # The same wiring as Foram live and `napari-foram live --simulate`: one microscope
    # counter, connected to the simulated microscope over the demo's tray.
    counter = MicroscopeCounter(predictor, store, mc_samples=mc_samples)
    counter.connect_simulated(SimulatedMicroscopeSettings.for_scan(seed, scan))
    counter.start_sample(
        SampleRecord(
            sample_id=DEMO_SAMPLE_ID,
            site_hole="SIM-1",
            core="1H",
            section="1",
            interval_top_cm=10.0,
            interval_bottom_cm=12.0,
            depth=0.1,
            depth_unit="m",
            depth_scale="mbsf",
            sample_type="core",
            size_fraction_um=">150",
            split_factor=1.0,
            dry_weight_g=1.0,
            operator="napari-foram demo",
            notes=f"synthetic tray, seed {seed}",
        )
    )
    rig, pipeline, session = counter.rig, counter.pipeline, counter.session
    assert rig is not None and pipeline is not None and session is not None
    return DemoRun(
        predictor=predictor,
        world=rig.world,
        microscope=rig,
        store=store,
        store_path=store_path,
        pipeline=pipeline,
        session=session,
        mosaic=rig.mosaic(),
        scan_plan=scan,
    )


def run_headless_demo(
    out_dir: Path,
    *,
    seed: int = 7,
    mc_samples: int = MC_SAMPLES,
    progress: bool = True,
    scan: DemoScan | None = None,
    model: str | Path = "demo",
    download_weights: bool | None = None,
) -> dict[str, Any]:
    """Scan, count, store, export, screenshot and compare with the ground truth.

    Writes into `out_dir`: tally.zarr, tally.csv, tally.png, screenshot.png, summary.json.
    Returns the summary (also in summary.json). `download_weights`: may the demo model's
    ImageNet weights be downloaded (None: yes unless ``$NAPARI_FORAM_NO_DOWNLOAD``).
    """
    from napari_foram._progress import progress_callback
    from napari_foram.tally.export import export_csv, plot_tally
    from napari_foram.tally.store import TallyStore

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    store_path = out_dir / "tally.zarr"
    run = prepare_demo_run(
        store_path,
        seed=seed,
        mc_samples=mc_samples,
        scan=scan,
        model=model,
        progress=progress,
        download_weights=download_weights,
    )
    plan = run.scan_plan
    results: list[FrameResult] = []
    n_fields = plan.rows * plan.cols
    with progress_callback("scanning the simulated tray", progress) as cb:
        report = run.scan(
            on_result=results.append,
            progress=lambda done, msg="": cb(done, n_fields, msg),
        )

    files = {
        "store": str(store_path),
        "csv": str(out_dir / "tally.csv"),
        "plot": str(out_dir / "tally.png"),
        "screenshot": str(out_dir / "screenshot.png"),
        "summary": str(out_dir / "summary.json"),
    }
    reader = TallyStore.open(store_path, mode="r")
    export_csv(reader, files["csv"], fmt="wide")
    plot_tally(reader, files["plot"])
    screenshot_how = save_screenshot(run, results, Path(files["screenshot"]))

    summary = {
        "seed": seed,
        "sample_id": DEMO_SAMPLE_ID,
        "fields": n_fields,
        "camera_shape": list(plan.camera_shape),
        "overlap_fraction": plan.overlap_fraction,
        "pixel_size_um": run.world.pixel_size_um,
        "mc_samples": mc_samples,
        "model_sha256": run.predictor.info.sha256,
        "model": model_summary(run.predictor.info),
        **compare_with_truth(run.world, results, run.class_names, run.microscope.world_px_to_um),
        "unsure": int(reader.sample_summary(DEMO_SAMPLE_ID)["n_unsure"]),
        "frames_acquired": report.frames_acquired,
        "frames_processed": report.frames_processed,
        "frames_dropped": report.frames_dropped,
        "duplicates_suppressed": int(sum(len(r.duplicate_rows) for r in results)),
        "scan_error": report.error,
        "screenshot": screenshot_how,
        "seconds_total": round(time.perf_counter() - t_start, 2),
        "seconds_by_stage": {
            k: round(sum(r.seconds.get(k, 0.0) for r in results), 3)
            for k in ("detect", "dedup", "classify", "store")
        },
        "files": files,
    }
    Path(files["summary"]).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


# ----------------------------------------------------------------------------- screenshot
def _start_xvfb() -> subprocess.Popen[bytes] | None:
    """Start a private Xvfb for the screenshot when there is no display; None if absent."""
    exe = shutil.which("Xvfb")
    if exe is None:
        return None
    for number in range(99, 160):
        if Path(f"/tmp/.X{number}-lock").exists():
            continue
        proc = subprocess.Popen(
            [exe, f":{number}", "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(50):
            if Path(f"/tmp/.X11-unix/X{number}").exists():
                os.environ["DISPLAY"] = f":{number}"
                return proc
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        proc.kill()
    return None


def save_screenshot(run: DemoRun, results: list[FrameResult], path: Path) -> str:
    """A PNG of the napari viewer showing the scan; says how it was made.

    Uses a real napari viewer (on a private Xvfb when there is no display). Without any X
    server it draws the same layers with matplotlib and says so.
    """
    xvfb = None
    if not display_available():
        xvfb = _start_xvfb()
    try:
        if display_available():
            from napari_foram.widgets.layers import viewer_screenshot

            viewer_screenshot(results, run.class_names, path)
            return "napari viewer" + (" (private Xvfb)" if xvfb else "")
    finally:
        if xvfb is not None:
            os.environ.pop("DISPLAY", None)
            xvfb.terminate()
    from napari_foram.widgets.layers import matplotlib_screenshot

    matplotlib_screenshot(results, run.class_names, path)
    return "matplotlib (no X server found for napari)"


def run_demo_gui(
    *,
    seed: int = 7,
    mc_samples: int = MC_SAMPLES,
    model: str | Path = "demo",
    download_weights: bool | None = None,
) -> None:
    """Open napari with the Foram live widget docked and the simulated scan running
    (`download_weights` sets the widget's "download weights" box; None: ticked unless
    ``$NAPARI_FORAM_NO_DOWNLOAD`` says no).
    """
    import napari

    from napari_foram.widgets.live import open_live_viewer

    widget = open_live_viewer(
        "napari-foram demo",
        seed=seed,
        mc_samples=mc_samples,
        model=model,
        download_weights=download_weights,
    )
    widget.start_demo()
    napari.run()
