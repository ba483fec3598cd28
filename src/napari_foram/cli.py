"""`napari-foram`: the command line over the same core functions the widgets use.

Every command explains itself with --help, shows progress on long work, and on bad input
exits non-zero with one line that says why. Heavy imports (torch, napari, pymmcore-plus)
happen inside the commands, so `napari-foram --help` is instant.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from napari_foram.defaults import MC_SAMPLES

# typer >= 0.20 vendors its own copy of click; accept the exceptions of both.
_CLICK_MODULES: list[Any] = [click.exceptions]
try:
    import typer._click.exceptions as _typer_click_exceptions

    _CLICK_MODULES.append(_typer_click_exceptions)
except ImportError:  # older typer uses click itself
    pass
_EXIT = (click.exceptions.Exit, typer.Exit)
_ABORT = (click.exceptions.Abort, typer.Abort)
_USAGE = tuple(m.UsageError for m in _CLICK_MODULES)
_CLICK_ERROR = tuple(m.ClickException for m in _CLICK_MODULES)

app = typer.Typer(
    name="napari-foram",
    help=(
        "Count and identify foraminifera under the microscope: acquire (Micro-Manager or the "
        "built-in simulated microscope), detect specimens, classify them with VGG16 + Monte "
        "Carlo dropout, keep tallies per sample in a Zarr store, export core-log tables."
    ),
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


PRECISIONS = ("auto", "fp32", "bf16", "int8")
PrecisionOption = Annotated[
    str,
    typer.Option(
        help="How VGG16's conv blocks compute: auto (on a CPU the fastest path that agrees "
        "with fp32 on this machine, measured at first use and cached; bf16 on a GPU), "
        "fp32, bf16 or int8 (CPU). The store records the path used.",
    ),
]


def _use_precision(precision: str) -> str:
    """Check --precision; a path named also becomes this process's meaning of "auto"
    (``$NAPARI_FORAM_PRECISION``), so predictors built further in (the napari widgets,
    the demo) honour it too."""
    if precision not in PRECISIONS:
        raise CommandError(f"--precision must be {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        os.environ["NAPARI_FORAM_PRECISION"] = precision
    return precision


#: Most Monte Carlo dropout passes an option accepts: 10000 passes already take minutes
#: per crop on a CPU; beyond it the passes' outputs would not fit in memory.
MAX_MC = 10000


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=_json_default))


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ----------------------------------------------------------------------------- demo
@app.command()
def demo(
    headless: Annotated[
        bool,
        typer.Option(
            "--headless",
            help="No window: write the store, CSV, plot, viewer screenshot and summary.json.",
        ),
    ] = False,
    out: Annotated[Path, typer.Option("--out", help="Output folder for the headless run.")] = Path(
        "demo-out"
    ),
    seed: Annotated[int, typer.Option(help="Seed of the synthetic tray.")] = 7,
    mc: Annotated[
        int, typer.Option("--mc", min=1, help="Monte Carlo dropout passes.")
    ] = MC_SAMPLES,
    model: Annotated[
        str,
        typer.Option(help="Checkpoint (.safetensors) or 'demo' (trained here at first use)."),
    ] = "demo",
    download_weights: Annotated[
        bool,
        typer.Option(
            "--download-weights",
            help="Let torchvision download ImageNet VGG16 (528 MB) for the demo model when "
            "no weights are found; without them the demo model uses a random backbone.",
        ),
    ] = False,
    precision: PrecisionOption = "auto",
) -> None:
    """Scan a synthetic tray on the built-in simulated microscope, count and classify it.

    With a display (and without --headless) napari opens with the Foram live widget scanning.
    Without one, the same scan runs headless and writes its results into --out.
    """
    from napari_foram.demo import display_available, run_demo_gui, run_headless_demo

    _use_precision(precision)
    if download_weights and model == "demo":
        from napari_foram.classify.backbone import resolve_backbone

        resolve_backbone("imagenet", download=True)  # into torch hub's cache, found later
    if headless or not display_available():
        if not headless:
            typer.echo("no display found: running headless", err=True)
        summary = run_headless_demo(out, seed=seed, mc_samples=mc, progress=True, model=model)
        typer.echo(
            f"demo finished: {summary['found_whole']} specimens counted, "
            f"{summary['truth_whole']} in the ground truth; outputs in {out.resolve()}"
        )
        m, acc = summary["model"], summary["classification_accuracy"]
        typer.echo(
            f"  classifier backbone {m['backbone']} ({m['input_convention']} input); "
            + (f"{acc:.0%} of matched specimens classified right, " if acc is not None else "")
            + f"{summary['unsure']} unsure"
        )
        for key in ("store", "csv", "plot", "screenshot", "summary"):
            typer.echo(f"  {key:<10} {summary['files'][key]}")
    else:
        run_demo_gui(seed=seed, mc_samples=mc, model=model)


# ------------------------------------------------------------------------------ live
@app.command()
def live(
    config: Annotated[
        Path | None,
        typer.Option(help="Micro-Manager configuration file (real devices)."),
    ] = None,
    adapter_path: Annotated[
        Path | None,
        typer.Option(
            help="Folder of Micro-Manager's device adapters (its installation folder). "
            "Default: $MICROMANAGER_PATH, else the folder chosen with `mmcore use`, else "
            "`mmcore install`'s."
        ),
    ] = None,
    simulate: Annotated[
        bool,
        typer.Option(
            "--simulate",
            help="Use the built-in simulated microscope (the default without --config).",
        ),
    ] = False,
    mode: Annotated[str, typer.Option(help="scan (tray scan), live (preview) or snap.")] = "scan",
    rows: Annotated[int, typer.Option(min=1, help="Tray scan: fields per column.")] = 3,
    cols: Annotated[int, typer.Option(min=1, help="Tray scan: fields per row.")] = 3,
    overlap: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Tray scan: overlap between fields.")
    ] = 0.25,
    frames: Annotated[
        int, typer.Option(min=1, help="live: frames to process; snap: frames to take.")
    ] = 100,
    z_planes: Annotated[
        int,
        typer.Option(
            min=1,
            help="Tray scan: focal planes per field, fused into one sharp image "
            "(the simulated microscope then renders thick, partly defocused specimens).",
        ),
    ] = 1,
    z_step: Annotated[float, typer.Option(min=0.1, help="Tray scan: um between planes.")] = 30.0,
    store: Annotated[
        Path | None, typer.Option(help="Tally store (.zarr), created or resumed.")
    ] = None,
    sample_id: Annotated[str, typer.Option(help="Sample to count into.")] = "SAMPLE-001",
    model: Annotated[str, typer.Option(help="Checkpoint (.safetensors) or 'demo'.")] = "demo",
    mc: Annotated[
        int, typer.Option("--mc", min=1, help="Monte Carlo dropout passes.")
    ] = MC_SAMPLES,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: PrecisionOption = "auto",
    seed: Annotated[int, typer.Option(help="Simulated tray seed.")] = 7,
    bit_depth: Annotated[
        int,
        typer.Option(
            min=8,
            max=16,
            help="Simulated camera bit depth: 8 (uint8 frames) or 10, 12, 14, 16 (uint16).",
        ),
    ] = 8,
    mono: Annotated[
        bool, typer.Option("--mono", help="Simulated monochrome camera (the tray's luma).")
    ] = False,
    headless: Annotated[
        bool, typer.Option("--headless", help="No window: run, then print the tally as JSON.")
    ] = False,
    save_raw: Annotated[
        Path | None,
        typer.Option(
            help="Tray scan: keep the raw frames in a new .ome.zarr folder, with their stage "
            "positions, linked from the sample's provenance, to audit and recount the count."
        ),
    ] = None,
) -> None:
    """Count at the microscope: a tray scan, live preview or snaps, into a tally store.

    Without --headless (and with a display) napari opens with the Foram live widget.
    Headless, the acquisition runs here and the sample's tally is printed as JSON.
    """
    from napari_foram.demo import display_available

    _use_precision(precision)
    if config is not None and simulate:
        raise typer.BadParameter("give --config or --simulate, not both")
    if mode not in ("scan", "live", "snap"):
        raise typer.BadParameter(f"--mode must be scan, live or snap, not {mode!r}")
    if config is not None and not config.is_file():
        raise FileNotFoundError(f"configuration file not found: {config}")
    if not headless and display_available():
        _live_gui(
            model=model,
            mc=mc,
            store=store,
            device=device,
            bit_depth=bit_depth,
            mono=mono,
            config=config,
            adapter_path=adapter_path,
        )
        return
    core = None
    if config is not None:
        from napari_foram.acquire import load_config_core

        # Before the model: a missing adapter is reported at once, in one line.
        core = load_config_core(config, adapter_path=adapter_path)
    from napari_foram.live import (
        LiveCounter,
        SimulatedScope,
        default_store_path,
        open_or_create_store,
    )
    from napari_foram.pipeline import load_predictor
    from napari_foram.tally.store import SampleRecord

    predictor = load_predictor(model, device=device, progress=True, precision=precision)
    path = store or default_store_path()
    tally_store = open_or_create_store(path, list(predictor.info.class_names))
    counter = LiveCounter(predictor, tally_store, mc_samples=mc)
    try:
        if config is not None:
            counter.connect_config(config, core=core)
        else:
            counter.connect_simulated(
                SimulatedScope(
                    seed=seed,
                    rows=rows,
                    cols=cols,
                    overlap=overlap,
                    thick_specimens=z_planes > 1,
                    bit_depth=bit_depth,
                    mono=mono,
                )
            )
        held = counter.start_sample(SampleRecord(sample_id))
        if mode == "scan":
            report = counter.scan(
                rows, cols, overlap, z_planes=z_planes, z_step_um=z_step, save_raw=save_raw
            )
        elif mode == "live":
            report = counter.live(max_frames=frames)
        else:
            for _ in range(frames):
                counter.snap()
            report = None
        summary = {
            "store": str(path),
            "sample_id": sample_id,
            "mode": mode,
            "specimens_before": held,
            "specimens": tally_store.n_specimens(sample_id),
            "tally": counter.tally(),
            "frames_per_s": counter.stats()["frames_per_s"],
        }
        if report is not None:
            summary.update(
                frames_acquired=report.frames_acquired,
                frames_processed=report.frames_processed,
                frames_dropped=report.frames_dropped,
                error=report.error,
                seconds=round(report.seconds, 2),
                pending_partials=report.pending_partials,
            )
        _echo_json(summary)
    finally:
        counter.close()


def _live_gui(
    *,
    model: str,
    mc: int,
    store: Path | None,
    device: str,
    bit_depth: int,
    mono: bool,
    config: Path | None = None,
    adapter_path: Path | None = None,
) -> None:
    import napari

    from napari_foram.widgets.live import LiveWidget

    viewer = napari.Viewer(title="napari-foram live")
    widget = LiveWidget(
        viewer,
        model=model,
        mc_samples=mc,
        store_path=store,
        device=device,
        bit_depth=bit_depth,
        mono=mono,
        config=config,
        adapter_path=adapter_path,
    )
    viewer.window.add_dock_widget(widget, name="Foram live", area="right")
    napari.run()


# ----------------------------------------------------------------------------- synth
@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write (created if missing).")],
    trays: Annotated[int, typer.Option(min=0, help="Number of tray frames.")] = 2,
    crops_per_class: Annotated[
        int, typer.Option(min=0, help="Labelled 224x224 crops per class (ImageFolder).")
    ] = 50,
    seed: Annotated[int, typer.Option(help="Seed: same seed, same pixels.")] = 0,
    specimens: Annotated[int, typer.Option(min=0, help="Specimens per tray frame.")] = 60,
) -> None:
    """Write synthetic tray frames with ground truth and an ImageFolder of labelled crops."""
    from napari_foram._outputs import check_output_dir
    from napari_foram._progress import progress_callback
    from napari_foram.synthetic import write_synth

    check_output_dir(out_dir, "synth output folder")

    with progress_callback("rendering synthetic forams") as bar:
        write_synth(
            out_dir,
            trays=trays,
            crops_per_class=crops_per_class,
            seed=seed,
            n_specimens=specimens,
            progress=bar,
        )
    typer.echo(
        f"wrote {trays} tray frame(s) and {crops_per_class} crops per class to {out_dir.resolve()}"
    )


# ----------------------------------------------------------------------------- detect
@app.command("detect")
def detect_cmd(
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, TIFF, ...).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, one entry per image.")] = (
        False
    ),
    threshold: Annotated[
        float | None, typer.Option(help="Grey level 0-255 (default: automatic, Otsu).")
    ] = None,
    min_area: Annotated[
        int | None,
        typer.Option(
            help="Smallest object in pixels (default: 6400 um^2 when the pixel size is "
            "known, else derived from the image)."
        ),
    ] = None,
    pixel_size: Annotated[
        float | None,
        typer.Option(
            "--pixel-size",
            min=0.0,
            help="Micrometres per pixel (default: the file's metadata, if any).",
        ),
    ] = None,
    invert: Annotated[bool, typer.Option(help="Dark objects on a bright background.")] = False,
    no_border: Annotated[
        bool, typer.Option("--no-border", help="Skip the tray-border pass.")
    ] = False,
    split: Annotated[
        bool,
        typer.Option(
            "--split/--no-split",
            help="Separate touching specimens at narrow necks (on by default: see "
            "docs/usage.md, Detection choices).",
        ),
    ] = True,
) -> None:
    """Find specimens in images with the study's connected-component detector."""
    from napari_foram.detect import DetectionParams, detect
    from napari_foram.frames import read_image
    from napari_foram.pixelsize import read_pixel_size

    params = DetectionParams(
        threshold=threshold,
        min_area_px=min_area,
        invert=invert,
        mask_border=not no_border,
        split_touching=split,
    )
    results: list[dict[str, Any]] = []
    failed = 0
    for path in images:
        # One bad file must not cost the others their results: report it and go on.
        try:
            px = pixel_size or read_pixel_size(path)
            det = detect(read_image(path), params, crops=False, pixel_size_um=px)
        except ValueError as exc:
            failed += 1
            results.append({"image": str(path), "error": str(exc)})
            typer.echo(f"napari-foram: error: {exc}", err=True)
            continue
        results.append(
            {
                "image": str(path),
                "count": int(det.whole.sum()),
                "clipped": int(det.clipped.sum()),
                "threshold": round(det.threshold, 2),
                "pixel_size_um": det.pixel_size_um,
                "min_area_px": round(det.min_area_px, 1),
                "min_area_rule": det.min_area_rule,
                "objects": det.to_records(),
            }
        )
    if as_json:
        _echo_json(results)
    else:
        for r in results:
            if "error" not in r:
                typer.echo(
                    f"{r['image']}: {r['count']} specimens (+{r['clipped']} clipped at edges)"
                )
    if failed:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- batch
