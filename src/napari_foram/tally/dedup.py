"""Count specimens, not detections: identity by position in sample coordinates.

A tray scan's fields overlap and live view images the same field many times a second.
A detection lying within a tolerance of a specimen already counted is the same specimen;
its record may be refined (a better view), never counted twice. The tolerance follows the
specimen's size, so neighbouring small specimens stay distinct while a large one that
shifts by a few micrometres between fields still matches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SpecimenRegistry:
    """Known specimen positions (x_um, y_um) with their diameters, for one sample.

    Parameters
    ----------
    tolerance_fraction
        A detection matches a known specimen when their centres are closer than this
        fraction of the larger of the two diameters.
    min_tolerance_um
        Floor on the matching distance (stage repeatability, centroid jitter).
    """

    tolerance_fraction: float = 0.5
    min_tolerance_um: float = 10.0
    positions_um: list[tuple[float, float]] = field(default_factory=list)
    diameters_um: list[float] = field(default_factory=list)
    #: Extent (x0, y0, x1, y1) of each known specimen in sample coordinates.
    boxes_um: list[tuple[float, float, float, float]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.positions_um)

    def match(
        self, xy_um: np.ndarray, diameters_um: np.ndarray, boxes_um: np.ndarray | None = None
    ) -> np.ndarray:
        """Index of the known specimen each detection is, or -1 for new ones.

        Detections in one call are also matched against each other (the first one wins),
        so one frame never yields the same specimen twice.

        Parameters
        ----------
        xy_um : (n, 2) float
            Detection centres in sample coordinates.
        diameters_um : (n,) float
            Equivalent diameters in micrometres.
        boxes_um : (n, 4) float, optional
            Extents (x0, y0, x1, y1); default: squares of the equivalent diameter.
        """
        xy = np.asarray(xy_um, dtype=np.float64).reshape(-1, 2)
        diam = np.asarray(diameters_um, dtype=np.float64).reshape(-1)
        if len(xy) != len(diam):
            raise ValueError(f"{len(xy)} positions but {len(diam)} diameters")
        if boxes_um is None:
            half = diam[:, None] / 2
            boxes = np.hstack([xy - half, xy + half])
        else:
            boxes = np.asarray(boxes_um, dtype=np.float64).reshape(-1, 4)
        out = np.full(len(xy), -1, dtype=np.int64)
        known = np.asarray(self.positions_um, dtype=np.float64).reshape(-1, 2)
        known_d = np.asarray(self.diameters_um, dtype=np.float64)
        for i in range(len(xy)):
            if len(known):
                dist = np.hypot(*(known - xy[i]).T)
                tol = np.maximum(
                    self.tolerance_fraction * np.maximum(known_d, diam[i]), self.min_tolerance_um
                )
                hits = np.flatnonzero(dist < tol)
                if hits.size:
                    out[i] = int(hits[np.argmin(dist[hits])])
                    continue
            # New: register at once so later detections in this batch match it.
            self.positions_um.append((float(xy[i, 0]), float(xy[i, 1])))
            self.diameters_um.append(float(diam[i]))
            self.boxes_um.append(tuple(float(v) for v in boxes[i]))  # type: ignore[arg-type]
            known = np.vstack([known, xy[i : i + 1]])
            known_d = np.append(known_d, diam[i])
            out[i] = -1
        return out

    def covers(self, box_um: tuple[float, float, float, float]) -> bool:
        """Whether a box (x0, y0, x1, y1) lies within a known specimen's extent (+20 %).

        A view of a specimen cut by the frame edge lies inside that specimen, so this
        tells a partial view of a counted specimen from a new one.
        """
        if not self.boxes_um:
            return False
        known = np.asarray(self.boxes_um, dtype=np.float64)
        # 10 % of each specimen's size as slack for centroid and outline jitter.
        slack_x = 0.1 * (known[:, 2] - known[:, 0])
        slack_y = 0.1 * (known[:, 3] - known[:, 1])
        x0, y0, x1, y1 = box_um
        inside = (
            (x0 >= known[:, 0] - slack_x)
            & (x1 <= known[:, 2] + slack_x)
            & (y0 >= known[:, 1] - slack_y)
            & (y1 <= known[:, 3] + slack_y)
        )
        return bool(inside.any())

    def register(
        self, xy_um: np.ndarray, diameters_um: np.ndarray, boxes_um: np.ndarray | None = None
    ) -> None:
        """Add specimens known from elsewhere (a resumed store, the end of a scan)."""
        xy = np.asarray(xy_um, dtype=np.float64).reshape(-1, 2)
        diam = np.asarray(diameters_um, dtype=np.float64).reshape(-1)
        if boxes_um is None:
            boxes = np.hstack([xy - diam[:, None] / 2, xy + diam[:, None] / 2])
        else:
            boxes = np.asarray(boxes_um, dtype=np.float64).reshape(-1, 4)
        self.positions_um.extend((float(a), float(b)) for a, b in xy)
        self.diameters_um.extend(float(d) for d in diam)
        self.boxes_um.extend(tuple(float(v) for v in b) for b in boxes)  # type: ignore[misc]
