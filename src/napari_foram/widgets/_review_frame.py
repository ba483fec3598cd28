"""Foram review's "Show in frame": the specimen under review shown where it lies.

Tally stores keep crops, not frames, so the specimen is shown where it lies on the
sample: the sample's specimens as points at their stage positions (the layers the store
reader makes; a tray mosaic from a scan in the same viewer lines up with them, both are
in micrometres), the view centred on it and the point selected. A sample counted without
stage positions (image folders) opens its crops stack at the specimen.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from napari_foram.widgets._review_parts import _one_line, camera_and_canvas

if TYPE_CHECKING:
    import napari.viewer

    from napari_foram.widgets.review import ReviewWidget

#: Layer that marks the specimen under review.
HIGHLIGHT_LAYER = "review specimen"
#: Visible width around a specimen after "show in frame", in specimen diameters.
FRAME_VIEW_DIAMETERS = 10.0


def show_specimen_in_frame(widget: ReviewWidget) -> str | None:
    """Centre `widget`'s viewer on its current specimen (see the module docstring); the
    name of the layer it is shown in, or None.
    """
    from napari_foram._reader import store_layer_data

    session = widget.session
    row = session.current if session is not None else None
    if session is None or row is None or widget.store_path is None:
        return None
    spec = session.specimen(row)
    sid = session.sample_id
    y, x = spec["stage_yx_um"]
    wanted = f"{sid} specimens" if math.isfinite(x) and math.isfinite(y) else f"{sid} crops"
    try:
        if wanted not in widget.viewer.layers:
            for data, kwargs, kind in store_layer_data(widget.store_path):
                if kwargs.get("name") == wanted:
                    getattr(widget.viewer, f"add_{kind}")(data, **kwargs)
    except (ValueError, OSError, LookupError, TypeError) as exc:
        widget.message.setText(_one_line(f"cannot show the sample: {exc}"))
        return None
    if wanted not in widget.viewer.layers:
        # Not counted (a duplicate or rejected row has no point): the crops, then.
        widget.message.setText(f"row {row} has no position on the sample")
        return None
    layer = widget.viewer.layers[wanted]
    layer.visible = True
    if wanted.endswith("crops") and "grid" in layer.metadata:
        # Batch folders shows the crops as a grid beside the frame: centre the crop.
        from napari_foram.widgets.layers import crop_tile_centre

        centre = crop_tile_centre(layer, row)
        if centre is not None:
            camera, canvas = camera_and_canvas(widget.viewer)
            side = float(layer.metadata["grid"]["tile_px"]) * float(layer.scale[-1])
            camera.center = centre
            camera.zoom = min(canvas) / max(3 * side, 1e-6)
            widget.message.setText(f"no stage position: crop {row} of the {wanted!r} grid")
            return wanted
    if wanted.endswith("crops"):
        widget.viewer.layers.selection.active = layer
        widget.viewer.dims.set_current_step(0, row)
        widget.message.setText(f"no stage position: crop {row} of the {wanted!r} stack")
        return wanted
    rows = np.asarray(layer.features["row"]) if "row" in layer.features else np.zeros(0)
    hits = np.flatnonzero(rows == row)
    if hits.size:
        layer.selected_data = {int(hits[0])}
    size = float(np.ravel(layer.size)[hits[0]]) if hits.size else 100.0
    highlight_specimen(widget.viewer, np.array([[y, x]]), size)
    camera, canvas = camera_and_canvas(widget.viewer)
    camera.center = (y, x)
    camera.zoom = min(canvas) / max(size * FRAME_VIEW_DIAMETERS, 1e-6)
    widget.message.setText(f"row {row} at x = {x:.0f} um, y = {y:.0f} um on {sid}")
    return wanted


def highlight_specimen(viewer: napari.viewer.Viewer, yx: np.ndarray, size: float) -> None:
    """Mark the specimen at `yx` (sample coordinates) with a ring on `HIGHLIGHT_LAYER`."""
    if HIGHLIGHT_LAYER in viewer.layers:
        layer = viewer.layers[HIGHLIGHT_LAYER]
        layer.data = yx
        layer.size = size * 1.4
    else:
        viewer.add_points(
            yx,
            name=HIGHLIGHT_LAYER,
            size=size * 1.4,
            face_color="transparent",
            border_color="magenta",
            border_width=0.12,
        )
