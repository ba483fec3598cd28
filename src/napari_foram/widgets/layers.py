"""How counting results look in napari (and in the matplotlib fallback).

The layer data are computed by plain functions, so the live widget, the demo screenshot
and the tests show the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram.mosaic import Mosaic

# The colours are a core rule (the reader uses them too); re-exported for the widgets.
from napari_foram.tally.export import class_colour

if TYPE_CHECKING:
    import napari

    from napari_foram.pipeline import FrameResult

MOSAIC_LAYER = "tray mosaic"
SPECIMENS_LAYER = "counted specimens"


def specimen_points(
    results: list[FrameResult], class_names: list[str]
) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """Counted specimens as (positions (n, 2) y/x um, features, face colours (n, 4)).

    Features: class, probability (MC mean of the chosen class), entropy, diameter_um.
    """
    yx: list[tuple[float, float]] = []
    cls: list[int] = []
    prob: list[float] = []
    entropy: list[float] = []
    diameter: list[float] = []
    for r in results:
        if r.predictions is None:
            continue
        xy = r.sample_xy_um[r.new_rows]
        yx.extend(zip(xy[:, 1], xy[:, 0], strict=True))
        px = r.frame.pixel_size_um or 1.0
        diameter.extend(float(d) * px for d in r.detections.equivalent_diameter_px[r.new_rows])
        cls.extend(int(c) for c in r.predictions.class_index)
        prob.extend(float(p) for p in r.predictions.mean_probs.max(axis=1))
        entropy.extend(float(e) for e in r.predictions.entropy)
    names = [class_names[c] for c in cls]
    colours = np.array([class_colour(n, c) for n, c in zip(names, cls, strict=True)])
    features = {
        "class": names,
        "probability": np.round(prob, 2),
        "entropy": np.round(entropy, 2),
        "diameter_um": np.round(diameter, 1),
    }
    return np.array(yx, dtype=float).reshape(-1, 2), features, colours.reshape(-1, 4)


def mosaic_from_results(results: list[FrameResult]) -> Mosaic | None:
    """The tray mosaic of every frame that has a stage position."""
    placed = [r.frame for r in results if r.frame.stage_xy_um and r.frame.pixel_size_um]
    if not placed:
        return None
    first = placed[0]
    assert first.pixel_size_um is not None
    mosaic = Mosaic.covering(
        [f.stage_xy_um for f in placed if f.stage_xy_um],
        first.image.shape[:2],
        first.pixel_size_um,
    )
    for f in placed:
        mosaic.paste(f)
    return mosaic


def show_results(
    viewer: napari.Viewer,
    results: list[FrameResult],
    class_names: list[str],
    mosaic: Mosaic | None = None,
) -> None:
    """Add or refresh the mosaic and the counted-specimens layers."""
    mosaic = mosaic or mosaic_from_results(results)
    if mosaic is not None:
        scale = (mosaic.pixel_size_um, mosaic.pixel_size_um)
        if MOSAIC_LAYER in viewer.layers:
            layer = viewer.layers[MOSAIC_LAYER]
            layer.data = mosaic.image
        else:
            viewer.add_image(
                mosaic.image,
                name=MOSAIC_LAYER,
                rgb=True,
                scale=scale,
                translate=mosaic.translate_yx_um,
                units="um",
            )
    data, features, colours = specimen_points(results, class_names)
    text = {
        "string": "{class} {probability:.2f}",
        "size": 8,
        "color": "white",
        "anchor": "upper_left",
        "translation": (-8, 8),
    }
    # Circles a little larger than each specimen, so the specimen stays visible inside.
    sizes = 1.3 * np.asarray(features["diameter_um"], dtype=float)
    if SPECIMENS_LAYER in viewer.layers:
        viewer.layers.remove(SPECIMENS_LAYER)
    if len(data):
        viewer.add_points(
            data,
            name=SPECIMENS_LAYER,
            features=features,
            size=sizes,
            face_color="transparent",
            border_color=colours,
            border_width=0.06,
            text=text,
            units="um",
        )


def viewer_screenshot(results: list[FrameResult], class_names: list[str], path: Path) -> None:
    """Open a real napari viewer, show the scan, save a PNG of the window, close it."""
    import napari

    viewer = napari.Viewer(show=True, title="napari-foram demo")
    try:
        viewer.window._qt_window.resize(1200, 860)
        show_results(viewer, results, class_names)
        viewer.reset_view()
        viewer.screenshot(str(path), canvas_only=False, flash=False)
    finally:
        viewer.close()


def matplotlib_screenshot(results: list[FrameResult], names: list[str], path: Path) -> None:
    """The same picture without napari: mosaic plus class-coloured specimen circles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mosaic = mosaic_from_results(results)
    fig, ax = plt.subplots(figsize=(12, 8.6), dpi=100)
    if mosaic is not None:
        h, w = mosaic.image.shape[:2]
        x0, y0 = mosaic.top_left_um
        px = mosaic.pixel_size_um
        ax.imshow(mosaic.image, extent=(x0, x0 + w * px, y0 + h * px, y0))
    data, features, colours = specimen_points(results, names)
    for (y, x), name, colour, diam in zip(
        data, features["class"], colours, features["diameter_um"], strict=True
    ):
        ax.add_patch(plt.Circle((x, y), 0.65 * diam, fill=False, color=colour, lw=1.2))
        ax.text(x + 90, y - 90, name, color="white", fontsize=6)
    ax.set_xlabel("stage x (um)")
    ax.set_ylabel("stage y (um)")
    ax.set_title("napari-foram demo (matplotlib view: no X server for napari)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
