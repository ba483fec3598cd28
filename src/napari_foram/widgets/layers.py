"""How counting results look in napari (and in the matplotlib fallback).

The layer data are computed by plain functions, so the live widget, the demo screenshot
and the tests show the same thing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from napari_foram.mosaic import Mosaic

# The colours are a core rule (the reader uses them too); re-exported for the widgets.
from napari_foram.tally.export import class_colour

if TYPE_CHECKING:
    from collections.abc import Collection
    from pathlib import Path

    import napari

    from napari_foram.pipeline import FrameResult

MOSAIC_LAYER = "tray mosaic"
SPECIMENS_LAYER = "counted specimens"
UNCERTAIN_LAYER = "uncertain specimens"
#: Every specimen is labelled once a typical one is this many screen pixels across; at
#: tray zoom only the uncertain and unsure ones are (labels overlapped their neighbours).
#: Hovering any specimen shows its class in napari's status bar at every zoom.
LABEL_ALL_FROM_PX = 60.0


class Shown(NamedTuple):
    """One counted specimen as the live view draws it."""

    y: float
    x: float
    name: str
    probability: float
    uncertain: bool  # `stats.unreviewed_high_entropy_mask`: worth a person's look (red square)
    diameter_um: float
    unsure: bool  # the model's unsure rule: in no class (grey)


def display_step(shape: tuple[int, ...], max_side: int = 660) -> int:
    """Pixel step that brings a frame's longer side to at most `max_side` for display."""
    return max(1, -(-max(shape[:2]) // max_side))


def freeze_heap() -> None:
    """Move every object alive now out of the garbage collector's sight (`gc.freeze`).

    napari, Qt, torch and the model leave many long-lived objects, and a full collection
    walks them all while holding the GIL: without this, tests/test_live_gui.py saw one
    ~300 ms GUI stall per scan (no thread in our code at the time); with it, none.
    Objects made later are still collected as usual.
    """
    import gc

    gc.collect()
    gc.freeze()


def viewer_zoom(viewer: Any) -> float:
    """Screen pixels per world unit (um) of the viewer's camera."""
    scene = getattr(viewer, "scene", None)
    camera = scene.camera if scene is not None else viewer.camera
    return float(camera.zoom)


def zoomed_in(shown: list[Shown], zoom: float) -> bool:
    """Whether a typical specimen is `LABEL_ALL_FROM_PX` screen pixels across or more."""
    sizes = [s.diameter_um for s in shown]
    return bool(sizes) and float(np.median(sizes)) * zoom >= LABEL_ALL_FROM_PX


def labels_for(shown: list[Shown], zoom: float, selected: Collection[int] = ()) -> list[str]:
    """The text beside each specimen: all when zoomed in far enough to read them
    (`zoomed_in`), else only the uncertain, unsure and selected ones. A specimen the
    model's unsure rule puts in no class reads "unsure", never a class it is not given.
    """
    from napari_foram.tally.export import UNSURE_LABEL

    everyone = zoomed_in(shown, zoom)
    return [
        (UNSURE_LABEL if s.unsure else f"{s.name.replace('_', ' ')} {s.probability:.2f}")
        if everyone or s.uncertain or s.unsure or i in selected
        else ""
        for i, s in enumerate(shown)
    ]


# ----------------------------------------------------------------------------- labels
#: Point text size (napari's text ``size``) of the specimens layers.
LABEL_TEXT_SIZE = 8
#: A label's box on screen, per character and per line, in multiples of the text size:
#: generous, so two labels judged apart never touch (napari draws text at a fixed
#: screen size, whatever the zoom).
LABEL_CHAR_WIDTH = 1.0
LABEL_LINE_HEIGHT = 1.8
#: Labels are laid out again once the zoom has changed by this factor.
RELABEL_ZOOM_FACTOR = 1.1
#: Feature columns of a managed specimens layer: the text each point would like to
#: show, and the text it shows (blank where it would cover another).
WANTED_LABEL = "label_wanted"
SHOWN_LABEL = "label"


def uncluttered(
    yx: np.ndarray,
    texts: list[str],
    zoom: float,
    priority: np.ndarray | None = None,
    text_size: float = LABEL_TEXT_SIZE,
    sizes: np.ndarray | float = 0.0,
) -> list[str]:
    """`texts` with those blanked that would overlap a label already placed, so that
    no two labels drawn at `zoom` (screen px per world unit) cover each other.

    Labels are placed in `priority` order (higher first; ties keep their order): e.g.
    selected, then unsure, then the rest. Each label is a box of its text's width and
    one line's height beside its point, in screen pixels; napari anchors it at the
    corner of its point's box, so points of different `sizes` (world units) shift their
    labels apart by up to the difference of their radii: that much more room is kept.
    """
    n = len(texts)
    out = [""] * n
    if n == 0 or not math.isfinite(zoom) or zoom <= 0:
        return out
    pts = np.asarray(yx, dtype=np.float64).reshape(-1, 2) * zoom  # screen px
    radius = np.broadcast_to(np.asarray(sizes, dtype=np.float64), (n,)) * zoom / 2.0
    order = np.arange(n) if priority is None else np.argsort(-np.asarray(priority), kind="stable")
    line = LABEL_LINE_HEIGHT * text_size
    char = LABEL_CHAR_WIDTH * text_size
    spread = float(np.ptp(radius)) if n else 0.0
    band_px = line + spread
    rows: dict[int, list[tuple[float, float, float, float]]] = {}  # band -> (y, x0, x1, r)
    for i in order:
        text = texts[i]
        if not text or not np.isfinite(pts[i]).all():
            continue
        y, x0, r = float(pts[i, 0]), float(pts[i, 1]), float(radius[i])
        x1 = x0 + char * len(text)
        band = math.floor(y / band_px)
        clash = any(
            abs(y - oy) < line + abs(r - orad)
            and x0 - abs(r - orad) < ox1
            and ox0 < x1 + abs(r - orad)
            for b in (band - 1, band, band + 1)
            for oy, ox0, ox1, orad in rows.get(b, ())
        )
        if clash:
            continue
        rows.setdefault(band, []).append((y, x0, x1, r))
        out[i] = text
    return out


def _template_texts(template: str, features: dict[str, Any], n: int) -> list[str]:
    """Each point's text from a napari text template ("{class} {probability:.2f}")."""
    texts = []
    for i in range(n):
        row = {k: _item(v, i) for k, v in features.items()}
        if isinstance(row.get("class"), str):
            row["class"] = row["class"].replace("_", " ")
        try:
            texts.append(template.format(**row))
        except (KeyError, ValueError, IndexError, TypeError):
            texts.append("")
    return texts


def _item(values: Any, i: int) -> Any:
    try:
        value = values[i]
    except (IndexError, KeyError, TypeError):
        return ""
    return value.item() if isinstance(value, np.generic) else value


def show_specimen_circles(
    viewer: napari.Viewer,
    yx: np.ndarray,
    features: dict[str, Any],
    sizes: np.ndarray,
    colours: np.ndarray,
    *,
    name: str = SPECIMENS_LAYER,
    text: str = "{label}",
    units: str | None = "um",
    metadata: dict[str, Any] | None = None,
    add_empty: bool = False,
) -> None:
    """The specimens' circles, Points layer `name`: updated in place when it exists
    (removing a Points layer with text and adding it again, once per file, crashed
    napari/vispy: issue 15), else added (with no points only when `add_empty`).

    `text` is the ``"{label}"`` column (the caller made the labels: the live view), or a
    template such as ``"{class} {probability:.2f}"``: then the labels are made here
    (issue 27, the batch canvas). When the layer's points are rows of a store (a
    `labelling` target: the store reader's layers, Batch folders' file), the store's
    unsure rule decides: the specimens it calls unsure are drawn in the unsure colour and
    labelled "unsure" (`labelling.restyle`, as after a canvas label). Labels never cover
    each other (`uncluttered`, laid out again as the zoom changes).
    """
    managed = text != "{" + SHOWN_LABEL + "}"
    features = dict(features)
    if managed:
        features[WANTED_LABEL] = _template_texts(text, features, len(yx))
        features[SHOWN_LABEL] = [""] * len(yx)  # laid out below, once sizes are known
        features.setdefault("unsure", np.zeros(len(yx), dtype=bool))
        text = "{" + SHOWN_LABEL + "}"
    _draw_circles(viewer, yx, features, sizes, colours, name, text, units, metadata, add_empty)
    if managed and name in viewer.layers:
        layer = viewer.layers[name]
        apply_store_rule(viewer, layer)
        relayout_labels(viewer, layer)
        _follow_zoom(viewer, name)


def _draw_circles(
    viewer: napari.Viewer,
    yx: np.ndarray,
    features: dict[str, Any],
    sizes: np.ndarray,
    colours: np.ndarray,
    name: str,
    text: str,
    units: str | None,
    metadata: dict[str, Any] | None,
    add_empty: bool,
) -> None:
    if name in viewer.layers:
        # Each setter refreshes the layer (~5 ms here); napari has no public way to
        # batch them, and hiding the layer meanwhile costs a whole canvas redraw.
        layer = viewer.layers[name]
        layer.data = yx  # napari resizes the per-point properties to match
        if len(yx):
            layer.features = features
            layer.size = sizes
            layer.border_color = colours
        if metadata is not None:
            layer.metadata = metadata
        return
    if not len(yx) and not add_empty:
        return
    viewer.add_points(
        yx,
        name=name,
        features=features,
        size=sizes if len(yx) else 10,
        face_color="transparent",
        border_color=colours if len(yx) else "white",
        border_width=0.06,
        text={"string": text, "size": 8, "color": "white", "anchor": "upper_left"},
        metadata=metadata or {},
        **({"units": units} if units else {}),
    )


def apply_store_rule(viewer: Any, layer: Any) -> int:
    """Colour `layer`'s points from their store rows (`labelling.restyle`: the class
    each counts as, the unsure colour where the store's unsure rule says so) and mark
    the unsure ones in the features (``unsure``; their label reads "unsure"). The number
    of unsure points; 0 when the layer's points are no store's rows or the store cannot
    be read (the layer keeps its look).
    """
    from napari_foram.tally import stats
    from napari_foram.tally.export import UNSURE_LABEL
    from napari_foram.tally.store import TallyStore
    from napari_foram.widgets import labelling

    n = len(layer.data)
    target = labelling.target_of(viewer, layer)
    if target is None or n == 0:
        return 0
    try:
        # Read-only, beside any writer (a batch run still writing the store).
        with TallyStore.open(target.store_path, mode="r") as store:
            rows = labelling.rows_of(store, target, layer)
            labelling.restyle(layer, store, target.sample_id, rows)
            data = store.read_specimens(target.sample_id)
            unsure_rows = stats.unsure_mask(data, store.unsure_rule(target.sample_id))
    except (ValueError, OSError, LookupError, TypeError):
        return 0
    unsure = np.zeros(n, dtype=bool)
    found = (rows >= 0) & (rows < len(unsure_rows))
    unsure[found] = unsure_rows[rows[found]]
    features = layer.features.copy()
    features["unsure"] = unsure
    if WANTED_LABEL in features:
        wanted = list(features[WANTED_LABEL])
        features[WANTED_LABEL] = [
            UNSURE_LABEL if u else w for u, w in zip(unsure, wanted, strict=True)
        ]
    layer.features = features
    return int(unsure.sum())


def relayout_labels(viewer: Any, layer: Any) -> None:
    """Show the wanted labels of a managed layer that fit at the current zoom (selected
    points first, then unsure ones), all once a typical specimen is big enough.
    """
    if WANTED_LABEL not in layer.features or not len(layer.data):
        return
    zoom = viewer_zoom(viewer)
    wanted = [str(t) for t in layer.features[WANTED_LABEL]]
    priority = np.zeros(len(wanted))
    if "unsure" in layer.features:
        priority += np.asarray(layer.features["unsure"], dtype=float)
    for i in layer.selected_data:
        if 0 <= int(i) < len(priority):
            priority[int(i)] += 2.0
    # Laid out for a zoom a little further out than now: small zoom-outs keep them apart.
    shown = uncluttered(
        layer.data, wanted, zoom / RELABEL_ZOOM_FACTOR, priority, sizes=np.ravel(layer.size)
    )
    features = layer.features.copy()
    features[SHOWN_LABEL] = shown
    layer.features = features
    layer.metadata = {**layer.metadata, "labels_zoom": zoom}


def _follow_zoom(viewer: Any, name: str) -> None:
    """Lay out layer `name`'s labels again as the zoom changes (once per viewer and
    layer name; the layer may be replaced meanwhile).
    """
    import weakref

    from napari_foram.widgets._active import hub, unwrap

    viewer = unwrap(viewer)  # napari hands plugins a new proxy each time: keep the viewer
    followed = hub(viewer).extras.setdefault("zoom_labelled_layers", set())
    if name in followed:
        return
    followed.add(name)
    scene = getattr(viewer, "scene", None)
    camera = scene.camera if scene is not None else viewer.camera
    ref = weakref.ref(viewer)

    def on_zoom(_event: Any = None) -> None:
        owner = ref()
        if owner is None or name not in owner.layers:
            return
        layer = owner.layers[name]
        last = float(layer.metadata.get("labels_zoom", 0.0) or 0.0)
        zoom = viewer_zoom(owner)
        if last <= 0 or not (last / RELABEL_ZOOM_FACTOR < zoom < last * RELABEL_ZOOM_FACTOR):
            relayout_labels(owner, layer)

    camera.events.zoom.connect(on_zoom)


def update_specimen_layers(
    viewer: napari.Viewer,
    shown: list[Shown],
    class_names: list[str],
    zoom: float,
    which: tuple[str, ...] = (SPECIMENS_LAYER, UNCERTAIN_LAYER),
) -> None:
    """Draw the counted specimens (circles in class colours, unsure ones grey) and the
    uncertain ones (red squares); the layers are made once, then updated in place.

    `which` layers only: the live view updates them on separate redraw ticks, so that
    one tick never holds the GUI thread for both (tens of ms each with software GL).
    """
    from napari_foram.tally.export import UNSURE_COLOUR

    selected: Collection[int] = ()
    if SPECIMENS_LAYER in viewer.layers:
        selected = set(viewer.layers[SPECIMENS_LAYER].selected_data)
    yx = np.array([(s.y, s.x) for s in shown], dtype=float).reshape(-1, 2)
    colours = np.array(
        [
            UNSURE_COLOUR if s.unsure else class_colour(s.name, class_names.index(s.name))
            for s in shown
        ]
    ).reshape(-1, 4)
    features = {
        "class": [s.name for s in shown],
        "probability": np.round([s.probability for s in shown], 2),
        "uncertain": [s.uncertain for s in shown],
        "unsure": [s.unsure for s in shown],
        "label": labels_for(shown, zoom, selected),
    }
    # Circles a little larger than each specimen, so the specimen stays visible inside.
    sizes = 1.3 * np.array([s.diameter_um for s in shown], dtype=float)
    if SPECIMENS_LAYER in which:
        show_specimen_circles(viewer, yx, features, sizes, colours, add_empty=True)
    uncertain = np.array([s.uncertain for s in shown], dtype=bool)
    data = yx[uncertain]
    if UNCERTAIN_LAYER not in which:
        return
    if UNCERTAIN_LAYER in viewer.layers:
        layer = viewer.layers[UNCERTAIN_LAYER]
        layer.data = data
        if len(data):
            layer.size = 1.6 * sizes[uncertain]
    else:
        viewer.add_points(
            data,
            name=UNCERTAIN_LAYER,
            size=1.6 * sizes[uncertain] if uncertain.any() else 10,
            symbol="square",
            face_color="transparent",
            border_color="red",
            border_width=0.04,
            units="um",
        )


def camera_line(info: dict[str, Any], frame: Any = None) -> str:
    """One line naming the camera, its pixel size and bit depth (from the microscope's
    description, or the newest frame's metadata).
    """
    meta = dict(getattr(frame, "metadata", {}) or {})
    camera = info.get("camera") or meta.get("camera")
    scope = info.get("microscope")
    name = f"{scope}: {camera}" if scope and camera else camera or scope or "camera"
    px = info.get("pixel_size_um") or getattr(frame, "pixel_size_um", None)
    bits = info.get("bit_depth") or meta.get("bit_depth")
    shape = info.get("camera_shape") or (frame.image.shape[:2] if frame is not None else None)
    parts = [str(name)]
    parts.append(f"{float(px):.3g} um/px" if px else "pixel size unknown")
    parts.append(f"{int(bits)}-bit" if bits else "bit depth unknown")
    if shape:
        parts.append(f"{shape[1]} x {shape[0]} px")
    colour = info.get("colour")
    if colour:
        parts.append(str(colour))
    return " | ".join(parts)


#: A frame whose values span less than this share of what its type (or the camera's bit
#: depth) can hold is stretched for display: a 16-bit camera delivering 706-5846 of 65535
#: would otherwise look black.
STRETCH_BELOW = 0.25


def contrast_limits(image: np.ndarray, bit_depth: int | None = None) -> tuple[float, float] | None:
    """(low, high) to stretch `image` between for display, or None when it already uses
    enough of its range (a well-exposed frame keeps its real brightness).

    Percentiles 0.5 / 99.5 of a subsample (a few hot pixels do not set the scale).
    """
    if image.size == 0 or not np.issubdtype(image.dtype, np.integer):
        return None  # floats are stretched by `to_uint8` already
    step = max(1, max(image.shape[:2]) // 256)
    sample = np.asarray(image[::step, ::step], dtype=np.float64)
    if sample.ndim == 3 and sample.shape[2] == 4:
        sample = sample[..., :3]  # alpha is no brightness
    low, high = (float(v) for v in np.percentile(sample, (0.5, 99.5)))
    if bit_depth:
        full = float(2 ** int(bit_depth) - 1)
    else:
        full = float(np.iinfo(image.dtype).max) if image.dtype.itemsize > 1 else 255.0
    if high <= low or high - low >= STRETCH_BELOW * full:
        return None
    return low, high


def display_uint8(
    image: np.ndarray,
    bit_depth: int | None = None,
    limits: tuple[float, float] | None = None,
    *,
    rgb: bool = False,
) -> np.ndarray:
    """`image` as uint8 for display: stretched between `limits` when given, else by
    `to_uint8`'s rule (the camera's depth). `rgb` makes every frame (H, W, 3), so that one
    layer can show grey and colour files alike without being made again.
    """
    from napari_foram.frames import to_uint8

    if limits is not None:
        low, high = limits
        out = np.asarray(image, dtype=np.float32)
        if out.ndim == 3 and out.shape[2] == 4:
            out = out[..., :3]
        out = np.clip((out - low) * (255.0 / (high - low)) + 0.5, 0, 255).astype(np.uint8)
    else:
        out = to_uint8(image, bit_depth)
        if out.ndim == 3 and out.shape[2] == 4:
            out = out[..., :3]
    if rgb and out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    elif rgb and out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out)


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
    from napari_foram.tally.stats import unreviewed_high_entropy_mask

    # The same rule as the live view: at tray zoom only the specimens worth a look are
    # labelled (every label overlapped its neighbours); hovering shows any in the status bar.
    uncertain = unreviewed_high_entropy_mask(np.asarray(features["entropy"], dtype=float))
    features["label"] = [
        f"{c.replace('_', ' ')} {p:.2f}" if u else ""
        for c, p, u in zip(features["class"], features["probability"], uncertain, strict=True)
    ]
    # Circles a little larger than each specimen, so the specimen stays visible inside.
    sizes = 1.3 * np.asarray(features["diameter_um"], dtype=float)
    show_specimen_circles(viewer, data, features, sizes, colours)


def viewer_screenshot(results: list[FrameResult], class_names: list[str], path: Path) -> None:
    """Open a real napari viewer, show the scan, save a PNG of the window, close it."""
    import napari

    viewer = napari.Viewer(show=True, title="napari-foram demo")
    try:
        viewer.window.resize(1200, 860)
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


# ----------------------------------------------------------------------------- crop grids
#: Longest side (px) of a sample's crop grid: more crops are shown smaller (every
#: `step`-th pixel), so that thousands of crops stay one modest image.
CROP_GRID_MAX_PX = 4096
#: Gap between the frame (or the layers already shown) and the crop grids, in crops.
CROP_GRID_GAP = 0.5


def crop_grid(crops: Any, max_px: int = CROP_GRID_MAX_PX) -> tuple[np.ndarray, int, int]:
    """The crops (n, h, w, 3) as one picture in rows of `columns`: (the picture, columns,
    step), where `step` is the pixel stride the crops were shown at (1: whole size).
    """
    n, h, w = (int(v) for v in crops.shape[:3])
    columns = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / columns))
    step = max(1, math.ceil(max(columns * w, rows * h) / max_px))
    th, tw = -(-h // step), -(-w // step)
    grid = np.zeros((rows * th, columns * tw, *crops.shape[3:]), dtype=np.uint8)
    block = 256  # crops read at a time (a lazy stack reads chunk by chunk)
    for start in range(0, n, block):
        part = np.asarray(crops[start : start + block, ::step, ::step])
        for j, tile in enumerate(part):
            r, c = divmod(start + j, columns)
            grid[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = tile
    return grid, columns, step


def crop_tile_centre(layer: Any, index: int) -> tuple[float, float] | None:
    """World (y, x) of the centre of crop `index` of a crop-grid layer, or None."""
    grid = dict(layer.metadata or {}).get("grid")
    if not grid or not 0 <= index < int(grid["n"]):
        return None
    r, c = divmod(index, int(grid["columns"]))
    side = float(grid["tile_px"])
    sy, sx = (float(v) for v in np.asarray(layer.scale)[-2:])
    ty, tx = (float(v) for v in np.asarray(layer.translate)[-2:])
    return ty + (r + 0.5) * side * sy, tx + (c + 0.5) * side * sx


def show_crop_grids(
    viewer: napari.Viewer, store: str | Path, *, visible: bool = True
) -> list[str]:
    """Each sample's stored crops as one grid picture ("<sample> crops"), to the right of
    what the viewer shows already (a frame): not a stack at the origin over the frame's
    corner with a dims slider of its own (issue 27). Made again in place when it exists;
    the layer names. The layer's metadata is the reader's (one entry per crop) plus
    ``grid`` (columns, tile size), so `crop_tile_centre` finds a crop.
    """
    from napari_foram._reader import store_layer_data

    images = [(d, k) for d, k, kind in store_layer_data(store) if kind == "image"]
    # Right of everything shown except our own grids (their place is kept).
    ours = {k["name"] for _d, k in images}
    others = [layer for layer in viewer.layers if layer.name not in ours]
    left, top = 0.0, 0.0
    if others:
        extents = np.array([np.asarray(layer.extent.world)[:, -2:] for layer in others])
        top = float(extents[:, 0, 0].min())
        left = float(extents[:, 1, 1].max())
    names: list[str] = []
    y = top
    for data, kwargs in images:
        tile = int(data.shape[1])
        grid, columns, step = crop_grid(data)
        left_edge = left + CROP_GRID_GAP * tile
        metadata = {
            **kwargs.get("metadata", {}),
            "grid": {"columns": columns, "tile_px": -(-tile // step), "n": int(data.shape[0])},
        }
        name = kwargs["name"]
        place = {"scale": (float(step), float(step)), "translate": (y, left_edge)}
        if name in viewer.layers and viewer.layers[name].ndim == 2:
            layer = viewer.layers[name]
            layer.data = grid
            layer.metadata = metadata
            layer.scale, layer.translate = place["scale"], place["translate"]
            layer.visible = visible
        else:
            if name in viewer.layers:  # an old stack of the same name
                viewer.layers.remove(name)
            viewer.add_image(
                grid, name=name, rgb=True, metadata=metadata, visible=visible, **place
            )
        y += grid.shape[0] * step + CROP_GRID_GAP * tile
        names.append(name)
    return names
