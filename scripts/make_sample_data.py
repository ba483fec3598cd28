"""Write the small committed examples in sample_data/ from the seeded synthetic renderer.

    python scripts/make_sample_data.py [OUT_DIR]

The napari sample-data contributions open these files (or render the same pictures when
the files are not there). Run again after changing the renderer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from napari_foram._sample_data import (
    CROPS_PER_CLASS,
    TRAY_SEED,
    render_sample_crops,
    render_sample_tray,
)


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    image, labels, truth, pixel_um = render_sample_tray()
    # JPEG keeps the committed examples small; the labels stay lossless PNG.
    iio.imwrite(out_dir / "tray.jpg", image, quality=90)
    if labels.max() > 255:
        raise SystemExit("more than 255 specimens: labels do not fit an 8-bit PNG")
    iio.imwrite(out_dir / "tray_labels.png", labels.astype(np.uint8), compress_level=9)
    meta = {"seed": TRAY_SEED, "pixel_size_um": pixel_um, "specimens": truth}
    (out_dir / "tray.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")

    crops, _names = render_sample_crops()
    n_classes = len(crops) // CROPS_PER_CLASS
    rows = [
        np.concatenate(list(crops[k * CROPS_PER_CLASS : (k + 1) * CROPS_PER_CLASS]), axis=1)
        for k in range(n_classes)
    ]
    iio.imwrite(out_dir / "crops_gallery.jpg", np.concatenate(rows, axis=0), quality=90)
    for f in sorted(out_dir.iterdir()):
        print(f"{f}  {f.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "sample_data")
