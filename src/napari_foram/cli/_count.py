"""Commands that count images: synthetic trays, detect, batch folders, classify."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from napari_foram.defaults import MC_SAMPLES
from napari_foram.reasons import one_line

from ._app import (
    MAX_MC,
    CommandError,
    PrecisionOption,
    SplitOption,
    _echo_json,
    _use_precision,
    app,
)

#: Micrometres per pixel that `--pixel-size` accepts. Coarser than 50 um per pixel (the
#: bound the metadata reader, `napari_foram.pixelsize`, also keeps) a specimen is a few
#: pixels and the size rules count noise; finer than 0.01 is beyond any light microscope.
PIXEL_SIZE_RANGE_UM = (0.01, 50.0)


def _check_pixel_size(value: float | None) -> float | None:
    """--pixel-size: a finite value within `PIXEL_SIZE_RANGE_UM`, or not given."""
    if value is None:
        return None
    low, high = PIXEL_SIZE_RANGE_UM
    if not math.isfinite(value) or not low <= value <= high:
        # A wrong pixel size scales every size rule: refused, never used.
        raise typer.BadParameter(
            f"{value} um per pixel is not plausible (expected {low} to {high:g})",
            param_hint="'--pixel-size'",
        )
    return value


def _workers_help() -> str:
    # The bound is batch._dask.max_workers(); not imported here, so that --help stays quick.
    return (
        "Worker processes of a local Dask cluster (0: none); at most 4 x the CPU cores "
        f"({4 * (os.cpu_count() or 1)} here)."
    )


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
            callback=_check_pixel_size,
            help="Micrometres per pixel, 0.01 to 50 (default: the file's metadata, if any).",
        ),
    ] = None,
    invert: Annotated[bool, typer.Option(help="Dark objects on a bright background.")] = False,
    no_border: Annotated[
        bool, typer.Option("--no-border", help="Skip the tray-border pass.")
    ] = False,
    split: SplitOption = True,
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
                # A frame-sized object, a wall over most of the frame: never silent.
                "warnings": list(det.warnings),
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
                for warning in r["warnings"]:
                    typer.echo(f"  warning: {warning}")
    if failed:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- batch
#: Exit status of a `batch` that finished but could not count some files (bad files, each
#: listed with its reason); 0 means every candidate file was counted or already stored.
EXIT_SOME_FILES_BAD = 3


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
    workers: Annotated[int, typer.Option(min=0, help=_workers_help())] = 0,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Address of a running Dask scheduler, e.g. tcp://host:8786."),
    ] = None,
    mc: Annotated[
        int, typer.Option("--mc", min=1, max=MAX_MC, help="Monte Carlo dropout passes.")
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
            callback=_check_pixel_size,
            help="Micrometres per pixel of every image, 0.01 to 50 (default: each file's "
            "metadata, else the detector derives its minimum size from the image).",
        ),
    ] = None,
    min_area: Annotated[
        int | None, typer.Option(help="Smallest object in pixels (overrides the rules).")
    ] = None,
    split: SplitOption = True,
) -> None:
    """Count every image of a folder into a tally store: detect, classify, tally.

    Resumable: each file's SHA-256 is committed with its specimens, so running the same
    command again (after Ctrl-C, a crash or new files) skips what the store holds. Odd
    files (corrupt, empty, too small or large, not an image) are reported, not fatal:
    the run finishes with exit status 3 when some files could not be counted.
    """
    from napari_foram._progress import progress_callback
    from napari_foram.batch import BatchConfig, plan_batch, resolve_checkpoint, run_batch
    from napari_foram.batch._dask import max_workers, workers_reason
    from napari_foram.detect import DetectionParams

    if device not in ("auto", "cpu", "cuda"):
        raise CommandError(f"--device must be auto, cpu or cuda, not {device!r}")
    if workers and scheduler:
        raise CommandError("give --workers (a local cluster) or --scheduler, not both")
    if workers > max_workers():
        raise typer.BadParameter(workers_reason(workers), param_hint="'--workers'")
    _use_precision(precision)
    plan = plan_batch(folder, samples)  # a bad folder or sheet fails now, not after the model
    config = BatchConfig(
        folder=folder,
        store=store,
        model=model,
        samples_csv=samples,
        mc_samples=mc,
        device=device,
        precision=precision,
        workers=workers,
        scheduler=scheduler,
        files_per_task=files_per_task,
        report=report,
        export=export,
        pixel_size_um=pixel_size,
        detection=DetectionParams(min_area_px=min_area, split_touching=split),
    )
    # So do outputs that cannot be written or would replace an input (report, count sheet).
    config.check_outputs(plan)
    try:
        # The demo model trains at first use (minutes): its own bar, before the count's.
        with progress_callback("training the demo model (first run only)") as training:
            config = dataclasses.replace(
                config, model=resolve_checkpoint(model, progress=training)
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
    if outcome.bad_files():
        # Finished, but the count is not the folder's whole content (docs/usage.md).
        typer.echo(
            f"napari-foram: {len(outcome.bad_files())} file(s) could not be counted; "
            f"exit status {EXIT_SOME_FILES_BAD}",
            err=True,
        )
        raise typer.Exit(EXIT_SOME_FILES_BAD)


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
    """Classify crops, single-specimen pictures or whole frames with a checkpoint.

    How a picture becomes the 224 px input is the model's crop policy, as in training:
    "fit" models take any image up to 1024 px a side as one specimen's picture, scaled to
    fill the window; "native" (study) models take an image as one crop when it looks like
    one (at most 448 px on its longer side, no more elongated than 2:1), at its own scale.
    Any other image is a tray frame: its specimens are detected and cut 224 px around
    each at the camera's scale, as counting does. Images under 32 px on a
    side are refused (no specimen fits). A file that cannot be read or classified is
    reported and the others are still classified; the exit status is then 1.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise CommandError(f"--device must be auto, cpu or cuda, not {device!r}")
    import numpy as np

    from napari_foram.classify.loading import load_predictor
    from napari_foram.classify.predict import NonFiniteOutputError
    from napari_foram.tally.columns import predictions_unsure

    _use_precision(precision)
    predictor = load_predictor(model, device=device, precision=precision)
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    for path in paths:
        # One bad file must not cost the others their results: report it and go on.
        try:
            crops, where = _classify_inputs(path, predictor.info.crop_policy)
            if len(crops) == 0:
                rows.append({"path": str(path), "centroid_yx": None, "class": None})
                continue
            pred = predictor.predict(crops, mc_samples=mc)
        except (ValueError, OSError, MemoryError) as exc:
            if isinstance(exc, NonFiniteOutputError):
                raise  # the model is broken, not this file: one line, stop
            reason = one_line(exc)
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


