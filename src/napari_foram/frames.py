"""One frame type for every source, and image normalisation.

Every source (Micro-Manager camera, the simulated microscope, a folder of files) yields a
`Frame`; everything downstream (detect, de-duplicate, classify, store) is the same code.
"""

from __future__ import annotations

import logging
import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram.reasons import one_line

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

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
    pixel_affine
        How the camera is mounted on the stage: (a, b, c, d), micrometres of stage x and
        y per pixel step, ``dx = a * dcol + b * drow``, ``dy = c * dcol + d * drow``: the
        linear part of Micro-Manager's pixel-size affine transform. None: rows grow with
        stage y and columns with stage x at `pixel_size_um` (no rotation, no mirror).
    """

    image: np.ndarray
    index: int = 0
    stage_xy_um: tuple[float, float] | None = None
    pixel_size_um: float | None = None
    timestamp: float = field(default_factory=time.time)
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    pixel_affine: tuple[float, float, float, float] | None = None

    def pixel_to_stage_um(self, y: float, x: float) -> tuple[float, float] | None:
        """Sample coordinates (x_um, y_um) of pixel (y, x), or None without stage/pixel size.

        The stage position is the centre of the field. Without `pixel_affine` image rows
        grow with stage y and columns with stage x (the convention of pymmcore-plus's grid
        plans); with it, a camera mounted rotated or mirrored maps through it.
        """
        if self.stage_xy_um is None or self.pixel_size_um is None:
            return None
        h, w = self.image.shape[:2]
        sx, sy = self.stage_xy_um
        dcol, drow = x - (w - 1) / 2.0, y - (h - 1) / 2.0
        if self.pixel_affine is None:
            return (sx + dcol * self.pixel_size_um, sy + drow * self.pixel_size_um)
        a, b, c, d = self.pixel_affine
        return (sx + a * dcol + b * drow, sy + c * dcol + d * drow)

    def upright_image(self) -> np.ndarray:
        """The image turned as the stage sees it (rows along stage y, columns along x): a
        camera mounted at a multiple of 90 degrees and/or mirrored (`pixel_affine`) undone
        by flips and a transpose (views, no copy). Other angles: the image as it is.
        """
        if self.pixel_affine is None:
            return self.image
        a, b, c, d = self.pixel_affine
        tol = 1e-6 * max(abs(a), abs(b), abs(c), abs(d))
        out = self.image
        if abs(b) <= tol and abs(c) <= tol:  # columns along stage x, rows along y
            x_sign, y_sign = a, d
        elif abs(a) <= tol and abs(d) <= tol:  # turned: columns along stage y
            out = out.swapaxes(0, 1)  # now rows follow camera columns, columns camera rows
            x_sign, y_sign = b, c
        else:
            return self.image
        if x_sign < 0:
            out = out[:, ::-1]
        if y_sign < 0:
            out = out[::-1]
        return out


#: Micro-Manager's pixel-size affine transform when none was calibrated (a, b, c, d).
_UNSET_AFFINE = (1.0, 0.0, 0.0, 1.0)


def pixel_affine_from_micromanager(
    affine: Any, pixel_size_um: float
) -> tuple[float, float, float, float] | None:
    """`Frame.pixel_affine` from Micro-Manager's pixel-size affine transform.

    `affine` is (a, b, tx, c, d, ty) as ``getPixelSizeAffine`` returns it. None when the
    camera is upright: Micro-Manager's uncalibrated default (the identity, whatever the
    pixel size), a transform that says upright, or a degenerate one. The transform's own
    scale is replaced by `pixel_size_um` (which follows binning and magnification), so a
    bare rotation or mirror (entries +-1) works as well as a calibrated transform.
    """
    try:
        a, b, _tx, c, d, _ty = (float(v) for v in affine)
    except (TypeError, ValueError):
        return None
    det = a * d - b * c
    if not all(math.isfinite(v) for v in (a, b, c, d)) or abs(det) < 1e-12:
        return None
    if (a, b, c, d) == _UNSET_AFFINE or not (pixel_size_um and pixel_size_um > 0):
        return None
    s = float(pixel_size_um) / math.sqrt(abs(det))
    linear = (a * s, b * s, c * s, d * s)
    if np.allclose(linear, (pixel_size_um, 0.0, 0.0, pixel_size_um), rtol=1e-9, atol=0.0):
        return None
    return linear


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
    would add lines to our one-line error reports); yields the list of messages.
    """
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


