"""One frame type for every source, and image normalisation.

Every source (Micro-Manager camera, the simulated microscope, a folder of files) yields a
`Frame`; everything downstream (detect, de-duplicate, classify, store) is the same code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: File suffixes that `read_image` accepts (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class Frame:
    """Pixels plus where and how they were taken.

    Attributes
    ----------
    image
        (H, W) grey or (H, W, C) colour array, as delivered by the source.
    index
        Position of the frame in its acquisition or folder (0-based).
    stage_xy_um
        Stage position of the image centre in micrometres, or None when unknown.
    pixel_size_um
        Micrometres per pixel at the sample, or None when unknown.
    timestamp
        Seconds since the epoch at acquisition (or file modification).
    source
        Where it came from: "micro-manager", "simulated", or a file path.
    metadata
        Anything else worth keeping (exposure, MDA event index, ...).
    """

    image: np.ndarray
    index: int = 0
    stage_xy_um: tuple[float, float] | None = None
    pixel_size_um: float | None = None
    timestamp: float = field(default_factory=time.time)
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def pixel_to_stage_um(self, y: float, x: float) -> tuple[float, float] | None:
        """Sample coordinates (x_um, y_um) of pixel (y, x), or None without stage/pixel size.

        The stage position is the centre of the field; image rows grow with stage y and
        columns with stage x (the convention of pymmcore-plus's grid plans).
        """
        if self.stage_xy_um is None or self.pixel_size_um is None:
            return None
        h, w = self.image.shape[:2]
        sx, sy = self.stage_xy_um
        return (
            sx + (x - (w - 1) / 2.0) * self.pixel_size_um,
            sy + (y - (h - 1) / 2.0) * self.pixel_size_um,
        )


def check_image(image: np.ndarray) -> None:
    """Raise ValueError with a one-line reason if `image` is not a usable 2-D picture."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a numpy array, got {type(image).__name__}")
    if image.size == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    if image.ndim not in (2, 3):
        raise ValueError(
            "expected a 2-D grey or (H, W, C) colour image, "
            f"got {image.ndim}-D shape {image.shape}"
        )
    if image.ndim == 3 and image.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"expected 1, 3 or 4 channels, got {image.shape[2]} (shape {image.shape})"
        )
    if image.dtype == bool or not (
        np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    ):
        raise ValueError(f"unsupported pixel type {image.dtype}")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).any():
        raise ValueError("image holds no finite values (all NaN or infinite)")


def to_uint8(image: np.ndarray, bit_depth: int | None = None) -> np.ndarray:
    """Scale any integer or float image to uint8 without clipping its real range.

    uint8 passes through. Wider integers are scaled by the largest value the camera could
    deliver: `bit_depth` when the source knows it (Micro-Manager does), else the smallest
    common scientific-camera depth (12, 14 or 16 bits) that holds the data, so a dim frame
    stays dim instead of being stretched. Floats in [0, 1] are scaled by 255; other floats
    are stretched from min to max. Non-finite values become 0.
    """
    check_image(image)
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.integer):
        lo = int(image.min())
        if lo < 0:  # signed data: shift to zero
            image = image.astype(np.int64) - lo
        hi = int(image.max())
        if bit_depth is not None:
            bits = int(bit_depth)
        else:
            needed = int(np.ceil(np.log2(hi + 1))) if hi > 0 else 1
            depths = (8,) if image.dtype.itemsize == 1 else (12, 14, 16, 32, 64)
            bits = next((d for d in depths if needed <= d), 64)
        gain = 255.0 / float(2**bits - 1)
        return np.clip(image.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)
    data = np.where(np.isfinite(image), image, np.nan).astype(np.float32)
    flo, fhi = float(np.nanmin(data)), float(np.nanmax(data))
    if flo >= 0.0 and fhi <= 1.0:
        out = data * 255.0
    elif fhi > flo:
        out = (data - flo) * (255.0 / (fhi - flo))
    else:
        out = np.zeros_like(data)
    return np.nan_to_num(np.clip(out + 0.5, 0, 255), nan=0.0).astype(np.uint8)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any accepted image as an (H, W, 3) uint8 array (grey replicated, alpha dropped)."""
    check_image(image)
    img = to_uint8(image)
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    if img.shape[2] == 4:
        # Alpha is display information, not sample information: drop it.
        return np.ascontiguousarray(img[:, :, :3])
    return img


@contextmanager
def _quiet_logger(name: str) -> Iterator[list[str]]:
    """Collect a library logger's messages instead of letting them reach stderr (they
    would add lines to our one-line error reports); yields the list of messages."""
    logger = logging.getLogger(name)
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage().strip().splitlines()[0])

    handler = _Collect(level=logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file into a numpy array, or raise ValueError with a one-line reason."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such file")
    if p.is_dir():
        raise ValueError(f"{p}: is a folder, not an image")
    suffix = p.suffix.lower()
    import io

    import imageio.v3 as iio

    # Read the bytes ourselves: imageio's plugin probing leaves file handles open when a
    # file turns out to be corrupt, and readers then work from memory only.
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ValueError(f"{p}: cannot read file ({exc.strerror or exc})") from exc
    readers: list[Callable[[], Any]] = [
        lambda: iio.imread(raw, extension=suffix) if suffix else iio.imread(raw)
    ]
    if suffix in (".tif", ".tiff"):
        import tifffile

        # tifffile keeps 16-bit and multi-page microscope TIFFs intact; Pillow (through
        # imageio) still reads the JPEG-compressed TIFFs some cameras write when the
        # optional imagecodecs package is missing.
        readers.insert(0, lambda: tifffile.imread(io.BytesIO(raw)))
    first_error: Exception | None = None
    data = None
    for reader in readers:
        try:
            with _quiet_logger("tifffile") as warnings:
                data = reader()
            if warnings and np.asarray(data).size == 0:
                # tifffile logs "invalid offset..." and returns nothing for a broken file
                raise ValueError(warnings[0])
            break
        except Exception as exc:  # every reader fails differently; the user needs one line
            first_error = first_error or exc
            data = None
    if data is None:
        assert first_error is not None
        msg = str(first_error).splitlines()[0] if str(first_error) else type(first_error).__name__
        raise ValueError(f"{p}: cannot read image ({msg})") from first_error
    data = np.asarray(data)
    # Multi-page TIFFs / animated files: take the first page, say nothing is lost silently.
    if data.ndim == 4 or (data.ndim == 3 and data.shape[-1] not in (1, 3, 4)):
        data = data[0]
    try:
        check_image(data)
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from None
    return data
