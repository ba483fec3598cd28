"""What Foram live draws in napari: the newest frame, the tray overview of a scan, the
counted specimens (labels only where readable), the scan's progress.

A mixin of `LiveWidget`, kept apart so that the widget's file holds its controls and
threads and this one its layers; every layer is made once and then updated in place
(removing and re-adding layers per frame crashed napari/vispy, issue 15).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram.frames import Frame
from napari_foram.mosaic import Mosaic
from napari_foram.widgets.layers import (
    SPECIMENS_LAYER,
    UNCERTAIN_LAYER,
    Shown,
    camera_line,
    contrast_limits,
    display_step,
    display_uint8,
    labels_for,
    update_specimen_layers,
    viewer_zoom,
    zoomed_in,
)

if TYPE_CHECKING:
    import napari.viewer
    from qtpy.QtWidgets import QLabel, QProgressBar

    from napari_foram.microscope import MicroscopeCounter
    from napari_foram.pipeline import FrameResult
    from napari_foram.widgets._qt import ActivityProgress

FRAME_LAYER = "live frame"
OVERVIEW_LAYER = "tray overview"
#: Longer side of the tray overview in screen pixels (the fields are binned to fit).
OVERVIEW_MAX_SIDE = 800


class LiveDisplay:
    """The layers of the live view (see the module docstring); `LiveWidget` sets the
    attributes below.
    """

    viewer: napari.viewer.Viewer
    counter: MicroscopeCounter | None
    camera_label: QLabel
    scan_bar: QProgressBar
    _activity: ActivityProgress
    _shown: list[Shown]
    _mosaic: Mosaic | None
    _overview_step: int
    _overview_key: tuple[Any, ...] | None
    _contrast: tuple[float, float] | None
    _contrast_set: bool
    _scan_total: int
    _scan_done: int
    _scan_started: float
    _labels_zoomed: bool
    _selection_watched: Any = None  # the specimens layer whose selection is watched

    def _show_frames(self, results: list[FrameResult]) -> None:
        """Draw the frames that arrived since the last redraw: during a scan every one
        is pasted into the tray overview (a field skipped would stay black); otherwise
        the newest is shown, where it lies on the tray.
        """
        if self._mosaic is not None and OVERVIEW_LAYER in self.viewer.layers:
            pasted = False
            for result in results:
                image, px = self._display_image(result.frame, self._overview_step)
                small = Frame(image, stage_xy_um=result.frame.stage_xy_um, pixel_size_um=px)
                pasted = self._mosaic.paste(small) or pasted
            if pasted:
                self.viewer.layers[OVERVIEW_LAYER].refresh()  # one redraw for them all
                return
        self._show_frame(results[-1])

    def _display_image(self, frame: Frame, step: int | None = None) -> tuple[np.ndarray, float]:
        """The frame at display resolution, 8-bit, and its pixel size there.

        Every `display_step`-th pixel only: a preview needs no more than the screen shows,
        and uploading a full 5 MP frame four times a second would starve the GUI thread.
        10-16 bit cameras are scaled by the depth they report, unless the sample's first
        frame uses a small part of that range (`contrast_limits`): then every frame of the
        sample is stretched alike (one stretch, so the fields of a scan match).
        """
        step = step or display_step(frame.image.shape[:2])
        raw = frame.image[::step, ::step]
        bits = frame.metadata.get("bit_depth")
        if not self._contrast_set:
            self._contrast, self._contrast_set = contrast_limits(raw, bits), True
            info = self.counter.microscope_info if self.counter is not None else {}
            self.camera_label.setText(
                camera_line(info, frame) + (" | display stretched" if self._contrast else "")
            )
        image = display_uint8(raw, bits, self._contrast)
        return image, (frame.pixel_size_um or 1.0) * step

    def _show_scan_progress(self) -> None:
        """Fields done of the scan and the time left, here and in napari's activity dock."""
        done, total = min(self._scan_done, self._scan_total), self._scan_total
        elapsed = time.monotonic() - self._scan_started
        left = f", {elapsed / done * (total - done):.0f} s left" if 0 < done < total else ""
        text = f"scan: {done} / {total} fields{left}"
        self.scan_bar.setRange(0, total)
        self.scan_bar.setValue(done)
        self.scan_bar.setFormat(text)
        self._activity.update(done, total, f"Foram live {text}")

    def _show_frame(self, result: FrameResult) -> None:
        """Show one counted frame in the live-frame layer, where it lies on the tray."""
        self._show_camera_frame(result.frame)

    def _show_camera_frame(self, frame: Frame) -> None:
        """Show one frame (counted, or a view-only one) where it lies on the tray."""
        image, step_px = self._display_image(frame)
        corner = frame.pixel_to_stage_um(0, 0)
        translate = (corner[1], corner[0]) if corner is not None else (0.0, 0.0)
        scale = (step_px, step_px)
        if FRAME_LAYER in self.viewer.layers:
            layer = self.viewer.layers[FRAME_LAYER]
            if layer.data.shape == image.shape and layer.data.dtype == image.dtype:
                # Into the layer's own buffer (ours, made by `_prepare_layers`): assigning
                # a new array would also re-check dims and extents, ~3x the cost.
                layer.data[...] = image
                if tuple(layer.translate) != translate:
                    layer.translate = translate
                if tuple(layer.scale) != scale:
                    layer.scale = scale
                layer.refresh()  # the buffer changed under napari: one redraw
                return
            if layer.data.ndim == image.ndim:  # another camera size: still in place
                layer.data = image.copy()
                layer.translate, layer.scale = translate, scale
                return
            # Mono <-> colour (another camera, never per frame): napari fixes `rgb`
            # when a layer is made, so this one layer is made again.
            self.viewer.layers.remove(FRAME_LAYER)
        self.viewer.add_image(
            image,
            name=FRAME_LAYER,
            rgb=image.ndim == 3,
            scale=scale,
            translate=translate,
            units="um",
        )
        self.viewer.layers.move(self.viewer.layers.index(FRAME_LAYER), 0)  # under the marks
        self.viewer.reset_view()

    def _prepare_overview(self, counter: MicroscopeCounter, sequence: Any) -> None:
        """An empty tray overview covering the planned fields; frames fill it as they
        arrive (at display resolution: a 3 x 3 scan of 5 MP fields would be 45 MP).
        """
        px = counter.pixel_size_um()
        positions = counter.field_positions(sequence)
        key = (px, tuple(positions), counter.frame_shape())
        if (
            key == self._overview_key
            and self._mosaic is not None
            and OVERVIEW_LAYER in self.viewer.layers
        ):
            # Same fields as prepared (usually at sample start, where the layer's first,
            # slow draw happened): clear it instead of making a new layer mid-scan.
            self._mosaic.image[...] = 0
            self.viewer.layers[OVERVIEW_LAYER].refresh()
            if FRAME_LAYER in self.viewer.layers:
                self.viewer.layers[FRAME_LAYER].visible = False
            return
        if OVERVIEW_LAYER in self.viewer.layers:
            self.viewer.layers.remove(OVERVIEW_LAYER)
        self._mosaic, self._overview_key = None, key
        if px is None or not positions:
            return
        # The whole overview, not each field, at most ~OVERVIEW_MAX_SIDE px on its longer
        # side: every refresh re-uploads the texture, and with software OpenGL a 4 MB
        # one stalls the GUI thread for ~300 ms (measured by tests/test_live_gui.py).
        shape = counter.frame_shape()
        full = Mosaic.covering(positions, (shape[0], shape[1]), px)  # only its shape is used
        self._overview_step = display_step(full.image.shape, OVERVIEW_MAX_SIDE)
        step = self._overview_step
        field = (-(-shape[0] // step), -(-shape[1] // step))
        self._mosaic = Mosaic.covering(positions, field, px * step)
        step_px = self._mosaic.pixel_size_um
        self.viewer.add_image(
            self._mosaic.image,  # the layer shares the canvas: pasted in place
            name=OVERVIEW_LAYER,
            rgb=True,
            scale=(step_px, step_px),
            translate=self._mosaic.translate_yx_um,
            units="um",
        )
        self.viewer.layers.move(self.viewer.layers.index(OVERVIEW_LAYER), 0)
        if FRAME_LAYER in self.viewer.layers:
            self.viewer.layers[FRAME_LAYER].visible = False  # the overview shows it
        self.viewer.reset_view()

    def _prepare_layers(self) -> None:
        """Create the frame and specimen layers before acquiring (creating a layer costs
        far more than updating one: done now, it never stalls a running scan).
        """
        if self.counter is None:
            return
        shape = self.counter.frame_shape()
        step = display_step(shape)
        blank = np.zeros((-(-shape[0] // step), -(-shape[1] // step), *shape[2:]), np.uint8)
        if FRAME_LAYER not in self.viewer.layers:
            self.viewer.add_image(blank, name=FRAME_LAYER, rgb=blank.ndim == 3, units="um")
        name = self.counter.store.class_names[0]
        self._shown = [Shown(0.0, 0.0, name, 0.0, True, 1.0, False)]
        self._show_specimens()  # one placeholder point, so that text and symbols compile
        self._shown = []
        self._show_specimens()

    def _show_specimens(self, which: tuple[str, ...] = (SPECIMENS_LAYER, UNCERTAIN_LAYER)) -> None:
        names = list(self.counter.store.class_names) if self.counter is not None else []
        self._labels_zoomed = self._zoomed_in()
        zoom = viewer_zoom(self.viewer)
        update_specimen_layers(self.viewer, self._shown, names, zoom, which)
        layers = self.viewer.layers  # napari's LayerList has no .get
        layer = layers[SPECIMENS_LAYER] if SPECIMENS_LAYER in layers else None  # noqa: SIM401
        if layer is not None and layer is not self._selection_watched:
            # A specimen the user selects gets its label at any zoom.
            layer.selected_data.events.items_changed.connect(self._on_select)
            self._selection_watched = layer

    def _on_select(self, *_: object) -> None:
        layer = self._selection_watched
        if layer is None or len(layer.data) != len(self._shown):
            return
        features = layer.features.copy()
        zoom = viewer_zoom(self.viewer)
        features["label"] = labels_for(self._shown, zoom, set(layer.selected_data))
        layer.features = features

    def _zoomed_in(self) -> bool:
        return zoomed_in(self._shown, viewer_zoom(self.viewer))

    def _camera_events(self) -> Any:
        scene = getattr(self.viewer, "scene", None)
        return (scene.camera if scene is not None else self.viewer.camera).events

    def _disconnect_viewer(self) -> None:
        """Stop listening to napari's camera and layers (they outlive the widget)."""
        self._camera_events().zoom.disconnect(self._on_zoom)
        if self._selection_watched is not None:
            self._selection_watched.selected_data.events.items_changed.disconnect(self._on_select)
            self._selection_watched = None

    def _on_zoom(self, _event: object = None) -> None:
        """Label every specimen once zoomed in far enough to read them (see `labels_for`)."""
        if self._shown and self._zoomed_in() != self._labels_zoomed:
            self._show_specimens()
