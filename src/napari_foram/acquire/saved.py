"""Raw frames of a tray scan saved as OME-Zarr, read back as `Frame`s for a recount.

`run_scan(..., save_to="scan.ome.zarr")` hands the frames to pymmcore-plus's data sink
(ome-writers), which writes an OME-Zarr v0.5 "bioformats2raw" layout: one image per field
(series ``"<p>_<row>_<col>"`` in the order the fields were imaged, listed in
``OME/zarr.json``), each a ``(y, x)`` or ``(z, y, x)`` array ``0`` whose group attributes
hold the frames' metadata (``ome_writers.frame_metadata``: ``position_x``/``position_y``
in stage micrometres, one entry per plane) and pymmcore-plus's summary metadata (the
camera's pixel size, pixel format and, when calibrated, the pixel-size affine transform).

Only that layout is read here (zarr and json, no pymmcore-plus): enough to recount a scan
with the same sample coordinates as the live count, so a better model can recount what
the lab imaged and an auditor can see every frame a count came from.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_foram.frames import Frame, pixel_affine_from_micromanager

__all__ = ["SavedScan", "is_saved_scan", "read_saved_scan"]

#: File name endings `run_scan` accepts for raw frames. OME-Zarr only: pymmcore-plus 0.18
#: writes an ``x.ome.tif`` grid scan as a folder ``x/`` of per-field files (the name the
#: provenance would link to then does not exist), and OME-Zarr is what `read_saved_scan`
#: reads back for a recount.
RAW_SUFFIXES = (".ome.zarr",)


def is_saved_scan(path: str | Path) -> bool:
    """Whether `path` is an OME-Zarr folder written by pymmcore-plus's data sink."""
    p = Path(path)
    return p.is_dir() and (p / "OME" / "zarr.json").is_file()


@dataclass(frozen=True)
class SavedScan:
    """A saved tray scan: its fields, in the order they were imaged.

    Attributes
    ----------
    path
        The OME-Zarr folder.
    series
        Field image names, in acquisition order.
    pixel_size_um
        Micrometres per pixel (None if the scan had no pixel size).
    pixel_affine
        Camera orientation on the stage (`Frame.pixel_affine`), None when upright.
    bit_depth
        Significant bits of the camera (from its pixel format), or None.
    z_planes
        Focal planes per field (1 without z-stacks).
    """

    path: Path
    series: tuple[str, ...]
    pixel_size_um: float | None
    pixel_affine: tuple[float, float, float, float] | None
    bit_depth: int | None
    z_planes: int

    def frames(self) -> Iterator[Frame]:
        """Every plane as a `Frame` with its stage position; the planes of a z-stack carry
        ``metadata["mda_index"]`` = {"g": field, "z": plane}, as from a live scan."""
        import zarr

        group: Any = zarr.open_group(str(self.path), mode="r")  # zarr's node union: untyped
        index = 0
        for field_no, name in enumerate(self.series):
            image_group = group[name]
            metas = list(image_group.attrs.get("ome_writers", {}).get("frame_metadata", []))
            data = np.asarray(image_group["0"][...])
            planes = data.reshape(-1, *data.shape[-2:]) if data.ndim > 2 else data[None]
            for z, plane in enumerate(planes):
                meta = metas[z] if z < len(metas) else {}
                stage = None
                if "position_x" in meta and "position_y" in meta:
                    stage = (float(meta["position_x"]), float(meta["position_y"]))
                mda_index: dict[str, int] = {"g": field_no}
                if len(planes) > 1:
                    mda_index["z"] = z
                yield Frame(
                    image=plane,
                    index=index,
                    stage_xy_um=stage,
                    pixel_size_um=self.pixel_size_um,
                    source=f"{self.path}/{name}",
                    metadata={
                        "bit_depth": self.bit_depth,
                        "mda_index": mda_index,
                        "exposure_ms": 1000.0 * float(meta.get("exposure_time", 0.0)),
                        "raw_frames": str(self.path),
                    },
                    pixel_affine=self.pixel_affine,
                )
                index += 1


def _summary(attrs: Any) -> dict[str, Any]:
    summary = attrs.get("pymmcore_plus", {}).get("summary_metadata", {})
    return summary if isinstance(summary, dict) else {}


def _bits(value: Any) -> int | None:
    match = re.fullmatch(r"(?:Mono|RGB)(\d+)", str(value))
    return int(match.group(1)) if match else None


def _bit_depth(summary: dict[str, Any], info: dict[str, Any]) -> int | None:
    """Significant bits, as `acquire.camera_bit_depth` reads them live: the image's pixel
    format, or the camera's "PixelFormat" property when it says fewer (a Python camera's
    pixel format only knows its dtype: 16 for 12 bits in uint16)."""
    bits = _bits(info.get("pixel_format", ""))
    camera = info.get("camera_label")
    for device in summary.get("devices", []):
        if device.get("label") != camera:
            continue
        for prop in device.get("properties", []):
            if prop.get("name") == "PixelFormat":
                own = _bits(prop.get("value", ""))
                if own is not None and (bits is None or own < bits):
                    bits = own
    return bits


def read_saved_scan(path: str | Path) -> SavedScan:
    """Open a scan saved by `run_scan(..., save_to=...)` as OME-Zarr.

    Raises
    ------
    ValueError
        One line: not such a folder, or its metadata is not pymmcore-plus's.
    """
    import zarr

    p = Path(path)
    if not is_saved_scan(p):
        raise ValueError(f"{p}: not an OME-Zarr scan written by pymmcore-plus (no OME/zarr.json)")
    group: Any = zarr.open_group(str(p), mode="r")
    series = tuple(group["OME"].attrs.get("ome", {}).get("series", []))
    if not series:
        raise ValueError(f"{p}: the scan holds no fields")
    first = group[series[0]]
    info = (_summary(first.attrs).get("image_infos") or [{}])[0]
    px = info.get("pixel_size_um")
    pixel_size = float(px) if px and float(px) > 0 else None
    affine = info.get("pixel_size_affine")
    shape = first["0"].shape
    return SavedScan(
        path=p,
        series=series,
        pixel_size_um=pixel_size,
        pixel_affine=(
            pixel_affine_from_micromanager(affine, pixel_size)
            if affine is not None and pixel_size is not None
            else None
        ),
        bit_depth=_bit_depth(_summary(first.attrs), info),
        z_planes=int(np.prod(shape[:-2])) if len(shape) > 2 else 1,
    )
