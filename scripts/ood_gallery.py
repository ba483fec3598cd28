"""A picture of the synthetic out-of-distribution objects beside the four classes.

    python scripts/ood_gallery.py [--out PNG] [--n N] [--seed S]

One row per OOD kind (`napari_foram.synthetic_ood.OOD_KINDS`), then one row per class
(`napari_foram.synthetic.render_crop`), N crops each, labelled on the left; judge by eye
whether the OOD objects look like what they are meant to be, unlike the classes, yet of
the same size, colours and lighting.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from napari_foram.synthetic import CLASSES, render_crop
from napari_foram.synthetic_ood import OOD_KINDS, render_ood_crop

REPO = Path(__file__).resolve().parents[1]


def gallery(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """(rows, n) crops as one image, plus the row names."""
    rows: list[np.ndarray] = []
    names: list[str] = []
    for kind in OOD_KINDS:
        rows.append(np.stack([render_ood_crop(kind, seed + i) for i in range(n)]))
        names.append(f"OOD: {kind}")
    for name in CLASSES:
        rows.append(np.stack([render_crop(name, seed + i) for i in range(n)]))
        names.append(name)
    return np.stack(rows), names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "ood_gallery.png")
    parser.add_argument("--n", type=int, default=6, help="crops per row")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    crops, names = gallery(args.n, args.seed)
    n_rows, n_cols = crops.shape[:2]
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(1.6 * n_cols + 1.4, 1.6 * n_rows), squeeze=False
    )
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.imshow(crops[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color("tab:red" if r < len(OOD_KINDS) else "0.6")
        axes[r, 0].set_ylabel(names[r].replace("_", " "), fontsize=8)
    fig.suptitle(
        "Synthetic OOD objects (red frames) and the four classes, 224 px crops at 2.5 um/px",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
