"""Micrometres per pixel from an image file's metadata, where the file records it.

Read, in this order: OME-TIFF ``PhysicalSizeX`` (with its unit), Micro-Manager's
``PixelSizeUm`` (its TIFF metadata or a ``*_metadata.txt`` beside the file), an ImageJ
description's ``unit=micron`` with the resolution tags, and plain TIFF resolution tags in
centimetres. Resolution tags in inches, or in centimetres at a common print resolution,
are ignored: cameras and editors write 72, 96, 150 or 300 "dpi" for printing, which says
nothing about the sample. Anything else (PNG, JPEG, a
TIFF without these): None, and the detector derives its minimum size from the image.

Kept apart from `frames.py` (which reads pixels): this reads only the file's header.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from napari_foram._outputs import read_small_file

__all__ = ["read_pixel_size"]

#: Micrometres per unit, for OME's PhysicalSizeXUnit and ImageJ's unit names.
_UM_PER_UNIT = {
    "m": 1e6,
    "cm": 1e4,
    "mm": 1e3,
    "um": 1.0,
    "µm": 1.0,
    "\u03bcm": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "nm": 1e-3,
}


#: Print resolutions (dots per inch) that editors write whatever the picture shows.
_PRINT_DPI = (72, 96, 100, 150, 180, 200, 240, 300, 350, 400, 600, 720, 1200)


def _plausible(value: float | None) -> float | None:
    """Keep sizes a microscope for 0.1-1 mm specimens could give (1 nm to 50 um per
    pixel): coarser and a specimen would be a few pixels.
    """
    if value is None or not (1e-3 <= value <= 50.0):
        return None
    return float(value)


def _ome(xml: str) -> float | None:
    match = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', xml)
    if not match:
        return None
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', xml)
    factor = _UM_PER_UNIT.get(unit.group(1) if unit else "um")
    return _plausible(float(match.group(1)) * factor) if factor else None


def _micro_manager(meta: Any) -> float | None:
    """``PixelSizeUm`` anywhere in Micro-Manager's summary or per-frame metadata."""
    if isinstance(meta, dict):
        for key in ("PixelSizeUm", "PixelSize_um"):
            if key in meta:
                try:
                    return _plausible(float(meta[key]))
                except (TypeError, ValueError):
                    pass
        for value in meta.values():
            found = _micro_manager(value)
            if found:
                return found
    return None


def _resolution(tags: Any, description: str) -> float | None:
    """Pixel size from XResolution (pixels per unit) and the unit the file names."""
    res = tags.get("XResolution")
    if res is None:
        return None
    num, den = res.value if isinstance(res.value, tuple) else (res.value, 1)
    if not num or not den:
        return None
    per_unit = float(num) / float(den)  # pixels per unit
    imagej_unit = re.search(r"^unit=(\S+)", description, re.MULTILINE)
    if imagej_unit:
        factor = _UM_PER_UNIT.get(imagej_unit.group(1).replace("\\u00B5", "µ"))
        return _plausible(factor / per_unit) if factor else None
    unit = tags.get("ResolutionUnit")
    if unit is not None and int(unit.value) == 3:  # centimetre
        # A print resolution converted to centimetres (150 dpi = 59.06 px/cm) is not one.
        if any(abs(per_unit * 2.54 - dpi) < 0.5 for dpi in _PRINT_DPI):
            return None
        return _plausible(1e4 / per_unit)
    return None  # inch or none: a print resolution, not the sample's


def read_pixel_size(path: str | Path) -> float | None:
    """Micrometres per pixel recorded in the file, or None.

    Parameters
    ----------
    path
        An image file. Only TIFF files (OME-TIFF, Micro-Manager, ImageJ, plain TIFF with
        metric resolution tags) carry a size this reader trusts; a Micro-Manager
        ``metadata.txt`` beside any image is read too.

    Returns
    -------
    float or None
        Micrometres per pixel; None when the file does not say (never raises for an
        unreadable header).
    """
    p = Path(path)
    if p.suffix.lower() in (".tif", ".tiff"):
        try:
            import tifffile

            with tifffile.TiffFile(p) as tif:
                page = tif.pages.first
                description = str(getattr(page, "description", "") or "")
                if tif.is_ome and tif.ome_metadata:
                    found = _ome(tif.ome_metadata)
                    if found:
                        return found
                if tif.is_micromanager:
                    found = _micro_manager(tif.micromanager_metadata)
                    if found:
                        return found
                tags = page.tags
                mm_tag = tags.get("MicroManagerMetadata")
                if mm_tag is not None:
                    found = _micro_manager(mm_tag.value)
                    if found:
                        return found
                if description.startswith("{"):
                    try:
                        found = _micro_manager(json.loads(description))
                    except ValueError:
                        found = None
                    if found:
                        return found
                found = _resolution(tags, description)
                if found:
                    return found
        except Exception:  # a header we cannot parse is "not known", not an error
            pass
    for sidecar in (p.with_name(p.stem + "_metadata.txt"), p.with_name("metadata.txt")):
        if sidecar.is_file():
            try:
                # Only a regular file of sane size is read (never a FIFO or a huge file
                # that happens to carry the name).
                text = read_small_file(sidecar, "Micro-Manager metadata file")
                return _micro_manager(json.loads(text.decode("utf-8", errors="replace")))
            except ValueError:
                return None
    return None
