"""A tray mosaic: frames pasted at their stage positions, in sample coordinates.

The viewer shows one growing image of the tray instead of one layer per field; the
specimens' sample coordinates (micrometres) then line up with it directly.
"""

from __future__ import annotations

import numpy as np

from napari_foram.frames import Frame, to_rgb_uint8


class Mosaic:
    """An (H, W, 3) uint8 canvas covering a rectangle of the sample.

    Parameters
    ----------
    top_left_um
        Sample coordinates (x_um, y_um) of the canvas's pixel (0, 0) centre.
    shape
        Canvas size (rows, cols) in pixels.
    pixel_size_um
        Micrometres per canvas pixel (the camera's pixel size).
    """

    def __init__(
        self, top_left_um: tuple[float, float], shape: tuple[int, int], pixel_size_um: float
    ) -> None:
        if pixel_size_um <= 0:
            raise ValueError(f"pixel size must be positive, got {pixel_size_um}")
        self.top_left_um = (float(top_left_um[0]), float(top_left_um[1]))
        self.pixel_size_um = float(pixel_size_um)
        self.image = np.zeros((int(shape[0]), int(shape[1]), 3), dtype=np.uint8)

    @classmethod
    def covering(
        cls,
        centres_um: list[tuple[float, float]],
        field_shape: tuple[int, int],
        pixel_size_um: float,
    ) -> Mosaic:
        """A canvas just large enough for fields of `field_shape` centred at `centres_um`."""
        if not centres_um:
            raise ValueError("no field positions to cover")
        xs = np.array([c[0] for c in centres_um])
        ys = np.array([c[1] for c in centres_um])
        h, w = field_shape
        half_w, half_h = (w - 1) / 2 * pixel_size_um, (h - 1) / 2 * pixel_size_um
        left, top = xs.min() - half_w, ys.min() - half_h
        cols = round((xs.max() + half_w - left) / pixel_size_um) + 1
        rows = round((ys.max() + half_h - top) / pixel_size_um) + 1
        return cls((left, top), (rows, cols), pixel_size_um)

    @property
    def translate_yx_um(self) -> tuple[float, float]:
        """Where napari should place the canvas (row, col order), in micrometres."""
        return (self.top_left_um[1], self.top_left_um[0])

    def paste(self, frame: Frame) -> bool:
        """Copy a frame into the canvas at its stage position; False if it has none."""
        if frame.stage_xy_um is None:
            return False
        img = to_rgb_uint8(frame.upright_image())  # a turned camera's frame, as on the stage
        h, w = img.shape[:2]
        left_um = frame.stage_xy_um[0] - (w - 1) / 2 * self.pixel_size_um
        top_um = frame.stage_xy_um[1] - (h - 1) / 2 * self.pixel_size_um
        c0 = round((left_um - self.top_left_um[0]) / self.pixel_size_um)
        r0 = round((top_um - self.top_left_um[1]) / self.pixel_size_um)
        rows, cols = self.image.shape[:2]
        y0, x0 = max(r0, 0), max(c0, 0)
        y1, x1 = min(r0 + h, rows), min(c0 + w, cols)
        if y1 <= y0 or x1 <= x0:
            return False
        self.image[y0:y1, x0:x1] = img[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0]
        return True
