"""`napari-foram reclassify` and `napari-foram model-card`: counted specimens classified
again with another model; what a checkpoint says about itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._app import PrecisionOption, _echo_json, _use_precision, app


@app.command("reclassify")
def reclassify_cmd(
    store: Annotated[Path, typer.Argument(help="A napari-foram tally store (.zarr folder).")],
    model: Annotated[
        str, typer.Option("--model", help="Checkpoint (.safetensors) to classify with, or demo.")
    ],
    sample: Annotated[
        list[str] | None,
        typer.Option("--sample", help="Only this sample (repeat for several); default: all."),
    ] = None,
    mc: Annotated[
        int, typer.Option("--mc", min=0, max=10000, help="MC dropout passes per specimen.")
    ] = 30,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: PrecisionOption = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")] = False,
) -> None:
    """Classify the counted specimens of a store again with another model.

    Nothing is detected or acquired again: the same specimens (rows, crops, reviews)
    get the new model's classification. The earlier one stays as history: each
    sample's provenance lists every model that counted it, the running tally gets a row
    with the new counts, and `export --model SHA` writes the counts of any of them.
    Specimens whose pooled features the store keeps are classified in milliseconds by
    a "pooled" model on the same backbone; the others go through the backbone from
    their crops. A model with classes the store lacks adds them to the store (old
    counts keep theirs); classes are matched by name, never by position.
    """
    from napari_foram._progress import progress_callback
    from napari_foram.classify.loading import load_predictor
    from napari_foram.reclassify import reclassify_store
    from napari_foram.tally.store import TallyStore

    predictor = load_predictor(model, device=device, precision=_use_precision(precision))
    with (
        TallyStore.open(store, mode="a") as tally,
        progress_callback("classifying again", not json_out) as cb,
    ):
        reports = reclassify_store(
            tally, predictor, sample_ids=sample or None, mc_samples=mc, progress=cb
        )
    if json_out:
        _echo_json({"store": str(store), "reports": [r.to_dict() for r in reports]})
        return
    if not reports:
        typer.echo(f"{store}: no counted specimens to classify again")
        return
    for r in reports:
        changes = ", ".join(
            f"{name} {a}->{b}"
            for name, a, b in zip(r.class_names, r.counts_before, r.counts_after, strict=True)
            if a != b
        )
        typer.echo(
            f"{r.sample_id}: {r.rows} specimens classified again from {r.source} in "
            f"{r.seconds:.1f} s ({1000 * r.seconds_per_specimen:.1f} ms each); "
            f"{changes or 'counts unchanged'}"
            + (f"; classes added: {', '.join(r.classes_added)}" if r.classes_added else "")
        )
    typer.echo(
        f"model {predictor.info.sha256[:12]} now classifies them; the earlier counts are "
        f"kept (napari-foram export {store} -o OLD.csv --model SHA)"
    )


@app.command("model-card")
def model_card_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="A napari-foram checkpoint.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the card as JSON.")] = False,
) -> None:
    """What a checkpoint says about itself: classes, backbone, recipe, data digest,
    held-out figures and unsure rule (read from its header; nothing is loaded).
    """
    from napari_foram._outputs import check_input_file
    from napari_foram.classify.backbone import file_sha256
    from napari_foram.classify.checkpoint import read_model_info
    from napari_foram.teaching import model_card, model_card_text

    path = check_input_file(checkpoint, "checkpoint")
    info = read_model_info(path)
    info.path = str(path)
    info.sha256 = file_sha256(path)
    if json_out:
        _echo_json(model_card(info))
    else:
        typer.echo(model_card_text(info))
