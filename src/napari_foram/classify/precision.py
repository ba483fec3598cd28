"""Fast CPU paths for VGG16's conv blocks, and the per-machine choice between them.

VGG16 costs 15.5 GFLOP per crop, almost all in its 13 convolutions; the head and its
Monte Carlo dropout passes are cheap. How fast the convolutions run on a CPU depends on
the precision and on the CPU: with AVX-512 bf16 or VNNI, bf16 autocast or int8 kernels
beat fp32 several times; without them bf16 is slower than fp32. No single setting suits
every lab PC, so ``precision="auto"`` measures on the machine itself.

Paths (`PATHS`; all channels-last, the head and the MC statistics always fp32):

``fp32``
    The reference.
``bf16``
    The conv blocks under CPU bf16 autocast (oneDNN bf16 kernels; fp32 weights kept).
``int8``
    Post-training static quantisation of the conv blocks with PyTorch's own x86 backend
    (fbgemm/oneDNN): each conv fused with its ReLU, per-channel int8 weights, uint8
    activations whose ranges come from a histogram of the activations of a fixed set of
    calibration crops (`calibration_crops`). The features leave the blocks dequantised
    to fp32.

Choice (`choose_precision`): on first use with a model on a machine, the paths run
interleaved on a fixed set of check crops (distinct from the calibration crops): speed
is the median per batch, agreement is measured against fp32 on the MC-dropout mean
probabilities (the per-crop dropout masks make these comparable crop by crop). The
fastest path whose top-1 class agrees on >= `TOP1_MIN` of the crops and whose mean
absolute probability difference is <= `MEAN_ABS_DIFF_MAX` wins, provided it is at least
`MIN_SPEEDUP` times fp32 (a tie within noise stays fp32). The decision, the figures and
the int8 activation ranges are cached under ``<cache>/precision/``, one file per CPU
model, CPU capability and torch version, with one entry per model (agreement and the
int8 ranges depend on the weights).

All paths are per-crop deterministic: a crop's output does not depend on what else is in
its batch (fixed quantisation ranges, no batch statistics), which the tests check.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from napari_foram.classify.checkpoint import ModelInfo
    from napari_foram.classify.model import FORAMNet

#: Builds the fp32 predictor a calibration compares every path with: ``reference(model,
#: info, batch_size)`` (`napari_foram.classify.predict.fp32_reference`). Passed in rather
#: than imported: the predictor itself is built on this module's decisions.
ReferenceFactory = Callable[["FORAMNet", "ModelInfo", int], Any]

__all__ = [
    "MEAN_ABS_DIFF_MAX",
    "MIN_SPEEDUP",
    "PATHS",
    "PRECISION_CHOICES",
    "PRECISION_ENV",
    "TOP1_MIN",
    "PathFigures",
    "PrecisionChoice",
    "build_int8_conv",
    "calibrate",
    "calibration_crops",
    "choose_precision",
    "cpu_model_name",
    "decide_precision",
    "int8_available",
    "machine_key",
    "model_fingerprint",
    "precision_cache_dir",
]

log = logging.getLogger(__name__)

#: Compute paths of the conv blocks, the reference first.
PATHS: tuple[str, ...] = ("fp32", "bf16", "int8")
#: What ``--precision`` accepts: a path, or "auto" (measure and choose on this machine).
PRECISION_CHOICES: tuple[str, ...] = ("auto", *PATHS)
#: Environment variable that overrides what "auto" means (a path name), e.g. to pin fp32.
PRECISION_ENV = "NAPARI_FORAM_PRECISION"
#: A fast path must agree with fp32 on at least this share of top-1 classes ...
TOP1_MIN = 0.995
#: ... and its MC mean probabilities may differ from fp32's by at most this on average.
MEAN_ABS_DIFF_MAX = 0.01
#: ... and be at least this much faster, or fp32 stays (a 3 % "win" is noise).
MIN_SPEEDUP = 1.1
#: Bump when the paths, the crops or the rule change: old cached decisions are ignored.
CALIBRATION_VERSION = 1
#: Renderer seeds of the calibration crops (int8 ranges) and of the check crops
#: (speed and agreement): disjoint, and far from the demo model's training seeds.
CALIBRATION_SEED = 7_700_000
CHECK_SEED = 7_800_000
#: Defaults for a first-use calibration: ~30 s on 2 cores of a 2020s CPU.
N_CALIBRATION = 16
N_CHECK = 32
CHECK_BATCH = 8
CHECK_MC_SAMPLES = 100


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
    (two VMs both called "AMD EPYC" may expose different instructions), torch version."""
    return {
        "cpu": cpu_model_name(),
        "capability": str(torch.backends.cpu.get_cpu_capability()),
        "torch": str(torch.__version__),
        "calibration_version": str(CALIBRATION_VERSION),
    }


