"""Commands at the microscope: the demo and live counting."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from napari_foram.defaults import MC_SAMPLES

from ._app import DownloadWeightsOption, PrecisionOption, _echo_json, _use_precision, app


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
    download_weights: DownloadWeightsOption = None,
    precision: PrecisionOption = "auto",
) -> None:
    """Scan a synthetic tray on the built-in simulated microscope, count and classify it.

    With a display (and without --headless) napari opens with the Foram live widget scanning.
    Without one, the same scan runs headless and writes its results into --out.
    """
    from napari_foram.demo import display_available, run_demo_gui, run_headless_demo

    _use_precision(precision)
    if headless or not display_available():
        if not headless:
            typer.echo("no display found: running headless", err=True)
        summary = run_headless_demo(
            out,
            seed=seed,
            mc_samples=mc,
            progress=True,
            model=model,
            download_weights=download_weights,
        )
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
        run_demo_gui(seed=seed, mc_samples=mc, model=model, download_weights=download_weights)


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
    download_weights: DownloadWeightsOption = None,
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
            download_weights=download_weights,
        )
        return
    core = None
    if config is not None:
        from napari_foram.acquire import load_config_core

        # Before the model: a missing adapter is reported at once, in one line.
        core = load_config_core(config, adapter_path=adapter_path)
    from napari_foram.classify.loading import load_predictor
    from napari_foram.microscope import (
        MicroscopeCounter,
        SimulatedMicroscopeSettings,
        default_store_path,
        open_or_create_store,
    )
    from napari_foram.tally.store import SampleRecord

    predictor = load_predictor(
        model,
        device=device,
        progress=True,
        precision=precision,
        download_weights=download_weights,
    )
    path = store or default_store_path()
    tally_store = open_or_create_store(path, list(predictor.info.class_names))
    counter = MicroscopeCounter(predictor, tally_store, mc_samples=mc)
    try:
        if config is not None:
            counter.connect_config(config, core=core)
        else:
            counter.connect_simulated(
                SimulatedMicroscopeSettings(
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
    download_weights: bool | None = None,
) -> None:
    import napari

    from napari_foram.widgets.live import open_live_viewer

    open_live_viewer(
        "napari-foram live",
        model=model,
        mc_samples=mc,
        store_path=store,
        device=device,
        bit_depth=bit_depth,
        mono=mono,
        config=config,
        adapter_path=adapter_path,
        download_weights=download_weights,
    )
    napari.run()
