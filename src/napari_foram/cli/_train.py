"""Commands for models and speed: bench, extract crops, train, evaluate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._app import (
    MAX_MC,
    CommandError,
    DownloadWeightsOption,
    PrecisionOption,
    _echo_json,
    _json_default,
    _use_precision,
    app,
)


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
    from napari_foram._outputs import check_output_file
    from napari_foram.bench import run_benchmarks

    if device not in ("auto", "cpu", "cuda"):
        raise CommandError(f"--device must be auto, cpu or cuda, not {device!r}")
    if json_file is not None:
        # Before minutes of measuring: a folder, a FIFO or a store is refused now.
        check_output_file(json_file, "benchmark JSON")
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
    recipe: Annotated[
        str,
        typer.Option(
            help="pooled-linear (default: a linear head with dropout on pooled conv4+conv5 "
            "features, L2 by cross-validation, calibrated; right on small real sets) or "
            "study (the reference study's (512, 64) head on block-5 features)."
        ),
    ] = "pooled-linear",
    crop_policy: Annotated[
        str,
        typer.Option(
            help="How pictures that are not 224 px crops become the input: fit (scaled so "
            "the specimen fills the window; default) or native (own scale, the study's). "
            "Recorded in the model and used again by classify."
        ),
    ] = "fit",
    learning_curve: Annotated[
        bool,
        typer.Option(
            "--learning-curve/--no-learning-curve",
            help="Measure held-out accuracy at 5, 10, 20, 50 and all labels per class.",
        ),
    ] = True,
    backbone_weights: Annotated[
        str,
        typer.Option(
            help="imagenet ($NAPARI_FORAM_VGG16_WEIGHTS, then torch hub's cache, then "
            "torchvision's download unless --no-download-weights), none (random backbone), "
            "or a VGG16 .safetensors/.pth file."
        ),
    ] = "imagenet",
    download_weights: DownloadWeightsOption = None,
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
    """Train a classifier on labelled images (default recipe: pooled-linear; see --recipe)."""
    from napari_foram._progress import progress_callback
    from napari_foram.classify.backbone import download_allowed
    from napari_foram.training.train import TrainConfig, train_from_folder

    if device not in ("auto", "cpu", "cuda"):
        raise CommandError(f"--device must be auto, cpu or cuda, not {device!r}")
    _check_train_paths(
        data, output, split, backbone_weights, feature_cache, learning_curve, grid, repeats
    )
    from napari_foram.training.train import RECIPES

    if recipe not in RECIPES:
        raise CommandError(f"--recipe must be one of {', '.join(RECIPES)}, not {recipe!r}")
    from napari_foram.pictures import CROP_POLICIES

    if crop_policy not in CROP_POLICIES:
        raise CommandError(
            f"--crop-policy must be one of {', '.join(CROP_POLICIES)}, not {crop_policy!r}"
        )
    config = TrainConfig(
        recipe=recipe,
        crop_policy=crop_policy,
        learning_curve=learning_curve,
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
        # The option when given, else the environment's say: TrainConfig takes a yes/no.
        download_weights=download_allowed(download_weights),
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
        held = m.get("calibrated_on")
        if held and m.get(f"{held}_ece_mc") is not None:
            typer.echo(
                f"  {held}: MC mean accuracy {m[f'{held}_mc_accuracy']:.3f}, ECE "
                f"{m[f'{held}_ece_mc']:.3f} (temperature {m['temperature']:.2f})"
            )
        curve = m.get("learning_curve")
        if curve:
            typer.echo(
                "  learning curve ("
                + str(curve["held_out"])
                + "): "
                + ", ".join(
                    f"{p['per_class']}/class {100 * p['accuracy_mean']:.0f}"
                    f"+-{100 * p['accuracy_sd']:.0f} %"
                    for p in curve["points"]
                )
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


def _check_train_paths(
    data: Path,
    output: Path,
    split: Path | None,
    backbone_weights: str,
    feature_cache: Path | None,
    learning_curve: bool,
    grid: bool,
    repeats: int,
) -> None:
    """Every file `train` reads or writes, checked before training, not after: a model
    trained for hours must have somewhere to go, and no output may replace an input.
    """
    from napari_foram._outputs import (
        check_distinct,
        check_output_dir,
        check_output_file,
        read_small_file,
    )

    inputs: list[Path] = [data]  # inside it, an output would be read as training data
    if backbone_weights not in ("imagenet", "none"):
        inputs.append(Path(backbone_weights))
    split_read = split is not None and (split.exists() or split.is_symlink())
    if split is not None and split_read:
        # An existing split is read: a FIFO, a device or a huge file is refused now, not
        # waited on after the images were loaded.
        read_small_file(split, "split file")
        inputs.append(split)
    # What train_from_folder and train_classifier write beside the checkpoint.
    outputs = [(output, "checkpoint")]
    if split is None:
        outputs.append((output.with_name(f"{output.stem}.split.json"), "split file"))
    elif not split_read:
        outputs.append((split, "split file"))
    if learning_curve:
        outputs.append((output.with_name(f"{output.stem}.learning_curve.png"), "curve plot"))
    if grid:
        outputs.append((output.with_name(f"{output.stem}.grid.csv"), "grid table"))
    if repeats > 1:
        outputs.append((output.with_name(f"{output.stem}.repeats.csv"), "repeats table"))
    for path, what in outputs:
        check_output_file(path, what, inputs=inputs)
    check_distinct(outputs)
    if feature_cache is not None:
        check_output_dir(feature_cache, "feature cache folder", inputs=[data])


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
    MC-dropout accuracy and vote, calibration (ECE), and a gallery of hard cases.
    """
    from napari_foram._progress import progress_callback
    from napari_foram.training.evaluate import evaluate

    if device not in ("auto", "cpu", "cuda"):
        raise CommandError(f"--device must be auto, cpu or cuda, not {device!r}")
    from napari_foram._outputs import (
        check_input_file,
        check_output_dir,
        check_output_file,
        read_small_file,
    )
    from napari_foram.training.evaluate import REPORT_FILES

    # The report path's own shape, then the inputs, then how they relate: the report
    # must not lie inside the data (it would be read as a class folder next time) nor
    # replace an input. Nothing is created before all of it holds.
    check_output_dir(report, "report folder", create=False)
    check_input_file(model, "checkpoint")
    inputs = [data, model]
    if split is not None:
        read_small_file(split, "split file")  # a FIFO or /dev/zero would hang the run
        inputs.append(split)
    check_output_dir(report, "report folder", inputs=inputs)
    for name in REPORT_FILES:
        check_output_file(report / name, "report file", inputs=inputs)
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
