"""Count sheets (CSV) and core-log plots from a tally store.

Three CSV layouts (science.md, "What a count sheet / core log holds"):

- ``wide``: one row per sample, one column group per class (StrataBugs / PANGAEA style);
- ``long``: one row per sample x class;
- ``specimens``: one row per specimen (no crops).

Text cells are guarded against spreadsheet formula injection: a text cell starting with
``= + - @``, a tab or a carriage return gets a leading ``'``. Numbers are written as
numbers (shortest round-trip form); missing values are empty cells.
"""

from __future__ import annotations

import contextlib
import csv
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram.tally import stats

if TYPE_CHECKING:
    import os

    from matplotlib.figure import Figure

    from napari_foram.tally.store import TallyStore

#: Record fields, in count-sheet order, written at the start of every sample row.
RECORD_COLUMNS = (
    "sample_id",
    "site_hole",
    "core",
    "section",
    "interval_top_cm",
    "interval_bottom_cm",
    "depth",
    "depth_unit",
    "depth_scale",
    "sample_type",
    "size_fraction_um",
    "split_factor",
    "dry_weight_g",
    "operator",
    "notes",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: How unsure specimens are drawn (plots, napari layers): a light grey that is no
#: class's colour (matplotlib's C7 and the sediment colour are darker greys), hatched
#: in plots.
UNSURE_COLOUR = (0.85, 0.85, 0.85, 1.0)
UNSURE_HATCH = "///"
UNSURE_LABEL = "unsure"

#: Colours of the study's four classes (RGBA 0-1); other class lists use a cycle.
CLASS_COLOURS = {
    "planktic": (0.20, 0.75, 1.00, 1.0),
    "calcareous_benthic": (1.00, 0.85, 0.15, 1.0),
    "agglutinated_benthic": (1.00, 0.45, 0.10, 1.0),
    "sediment": (0.65, 0.65, 0.65, 1.0),
}
_CYCLE = [
    (0.9, 0.3, 0.3, 1.0),
    (0.3, 0.9, 0.3, 1.0),
    (0.6, 0.4, 1.0, 1.0),
    (1.0, 0.5, 0.8, 1.0),
    (0.4, 1.0, 0.9, 1.0),
    (0.9, 0.9, 0.5, 1.0),
]


def class_colour(name: str, index: int) -> tuple[float, float, float, float]:
    """A stable colour for a class name."""
    return CLASS_COLOURS.get(name, _CYCLE[index % len(_CYCLE)])


def safe_text(text: str) -> str:
    """Prefix ``'`` to text a spreadsheet would read as a formula (= + - @ tab CR first)."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _cell(value: Any) -> str:
    """One CSV cell: text made formula-safe, numbers in shortest form, missing as ''."""
    if value is None:
        return ""
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            return ""
        # The shortest text that reads back as the same number in its own precision
        # (a float32 probability 0.1 stays "0.1", not "0.10000000149").
        return np.format_float_positional(value, unique=True, trim="-")
    raise ValueError(f"cannot write a {type(value).__name__} to CSV")


def class_slug(name: str) -> str:
    """Column-name form of a class name: "Calcareous benthic" -> "calcareous_benthic"."""
    slug = re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")
    return slug or "class"


def _slugs(classes: Sequence[str]) -> list[str]:
    slugs = [class_slug(c) for c in classes]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"class names {list(classes)} give clashing column names {slugs}")
    return slugs


def _model_id(store: TallyStore, sample_id: str) -> tuple[str, Any]:
    """(sha256 of the model(s) whose classification the sample holds, their MC N).

    Models since the sample's last reclassification (several, joined by ';', when a
    scan changed model midway); the models a reclassification replaced are history
    (`TallyStore.classification_history`), not this classification's.
    """
    history = store.provenance_history(sample_id)
    start = max((i for i, e in enumerate(history) if e.get("reclassified")), default=0)
    shas: list[str] = []
    for entry in history[start:]:
        sha = entry.get("model_sha256") or entry.get("model_id")
        if sha and str(sha) not in shas:
            shas.append(str(sha))
    mc = store.latest_provenance(sample_id, "mc_samples")
    return ";".join(shas), mc


class ClassifiedBy:
    """A read-only view of a store whose samples read as one model classified them:
    the current classification where that model made it, else the history entry it
    made (`TallyStore.read_classification`). `model` is a prefix of the model's sha256
    (at least 6 characters) or its file name as the provenance records it.
    """

    def __init__(self, store: TallyStore, model: str) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ValueError("name a model by its sha256 (at least 6 characters) or file name")
        self._store = store
        self._model = model.strip()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _matches(self, entry: dict[str, Any]) -> bool:
        sha = str(entry.get("model_sha256") or "")
        if len(self._model) >= 6 and sha.startswith(self._model.lower()):
            return True
        return bool(entry.get("model_name")) and entry.get("model_name") == self._model

    def _which(self, sample_id: str) -> int | None:
        """None: the sample's current classification; i: history entry i."""
        history = self._store.provenance_history(sample_id)
        start = max((i for i, e in enumerate(history) if e.get("reclassified")), default=0)
        if any(self._matches(e) for e in history[start:]):
            return None
        for i, entry in reversed(list(enumerate(self._store.classification_history(sample_id)))):
            if self._matches(entry):
                return i
        raise ValueError(
            f"model {self._model!r} never classified sample {sample_id!r} in "
            f"{self._store.path} (see its provenance)"
        )

    def read_specimens(self, sample_id: str, **kwargs: Any) -> dict[str, np.ndarray]:
        """The sample's rows as `model` classified them: the current ones, or its history
        entry's; a one-line `ValueError` when `model` never classified the sample.
        """
        which = self._which(sample_id)
        if which is None:
            return self._store.read_specimens(sample_id, **kwargs)
        data = self._store.read_classification(sample_id, which)
        columns = kwargs.get("columns")
        return data if columns is None else {k: data[k] for k in ("row", *columns)}

    def unsure_rule(self, sample_id: str) -> stats.UnsureRule:
        """The unsure rule `model` classified the sample with."""
        which = self._which(sample_id)
        if which is None:
            return self._store.unsure_rule(sample_id)
        entry = self._store.classification_history(sample_id)[which]
        return stats.UnsureRule.from_dict(entry.get("unsure_rule") or {})

    def sample_summary(self, sample_id: str, **kwargs: Any) -> dict[str, Any]:
        """`stats.sample_summary` of the sample as `model` classified it, with its rule."""
        return stats.sample_summary(
            self.read_specimens(sample_id),
            self._store.sample_record(sample_id),
            self._store.class_names,
            unsure_rule=self.unsure_rule(sample_id),
            **kwargs,
        )

    def model_id(self, sample_id: str) -> tuple[str, Any]:
        """(sha256, MC N) of `model`'s classification of the sample."""
        which = self._which(sample_id)
        if which is None:
            return _model_id(self._store, sample_id)
        entry = self._store.classification_history(sample_id)[which]
        return str(entry.get("model_sha256", "")), entry.get("mc_samples")


