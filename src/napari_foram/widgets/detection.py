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

if TYPE_CHECKING:
    import napari
    import napari.layers
    import napari.viewer

DETECTIONS_LAYER = "detections"
CENTROIDS_LAYER = "specimen centres"
SPLITS_LAYER = "split lines"


def show_detections(
    viewer: napari.Viewer,
    image_layer: napari.layers.Image,
    params: DetectionParams,
    pixel_size_um: float | None = None,
) -> str:
    """Detect on `image_layer` and show labels, centres and split lines; returns a
    one-line summary that names the minimum size and the rule that set it."""
    data = np.asarray(image_layer.data)
    if image_layer.rgb is False and data.ndim == 3 and data.shape[-1] not in (3, 4):
        data = data[viewer.dims.current_step[0]]  # a stack: preview the current plane
    det = detect(data, params, crops=False, pixel_size_um=pixel_size_um)
    scale = det.work_scale
    # Detections are in the frame's pixels; the image may be drawn in micrometres (a
    # reader's scale) and shifted: the preview layers take the image's own transform so
    # they lie on it, whatever its units.
    image_scale, image_translate = image_transform(image_layer)
    # The label image lives at the working scale (a strided copy: label pixel i is frame
    # pixel i * scale), so only its scale grows.
    layer_scale = tuple(float(v) * scale for v in image_scale)
    if DETECTIONS_LAYER in viewer.layers:
        labels_layer = viewer.layers[DETECTIONS_LAYER]
        labels_layer.data = det.labels
        labels_layer.scale = layer_scale
        labels_layer.translate = image_translate
    else:
        viewer.add_labels(
            det.labels,
            name=DETECTIONS_LAYER,
            scale=layer_scale,
            translate=image_translate,
            opacity=0.4,
        )
    # Green: whole specimens (counted); orange: clipped by the frame edge or tray border.
    colours = np.where(det.clipped[:, None], [[1.0, 0.6, 0.0, 1.0]], [[0.0, 1.0, 0.4, 1.0]])
    features = {"clipped": det.clipped, "area_px": det.area_px.round(0)}
    if CENTROIDS_LAYER in viewer.layers:
        viewer.layers.remove(CENTROIDS_LAYER)
    if len(det):
        viewer.add_points(
            det.centroid,
            name=CENTROIDS_LAYER,
            size=24,
            face_color=colours,
            border_color="black",
            features=features,
            scale=image_scale,
            translate=image_translate,
        )
    # Split lines in red, so a user sees which touching specimens were separated.
    cuts = split_lines(det.labels)
    if SPLITS_LAYER in viewer.layers:
        viewer.layers.remove(SPLITS_LAYER)
    if cuts.any():
        viewer.add_labels(
            cuts.astype(np.uint8),
            name=SPLITS_LAYER,
            scale=layer_scale,
            translate=image_translate,
            opacity=1.0,
        )
    return (
        f"{int(det.whole.sum())} specimens, {int(det.clipped.sum())} clipped; "
        f"threshold {det.threshold:.1f} (at 1/{scale} scale); {min_area_text(det)}"
    )


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
    """Preview the study's detector on an image layer; every change re-runs it."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(scrollable=False)
        viewer = napari_viewer
        self._viewer = viewer
        # A ComboBox of the viewer's image layers (napari registers the type with magicgui).
        image_choice: Any = create_widget(annotation="napari.layers.Image", label="image")
        self._image = image_choice
        self._auto = CheckBox(value=True, label="automatic threshold (Otsu)")
        self._threshold = FloatSlider(value=120.0, min=0, max=255, label="threshold")
        # 0 = automatic: from the pixel size when given, else from the image.
        self._min_area = SpinBox(
            value=0, min=0, max=500_000, step=64, label="min area (px, 0 = auto)"
        )
        self._pixel_size = FloatSpinBox(
            value=0.0, min=0.0, max=50.0, step=0.1, label="pixel size (um, 0 = unknown)"
        )
        self._sigma = FloatSpinBox(
            value=4.0, min=0.0, max=30.0, step=0.5, label="smoothing sigma (px)"
        )
        self._invert = CheckBox(value=False, label="dark objects on bright")
        self._border = CheckBox(value=True, label="mask tray border")
        self._split = CheckBox(value=False, label="split touching specimens")
        self.result = Label(value="choose an image layer")
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
        self.extend([*controls, self.result])
        for w in controls:
            w.changed.connect(self.update_preview)
        # The layer list changes after construction: keep the choices current.
        viewer.layers.events.inserted.connect(image_choice.reset_choices)
        viewer.layers.events.removed.connect(image_choice.reset_choices)

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
        """Run the detector on the chosen layer and refresh the preview layers."""
        layer = self._image.value
        if layer is None:
            self.result.value = "choose an image layer"
            return
        try:
            px = float(self._pixel_size.value) or _layer_pixel_size(layer)
            self.result.value = show_detections(self._viewer, layer, self.params(), px)
        except ValueError as exc:
            self.result.value = f"cannot detect: {exc}"


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
