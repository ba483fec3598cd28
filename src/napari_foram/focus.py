"""Focus stacking: one sharp extended-depth-of-field (EDF) image per field from a z-stack.

Forams are up to hundreds of micrometres thick and a stereo microscope at high zoom keeps
only a few tens of micrometres in focus, so no single focal plane shows every
specimen on the tray sharp. A tray scan with ``tray_scan_sequence(..., z_planes=N)`` takes
N planes per field; `ZStackAssembler` collects them as they arrive and hands one fused
`Frame` per field to the rest of the pipeline, which never sees the planes.

Pure numpy/scipy: no Qt, no pymmcore-plus (frames carry the MDA index as plain data).

Sharpness
---------
Both the global measure and the per-pixel decision use the Laplacian of Gaussian (LoG,
sigma `DEFAULT_LOG_SIGMA` = 1 px) of the grey image. Defocus is a low-pass filter, so the
band-pass energy the LoG responds to falls as a region leaves focus, while the Gaussian
part keeps the camera's pixel noise from counting as detail.

* `focus_measure`: the variance of the LoG over the whole image (the "variance of the
  Laplacian" of Pech-Pacheco et al., 2000, with Gaussian pre-smoothing). The pipeline's
  `views_sharpness` is a cheaper relative of it for crops (2 x 2 binning instead of the
  Gaussian, one channel), because it runs on every specimen of every frame.
* `fuse_stack`: per pixel, the local focus energy is the squared LoG averaged over a
  square window (`DEFAULT_ENERGY_SIZE`); each pixel takes the plane where it is highest.
  That decision map is then smoothed (a `DEFAULT_BLEND_SIZE` box over each plane's
  one-hot map) into soft weights, which removes isolated wrong choices (speckle) in flat
  regions, where the energy is mostly noise, and hides the seams between regions taken
  from different planes.

Box windows rather than Gaussians: on simulated z-stacks (5 planes of a 486 x 648 tray,
two seeds) they matched the sharp ground truth as well or slightly better (mean error
6.3-6.6 grey levels on specimens, against 6.6-6.7 with Gaussians of sigma 4 and 2, and
8.4-9.4 for the best single plane) in less time (0.16-0.37 s against 0.39-0.56 s for the
5 planes, on the shared 2-core machine); a box costs the same whatever its size.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi

if TYPE_CHECKING:
    from napari_foram.frames import Frame

__all__ = [
    "DEFAULT_BLEND_SIZE",
    "DEFAULT_ENERGY_SIZE",
    "DEFAULT_LOG_SIGMA",
    "ZStackAssembler",
    "focus_measure",
    "fuse_stack",
]

#: Scale (px) of the Laplacian of Gaussian: the finest detail that counts as sharpness.
DEFAULT_LOG_SIGMA = 1.0
#: Side (px) of the window over which the squared LoG is averaged into local energy:
#: wide enough to span a few texture details, narrow enough to follow a specimen's outline.
DEFAULT_ENERGY_SIZE = 9
#: Side (px) of the box that smooths the per-pixel plane choice into blending weights.
DEFAULT_BLEND_SIZE = 5

#: Rec. 601 luma weights: sharpness is judged on brightness, where the detail is.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _grey(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 brightness of an (H, W) or (H, W, C) image (C = 3 or 4: RGB[A])."""
    if image.ndim == 2:
        return image.astype(np.float32)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.asarray(image[..., :3].astype(np.float32) @ _LUMA)
    if image.ndim == 3 and image.shape[2] == 1:
        return image[..., 0].astype(np.float32)
    raise ValueError(f"expected an (H, W) or (H, W, 1|3|4) image, got shape {image.shape}")


def _log(grey: np.ndarray, sigma: float) -> np.ndarray:
    # Kernel radius 3 sigma instead of scipy's 4: a third faster, tails negligible.
    return np.asarray(ndi.gaussian_laplace(grey, sigma, truncate=3.0), dtype=np.float32)