def _write_csv(out_path: Path, table: Sequence[Column], rows: Sequence[Any]) -> None:
    """Write a count sheet: the table's column names, then each row's values read by its
    columns (so header and rows cannot drift apart).
    """
    tmp = out_path.with_name(out_path.name + ".part")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole, then renamed: a crash never leaves a half count sheet under the name.
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([safe_text(name) for name, _ in table])
            for row in rows:
                writer.writerow([_cell(value(row)) for _, value in table])
        tmp.replace(out_path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # never leave a .part beside the sheet
            tmp.unlink(missing_ok=True)
        raise ValueError(
            f"{out_path}: cannot write the count sheet ({exc.strerror or type(exc).__name__})"
        ) from None


def check_samples_readable(store: TallyStore, samples: Sequence[str] | None) -> list[str]:
    """The samples to export (all, or `samples`), after refusing damaged ones.

    A damaged sample would read as counts of 0 (a missing chunk reads as fill values) or
    be left out without a word (an unreadable ``zarr.json``): both are refused here with
    one line naming the sample and what is wrong. ValueError.
    """
    damaged = store.damaged_samples()
    ids = store.samples() if samples is None else list(samples)
    wanted = damaged if samples is None else {s: damaged[s] for s in ids if s in damaged}
    if wanted:
        first = next(iter(wanted.values()))
        more = f" (and {len(wanted) - 1} more damaged sample(s))" if len(wanted) > 1 else ""
        raise ValueError(
            f"{store.path}: {first}{more}; nothing exported: run 'napari-foram check "
            f"{store.path} --repair' to set damaged samples aside, or export named samples"
        )
    return ids


def export_csv(
    store: TallyStore,
    out_path: str | os.PathLike[str],
    *,
    fmt: str = "wide",
    samples: Sequence[str] | None = None,
    uncertain_entropy: float = stats.DEFAULT_UNCERTAIN_ENTROPY,
    target: int = stats.DEFAULT_TARGET,
    z: float = 1.96,
    model: str | None = None,
) -> Path:
    """Write the store's tallies as a UTF-8 CSV count sheet.

    Parameters
    ----------
    store
        An open `TallyStore` (read or append mode).
    out_path
        The CSV file to write (replaced if it exists).
    fmt
        "wide" (one row per sample), "long" (one row per sample x class) or "specimens"
        (one row per specimen, no crops).
    samples
        Sample ids to export (default: all, in the order they were added).
    uncertain_entropy
        Entropy (nats) above which an unreviewed specimen counts as flagged uncertain.
    target
        Target count per sample for the progress column.
    z
        Normal quantile of the Wilson intervals (1.96: 95 %).
    model
        Export the classification this model made (a sha256 prefix or its file name;
        see `ClassifiedBy`), e.g. the counts before a reclassification; default: each
        sample's current classification.

    Returns
    -------
    Path of the written file.

    Notes
    -----
    Wide columns: the record fields; ``count_<class>`` for every class; ``total_objects``
    and ``total_forams`` (without non-foram classes such as sediment); ``pct_<class>``,
    ``pct_<class>_low``, ``pct_<class>_high`` (% of the foram assemblage with its Wilson
    interval) for every foram class; ``expected_<class>`` and ``expected_<class>_sd`` (from
    the MC-dropout probabilities); ``specimens_per_gram``; ``pb_ratio``;
    ``planktic_pct_of_pb`` (planktic / (planktic + benthic));
    ``n_uncertain``; ``uncertain_entropy``; ``n_reviewed`` (counted specimens a person
    has looked at: confirmed, relabelled or dubious); ``n_dubious`` (counted as predicted,
    flagged by a person); ``n_duplicates``; ``n_rejected``; ``n_rows``; ``target``;
    ``progress``; ``model_sha256``; ``mc_samples``; ``software_version``; ``export_date``;
    ``unsure``, ``unsure_measure``, ``unsure_threshold`` (see below).
    Counts use reviewed labels (a relabelled specimen counts as its reviewed class, a
    rejected one not at all). Long rows repeat the sample's ``n_reviewed``,
    ``n_dubious`` and ``unsure`` on every class row.

    Unsure specimens: when the model that counted a sample carries an unsure rule
    (`TallyStore.unsure_rule`), the specimens it calls unsure and no person has reviewed
    are in no class count, nor in ``total_forams``, the percentages, per gram or P/B;
    ``unsure`` says how many there are (``total_objects`` includes them), and the rule's
    measure and threshold follow (empty without a rule, where ``unsure`` is 0). The
    expected counts still use every counted specimen's probabilities. In the specimens
    layout, ``unsure`` (1/0) marks them; their ``class`` column keeps the predicted class.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(map(repr, EXPORT_FORMATS))}, got {fmt!r}")
    out = Path(out_path)
    classes = store.class_names
    ids = check_samples_readable(store, samples)
    view: Any = store if model is None else ClassifiedBy(store, model)
    known = set(store.samples())
    missing = [s for s in ids if s not in known]
    if missing:
        raise ValueError(f"no sample(s) {', '.join(map(repr, missing))} in {store.path}")
    export_date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    version = str(store.attrs.get("software", {}).get("napari_foram", ""))

    if fmt == "specimens":
        specimens: list[_SpecimenRow] = []
        for sid in ids:
            d = view.read_specimens(sid)
            sample = _SpecimenSample(
                sid,
                d,
                stats.final_labels(d),
                stats.unsure_mask(d, view.unsure_rule(sid)),
                store.reviewers(sid),
            )
            specimens.extend(_SpecimenRow(sample, i) for i in range(len(d["row"])))
        _write_csv(out, _specimen_table(classes), specimens)
        return out

    summaries = []
    for sid in ids:
        summary = view.sample_summary(sid, target=target, z=z, uncertain_entropy=uncertain_entropy)
        sha, mc = _model_id(store, sid) if model is None else view.model_id(sid)
        summaries.append(_SampleRow(store.sample_record(sid).to_dict(), summary, sha, mc))
    if fmt == "long":
        class_rows = [_ClassRow(s, j) for s in summaries for j in range(len(classes))]
        _write_csv(out, _long_table(classes, export_date), class_rows)
    else:
        _write_csv(out, _wide_table(classes, uncertain_entropy, version, export_date), summaries)
    return out


#: The CSV layouts of `export_csv`, in the order the CLI and the widgets offer them.
EXPORT_FORMATS: tuple[str, ...] = ("wide", "long", "specimens")

#: One column of a count sheet: its name and how a row's value is read.
Column = tuple[str, Callable[[Any], Any]]


@dataclass(frozen=True)
class _SampleRow:
    """A sample as the wide layout writes it (one row)."""

    record: dict[str, Any]  # `SampleRecord.to_dict`
    summary: dict[str, Any]  # `TallyStore.sample_summary`
    sha: str  # the model(s) that classified it (`_model_id`)
    mc: Any  # their MC passes as the provenance records them


@dataclass(frozen=True)
class _ClassRow:
    """One class of a sample (a row of the long layout)."""

    sample: _SampleRow
    j: int  # class index


@dataclass(frozen=True)
class _SpecimenSample:
    """What every specimen row of one sample shares."""

    sample_id: str
    d: dict[str, np.ndarray]  # the sample's columns (`TallyStore.read_specimens`)
    labels: np.ndarray  # `stats.final_labels`: counted class or -1
    unsure: np.ndarray  # `stats.unsure_mask`
    reviewers: list[str]


@dataclass(frozen=True)
class _SpecimenRow:
    """One specimen (a row of the specimens layout)."""

    sample: _SpecimenSample
    i: int  # row within the sample

    def col(self, name: str) -> Any:
        return self.sample.d[name][self.i]


def _wide_table(
    classes: Sequence[str], uncertain_entropy: float, version: str, export_date: str
) -> list[Column]:
    """The wide layout's columns (see `export_csv`): one row per `_SampleRow`."""
    slugs = _slugs(classes)
    forams = np.flatnonzero(stats.foram_mask(classes)).tolist()

    def summary(key: str) -> Callable[[_SampleRow], Any]:
        return lambda r: r.summary[key]

    def per_class(key: str, j: int) -> Callable[[_SampleRow], Any]:
        return lambda r: r.summary[key][j]

    def mc_cell(r: _SampleRow) -> Any:
        mc = r.mc
        return mc if isinstance(mc, (int, float)) else (str(mc) if mc is not None else None)

    return [
        *_record_columns(RECORD_COLUMNS, lambda r: r.record),
        *[(f"count_{s}", per_class("counts", j)) for j, s in enumerate(slugs)],
        ("total_objects", summary("total_objects")),
        ("total_forams", summary("total_forams")),
        *[
            (f"pct_{slugs[j]}{end}", per_class(f"pct{end}", j))
            for j in forams
            for end in ("", "_low", "_high")
        ],
        *[
            (f"expected_{s}{end}", per_class(f"expected{end}", j))
            for j, s in enumerate(slugs)
            for end in ("", "_sd")
        ],
        ("specimens_per_gram", summary("per_gram")),
        ("pb_ratio", summary("pb_ratio")),
        ("planktic_pct_of_pb", summary("pct_planktic")),
        ("n_uncertain", summary("n_uncertain")),
        ("uncertain_entropy", lambda r: float(uncertain_entropy)),
        ("n_reviewed", summary("n_reviewed")),
        ("n_dubious", summary("n_dubious")),
        ("n_duplicates", summary("n_duplicates")),
        ("n_rejected", summary("n_rejected")),
        ("n_rows", summary("n_rows")),
        ("target", summary("target")),
        ("progress", summary("progress")),
        ("model_sha256", lambda r: r.sha),
        ("mc_samples", mc_cell),
        ("software_version", lambda r: version),
        ("export_date", lambda r: export_date),
        ("unsure", summary("n_unsure")),
        ("unsure_measure", lambda r: r.summary["unsure_rule"].get("measure")),
        ("unsure_threshold", lambda r: r.summary["unsure_rule"].get("threshold")),
    ]


def _long_table(classes: Sequence[str], export_date: str) -> list[Column]:
    """The long layout's columns (see `export_csv`): one row per `_ClassRow`."""
    forams = stats.foram_mask(classes)

    def summary(key: str) -> Callable[[_ClassRow], Any]:
        return lambda r: r.sample.summary[key]

    def of_class(key: str) -> Callable[[_ClassRow], Any]:
        return lambda r: r.sample.summary[key][r.j]

    return [
        *_record_columns(RECORD_COLUMNS[:9], lambda r: r.sample.record),
        ("class", lambda r: classes[r.j]),
        ("count", of_class("counts")),
        ("is_foram", lambda r: bool(forams[r.j])),
        ("pct", of_class("pct")),
        ("pct_low", of_class("pct_low")),
        ("pct_high", of_class("pct_high")),
        ("expected", of_class("expected")),
        ("expected_sd", of_class("expected_sd")),
        ("total_forams", summary("total_forams")),
        ("n_reviewed", summary("n_reviewed")),
        ("n_dubious", summary("n_dubious")),
        ("model_sha256", lambda r: r.sample.sha),
        ("export_date", lambda r: export_date),
        ("unsure", summary("n_unsure")),
    ]


def _specimen_table(classes: Sequence[str]) -> list[Column]:
    """The specimens layout's columns (see `export_csv`): one row per `_SpecimenRow`."""
    slugs = _slugs(classes)

    def column(name: str) -> Callable[[_SpecimenRow], Any]:
        return lambda r: r.col(name)

    def bbox(k: int) -> Callable[[_SpecimenRow], Any]:
        return lambda r: r.col("bbox")[k]

    def per_class(name: str, j: int) -> Callable[[_SpecimenRow], Any]:
        return lambda r: r.col(name)[j]

    def counted_class(r: _SpecimenRow) -> str:
        label = r.sample.labels[r.i]
        return classes[label] if label >= 0 else ""

    def reviewed_class(r: _SpecimenRow) -> str:
        k = r.col("reviewed_class")
        return classes[int(k)] if k >= 0 else ""

    def review_time(r: _SpecimenRow) -> str:
        t = float(r.col("review_time"))
        if not math.isfinite(t):
            return ""
        return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")

    def reviewer(r: _SpecimenRow) -> str:
        who = r.col("reviewer_index")
        return r.sample.reviewers[who] if who >= 0 else ""

    return [
        ("sample_id", lambda r: r.sample.sample_id),
        *[
            (name, column(name))
            for name in (
                "row",
                "frame_index",
                "stage_x_um",
                "stage_y_um",
                "centroid_y",
                "centroid_x",
            )
        ],
        *[
            (f"bbox_{end}", bbox(k))
            for k, end in enumerate(("min_row", "min_col", "max_row", "max_col"))
        ],
        ("area_px", column("area_px")),
        ("predicted_class", lambda r: classes[int(r.col("class_index"))]),
        ("class", counted_class),
        ("counted", lambda r: bool(r.sample.labels[r.i] >= 0)),
        *[(f"prob_{s}", per_class("mean_probs", j)) for j, s in enumerate(slugs)],
        *[(f"var_{s}", per_class("variance", j)) for j, s in enumerate(slugs)],
        ("entropy", column("entropy")),
        ("mutual_information", column("mutual_information")),
        ("vote_fraction", column("vote_fraction")),
        ("review_status", lambda r: _status_name(int(r.col("review_status")))),
        ("reviewed_class", reviewed_class),
        ("review_time", review_time),
        ("duplicate_of", column("duplicate_of")),
        ("reviewer", reviewer),
        ("unsure", lambda r: bool(r.sample.unsure[r.i])),
        ("feature_distance", column("feature_distance")),
    ]


def _record_columns(
    names: Sequence[str], record_of: Callable[[Any], dict[str, Any]]
) -> list[Column]:
    """Columns of sample record fields, read from each row's record."""

    def field(name: str) -> Callable[[Any], Any]:
        return lambda r: record_of(r)[name]

    return [(name, field(name)) for name in names]


def _status_name(code: int) -> str:
    from napari_foram.tally.store import REVIEW_STATUS_NAMES

    return REVIEW_STATUS_NAMES.get(code, str(code))


def plot_tally(
    store: TallyStore,
    out_path: str | os.PathLike[str],
    *,
    samples: Sequence[str] | None = None,
    z: float = 1.96,
    dpi: int = 120,
) -> Path:
    """Plot a core log of the store: % of each foram class against depth, and a stacked
    bar per sample.

    Left panel: % of the foraminiferal assemblage per class against depth (depth axis
    downward, as on a core log), with Wilson intervals as error bars. Samples without a
    depth are placed by their order and the axis says so. Right panel: the assemblage of
    each sample as a stacked horizontal bar (%), samples in the same vertical order. The
    specimens the model's unsure rule leaves out of the classes (see `export_csv`)
    follow the assemblage as a hatched grey segment labelled "unsure", as many per 100
    forams as there are (the axis stops at 200; the row labels give the numbers).

    Parameters
    ----------
    out_path
        ``.png`` or ``.svg`` file.

    Returns
    -------
    Path of the written file.
    """
    out = Path(out_path)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".svg"):
        raise ValueError(f"plot file must end in .png or .svg, got {out.name!r}")
    fig = tally_figure(store, samples=samples, z=z)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=dpi, format=suffix[1:])
    except OSError as exc:
        raise ValueError(
            f"{out}: cannot write the plot ({exc.strerror or type(exc).__name__})"
        ) from None
    return out


