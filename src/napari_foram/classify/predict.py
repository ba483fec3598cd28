"""Prediction with Monte Carlo dropout (Johansen & Sorensen 2020, sections 3 and 5.2).

Dropout lives only in the head, so the conv features of a crop are the same in all N
stochastic passes: they are computed once, in eval mode. Moreover the head's first layers
before its first Dropout (Flatten -> Linear 25088x512 -> ReLU, or Flatten -> Standardize
for a linear "pooled" head) are deterministic too, so
they also run once per crop; only the rest of the head (Dropout -> Linear -> ReLU ->
Dropout -> Linear) runs N times, as one batch of N x B rows. The result is exactly the
whole head run N times with dropout on, at a small fraction of the cost.

The per-crop dropout masks and the MC statistics (mean, variance, entropy, mutual
information, vote) are `napari_foram.classify.mc_dropout`'s; this module runs them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from napari_foram.classify.architecture import pooled_dim
from napari_foram.classify.backbone import convention_affine
from napari_foram.classify.checkpoint import ModelInfo, load_checkpoint
from napari_foram.classify.mc_dropout import (
    crop_keys,
    feature_keys,
    mc_statistics,
    split_head,
    stochastic_passes,
)

# Still importable from here, where it lived before (the tests import it so).
from napari_foram.classify.mc_dropout import dropout_uniforms as dropout_uniforms
from napari_foram.classify.model import (
    FORAMNet,
    feature_function,
    features_and_pooled,
)
from napari_foram.classify.precision import (
    PRECISION_CHOICES,
    PRECISION_ENV,
    PrecisionChoice,
    conv_runner,
    decide_precision,
    int8_conv_for,
)
from napari_foram.defaults import MC_SAMPLES

if TYPE_CHECKING:
    from pathlib import Path

#: Default crops per forward pass.
DEFAULT_BATCH_CPU = 16
DEFAULT_BATCH_CUDA = 256
#: Rows per head call when predicting from precomputed features.
FEATURE_BATCH = 256

Crops = np.ndarray | Sequence[np.ndarray]


@dataclass(frozen=True)
class Predictions:
    """MC-dropout predictions for N crops over K classes (numpy arrays).

    Attributes
    ----------
    class_index
        (N,) int64, argmax of `mean_probs`: the predicted class.
    mean_probs
        (N, K) float32, mean softmax output over the MC samples.
    variance
        (N, K) float32, population variance of the softmax outputs over the samples.
    entropy
        (N,) float32, predictive entropy of `mean_probs` in nats (0 .. ln K).
    mutual_information
        (N,) float32, entropy of the mean minus mean entropy of the samples, nats (>= 0):
        the model's own (epistemic) uncertainty.
    vote_class
        (N,) int64, the class most samples voted for (ties: lowest index).
    vote_fraction
        (N,) float32, fraction of samples that voted for `vote_class` (1/K .. 1).
    class_names
        The K class names in column order.
    mc_samples
        Stochastic passes per crop; 1 means one deterministic pass with dropout off.
    feature_distance
        (N,) float32, how far each crop's features lie from the training crops
        (`napari_foram.classify.density`; about 1 for training-like crops, larger for
        strangers); NaN when the model carries no feature density.
    kept_features
        (N, D) float32 pooled backbone features of each crop (`Predictor.predict` with
        ``keep_features=True``; a tally store keeps them so that a head can be trained
        and the specimens classified again without the backbone), or None.
    """

    class_index: np.ndarray
    mean_probs: np.ndarray
    variance: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray
    vote_class: np.ndarray
    vote_fraction: np.ndarray
    class_names: tuple[str, ...]
    mc_samples: int
    feature_distance: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(0, np.float32)
    )
    kept_features: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.feature_distance.shape[0] != self.class_index.shape[0]:
            # No density (or built by older code): "unknown" for every crop.
            nan = np.full(self.class_index.shape[0], np.nan, np.float32)
            object.__setattr__(self, "feature_distance", nan)

    def __len__(self) -> int:
        return int(self.class_index.shape[0])

    @property
    def labels(self) -> list[str]:
        """Predicted class name per crop."""
        return [self.class_names[i] for i in self.class_index]

    def take(self, rows: np.ndarray) -> Predictions:
        """The predictions of the given crops only."""
        return dataclasses.replace(
            self,
            class_index=self.class_index[rows],
            mean_probs=self.mean_probs[rows],
            variance=self.variance[rows],
            entropy=self.entropy[rows],
            mutual_information=self.mutual_information[rows],
            vote_class=self.vote_class[rows],
            vote_fraction=self.vote_fraction[rows],
            feature_distance=self.feature_distance[rows],
            kept_features=None if self.kept_features is None else self.kept_features[rows],
        )

    def in_classes(self, names: Sequence[str]) -> Predictions:
        """These predictions over another class list that holds every one of ours (a
        store's, extended by classes this model does not know): columns matched by
        name, probability 0 for the classes we lack. ValueError if one of ours is
        missing: classes are never matched by position.
        """
        names = tuple(str(n) for n in names)
        if names == self.class_names:
            return self
        missing = [c for c in self.class_names if c not in names]
        if missing:
            raise ValueError(f"classes {missing} of the model are not in {list(names)}")
        where = np.array([names.index(c) for c in self.class_names], dtype=np.int64)
        n = len(self)

        def spread(values: np.ndarray) -> np.ndarray:
            out = np.zeros((n, len(names)), dtype=values.dtype)
            out[:, where] = values
            return out

        return dataclasses.replace(
            self,
            class_index=where[self.class_index],
            mean_probs=spread(self.mean_probs),
            variance=spread(self.variance),
            vote_class=where[self.vote_class],
            class_names=names,
        )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve "auto" (CUDA if available, else CPU), "cpu" or "cuda[:i]" to a device.

    Raises ValueError for "cuda" without a GPU and for any other device type.
    """
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r} (use auto, cpu or cuda)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but no CUDA GPU is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s)")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {name!r} (use auto, cpu or cuda)")
    return dev


