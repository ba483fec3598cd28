"""Single-specimen crops (`render_crop`) and the on-disk synthetic set (`write_synth`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram.synthetic._common import (
    CLASSES,
    DEFAULT_PIXEL_SIZE_UM,
    DEFAULT_SHAPE,
    Lighting,
    _check_class,
    _Shape,
    check_seed,
)
from napari_foram.synthetic._frame import _background, _composite, _draw_dust, _draw_lint, _finish
from napari_foram.synthetic._specimen import _render_layer
from napari_foram.synthetic._tray import _spawn, render_tray

if TYPE_CHECKING:
    from collections.abc import Callable


def render_crop(
    class_name: str, seed: int, *, size: int = 224, pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM
) -> np.ndarray:
    """One specimen centred on tray background, like the detector's crops.

    Parameters
    ----------
    class_name
        One of `CLASSES`.
    seed
        Same seed and class, same pixels.
    size
        Side of the square crop (px); specimens are capped at 90 % of it.
    pixel_size_um
        Micrometres per pixel.

    Returns
    -------
    numpy.ndarray
        (size, size, 3) uint8 RGB, the specimen's centre of mass at the crop centre.
    """
    k = _check_class(class_name)
    seed = check_seed(seed)
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    return centred_crop(np.random.SeedSequence([int(seed), k]), class_name, size, pixel_size_um)


def centred_crop(
    ss: np.random.SeedSequence,
    name: str,
    size: int,
    pixel_size_um: float,
    *,
    builder: Callable[..., _Shape] | None = None,
    size_um: tuple[float, float] | None = None,
    keep_inside: bool = False,
) -> np.ndarray:
    """The crop recipe shared by `render_crop` and `synthetic_ood.render_ood_crop`: tray
    background with a chance of lint and dust, one object (class `name`, or `builder`
    with `size_um`) centred by its centre of mass, vignette, exposure and noise.

    `keep_inside` moves the object just enough to keep all of it in the crop (a long,
    tapering object's centre of mass lies off its middle).
    """
    rng_bg, _, _, rng_place, rng_lint, rng_noise, rng_dust, spec_ss = _spawn(ss)
    light = Lighting.random(rng_bg)
    frame = _background((size, size), rng_bg)
    if rng_lint.random() < 0.15:
        _draw_lint(frame, rng_lint, 1, pixel_size_um)
    _draw_dust(frame, rng_dust, int(rng_dust.integers(0, 3)))
    layer = _render_layer(
        name,
        np.random.default_rng(spec_ss),
        diameter_px=None,
        pixel_size_um=pixel_size_um,
        light=light,
        overexposed=rng_place.random() < 0.06,
        max_diameter_px=0.9 * size,
        builder=builder,
        size_um=size_um,
    )
    ys, xs = np.nonzero(layer.mask)
    cy, cx = ys.mean(), xs.mean()
    y0, x0 = round(size / 2 - 0.5 - cy), round(size / 2 - 0.5 - cx)
    if keep_inside:
        rows, cols = np.flatnonzero(layer.mask.any(1)), np.flatnonzero(layer.mask.any(0))
        y0 = _clamp(y0, 1 - int(rows[0]), size - 2 - int(rows[-1]))
        x0 = _clamp(x0, 1 - int(cols[0]), size - 2 - int(cols[-1]))
    _composite(frame, None, layer, y0, x0, 0)
    return _finish(
        frame,
        rng_noise,
        vignette=rng_noise.uniform(0.0, 0.08),
        exposure=rng_noise.uniform(0.9, 1.1),
    )


def _clamp(value: int, lo: int, hi: int) -> int:
    """`value` moved into [lo, hi]; the midpoint when the range is empty (too big)."""
    if lo > hi:
        return (lo + hi) // 2
    return min(max(value, lo), hi)


def _seed_for(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([int(seed), *keys]).generate_state(1)[0])


_CSV_FIELDS = [
    "tray",
    "image",
    "id",
    "class_name",
    "class_index",
    "centroid_y",
    "centroid_x",
    "bbox_min_row",
    "bbox_min_col",
    "bbox_max_row",
    "bbox_max_col",
    "area_px",
    "diameter_um",
    "clipped",
    "touching",
    "overexposed",
    "morph",
    "mean_grey",
]


def write_synth(
    out_dir: str | Path,
    *,
    trays: int = 2,
    crops_per_class: int = 50,
    seed: int = 0,
    shape: tuple[int, int] = DEFAULT_SHAPE,
    n_specimens: int = 60,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Write synthetic tray frames with ground truth and an ImageFolder of labelled crops.

    `progress(done, total, message)` is called after each file (the CLI draws a bar).

    Layout::

        out_dir/trays/tray_000.png          RGB frame
        out_dir/trays/tray_000_labels.png   16-bit label image (0 = background)
        out_dir/trays/tray_000.json         render settings + one row per specimen
        out_dir/trays/truth.csv             every tray's specimens, one row each
        out_dir/crops/<class>/<class>_00000.png   224 x 224 crops (torchvision ImageFolder)

    Returns
    -------
    dict
        ``out_dir``, ``trays`` (image paths), ``truth_csv``, ``crops_dir``,
        ``tray_counts`` and ``crop_counts`` (per class).
    """
    import imageio.v3 as iio

    if trays < 0 or crops_per_class < 0:
        raise ValueError(f"trays and crops_per_class must be >= 0, got {trays}, {crops_per_class}")
    out = Path(out_dir)
    tray_dir, crop_dir = out / "trays", out / "crops"
    tray_paths: list[str] = []
    tray_counts = dict.fromkeys(CLASSES, 0)
    total = trays + crops_per_class * len(CLASSES)
    done = 0

    def tick(message: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, message)

    csv_rows: list[dict[str, Any]] = []
    if trays:
        tray_dir.mkdir(parents=True, exist_ok=True)
    for t in range(trays):
        tray_seed = _seed_for(seed, 0, t)
        render = render_tray(tray_seed, shape=shape, n_specimens=n_specimens)
        name = f"tray_{t:03d}"
        iio.imwrite(tray_dir / f"{name}.png", render.image, compress_level=3)
        if render.labels.max() <= np.iinfo(np.uint16).max:
            label_path = tray_dir / f"{name}_labels.png"
            iio.imwrite(label_path, render.labels.astype(np.uint16), compress_level=3)
        else:  # more than 65535 specimens: 32-bit TIFF
            import tifffile

            label_path = tray_dir / f"{name}_labels.tif"
            tifffile.imwrite(label_path, render.labels)
        rows = render.truth_table()
        doc = {**render.meta, "image": f"{name}.png", "labels": label_path.name, "specimens": rows}
        (tray_dir / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        for r in rows:
            tray_counts[r["class_name"]] += 1
            cy, cx = r["centroid_yx"]
            b = r["bbox"]
            csv_rows.append(
                {
                    "tray": t,
                    "image": f"{name}.png",
                    "id": r["id"],
                    "class_name": r["class_name"],
                    "class_index": r["class_index"],
                    "centroid_y": round(cy, 3),
                    "centroid_x": round(cx, 3),
                    "bbox_min_row": b[0],
                    "bbox_min_col": b[1],
                    "bbox_max_row": b[2],
                    "bbox_max_col": b[3],
                    "area_px": r["area_px"],
                    "diameter_um": r["diameter_um"],
                    "clipped": r["clipped"],
                    "touching": r["touching"],
                    "overexposed": r["overexposed"],
                    "morph": r["morph"],
                    "mean_grey": r["mean_grey"],
                }
            )
        tray_paths.append(str(tray_dir / f"{name}.png"))
        tick(f"{name}.png")
    truth_csv = None
    if trays:
        truth_csv = tray_dir / "truth.csv"
        with truth_csv.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=_CSV_FIELDS)
            writer.writeheader()
            writer.writerows(csv_rows)
    crop_counts = dict.fromkeys(CLASSES, 0)
    for k, name in enumerate(CLASSES):
        if not crops_per_class:
            continue
        folder = crop_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(crops_per_class):
            crop = render_crop(name, _seed_for(seed, 1, k, i))
            iio.imwrite(folder / f"{name}_{i:05d}.png", crop, compress_level=3)
            crop_counts[name] += 1
            tick(f"crops/{name}")
    return {
        "out_dir": str(out),
        "trays": tray_paths,
        "truth_csv": str(truth_csv) if truth_csv else None,
        "crops_dir": str(crop_dir) if crops_per_class else None,
        "tray_counts": tray_counts,
        "crop_counts": crop_counts,
        "seed": int(seed),
    }
