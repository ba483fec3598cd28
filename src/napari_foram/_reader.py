"""napari reader for napari-foram tally stores (``*.zarr`` directories).

Opening a store shows, for every sample,

- ``"<sample> crops"``: the stored 224 x 224 crops as an RGB image stack (one crop per
  plane, loaded lazily: a store of thousands of specimens holds hundreds of MB of crops),
  with the class, predicted class and entropy of each crop in the layer metadata;
- ``"<sample> specimens"``: the counted specimens at their stage positions (y, x in um),
  coloured by class (grey: unsure, by the model's unsure rule), with class / probability /
  entropy / unsure as features. Crops share no
  coordinate frame, so the positions are the only map of a sample; samples counted
  without a stage (positions NaN) get no points layer.

`get_reader` returns None for anything that is not a tally store (a foreign Zarr group, a
damaged root, a plain folder), so napari can try its other readers; it never raises.
A damaged sample (metadata unreadable, a chunk of its columns missing or undecodable) gets
no layers and a warning naming the sample and what is wrong (napari shows it as a
notification), never labels made from fill values; a crop chunk that cannot be decoded
when displayed shows as black and is logged, instead of raising inside napari.
The store is opened read-only, so a store that a scan is still writing opens safely
(it shows the rows committed so far).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[Any], list[LayerData]]

# Points are drawn a little larger than the specimen they mark (as in the live view).
_POINT_SCALE = 1.3


def is_tally_store(path: str | os.PathLike[str]) -> bool:
    """True when `path` is a directory whose root ``zarr.json`` marks a napari-foram store.

    Reads one small JSON file; never raises.
    """
    from napari_foram.tally.store import check_root_attrs, read_zarr_json

    root = Path(path)
    try:
        meta = read_zarr_json(root)
        check_root_attrs(meta.get("attributes", {}), root)
    except (ValueError, OSError, TypeError, AttributeError):
        return False
    return True


def _paths(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str] | None:
    if isinstance(path, (str, os.PathLike)):
        return [os.fspath(path)]
    if isinstance(path, Sequence) and all(isinstance(p, (str, os.PathLike)) for p in path):
        return [os.fspath(p) for p in path]
    return None


def get_reader(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> ReaderFunction | None:
    """The napari reader hook: a reader function for tally stores, else None.

    Parameters
    ----------
    path
        A path, or a list of paths (every one must be a tally store).
    """
    paths = _paths(path)
    if not paths:
        return None
    if len(paths) == 1 and not is_tally_store(paths[0]):
        store = enclosing_store(paths[0])
        if store is not None:
            # A part of a store (its samples/X folder) dropped: say which to open.
            part = Path(paths[0]).relative_to(store).as_posix()
            return _refuse(f"{part} is part of the tally store {store}: open {store} instead")
        return None
    if not all(is_tally_store(p) for p in paths):
        return None
    return read_tally_stores


def enclosing_store(path: str | os.PathLike[str], levels: int = 4) -> Path | None:
    """The tally store `path` lies inside (a folder up to `levels` above it), or None."""
    here = Path(path)
    for parent in list(here.parents)[:levels]:
        if is_tally_store(parent):
            return parent
    return None


def _refuse(reason: str) -> ReaderFunction:
    """A reader that says, as napari's message, why it reads nothing."""

    def refuse(_path: Any) -> list[LayerData]:
        raise ValueError(reason)

    return refuse


def read_tally_stores(path: str | Sequence[str]) -> list[LayerData]:
    """Layer data of one store or several: crops and specimen positions per sample.

    A damaged sample is left out (and logged; zarr errors are ValueErrors, malformed
    attributes give Lookup- or TypeErrors); an unreadable store gives no layers, so
    napari moves on to its next reader instead of showing a traceback.
    """
    layers: list[LayerData] = []
    for p in _paths(path) or []:
        try:
            layers.extend(store_layer_data(p))
        except (ValueError, OSError, LookupError, TypeError) as exc:
            msg = f"napari-foram: cannot read tally store {p}: {exc}"
            logger.warning(msg)
            warnings.warn(msg, UserWarning, stacklevel=2)  # a notification, not silence
    return layers


