"""The demo scene: a seeded synthetic tray sized for a grid of overlapping camera fields.

Core code (the live counter's simulated microscope) and the app (the demo, the benchmark)
build the same scene; it lives here, below both, so that core never imports the demo app.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram.defaults import CAMERA_SHAPE
from napari_foram.mosaic import Mosaic

if TYPE_CHECKING:
    from napari_foram.synthetic import TrayRender

__all__ = [
    "DemoScan",
    "SimulatedMicroscopeRig",
    "SimulatedMicroscopeSettings",
    "build_simulated_rig",
    "make_demo_world",
]


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


@dataclass(frozen=True)
class SimulatedMicroscopeSettings:
    """Settings of the built-in simulated microscope: a synthetic tray on a stage.

    `bit_depth` is the camera's (8: uint8 frames; 10, 12, 14, 16: uint16 frames) and
    `mono` gives a monochrome camera, which sees the tray's luma.
    """

    seed: int = 7
    camera_shape: tuple[int, int] = CAMERA_SHAPE
    rows: int = 3  # the tray covers this grid of fields at `overlap`
    cols: int = 3
    overlap: float = 0.25
    specimens: int = 45
    touching_pairs: int = 2
    thick_specimens: bool = False  # depth-dependent blur, for focus stacking
    bit_depth: int = 8
    mono: bool = False

    @classmethod
    def for_scan(cls, seed: int, scan: DemoScan, **kwargs: Any) -> SimulatedMicroscopeSettings:
        """Settings whose tray `scan` covers exactly (the demo's)."""
        given = {mine: getattr(scan, theirs) for mine, theirs in _SCAN_FIELDS.items()}
        return cls(seed=seed, **given, **kwargs)

    @property
    def scan(self) -> DemoScan:
        """The grid of camera fields the tray is made for."""
        return DemoScan(**{theirs: getattr(self, mine) for mine, theirs in _SCAN_FIELDS.items()})


#: `SimulatedMicroscopeSettings` field -> the `DemoScan` field it sets (one list, both ways).
_SCAN_FIELDS = {
    "rows": "rows",
    "cols": "cols",
    "camera_shape": "camera_shape",
    "overlap": "overlap_fraction",
    "specimens": "specimens",
    "touching_pairs": "touching_pairs",
}


def build_simulated_rig(settings: SimulatedMicroscopeSettings) -> SimulatedMicroscopeRig:
    """The simulated microscope over the seeded tray of `settings`: how the demo, Foram live
    and ``napari-foram live --simulate`` build it (the benchmark and tests that need a
    tray of their own give `SimulatedMicroscopeRig` their world directly).
    """
    world = make_demo_world(settings.seed, settings.scan)
    if settings.mono:
        # A monochrome camera records luminance: ITU-R BT.601 luma of the RGB tray.
        luma = world.image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        grey = np.clip(luma + 0.5, 0, 255).astype(np.uint8)
        world = replace(world, image=grey)
    return SimulatedMicroscopeRig(
        world,
        camera_shape=settings.camera_shape,
        seed=settings.seed,
        thick_specimens=settings.thick_specimens,
        bit_depth=settings.bit_depth,
    )


class SimulatedMicroscopeRig:
    """The built-in simulated microscope rigged with a synthetic tray on its stage: its
    Micro-Manager core (`acquire.create_simulated_core`), the tray, scan plans over it.

    Parameters
    ----------
    world
        The synthetic tray (image, labels, ground truth) the camera looks at.
    camera_shape
        Sensor size (rows, cols).
    seed
        Seed of the camera noise.
    noise
        Shot and read noise on or off.
    fail_after_frames, fail_after_moves
        Fault injection: the camera fails after that many frames, the XY stage after
        that many moves (None: never).
    thick_specimens
        Give each specimen its own height, so that one focal plane leaves some blurred.
    bit_depth
        Camera bit depth: 8 (uint8 frames) or 10, 12, 14, 16 (uint16 frames).
    mount_rotation_deg, mount_mirror
        A camera mounted turned and/or mirrored; its configuration carries the matching
        pixel-size affine transform (see `acquire.create_simulated_core`).
    """

    def __init__(
        self,
        world: TrayRender,
        *,
        camera_shape: tuple[int, int] = CAMERA_SHAPE,
        seed: int = 0,
        noise: bool = True,
        fail_after_frames: int | None = None,
        fail_after_moves: int | None = None,
        thick_specimens: bool = False,
        bit_depth: int = 8,
        mount_rotation_deg: int = 0,
        mount_mirror: bool = False,
    ) -> None:
        from napari_foram.acquire import create_simulated_core
        from napari_foram.acquire.simulated import height_map_from_labels

        self.world = world
        self.camera_shape = camera_shape
        self.pixel_size_um = world.pixel_size_um
        self.bit_depth = bit_depth
        self.core = create_simulated_core(
            world.image,
            world.pixel_size_um,
            camera_shape=camera_shape,
            noise=noise,
            seed=seed,
            fail_after_frames=fail_after_frames,
            fail_after_moves=fail_after_moves,
            bit_depth=bit_depth,
            mount_rotation_deg=mount_rotation_deg,
            mount_mirror=mount_mirror,
            # Thick specimens: each a dome of its own height, so that one focal plane
            # leaves some blurred (what focus stacking is for).
            height_map=(
                height_map_from_labels(world.labels, world.specimens, world.pixel_size_um)
                if thick_specimens
                else None
            ),
        )
        self._centres: list[tuple[float, float]] = []

    def world_px_to_um(self, row: float, col: float) -> tuple[float, float]:
        """Sample coordinates (x_um, y_um) of a world pixel (see acquire.simulated)."""
        return (col * self.pixel_size_um, row * self.pixel_size_um)

    def grid_sequence(
        self,
        rows: int,
        cols: int,
        overlap_fraction: float,
        *,
        z_planes: int = 1,
        z_step_um: float | None = None,
    ) -> Any:
        """An MDA grid scan of rows x cols fields centred on the tray (with `z_planes`
        focal planes per field, `z_step_um` apart, around the current focus).
        """
        from napari_foram.acquire import tray_scan_sequence

        h, w = self.world.image.shape[:2]
        centre = self.world_px_to_um((h - 1) / 2, (w - 1) / 2)
        return tray_scan_sequence(
            self.core,
            rows=rows,
            cols=cols,
            overlap_fraction=overlap_fraction,
            center_xy_um=centre,
            z_planes=z_planes,
            **({"z_step_um": z_step_um} if z_step_um is not None else {}),
        )

    def mosaic(self) -> Mosaic:
        """An empty mosaic covering the whole tray, for the viewer."""
        h, w = self.world.image.shape[:2]
        return Mosaic((0.0, 0.0), (h, w), self.pixel_size_um)

    def describe(self) -> dict[str, Any]:
        """Microscope state for the store's provenance record."""
        return {
            "microscope": "napari-foram simulated microscope",
            "camera_shape": list(self.camera_shape),
            "bit_depth": self.bit_depth,
            "colour": "mono" if self.world.image.ndim == 2 else "rgb",
            "pixel_size_um": self.pixel_size_um,
            "synthetic_seed": self.world.seed,
        }