#: Largest image `read_image` decodes, in megapixels (shared by every entry point: detect,
#: classify, batch, training data). Checked from the file's header before decoding, so a
#: 30000 x 30000 image is refused in milliseconds instead of taking 2.7 GB.
MAX_MEGAPIXELS = 150.0
#: Largest image file `read_image` reads into memory, in bytes.
MAX_FILE_BYTES = 2 * 1024**3


def _fail(p: Path, reason: str) -> ValueError:
    return ValueError(f"{p}: {reason}")


def _check_pixels(p: Path, h: int, w: int, max_megapixels: float | None) -> None:
    if max_megapixels is not None and h * w > max_megapixels * 1e6:
        raise _fail(
            p,
            f"too large: {w} x {h} px = {h * w / 1e6:.0f} MP (limit {max_megapixels:g} MP)",
        )


#: EXIF / TIFF Orientation (tag 274) -> the stored pixels turned as every viewer shows
#: them (what Pillow's `ImageOps.exif_transpose` does; 1 is upright).
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda d: d[:, ::-1],
    3: lambda d: d[::-1, ::-1],
    4: lambda d: d[::-1],
    5: lambda d: d.swapaxes(0, 1),
    6: lambda d: np.rot90(d, -1),
    7: lambda d: d[::-1, ::-1].swapaxes(0, 1),
    8: lambda d: np.rot90(d, 1),
}


def upright(data: np.ndarray, orientation: int | None) -> np.ndarray:
    """`data` (rows, columns[, channels]) turned as its EXIF/TIFF Orientation says it is
    displayed: a camera held on its side stores the pixels as the sensor read them and
    writes 6 or 8; coordinates must be those of the picture the user sees. Values other
    than 2-8 (1, none, nonsense) leave it as it is, and so does a stack of frames (it is
    refused later, with its own shape).
    """
    turn = _ORIENT.get(int(orientation or 1))
    if turn is None or data.ndim not in (2, 3):
        return data
    return np.ascontiguousarray(turn(data))


def _cmyk_to_rgb(data: np.ndarray) -> np.ndarray:
    """(H, W, 4) CMYK samples (0 = no ink) as (H, W, 3) RGB of the same dtype, the way
    Pillow converts: each channel (max - ink) x (max - black) / max.
    """
    top = float(np.iinfo(data.dtype).max) if data.dtype.kind in "ui" else 1.0
    ink = data[..., :3].astype(np.float64)
    black = data[..., 3:4].astype(np.float64)
    rgb = (top - ink) * (top - black) / top
    if data.dtype.kind in "ui":
        return np.clip(np.rint(rgb), 0, top).astype(data.dtype)
    return rgb.astype(data.dtype)


def _pil_facts(raw: bytes) -> tuple[str | None, int]:
    """(Pillow's mode, EXIF Orientation) from an image's header, or (None, 1) when Pillow
    cannot tell. JPEG, PNG and TIFF carry the orientation in EXIF or the TIFF tag.
    """
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(raw)) as img:
                orientation = img.getexif().get(0x0112, 1)
                return img.mode, int(orientation) if isinstance(orientation, int) else 1
    except Exception:  # not a format Pillow knows, or a broken header: the decoder says
        return None, 1


def _pil_rgb(raw: bytes) -> np.ndarray:
    """Pillow's own RGB rendering of an image: CMYK JPEGs (plain, Adobe's inverted ones
    and YCCK, which Pillow and libjpeg decode to CMYK) as the colours they print.
    """
    import io
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(raw)) as img:
            return np.asarray(img.convert("RGB"))