def tally_figure(
    store: TallyStore, *, samples: Sequence[str] | None = None, z: float = 1.96
) -> Figure:
    """The figure `plot_tally` writes (axes: depth panel, bar panel), not saved."""
    # The object-oriented API with an Agg canvas: no pyplot, no global backend switch,
    # so it is safe inside napari's Qt process and headless alike.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    classes = store.class_names
    forams = stats.foram_mask(classes)
    foram_idx = np.flatnonzero(forams)
    ids = check_samples_readable(store, samples)
    if not ids:
        raise ValueError(f"no samples to plot in {store.path}")
    records = [store.sample_record(s) for s in ids]
    summaries = [store.sample_summary(s, z=z) for s in ids]
    depths = [r.depth for r in records]
    by_depth = all(d is not None for d in depths)
    if by_depth:
        order = np.argsort(np.asarray(depths, dtype=np.float64), kind="stable")
        y = np.asarray(depths, dtype=np.float64)
        units = {r.depth_unit for r in records}
        scales = {r.depth_scale for r in records if r.depth_scale}
        ylabel = f"depth ({', '.join(sorted(units))})"
        if scales:
            ylabel += f" [{', '.join(sorted(scales))}]"
    else:
        order = np.arange(len(ids))
        y = np.arange(len(ids), dtype=np.float64)
        ylabel = "sample (order added; not all samples have a depth)"

    fig = Figure(figsize=(11, max(4.0, 0.35 * len(ids) + 2.5)), layout="constrained")
    FigureCanvasAgg(fig)
    ax_depth, ax_bar = fig.subplots(1, 2, sharey=not by_depth, width_ratios=(3, 2))
    # The viewer's colours (points, live view, tally chart): one colour per class everywhere.
    colours = [class_colour(name, i) for i, name in enumerate(classes)]
    for j in foram_idx:
        pct = np.array([s["pct"][j] for s in summaries])[order]
        low = np.array([s["pct_low"][j] for s in summaries])[order]
        high = np.array([s["pct_high"][j] for s in summaries])[order]
        ax_depth.errorbar(
            pct,
            y[order],
            xerr=np.vstack([pct - low, high - pct]),
            marker="o",
            ms=4,
            capsize=2,
            color=colours[j],
            label=classes[j],
        )
    ax_depth.set_xlabel(f"% of foraminifera (Wilson {_conf_label(z)} interval)")
    ax_depth.set_ylabel(ylabel)
    ax_depth.set_xlim(0, 100)
    ax_depth.grid(alpha=0.3)
    ax_depth.legend(fontsize="small", loc="best")
    if len(ids) == 1:
        pad = 1.0 if not by_depth else max(1.0, abs(y[0]) * 0.05)
        ax_depth.set_ylim(y[0] - pad, y[0] + pad)
    ax_depth.invert_yaxis()  # depth grows downward, as on a core log

    # Stacked bars: evenly spaced rows in depth order, labelled with id (and depth).
    rows = np.arange(len(ids))
    left = np.zeros(len(ids))
    for j in foram_idx:
        pct = np.nan_to_num(np.array([s["pct"][j] for s in summaries])[order])
        ax_bar.barh(rows, pct, left=left, color=colours[j], label=classes[j], height=0.7)
        left += pct
    # Unsure specimens (the model's unsure rule) are in no class and not in the 100 %:
    # a grey segment after the assemblage, as many per 100 forams as there are (the
    # whole bar when no foram was identified), so the class segments stay the CSV's %.
    n_unsure = np.array([s["n_unsure"] for s in summaries], dtype=np.float64)[order]
    n_forams = np.array([s["total_forams"] for s in summaries], dtype=np.float64)[order]
    x_max = 100.0
    if n_unsure.any():
        width = np.where(n_forams > 0, 100.0 * n_unsure / np.maximum(n_forams, 1), 100.0)
        width = np.where(n_unsure > 0, width, 0.0)
        start = np.where(n_forams > 0, 100.0, 0.0)
        ax_bar.barh(
            rows,
            width,
            left=start,
            color=UNSURE_COLOUR,
            hatch=UNSURE_HATCH,
            edgecolor="0.45",
            linewidth=0.5,
            label=UNSURE_LABEL,
            height=0.7,
        )
        # Room for the unsure segments, up to twice the assemblage (the labels say n).
        x_max = min(200.0, max(100.0, float((start + width).max())))
        ax_bar.axvline(100.0, color="black", linewidth=0.6)
        ax_bar.legend(fontsize="small", loc="lower right")
    labels = []
    for i in order:
        n = summaries[i]["total_forams"]
        depth = f" @ {depths[i]:g}" if depths[i] is not None else ""
        unsure = summaries[i]["n_unsure"]
        labels.append(f"{ids[i]}{depth} (n={n}" + (f", {unsure} unsure)" if unsure else ")"))
    if by_depth:
        ax_bar.set_yticks(rows, labels, fontsize="small")
        ax_bar.set_ylim(len(ids) - 0.5, -0.5)  # first (shallowest) sample on top
    else:
        ax_bar.set_yticks(rows, labels, fontsize="small")
    ax_bar.set_xlim(0, x_max)
    ax_bar.set_xlabel(
        "% of foraminifera" + ("; grey: unsure, per 100 forams" if n_unsure.any() else "")
    )
    ax_bar.set_title("assemblage per sample", fontsize="medium")
    fig.suptitle(f"napari-foram tally: {store.path.name}")
    return fig


def _conf_label(z: float) -> str:
    conf = math.erf(z / math.sqrt(2.0)) * 100.0
    return f"{conf:.0f} %"
