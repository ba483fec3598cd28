"""Detection preview: tune the detector on your own images and see the result at once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    Container,
    FloatSlider,
    FloatSpinBox,
    Label,
    SpinBox,
    create_widget,
)

from napari_foram.detect import DetectionParams, detect, split_lines
from napari_foram.widgets._qt import Runner, close_with, scroll_container

if TYPE_CHECKING:
    import napari
    import napari.layers
    import napari.viewer

DETECTIONS_LAYER = "detections"
CENTROIDS_LAYER = "specimen centres"
SPLITS_LAYER = "split lines"
#: Quiet time (ms) after the last change before the detector runs again.
DEBOUNCE_MS = 250
#: The preview's own layers: kept above every image (a frame added later hid them).
PREVIEW_LAYERS = (DETECTIONS_LAYER, SPLITS_LAYER, CENTROIDS_LAYER)
WHOLE_COLOUR = (0.0, 1.0, 0.4, 1.0)
CLIPPED_COLOUR = (1.0, 0.6, 0.0, 1.0)


def auto_threshold_text(params: DetectionParams | None = None) -> str:
    """What the automatic threshold is, in a few words (`detect.auto_threshold`)."""
    p = params or DetectionParams()
    if p.threshold_method == "otsu":
        return "Otsu's two-class level"
    return f"tray floor + {p.background_k:g} robust SD"


def auto_threshold_tooltip(params: DetectionParams | None = None) -> str:
    """What the automatic threshold is, in full: the "automatic threshold" box's tooltip."""
    p = params or DetectionParams()
    if p.threshold_method == "otsu":
        return "the grey level of Otsu's two-class split of the tray floor's pixels"
    return (
        f"the tray floor's median grey level plus {p.background_k:g} robust standard "
        f"deviations (MAD), at least {p.background_min_margin:g} grey levels above the "
        "floor and at most Otsu's level: a tray is mostly empty floor, so dark grains a "
        "few tens of grey levels above it are still found"
    )


def legend_html() -> str:
    """What the preview's marks mean (the colours of `draw_detections`)."""

    def dot(rgba: tuple[float, ...], shape: str = "&#9679;") -> str:
        hex_colour = "#" + "".join(f"{round(255 * c):02x}" for c in rgba[:3])
        return f'<span style="color:{hex_colour}">{shape}</span>'

    return " &nbsp; ".join(
        [
            f"{dot(WHOLE_COLOUR)}&nbsp;whole specimen (counted)",
            f"{dot(CLIPPED_COLOUR)}&nbsp;clipped by the frame edge or tray border",
            f"{dot((1.0, 0.0, 0.0, 1.0), '&#9472;')}&nbsp;split line",
            "tinted areas: detected objects",
        ]
    )


def frame_data(viewer: napari.Viewer, image_layer: napari.layers.Image) -> np.ndarray:
    """The plane of `image_layer` to preview (the current one of a stack), as an array."""
    data = np.asarray(image_layer.data)
    if image_layer.rgb is False and data.ndim == 3 and data.shape[-1] not in (3, 4):
        data = data[viewer.dims.current_step[0]]  # a stack: preview the current plane
    return data


def run_detection(
    data: np.ndarray, params: DetectionParams, pixel_size_um: float | None = None
) -> tuple[Any, np.ndarray]:
    """Detect on one frame: (the detections, the split-line mask). Qt-free, so the
    widget runs it off the GUI thread.
    """
    det = detect(data, params, crops=False, pixel_size_um=pixel_size_um)
    return det, split_lines(det.labels)


def show_detections(
    viewer: napari.Viewer,
    image_layer: napari.layers.Image,
    params: DetectionParams,
    pixel_size_um: float | None = None,
) -> str:
    """Detect on `image_layer` and show labels, centres and split lines; returns a
    one-line summary that names the minimum size and the rule that set it.
    """
    det, cuts = run_detection(frame_data(viewer, image_layer), params, pixel_size_um)
    return draw_detections(viewer, image_layer, det, cuts)


def _update_or_add(viewer: napari.Viewer, name: str, kind: str, data: Any, **kwargs: Any) -> None:
    """Set a preview layer's data and transform in place, or add it the first time."""
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = data
        for key in ("scale", "translate", "features", "face_color"):
            if key in kwargs:
                setattr(layer, key, kwargs[key])
    else:
        getattr(viewer, f"add_{kind}")(data, name=name, **kwargs)


def _units(image_layer: Any) -> dict[str, Any]:
    """The image's units for the preview layers (napari warns when layers disagree)."""
    units = getattr(image_layer, "units", None)
    return {"units": tuple(units)[-2:]} if units is not None else {}


