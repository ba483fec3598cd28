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
    """Known specimens of one sample: centres (x_um, y_um), diameters and extents.

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
    # Numpy columns, grown once per call (not per specimen): a long scan holds thousands.
    xy_um: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    diameter_um: np.ndarray = field(default_factory=lambda: np.zeros(0))
    box_um: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))

    def __len__(self) -> int:
        return int(self.xy_um.shape[0])

    def match(
        self, xy_um: np.ndarray, diameters_um: np.ndarray, boxes_um: np.ndarray | None = None
    ) -> np.ndarray:
        """Index of the known specimen each detection is, or -1 for new ones.

        New ones are registered. Detections in one call are also matched against each
        other (the first one wins), so one frame never yields the same specimen twice.

        Parameters
        ----------
        xy_um : (n, 2) float
            Detection centres in sample coordinates.
        diameters_um : (n,) float
            Equivalent diameters in micrometres.
        boxes_um : (n, 4) float, optional
            Extents (x0, y0, x1, y1); default: squares of the equivalent diameter.
        """
        xy, diam, boxes = _columns(xy_um, diameters_um, boxes_um)
        out = np.full(len(xy), -1, dtype=np.int64)
        n_known = len(self)
        if n_known and len(xy):
            # Everything against the specimens known before this call, at once.
            dist = np.hypot(
                xy[:, None, 0] - self.xy_um[None, :, 0], xy[:, None, 1] - self.xy_um[None, :, 1]
            )
            tol = np.maximum(
                self.tolerance_fraction * np.maximum(diam[:, None], self.diameter_um[None, :]),
                self.min_tolerance_um,
            )
            dist = np.where(dist < tol, dist, np.inf)
            nearest = dist.argmin(axis=1)
            hit = np.isfinite(dist[np.arange(len(xy)), nearest])
            out[hit] = nearest[hit]
        # Then the new ones against each other (a batch is one frame: a few dozen).
        new = np.flatnonzero(out < 0)
        kept: list[int] = []
        for i in new:
            if kept:
                others = np.asarray(kept)
                d = np.hypot(*(xy[others] - xy[i]).T)
                tol = np.maximum(
                    self.tolerance_fraction * np.maximum(diam[others], diam[i]),
                    self.min_tolerance_um,
                )
                close = np.flatnonzero(d < tol)
                if close.size:
                    out[i] = n_known + kept.index(int(others[close[np.argmin(d[close])]]))
                    continue
            kept.append(int(i))
        if kept:
            self._append(xy[kept], diam[kept], boxes[kept])
        # Rows registered just now stay -1 (new); duplicates within the batch point at them.
        return out

    def covers_pixels(self, points_um: np.ndarray, min_fraction: float = 0.98) -> bool:
        """Whether known specimens' extents (+10 % each) hold (nearly) all these points.

        The points are the pixels of a view cut by the frame edge, in sample coordinates
        (x_um, y_um). A cut view of one counted specimen lies inside that specimen; a cut
        view in which two touching counted specimens form one object lies inside the two
        together, though neither holds it alone and its box need not lie even in the
        union of their boxes (an L-shaped object's box has an empty corner). Deciding
        pixel by pixel tells both from a new specimen, whose pixels lie outside every
        known extent (or partly, beside a counted neighbour).

        Parameters
        ----------
        points_um : (k, 2) float
            The view's pixels in sample coordinates.
        min_fraction
            Share of the points that must be held: a little outline jitter beyond the
            slack does not make a counted specimen new.
        """
        points = np.asarray(points_um, dtype=np.float64).reshape(-1, 2)
        if not len(self) or not len(points):
            return False
        known = self.box_um
        # 10 % of each specimen's size as slack for centroid and outline jitter.
        slack = 0.1 * (known[:, 2:] - known[:, :2])
        lo, hi = known[:, :2] - slack, known[:, 2:] + slack
        # Only the extents near the view take part (a long scan knows thousands).
        near = np.flatnonzero(
            (lo[:, 0] <= points[:, 0].max())
            & (hi[:, 0] >= points[:, 0].min())
            & (lo[:, 1] <= points[:, 1].max())
            & (hi[:, 1] >= points[:, 1].min())
        )
        if not near.size:
            return False
        # (points, extents, x/y): each point against each nearby extent.
        inside = (points[:, None] >= lo[near]) & (points[:, None] <= hi[near])
        held = inside.all(axis=2).any(axis=1)
        return bool(held.mean() >= min_fraction)

    def register(
        self, xy_um: np.ndarray, diameters_um: np.ndarray, boxes_um: np.ndarray | None = None
    ) -> None:
        """Add specimens known from elsewhere (a resumed store, the end of a scan)."""
        self._append(*_columns(xy_um, diameters_um, boxes_um))

    def _append(self, xy: np.ndarray, diam: np.ndarray, boxes: np.ndarray) -> None:
        self.xy_um = np.concatenate([self.xy_um, xy])
        self.diameter_um = np.concatenate([self.diameter_um, diam])
        self.box_um = np.concatenate([self.box_um, boxes])


def _columns(
    xy_um: np.ndarray, diameters_um: np.ndarray, boxes_um: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (n, 2) centres, (n,) diameters and (n, 4) boxes (default: squares)."""
    xy = np.asarray(xy_um, dtype=np.float64).reshape(-1, 2)
    diam = np.asarray(diameters_um, dtype=np.float64).reshape(-1)
    if len(xy) != len(diam):
        raise ValueError(f"{len(xy)} positions but {len(diam)} diameters")
    if boxes_um is None:
        half = diam[:, None] / 2
        return xy, diam, np.hstack([xy - half, xy + half])
    return xy, diam, np.asarray(boxes_um, dtype=np.float64).reshape(-1, 4)
