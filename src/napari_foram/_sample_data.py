"""napari sample data: a synthetic tray frame and a gallery of labelled crops.

The committed examples in sample_data/ (made by scripts/make_sample_data.py) open when they
can be found (a source checkout, or the copy inside the wheel); otherwise the same seeded
renders are made on the fly, so the samples always work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from napari_foram.defaults import CAMERA_SHAPE

#: Seeds and sizes shared with scripts/make_sample_data.py, so the files and the on-the-fly
#: renders are the same pictures.
TRAY_SEED = 11
TRAY_SHAPE = CAMERA_SHAPE
TRAY_SPECIMENS = 24
CROPS_SEED = 5
CROPS_PER_CLASS = 6

LayerData = tuple[Any, dict[str, Any], str]


def sample_data_dir() -> Path | None:
    """The folder of committed examples, inside the package or in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sample_data", here.parents[1] / "sample_data"):
        if (candidate / "tray.jpg").is_file():
            return candidate
    return None


def render_sample_tray() -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], float]:
    """(image, labels, truth rows, pixel size) of the sample tray, rendered."""
    from napari_foram.synthetic import render_tray

    tray = render_tray(TRAY_SEED, shape=TRAY_SHAPE, n_specimens=TRAY_SPECIMENS)
    return tray.image, tray.labels, tray.truth_table(), tray.pixel_size_um


def render_sample_crops() -> tuple[np.ndarray, list[str]]:
    """(n, 224, 224, 3) crops of every class and their class names, rendered."""
    from napari_foram.synthetic import CLASSES, render_crop

    crops, names = [], []
    for k, name in enumerate(CLASSES):
        for i in range(CROPS_PER_CLASS):
            crops.append(render_crop(name, CROPS_SEED * 1000 + k * 100 + i))
            names.append(name)
    return np.stack(crops), names


def sample_tray() -> list[LayerData]:
    """The tray frame, its ground-truth labels and specimen centres with their classes."""
    from napari_foram.frames import read_image

    folder = sample_data_dir()
    if folder is not None:
        image = read_image(folder / "tray.jpg")
        labels = read_image(folder / "tray_labels.png").astype(np.int32)
        meta = json.loads((folder / "tray.json").read_text(encoding="utf-8"))
        truth, pixel_um = meta["specimens"], float(meta["pixel_size_um"])
    else:
        image, labels, truth, pixel_um = render_sample_tray()
    scale = (pixel_um, pixel_um)
    centres = np.array([row["centroid_yx"] for row in truth], dtype=float).reshape(-1, 2)
    classes = [row["class_name"] for row in truth]
    return [
        (image, {"name": "synthetic tray", "rgb": True, "scale": scale, "units": "um"}, "image"),
        (
            labels,
            {"name": "ground truth", "scale": scale, "units": "um", "opacity": 0.35},
            "labels",
        ),
        (
            centres,
            {
                "name": "true classes",
                "scale": scale,
                "units": "um",
                "size": 20,
                "features": {"class": classes},
                "text": {
                    "string": "{class}",
                    "size": 9,
                    "color": "yellow",
                    "anchor": "upper_left",
                },
                "face_color": "transparent",
                "border_color": "yellow",
            },
            "points",
        ),
    ]


def sample_crops() -> list[LayerData]:
    """A stack of labelled 224 x 224 crops, one class after another."""
    from napari_foram.frames import read_image

    folder = sample_data_dir()
    if folder is not None and (folder / "crops_gallery.jpg").is_file():
        gallery = read_image(folder / "crops_gallery.jpg")
        crops, names = _split_gallery(gallery)
    else:
        crops, names = render_sample_crops()
    return [
        (
            crops,
            {"name": "synthetic crops", "rgb": True, "metadata": {"class_names": names}},
            "image",
        )
    ]


def _split_gallery(gallery: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Cut a gallery (rows = classes, columns = examples) back into 224 x 224 crops."""
    from napari_foram.synthetic import CLASSES

    size = 224
    rows, cols = gallery.shape[0] // size, gallery.shape[1] // size
    crops = [
        gallery[r * size : (r + 1) * size, c * size : (c + 1) * size, :3]
        for r in range(rows)
        for c in range(cols)
    ]
    names = [CLASSES[r % len(CLASSES)] for r in range(rows) for _ in range(cols)]
    return np.stack(crops), names
