"""Fast CPU paths for VGG16's conv blocks, and the per-machine choice between them.

VGG16 costs 15.5 GFLOP per crop, almost all in its 13 convolutions; the head and its
Monte Carlo dropout passes are cheap. How fast the convolutions run on a CPU depends on
the precision and on the CPU: with AVX-512 bf16 or VNNI, bf16 autocast or int8 kernels
beat fp32 several times; without them bf16 is slower than fp32. No single setting suits
every lab PC, so ``precision="auto"`` measures on the machine itself.

Paths (`PATHS`, built in `precision_paths`; the head and the MC statistics always fp32):
``fp32``, the reference; ``bf16``, the conv blocks under CPU bf16 autocast; ``int8``,
post-training static quantisation of the conv blocks, with activation ranges from fixed
synthetic calibration crops (`calibration_crops`).

Choice (`choose_precision`, `calibrate`): on first use with a model on a machine, the
fast paths are checked against fp32 on check crops distinct from the calibration crops:
600 fixed synthetic crops (`N_CHECK`), or, through `decide_precision_on_crops`, a trained
model's own validation crops. Agreement is measured on the MC-dropout mean probabilities
(the per-crop dropout masks make these comparable crop by crop).

The rule: a fast path wins only if, on all the planned check crops, the one-sided 95 %
(`CONFIDENCE`) lower confidence bound of its top-1 agreement with fp32 is >= `TOP1_MIN`
(99.5 %), its mean absolute probability difference is <= `MEAN_ABS_DIFF_MAX`, and it is
at least `MIN_SPEEDUP` times fp32 (a tie within noise stays fp32); the fastest such path
wins, else fp32. The bound is Clopper-Pearson's exact one (`agreement_lower_bound`),
not Wilson's: at agreement rates near 1 with few or no disagreements, which is exactly
this case, Wilson's score interval undercovers (it accepts 539 of 539, which a path that
agrees on only 99.5 % of crops still shows 6.7 % of the time, more than the 5 % a 95 %
bound promises), while Clopper-Pearson's never does; its price is 598 crops instead of
539. So 598 crops, all agreeing, are the least that can show 99.5 % (`min_check_crops`);
600 crops allow no disagreement, 947 allow one, 1,829 four (`max_disagreements`). The
former rule, >= 99.5 % of 32 crops, accepted a path that agreed on 98.6 % of 208
held-out crops: 32 of 32 only bound the agreement to >= 91.1 %.

Kept cheap (a first use ran ~30 s before; 600 crops through fp32 are ~2 min on 2 cores):

- the number of crops is fixed before any agreement is seen (`N_CHECK`, or the crops
  given, capped by what fits in the time budget at the measured speeds), and a path is
  accepted only after all of them: one look at the data, so the 95 % holds as stated;
- a path is rejected as soon as its disagreements exceed what the rule allows at that
  number (at 600: the first one), which rejecting early cannot make wrong;
- only the first `TIMING_BATCHES` batches are timed, every path interleaved (rotating
  who goes first, so a burst of load elsewhere hits all alike); a path under
  `MIN_SPEEDUP` x fp32 there cannot win and is dropped unchecked;
- the remaining paths are checked one at a time, fastest first, against fp32's outputs
  computed once per crop (untimed) and kept for the next path; the first to pass wins
  (a slower one could not beat it), and when every path is out the check stops;
- time budget: `MAX_SECONDS` (300 s) for a first use, `MAX_SECONDS_ON_CROPS` (900 s)
  after training. A path whose remaining crops would not fit in it at the timed speeds
  is not started, one still running when it is spent stops; either way fp32 stays, with
  "not enough evidence" in the choice's `note` and the path's figures.

`PrecisionChoice.describe` and `to_dict` show, per path, the crops checked of those
planned, the disagreements and the lower bound, and the rule (`check`). The decision, the
figures and the int8 activation ranges are cached under ``<cache>/precision/``, one file
per CPU model, CPU capability, torch version and `CALIBRATION_VERSION`, with one entry
per model (`model_fingerprint`: agreement and the int8 ranges depend on the weights), so
a decision made on a model's own validation crops is what every later ``auto`` predictor
of that model on that machine uses. int8 ranges always come from the fixed synthetic
calibration crops, so the cached ranges and a rebuild of them are the same.

All paths are per-crop deterministic (`precision_paths`), which the tests check.

This module measures and decides (`calibrate`, `choose_precision`,
`decide_precision_on_crops`, `decide_precision`) and keeps the machine key, the model
fingerprint and the cache entries; the parts it builds on are modules of their own, their
public names re-exported here: `precision_paths` (the compute paths), `precision_rule`
(the acceptance rule, `PathFigures`, `PrecisionChoice`), `precision_crops` (the
calibration and check crops) and `precision_cache` (the cache's files).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from napari_foram.classify.model import feature_function
from napari_foram.classify.precision_cache import (
    _cache_file,
    _ranges_file,
    _read_json,
    _write_atomic,
    precision_cache_dir,
)
from napari_foram.classify.precision_crops import (
    CALIBRATION_SEED,
    _CheckCrops,
    calibration_crops,
)
from napari_foram.classify.precision_paths import (
    PATHS,
    PRECISION_CHOICES,
    PRECISION_ENV,
    build_int8_conv,
    conv_runner,
    int8_available,
)
from napari_foram.classify.precision_rule import (
    CONFIDENCE,
    MEAN_ABS_DIFF_MAX,
    MIN_SPEEDUP,
    TOP1_MIN,
    PathFigures,
    PrecisionChoice,
    _check_rule,
    _Tally,
    agreement_lower_bound,
    max_disagreements,
    min_check_crops,
    pick,
)

if TYPE_CHECKING:
    from torch import nn

    from napari_foram.classify.checkpoint import ModelInfo
    from napari_foram.classify.model import FORAMNet
    from napari_foram.classify.precision_crops import Crops

#: Builds the fp32 predictor a calibration compares every path with: ``reference(model,
#: info, batch_size)`` (`napari_foram.classify.predict.fp32_reference`). Passed in rather
#: than imported: the predictor itself is built on this module's decisions.
ReferenceFactory = Callable[["FORAMNet", "ModelInfo", int], Any]

__all__ = [
    "CONFIDENCE",
    "MEAN_ABS_DIFF_MAX",
    "MIN_SPEEDUP",
    "PATHS",
    "PRECISION_CHOICES",
    "PRECISION_ENV",
    "TOP1_MIN",
    "PathFigures",
    "PrecisionChoice",
    "agreement_lower_bound",
    "build_int8_conv",
    "calibrate",
    "calibration_crops",
    "choose_precision",
    "cpu_model_name",
    "decide_precision",
    "decide_precision_on_crops",
    "int8_available",
    "machine_key",
    "max_disagreements",
    "min_check_crops",
    "model_fingerprint",
    "precision_cache_dir",
]

log = logging.getLogger(__name__)

#: Bump when the paths, the crops or the rule change: old cached decisions are ignored
#: (2: the confidence-bound rule on 600 crops replaced the point estimate on 32).
CALIBRATION_VERSION = 2
#: Defaults for a first-use calibration. 600 check crops: the fewest, in whole batches,
#: that can show 99.5 % at 95 % (598, all agreeing; `min_check_crops`).
N_CALIBRATION = 16
N_CHECK = 600
CHECK_BATCH = 8
CHECK_MC_SAMPLES = 100
#: Batches at the start on which every path is timed, interleaved; the rest of the
#: check is untimed.
TIMING_BATCHES = 3
#: Time budget of a first-use calibration (s): when the check cannot finish in it, fp32
#: stays ("not enough evidence") ...
MAX_SECONDS = 300.0
#: ... and of a decision on a trained model's own crops (`decide_precision_on_crops`),
#: which runs once after training.
MAX_SECONDS_ON_CROPS = 900.0
#: Share of the budget planned for the conv blocks at the timed speeds (the rest: the
#: head's MC passes, preparing crops, load that comes and goes).
BUDGET_MARGIN = 0.85


def cpu_model_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else what `platform` says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_key() -> dict[str, str]:
    """What a cached decision is valid for: CPU model, the SIMD level torch uses on it
    (two VMs both called "AMD EPYC" may expose different instructions), torch version.
    """
    return {
        "cpu": cpu_model_name(),
        "capability": str(torch.backends.cpu.get_cpu_capability()),
        "torch": str(torch.__version__),
        "calibration_version": str(CALIBRATION_VERSION),
    }


def model_fingerprint(model: FORAMNet, info: ModelInfo) -> str:
    """A digest of what agreement depends on: all weights and the input convention.

    A checkpoint's file digest (`ModelInfo.sha256`) stands for its weights when known;
    otherwise the tensors are hashed (~0.2 s for VGG16 + head).
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(info.input_convention).encode())
    if getattr(info, "sha256", ""):
        digest.update(b"file:" + str(info.sha256).encode())
    else:
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def calibrate(
    model: FORAMNet,
    info: ModelInfo,
    *,
    paths: Iterable[str] | None = None,
    n_calibration: int = N_CALIBRATION,
    n_check: int | None = N_CHECK,
    batch_size: int = CHECK_BATCH,
    mc_samples: int = CHECK_MC_SAMPLES,
    timing_batches: int = TIMING_BATCHES,
    max_seconds: float = MAX_SECONDS,
    top1_min: float = TOP1_MIN,
    confidence: float = CONFIDENCE,
    check_crops: Crops | None = None,
    crops_label: str = "",
    int8_ranges: dict[str, torch.Tensor] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    reference: ReferenceFactory,
) -> tuple[PrecisionChoice, dict[str, torch.Tensor] | None]:
    """Measure the fast paths against fp32 on this CPU with this model, and decide.

    The check crops are the synthetic ones (`n_check` of them, renderer seeds from
    `CHECK_SEED`), or `check_crops` (e.g. a trained model's validation crops; at most
    `n_check` of them, None: all) in a fixed shuffled order. The number checked is fixed
    before any agreement is seen (`n_check`, capped by what fits in `max_seconds` at the
    speeds of the timed batches), and a path is accepted only when, on all of them, the
    one-sided `confidence` Clopper-Pearson lower bound of its top-1 agreement with fp32
    is >= `top1_min` and its mean |dp| <= `MEAN_ABS_DIFF_MAX` (the module docstring
    says why this rule and how it is kept cheap).

    Steps: (1) with too few crops to ever show `top1_min` nothing runs (fp32, "not
    enough evidence"); (2) the first `timing_batches` batches run through every path in
    turn (rotating who goes first, so a burst of load elsewhere hits all paths alike):
    speed is crops per second of the median batch; a path under `MIN_SPEEDUP` x fp32
    cannot win and is dropped; (3) the remaining paths are checked one at a time,
    fastest first, batch by batch against fp32's outputs (computed once per crop, kept,
    untimed): a path is rejected as soon as its disagreements exceed what the rule
    allows at the planned count, the first path to pass all crops wins (slower ones
    could not beat it), and when the budget runs out the paths still open are "not
    enough evidence".

    `reference(model, info, batch_size)` builds the fp32 predictor every path is
    compared with (`napari_foram.classify.predict.fp32_reference`: passed in, because
    the predictor is built on this module's decisions). int8's activation ranges come
    from `n_calibration` synthetic calibration crops (what `int8_conv_for` rebuilds when
    its cache is gone), or are `int8_ranges` when given.

    Returns the choice (source "calibrated") and the int8 ranges (None when int8 did
    not run).
    """
    t_start = time.perf_counter()
    _check_rule(top1_min, confidence)
    if batch_size < 1 or timing_batches < 1:
        raise ValueError("batch_size and timing_batches must be >= 1")
    wanted = [p for p in (paths or PATHS) if p in PATHS and p != "fp32"]
    if "int8" in wanted and not int8_available():
        wanted.remove("int8")
    if "int8" in wanted and getattr(model, "feature_layout", "flat") != "flat":
        # int8 quantises the conv stack as one block; a "pooled" model taps it midway.
        wanted.remove("int8")
    if check_crops is None:
        n_plan = int(n_check if n_check is not None else N_CHECK)
        label = crops_label or "synthetic check crops"
    else:
        n_plan = len(check_crops) if n_check is None else min(len(check_crops), int(n_check))
        label = crops_label or "given crops"
    if n_plan < 1:
        raise ValueError(f"need at least one check crop, got {n_plan}")
    n_min = min_check_crops(top1_min, confidence)
    check: dict[str, Any] = {
        "crops": label,
        "n_asked": n_plan,
        "n_planned": n_plan,
        "max_disagreements": max_disagreements(n_plan, top1_min, confidence),
        "top1_min": top1_min,
        "confidence": confidence,
        "bound": "Clopper-Pearson",
        "max_seconds": max_seconds,
    }

    def done(
        path: str, note: str, figures: dict[str, PathFigures] | None = None
    ) -> PrecisionChoice:
        return PrecisionChoice(
            path=path,
            source="calibrated",
            machine=machine_key(),
            figures=figures or {},
            model=model_fingerprint(model, info),
            threads=torch.get_num_threads(),
            seconds=round(time.perf_counter() - t_start, 2),
            note=note,
            check=check,
        )

    def say(step: int, total: int, message: str) -> None:
        if progress is not None:
            progress(step, total, message)

    if not wanted:
        return done("fp32", "no fast path to check on this machine"), None
    if check["max_disagreements"] < 0:
        best = agreement_lower_bound(n_plan, n_plan, confidence)
        note = (
            f"not enough evidence: {n_plan} crops can show at most {100 * best:.1f}% "
            f"top-1 agreement at {100 * confidence:.0f}% confidence; "
            f"{100 * top1_min:.1f}% needs >= {n_min} agreeing crops"
        )
        say(1, 1, "fp32")
        return done("fp32", note), None

    ref = reference(model, info, batch_size)
    conv = ref.model.conv
    paths_run = ["fp32", *wanted]
    features = feature_function(conv, ref.model.feature_layout, backbone=ref.model.backbone)
    runners = {p: conv_runner(features, p) for p in paths_run if p != "int8"}
    ranges = None
    if "int8" in paths_run:
        say(0, n_plan, "int8 calibration")
        if int8_ranges is not None:
            q, ranges = build_int8_conv(conv, state=int8_ranges)
        else:
            calib = calibration_crops(n_calibration, CALIBRATION_SEED)
            q, ranges = build_int8_conv(conv, calibration=(x for x, _ in ref._batches(calib)))
        runners["int8"] = conv_runner(conv, "int8", q)

    source = _CheckCrops(check_crops, n_plan)
    n_mc = max(int(mc_samples), 1)
    k = int(info.num_classes)
    d_max = int(check["max_disagreements"])
    diff_budget = MEAN_ABS_DIFF_MAX * n_plan * k  # a mean |dp| over it cannot come back
    ref_probs = np.zeros((n_plan, k), np.float32)
    tallies = {p: _Tally() for p in paths_run}

    def batch(start: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = source.get(start, min(start + batch_size, n_plan))
        xs, keys = zip(*ref._batches(chunk), strict=True)
        return torch.cat(xs), torch.cat(keys)

    def run(p: str, x: torch.Tensor, keys: torch.Tensor, timed: bool) -> np.ndarray:
        t0 = time.perf_counter()
        f = runners[p](x)
        if timed:
            tallies[p].times.append((time.perf_counter() - t0) / x.shape[0])
        return ref.sample_probs(f, n_mc, keys).mean(dim=0).float().numpy()

    def judge(p: str) -> None:
        """Reject as soon as the rule cannot be met at the planned count."""
        t = tallies[p]
        if t.disagree > d_max:
            t.verdict = "rejected"
            t.note = (
                f"rejected after {t.n} of {n_plan} crops: {t.disagree} disagreeing, "
                f"the rule allows {d_max}"
            )
        elif t.abs_sum > diff_budget:
            t.verdict = "rejected"
            t.note = (
                f"rejected after {t.n} crops: mean |dp| over {n_plan} would exceed "
                f"{MEAN_ABS_DIFF_MAX}"
            )
        elif t.n >= n_plan:
            mean_diff = t.abs_sum / (n_plan * k)
            t.verdict = "accepted" if mean_diff <= MEAN_ABS_DIFF_MAX else "rejected"
            t.note = "accepted" if t.verdict == "accepted" else "rejected: mean |dp| too large"

    def over_budget() -> bool:
        return time.perf_counter() - t_start > max_seconds

    # (2) Timed batches, every path interleaved; agreement counts from the start.
    ref_done = 0
    open_paths = list(wanted)
    with torch.inference_mode():
        x0, _ = batch(0)
        for p in paths_run:  # warm-up: the first call of a path builds its kernels
            runners[p](x0[:1])
        for b in range(timing_batches):
            start = b * batch_size
            if start >= n_plan or not open_paths:
                break
            x, keys = batch(start)
            live = ["fp32", *open_paths]
            order = live[b % len(live) :] + live[: b % len(live)]
            outs = {p: run(p, x, keys, timed=True) for p in order}
            stop = start + x.shape[0]
            ref_probs[start:stop] = outs["fp32"]
            tallies["fp32"].n = ref_done = stop
            for p in open_paths:
                tallies[p].add(outs[p], ref_probs[start:stop])
                judge(p)
            open_paths = [p for p in open_paths if not tallies[p].verdict]
            say(stop, n_plan, "speed and agreement")

        def speed(p: str) -> float:
            times = tallies[p].times
            return 1.0 / statistics.median(times) if times else 0.0

        fp32_speed = speed("fp32")
        for p in wanted:
            if tallies[p].verdict != "rejected" and speed(p) < MIN_SPEEDUP * fp32_speed:
                tallies[p].verdict = "rejected"
                tallies[p].note = (
                    f"{speed(p) / fp32_speed:.2f}x fp32 in the timed batches, under "
                    f"{MIN_SPEEDUP}x: cannot win, not checked further"
                )

        # (3) The paths still in the race one at a time, fastest first (one accepted in
        # the timed batches already wins at once); fp32 untimed, once per crop.
        racing = sorted(
            (p for p in wanted if tallies[p].verdict in ("", "accepted")), key=speed, reverse=True
        )
        if racing and not tallies[racing[0]].verdict:
            # Cap the count by what the fastest path and fp32 can still do in the budget
            # (a margin for the head and the crops' preparation): set from speeds only,
            # before the rest of the agreement is seen, so the rule still reads once.
            per_crop = 1.0 / speed(racing[0]) + 1.0 / fp32_speed
            room = BUDGET_MARGIN * max_seconds - (time.perf_counter() - t_start)
            fits = ref_done + max(int(room / per_crop), 0)
            if fits < n_plan:
                n_plan = fits
                d_max = max_disagreements(n_plan, top1_min, confidence)
                diff_budget = MEAN_ABS_DIFF_MAX * n_plan * k
                check.update(n_planned=n_plan, max_disagreements=d_max, capped_by_budget=True)
                for p in racing:
                    if d_max < 0:
                        tallies[p].verdict = "undecided"
                        tallies[p].note = (
                            f"not enough evidence: at the timed speeds only {n_plan} crops "
                            f"fit in the {max_seconds:.0f} s budget; {100 * top1_min:.1f}% "
                            f"needs >= {n_min}"
                        )
                    else:
                        judge(p)
        winner = ""
        for p in racing:
            t = tallies[p]
            if t.verdict == "accepted":
                winner = winner or p
                continue
            if t.verdict:  # rejected or undecided when the count was capped
                continue
            if winner:
                t.verdict = "undecided"
                t.note = f"not checked further: the faster {winner} passed"
                continue
            left = (n_plan - t.n) / speed(p) + (n_plan - ref_done) / max(fp32_speed, 1e-9)
            elapsed = time.perf_counter() - t_start
            if elapsed + left > max_seconds:
                t.verdict = "undecided"
                t.note = (
                    f"not enough evidence: the {n_plan - t.n} crops left would take "
                    f"~{left:.0f} s more at the timed speeds, over the {max_seconds:.0f} s budget"
                )
                continue
            while not t.verdict:
                start = t.n
                x, keys = batch(start)
                stop = start + x.shape[0]
                if stop > ref_done:
                    ref_probs[start:stop] = run("fp32", x, keys, timed=False)
                    tallies["fp32"].n = ref_done = stop
                t.add(run(p, x, keys, timed=False), ref_probs[start:stop])
                judge(p)
                if not t.verdict and over_budget():
                    t.verdict = "undecided"
                    t.note = (
                        f"not enough evidence: {t.n} of {n_plan} crops checked when the "
                        f"{max_seconds:.0f} s budget ran out"
                    )
                say(t.n, n_plan, f"checking {p}")
            if t.verdict == "accepted":
                winner = p

    figures: dict[str, PathFigures] = {}
    for p in paths_run:
        t = tallies[p]
        n = t.n
        bound = agreement_lower_bound(n - t.disagree, n, confidence) if p != "fp32" else 0.0
        figures[p] = PathFigures(
            path=p,
            crops_per_s=round(speed(p), 3),
            top1_agreement=round((n - t.disagree) / n, 5) if n else 0.0,
            mean_abs_prob_diff=round(t.abs_sum / (n * k), 6) if n else 0.0,
            max_abs_prob_diff=round(t.abs_max, 6),
            n_crops=n,
            agrees=p == "fp32" or t.verdict == "accepted",
            note="the reference" if p == "fp32" else t.note,
            disagreements=t.disagree,
            lower_bound=round(bound, 5),
            n_planned=n_plan,
        )
    path = pick(figures)
    if path != "fp32":
        fig = figures[path]
        note = (
            f"{path} accepted: {fig.n_crops - fig.disagreements}/{fig.n_crops} agree, "
            f"lower bound {100 * fig.lower_bound:.2f}% >= {100 * top1_min:.1f}%"
        )
    elif any(tallies[p].verdict == "undecided" for p in wanted):
        note = "not enough evidence within the time budget: fp32 stays"
    else:
        note = "no fast path met the rule: fp32 stays"
    choice = done(path, note, figures)
    say(n_plan, n_plan, choice.path)
    return choice, ranges


def cached_choice(
    model: FORAMNet, info: ModelInfo, cache_dir: str | Path | None = None
) -> PrecisionChoice | None:
    """The cached decision for this machine and model, or None."""
    key = machine_key()
    data = _read_json(_cache_file(cache_dir, key))
    if data.get("machine") != key:
        return None
    entry = data.get("models", {}).get(model_fingerprint(model, info))
    if not isinstance(entry, dict):
        return None
    try:
        choice = PrecisionChoice.from_dict(entry)
    except (KeyError, TypeError, ValueError):
        return None
    choice.source = "cache"
    return choice


def choose_precision(
    model: FORAMNet,
    info: ModelInfo,
    *,
    cache_dir: str | Path | None = None,
    recalibrate: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    reference: ReferenceFactory,
    **calibrate_kwargs: Any,
) -> PrecisionChoice:
    """The CPU path for `model` on this machine: cached, or measured now and cached.

    The cache file is per machine (`machine_key`: CPU model and capability, torch
    version), so a new CPU or a torch upgrade measures again.
    """
    if not recalibrate:
        found = cached_choice(model, info, cache_dir)
        if found is not None:
            return found
    choice, ranges = calibrate(
        model, info, progress=progress, reference=reference, **calibrate_kwargs
    )
    _store_choice(choice, ranges, cache_dir)
    return choice


def _store_choice(
    choice: PrecisionChoice,
    ranges: dict[str, torch.Tensor] | None,
    cache_dir: str | Path | None,
) -> None:
    """Cache a decision (and int8 ranges) under this machine and `choice.model`,
    replacing that model's earlier entry; other models' entries are kept.
    """
    key = machine_key()
    path = _cache_file(cache_dir, key)
    data = _read_json(path)
    if data.get("machine") != key:
        data = {"machine": key, "models": {}}
    data.setdefault("models", {})[choice.model] = choice.to_dict()
    try:
        _write_atomic(path, lambda p: p.write_text(json.dumps(data, indent=1)))
        if ranges is not None:
            save_int8_ranges(ranges, cache_dir, choice.model)
    except OSError as exc:  # a read-only home: decide again next time, but work now
        log.warning("cannot cache the precision decision in %s: %s", path.parent, exc)
    log.info("%s", choice.describe())


def decide_precision_on_crops(
    model: FORAMNet,
    info: ModelInfo,
    crops: Crops,
    *,
    cache_dir: str | Path | None = None,
    paths: Iterable[str] | None = None,
    max_crops: int | None = None,
    max_seconds: float = MAX_SECONDS_ON_CROPS,
    batch_size: int = CHECK_BATCH,
    mc_samples: int = CHECK_MC_SAMPLES,
    label: str = "validation crops",
    progress: Callable[[int, int, str], None] | None = None,
    reference: ReferenceFactory,
) -> PrecisionChoice:
    """Decide this machine's CPU path for a trained model on its own crops, and cache it.

    For training code, right after a model is saved: `crops` are real crops the model
    did not train on (its validation or held-out crops; (N, 224, 224, 3) uint8 or a
    list of such crops), checked in a fixed shuffled order, at most `max_crops` of them
    (None: all). The rule is `calibrate`'s: a fast path wins only if the one-sided 95 %
    Clopper-Pearson lower bound of its top-1 agreement with fp32 on all the checked
    crops is >= `TOP1_MIN` (598 crops at the least, all agreeing; more crops allow a few
    disagreements: one from 947 crops, two from 1,258, four from 1,829), its mean |dp|
    <= `MEAN_ABS_DIFF_MAX` and it is >= `MIN_SPEEDUP` x fp32; else fp32, with the reason
    in the choice's `note` ("not enough evidence" when there are too few crops or
    `max_seconds` is too short for 598 of them at the measured speeds).

    The decision replaces any earlier one for this model on this machine (the
    synthetic-crop first-use calibration's included) in the cache under
    `model_fingerprint(model, info)`, so every later ``precision="auto"`` predictor of
    this model on this machine uses it; each model has its own entry. Call it after
    `save_checkpoint(path, model, info)`, with that `info`: saving sets ``info.sha256``,
    the file digest by which a model loaded from that file is fingerprinted (before
    saving, the fingerprint is a digest of the tensors, which a loaded checkpoint does
    not use). The model is moved to the CPU and its conv blocks to channels-last, in
    place, as `Predictor` does. The decision holds for this machine (CPU, instruction
    set, torch version): another machine decides at its first use, on synthetic crops.

    `reference` builds the fp32 predictor (`napari_foram.classify.predict.fp32_reference`:
    passed in, since predict imports this module). Returns the choice (source
    "calibrated").
    """
    if len(crops) == 0:
        raise ValueError("need crops to decide on")
    if not getattr(info, "sha256", ""):
        log.warning(
            "deciding the precision of an unsaved model: the decision is cached under a "
            "digest of its tensors, which a checkpoint loaded from a file does not match; "
            "call decide_precision_on_crops after save_checkpoint"
        )
    choice, ranges = calibrate(
        model,
        info,
        paths=paths,
        n_check=max_crops,
        batch_size=batch_size,
        mc_samples=mc_samples,
        max_seconds=max_seconds,
        check_crops=crops,
        crops_label=label,
        progress=progress,
        reference=reference,
    )
    _store_choice(choice, ranges, cache_dir)
    return choice


def save_int8_ranges(
    ranges: dict[str, torch.Tensor], cache_dir: str | Path | None, model: str
) -> Path:
    """Cache int8 activation ranges of a model (by `model_fingerprint`) on this machine."""
    from safetensors.torch import save_file

    path = _ranges_file(cache_dir, machine_key(), model)
    tensors = {k: v.contiguous() for k, v in ranges.items()}
    _write_atomic(path, lambda p: save_file(tensors, str(p)))
    return path


def load_int8_ranges(cache_dir: str | Path | None, model: str) -> dict[str, torch.Tensor] | None:
    """Cached int8 activation ranges of a model, or None."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _ranges_file(cache_dir, machine_key(), model)
    if not path.is_file():
        return None
    try:
        return dict(load_file(str(path)))
    except (OSError, SafetensorError, ValueError):
        return None


def int8_conv_for(
    model: FORAMNet,
    info: ModelInfo,
    conv: nn.Sequential,
    preprocess: Callable[[np.ndarray], Iterable[torch.Tensor]],
    cache_dir: str | Path | None = None,
) -> nn.Module:
    """The int8 conv blocks of a model: from cached ranges, else calibrated now on
    `calibration_crops` (put through `preprocess`) and cached.
    """
    fingerprint = model_fingerprint(model, info)
    ranges = load_int8_ranges(cache_dir, fingerprint)
    if ranges is not None:
        try:
            return build_int8_conv(conv, state=ranges)[0]
        except (ValueError, RuntimeError):
            pass  # a stale or foreign file: calibrate afresh
    q, ranges = build_int8_conv(
        conv, calibration=preprocess(calibration_crops(N_CALIBRATION, CALIBRATION_SEED))
    )
    try:
        save_int8_ranges(ranges, cache_dir, fingerprint)
    except OSError as exc:
        log.warning("cannot cache int8 ranges: %s", exc)
    return q


def decide_precision(
    model: FORAMNet | None,
    info: ModelInfo | None,
    device: torch.device,
    precision: str = "auto",
    cache_dir: str | Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    *,
    reference: ReferenceFactory | None = None,
) -> PrecisionChoice:
    """The conv path for `precision` ("auto" or a path) with `model` on `device`.

    On CUDA "auto" is bf16 where supported (int8 is a CPU path). On a CPU an explicit
    path is taken as asked; "auto" is ``$NAPARI_FORAM_PRECISION`` when set, else
    `choose_precision` (cached, or measured now).
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(
            f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}"
        )
    if device.type == "cuda":
        if precision == "int8":
            raise ValueError("precision int8 is a CPU path; use bf16 or fp32 on a GPU")
        if precision == "auto":
            return PrecisionChoice("bf16" if torch.cuda.is_bf16_supported() else "fp32", "device")
        return PrecisionChoice(precision, "asked")
    if precision != "auto":
        return PrecisionChoice(precision, "asked")
    env = os.environ.get(PRECISION_ENV, "").strip()
    if env and env != "auto":
        if env not in PATHS:
            raise ValueError(f"${PRECISION_ENV}={env!r}: use one of {', '.join(PATHS)}")
        return PrecisionChoice(env, "environment")
    if model is None or info is None or reference is None:
        raise ValueError(
            "choosing a CPU precision needs the model and its fp32 reference (agreement is "
            "per model)"
        )
    return choose_precision(
        model, info, cache_dir=cache_dir, progress=progress, reference=reference
    )