def _check_precision(precision: str) -> str:
    if precision not in PRECISION_CHOICES:
        raise ValueError(
            f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}"
        )
    return precision


def check_crops(crops: Crops, size: int) -> np.ndarray:
    """Validate crops and return them as one (N, size, size, 3) uint8 array.

    Raises
    ------
    ValueError
        Not uint8, wrong shape, or crops of different shapes.
    """
    if isinstance(crops, np.ndarray):
        arr = crops
    else:
        items = list(crops)
        if not items:
            return np.zeros((0, size, size, 3), np.uint8)
        shapes = {np.shape(c) for c in items}
        if len(shapes) != 1:
            raise ValueError(f"crops have different shapes: {sorted(shapes)[:3]}")
        arr = np.stack([np.asarray(c) for c in items])
    if arr.dtype != np.uint8:
        raise ValueError(f"crops must be uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape == (size, size, 3):
        raise ValueError(f"expected a batch (N, {size}, {size}, 3), got one crop {arr.shape}")
    if arr.ndim != 4 or arr.shape[1:] != (size, size, 3):
        raise ValueError(f"crops must have shape (N, {size}, {size}, 3), got {arr.shape}")
    return arr


def cpu_threads() -> int:
    """Torch's current intra-op thread count (to restore after `cpu_threads=` changed it)."""
    return int(torch.get_num_threads())


def set_cpu_threads(n: int) -> None:
    """Set torch's intra-op thread count (process-wide)."""
    torch.set_num_threads(max(1, int(n)))


def interactive_cpu_threads() -> int:
    """Threads for classifying on the CPU next to a GUI: every core but one.

    With all cores busy in convolutions, napari's thread waits for CPU time and the
    interface stutters; on 2 cores that costs half the classification speed, on 16 a
    sixteenth.
    """
    return max(1, (os.cpu_count() or 1) - 1)


class NonFiniteOutputError(ValueError):
    """The model's probabilities are NaN or inf: the model is broken, not one input."""


class Predictor:
    """A classifier ready to predict: model on its device, preprocessing, precision.

    Build it once and reuse it; `predict` is safe to call repeatedly (not concurrently).

    Parameters
    ----------
    model
        The trained network (moved to `device` and set to eval mode).
    info
        Its record: class names and preprocessing.
    device
        "auto" (CUDA if available, else CPU), "cpu" or "cuda[:i]".
    batch_size
        Crops per conv forward pass (default 16 on CPU, 256 on CUDA).
    precision
        How the conv blocks compute (`napari_foram.classify.precision`): "fp32", "bf16"
        (autocast), "int8" (CPU only: quantised conv blocks) or "auto": on CUDA bf16
        when supported, on a CPU the fastest path that agrees with fp32 on this machine
        (measured at first use and cached; ``$NAPARI_FORAM_PRECISION`` overrides it).
        The head, its MC dropout passes and the statistics always run in fp32.
        `precision_choice` says what was chosen and why.
    precision_cache
        Cache root for the CPU decision (default: the demo models' cache root).
    precision_progress
        ``(done, total, message)`` callback for a first-use calibration.
    channels_last
        Use channels-last memory layout for the conv blocks (faster on CPU and GPU).
    compile
        ``torch.compile`` the conv blocks (worth it for long GPU runs; first call is slow).
    cpu_threads
        On the CPU: torch's intra-op threads for this process (``torch.set_num_threads``;
        process-wide). None keeps torch's default, one per core. An interactive session
        (napari) passes `interactive_cpu_threads()` to leave a core to the interface.
    """

    def __init__(
        self,
        model: FORAMNet,
        info: ModelInfo,
        *,
        device: str | torch.device = "auto",
        batch_size: int | None = None,
        precision: str = "auto",
        channels_last: bool = True,
        compile: bool = False,
        cpu_threads: int | None = None,
        precision_cache: str | Path | None = None,
        precision_progress: Callable[[int, int, str], None] | None = None,
    ) -> None:
        if model.num_classes != info.num_classes:
            raise ValueError(
                f"model has {model.num_classes} outputs, info names {info.num_classes} classes"
            )
        self.device = resolve_device(device)
        _check_precision(precision)
        cuda = self.device.type == "cuda"
        if cpu_threads is not None and not cuda:
            if int(cpu_threads) < 1:
                raise ValueError(f"cpu_threads must be >= 1, got {cpu_threads}")
            torch.set_num_threads(int(cpu_threads))
        self.batch_size = int(batch_size or (DEFAULT_BATCH_CUDA if cuda else DEFAULT_BATCH_CPU))
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.info = info
        self.channels_last = channels_last
        self.model = model.to(self.device).eval()
        if channels_last:
            self.model.conv.to(memory_format=torch.channels_last)
        self._head_prefix, self._head_rest = split_head(self.model.head)
        # The checkpoint's input convention, as one multiply-add per channel.
        scale, offset = convention_affine(info.input_convention)
        self._scale = torch.tensor(scale, device=self.device).view(1, 3, 1, 1)
        self._offset = torch.tensor(offset, device=self.device).view(1, 3, 1, 1)
        self.precision_choice = decide_precision(
            self.model,
            info,
            self.device,
            precision,
            precision_cache,
            precision_progress,
            reference=fp32_reference,
        )
        path = self.precision_choice.path
        self.dtype = torch.bfloat16 if path == "bf16" else torch.float32
        layout = self.model.feature_layout
        conv: Callable[[torch.Tensor], torch.Tensor] = feature_function(
            self.model.conv, layout, backbone=self.model.backbone
        )
        int8 = None
        if path == "int8":
            if layout != "flat":
                raise ValueError(
                    "int8 runs the whole conv stack as one quantised block; a "
                    f"{layout!r} model taps it midway: use fp32 or bf16"
                )
            int8 = int8_conv_for(
                self.model,
                info,
                self.model.conv,
                lambda crops: (x for x, _ in self._batches(crops)),
                precision_cache,
            )
        elif compile:
            conv = torch.compile(conv)
        self._conv = conv_runner(conv, path, int8)
        # The head's features and the pooled ones a tally store keeps, in one pass (not
        # on the int8 path: its quantised conv stack cannot be tapped midway).
        self._with_pooled: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None
        self._with_pooled = None
        if path != "int8":
            both = features_and_pooled(self.model.conv, layout, self.model.backbone)

            def with_pooled(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                with self.autocast():
                    f, pooled = both(x)
                return f.float(), pooled.float()

            self._with_pooled = with_pooled
        self._feature_space: dict[str, Any] | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: object) -> Predictor:
        """Load a checkpoint and build a predictor; keyword arguments as for `Predictor`."""
        model, info = load_checkpoint(path, device="cpu")
        return cls(model, info, **kwargs)  # type: ignore[arg-type]

    @property
    def class_names(self) -> tuple[str, ...]:
        """The checkpoint's class names, in the order of the model's outputs."""
        return self.info.class_names

    @property
    def precision(self) -> str:
        """The conv blocks' compute path in use: "fp32", "bf16" or "int8" (what a store's
        provenance records as ``classify_precision``).
        """
        return self.precision_choice.path

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """The autocast context of the bf16 path (a no-op for the others)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _batches(
        self, crops: Crops, seed: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Validated crops as preprocessed (B, 3, S, S) float tensors on the device, with
        their dropout keys (`crop_keys`).
        """
        arr = check_crops(crops, self.info.input_size)
        cuda = self.device.type == "cuda"
        for start in range(0, arr.shape[0], self.batch_size):
            chunk = np.ascontiguousarray(arr[start : start + self.batch_size])
            if min(chunk.strides) < 0:
                # numpy calls a one-crop slice of a reversed array contiguous and keeps its
                # negative stride, which torch.from_numpy refuses.
                chunk = chunk.copy()
            keys = torch.from_numpy(crop_keys(chunk, seed))
            x = torch.from_numpy(chunk)
            if cuda:
                x = x.pin_memory()
            # uint8 crosses to the device (4x less traffic than float), converted there.
            x = x.to(self.device, non_blocking=cuda).permute(0, 3, 1, 2).float()
            x = x * self._scale + self._offset
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, keys

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) fp32 features through this predictor's path."""
        return self._conv(x)

    def extract_features(self, crops: Crops) -> torch.Tensor:
        """The head's input features (N, D) float32 on the CPU, e.g. to cache for training."""
        out = []
        with torch.inference_mode():
            for x, _ in self._batches(crops):
                out.append(self._features(x).float().cpu())
        if not out:
            return torch.zeros((0, self.model.feature_dim))
        return torch.cat(out)

    @property
    def keeps_features(self) -> bool:
        """Whether `predict(..., keep_features=True)` can return the pooled features."""
        return self._with_pooled is not None

    @property
    def feature_space(self) -> dict[str, Any]:
        """What the pooled features of this predictor's backbone are (a tally store's
        ``feature_space``): the conv tensors' digest, the input convention, the layout
        and length, and where the backbone came from (to rebuild it for a head-only
        checkpoint trained on them).
        """
        if self._feature_space is None:
            from napari_foram.classify.checkpoint import conv_sha256

            info = self.info
            self._feature_space = {
                "backbone_sha256": info.backbone_sha256 or conv_sha256(self.model),
                "input_convention": info.input_convention,
                "layout": "pooled",
                "dim": pooled_dim(self.model.backbone),
                "backbone": info.backbone_id or info.backbone_weights,
                "backbone_weights": info.backbone_weights,
                "backbone_seed": info.backbone_seed,
            }
        return dict(self._feature_space)

    def predict(
        self,
        crops: Crops,
        mc_samples: int = MC_SAMPLES,
        seed: int | None = None,
        *,
        keep_features: bool = False,
    ) -> Predictions:
        """Classify crops with Monte Carlo dropout.

        Parameters
        ----------
        crops
            (N, 224, 224, 3) uint8 RGB crops, or a list of (224, 224, 3) uint8 crops.
        mc_samples
            Stochastic head passes per crop: `defaults.MC_SAMPLES` (30) unless asked, the
            project's one default (the study used 100). 0 or 1: one deterministic
            pass with dropout off (variance 0, vote = argmax).
        seed
            Mixed into every crop's dropout key (None: 0). The masks of a crop depend
            only on its pixels and this seed, never on the rest of the batch, and the
            global RNG is neither used nor touched.
        keep_features
            Also return each crop's pooled backbone features (`Predictions.kept_features`)
            when this predictor can (`keeps_features`; the same pass, no extra cost).

        Returns
        -------
        Predictions
        """
        if int(mc_samples) < 0:
            raise ValueError(f"mc_samples must be >= 0, got {mc_samples}")
        n = max(int(mc_samples), 1)
        parts: list[dict[str, torch.Tensor]] = []
        kept: list[torch.Tensor] = []
        keep = keep_features and self._with_pooled is not None
        with torch.inference_mode():
            for x, keys in self._batches(crops, seed):
                if keep:
                    assert self._with_pooled is not None
                    f, pooled = self._with_pooled(x)
                    kept.append(pooled.cpu())
                else:
                    f = self._features(x)
                parts.append(self._predict_features(f, n, keys))
        out = self._assemble(parts, n)
        if keep:
            feats = (
                torch.cat(kept).numpy()
                if kept
                else np.zeros((0, pooled_dim(self.model.backbone)), np.float32)
            )
            out = dataclasses.replace(out, kept_features=feats.astype(np.float32, copy=False))
        return out

    def predict_features(
        self,
        features: torch.Tensor,
        mc_samples: int = MC_SAMPLES,
        seed: int | None = None,
        keys: np.ndarray | None = None,
    ) -> Predictions:
        """As `predict`, from precomputed features (N, D) (e.g. a feature cache).

        The dropout keys are `keys` when given (e.g. `crop_keys` of the crops the features
        came from: then the result equals `predict` on those crops), else hashes of the
        features (`feature_keys`) mixed with `seed`.
        """
        n = max(int(mc_samples), 1)
        dim = self.model.feature_dim
        if features.ndim != 2 or features.shape[1] != dim:
            raise ValueError(f"features must be (N, {dim}), got {tuple(features.shape)}")
        if keys is not None:
            keys = np.asarray(keys, dtype=np.int64)
            if keys.shape != (features.shape[0],):
                raise ValueError(f"keys must be ({features.shape[0]},), got {keys.shape}")
        if int(mc_samples) < 0:
            raise ValueError(f"mc_samples must be >= 0, got {mc_samples}")
        parts = []
        # Features are small: larger batches than the conv blocks' amortise the head's
        # and the density's per-call cost (a 1,000-specimen recount: 63 calls -> 4).
        step = max(self.batch_size, FEATURE_BATCH)
        with torch.inference_mode():
            for start in range(0, features.shape[0], step):
                f = features[start : start + step]
                k = keys[start : start + step] if keys is not None else feature_keys(f, seed)
                parts.append(self._predict_features(f.to(self.device), n, torch.from_numpy(k)))
        return self._assemble(parts, n)

    def sample_probs(self, f: torch.Tensor, n: int, keys: torch.Tensor) -> torch.Tensor:
        """(n, B, K) softmax outputs of `n` dropout passes for features f (B, D) with
        per-crop `keys` (n = 1: one deterministic pass, dropout off).

        Always fp32, whatever the conv path: the head is ~1 % of the work, and its
        outputs are the statistics people read.
        """
        f = f.float()
        if n == 1:
            return torch.softmax(self.model.head(f), dim=-1)[None]
        hidden = self._head_prefix(f)  # deterministic part, once per crop
        logits = stochastic_passes(self._head_rest, hidden, n, keys.to(f.device))
        return torch.softmax(logits, dim=-1)

    def _predict_features(
        self, f: torch.Tensor, n: int, keys: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """MC statistics for one batch of features f (B, D)."""
        probs = self.sample_probs(f, n, keys)
        stats = mc_statistics(probs)
        distance = self.model.feature_distance(f.float())
        if distance is not None:
            stats["feature_distance"] = distance
        return stats

    def _assemble(self, parts: list[dict[str, torch.Tensor]], n: int) -> Predictions:
        k = self.info.num_classes
        if not parts:
            empty = np.zeros((0,), np.float32)
            return Predictions(
                np.zeros((0,), np.int64),
                np.zeros((0, k), np.float32),
                np.zeros((0, k), np.float32),
                empty,
                empty.copy(),
                np.zeros((0,), np.int64),
                empty.copy(),
                self.class_names,
                n,
            )

        def cat(key: str) -> np.ndarray:
            return torch.cat([p[key] for p in parts]).cpu().numpy()

        mean = cat("mean").astype(np.float32)
        if bad := int((~np.isfinite(mean)).any(axis=1).sum()):
            # NaN probabilities would print, count and save as if they were answers.
            raise NonFiniteOutputError(
                f"the model gave non-finite probabilities for {bad} crop(s) "
                "(NaN or inf weights or inputs)"
            )
        return Predictions(
            class_index=mean.argmax(axis=1).astype(np.int64),
            mean_probs=mean,
            variance=cat("variance").astype(np.float32),
            entropy=cat("entropy").astype(np.float32),
            mutual_information=cat("mutual_information").astype(np.float32),
            vote_class=cat("vote_class").astype(np.int64),
            vote_fraction=cat("vote_fraction").astype(np.float32),
            class_names=self.class_names,
            mc_samples=n,
            feature_distance=cat("feature_distance").astype(np.float32)
            if "feature_distance" in parts[0]
            else np.zeros(0, np.float32),
        )


class Bf16Agreement(NamedTuple):
    """How closely bf16 autocast follows fp32 on the same crops (deterministic passes)."""

    agreement: float  # fraction of crops with the same predicted class
    max_abs_prob_diff: float  # largest |p_bf16 - p_fp32| over crops and classes
    n: int  # crops compared


def measure_bf16_agreement(
    model: FORAMNet, info: ModelInfo, crops: Crops, *, device: str = "cpu"
) -> Bf16Agreement:
    """Compare bf16 autocast with fp32 predictions (dropout off) on `crops`.

    Use it before choosing ``precision="bf16"`` on a CPU: the project's rule is to accept
    bf16 only with an agreement of at least 99.5 % on representative crops.
    """
    fp32 = Predictor(model, info, device=device, precision="fp32").predict(crops, 1)
    bf16 = Predictor(model, info, device=device, precision="bf16").predict(crops, 1)
    n = len(fp32)
    if n == 0:
        raise ValueError("need at least one crop to compare precisions")
    return Bf16Agreement(
        agreement=float(np.mean(fp32.class_index == bf16.class_index)),
        max_abs_prob_diff=float(np.abs(fp32.mean_probs - bf16.mean_probs).max()),
        n=n,
    )


def fp32_reference(model: FORAMNet, info: ModelInfo, batch_size: int) -> Predictor:
    """The fp32 CPU predictor that a precision calibration compares every path with."""
    return Predictor(model, info, device="cpu", precision="fp32", batch_size=batch_size)


def choice_for_checkpoint(
    checkpoint: str | Path,
    *,
    device: str = "auto",
    precision: str = "auto",
    cache_dir: str | Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> PrecisionChoice:
    """`decide_precision` for a checkpoint file, e.g. once in a batch's client so that
    its workers all use (and its provenance records) one path, and a first-use
    calibration runs once rather than in every worker at the same time.
    """
    dev = resolve_device(device)
    if precision != "auto" or dev.type == "cuda" or os.environ.get(PRECISION_ENV):
        # No model needed to decide: do not load 130 MB for nothing.
        return decide_precision(None, None, dev, precision)
    model, info = load_checkpoint(checkpoint, device="cpu")
    return decide_precision(
        model, info, dev, precision, cache_dir, progress, reference=fp32_reference
    )