def focus_measure(image: np.ndarray, *, sigma: float = DEFAULT_LOG_SIGMA) -> float:
    """Sharpness of a whole image: the variance of its Laplacian of Gaussian.

    Higher is sharper. Only comparable between images of the same scene, size and
    exposure (e.g. the planes of one z-stack): contrast and noise raise it too.

    Parameters
    ----------
    image
        (H, W) grey or (H, W, 3|4) colour array, any real dtype (judged on luma).
    sigma
        Scale of the LoG in pixels.
    """
    if not isinstance(image, np.ndarray) or image.size == 0:
        raise ValueError("image must be a non-empty numpy array")
    return float(np.var(_log(_grey(image), sigma), dtype=np.float64))


def _as_stack(planes: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    stack = np.asarray(planes) if isinstance(planes, np.ndarray) else np.stack(list(planes))
    if stack.ndim not in (3, 4) or stack.shape[0] == 0:
        raise ValueError(
            f"planes must be a (Z, H, W) or (Z, H, W, C) stack with Z >= 1, got {stack.shape}"
        )
    if stack.ndim == 4 and stack.shape[3] not in (1, 3, 4):
        raise ValueError(f"planes must have 1, 3 or 4 channels, got shape {stack.shape}")
    if not (np.issubdtype(stack.dtype, np.integer) or np.issubdtype(stack.dtype, np.floating)):
        raise ValueError(f"unsupported pixel type {stack.dtype}")
    return stack


def _fuse(
    stack: np.ndarray, log_sigma: float, energy_size: int, blend_size: int
) -> tuple[np.ndarray, list[float]]:
    """The fused image and each plane's `focus_measure` (computed on the way)."""
    n = stack.shape[0]
    energy = np.empty((n, *stack.shape[1:3]), np.float32)
    measures = []
    for z in range(n):
        log = _log(_grey(stack[z]), log_sigma)
        measures.append(float(np.var(log, dtype=np.float64)))
        log *= log
        energy[z] = ndi.uniform_filter(log, energy_size)
    if n == 1:
        return stack[0].copy(), measures
    choice = np.argmax(energy, axis=0)
    del energy  # Z full-size float maps: free them before the weights are made
    fused = np.zeros(stack.shape[1:], np.float32)
    total = np.zeros(stack.shape[1:3], np.float32)
    for z in range(n):
        chosen = choice == z
        if not chosen.any():
            continue
        # The smoothed one-hot maps of all planes still sum to one (a smoothed partition
        # of unity stays one); `total` only guards against rounding.
        weight = ndi.uniform_filter(chosen.astype(np.float32), blend_size)
        total += weight
        plane = stack[z].astype(np.float32)
        plane *= weight if stack.ndim == 3 else weight[..., None]
        fused += plane
    fused /= total if stack.ndim == 3 else total[..., None]
    if np.issubdtype(stack.dtype, np.integer):
        info = np.iinfo(stack.dtype)
        np.clip(np.rint(fused), info.min, info.max, out=fused)
    return fused.astype(stack.dtype), measures


def _check_params(log_sigma: float, energy_size: int, blend_size: int) -> None:
    if not (math.isfinite(log_sigma) and log_sigma > 0):
        raise ValueError(f"log_sigma must be a positive number of pixels, got {log_sigma!r}")
    for name, size in (("energy_size", energy_size), ("blend_size", blend_size)):
        if isinstance(size, bool) or int(size) != size or size < 1:
            raise ValueError(f"{name} must be a positive whole number of pixels, got {size!r}")


def fuse_stack(
    planes: np.ndarray | Sequence[np.ndarray],
    *,
    log_sigma: float = DEFAULT_LOG_SIGMA,
    energy_size: int = DEFAULT_ENERGY_SIZE,
    blend_size: int = DEFAULT_BLEND_SIZE,
) -> np.ndarray:
    """Extended-depth-of-field fusion of the planes of one field (see the module notes).

    Each pixel is taken, softly, from the plane where the local LoG energy around it is
    highest: a weighted average of the planes whose weights are the smoothed map of the
    per-pixel winners. The planes must be registered (same field, only the focus moved),
    as they are when a z-stack is taken without moving XY.

    Parameters
    ----------
    planes
        (Z, H, W) or (Z, H, W, C) stack, or a sequence of Z equal (H, W[, C]) arrays; any
        real dtype (typically uint8). Plane order does not matter.
    log_sigma
        Scale (px) of the Laplacian of Gaussian that measures sharpness.
    energy_size
        Side (px) of the window over which the squared LoG is averaged per pixel.
    blend_size
        Side (px) of the box that smooths the per-pixel decision into blending weights.

    Returns
    -------
    np.ndarray
        (H, W[, C]) array of the planes' dtype; integers are rounded and clipped to the
        dtype's range. A single plane is returned as a copy.

    Raises
    ------
    ValueError
        Not a stack of equal 2-D grey or colour images, or a non-positive parameter.
    """
    stack = _as_stack(planes)
    _check_params(log_sigma, energy_size, blend_size)
    return _fuse(stack, log_sigma, int(energy_size), int(blend_size))[0]


def _axis(key: Any) -> str:
    # useq's Axis is a str Enum whose str() is its value ("z"); plain strings pass as is.
    return str(key)


class ZStackAssembler:
    """Collects the z planes of each field and emits one fused `Frame` per field.

    Feed it frames in the order a scan delivers them (``run_scan(core, seq, assembler)``
    or from a processing worker); it calls `on_frame` with:

    * a fused frame as soon as all `z_planes` planes of a field have arrived. Planes are
      grouped by every MDA index axis except z (``metadata["mda_index"]`` of frames from
      `acquire.run_scan`), so fields may even interleave. The fused frame keeps the
      field's stage position, pixel size, source and the planes' metadata, with
      ``mda_index`` minus z, the latest plane's timestamp, ``index`` = its position in
      the assembler's output (the field ordinal of a z-stack scan) and
      ``metadata["focus_stack"]``: ``planes`` (fused from), ``expected_planes``,
      ``complete``, ``sharpest_plane`` (z index of the plane with the highest
      `focus_measure`), ``plane_focus`` (those measures by z index), ``z_indices`` and
      ``frame_indices`` (the planes' own indices);
    * every frame without a z index (a scan without z-stack, a live frame, a file)
      unchanged and at once. With ``z_planes == 1`` everything passes through.

    A scan that stops mid-stack (camera failure, cancel) leaves one field incomplete.
    Call `flush` after the scan: by default incomplete stacks are **dropped** (counted in
    `stacks_dropped`), because a field missing the planes where some specimens are sharp
    would be counted from a partly blurred image; ``flush(fuse_incomplete=True)`` fuses
    what there is instead (``focus_stack["complete"]`` is then False).

    Fusion runs in the thread that delivers the completing plane: called straight from
    `run_scan` that is the acquisition thread, which then waits for it before the next
    field (0.6-1.3 s for 5-9 planes of 972 x 1296 on our 2-core machine). Put the
    assembler behind the frame queue (in the `ProcessingWorker`) to overlap fusion with
    acquisition. Thread-safe.

    Parameters
    ----------
    z_planes
        Planes per field (the ``z_planes`` of the scan).
    on_frame
        Receives fused and passed-through frames; exceptions propagate to the caller
        of `add` (in `run_scan`: the scan stops and reports them).
    log_sigma, energy_size, blend_size
        Passed to `fuse_stack`.
    """

    def __init__(
        self,
        z_planes: int,
        on_frame: Callable[[Frame], None],
        *,
        log_sigma: float = DEFAULT_LOG_SIGMA,
        energy_size: int = DEFAULT_ENERGY_SIZE,
        blend_size: int = DEFAULT_BLEND_SIZE,
    ) -> None:
        if isinstance(z_planes, bool) or int(z_planes) != z_planes or z_planes < 1:
            raise ValueError(f"z_planes must be a positive integer, got {z_planes!r}")
        _check_params(log_sigma, energy_size, blend_size)
        self.z_planes = int(z_planes)
        self.on_frame = on_frame
        self._params = (float(log_sigma), int(energy_size), int(blend_size))
        self._lock = threading.Lock()
        # field key -> {z index: frame}; dicts keep first-arrival order for `flush`.
        self._pending: dict[Hashable, dict[int, Frame]] = {}
        self._emitted = 0
        #: Fused frames emitted (complete or not).
        self.fields_fused = 0
        #: Frames passed through without fusion.
        self.frames_passed = 0
        #: Incomplete stacks discarded by `flush`.
        self.stacks_dropped = 0

    # ------------------------------------------------------------------ input
    def add(self, frame: Frame) -> None:
        """Take one frame; emit a fused frame if it completes its field's stack.

        Raises
        ------
        ValueError
            The frame's z index is out of range or arrived twice for its field.
        """
        index = frame.metadata.get("mda_index")
        z = self._z_of(index)
        if z is None or self.z_planes == 1:
            with self._lock:
                self._emitted += 1
                self.frames_passed += 1
            self.on_frame(frame)
            return
        assert isinstance(index, Mapping)  # _z_of found z in it
        if not 0 <= z < self.z_planes:
            raise ValueError(f"z index {z} outside the {self.z_planes} planes expected")
        key = tuple(sorted((_axis(k), int(v)) for k, v in index.items() if _axis(k) != "z"))
        with self._lock:
            planes = self._pending.setdefault(key, {})
            if z in planes:
                raise ValueError(f"plane z={z} of field {dict(key)} arrived twice")
            planes[z] = frame
            complete = len(planes) == self.z_planes
            if complete:
                del self._pending[key]
        if complete:
            self._emit(planes)

    __call__ = add

    @staticmethod
    def _z_of(index: object) -> int | None:
        if not isinstance(index, Mapping):
            return None
        for k, v in index.items():
            if _axis(k) == "z":
                return int(v)
        return None

    # ------------------------------------------------------------------ output
    def flush(self, *, fuse_incomplete: bool = False) -> int:
        """End of scan: fuse (``fuse_incomplete=True``) or drop every incomplete stack.

        Returns
        -------
        int
            Number of incomplete stacks fused or dropped.
        """
        with self._lock:
            stacks = list(self._pending.values())
            self._pending.clear()
            if not fuse_incomplete:
                self.stacks_dropped += len(stacks)
        if fuse_incomplete:
            for planes in stacks:
                self._emit(planes)
        return len(stacks)

    @property
    def pending(self) -> int:
        """Fields with some but not all planes received."""
        with self._lock:
            return len(self._pending)

    def _emit(self, planes: dict[int, Frame]) -> None:
        order = sorted(planes)
        frames = [planes[z] for z in order]
        stack = _as_stack([f.image for f in frames])
        fused, measures = _fuse(stack, *self._params)
        first = frames[0]
        metadata = dict(first.metadata)
        metadata["mda_index"] = {
            k: v for k, v in first.metadata["mda_index"].items() if _axis(k) != "z"
        }
        metadata["focus_stack"] = {
            "planes": len(frames),
            "expected_planes": self.z_planes,
            "complete": len(frames) == self.z_planes,
            "sharpest_plane": order[int(np.argmax(measures))],
            "plane_focus": measures,
            "z_indices": order,
            "frame_indices": [f.index for f in frames],
        }
        with self._lock:
            index = self._emitted
            self._emitted += 1
            self.fields_fused += 1
        self.on_frame(
            replace(
                first,
                image=fused,
                index=index,
                timestamp=max(f.timestamp for f in frames),
                metadata=metadata,
            )
        )