@app.command("batch")
def batch_cmd(
    folder: Annotated[
        Path,
        typer.Argument(
            help="Folder of images: each subfolder is a sample; images directly inside it "
            "form one sample named after the folder."
        ),
    ],
    store: Annotated[Path, typer.Option(help="Tally store to create or append to (.zarr).")],
    model: Annotated[
        str, typer.Option(help="Checkpoint file (.safetensors), or 'demo' for the demo model.")
    ] = "demo",
    samples: Annotated[
        Path | None,
        typer.Option(
            help="Sample sheet (CSV): columns file, sample_id and any sample-record field "
            "(depth, depth_unit, dry_weight_g, ...). Only the files it lists are counted."
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(min=0, help="Worker processes of a local Dask cluster (0: none).")
    ] = 0,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Address of a running Dask scheduler, e.g. tcp://host:8786."),
    ] = None,
    mc: Annotated[
        int, typer.Option("--mc", min=1, help="Monte Carlo dropout passes.")
    ] = MC_SAMPLES,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: PrecisionOption = "auto",
    export: Annotated[
        Path | None, typer.Option(help="Also write the wide count sheet (CSV) here.")
    ] = None,
    files_per_task: Annotated[
        int, typer.Option(min=1, help="Files classified together (one task, one commit).")
    ] = 4,
    report: Annotated[
        Path | None,
        typer.Option(help="Report JSON (its CSV beside it); default: beside the store."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    pixel_size: Annotated[
        float | None,
        typer.Option(
            "--pixel-size",
            min=0.0,
            help="Micrometres per pixel of every image (default: each file's metadata, "
            "else the detector derives its minimum size from the image).",
        ),
    ] = None,
    min_area: Annotated[
        int | None, typer.Option(help="Smallest object in pixels (overrides the rules).")
    ] = None,
    split: Annotated[
        bool,
        typer.Option(
            "--split/--no-split",
            help="Separate touching specimens at narrow necks (on by default: see "
            "docs/usage.md, Detection choices).",
        ),
    ] = True,
) -> None:
    """Count every image of a folder into a tally store: detect, classify, tally.

    Resumable: each file's SHA-256 is committed with its specimens, so running the same
    command again (after Ctrl-C, a crash or new files) skips what the store holds. Odd
    files (corrupt, empty, too small or large, not an image) are reported, not fatal.
    """
    from napari_foram._progress import progress_callback
    from napari_foram.batch import BatchConfig, plan_batch, resolve_checkpoint, run_batch
    from napari_foram.detect import DetectionParams

    if device not in ("auto", "cpu", "cuda"):
        raise CommandError(f"--device must be auto, cpu or cuda, not {device!r}")
    if workers and scheduler:
        raise CommandError("give --workers (a local cluster) or --scheduler, not both")
    _use_precision(precision)
    plan_batch(folder, samples)  # a bad folder or sheet fails now, not after the model
    # So do outputs that cannot be written (the report, the count sheet).
    outputs = BatchConfig(folder=folder, store=store, model=model, report=report, export=export)
    outputs.check_outputs()
    try:
        # The demo model trains at first use (minutes): its own bar, before the count's.
        with progress_callback("training the demo model (first run only)") as training:
            checkpoint = resolve_checkpoint(model, progress=training)
        config = BatchConfig(
            folder=folder,
            store=store,
            model=checkpoint,
            samples_csv=samples,
            mc_samples=mc,
            device=device,
            precision=precision,
            workers=workers,
            scheduler=scheduler,
            files_per_task=files_per_task,
            report=report,
            export=export,
            pixel_size_um=pixel_size or None,
            detection=DetectionParams(min_area_px=min_area, split_touching=split),
        )
        with progress_callback("counting", enabled=not as_json) as bar:
            outcome = run_batch(config, progress=bar)
    except KeyboardInterrupt:  # before the count started: nothing was written
        typer.echo("napari-foram: interrupted", err=True)
        raise typer.Exit(130) from None
    for line in outcome.bad_files():
        typer.echo(f"napari-foram: bad file {line.file}: {line.reason}", err=True)
    for note in outcome.notes:
        typer.echo(f"napari-foram: note: {note}", err=True)
    if as_json:
        _echo_json(outcome.to_dict())
    else:
        typer.echo(f"batch: {outcome.summary_line()}")
        typer.echo(f"  report       {outcome.report_json} (and .csv)")
        if outcome.export_csv:
            typer.echo(f"  count sheet  {outcome.export_csv}")
    if outcome.interrupted:
        typer.echo(
            "napari-foram: interrupted: committed files are kept; run the same command "
            "again to resume",
            err=True,
        )
        raise typer.Exit(130)
    if outcome.damaged_samples:  # counted what could be counted; the rest needs a look
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- classify
@app.command()
def classify(
    paths: Annotated[list[Path], typer.Argument(help="Crops or whole frames (detected first).")],
    model: Annotated[
        str, typer.Option(help="Checkpoint file (.safetensors), or 'demo' for the demo model.")
    ] = "demo",
    mc: Annotated[
        int, typer.Option("--mc", min=1, max=MAX_MC, help="Monte Carlo dropout passes.")
    ] = 100,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: PrecisionOption = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Classify crops (224x224 images) or whole frames with a checkpoint.

    An image is taken as one crop when it looks like one: at most 448 px on its longer
    side and no more elongated than 2:1 (a crop is cut square around one specimen); any
    other image is a frame whose specimens are detected first. Images under 32 px on a
    side are refused (no specimen fits). A file that cannot be read or classified is
    reported and the others are still classified; the exit status is then 1.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise CommandError(f"--device must be auto, cpu or cuda, not {device!r}")
    import numpy as np

    from napari_foram.pipeline import load_predictor, predictions_unsure

    _use_precision(precision)
    predictor = load_predictor(model, device=device, precision=precision)
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    for path in paths:
        # One bad file must not cost the others their results: report it and go on.
        try:
            crops, where = _classify_inputs(path)
            if len(crops) == 0:
                rows.append({"path": str(path), "centroid_yx": None, "class": None})
                continue
            pred = predictor.predict(crops, mc_samples=mc)
        except (ValueError, OSError, MemoryError) as exc:
            reason = _exc_line(exc)
            if not reason.startswith(str(path)):
                reason = f"{path}: {reason}"
            failed.append(reason)
            rows.append({"path": str(path), "error": reason})
            typer.echo(f"napari-foram: error: {reason}", err=True)
            continue
        unsure = predictions_unsure(pred, predictor.info)
        for i in range(len(crops)):
            rows.append(
                {
                    "path": str(path),
                    "centroid_yx": where[i],
                    "class": pred.class_names[int(pred.class_index[i])],
                    "probability": round(float(pred.mean_probs[i].max()), 4),
                    "entropy": round(float(pred.entropy[i]), 4),
                    "mutual_information": round(float(pred.mutual_information[i]), 4),
                    "vote_fraction": round(float(pred.vote_fraction[i]), 4),
                    "feature_distance": None
                    if np.isnan(pred.feature_distance[i])
                    else round(float(pred.feature_distance[i]), 4),
                    "unsure": bool(unsure[i]),
                }
            )
    if as_json:
        _echo_json(rows)
    else:
        for r in rows:
            if "error" in r:
                continue  # said on stderr when it happened
            if r["class"] is None:
                typer.echo(f"{r['path']}: no specimen found")
            else:
                typer.echo(
                    f"{r['path']}: {r['class']} (p={r['probability']:.2f}, "
                    f"entropy={r['entropy']:.2f})"
                    + (" UNSURE: unlike the model's training crops" if r["unsure"] else "")
                )
    if failed:
        typer.echo(
            f"napari-foram: {len(failed)} of {len(paths)} file(s) failed: "
            + "; ".join(failed[:3])
            + (" ..." if len(failed) > 3 else ""),
            err=True,
        )
        raise typer.Exit(1)


#: Images smaller than this on a side hold no specimen (`classify` refuses them).
MIN_CLASSIFY_SIDE_PX = 32


def _classify_inputs(path: Path) -> tuple[Any, list[Any]]:
    """The crops of one `classify` input and where they are (None for a crop itself)."""
    import numpy as np

    from napari_foram.detect import CROP_SIZE, cut_crops, detect
    from napari_foram.frames import read_image, to_rgb_uint8

    image = read_image(path)
    h, w = image.shape[:2]
    if min(h, w) < MIN_CLASSIFY_SIDE_PX:
        raise ValueError(
            f"{path}: too small to hold a specimen ({w} x {h} px; at least "
            f"{MIN_CLASSIFY_SIDE_PX} px per side)"
        )
    if max(h, w) <= 2 * CROP_SIZE and max(h, w) <= 2 * min(h, w):
        # A crop: bring it to 224 x 224 around its centre, as detection does.
        crops = cut_crops(to_rgb_uint8(image), np.array([[(h - 1) / 2, (w - 1) / 2]]))
        return crops, [None]
    det = detect(image)
    keep = det.whole
    if det.crops is None:
        raise ValueError(f"{path}: the detector returned no crops")
    return det.crops[keep], [c.tolist() for c in det.centroid[keep]]


def _exc_line(exc: BaseException) -> str:
    """An exception as one line (`napari_foram.reasons.one_line`)."""
    from napari_foram.reasons import one_line

    return one_line(exc)


# ----------------------------------------------------------------------------- export-reviewed
@app.command("export-reviewed")
def export_reviewed_cmd(
    store: Annotated[Path, typer.Argument(help="A napari-foram tally store (.zarr folder).")],
    out_dir: Annotated[
        Path, typer.Argument(help="ImageFolder to write: OUT_DIR/<class>/<sample>_<row>.png.")
    ],
    sample: Annotated[
        list[str] | None,
        typer.Option("--sample", help="Only this sample (repeat for several; default: all)."),
    ] = None,
) -> None:
    """Export the reviewed crops (confirmed or relabelled) as a labelled image folder,
    ready for `napari-foram train`."""
    from napari_foram.review import export_validated_crops
    from napari_foram.tally.store import TallyStore

    with TallyStore.open(store, mode="r") as tally:
        result = export_validated_crops(tally, out_dir, samples=sample or None)
    typer.echo(result.summary())
    if result.removed:
        typer.echo(f"  removed {result.removed} crop(s) whose review changed since", err=True)
    if not len(result):
        typer.echo(
            "napari-foram: no confirmed or relabelled specimens yet: review some first "
            "(Plugins > Foram review)",
            err=True,
        )


# ----------------------------------------------------------------------------- export
@app.command()
def export(
    store: Annotated[Path, typer.Argument(help="A napari-foram tally store (.zarr folder).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="CSV file to write.")],
    fmt: Annotated[
        str, typer.Option("--format", help="wide (row per sample), long, or specimens.")
    ] = "wide",
    plot: Annotated[Path | None, typer.Option(help="Also draw the tally (PNG or SVG).")] = None,
) -> None:
    """Export tallies as a core-log table (UTF-8 CSV), optionally with a plot.

    A store with a damaged sample is refused (its counts would be wrong); run
    `napari-foram check STORE --repair` first, which sets such samples aside.
    """
    from napari_foram._outputs import check_output_file
    from napari_foram.tally.export import export_csv, plot_tally
    from napari_foram.tally.store import TallyStore

    if fmt not in ("wide", "long", "specimens"):
        raise CommandError(f"--format must be wide, long or specimens, not {fmt!r}")
    check_output_file(output, "count sheet")
    if plot is not None:
        if plot.suffix.lower() not in (".png", ".svg"):
            raise CommandError(f"--plot must end in .png or .svg, got {plot.name!r}")
        check_output_file(plot, "plot")
    with TallyStore.open(store, mode="r") as tally:
        export_csv(tally, output, fmt=fmt)  # type: ignore[arg-type]  # checked above
        typer.echo(f"wrote {output}")
        if plot is not None:
            plot_tally(tally, plot)
            typer.echo(f"wrote {plot}")
        for q in tally.quarantined():
            typer.echo(
                f"napari-foram: note: sample {q.get('sample_id')!r} is not in the export: "
                f"it was set aside in {q.get('moved_to')} ({q.get('reason')})",
                err=True,
            )


# ----------------------------------------------------------------------------- check
@app.command("check")
def check_cmd(
    store: Annotated[Path, typer.Argument(help="A napari-foram tally store (.zarr folder).")],
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Rebuild what can be derived; move the rest into STORE/quarantine/ "
            "(nothing is deleted).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Verify every sample of a store: metadata, array lengths, every chunk readable,
    commit counters. Prints what is wrong; exit status 1 if anything is."""
    from dataclasses import asdict

    from napari_foram.tally.store.integrity import format_count, repair_store, store_problems

    problems, found = store_problems(store, decode=True)
    actions: list[str] = []
    if repair and problems:
        actions = repair_store(store)
        before = problems
        problems, found = store_problems(store, decode=True)
        if problems and problems == before:
            actions.append("nothing could be repaired")
    if as_json:
        _echo_json(
            {
                "store": str(store),
                "samples": found,
                "problems": [asdict(p) for p in problems],
                "repairs": actions,
            }
        )
    else:
        for line in actions:
            typer.echo(f"repaired: {line}")
        for p in problems:
            typer.echo(f"damaged: {p}")
        if problems:
            n_samples = len({p.sample_id for p in problems if p.sample_id})
            typer.echo(
                f"{store}: {format_count(len(problems), 'problem')} in "
                f"{format_count(n_samples, 'sample')} of {len(found)}"
                + ("" if repair else "; 'napari-foram check --repair' sets them aside")
            )
        else:
            typer.echo(f"{store}: {format_count(len(found), 'sample')}, all readable")
    if problems:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- bench
@app.command()
def bench(
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Also write the JSON object to this file.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: PrecisionOption = "auto",
    quick: Annotated[
        bool, typer.Option("--quick", help="Fewer repeats and no VGG16 passes (a smoke run).")
    ] = False,
    soak: Annotated[
        int,
        typer.Option(
            min=0, help="Also run N simulated frames in scan mode (memory, drops); 0: skip."
        ),
    ] = 0,
) -> None:
    """Measure the project's speed figures and print them as one JSON object."""
    from napari_foram.bench import run_benchmarks

    if device not in ("auto", "cpu", "cuda"):
        raise CommandError(f"--device must be auto, cpu or cuda, not {device!r}")
    _use_precision(precision)
    result = run_benchmarks(
        device=device, quick=quick, progress=True, soak_frames=soak, precision=precision
    )
    text = json.dumps(result, indent=2, default=_json_default)
    typer.echo(text)
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(text + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- extract-crops
@app.command("extract-crops")
def extract_crops_cmd(
    src: Annotated[Path, typer.Argument(help="Folder of whole frames, one subfolder per class.")],
    out: Annotated[
        Path, typer.Argument(help="Folder to write crops to, one subfolder per class.")
    ],
    min_area: Annotated[int, typer.Option(help="Smallest object in pixels.")] = 1024,
    invert: Annotated[bool, typer.Option(help="Dark objects on a bright background.")] = False,
    no_border: Annotated[
        bool, typer.Option("--no-border", help="Skip the tray-border pass.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Detect specimens in SRC/<class>/ frames and write 224x224 crops to OUT/<class>/.

    Also writes OUT/crops.csv (source image, class, centroid, bbox, area per crop) and a
    contact sheet per class (OUT/contact_sheet_<class>.png, up to 64 crops).
    """
    from napari_foram._progress import progress_callback
    from napari_foram.detect import DetectionParams
    from napari_foram.training.data import extract_crops

    params = DetectionParams(min_area_px=min_area, invert=invert, mask_border=not no_border)
    with progress_callback("extracting crops", enabled=not as_json) as progress:
        summary = extract_crops(src, out, params=params, progress=progress)
    for line in summary["skipped"]:
        typer.echo(f"napari-foram: skipped {line}", err=True)
    if as_json:
        _echo_json(summary)
    else:
        counts = ", ".join(f"{k}: {v}" for k, v in summary["crops"].items())
        typer.echo(f"wrote crops from {summary['images']} image(s) to {out} ({counts})")


# ----------------------------------------------------------------------------- train
@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Labelled crops: DATA/<class>/<image>.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Checkpoint to write.")],
    backbone_weights: Annotated[
        str,
        typer.Option(
            help="imagenet ($NAPARI_FORAM_VGG16_WEIGHTS, then torch hub's cache, then a "
            "download with --download-weights), none (random backbone), or a VGG16 "
            ".safetensors/.pth file."
        ),
    ] = "imagenet",
    download_weights: Annotated[
        bool,
        typer.Option(
            "--download-weights",
            help="Allow torchvision to download its ImageNet VGG16 weights (528 MB) when "
            "no file is found.",
        ),
    ] = False,
    input_convention: Annotated[
        str,
        typer.Option(
            help="How pixels are fed to VGG16: torchvision (0-1, ImageNet mean/std), caffe "
            "(0-255 minus mean: Keras weights), study (0-1, the paper's code). Default: "
            "what the weights carry."
        ),
    ] = "",
    fine_tune: Annotated[
        bool,
        typer.Option(
            "--fine-tune", help="Phase 2: also train VGG16 blocks 4-5 on augmented crops."
        ),
    ] = False,
    fine_tune_lr: Annotated[float, typer.Option(help="Learning rate of phase 2.")] = 1e-7,
    fine_tune_epochs: Annotated[int, typer.Option(min=1, help="Epoch limit of phase 2.")] = 10,
    repeats: Annotated[
        int, typer.Option(min=1, help="Independent runs (seeds S, S+1, ...): mean +- sd.")
    ] = 1,
    grid: Annotated[
        bool,
        typer.Option("--grid", help="Grid-search head units x dropout x optimiser first."),
    ] = False,
    epochs: Annotated[int, typer.Option(min=1, help="Epoch limit of phase 1.")] = 50,
    patience: Annotated[int, typer.Option(min=1, help="Early-stopping patience (epochs).")] = 5,
    lr: Annotated[float, typer.Option(help="Learning rate of phase 1 (Adam).")] = 1e-4,
    seed: Annotated[int, typer.Option(help="Seed of the split and the training.")] = 0,
    split: Annotated[
        Path | None,
        typer.Option(help="Split JSON: reused if it exists, else written (default: beside -o)."),
    ] = None,
    feature_cache: Annotated[
        Path | None, typer.Option(help="Folder to cache the VGG16 features in (.npy).")
    ] = None,
    standardize: Annotated[
        bool | None,
        typer.Option(
            "--standardize/--no-standardize",
            help="Standardise features for phase 1 (folded into the head afterwards). "
            "Default: on for a random backbone, off for ImageNet (the study's recipe).",
        ),
    ] = None,
    pooled: Annotated[
        bool,
        typer.Option(
            "--pooled/--raw-features",
            help="Phase 1 on pooled, standardised features, folded into the study's head "
            "(default: better with a few hundred crops per class; see docs/benchmarks.md), "
            "or on the 25088 raw features as the study did.",
        ),
    ] = True,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Train a classifier with the study's recipe (phase 1: head on frozen VGG16 features)."""
    from napari_foram._progress import progress_callback
    from napari_foram.training.train import TrainConfig, train_from_folder

    if device not in ("auto", "cpu", "cuda"):
        raise CommandError(f"--device must be auto, cpu or cuda, not {device!r}")
    from napari_foram._outputs import check_output_file

    # Before training, not after: a model trained for hours must have somewhere to go.
    check_output_file(output, "checkpoint")
    if split is not None and not split.exists():
        check_output_file(split, "split file")
    config = TrainConfig(
        backbone_weights=backbone_weights,
        fine_tune=fine_tune,
        fine_tune_lr=fine_tune_lr,
        fine_tune_epochs=fine_tune_epochs,
        max_epochs=epochs,
        patience=patience,
        lr=lr,
        seed=seed,
        device=device,
        standardize_features=backbone_weights == "none" if standardize is None else standardize,
        input_convention=input_convention,
        download_weights=download_weights,
        pooled_features=pooled,
    )
    with progress_callback("training", enabled=not as_json) as progress:
        outcome = train_from_folder(
            data,
            output,
            config,
            split_file=split,
            repeats=repeats,
            grid=grid,
            feature_cache=feature_cache,
            progress=progress,
        )
    for line in outcome.metrics.get("skipped", []):
        typer.echo(f"napari-foram: skipped {line}", err=True)
    if outcome.interrupted:
        typer.echo("napari-foram: interrupted: saved the best model so far", err=True)
    if as_json:
        _echo_json({"metrics": outcome.metrics, "files": outcome.files})
    else:
        m = outcome.metrics
        test = m.get("test_accuracy")
        typer.echo(
            f"wrote {output}: val accuracy {m['val_accuracy']:.3f}"
            + (f", test accuracy {test:.3f}" if test is not None else "")
        )
        rep = m.get("repeats")
        if rep and rep.get("test_accuracy_mean") is not None:
            typer.echo(
                f"  {rep['n']} repeats: test accuracy {rep['test_accuracy_mean']:.3f} "
                f"+- {rep['test_accuracy_sd']:.3f}"
            )
        for key, path in outcome.files.items():
            if key != "checkpoint":
                typer.echo(f"  {key:<10} {path}")


# ----------------------------------------------------------------------------- evaluate
@app.command("evaluate")
def evaluate_cmd(
    data: Annotated[Path, typer.Argument(help="Labelled crops: DATA/<class>/<image>.")],
    model: Annotated[Path, typer.Option(help="Checkpoint file (.safetensors).")],
    report: Annotated[Path, typer.Option(help="Folder for the report files.")],
    mc: Annotated[
        int, typer.Option("--mc", min=1, max=MAX_MC, help="Monte Carlo dropout passes.")
    ] = 100,
    split: Annotated[
        Path | None, typer.Option(help="Split JSON from training: score one part of it.")
    ] = None,
    subset: Annotated[
        str | None, typer.Option(help="train, val, test (default with --split) or all.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the dropout masks.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Score a checkpoint on labelled crops: accuracy, per-class F1, confusion matrix,
    MC-dropout accuracy and vote, calibration (ECE), and a gallery of hard cases."""
    from napari_foram._progress import progress_callback
    from napari_foram.training.evaluate import evaluate

    if device not in ("auto", "cpu", "cuda"):
        raise CommandError(f"--device must be auto, cpu or cuda, not {device!r}")
    from napari_foram._outputs import check_output_dir

    check_output_dir(report, "report folder")
    with progress_callback("evaluating", enabled=not as_json) as progress:
        result = evaluate(
            data,
            model,
            mc=mc,
            report_dir=report,
            split_file=split,
            subset=subset,
            device=device,
            seed=seed,
            progress=progress,
        )
    for line in result["data"]["skipped"]:
        typer.echo(f"napari-foram: skipped {line}", err=True)
    if as_json:
        _echo_json(result)
        return
    typer.echo(
        f"{result['n']} crops ({result['data']['subset']}): accuracy {result['accuracy']:.3f}"
    )
    if "mc" in result:
        m = result["mc"]
        typer.echo(
            f"  MC dropout ({m['samples']} passes): {m['mean_accuracy']:.3f} "
            f"+- {m['sd_accuracy']:.3f}, majority vote {m['vote_accuracy']:.3f}"
        )
    if result["ece"] is not None:
        typer.echo(f"  ECE {result['ece']:.3f}")
    typer.echo(f"  report in {report}")


# ----------------------------------------------------------------------------- entry point
def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """Warnings on the terminal as one line each, like errors (no source line)."""
    return f"napari-foram: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; usage errors and bad input become one line on stderr."""
    warnings.formatwarning = _one_line_warning
    # File names that are not valid in the terminal's encoding (bytes a file system
    # allows, kept as surrogates) are printed escaped rather than ending the command.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")
    try:
        # Without standalone mode click returns the exit code of typer.Exit instead of
        # calling sys.exit; keep it.
        status = app(args=argv, standalone_mode=False)
    except _EXIT as exc:
        return int(exc.exit_code or 0)
    except _ABORT:
        typer.echo("napari-foram: aborted", err=True)
        return 130
    except _USAGE as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `napari-foram`: show the help
            typer.echo(exc.format_message() if exc.ctx is None else exc.ctx.get_help())
            return 0
        msg = " ".join(exc.format_message().split())
        typer.echo(f"napari-foram: error: {msg}", err=True)
        return 2
    except _CLICK_ERROR as exc:
        typer.echo(f"napari-foram: error: {' '.join(exc.format_message().split())}", err=True)
        return int(getattr(exc, "exit_code", 1) or 1)
    except KeyboardInterrupt:
        typer.echo("napari-foram: interrupted", err=True)
        return 130
    except (CommandError, ValueError, RuntimeError, OSError, MemoryError) as exc:
        # OSError covers permission denied, is-a-directory, read-only file systems, disk
        # full: its strerror and file name make the line, never a traceback.
        typer.echo(f"napari-foram: error: {_exc_line(exc)}", err=True)
        return 1
    except Exception as exc:  # a bug or an unforeseen input: still one line, and where
        if os.environ.get("NAPARI_FORAM_DEBUG"):
            raise
        typer.echo(
            f"napari-foram: error: {type(exc).__name__}: {_exc_line(exc)} "
            "(unexpected; set NAPARI_FORAM_DEBUG=1 for the traceback)",
            err=True,
        )
        return 1
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