def draw_detections(
    viewer: napari.Viewer, image_layer: napari.layers.Image, det: Any, cuts: np.ndarray
) -> str:
    """Show detections (from `run_detection`) on `image_layer`; the summary line. The
    layers are made once and updated in place.
    """
    scale = det.work_scale
    # Detections are in the frame's pixels; the image may be drawn in micrometres (a
    # reader's scale) and shifted: the preview layers take the image's own transform so
    # they lie on it, whatever its units.
    image_scale, image_translate = image_transform(image_layer)
    # The label image lives at the working scale (a strided copy: label pixel i is frame
    # pixel i * scale), so only its scale grows.
    layer_scale = tuple(float(v) * scale for v in image_scale)
    _update_or_add(
        viewer,
        DETECTIONS_LAYER,
        "labels",
        det.labels,
        scale=layer_scale,
        translate=image_translate,
        opacity=0.4,
        **_units(image_layer),
    )
    # Green: whole specimens (counted); orange: clipped by the frame edge or tray border.
    colours = np.where(det.clipped[:, None], [CLIPPED_COLOUR], [WHOLE_COLOUR])
    centres = np.asarray(det.centroid, dtype=float).reshape(-1, 2)
    points: dict[str, Any] = {"scale": image_scale, "translate": image_translate}
    if len(centres):
        features = {"clipped": det.clipped, "area_px": det.area_px.round(0)}
        points.update(features=features, face_color=colours)
    points.update(_units(image_layer))
    _update_or_add(
        viewer, CENTROIDS_LAYER, "points", centres, size=24, border_color="black", **points
    )
    # Split lines in red, so a user sees which touching specimens were separated.
    _update_or_add(
        viewer,
        SPLITS_LAYER,
        "labels",
        cuts.astype(np.uint8),
        scale=layer_scale,
        translate=image_translate,
        opacity=1.0,
        **_units(image_layer),
    )
    keep_marks_on_top(viewer)
    how = f", {auto_threshold_text(det.params)}" if det.params.threshold is None else ""
    return (
        f"{int(det.whole.sum())} specimens, {int(det.clipped.sum())} clipped; "
        f"threshold {det.threshold:.1f}{how} (at 1/{scale} scale); {min_area_text(det)}"
    )


def keep_marks_on_top(viewer: napari.Viewer) -> bool:
    """Move the preview's layers above every other layer (an image added after them
    hid them); True when something moved.
    """
    layers = viewer.layers
    mine = [i for i, layer in enumerate(layers) if layer.name in PREVIEW_LAYERS]
    if not mine:
        return False
    others = [i for i, layer in enumerate(layers) if layer.name not in PREVIEW_LAYERS]
    if not others or max(others) < min(mine):
        return False
    layers.move_multiple(mine, len(layers))
    return True