def _tiff_image(p: Path, raw: bytes, max_megapixels: float | None) -> np.ndarray:
    """The main image of a TIFF as (H, W) or (H, W, C), by its axes (not its shape).

    - Samples (tifffile axis ``S``) are colour: planar RGB (3, H, W) and interleaved
      (H, W, 3) give the same (H, W, 3) image.
    - Two samples are grey + alpha when the file marks the second as alpha (the grey is
      read); otherwise there is no colour meaning to give them, and the file is refused.
    - A stack (pages or axes Z, T, C, Q, I ... longer than 1) is refused: which plane to
      count is the user's choice (or fuse a z-stack with `focus.fuse_stack` first).
    - Reduced-resolution pages (thumbnails, pyramids) are other series and are ignored.
    """
    import io

    import tifffile

    with tifffile.TiffFile(io.BytesIO(raw)) as tif:
        if not tif.series:
            raise ValueError("no image in the file")
        series = tif.series[0]
        axes, shape = series.axes, tuple(int(s) for s in series.shape)
        if "Y" not in axes or "X" not in axes:
            raise ValueError(f"no image plane (axes {axes})")
        _check_pixels(p, shape[axes.index("Y")], shape[axes.index("X")], max_megapixels)
        extra = [(a, n) for a, n in zip(axes, shape, strict=True) if a not in "YXS" and n > 1]
        if extra:
            what = ", ".join(f"{n} along {a}" for a, n in extra)
            raise _fail(
                p,
                f"holds a stack of images ({what}; axes {axes}): save the one image to "
                "count (or fuse a z-stack first)",
            )
        keyframe = series.keyframe
        extrasamples = tuple(getattr(keyframe, "extrasamples", ()) or ())
        # Photometric 5 (separated) with ink set 1 (tag 332, the default) is CMYK: four
        # inks, not RGB + alpha.
        tags = keyframe.tags
        inkset = tags.get(332)
        cmyk = int(keyframe.photometric) == 5 and (inkset is None or int(inkset.value) == 1)
        orientation_tag = tags.get(274)
        orientation = int(orientation_tag.value) if orientation_tag is not None else 1
        with _quiet_logger("tifffile") as messages:
            data = np.asarray(series.asarray())
        if data.size == 0 and messages:
            raise ValueError(messages[0])
    # Drop the length-1 axes, keep Y, X and S in that order.
    kept = [a for a, n in zip(axes, shape, strict=True) if a in "YXS" or n > 1]
    data = data.reshape([n for a, n in zip(axes, shape, strict=True) if a in kept])
    order = [kept.index(a) for a in "YXS" if a in kept]
    data = np.transpose(data, order)
    if cmyk and data.ndim == 3 and data.shape[2] >= 4:
        data = _cmyk_to_rgb(data[:, :, :4])  # a fifth sample would be alpha
    if data.ndim == 3 and data.shape[2] == 2:
        # TIFF ExtraSamples: 1 = associated alpha, 2 = unassociated alpha.
        if len(extrasamples) == 1 and int(extrasamples[0]) in (1, 2):
            return upright(np.ascontiguousarray(data[:, :, 0]), orientation)
        raise _fail(
            p,
            "has 2 channels that are not grey + alpha; save it as grey or RGB "
            "(napari-foram does not guess what 2 channels mean)",
        )
    return upright(data, orientation)


def _header_pixels(p: Path, raw: bytes, max_megapixels: float | None) -> None:
    """Refuse an image over the pixel limit from its header, before decoding it."""
    if max_megapixels is None:
        return
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning (89 MP) is not our limit: ours follows.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as img:  # lazy: reads the header only
                w, h = img.size
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
        raise _fail(
            p, f"too large: over {limit:.0f} MP from its header (limit {max_megapixels:g} MP)"
        ) from None
    except Exception:  # not a format Pillow knows: the decoder gives the reason
        return
    _check_pixels(p, int(h), int(w), max_megapixels)


