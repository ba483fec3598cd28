"""Matching found specimen centres to true ones, one to one, closest pairs first
(`match_points`): how detections and counts are scored against ground truth (synthetic
trays, hand-marked frames). Not `training.evaluate`, which scores a classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PointMatch:
    """One-to-one matching of found centres to true specimens.

    Attributes
    ----------
    truth_of_found : (n_found,) int
        Index of the true specimen each found one matched, -1 for a false detection.
    distance : (n_found,) float
        Distance to the matched true centre (NaN when unmatched).
    """

    truth_of_found: np.ndarray
    distance: np.ndarray
    n_truth: int

    @property
    def matched(self) -> int:
        """Found centres matched to a true specimen."""
        return int((self.truth_of_found >= 0).sum())

    @property
    def missed(self) -> int:
        """True specimens no found centre matched."""
        return self.n_truth - self.matched

    @property
    def false(self) -> int:
        """Found centres matched to no true specimen (false detections)."""
        return int((self.truth_of_found < 0).sum())

    @property
    def recall(self) -> float:
        """Matched true specimens as a fraction of all of them (1.0 when there are none)."""
        return self.matched / self.n_truth if self.n_truth else 1.0

    @property
    def false_rate(self) -> float:
        """False detections as a fraction of everything found."""
        n = len(self.truth_of_found)
        return self.false / n if n else 0.0


def match_points(found: np.ndarray, truth: np.ndarray, radius: np.ndarray | float) -> PointMatch:
    """Greedy nearest-first matching: each true specimen is matched at most once.

    Parameters
    ----------
    found : (n, 2) float
        Found centres.
    truth : (m, 2) float
        True centres, same units.
    radius : (m,) or scalar
        A found centre matches a true one only within this distance (e.g. its radius).
    """
    found = np.asarray(found, dtype=float).reshape(-1, 2)
    truth = np.asarray(truth, dtype=float).reshape(-1, 2)
    radius = np.broadcast_to(np.asarray(radius, dtype=float), (len(truth),))
    out = np.full(len(found), -1, dtype=np.int64)
    dist_out = np.full(len(found), np.nan)
    if len(found) and len(truth):
        d = np.hypot(found[:, None, 0] - truth[None, :, 0], found[:, None, 1] - truth[None, :, 1])
        # Closest pairs first, so a stray detection cannot steal a specimen's match.
        pairs = np.argwhere(d <= radius[None, :])
        pairs = pairs[np.argsort(d[pairs[:, 0], pairs[:, 1]], kind="stable")]
        used_t = np.zeros(len(truth), dtype=bool)
        for i, j in pairs:
            if out[i] >= 0 or used_t[j]:
                continue
            used_t[j] = True
            out[i], dist_out[i] = j, d[i, j]
    return PointMatch(truth_of_found=out, distance=dist_out, n_truth=len(truth))
