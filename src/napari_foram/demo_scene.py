"""The demo scene: a seeded synthetic tray sized for a grid of overlapping camera fields.

Core code (the live counter's simulated microscope) and the app (the demo, the benchmark)
build the same scene; it lives here, below both, so that core never imports the demo app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from napari_foram.defaults import CAMERA_SHAPE

if TYPE_CHECKING:
    from napari_foram.synthetic import TrayRender

__all__ = ["DemoScan", "make_demo_world"]


@dataclass(frozen=True)
class DemoScan:
    """Geometry of the demo: a tray imaged as rows x cols overlapping camera fields.

    The overlap must exceed the largest specimen (200 px) so that every specimen lies
    whole inside at least one field; clipped views are never counted.
    """

    rows: int = 3
    cols: int = 3
    camera_shape: tuple[int, int] = CAMERA_SHAPE
    overlap_fraction: float = 0.25
    specimens: int = 45
    touching_pairs: int = 2

    def world_shape(self) -> tuple[int, int]:
        """Tray size in pixels that the grid covers exactly."""
        h, w = self.camera_shape
        step_y = round(h * (1 - self.overlap_fraction))
        step_x = round(w * (1 - self.overlap_fraction))
        return (h + (self.rows - 1) * step_y, w + (self.cols - 1) * step_x)


def make_demo_world(seed: int, scan: DemoScan | None = None) -> TrayRender:
    """The synthetic tray the simulated microscope will scan."""
    from napari_foram.synthetic import render_tray

    scan = scan or DemoScan()
    return render_tray(
        seed,
        shape=scan.world_shape(),
        n_specimens=scan.specimens,
        clipped=False,
        touching_pairs=scan.touching_pairs,
    )