def read_image(path: str | Path, *, max_megapixels: float | None = MAX_MEGAPIXELS) -> np.ndarray:
    """Read an image file into a numpy array, or raise ValueError with a one-line reason.

    Parameters
    ----------
    path
        A regular file (a FIFO, device or folder is refused before it is opened, so
        ``/dev/zero`` or a named pipe never hangs the reader).
    max_megapixels
        Largest image decoded (`MAX_MEGAPIXELS`); checked from the header first where
        the format allows (TIFF, PNG, JPEG, BMP). None: no limit.

    Returns
    -------
    numpy.ndarray
        (H, W) grey or (H, W, C) with C in 1, 3, 4, of the file's own dtype.

    Notes
    -----
    Channel layouts: planar RGB TIFFs (3, H, W) are read as RGB like interleaved ones;
    grey + alpha (a PNG in mode LA, a TIFF marking its second sample as alpha) is read
    as grey; any other 2-channel image is refused. Multi-page TIFFs and animated images
    (stacks, time series) are refused with the number of planes: which plane to count
    is not ours to guess. A TIFF's reduced-resolution pages (thumbnails) are ignored.
    CMYK pictures (JPEG, including Adobe's inverted CMYK and YCCK, and TIFF) are read as
    RGB. The EXIF / TIFF Orientation tag is honoured: the array is the picture as it is
    displayed, so every coordinate (detections, crops, stored positions) is in the
    displayed orientation (`upright`).
    """
    import os
    import stat

    p = Path(path)
    try:
        st = p.stat()  # follows links: a link to /dev/zero is a character device
    except FileNotFoundError:
        raise _fail(p, "no such file") from None
    except OSError as exc:  # a symlink loop, a name too long, no permission on a folder
        raise _fail(p, f"cannot open ({exc.strerror or type(exc).__name__})") from None
    if stat.S_ISDIR(st.st_mode):
        raise _fail(p, "is a folder, not an image")
    if not stat.S_ISREG(st.st_mode):
        raise _fail(p, "is not a regular file (a pipe, socket or device), not an image")
    if st.st_size == 0:
        raise _fail(p, "empty file (0 bytes)")
    if st.st_size > MAX_FILE_BYTES:
        raise _fail(p, f"file too large ({st.st_size / 1024**3:.1f} GB)")
    suffix = p.suffix.lower()
    import imageio.v3 as iio

    # Read the bytes ourselves: imageio's plugin probing leaves file handles open when a
    # file turns out to be corrupt, and readers then work from memory only.
    try:
        with p.open("rb") as fh:
            # Re-checked on the open handle: the name may have been swapped meanwhile.
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise _fail(p, "is not a regular file, not an image")
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise _fail(p, f"cannot read file ({exc.strerror or type(exc).__name__})") from None
    is_tiff = raw[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    readers: list[Callable[[], Any]] = []
    mode, orientation = _pil_facts(raw)

    def by_pillow() -> np.ndarray:
        # imageio hands CMYK over as four channels, which would pass for RGB + alpha
        # (black as alpha: a CMYK JPEG came out blank); Pillow converts it to RGB. The
        # picture is turned as displayed (EXIF Orientation) either way.
        data = (
            _pil_rgb(raw)
            if mode == "CMYK"
            else (iio.imread(raw, extension=suffix) if suffix else iio.imread(raw))
        )
        return upright(np.asarray(data), orientation)

    if is_tiff or suffix in (".tif", ".tiff"):
        # tifffile keeps 16-bit, planar and multi-page microscope TIFFs intact (and says
        # which they are; it turns CMYK to RGB and the picture as its Orientation tag
        # says); Pillow (through imageio) still reads the JPEG-compressed TIFFs some
        # cameras write when the optional imagecodecs package is missing.
        readers.append(lambda: _tiff_image(p, raw, max_megapixels))
    else:
        _header_pixels(p, raw, max_megapixels)
    readers.append(by_pillow)
    first_error: Exception | None = None
    data = None
    for reader in readers:
        try:
            with _quiet_logger("tifffile") as messages:
                data = reader()
            if messages and np.asarray(data).size == 0:
                # tifffile logs "invalid offset..." and returns nothing for a broken file
                raise ValueError(messages[0])
            break
        except ValueError as exc:
            if str(exc).startswith(f"{p}: "):
                raise  # our own reason (too large, a stack, 2 channels): final
            first_error = first_error or exc
            data = None
        except Exception as exc:  # every reader fails differently; the user needs one line
            first_error = first_error or exc
            data = None
    if data is None:
        assert first_error is not None
        msg = one_line(first_error)
        raise _fail(p, f"cannot read image ({msg})")
    data = np.asarray(data)
    if not is_tiff and data.ndim == 3 and data.shape[-1] == 2:
        data = data[:, :, 0]  # grey + alpha (PNG mode LA): the alpha is display only
    if data.ndim == 4 or (data.ndim == 3 and data.shape[-1] not in (1, 3, 4)):
        raise _fail(
            p,
            f"holds {data.shape[0]} images (frames or pages, shape {data.shape}): save the "
            "one image to count",
        )
    if data.ndim >= 2 and max_megapixels is not None:
        _check_pixels(p, int(data.shape[0]), int(data.shape[1]), max_megapixels)
    try:
        check_image(data)
    except ValueError as exc:
        raise _fail(p, str(exc)) from None
    return data


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that orders embedded numbers by value: ``tray2`` before ``tray10``.

    Case-insensitive first, the text itself breaking ties, so the order is total and the
    same on every platform.
    """
    parts = re.split(r"(\d+)", text.lower())
    # re.split with a group alternates text and digit runs, so position i always holds the
    # same kind in every key and int/str are never compared.
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), text)
