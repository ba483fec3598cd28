"""Raw frames of a tray scan saved as OME-Zarr, read back as `Frame`s for a recount.

`run_scan(..., save_to="scan.ome.zarr")` writes an OME-Zarr v0.5 "bioformats2raw" layout:
one image per field (series ``"<p>_<row>_<col>"`` in the order the fields were imaged,
listed in ``OME/zarr.json``), each an array ``0`` whose group attributes hold the frames'
metadata (``ome_writers.frame_metadata``: ``position_x``/``position_y`` in stage
micrometres, one entry per plane written, with its ``storage_index``) and pymmcore-plus's
summary metadata (the camera's pixel size, pixel format and, when calibrated, the
pixel-size affine transform). The image's axes (``ome.multiscales[0].axes``) say what the
array holds:

* a monochrome camera (written by pymmcore-plus's data sink): ``(y, x)``, or ``(z, y, x)``
  with z-stacks;
* a colour camera (written by the adapter through ome-writers, the same library): a
  channel axis ``c`` of three planes, red, green and blue, first: ``(c, y, x)`` or
  ``(c, z, y, x)`` -- OME-NGFF puts channels before space axes and has no interleaved RGB
  axis. They are read back as the ``(H, W, 3)`` frames the live count saw. Viewers that
  read OME-NGFF show the three channels in their colours (the ``omero`` metadata); napari's
  own zarr reader opens one field's array ``<series>/0``, and ``channel_axis=0`` with
  red, green and blue additive colormaps shows it in colour.

Only that layout is read here (zarr and json, no pymmcore-plus): enough to recount a scan
with the same sample coordinates as the live count, so a better model can recount what
the lab imaged and an auditor can see every frame a count came from. A field the scan
never reached (stopped early: no frame metadata) is not read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_foram.frames import Frame, pixel_affine_from_micromanager

if TYPE_CHECKING:
    from collections.abc import Iterator

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
    rgb
        Colour frames (a channel axis of red, green and blue): frames are (H, W, 3).
    """

    path: Path
    series: tuple[str, ...]
    pixel_size_um: float | None
    pixel_affine: tuple[float, float, float, float] | None
    bit_depth: int | None
    z_planes: int
    rgb: bool = False

    def frames(self) -> Iterator[Frame]:
        """Every plane as a `Frame` with its stage position; the planes of a z-stack carry
        ``metadata["mda_index"]`` = {"g": field, "z": plane}, as from a live scan.
        """
        import zarr

        group: Any = zarr.open_group(str(self.path), mode="r")  # zarr's node union: untyped
        index = 0
        for field_no, name in enumerate(self.series):
            image_group = group[name]
            metas = list(image_group.attrs.get("ome_writers", {}).get("frame_metadata", []))
            if not metas:
                continue  # never imaged: the scan stopped before this field
            array = image_group["0"]
            axes = _axes(image_group.attrs, array)
            data = np.asarray(array[...])
            if self.rgb:
                # (..., y, x, 3): the frame as counted.
                data = np.moveaxis(data, axes.index("c"), -1)
                planes_shape = data.shape[:-3]
                planes = data.reshape(-1, *data.shape[-3:])
            else:
                planes_shape = data.shape[:-2]
                planes = data.reshape(-1, *data.shape[-2:])
            plane_metas = _plane_metadata(metas, axes[:-2], planes_shape, len(planes))
            for z, plane in enumerate(planes):
                meta = plane_metas[z]
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


def _axes(attrs: Any, array: Any) -> list[str]:
    """Names of an image's axes: its OME-NGFF multiscales, else the array's dimension
    names, else (..., y, x).
    """
    multiscales = attrs.get("ome", {}).get("multiscales") or [{}]
    names = [str(a.get("name", "")) for a in multiscales[0].get("axes", [])]
    if len(names) != len(array.shape):
        names = [str(n) for n in (getattr(array.metadata, "dimension_names", None) or ())]
    if len(names) != len(array.shape):
        names = [f"dim_{i}" for i in range(len(array.shape) - 2)] + ["y", "x"]
    return names


def _plane_metadata(
    metas: list[dict[str, Any]],
    index_axes: list[str],
    planes_shape: tuple[int, ...],
    n_planes: int,
) -> list[dict[str, Any]]:
    """Each plane's frame metadata. An entry's ``storage_index`` runs over `index_axes`
    (the stored axes before y, x); the colour axis "c" is not a plane of its own (three
    entries per colour plane: the first is taken), so `planes_shape` leaves it out.
    Entries without a storage index are taken in the order written.
    """
    keep = [i for i, name in enumerate(index_axes) if name != "c"]
    by_plane: list[dict[str, Any] | None] = [None] * n_planes
    for entry in metas:
        where = entry.get("storage_index")
        if not isinstance(where, list) or len(where) != len(index_axes):
            continue
        at = [int(where[i]) for i in keep]
        if any(not 0 <= i < n for i, n in zip(at, planes_shape, strict=True)):
            continue
        plane = int(np.ravel_multi_index(at, planes_shape)) if planes_shape else 0
        if by_plane[plane] is None:
            by_plane[plane] = entry
    if all(m is None for m in by_plane):
        step = 3 if "c" in index_axes else 1
        by_plane = [metas[i * step] if i * step < len(metas) else None for i in range(n_planes)]
    return [m if m is not None else {} for m in by_plane]


def _summary(attrs: Any) -> dict[str, Any]:
    summary = attrs.get("pymmcore_plus", {}).get("summary_metadata", {})
    return summary if isinstance(summary, dict) else {}


def _bits(value: Any) -> int | None:
    match = re.fullmatch(r"(?:Mono|RGB)(\d+)", str(value))
    return int(match.group(1)) if match else None


def _bit_depth(summary: dict[str, Any], info: dict[str, Any]) -> int | None:
    """Significant bits, as `acquire.camera_bit_depth` reads them live: the image's pixel
    format, or the camera's "PixelFormat" property when it says fewer (a Python camera's
    pixel format only knows its dtype: 16 for 12 bits in uint16).
    """
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
    array = first["0"]
    shape = tuple(array.shape)
    axes = _axes(first.attrs, array)
    rgb = "c" in axes[:-2]
    if rgb and shape[axes.index("c")] != 3:
        raise ValueError(
            f"{p}: {shape[axes.index('c')]} channels per field; only monochrome or RGB "
            "scans are read"
        )
    planes = [n for name, n in zip(axes[:-2], shape[:-2], strict=True) if name != "c"]
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
        z_planes=int(np.prod(planes)) if planes else 1,
        rgb=rgb,
    )
