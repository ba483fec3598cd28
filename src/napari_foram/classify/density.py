"""How far a crop lies from everything the classifier was trained on ("none of these").

Real trays hold objects of no trained class (ostracods, radiolarians, shell fragments,
spines). A softmax classifier still gives them a class, and often confidently: on the
synthetic out-of-distribution set (`napari_foram.synthetic_ood`) the MC-dropout measures
(entropy, mutual information, vote) separate them from the four classes only weakly (see
docs/benchmarks.md, "Not one of these classes"). What does separate them is where their
ImageNet features lie: far from every class's training crops.

`FeatureDensity` is a Gaussian model of the training features per class with one shared,
shrunk covariance (the Mahalanobis-distance detector of Lee et al. 2018, on pooled conv
features). Its score for a crop is the squared Mahalanobis distance to the nearest class
mean divided by the feature dimension, so in-distribution crops score about 1 and
strangers much more. It is an `nn.Module` of buffers attached to the model
(``FORAMNet.density``), so it is saved, loaded and moved to a device with the model, and
it runs once per crop on the conv features the classifier computes anyway.

The features are pooled first (mean over the 7 x 7 grid and over its centre 3 x 3, per
channel: 1024 values), because 25088 raw values are too many to estimate a covariance from
a few hundred crops, and roughly translation-invariant pooled features describe *what* is
in the crop rather than where.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from torch import nn

from napari_foram.classify.architecture import CENTRE_MARGIN, VGG16, ConvBackbone
from napari_foram.classify.rng import seeded

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

T = TypeVar("T")
#: Default shrinkage of the shared covariance towards its mean variance (0 = none).
DEFAULT_SHRINKAGE = 0.5
#: Default share of in-distribution crops an "unsure" rule may flag.
DEFAULT_FALSE_FLAG_RATE = 0.05
#: Prefix of the density's tensors in a checkpoint.
STATE_PREFIX = "density."


def pooling_for(layout: str, backbone: ConvBackbone = VGG16) -> torch.Tensor:
    """The pooling a density uses for a model's feature layout: `pooling_matrix` for the
    flat layout (VGG16: the study's 25088 values), none (a (0, H * W) matrix) for
    features already pooled.
    """
    if layout == "flat":
        return pooling_matrix(backbone)
    _, h, w = backbone.output_shape
    return torch.zeros(0, h * w)


def columns_for(layout: str, backbone: ConvBackbone = VGG16) -> torch.Tensor | None:
    """The feature columns a density models for a layout: all of the flat layout's
    (pooled by `pooling_for`); for "pooled", its block-5 whole-image and centre means
    (the last 1024 of `napari_foram.classify.model.POOLED_DIM`): the same statistics the
    flat layout's density pools, where 2048 dimensions from a few hundred crops made the
    shared covariance too noisy (16 % false flags on the synthetic benchmark's held-out
    crops, against 0.6 %).
    """
    if layout == "flat":
        return None
    start = 2 * sum(backbone.tap_channels[:-1])  # the last tap's two means
    return torch.arange(start, start + 2 * backbone.tap_channels[-1])


def pooling_matrix(backbone: ConvBackbone = VGG16) -> torch.Tensor:
    """(2, H * W) pooling weights over the last block's grid: the global mean, and the
    mean of its centre (VGG16: the middle 3 x 3 of 7 x 7, as the "pooled" layout's).
    """
    _, h, w = backbone.output_shape
    cut_h, cut_w = round(h * CENTRE_MARGIN), round(w * CENTRE_MARGIN)
    centre = torch.zeros(h, w)
    centre[cut_h : h - cut_h, cut_w : w - cut_w] = 1.0
    centre /= centre.sum()
    return torch.stack([torch.full((h * w,), 1.0 / (h * w)), centre.flatten()])


def pool_features(features: torch.Tensor, pooling: torch.Tensor) -> torch.Tensor:
    """(N, 25088) -> (N, R * 512): ``out[:, r * 512 + c] = sum_s pooling[r, s] f[:, 49 c + s]``.

    An empty pooling (R = 0, `pooling_for` "pooled") passes features through unchanged.
    """
    if pooling.shape[0] == 0:
        return features
    cells = pooling.shape[1]
    x = features.reshape(-1, features.shape[1] // cells, cells)
    return torch.einsum("ncs,rs->nrc", x, pooling.to(x)).flatten(1)


def pooled_proxy_head(head: nn.Sequential, in_features: int, seed: int) -> nn.Sequential:
    """A copy of a Table-1 head whose first Linear takes `in_features` pooled inputs
    (freshly initialised from `seed`); train it, then `fold_pooled_head_into`.
    """
    import copy

    proxy = copy.deepcopy(head)
    index, first = next((i, m) for i, m in enumerate(proxy) if isinstance(m, nn.Linear))
    with seeded(seed):
        proxy[index] = nn.Linear(in_features, first.out_features)
    return proxy


def fold_pooled_head_into(
    proxy: nn.Sequential,
    head: nn.Sequential,
    pooling: torch.Tensor,
    mu: torch.Tensor,
    sd: torch.Tensor,
) -> None:
    """Copy a head trained on ``z = (pool_features(f) - mu) / sd`` into `head`, exactly.

    The first layer ``W z + b`` equals ``W' f + b'`` on the flattened 25088 features f, with
    ``W'[:, 49 c + s] = sum_r (W / sd)[:, 512 r + c] pooling[r, s]`` and
    ``b' = b - (W / sd) mu``. Every later layer is copied unchanged.
    """
    index, first = next((i, m) for i, m in enumerate(proxy) if isinstance(m, nn.Linear))
    with torch.no_grad():
        w = first.weight / sd.to(first.weight)  # (units, R * 512)
        units, channels = w.shape[0], w.shape[1] // pooling.shape[0]
        weight = torch.einsum("urc,rs->ucs", w.view(units, -1, channels), pooling.to(w)).reshape(
            units, -1
        )
        bias = first.bias - w @ mu.to(w)
        state = {k: v.clone() for k, v in proxy.state_dict().items()}
        state[f"{index}.weight"], state[f"{index}.bias"] = weight.contiguous(), bias
        head.load_state_dict(state)


def fit_on_pooled(
    head: nn.Sequential,
    features: torch.Tensor,
    fit_rows: np.ndarray,
    seed: int,
    fit: Callable[[nn.Sequential, torch.Tensor], T],
) -> T:
    """Train `head` on standardised pooled features, then fold it back, exactly.

    Pools the (N, 25088) `features`, standardises them with the mean and SD of rows
    `fit_rows`, builds a proxy of `head` taking the pooled values (`pooled_proxy_head`,
    seeded), calls ``fit(proxy, z)`` to train it in place, folds the proxy into `head`
    (`fold_pooled_head_into`) and returns what `fit` returned. The one place for this
    recipe: the demo model and ``napari-foram train`` both use it.
    """
    pooling = pooling_matrix()
    pooled = pool_features(features.float(), pooling)
    rows = torch.from_numpy(np.asarray(fit_rows, dtype=np.int64))
    mu, sd = pooled[rows].mean(0), pooled[rows].std(0) + 1e-6
    proxy = pooled_proxy_head(head, pooled.shape[1], seed)
    result = fit(proxy, (pooled - mu) / sd)
    fold_pooled_head_into(proxy, head, pooling, mu, sd)
    head.eval()
    return result


class FeatureDensity(nn.Module):
    """Class-conditional Gaussian model of pooled conv features (shared covariance).

    Build it with `FeatureDensity.fit`; `forward` / `score` give each crop's distance.

    Buffers (all float32): ``pooling`` (R, 49), ``mean`` and ``scale`` (D,) standardise
    the pooled features, ``class_means`` (K, D), ``precision`` (D, D) the inverse of the
    shrunk shared covariance; D = R * 512. For features already pooled (R = 0),
    ``columns`` (D,) picks the ones modelled (kept as float32 indices, as checkpoints
    store every tensor).
    """

    pooling: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    class_means: torch.Tensor
    precision: torch.Tensor
    columns: torch.Tensor | None

    def __init__(
        self,
        pooling: torch.Tensor,
        mean: torch.Tensor,
        scale: torch.Tensor,
        class_means: torch.Tensor,
        precision: torch.Tensor,
        columns: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        d = int(mean.shape[0]) if mean.ndim == 1 else -1
        if columns is not None and (pooling.shape[0] or columns.shape != (d,)):
            raise ValueError("feature density columns need pooled features, one per dimension")
        rows = pooling.shape[0] if pooling.ndim == 2 else -1
        # Pooled means are (pooling rows x channels): d must split into whole channels.
        if rows < 0 or d < 1 or (rows and d % rows) or scale.shape != (d,):
            raise ValueError("feature density tensors do not fit each other (pooling, mean)")
        if class_means.ndim != 2 or class_means.shape[1] != d or precision.shape != (d, d):
            raise ValueError("feature density tensors have inconsistent shapes")
        for name, t in (
            ("pooling", pooling),
            ("mean", mean),
            ("scale", scale),
            ("class_means", class_means),
            ("precision", precision),
        ):
            self.register_buffer(name, t.detach().float().contiguous())
        # None is not saved: densities without a selection keep their old tensors.
        self.register_buffer(
            "columns", None if columns is None else columns.detach().float().contiguous()
        )

    def _select(self, features: torch.Tensor) -> torch.Tensor:
        if self.columns is None:
            return pool_features(features.float(), self.pooling)
        return features.float()[:, self.columns.long()]

    @property
    def dim(self) -> int:
        """D, the length of the pooled feature vector."""
        return int(self.mean.shape[0])

    @classmethod
    def fit(
        cls,
        features: torch.Tensor,
        labels: np.ndarray,
        num_classes: int,
        *,
        shrinkage: float = DEFAULT_SHRINKAGE,
        pooling: torch.Tensor | None = None,
        columns: torch.Tensor | None = None,
    ) -> FeatureDensity:
        """Fit on training crops' features (N, D) and their labels (N,).

        `pooling`, `columns`: `pooling_for` and `columns_for` the model's feature layout
        (default: the flat layout's).

        The covariance is shrunk towards ``mean variance x identity`` (``shrinkage`` in
        0-1): with a few hundred crops and D = 1024 the sample covariance is singular.
        """
        y = np.asarray(labels, dtype=np.int64)
        if features.ndim != 2 or features.shape[0] != y.shape[0]:
            raise ValueError("features (N, D) and labels (N,) do not match")
        if not 0.0 < shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage}")
        present = np.unique(y)
        if present.size < 2:
            raise ValueError("a feature density needs training crops of at least 2 classes")
        pooling = pooling_matrix() if pooling is None else pooling
        feats = features.detach().float().cpu()
        if columns is not None:
            feats = feats[:, columns.long()]
        pooled = pool_features(feats, pooling).double()
        mean = pooled.mean(0)
        scale = pooled.std(0) + 1e-6
        z = (pooled - mean) / scale
        yt = torch.from_numpy(y)
        class_means = torch.zeros(num_classes, z.shape[1], dtype=torch.float64)
        # A class absent from the training crops keeps an unreachable mean: no crop is
        # ever "near" it.
        class_means[:] = float("inf")
        for k in present:
            class_means[int(k)] = z[yt == int(k)].mean(0)
        resid = z - class_means[yt]
        cov = resid.T @ resid / max(1, z.shape[0] - present.size)
        # Constant features (dead ReLUs of a random backbone) have zero variance: floor the
        # ridge so the shrunk covariance stays invertible.
        ridge = max(float(cov.diagonal().mean()), 1e-6)
        cov = (1.0 - shrinkage) * cov + shrinkage * ridge * torch.eye(cov.shape[0]).double()
        precision = torch.linalg.inv(cov)
        return cls(
            pooling, mean.float(), scale.float(), class_means.float(), precision.float(), columns
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 25088) conv features -> (B,) squared Mahalanobis distance to the nearest
        class mean, divided by D (about 1 for training-like crops).
        """
        z = (self._select(features) - self.mean) / self.scale
        best = torch.full((z.shape[0],), float("inf"), device=z.device)
        for mu in self.class_means:
            if not torch.isfinite(mu).all():
                continue
            diff = z - mu
            best = torch.minimum(best, ((diff @ self.precision) * diff).sum(1))
        return best / self.dim

    def score(self, features: torch.Tensor) -> np.ndarray:
        """`forward` without gradients, as a float32 numpy array."""
        with torch.inference_mode():
            return self(features).float().cpu().numpy().astype(np.float32)

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor]) -> FeatureDensity | None:
        """The density stored under ``density.*`` in checkpoint `tensors`, or None."""
        names = ("pooling", "mean", "scale", "class_means", "precision")
        keys = [STATE_PREFIX + n for n in names]
        present = [k in tensors for k in keys]
        if not any(present):
            return None
        if not all(present):
            raise ValueError("the checkpoint's feature density is incomplete")
        pooling, mean, scale, class_means, precision = (tensors[k] for k in keys)
        return cls(
            pooling, mean, scale, class_means, precision, tensors.get(STATE_PREFIX + "columns")
        )


def fit_threshold(values: np.ndarray, false_flag_rate: float = DEFAULT_FALSE_FLAG_RATE) -> float:
    """The threshold that flags `false_flag_rate` of in-distribution `values` (higher = less
    sure): their (1 - rate) quantile.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("no in-distribution values to set an unsure threshold from")
    if not 0.0 < false_flag_rate < 1.0:
        raise ValueError(f"false_flag_rate must be in (0, 1), got {false_flag_rate}")
    return float(np.quantile(v, 1.0 - false_flag_rate))


def auroc(in_distribution: np.ndarray, out_of_distribution: np.ndarray) -> float:
    """Area under the ROC curve of a score meant to be higher out of distribution.

    The probability that a random stranger scores above a random in-distribution crop,
    ties counting one half (Mann-Whitney U with average ranks).
    """
    from scipy.stats import rankdata

    a = np.asarray(in_distribution, dtype=np.float64)
    b = np.asarray(out_of_distribution, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("AUROC needs scores of both groups")
    ranks = rankdata(np.concatenate([a, b]))
    return float((ranks[a.size :].sum() - b.size * (b.size + 1) / 2) / (a.size * b.size))