def store_layer_data(path: str | os.PathLike[str]) -> list[LayerData]:
    """Crops and specimen layers of every sample of the store at `path`, in sample order.

    Returns
    -------
    list of (data, kwargs, layer_type)
        Per sample: ``"<sample> crops"`` image (n, 224, 224, 3) uint8 (rgb; a lazy dask
        array), and ``"<sample> specimens"`` points (m, 2) in um (y, x) when positions
        are known. Samples with no rows give no layers.
    """
    from napari_foram.reasons import one_line
    from napari_foram.tally.store import TallyStore

    with TallyStore.open(path, mode="r") as store:
        classes = store.class_names
        layers: list[LayerData] = []
        damaged = store.damaged_samples()
        for sid, why in damaged.items():
            _warn_damaged(path, sid, why)
        for sid in store.samples():
            if sid in damaged:
                continue
            try:
                layers.extend(_sample_layers(store, sid, classes))
            except (ValueError, OSError, LookupError, TypeError) as exc:
                _warn_damaged(path, sid, one_line(exc))
        legend = _legend_layer(store, layers)
        return [*layers, legend] if legend is not None else layers


#: Suffix of the legend layer's name (a store's name then this).
LEGEND_SUFFIX = " legend"


def _legend_layer(store: Any, layers: list[LayerData]) -> LayerData | None:
    """Which colour is which class (and the unsure grey), as a column of labelled
    markers to the right of the specimens (napari has no legend for a Points layer).
    None when the store has no specimens layer.
    """
    from napari_foram.tally.export import UNSURE_COLOUR, UNSURE_LABEL, class_colour

    points = [data for data, _kwargs, kind in layers if kind == "points"]
    if not points:
        return None
    yx = np.concatenate(points)
    low, high = yx.min(axis=0), yx.max(axis=0)
    extent = float(max(high - low)) or 1000.0
    classes = list(store.class_names)
    names = [*(c.replace("_", " ") for c in classes), UNSURE_LABEL]
    colours = [*(class_colour(c, k) for k, c in enumerate(classes)), UNSURE_COLOUR]
    # One row per entry, a 25th of the specimens' extent apart: the rows stay apart on
    # screen at the zoom that shows every specimen. Left of the specimens, with room
    # for the names (drawn to the right of each marker) before the first specimen.
    step = extent / 25.0
    rows = np.arange(len(names), dtype=np.float64)
    data = np.column_stack([low[0] + rows * step, np.full(len(names), low[1] - 10 * step)])
    name = f"{Path(store.path).name.removesuffix('.zarr')}{LEGEND_SUFFIX}"
    return (
        data,
        {
            "name": name,
            "features": {"entry": names},
            "size": step * 0.6,
            "face_color": np.array(colours),
            "border_color": np.array(colours),
            "text": {
                "string": "{entry}",
                "size": 9,
                "color": "white",
                "anchor": "upper_left",
                "translation": [0.0, step * 0.5],
            },
            "metadata": {"store": str(store.path), "legend": True},
        },
        "points",
    )


def _warn_damaged(path: str | os.PathLike[str], sid: str, why: str) -> None:
    """Say, where the user sees it, that a sample is not shown and why."""
    msg = (
        f"napari-foram: sample {sid!r} of {path} is damaged and not shown ({why}); "
        "run 'napari-foram check' on the store"
    )
    logger.warning(msg)
    warnings.warn(msg, UserWarning, stacklevel=3)


class _SafeCrops:
    """A zarr crops array cut to the committed rows, read by dask: a chunk that cannot
    be decoded reads as black crops and is logged (napari calls this while drawing,
    where an exception would be a traceback, not a reason).
    """

    def __init__(self, arr: Any, n: int, label: str) -> None:
        self._arr = arr
        self._label = label
        self.shape = (n, *arr.shape[1:])
        self.dtype = arr.dtype
        self.ndim = arr.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self._arr[key])
        except Exception as exc:  # codec or size errors of a damaged chunk
            logger.warning("napari-foram: %s: unreadable crops shown black (%s)", self._label, exc)
            # The shape of the selection, from a view that allocates nothing.
            shape = np.broadcast_to(np.zeros((), dtype=bool), self.shape)[key].shape
            return np.zeros(shape, dtype=self.dtype)