def _key_tag(key: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def precision_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """``<cache>/precision``; the cache root is the demo models' (``$NAPARI_FORAM_CACHE``
    or ``~/.cache/napari-foram``) unless given."""
    from napari_foram.defaults import default_cache_dir

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "precision"


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


# --- int8 ---------------------------------------------------------------------------


def _quant_engine() -> str | None:
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm"):
        if name in engines:
            return name
    return None


def int8_available() -> bool:
    """Whether this torch has the x86 quantised kernels (not on ARM builds)."""
    if _quant_engine() is None:
        return False
    try:
        import torch.ao.quantization  # noqa: F401
    except ImportError:  # a future torch without eager-mode quantisation
        return False
    return True


@contextlib.contextmanager
def _quiet_quantization() -> Iterator[None]:
    """torch warns on every use that eager-mode quantisation is deprecated (in favour of
    torchao, not installed here) and that ``reduce_range`` will go; the kernels are the
    current ones. Silenced only around building and the first forward (torch warns once
    per process), so the suite's warnings-as-errors does not trip on them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


class _QuantizedBlocks(nn.Module):
    """Float in, float out: quantise, run the (fused, int8) conv blocks, dequantise."""

    def __init__(self, blocks: nn.Sequential) -> None:
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant = QuantStub()
        self.blocks = blocks
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.blocks(self.quant(x)))


def _prepare_int8(conv: nn.Sequential) -> nn.Module:
    """A copy of the conv blocks, conv+ReLU fused, with activation observers (still fp32)."""
    import torch.ao.quantization as tq

    engine = _quant_engine()
    if engine is None:
        raise RuntimeError("int8 needs PyTorch's x86 quantised kernels (not in this build)")
    # Process-wide: the packed weights are built for, and run with, this engine.
    torch.backends.quantized.engine = engine
    blocks = copy.deepcopy(conv).float().eval()
    pairs = [
        [str(i), str(i + 1)]
        for i in range(len(blocks) - 1)
        if isinstance(blocks[i], nn.Conv2d) and isinstance(blocks[i + 1], nn.ReLU)
    ]
    with _quiet_quantization():
        blocks = tq.fuse_modules(blocks, pairs)
        wrapped = _QuantizedBlocks(blocks).eval()
        # Histogram observers pick ranges that minimise the quantisation error instead
        # of spanning rare outliers (min/max ranges doubled the feature error here).
        wrapped.qconfig = tq.get_default_qconfig(engine)
        tq.prepare(wrapped, inplace=True)
    return wrapped


def _observer_state(prepared: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().clone()
        for k, v in prepared.state_dict().items()
        if "activation_post_process" in k
    }


def build_int8_conv(
    conv: nn.Sequential,
    *,
    calibration: Iterable[torch.Tensor] | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """int8 conv blocks of `conv` (left untouched), and their activation-range state.

    Give either `calibration`, preprocessed (B, 3, 224, 224) float batches whose fp32
    activations set the ranges, or `state`, the ranges of an earlier calibration (cached).
    """
    prepared = _prepare_int8(conv)
    if state is not None:
        missing = set(_observer_state(prepared)) - set(state)
        if missing:
            raise ValueError(f"int8 range state lacks {sorted(missing)[:2]}")
        prepared.load_state_dict(state, strict=False)
    elif calibration is not None:
        with torch.inference_mode():
            for x in calibration:
                prepared(x.float())
    else:
        raise ValueError("build_int8_conv needs calibration batches or a saved state")
    ranges = _observer_state(prepared)
    import torch.ao.quantization as tq

    with _quiet_quantization(), torch.inference_mode():
        quantized = tq.convert(prepared.eval(), inplace=False)
        # torch's once-per-process deprecation warnings fire on the first forward.
        quantized(torch.zeros(1, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    return quantized, ranges


def conv_runner(
    conv: Callable[[torch.Tensor], torch.Tensor], path: str, int8_conv: nn.Module | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function (B, 3, S, S) float -> flattened fp32 features for a path."""
    if path == "fp32":
        return lambda x: torch.flatten(conv(x), 1)
    if path == "bf16":

        def bf16(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                out = conv(x)
            return torch.flatten(out, 1).float()

        return bf16
    if path == "int8":
        if int8_conv is None:
            raise ValueError("int8 needs the quantised conv blocks (build_int8_conv)")
        q = int8_conv
        return lambda x: torch.flatten(q(x), 1)
    raise ValueError(f"unknown precision path {path!r} (use one of {', '.join(PATHS)})")


def calibration_crops(n: int, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """n synthetic crops (N, 224, 224, 3) uint8, the four classes in turn, fixed seeds:
    the same on every machine, so decisions are comparable."""
    from napari_foram.synthetic import CLASSES, render_crop

    if n < 1:
        raise ValueError(f"need at least one crop, got {n}")
    return np.stack([render_crop(CLASSES[i % len(CLASSES)], seed + i) for i in range(n)])


# --- measuring and choosing -------------------------------------------------------------


@dataclass
class PathFigures:
    """One path against fp32 on the check crops."""

    path: str
    crops_per_s: float
    top1_agreement: float  # share of crops with fp32's class (MC mean argmax)
    mean_abs_prob_diff: float  # mean |p - p_fp32| over crops and classes (MC means)
    max_abs_prob_diff: float
    n_crops: int
    agrees: bool
    note: str = ""


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
            text = f"{name} {fig.crops_per_s:.1f}/s"
            if name != "fp32":
                verdict = (
                    "" if fig.agrees else " (slower: dropped)" if fig.note else " (disagrees)"
                )
                text += (
                    f" top-1 {100 * fig.top1_agreement:.1f}%"
                    f" diff {fig.mean_abs_prob_diff:.4f}{verdict}"
                )
            parts.append(text)
        how = "measured now" if self.source == "calibrated" else "cached"
        return (
            f"classifier precision {self.path}: {self.speedup:.2f}x fp32 on "
            f"{self.machine.get('cpu', 'this CPU')} ({how}; {'; '.join(parts)})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "source": self.source,
            "machine": dict(self.machine),
            "figures": {k: asdict(v) for k, v in self.figures.items()},
            "model": self.model,
            "threads": self.threads,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrecisionChoice:
        return cls(
            path=str(d["path"]),
            source=str(d.get("source", "cache")),
            machine={str(k): str(v) for k, v in d.get("machine", {}).items()},
            figures={k: PathFigures(**v) for k, v in d.get("figures", {}).items()},
            model=str(d.get("model", "")),
            threads=int(d.get("threads", 0)),
            seconds=float(d.get("seconds", 0.0)),
        )


def _agreement(
    path: str, ref: np.ndarray, out: np.ndarray, speed: float, note: str = ""
) -> PathFigures:
    diff = np.abs(out - ref)
    top1 = float(np.mean(out.argmax(axis=1) == ref.argmax(axis=1)))
    mean_diff = float(diff.mean())
    return PathFigures(
        path=path,
        crops_per_s=round(speed, 3),
        top1_agreement=round(top1, 5),
        mean_abs_prob_diff=round(mean_diff, 6),
        max_abs_prob_diff=round(float(diff.max()), 6),
        n_crops=int(ref.shape[0]),
        agrees=bool(top1 >= TOP1_MIN and mean_diff <= MEAN_ABS_DIFF_MAX),
        note=note,
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


def calibrate(
    model: FORAMNet,
    info: ModelInfo,
    *,
    paths: Iterable[str] | None = None,
    n_calibration: int = N_CALIBRATION,
    n_check: int = N_CHECK,
    batch_size: int = CHECK_BATCH,
    mc_samples: int = CHECK_MC_SAMPLES,
    progress: Callable[[int, int, str], None] | None = None,
    reference: ReferenceFactory,
) -> tuple[PrecisionChoice, dict[str, torch.Tensor] | None]:
    """Measure every available path against fp32 on this CPU with this model.

    The check crops are cut into batches; each batch runs through every path in turn
    (rotating who goes first), so a burst of load elsewhere hits all paths alike; speed
    is crops per second of the median batch. A path slower than fp32 after the first two
    batches is dropped (it cannot win; on CPUs without bf16 units that path is slow).

    `reference(model, info, batch_size)` builds the fp32 predictor every path is
    compared with (`napari_foram.classify.predict.fp32_reference`: passed in, because
    the predictor is built on this module's decisions).

    Returns the choice (source "calibrated") and the int8 ranges (None without int8).
    """
    t_start = time.perf_counter()
    wanted = [p for p in (paths or PATHS) if p in PATHS and p != "fp32"]
    if "int8" in wanted and not int8_available():
        wanted.remove("int8")
    paths_run = ["fp32", *wanted]
    total = n_check // batch_size + 2

    def say(done: int, message: str) -> None:
        if progress is not None:
            progress(done, total, message)

    ref = reference(model, info, batch_size)
    conv = ref.model.conv
    runners = {p: conv_runner(conv, p) for p in paths_run if p != "int8"}
    ranges = None
    if "int8" in paths_run:
        say(0, "int8 calibration")
        calib = calibration_crops(n_calibration, CALIBRATION_SEED)
        q, ranges = build_int8_conv(conv, calibration=(x for x, _ in ref._batches(calib)))
        runners["int8"] = conv_runner(conv, "int8", q)
    say(1, "speed and agreement")
    check = calibration_crops(n_check, CHECK_SEED)
    batches = list(ref._batches(check))
    times: dict[str, list[float]] = {p: [] for p in paths_run}
    means: dict[str, list[np.ndarray]] = {p: [] for p in paths_run}
    dropped: dict[str, str] = {}
    with torch.inference_mode():
        # Warm-up: the first call of a path builds its kernels (oneDNN primitives).
        for p in paths_run:
            runners[p](batches[0][0][:1])
        for b, (x, keys) in enumerate(batches):
            live = [p for p in paths_run if p not in dropped]
            order = live[b % len(live) :] + live[: b % len(live)]
            for p in order:
                t0 = time.perf_counter()
                f = runners[p](x)
                times[p].append((time.perf_counter() - t0) / x.shape[0])
                stats = ref._predict_features(f, max(int(mc_samples), 1), keys)
                means[p].append(stats["mean"].float().numpy())
            if b == 1:
                fp32_s = statistics.median(times["fp32"])
                for p in live:
                    if p != "fp32" and statistics.median(times[p]) > fp32_s:
                        dropped[p] = "slower than fp32 on the first batches; not checked further"
            say(2 + b, "speed and agreement")
    ref_mean = np.concatenate(means["fp32"])
    figures: dict[str, PathFigures] = {}
    for p in paths_run:
        speed = 1.0 / statistics.median(times[p])
        out = np.concatenate(means[p])
        figures[p] = _agreement(p, ref_mean[: out.shape[0]], out, speed, dropped.get(p, ""))
        if p in dropped:
            figures[p].agrees = False
    choice = PrecisionChoice(
        path=pick(figures),
        source="calibrated",
        machine=machine_key(),
        figures=figures,
        model=model_fingerprint(model, info),
        threads=torch.get_num_threads(),
        seconds=round(time.perf_counter() - t_start, 2),
    )
    say(total, choice.path)
    return choice, ranges


def _cache_file(cache_dir: str | Path | None, key: dict[str, str]) -> Path:
    return precision_cache_dir(cache_dir) / f"choice-{_key_tag(key)}.json"


def _ranges_file(cache_dir: str | Path | None, key: dict[str, str], model: str) -> Path:
    return precision_cache_dir(cache_dir) / f"int8-{_key_tag(key)}-{model[:16]}.safetensors"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file in the same folder, then rename: two processes
    calibrating at once (Dask workers) never leave a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


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
    key = machine_key()
    choice, ranges = calibrate(
        model, info, progress=progress, reference=reference, **calibrate_kwargs
    )
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
    `calibration_crops` (put through `preprocess`) and cached."""
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
