"""The rule a fast path must meet to replace fp32, and the decision it gives.

Part of `napari_foram.classify.precision` (whose module docstring says why this rule):
a fast path wins only if, on all the planned check crops, the one-sided `CONFIDENCE`
Clopper-Pearson lower bound of its top-1 agreement with fp32 is >= `TOP1_MIN`, its mean
absolute probability difference is <= `MEAN_ABS_DIFF_MAX`, and it is at least
`MIN_SPEEDUP` times fp32 (`pick`). `PathFigures` holds one path's figures against fp32,
`PrecisionChoice` the path chosen and why.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from napari_foram.classify.precision_paths import PRECISION_ENV

#: A fast path must agree with fp32 on at least this share of top-1 classes ...
TOP1_MIN = 0.995
#: ... and its MC mean probabilities may differ from fp32's by at most this on average.
MEAN_ABS_DIFF_MAX = 0.01
#: ... and be at least this much faster, or fp32 stays (a 3 % "win" is noise).
MIN_SPEEDUP = 1.1
#: ... all three read with this confidence: the one-sided Clopper-Pearson lower bound
#: of the top-1 agreement on the check crops must reach `TOP1_MIN`.
CONFIDENCE = 0.95


def _check_rule(top1_min: float, confidence: float) -> None:
    if not 0.0 < top1_min < 1.0:
        raise ValueError(f"top1_min must be in (0, 1), got {top1_min}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def agreement_lower_bound(agree: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson lower confidence bound on the top-1 agreement rate when
    `agree` of `n` crops agreed: the smallest rate p with P(X >= agree | n, p) >=
    1 - `confidence`, i.e. the (1 - confidence) quantile of Beta(agree, n - agree + 1);
    ``(1 - confidence) ** (1 / n)`` when all agreed, 0 when none (or no crop) did.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    agree, n = int(agree), int(n)
    if n < 0 or not 0 <= agree <= n:
        raise ValueError(f"need 0 <= agree <= n, got {agree} of {n}")
    if agree == 0:
        return 0.0
    if agree == n:
        return float((1.0 - confidence) ** (1.0 / n))
    from scipy.stats import beta

    return float(beta.ppf(1.0 - confidence, agree, n - agree + 1))


def max_disagreements(n: int, top1_min: float = TOP1_MIN, confidence: float = CONFIDENCE) -> int:
    """The most disagreements `n` checked crops may show with the lower bound still >=
    `top1_min`; -1 when even n of n agreeing is not enough (too few crops).
    """
    _check_rule(top1_min, confidence)
    d = -1
    while d + 1 <= n and agreement_lower_bound(n - d - 1, n, confidence) >= top1_min:
        d += 1
    return d


def min_check_crops(top1_min: float = TOP1_MIN, confidence: float = CONFIDENCE) -> int:
    """The fewest crops that can show `top1_min` (all of them agreeing): 598 for 99.5 %
    at 95 %.
    """
    _check_rule(top1_min, confidence)
    n = max(1, math.ceil(math.log(1.0 - confidence) / math.log(top1_min)))
    while agreement_lower_bound(n, n, confidence) < top1_min:  # float edge cases
        n += 1
    while n > 1 and agreement_lower_bound(n - 1, n - 1, confidence) >= top1_min:
        n -= 1
    return n


@dataclass
class PathFigures:
    """One path against fp32 on the check crops.

    `n_crops` crops were checked (fewer than `n_planned` when the path was rejected
    early or the time budget ran out), `disagreements` of them got another top-1 class
    than fp32, and `lower_bound` is the one-sided Clopper-Pearson lower confidence bound
    on the agreement rate from those counts (the rule reads it at `n_planned` crops).
    """

    path: str
    crops_per_s: float  # median of the timed batches (0: never timed)
    top1_agreement: float  # share of the checked crops with fp32's class (MC mean argmax)
    mean_abs_prob_diff: float  # mean |p - p_fp32| over crops and classes (MC means)
    max_abs_prob_diff: float
    n_crops: int
    agrees: bool  # accepted by the rule
    note: str = ""  # why accepted, rejected or not decided
    disagreements: int = 0
    lower_bound: float = 0.0
    n_planned: int = 0


@dataclass
class PrecisionChoice:
    """The path a predictor uses, and why."""

    path: str
    source: str  # "calibrated", "cache", "asked", "environment", "device"
    machine: dict[str, str] = field(default_factory=dict)
    figures: dict[str, PathFigures] = field(default_factory=dict)
    model: str = ""  # `model_fingerprint` the agreement was measured with
    threads: int = 0
    seconds: float = 0.0  # how long the calibration took
    note: str = ""  # the decision in words (e.g. "not enough evidence: ...")
    #: The rule and the check it was applied on: ``crops`` (what they were),
    #: ``n_asked`` and ``n_planned`` (the crops asked for, and those the rule was read
    #: on: fewer when ``capped_by_budget``), ``max_disagreements`` (at ``n_planned``),
    #: ``top1_min``, ``confidence``, ``bound``, ``max_seconds``.
    check: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        """Chosen path's speed over fp32's (1.0 when not measured)."""
        fp32 = self.figures.get("fp32")
        mine = self.figures.get(self.path)
        if fp32 is None or mine is None or fp32.crops_per_s <= 0:
            return 1.0
        return mine.crops_per_s / fp32.crops_per_s

    def describe(self) -> str:
        """One line for people: what was chosen, from what."""
        if self.source == "asked":
            return f"classifier precision {self.path} (as asked)"
        if self.source == "environment":
            return f"classifier precision {self.path} (from ${PRECISION_ENV})"
        if self.source == "device":
            return f"classifier precision {self.path} (GPU)"
        parts = []
        for name, fig in self.figures.items():
            text = f"{name} {fig.crops_per_s:.1f}/s" if fig.crops_per_s > 0 else name
            if name != "fp32" and fig.n_crops:
                agree = fig.n_crops - fig.disagreements
                text += (
                    f" top-1 {agree}/{fig.n_crops} ({fig.disagreements} disagreeing),"
                    f" lower bound {100 * fig.lower_bound:.2f}%"
                    f" diff {fig.mean_abs_prob_diff:.4f}"
                )
            if name != "fp32" and fig.note:
                text += f": {fig.note}"
            parts.append(text)
        how = "measured now" if self.source == "calibrated" else "cached"
        check = self.check
        if check:
            capped = (
                f" (cut from {check['n_asked']} to fit the {check.get('max_seconds', 0):.0f} s"
                " budget)"
                if check.get("capped_by_budget") and "n_asked" in check
                else ""
            )
            how += (
                f" on {check.get('n_planned', '?')} {check.get('crops', 'check crops')}{capped};"
                f" rule: {100 * float(check.get('confidence', CONFIDENCE)):.0f}% "
                f"{check.get('bound', 'lower')} lower bound on top-1 agreement >= "
                f"{100 * float(check.get('top1_min', TOP1_MIN)):.1f}%"
            )
        segments = [how, *([self.note] if self.note else []), *parts]
        return (
            f"classifier precision {self.path}: {self.speedup:.2f}x fp32 on "
            f"{self.machine.get('cpu', 'this CPU')} ({'; '.join(segments)})"
        )

    def to_dict(self) -> dict[str, Any]:
        """The choice, JSON-ready: what the precision cache keeps per model."""
        return {
            "path": self.path,
            "source": self.source,
            "machine": dict(self.machine),
            "figures": {k: asdict(v) for k, v in self.figures.items()},
            "model": self.model,
            "threads": self.threads,
            "seconds": self.seconds,
            "note": self.note,
            "check": dict(self.check),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrecisionChoice:
        """The choice `to_dict` wrote (fields an older cache lacks take their defaults)."""
        return cls(
            path=str(d["path"]),
            source=str(d.get("source", "cache")),
            machine={str(k): str(v) for k, v in d.get("machine", {}).items()},
            figures={k: PathFigures(**v) for k, v in d.get("figures", {}).items()},
            model=str(d.get("model", "")),
            threads=int(d.get("threads", 0)),
            seconds=float(d.get("seconds", 0.0)),
            note=str(d.get("note", "")),
            check=dict(d.get("check", {})),
        )


def pick(figures: dict[str, PathFigures]) -> str:
    """The fastest path that agrees with fp32 and beats it by `MIN_SPEEDUP`, else fp32."""
    fp32 = figures["fp32"].crops_per_s
    best, best_speed = "fp32", fp32
    for name, fig in figures.items():
        if name == "fp32" or not fig.agrees or fig.crops_per_s < MIN_SPEEDUP * fp32:
            continue
        if fig.crops_per_s > best_speed:
            best, best_speed = name, fig.crops_per_s
    return best


@dataclass
class _Tally:
    """A path's running counts against fp32."""

    n: int = 0
    disagree: int = 0
    abs_sum: float = 0.0
    abs_max: float = 0.0
    times: list[float] = field(default_factory=list)
    verdict: str = ""  # "", "accepted", "rejected", "undecided"
    note: str = ""

    def add(self, out: np.ndarray, ref: np.ndarray) -> None:
        diff = np.abs(out - ref)
        self.n += int(ref.shape[0])
        self.disagree += int(np.sum(out.argmax(axis=1) != ref.argmax(axis=1)))
        self.abs_sum += float(diff.sum())
        self.abs_max = max(self.abs_max, float(diff.max()))
