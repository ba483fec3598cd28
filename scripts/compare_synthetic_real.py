"""Put a synthetic tray beside a real one, to judge the renderer's realism by eye.

    python scripts/compare_synthetic_real.py [--realdata DIR] [--out PNG] [--seed N]

The real pictures are third-party files that live outside the repository (the shared
``realdata`` folder: ``$NAPARI_FORAM_REALDATA``, default ``<repo>/../shared/realdata``).
When they are missing the script prints one ``skipped: ...`` line and exits 0.

The figure has a row of whole frames (real tray, synthetic tray), a row of zoomed crops of
single grains/specimens from each, and, where the real foraminifer picture is present, a row
comparing it with synthetic crops of the same class. Only MIT-licensed real pictures are
used, and the figure names their sources. It holds third-party pixels: think before
committing it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

if TYPE_CHECKING:
    from napari_foram.synthetic import TrayRender

REPO = Path(__file__).resolve().parents[1]
REAL_TRAY = Path("rcos_trays/sediment_gravel/DSC_0049.png")
REAL_FORAM = Path("forimage/calcareous_benthic/Ammonia_parkinsoniana/foram.tif")
SOURCES = (
    "Real pictures: RCOS-MCFS/RCOS-Microfossil-Sorter (MIT), sediment gravel on black "
    "cloth; ThaiseRF/forImage (MIT), Ammonia parkinsoniana."
)


SHORT = {
    "planktic": "planktic",
    "calcareous_benthic": "calc. benthic",
    "agglutinated_benthic": "aggl. benthic",
    "sediment": "sediment",
}


def default_realdata() -> Path:
    env = os.environ.get("NAPARI_FORAM_REALDATA")
    return Path(env) if env else REPO.parent / "shared" / "realdata"


def read_rgb(path: Path) -> np.ndarray:
    """Any RGB(A)/grey picture as (H, W, 3) uint8 (PIL reads the JPEG-compressed TIFF)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def grain_crops(image: np.ndarray, n: int, size_factor: float = 2.6) -> list[np.ndarray]:
    """Square crops around the n largest bright blobs of a dark-background picture."""
    grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    smooth = ndi.median_filter(grey, size=7)
    thr = smooth.mean() + 2.0 * smooth.std()
    labels, count = ndi.label(smooth > thr)
    if count == 0:
        return []
    sizes = ndi.sum_labels(np.ones_like(grey), labels, index=np.arange(1, count + 1))
    order = np.argsort(sizes)[::-1]
    crops = []
    h, w = grey.shape
    boxes = ndi.find_objects(labels)
    for k in order:
        sl = boxes[k]
        cy, cx = (sl[0].start + sl[0].stop) // 2, (sl[1].start + sl[1].stop) // 2
        half = int(max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) * size_factor / 2)
        if cy - half < 0 or cx - half < 0 or cy + half > h or cx + half > w:
            continue
        crops.append(image[cy - half : cy + half, cx - half : cx + half])
        if len(crops) == n:
            break
    return crops


def synthetic_crops(tray: TrayRender) -> list[tuple[str, np.ndarray]]:
    """224 px crops centred on whole, lone specimens of the tray, one per class."""
    out = []
    h, w = tray.labels.shape
    for name in tray.classes:
        for s in tray.specimens:
            if s.class_name != name or s.clipped or s.touching or s.overexposed:
                continue
            cy, cx = (round(v) for v in s.centroid_yx)
            if 112 <= cy <= h - 112 and 112 <= cx <= w - 112:
                out.append((name, tray.image[cy - 112 : cy + 112, cx - 112 : cx + 112]))
                break
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--realdata",
        type=Path,
        default=default_realdata(),
        help="folder of real pictures (default: $NAPARI_FORAM_REALDATA or "
        "<repo>/../shared/realdata)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs/images/synthetic_vs_real.png")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    real_tray_path = args.realdata / REAL_TRAY
    if not real_tray_path.is_file():
        print(f"skipped: no real tray picture at {real_tray_path}")
        return 0

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_foram.synthetic import render_crop, render_tray

    real = read_rgb(real_tray_path)
    tray = render_tray(args.seed)
    real_crops = grain_crops(real, 4)
    synth_crops = synthetic_crops(tray)
    foram_path = args.realdata / REAL_FORAM
    foram = read_rgb(foram_path) if foram_path.is_file() else None

    rows = 3 if foram is not None else 2
    fig = plt.figure(figsize=(16, 6.2 + 3.2 * (rows - 1)), dpi=110)
    grid = fig.add_gridspec(
        rows, 8, height_ratios=[2.6] + [1.0] * (rows - 1), hspace=0.25, wspace=0.08
    )
    ax = fig.add_subplot(grid[0, :4])
    ax.imshow(real)
    ax.set_title(f"real: sediment gravel on black cloth ({real.shape[1]}x{real.shape[0]})")
    ax.axis("off")
    ax = fig.add_subplot(grid[0, 4:])
    ax.imshow(tray.image)
    edges = ", ".join(tray.meta["border_edges"]) or "none"
    ax.set_title(
        f"synthetic: render_tray({args.seed}), {len(tray.specimens)} specimens, "
        f"{tray.pixel_size_um} um/px, wall: {edges}"
    )
    ax.axis("off")
    for i in range(4):
        ax = fig.add_subplot(grid[1, i])
        if i < len(real_crops):
            ax.imshow(real_crops[i])
        ax.set_title("real grain" if i < len(real_crops) else "", fontsize=9)
        ax.axis("off")
    for i in range(4):
        ax = fig.add_subplot(grid[1, 4 + i])
        if i < len(synth_crops):
            name, crop = synth_crops[i]
            ax.imshow(crop)
            ax.set_title(f"synthetic {SHORT[name]}", fontsize=9)
        ax.axis("off")
    if foram is not None:
        ax = fig.add_subplot(grid[2, :2])
        ax.imshow(foram)
        ax.set_title("real calcareous benthic (Ammonia)", fontsize=9)
        ax.axis("off")
        picks = [
            ("calcareous_benthic", 3),
            ("calcareous_benthic", 8),
            ("planktic", 3),
            ("planktic", 5),
            ("agglutinated_benthic", 2),
            ("sediment", 4),
        ]
        for i, (name, seed) in enumerate(picks):
            ax = fig.add_subplot(grid[2, 2 + i])
            ax.imshow(render_crop(name, seed))
            ax.set_title(f"render_crop: {SHORT[name]}", fontsize=8)
            ax.axis("off")
    fig.text(0.5, 0.06 if rows == 3 else 0.02, SOURCES, ha="center", fontsize=8, color="0.3")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, bbox_inches="tight")
    # An adaptive 256-colour palette keeps the docs picture small (~4x) at no visible cost.
    from PIL import Image

    with Image.open(args.out) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
            args.out, optimize=True
        )
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