def _classify_inputs(path: Path, crop_policy: str = "native") -> tuple[Any, list[Any]]:
    """The crops of one `classify` input and where they are (None for a picture itself),
    by the model's crop policy (`napari_foram.pictures`).
    """
    import numpy as np

    from napari_foram.detect import CROP_SIZE, cut_crops, detect
    from napari_foram.frames import read_image, to_rgb_uint8
    from napari_foram.pictures import fit_to_window, picture_max_side

    image = read_image(path)
    h, w = image.shape[:2]
    if min(h, w) < MIN_CLASSIFY_SIDE_PX:
        raise ValueError(
            f"{path}: too small to hold a specimen ({w} x {h} px; at least "
            f"{MIN_CLASSIFY_SIDE_PX} px per side)"
        )
    if crop_policy == "fit" and max(h, w) <= picture_max_side("fit"):
        return fit_to_window(image)[None], [None]
    if crop_policy != "fit" and max(h, w) <= 2 * CROP_SIZE and max(h, w) <= 2 * min(h, w):
        # A crop: bring it to 224 x 224 around its centre, as detection does.
        crops = cut_crops(to_rgb_uint8(image), np.array([[(h - 1) / 2, (w - 1) / 2]]))
        return crops, [None]
    det = detect(image)
    keep = det.whole
    if det.crops is None:
        raise ValueError(f"{path}: the detector returned no crops")
    return det.crops[keep], [c.tolist() for c in det.centroid[keep]]