def image_transform(
    image_layer: napari.layers.Image,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """The (y, x) scale and translate of an image layer's frame (world units per pixel).

    The last two axes: for a stack the preview is of one plane, and an RGB layer's colour
    axis has no scale of its own.
    """
    sy, sx = (float(v) for v in np.asarray(image_layer.scale)[-2:])
    ty, tx = (float(v) for v in np.asarray(image_layer.translate)[-2:])
    return (sy, sx), (ty, tx)


def min_area_text(det: Any) -> str:
    """The minimum size used and why, e.g. "min area 240 px (from the image)"."""
    if det.min_area_rule == "um2":
        why = f"{det.params.min_area_um2:.0f} um^2 at {det.pixel_size_um:.3g} um/px"
    elif det.min_area_rule == "image":
        why = "from the image: 0.2 x its typical object, within 100-1024 px"
    else:
        why = "as set"
    return f"min area {det.min_area_px:.0f} px ({why})"


class DetectionWidget(Container):
    """Preview the study's detector on an image layer; every change re-runs it.

    It runs as soon as the widget opens on a viewer with an image, then after each
    change once the controls have been still for `DEBOUNCE_MS`, on a background thread
    (a 5 MP frame takes ~0.4 s): the interface never waits for the detector.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        from qtpy.QtCore import QTimer
        from qtpy.QtWidgets import QSizePolicy

        super().__init__(scrollable=False, labels=False)
        viewer = napari_viewer
        self._viewer = viewer
        # A ComboBox of the viewer's image layers (napari registers the type with magicgui).
        image_choice: Any = create_widget(annotation="napari.layers.Image", label="image")
        self._image = image_choice
        # Named as the detector computes it (issue 27: it said Otsu, the default is not).
        self._auto = CheckBox(value=True, label=f"automatic threshold ({auto_threshold_text()})")
        self._auto.tooltip = auto_threshold_tooltip()
        self._threshold = FloatSlider(value=120.0, min=0, max=255, label="threshold")
        # 0 = automatic: from the pixel size when given, else from the image.
        self._min_area = SpinBox(
            value=0, min=0, max=500_000, step=64, label="min area px (0: auto)"
        )
        self._pixel_size = FloatSpinBox(
            value=0.0, min=0.0, max=50.0, step=0.1, label="um per px (0: unknown)"
        )
        self._sigma = FloatSpinBox(value=4.0, min=0.0, max=30.0, step=0.5, label="smoothing (px)")
        self._invert = CheckBox(value=False, label="dark objects on bright")
        self._border = CheckBox(value=True, label="mask tray border")
        self._split = CheckBox(
            value=DetectionParams().split_touching, label="split touching specimens"
        )
        self.result = Label(value="")
        self.result.native.setWordWrap(True)
        # A long result wraps within the dock's width instead of setting it.
        self.result.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.result.native.setMinimumWidth(60)
        controls: tuple[Any, ...] = (
            self._image,
            self._auto,
            self._threshold,
            self._min_area,
            self._pixel_size,
            self._sigma,
            self._invert,
            self._border,
            self._split,
        )
        self.legend = Label(value=legend_html())
        self.legend.native.setWordWrap(True)
        self.legend.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.legend.native.setMinimumWidth(60)
        # In one scroll area: the dock shrinks with the window (a 768 px screen).
        self.body = Container(widgets=[*controls, self.legend, self.result])
        self.scroll_area = scroll_container(self, self.body, height_hint=420, min_height=90)
        # Short labels and a narrow minimum: the dock leaves the canvas half a laptop screen.
        for w in controls:
            w.native.setMinimumWidth(60)
        image_choice.native.setSizeAdjustPolicy(
            image_choice.native.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.runner = Runner(self.native)
        self.runner.on("done", self._on_done)
        self._again = False  # a change arrived while the detector ran: run once more
        self._timer = QTimer(self.native)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self._start)
        for w in controls:
            w.changed.connect(self.update_preview)
        self._auto.changed.connect(self._sync_threshold)
        self._sync_threshold()
        # The layer list changes after construction: keep the choices current.
        viewer.layers.events.inserted.connect(image_choice.reset_choices)
        viewer.layers.events.removed.connect(image_choice.reset_choices)
        # An image added later would cover the marks: lift them once it is in (after
        # the insertion has finished, not inside napari's own event).
        self._lift_timer = QTimer(self.native)
        self._lift_timer.setSingleShot(True)
        self._lift_timer.setInterval(0)
        self._lift_timer.timeout.connect(self._lift_marks)
        viewer.layers.events.inserted.connect(self._on_inserted)
        close_with(self.native, self.runner)  # no detector thread outlives the widget
        self.update_preview()  # at once when opened on an image

    def _on_inserted(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None and getattr(layer, "name", None) in PREVIEW_LAYERS:
            return
        self._lift_timer.start()  # dies with the widget (a timer of its own)

    def _lift_marks(self) -> None:
        import contextlib

        with contextlib.suppress(RuntimeError, ValueError, IndexError):  # viewer closing
            keep_marks_on_top(self._viewer)

    def _sync_threshold(self, *_: object) -> None:
        """The threshold slider only counts when set by hand: greyed out otherwise."""
        self._threshold.enabled = not self._auto.value

    def params(self) -> DetectionParams:
        """The detector settings the controls describe."""
        return DetectionParams(
            threshold=None if self._auto.value else float(self._threshold.value),
            min_area_px=int(self._min_area.value) or None,
            smooth_sigma_px=float(self._sigma.value),
            invert=bool(self._invert.value),
            mask_border=bool(self._border.value),
            split_touching=bool(self._split.value),
        )

    def update_preview(self, *_: object) -> None:
        """Re-run the detector on the chosen layer soon (debounced, in the background)."""
        if self._image.value is None:
            self.result.value = "add an image layer to preview the detector on it"
            return
        self.result.value = "detecting..."
        self._timer.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the detector's thread ends (tests, scripts); True if it did."""
        return self.runner.wait(timeout)

    def _start(self) -> None:
        layer = self._image.value
        if layer is None:
            return
        if self.runner.busy():
            self._again = True
            return
        self._again = False
        try:
            data = frame_data(self._viewer, layer)
            params = self.params()
            px = float(self._pixel_size.value) or _layer_pixel_size(layer)
        except ValueError as exc:
            self.result.value = f"cannot detect: {exc}"
            return

        def work() -> None:
            try:
                det, cuts = run_detection(data, params, px)
            except ValueError as exc:
                self.runner.emit("done", layer, exc, None)
                return
            self.runner.emit("done", layer, det, cuts)

        self.runner.start("detection", work)

    def _on_done(self, layer: Any, det: Any, cuts: np.ndarray | None) -> None:
        self.runner.wait(5)  # the worker emitted its last signal and is returning
        if self._again:
            self._start()  # settings changed meanwhile: this result is already old
            return
        if isinstance(det, Exception):
            self.result.value = f"cannot detect: {det}"
        elif cuts is not None and layer is self._image.value:
            self.result.value = draw_detections(self._viewer, layer, det, cuts)


def _layer_pixel_size(layer: Any) -> float | None:
    """Micrometres per pixel a reader left on the layer (its metadata), if any."""
    meta = getattr(layer, "metadata", None) or {}
    for key in ("pixel_size_um", "PixelSizeUm"):
        if meta.get(key):
            try:
                return float(meta[key])
            except (TypeError, ValueError):
                return None
    return None
