"""Foram live's microscope controls: pymmcore-widgets' own, bound to the connected core.

Configuration loading (`ConfigurationWidget`), exposure, XY and Z stage, camera ROI and
binning, the property browser and view-only snap / live come from pymmcore-widgets
(issue 29): they do it well and napari-micromanager users know them. Counting stays
Foram live's own ("Count this field", "Count live", "Scan tray"): a frame the
pymmcore-widgets Snap or Live buttons take is shown, never counted.

Every control takes its core when it is made, so `CameraControls.bind` builds them again
for each microscope connected (simulated, a configuration file, the shared core).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (
    QGridLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_foram.widgets._qt import Section

if TYPE_CHECKING:
    from collections.abc import Callable

#: What the view-only buttons say of themselves: their frames are never counted.
VIEW_ONLY_TIP = (
    "pymmcore-widgets' Snap / Live: shows the camera in the 'live frame' layer, counts "
    "nothing. To count, use 'Count this field', 'Count live' or 'Scan tray'."
)


class _NoCoreYet:
    """Stands in for the core a `ConfigurationWidget` is made with: Foram live loads the
    file itself (`MicroscopeCounter.connect_config`: the adapter folder, one-line reasons, a
    core it owns), so the widget's own core is never used -- and none is created.
    """


def config_loader(on_load: Callable[[], None]) -> Any:
    """pymmcore-widgets' `ConfigurationWidget` (path, browse, Load) whose Load connects
    Foram live to the file's microscope (`on_load`).
    """
    from pymmcore_widgets import ConfigurationWidget

    class ConfigLoader(ConfigurationWidget):
        def _load_cfg(self) -> None:
            on_load()

    loader = ConfigLoader(mmcore=_NoCoreYet())  # type: ignore[arg-type]
    loader.load_cfg_Button.setText("Load && connect")
    loader.load_cfg_Button.setToolTip(
        "load this Micro-Manager configuration and count with its microscope"
    )
    loader.cfg_LineEdit.setMinimumWidth(60)
    loader.cfg_LineEdit.textChanged.connect(loader.cfg_LineEdit.setToolTip)
    return loader


_OFFLINE_ICONS: dict[str, Path] = {}
_CHEVRON = {"up": "6,15 12,9 18,15", "down": "6,9 12,15 18,9"}
_CHEVRON |= {"left": "15,6 9,12 15,18", "right": "9,6 15,12 9,18"}


def _offline_icon(glyph: str, color: str | None) -> Path:
    """A plain chevron SVG for StageWidget's arrows when api.iconify.design cannot be
    reached (microscope PCs are often offline): pymmcore-widgets 0.12 fetches them from
    the web and StageWidget fails without them.
    """
    key = f"{glyph}-{color}"
    if key not in _OFFLINE_ICONS:
        name = glyph.split(":")[-1]
        direction = name.rsplit("-", 1)[-1]
        times = 3 if "triple" in name else 2 if "double" in name else 1
        points = _CHEVRON.get(direction, _CHEVRON["up"])
        stroke = (color or "green").replace(" ", "")
        lines = "".join(
            f'<polyline points="{points}" fill="none" stroke="{stroke}" stroke-width="2" '
            f'transform="translate({_shift(direction, k, times)})"/>'
            for k in range(times)
        )
        svg = f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24">{lines}</svg>'
        folder = Path(tempfile.gettempdir()) / "napari-foram-icons"
        folder.mkdir(exist_ok=True)
        path = folder / f"{key.replace(':', '-').replace('(', '').replace(')', '')}.svg"
        path.write_text(svg)
        _OFFLINE_ICONS[key] = path
    return _OFFLINE_ICONS[key]


def _shift(direction: str, k: int, times: int) -> str:
    step = 4 * k - 2 * (times - 1)
    return f"0 {step}" if direction in ("up", "down") else f"{step} 0"


#: Set after the first icon the web could not give: on an offline PC each lookup waits for
#: its DNS failure (~0.16 s here, ~120 lookups per Connect: 20 s), so later ones skip it.
_ICONS_OFFLINE = False


def _icons_offline() -> bool:
    """Whether icons are not fetched from the web: one fetch failed already, or this
    process was told not to download (``$NAPARI_FORAM_NO_DOWNLOAD``, as for weights).
    """
    return _ICONS_OFFLINE or os.environ.get("NAPARI_FORAM_NO_DOWNLOAD", "") not in ("", "0")


def _icons_offline_safe() -> None:
    """pymmcore-widgets' icons (pyconify: api.iconify.design, or its cache) with one web
    attempt per process at most: StageWidget's arrows fall back to `_offline_icon` (it
    fails without them), the other buttons to superqt's own fallback.
    """
    import superqt.iconify
    from pymmcore_widgets.control import _stage_widget

    fetch = _stage_widget.svg_path
    if getattr(fetch, "napari_foram_offline_safe", False):
        return

    def online(glyph: Any, *args: Any, **kwargs: Any) -> Path:
        global _ICONS_OFFLINE
        if _icons_offline():
            raise OSError("offline: icons are not fetched from the web")
        try:
            return Path(fetch(glyph, *args, **kwargs))
        except OSError:  # no network, no cached icon (requests' errors are OSErrors)
            _ICONS_OFFLINE = True
            raise

    def stage_icon(glyph: str, color: str | None = None, **kwargs: Any) -> Path:
        try:
            return online(glyph, color=color, **kwargs)
        except OSError:
            return _offline_icon(glyph, color)

    online.napari_foram_offline_safe = True  # type: ignore[attr-defined]
    stage_icon.napari_foram_offline_safe = True  # type: ignore[attr-defined]
    _stage_widget.svg_path = stage_icon  # type: ignore[assignment]
    superqt.iconify.svg_path = online  # type: ignore[assignment]


def _stage_widget(device: str, core: Any) -> Any:
    """pymmcore-widgets' `StageWidget` for `device`; its "Set as Default" may not fail
    in a Qt slot: UniMMCore (the simulated microscope) refuses a Python stage as the
    Core's default, and pymmcore-widgets 0.12 sets it when the widget is made.
    """
    from pymmcore_widgets import StageWidget

    class Stage(StageWidget):
        def _on_radiobutton_toggled(self, state: bool) -> None:
            with suppress(ValueError, RuntimeError):  # it already is the default
                super()._on_radiobutton_toggled(state)

    return Stage(device, levels=2, mmcore=core)


class CameraControls(QWidget):
    """pymmcore-widgets' camera and stage controls for the connected core (`bind`)."""

    def __init__(self, on_view_frame: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.core: Any = None
        self.exposure: Any = None
        self.xy_stage: Any = None
        self.z_stage: Any = None
        self.roi: Any = None
        self.snap_view: Any = None
        self.live_view: Any = None
        self.property_window: Any = None
        self.sections: dict[str, Section] = {}
        self._on_view_frame = on_view_frame
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self.note = QLabel("no microscope connected")
        self.note.setWordWrap(True)
        self._layout.addWidget(self.note)
        self.properties_button = QPushButton("Device properties...")
        self.properties_button.setToolTip("pymmcore-widgets' property browser, in its own window")
        self.properties_button.clicked.connect(self.show_properties)
        self.properties_button.setEnabled(False)
        self._layout.addWidget(self.properties_button)
        self._parts: list[QWidget] = []

    def unbind(self, why: str = "no microscope connected") -> None:
        """Remove every control (the microscope is gone); `why` in one line."""
        for part in self._parts:
            self._layout.removeWidget(part)
            part.setParent(None)
            part.deleteLater()
        self._parts, self.sections = [], {}
        self.exposure = self.xy_stage = self.z_stage = self.roi = None
        self.snap_view = self.live_view = None
        if self.property_window is not None:
            self.property_window.close()
            self.property_window = None
        self._disconnect_core()
        self.core = None
        self.properties_button.setEnabled(False)
        self.note.setText(why)
        self.note.setVisible(True)

    def _disconnect_core(self) -> None:
        if self.core is not None and self._on_view_frame is not None:
            with suppress(Exception):
                self.core.events.imageSnapped.disconnect(self._image_snapped)

    def bind(self, core: Any) -> None:
        """Controls for `core` (those it has devices for), replacing any earlier ones."""
        from pymmcore_widgets import (
            CameraRoiWidget,
            ExposureWidget,
            LiveButton,
            SnapButton,
        )

        _icons_offline_safe()  # before any button asks the web for its icon
        self.unbind()
        self.core = core
        self.note.setVisible(False)
        self.properties_button.setEnabled(True)

        self.exposure = ExposureWidget(mmcore=core)
        view = QWidget()
        row = QGridLayout(view)
        row.setContentsMargins(0, 0, 0, 0)
        self.snap_view = SnapButton(mmcore=core)
        self.live_view = LiveButton(mmcore=core)
        for k, button in enumerate((self.snap_view, self.live_view)):
            button.setText(("Snap", "Live")[k] + " (view only)")
            button.setIconSize(button.iconSize() * 0.6)
            button.setToolTip(VIEW_ONLY_TIP)
            row.addWidget(button, 0, k)
        self.live_view.button_text_on = "Live (view only)"
        self.live_view.button_text_off = "Stop view"
        camera = QWidget()
        camera_box = QVBoxLayout(camera)
        camera_box.setContentsMargins(0, 0, 0, 0)
        camera_box.addWidget(self.exposure)
        camera_box.addWidget(view)
        self._add("camera", Section("Camera: exposure, view", camera))

        stages = QWidget()
        stage_box = QVBoxLayout(stages)
        stage_box.setContentsMargins(0, 0, 0, 0)
        if core.getXYStageDevice():
            self.xy_stage = _stage_widget(core.getXYStageDevice(), core)
            stage_box.addWidget(self.xy_stage)
        if core.getFocusDevice():
            self.z_stage = _stage_widget(core.getFocusDevice(), core)
            stage_box.addWidget(self.z_stage)
        if self.xy_stage is not None or self.z_stage is not None:
            self._add("stage", Section("Stage (XY, Z)", stages, expanded=False))

        self.roi = CameraRoiWidget(mmcore=core)
        self._add("roi", Section("Camera ROI and binning", self.roi, expanded=False))
        self._layout.addWidget(self.properties_button)  # last
        if self._on_view_frame is not None:
            core.events.imageSnapped.connect(self._image_snapped)

    def _add(self, name: str, section: Section) -> None:
        self.sections[name] = section
        self._parts.append(section)
        self._layout.addWidget(section)

    def _image_snapped(self, *_: object) -> None:
        # pymmcore-widgets snaps on a worker thread: `on_view_frame` only passes it on.
        if self._on_view_frame is not None:
            self._on_view_frame()

    def show_properties(self) -> None:
        """pymmcore-widgets' property browser of the core, in a window of its own."""
        from pymmcore_widgets import PropertyBrowser

        if self.core is None:
            return
        if self.property_window is None:
            self.property_window = PropertyBrowser(mmcore=self.core)
            self.property_window.setWindowTitle("Foram live: device properties")
            self.property_window.resize(760, 520)
        self.property_window.show()
        self.property_window.raise_()

    def set_counting(self, counting: bool) -> None:
        """While Foram live counts, the view-only buttons are off (the camera is busy)."""
        for button in (self.snap_view, self.live_view):
            if button is not None:
                button.setEnabled(not counting)
