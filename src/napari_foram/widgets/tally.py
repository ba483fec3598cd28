"""Foram tally: the count sheet of one sample of a store, its chart and its exports.

A thin widget over the Qt-free tally code (`napari_foram.tally`). The store is opened
read-only for each refresh and closed at once, so the widget never holds a writer's lock
and sees every batch a running scan has committed by the time `refresh` is called (by the
"Refresh" button, or by another widget). No timer: nothing runs unless asked.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, Table

from napari_foram.widgets._qt import scroll_container

if TYPE_CHECKING:
    import napari
    import napari.viewer

    from napari_foram.tally.store import TallyStore

#: Table columns: counts, % of the foram assemblage and its Wilson 95 % interval (%).
TABLE_COLUMNS = ("count", "%", "low 95%", "high 95%")
#: The row of the specimens the model's unsure rule puts in no class.
UNSURE_ROW = "unsure"
TOTAL_FORAMS_ROW = "total forams"
TOTAL_OBJECTS_ROW = "total objects"
#: Cell text where a number does not apply (% of a non-foram class, % of a total).
NOT_APPLICABLE = "-"


def _fmt(value: float, digits: int = 1) -> str:
    """A number for a table cell; NOT_APPLICABLE for NaN."""
    return NOT_APPLICABLE if not math.isfinite(value) else f"{value:.{digits}f}"


def tally_table(summary: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    """Table data (``{"data", "index", "columns"}``) of a `stats.sample_summary`.

    One row per class (count, %, Wilson bounds; the % cells of non-foram classes, such
    as sediment, are NOT_APPLICABLE), the specimens the model's unsure rule puts in no
    class (0 without a rule; in neither the classes nor the forams, but in the objects),
    then the totals of forams and of all objects.
    """
    rows: list[list[Any]] = []
    for j, _ in enumerate(classes):
        rows.append(
            [
                int(summary["counts"][j]),
                _fmt(float(summary["pct"][j])),
                _fmt(float(summary["pct_low"][j])),
                _fmt(float(summary["pct_high"][j])),
            ]
        )
    blank = [NOT_APPLICABLE] * 3
    rows.append([int(summary.get("n_unsure", 0)), *blank])
    rows.append([int(summary["total_forams"]), *blank])
    rows.append([int(summary["total_objects"]), *blank])
    return {
        "data": rows,
        "index": [*classes, UNSURE_ROW, TOTAL_FORAMS_ROW, TOTAL_OBJECTS_ROW],
        "columns": list(TABLE_COLUMNS),
    }


def summary_line(summary: dict[str, Any]) -> str:
    """One line under the table: progress, per gram, P/B, unsure specimens (with a rule),
    specimens worth a look.
    """
    from napari_foram.tally import stats

    parts = [f"{summary['total_forams']} / {summary['target']} forams"]
    per_gram = float(summary["per_gram"])
    parts.append(
        f"{per_gram:.1f} per g" if math.isfinite(per_gram) else "per g: n/a (no dry weight)"
    )
    pb = float(summary["pb_ratio"])
    if math.isfinite(pb):
        parts.append(f"P/B {pb:.2f} ({float(summary['pct_planktic']):.0f} % planktic)")
    rule = stats.UnsureRule.from_dict(summary.get("unsure_rule"))
    if rule.active:
        # The rule that makes them unsure, so the number can be read.
        parts.append(f"{summary['n_unsure']} unsure ({rule.describe()})")
    parts.append(f"{summary['n_uncertain']} uncertain, {summary['n_reviewed']} reviewed")
    return "; ".join(parts)


class TallyWidget(Container):
    """Counts, percentages with Wilson intervals and a chart for a sample of a tally store.

    Parameters
    ----------
    napari_viewer
        The viewer (kept for symmetry with the other widgets; the tally needs no layers).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        # No label column at this level: the table and chart take the full width; the
        # labelled inputs sit in their own small containers.
        super().__init__(scrollable=False, labels=False)
        self._viewer = napari_viewer
        self._store_edit = FileEdit(
            mode=FileDialogMode.EXISTING_DIRECTORY, label="store", nullable=True
        )
        #: The samples of the store as last read (the dropdown's choices).
        self._samples: list[str] = []
        # Choices given as a function: napari calls `reset_choices` on a docked magicgui
        # widget whenever a layer is added or removed, and a plain list would be reset
        # to the (empty) one given here (issue 27: the dropdown emptied, the table stayed).
        self._sample = ComboBox(label="sample", choices=self._sample_choices)
        self._refresh_button = PushButton(text="Refresh")
        self.table = Table(value={"data": [], "index": [], "columns": list(TABLE_COLUMNS)})
        self.table.read_only = True
        self._style_table()
        self.summary_label = Label(value="")
        self.summary_label.native.setWordWrap(True)
        self._export_dir = FileEdit(
            mode=FileDialogMode.EXISTING_DIRECTORY, label="export to", nullable=True
        )
        self._export_csv_button = PushButton(text="Export CSV (wide)")
        self._export_plot_button = PushButton(text="Export plot")
        # Path fields shrink (the path scrolls inside, whole in the tooltip), and "..."
        # instead of "Choose directory": the dock leaves the canvas half a laptop screen.
        for edit in (self._store_edit, self._export_dir):
            edit.choose_btn.text = "..."
            edit.line_edit.native.setMinimumWidth(60)
        self.message = Label(value="choose a tally store (a .zarr folder)")
        self.message.native.setWordWrap(True)
        # The active model of the viewer's widgets (its card as the tooltip).
        self.model_label = Label(value="")
        self.model_label.native.setWordWrap(True)
        #: Everything the dock shows, in one scroll area (`_qt.scroll_container`): the
        #: dock shrinks with the window instead of making it taller (issue 27: ~563 px).
        self.body = Container(
            widgets=[
                self.model_label,
                Container(widgets=[self._store_edit, self._sample], labels=True),
                self._refresh_button,
                self.table,
                self.summary_label,
                Container(widgets=[self._export_dir], labels=True),
                self._export_csv_button,
                self._export_plot_button,
                self.message,
            ],
            labels=False,
        )
        self.scroll_area = scroll_container(self, self.body, height_hint=520, min_height=90)
        #: The last `stats.sample_summary` shown (None before a sample is shown).
        self.summary: dict[str, Any] | None = None
        self.class_names: list[str] = []
        self._figure, self.canvas = self._make_chart()

        self._store_edit.changed.connect(self.refresh)
        self._sample.changed.connect(self._show_sample)
        self._refresh_button.changed.connect(self.refresh)
        self._export_csv_button.changed.connect(self.export_csv)
        self._export_plot_button.changed.connect(self.export_plot)
        self._follow_viewer(napari_viewer)

    def _follow_viewer(self, viewer: Any) -> None:
        """Show the active model; re-read the table when specimens of this store are
        labelled on the canvas or counted again (`_active.Hub`).
        """
        from napari_foram.widgets._active import bind_model_label, hub

        bind_model_label(viewer, self.model_label.native)
        state = hub(viewer)  # bound methods: psygnal holds them weakly
        state.labelled.connect(self._on_labelled)
        state.recounted.connect(self._on_recounted)
        state.reviewed.connect(self._on_recounted)  # Foram review's verdicts

    def _sample_choices(self, _widget: Any = None) -> list[str]:
        return list(self._samples)

    def _on_labelled(self, outcome: Any) -> None:
        self._on_recounted(outcome.store_path)

    def _on_recounted(self, path: Path, _sample_ids: object = None) -> None:
        mine = self.store_path
        try:
            if mine is not None and mine.resolve() == Path(path).resolve():
                self.refresh()
        except RuntimeError:  # the widget is gone
            pass

    def _style_table(self) -> None:
        from qtpy.QtWidgets import QHeaderView, QStyledItemDelegate

        native = self.table.native
        # magicgui's delegate shows every number with 4 decimals; the cells hold text
        # already rounded to what the counts support.
        native.setItemDelegate(QStyledItemDelegate(native))
        native.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        native.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        native.verticalHeader().setDefaultSectionSize(22)
        # Small enough minimums that the whole dock fits a 768 px screen (issue 15); the
        # table scrolls (three rows of totals) and the chart grows when there is room.
        native.setMinimumHeight(110)

    # ------------------------------------------------------------------ chart
    def _make_chart(self) -> tuple[Any, Any]:
        # The object-oriented API on a Qt canvas: no pyplot state, no backend switch.
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        # 3.4 in at 100 dpi: the canvas asks for 340 px, a laptop dock's width.
        figure = Figure(figsize=(3.4, 2.6), layout="constrained")
        canvas = FigureCanvasQTAgg(figure)
        canvas.setMinimumHeight(150)
        # Added after every magicgui widget, so magicgui's own indices stay right.
        self.body.native.layout().addWidget(canvas)
        return figure, canvas

    def _draw_chart(self, sample_id: str | None) -> None:
        from napari_foram.tally import stats
        from napari_foram.tally.export import UNSURE_COLOUR, UNSURE_HATCH, UNSURE_LABEL
        from napari_foram.widgets.layers import class_colour

        self._figure.clear()
        ax = self._figure.add_subplot()
        s = self.summary
        if s is None or sample_id is None or s["total_forams"] == 0:
            unsure = int(s.get("n_unsure", 0)) if s is not None and sample_id else 0
            text = "no foraminifera counted yet" + (f" ({unsure} unsure)" if unsure else "")
            ax.text(0.5, 0.5, text, ha="center", va="center")
            ax.set_axis_off()
        else:
            forams = np.flatnonzero(stats.foram_mask(self.class_names))
            pct = np.asarray(s["pct"])[forams]
            low = np.asarray(s["pct_low"])[forams]
            high = np.asarray(s["pct_high"])[forams]
            names = [self.class_names[j] for j in forams]
            ax.bar(
                np.arange(len(forams)),
                pct,
                yerr=np.vstack([pct - low, high - pct]),
                capsize=3,
                color=[class_colour(self.class_names[j], int(j)) for j in forams],
                edgecolor="black",
                linewidth=0.5,
            )
            ticks = [n.replace("_", "\n") for n in names]
            top = 100.0
            unsure = int(s.get("n_unsure", 0))
            if unsure:
                # Its own grey bar after the classes, as many per 100 forams as there are
                # (the forams' % are not changed by it; see `export.plot_tally`).
                height = 100.0 * unsure / s["total_forams"]
                ax.bar(
                    [len(forams)],
                    [height],
                    color=[UNSURE_COLOUR],
                    hatch=UNSURE_HATCH,
                    edgecolor="black",
                    linewidth=0.5,
                    label=UNSURE_LABEL,
                )
                ticks.append(UNSURE_LABEL)
                top = min(200.0, max(100.0, height))
            ax.set_xticks(np.arange(len(ticks)), ticks, fontsize=7)
            ax.set_ylim(0, top)
            ax.set_ylabel("% of forams" + (" (unsure: per 100)" if unsure else ""), fontsize=8)
            ax.tick_params(axis="y", labelsize=7)
            title = f"{sample_id}: n = {s['total_forams']} (Wilson 95 %)"
            ax.set_title(title + (f", {unsure} unsure" if unsure else ""), fontsize=8)
        self._theme_chart(ax)
        self.canvas.draw_idle()

    def _theme_chart(self, ax: Any) -> None:
        """The chart in the viewer's theme (white on napari's dark theme was a glaring
        box): background and text from napari's public theme registry.
        """
        from napari.utils.theme import get_theme

        try:
            theme = get_theme(str(getattr(self._viewer, "theme", "dark")))
            bg, fg = theme.background.as_hex(), theme.text.as_hex()
        except (KeyError, ValueError, AttributeError):  # a theme napari does not know
            return
        self._figure.set_facecolor(bg)
        ax.set_facecolor(bg)
        ax.tick_params(colors=fg, which="both")
        for spine in ax.spines.values():
            spine.set_color(fg)
        for text in (ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts):
            text.set_color(fg)
        for line in ax.lines:  # the Wilson error bars
            line.set_color(fg)
        for collection in ax.collections:
            collection.set_color(fg)

    # ------------------------------------------------------------------ data
    @property
    def store_path(self) -> Path | None:
        """The chosen store folder, or None."""
        value = self._store_edit.value
        return value if isinstance(value, Path) and str(value) else None

    def set_store(self, path: str | Path | None) -> None:
        """Point the widget at a store (e.g. the one a scan is writing) and refresh."""
        self._store_edit.value = None if path is None else Path(path)

    @property
    def sample_id(self) -> str | None:
        """The chosen sample, or None."""
        value = self._sample.value
        return str(value) if value is not None else None

    def _open(self) -> TallyStore | None:
        """The store opened read-only; None (and a message) when it cannot be opened."""
        from napari_foram.tally.store import TallyStore

        path = self.store_path
        if path is None:
            self.message.value = "choose a tally store (a .zarr folder)"
            return None
        try:
            return TallyStore.open(path, mode="r")
        except (ValueError, OSError) as exc:
            self.message.value = _one_line(f"cannot open store: {exc}")
            return None

    def _clear(self) -> None:
        self.summary = None
        self.table.value = {"data": [], "index": [], "columns": list(TABLE_COLUMNS)}
        self.summary_label.value = ""
        self._draw_chart(None)

    def refresh(self, *_: object) -> None:
        """Re-read the store: the sample list, then the chosen sample's tally."""
        store = self._open()
        if store is None:
            self._set_samples([])
            self._clear()
            return
        with store:
            self.class_names = store.class_names
            samples = store.samples()
        current = self.sample_id
        # Changing the choices may emit `changed`; block it so a refresh reads once.
        with self._sample.changed.blocked():
            self._set_samples(samples)
            if samples:
                self._sample.value = current if current in samples else samples[0]
        if not samples:
            self.message.value = f"{self.store_path}: no samples yet"
            self._clear()
            return
        self._show_sample()

    def _set_samples(self, samples: list[str]) -> None:
        self._samples = list(samples)
        self._sample.reset_choices()

    def _show_sample(self, *_: object) -> None:
        sid = self.sample_id
        if sid is None:
            self._clear()
            return
        store = self._open()
        if store is None:
            self._clear()
            return
        try:
            with store:
                self.class_names = store.class_names
                # The store's summary applies the model's unsure rule, as the exports do.
                summary = store.sample_summary(sid)
        except (ValueError, OSError, LookupError, TypeError) as exc:
            self.message.value = _one_line(f"cannot read sample {sid!r}: {exc}")
            self._clear()
            return
        self.summary = summary
        self.table.value = tally_table(summary, self.class_names)
        self.summary_label.value = summary_line(summary)
        self.message.value = f"{sid}: {summary['n_rows']} specimen records"
        self._draw_chart(sid)

    # ------------------------------------------------------------------ export
    def _export_target(self, suffix: str) -> Path | None:
        path = self.store_path
        if path is None:
            return None
        folder = self._export_dir.value
        base = folder if isinstance(folder, Path) and str(folder) else path.parent
        return base / f"{path.name.removesuffix('.zarr')}{suffix}"

    def export_csv(self, *_: object) -> Path | None:
        """Write the wide count sheet (every sample) beside the store or in "export to"."""
        from napari_foram.tally.export import export_csv

        return self._export(lambda store, out: export_csv(store, out, fmt="wide"), "_counts.csv")

    def export_plot(self, *_: object) -> Path | None:
        """Write the core-log plot (every sample) as PNG beside the store or in "export to"."""
        from napari_foram.tally.export import plot_tally

        return self._export(plot_tally, "_tally.png")

    def _export(self, write: Any, suffix: str) -> Path | None:
        out = self._export_target(suffix)
        store = self._open()
        if store is None or out is None:
            return None
        try:
            with store:
                written = Path(write(store, out))
        except (ValueError, OSError, LookupError, TypeError) as exc:
            self.message.value = _one_line(f"export failed: {exc}")
            return None
        self.message.value = f"wrote {written}"
        return written


def _one_line(text: str) -> str:
    return " ".join(text.split())
