"""How a camera sits on the microscope: turned and/or mirrored relative to the stage.

Real cameras are mounted rotated or mirrored relative to the stage; Micro-Manager records
that in the pixel-size affine transform of the configuration. The simulated microscope
(`acquire.simulated`) mounts its camera the same ways, and `mount_affine` gives the
transform such a configuration carries. Pure numpy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MOUNT_ROTATIONS", "mount_affine", "mount_image"]

#: Camera mountings the simulated microscope offers: degrees counter-clockwise.
MOUNT_ROTATIONS = (0, 90, 180, 270)


def _check_mount(rotation_deg: int) -> int:
    if isinstance(rotation_deg, bool) or rotation_deg not in MOUNT_ROTATIONS:
        raise ValueError(f"mount rotation must be one of {MOUNT_ROTATIONS}, got {rotation_deg!r}")
    return int(rotation_deg)


def mount_image(window: np.ndarray, rotation_deg: int = 0, mirror: bool = False) -> np.ndarray:
    """What a camera mounted `rotation_deg` (counter-clockwise) and optionally mirrored
    records of a world-oriented `window` (rows along stage y, columns along x): mirrored
    left-right first, then rotated (a view, no copy).
    """
    out = window[:, ::-1] if mirror else window
    return np.rot90(out, k=_check_mount(rotation_deg) // 90, axes=(0, 1))


def mount_affine(
    pixel_size_um: float, rotation_deg: int = 0, mirror: bool = False
) -> tuple[float, float, float, float]:
    """Micro-Manager's pixel-size affine transform (its linear part (a, b, c, d), see
    `Frame.pixel_affine`) of a camera mounted as in `mount_image`: the stage step of one
    pixel along camera columns is (a, c), along camera rows (b, d).

    Read off `mount_image` itself (world coordinates pushed through the same flips), so
    the transform and the pixels cannot disagree.
    """
    rows, cols = np.mgrid[0:3, 0:3]
    cam_x = mount_image(cols, rotation_deg, mirror)  # world column seen at each camera px
    cam_y = mount_image(rows, rotation_deg, mirror)
    px = float(pixel_size_um)
    a, c = (float(v[1, 2] - v[1, 1]) * px for v in (cam_x, cam_y))
    b, d = (float(v[2, 1] - v[1, 1]) * px for v in (cam_x, cam_y))
    return (a, b, c, d)
