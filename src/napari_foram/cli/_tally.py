"""Commands over a tally store: export, export the reviewed crops, check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._app import CommandError, _echo_json, app


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
    ready for `napari-foram train`.
    """
    from napari_foram._outputs import check_output_dir
    from napari_foram.review import export_validated_crops
    from napari_foram.tally.store import TallyStore

    # Crops written into a tally store's folder would damage it. Not created here: the
    # exporter does that once the store has opened.
    check_output_dir(out_dir, "ImageFolder", create=False)
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
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Export the classification this model made (sha256 prefix or file name), "
            "e.g. the counts before a reclassify; default: the current one.",
        ),
    ] = None,
) -> None:
    """Export tallies as a core-log table (UTF-8 CSV), optionally with a plot.

    A store with a damaged sample is refused (its counts would be wrong); run
    `napari-foram check STORE --repair` first, which sets such samples aside.
    """
    from napari_foram._outputs import check_distinct, check_output_file
    from napari_foram.tally.export import EXPORT_FORMATS, export_csv, plot_tally
    from napari_foram.tally.store import TallyStore

    if fmt not in EXPORT_FORMATS:
        raise CommandError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
    # Nothing is written inside a tally store (the one read included): -o
    # STORE/zarr.json would replace the store's own metadata.
    check_output_file(output, "count sheet")
    if plot is not None:
        if plot.suffix.lower() not in (".png", ".svg"):
            raise CommandError(f"--plot must end in .png or .svg, got {plot.name!r}")
        check_output_file(plot, "plot")
        check_distinct([(output, "count sheet"), (plot, "plot")])
    with TallyStore.open(store, mode="r") as tally:
        export_csv(tally, output, fmt=fmt, model=model)
        typer.echo(f"wrote {output}")
        if plot is not None:
            plot_tally(tally, plot)
            typer.echo(f"wrote {plot}")
        present = set(tally.samples())
        for q in tally.quarantined():
            if q.get("sample_id") in present:
                continue  # counted again since: its old copy stays aside, the new one is in
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
    commit counters. Prints what is wrong; exit status 1 if anything is.
    """
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
