"""Foram live's forms: the microscope, the sample record and the counting actions.

A mixin of `LiveWidget` (as `_live_display.LiveDisplay` is), kept apart so that the
widget's file holds its actions, threads and read-outs, and this one how its sections
are built: `LiveWidget.__init__` calls one builder per section.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_foram.widgets._live_controls import config_loader
from napari_foram.widgets._qt import spin, with_browse

if TYPE_CHECKING:
    from pathlib import Path

#: The sample form: `SampleRecord` fields and their labels (* required).
SAMPLE_FORM = (
    ("sample_id", "sample id *"),
    ("site_hole", "site / hole"),
    ("core", "core"),
    ("section", "section"),
    ("interval_top_cm", "top (cm)"),
    ("interval_bottom_cm", "bottom (cm)"),
    ("depth", "depth"),
    ("depth_unit", "depth unit"),
    ("size_fraction_um", "fraction (um)"),
    ("split_factor", "split factor"),
    ("dry_weight_g", "dry weight (g)"),
    ("operator", "operator"),
    ("notes", "notes"),
)


class LiveForms:
    """Builders of Foram live's sections; the actions they connect are `LiveWidget`'s."""

    _download_choice: bool | None
    connect_microscope: Any
    start_sample: Any
    snap: Any
    start_live: Any
    start_scan: Any
    stop: Any
    _toggle_pause: Any
    _choose_download: Any
    _config_chosen: Any
    _load_configuration: Any
    _browse_adapters: Any

    # ------------------------------------------------------------------ building
    def _build_microscope(
        self,
        config: str | Path | None,
        adapter_path: str | Path | None,
        seed: int,
        store_path: str | Path | None,
        mc_samples: int,
    ) -> QWidget:
        """Which microscope, where its configuration and adapters are, the store."""
        from napari_foram.microscope import DEFAULT_TARGET_COUNT, default_store_path

        self.source = QComboBox()
        self.source.addItems(
            [
                "Simulated tray",
                "Micro-Manager configuration",
                # The core napari-micromanager / pymmcore-gui opened (CMMCorePlus.instance()).
                "Micro-Manager already open in this napari",
            ]
        )
        # Long entries may not widen the dock: the box shows what fits, the list all.
        self.source.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.source.setMinimumContentsLength(14)
        # pymmcore-widgets' configuration loader; its Load connects Foram live.
        self.config_loader = config_loader(self._load_configuration)
        self.config_path = self.config_loader.cfg_LineEdit
        self.config_path.setText(str(config or ""))
        self.config_path.textChanged.connect(self._config_chosen)
        if config:
            self.source.setCurrentIndex(1)
        self.adapter_path = QLineEdit(str(adapter_path or ""))
        self.adapter_path.setPlaceholderText("default: $MICROMANAGER_PATH or `mmcore use`")
        self.adapter_path.setToolTip(
            "Micro-Manager's installation folder (its device adapters, mmgr_dal_*)"
        )
        self.seed = spin(QSpinBox(), 0, 1_000_000, seed)
        self.store_path = QLineEdit(str(store_path or default_store_path()))
        self.mc = spin(QSpinBox(), 1, 1000, mc_samples)
        self.target = spin(QSpinBox(), 1, 100_000, DEFAULT_TARGET_COUNT)
        self.connect_button = QPushButton("Connect")
        self.connect_button.clicked.connect(self.connect_microscope)
        form = QFormLayout()
        # In a narrow dock a label goes above its field instead of pushing it off.
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        form.addRow("microscope", self.source)
        form.addRow("configuration", self.config_loader)
        form.addRow("adapter folder", with_browse(self.adapter_path, self._browse_adapters))
        # Raw frames of the next tray scan, for audits and recounts (blank: not kept).
        self.raw_path = QLineEdit()
        self.raw_path.setPlaceholderText("keep raw frames: scan.ome.zarr (optional)")
        form.addRow("raw frames", self.raw_path)
        form.addRow("tray seed", self.seed)
        form.addRow("tally store", self.store_path)
        form.addRow("MC dropout passes", self.mc)
        form.addRow("target count", self.target)
        # The demo model stands on ImageNet VGG16: a first run fetches torchvision's
        # weights (528 MB) unless told not to, here, by the caller or by the environment.
        # The box starts ticked without reading the environment (that needs torch, which
        # this widget loads only when it connects); ticked but not chosen passes "no
        # choice", so $NAPARI_FORAM_NO_DOWNLOAD still decides, and a click is a choice.
        self.download_weights = QCheckBox("download weights if missing")
        self.download_weights.setChecked(self._download_choice is not False)
        self.download_weights.setToolTip(
            "The demo model stands on ImageNet VGG16 features. Weights not on this machine "
            "($NAPARI_FORAM_VGG16_WEIGHTS or torch hub's cache) are downloaded by "
            "torchvision (528 MB, once, checksum checked) unless this box is unticked or "
            "$NAPARI_FORAM_NO_DOWNLOAD=1 is set; without them, or offline, the demo model "
            "falls back to a random backbone (far less accurate) and says so."
        )
        self.download_weights.toggled.connect(self._choose_download)
        connect_row = QHBoxLayout()
        connect_row.addWidget(self.connect_button)
        connect_row.addWidget(self.download_weights)
        form.addRow(connect_row)
        box = QWidget()
        box.setLayout(form)
        return box

    def _build_sample(self) -> QWidget:
        """The sample record: what a count sheet asks for, before counting starts. Two
        fields per row keep the widget short enough for a laptop screen.
        """
        self.sample_fields: dict[str, QLineEdit] = {}
        grid = QGridLayout()
        for i, (name, label) in enumerate(SAMPLE_FORM):
            edit = QLineEdit()
            self.sample_fields[name] = edit
            edit.setMinimumWidth(50)  # the dock may be narrow: fields shrink, never cut
            row, col = divmod(i, 2)
            grid.addWidget(QLabel(label), row, 2 * col)
            grid.addWidget(edit, row, 2 * col + 1)
        self.sample_fields["depth_unit"].setText("mbsf")
        self.sample_fields["split_factor"].setText("1")
        self.sample_button = QPushButton("Start counting this sample")
        self.sample_button.clicked.connect(self.start_sample)
        layout = QVBoxLayout()
        layout.addLayout(grid)
        layout.addWidget(self.sample_button)
        box = QWidget()
        box.setLayout(layout)
        return box

    def _build_acquire(self) -> QWidget:
        """The counting actions: one field, live, a tray scan; Pause and Stop."""
        self.rows = spin(QSpinBox(), 1, 50, 3)
        self.cols = spin(QSpinBox(), 1, 50, 3)
        self.overlap = spin(QDoubleSpinBox(), 0.0, 0.6, 0.25, step=0.05)
        self.z_planes = spin(QSpinBox(), 1, 50, 1)
        self.z_planes.setToolTip(
            "focal planes per field, fused into one sharp image before counting"
        )
        grid = QGridLayout()  # two rows of two: narrow enough for a laptop's dock
        for i, (label, box) in enumerate(
            (
                ("rows", self.rows),
                ("cols", self.cols),
                ("overlap", self.overlap),
                ("z planes", self.z_planes),
            )
        ):
            grid.addWidget(QLabel(label), i // 2, 2 * (i % 2))
            grid.addWidget(box, i // 2, 2 * (i % 2) + 1)
        # "Count": these buttons count; pymmcore-widgets' Snap / Live (view only) do not.
        self.snap_button = QPushButton("Count this field")
        self.snap_button.setToolTip("snap one frame and count its specimens")
        self.snap_button.clicked.connect(self.snap)
        self.live_button = QPushButton("Count live")
        self.live_button.setToolTip("stream the camera and count what comes into view")
        self.live_button.clicked.connect(self.start_live)
        self.scan_button = QPushButton("Scan tray")
        self.scan_button.clicked.connect(self.start_scan)
        self.pause_button = QPushButton("Pause")
        self.pause_button.setCheckable(True)
        self.pause_button.toggled.connect(self._toggle_pause)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        buttons = QGridLayout()  # two rows: narrow enough for a laptop's dock
        for i, b in enumerate(
            (self.snap_button, self.live_button, self.scan_button, self.pause_button)
        ):
            buttons.addWidget(b, i // 2, i % 2)
        buttons.addWidget(self.stop_button, 2, 0, 1, 2)
        layout = QVBoxLayout()
        layout.addLayout(grid)
        layout.addLayout(buttons)
        group = QGroupBox("Count")
        group.setLayout(layout)
        return group