def _sample_layers(store: Any, sid: str, classes: list[str]) -> list[LayerData]:
    from napari_foram.tally import stats
    from napari_foram.tally.export import UNSURE_COLOUR, class_colour

    data = store.read_specimens(sid)
    n = len(data["row"])
    if n == 0:
        return []
    labels = stats.final_labels(data)
    counted = labels >= 0
    # Specimens the model's unsure rule puts in no class: grey, flagged in the features.
    unsure = stats.unsure_mask(data, store.unsure_rule(sid))
    predicted = [classes[int(c)] for c in data["class_index"]]
    final = [classes[int(c)] if c >= 0 else "" for c in labels]
    probability = np.asarray(data["mean_probs"], dtype=np.float64).max(axis=1)
    entropy = np.asarray(data["entropy"], dtype=np.float64)
    common = {"store": str(store.path), "sample_id": sid, "classes": classes}
    crops_meta = {
        **common,
        # One entry per crop (plane), as in the "crops" sample data.
        "class_names": final,
        "predicted_class": predicted,
        "entropy": entropy.round(4).tolist(),
        "counted": counted.tolist(),
        "unsure": unsure.tolist(),
        "row": data["row"].tolist(),
    }
    layers: list[LayerData] = [
        (
            _lazy_crops(store.path, sid, n),
            {"name": f"{sid} crops", "rgb": True, "metadata": crops_meta},
            "image",
        )
    ]

    yx = np.column_stack([data["stage_y_um"], data["stage_x_um"]]).astype(np.float64)
    # Only counted specimens: a duplicate is the same specimen seen again, a rejected row
    # is not a specimen at all.
    keep = counted & np.isfinite(yx).all(axis=1)
    if keep.any():
        # The crops are a stack of 224 px pictures, not a place on the sample: drawn
        # with the specimen map (in um) they would sit over its corner at the wrong
        # size, so they start hidden, listed for browsing (issue 15).
        layers[0][1]["visible"] = False
        idx = np.flatnonzero(keep)
        names = [final[i] for i in idx]
        colours = np.array(
            [
                UNSURE_COLOUR if unsure[i] else class_colour(classes[labels[i]], int(labels[i]))
                for i in idx
            ]
        )
        features = {
            "class": names,
            "probability": probability[idx].round(3),
            "entropy": entropy[idx].round(3),
            "unsure": unsure[idx],
            "row": data["row"][idx],
        }
        layers.append(
            (
                yx[idx],
                {
                    "name": f"{sid} specimens",
                    "features": features,
                    "size": _point_sizes(store, sid, data["area_px"][idx], yx[idx]),
                    "face_color": "transparent",
                    "border_color": colours,
                    "border_width": 0.08,
                    "metadata": common,
                },
                "points",
            )
        )
    return layers


def _point_sizes(store: Any, sid: str, area_px: np.ndarray, yx: np.ndarray) -> Any:
    """Marker diameters in um: the specimen's size when the pixel size is recorded."""
    from napari_foram.detect import equivalent_diameter

    pixel_um = store.latest_provenance(sid, "pixel_size_um")
    if isinstance(pixel_um, (int, float)) and math.isfinite(pixel_um) and pixel_um > 0:
        diameter_um = equivalent_diameter(np.asarray(area_px, dtype=np.float64)) * pixel_um
        return np.maximum(_POINT_SCALE * diameter_um, pixel_um)
    # Unknown pixel size: a marker a fiftieth of the spread of the specimens.
    extent = float(np.ptp(yx, axis=0).max()) if len(yx) > 1 else 0.0
    return max(extent / 50.0, 10.0)


def _lazy_crops(store_path: Path, sid: str, n: int) -> Any:
    """The first `n` (committed) crops of a sample, read chunk by chunk on display."""
    import zarr

    arr = zarr.open_array(store_path / "samples" / sid / "crops", mode="r")
    if arr.shape[0] < n:
        raise ValueError(f"crops of {sid!r} hold {arr.shape[0]} rows but {n} are committed")
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - napari depends on dask
        return np.asarray(arr[:n])
    # Rows above n may be a writer's preallocated slack: never show them.
    safe = _SafeCrops(arr, n, f"{store_path} sample {sid!r}")
    return da.from_array(safe, chunks=(arr.chunks[0], *arr.shape[1:]), asarray=False, name=False)
