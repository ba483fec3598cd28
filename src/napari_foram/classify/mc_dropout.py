"""Monte Carlo dropout's parts (Johansen & Sorensen 2020, sections 3 and 5.2): per-crop
dropout keys and masks, the head split at its first Dropout and run N times, and the
statistics of the N passes. `Predictor` (`napari_foram.classify.predict`) puts them
together.

Dropout masks are drawn per crop, not from a shared random stream: each crop's key (a
hash of its pixels, or of its features, mixed with an optional seed) fixes its N masks
through a counter-based hash (`dropout_uniforms`). A specimen therefore gets the same
MC statistics whatever else is in its batch, its file, its task or its Dask worker, so
counts do not depend on how a run is cut; and a run is reproducible with no seed at all.

Per crop and class the statistics follow the paper: mean = 1/N sum_i y_i and population
variance 1/N sum_i (y_i - mean)^2 of the softmax outputs y_i, plus the predictive entropy
of the mean, the mutual information (entropy of the mean minus the mean entropy of the
samples) and the majority vote over the N samples. Entropies are in nats.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xor-shift-multiply) on int64 tensors holding 32-bit
    values, in place on `x` (returned): every input bit flips about half the output
    bits. int64 products wrap, and only their low 32 bits are kept, so CPU and CUDA give
    the same numbers. In place because it runs on (passes x crops x units) tensors.
    """
    x.bitwise_and_(_MASK32)
    x.bitwise_xor_(x >> 16).mul_(0x7FEB352D).bitwise_and_(_MASK32)
    x.bitwise_xor_(x >> 15).mul_(0x846CA68B).bitwise_and_(_MASK32)
    return x.bitwise_xor_(x >> 16)


def crop_keys(crops: np.ndarray, seed: int | None = None) -> np.ndarray:
    """(B,) int64 32-bit keys of uint8 crops (B, S, S, 3): a hash of each crop's pixels,
    mixed with `seed` (None: 0). Equal crops get equal keys.
    """
    import hashlib

    salt = (int(seed or 0) * 0x9E3779B1) & _MASK32
    return np.array(
        [
            int.from_bytes(
                hashlib.blake2b(np.ascontiguousarray(c).data, digest_size=4).digest(), "little"
            )
            ^ salt
            for c in crops
        ],
        dtype=np.int64,
    )


def feature_keys(features: torch.Tensor, seed: int | None = None) -> np.ndarray:
    """(B,) keys of conv features (B, D), as `crop_keys` does for pixels."""
    arr = features.detach().float().cpu().contiguous().numpy()
    return crop_keys(arr.view(np.uint8).reshape(arr.shape[0], -1), seed)


def dropout_uniforms(keys: torch.Tensor, n: int, units: int, layer: int) -> torch.Tensor:
    """(n, B, units) uniforms in [0, 1) on a 1/65536 grid: pass i, unit u of dropout layer
    `layer` of the crop with key k, a pure function of (k, i, u, layer) on the keys' device.

    One 32-bit hash gives two neighbouring units their 16 bits each, computed in int32
    (products wrap the same way on CPU and CUDA; shifts are masked, so they act as
    unsigned shifts): a linear head's input dropout over 2048 features draws 61 M
    uniforms for 1,000 specimens x 30 passes, and this is 3x faster than one int64 hash
    per unit (measured in docs/benchmarks.md, "Teaching").
    """
    device = keys.device
    i = torch.arange(n, device=device, dtype=torch.int64).view(n, 1, 1)
    k = (keys.to(torch.int64) & _MASK32).view(1, -1, 1)
    # Crop and pass mixed first on the small (n, B, 1) grid, in int64.
    base = _mix32(k * 0x9E3779B1 + _mix32(i * 0x85EBCA77 + layer * 0x27D4EB2F))
    base = torch.where(base >= 2**31, base - 2**32, base).to(torch.int32)
    half = (units + 1) // 2
    u = torch.arange(half, device=device, dtype=torch.int32).view(1, 1, half)
    x = base + u * _I32_C2B2AE3D
    x.bitwise_xor_((x >> 16) & 0xFFFF).mul_(0x7FEB352D)
    x.bitwise_xor_((x >> 15) & 0x1FFFF).mul_(_I32_846CA68B)
    x.bitwise_xor_((x >> 16) & 0xFFFF)
    pair = torch.stack([x & 0xFFFF, (x >> 16) & 0xFFFF], dim=-1).flatten(-2)
    return pair[..., :units].to(torch.float32).mul_(1.0 / 65536.0)


# The 32-bit odd constants 0xC2B2AE3D and 0x846CA68B as signed int32 (two's complement).
_I32_C2B2AE3D = -1028477379
_I32_846CA68B = -2073254261


def stochastic_passes(
    rest: nn.Sequential, hidden: torch.Tensor, n: int, keys: torch.Tensor
) -> torch.Tensor:
    """Run the head's stochastic part `n` times per crop with per-crop dropout masks.

    `hidden` (B, H) is the output of the head's deterministic prefix (`split_head`);
    returns logits (n, B, K). Every ``nn.Dropout`` of `rest` becomes a mask drawn by
    `dropout_uniforms` (kept with probability 1 - p, scaled by 1 / (1 - p), as
    ``nn.Dropout`` does in training mode); other layers run as they are.
    """
    x = hidden.unsqueeze(0).expand(n, *hidden.shape)
    layer = 0
    for module in rest:
        if isinstance(module, nn.Dropout):
            if module.p > 0:
                keep = dropout_uniforms(keys, n, x.shape[-1], layer) >= module.p
                x = x * keep.to(x.dtype) * (1.0 / (1.0 - module.p))
            layer += 1
        else:
            x = module(x)
    return x


def split_head(head: nn.Sequential) -> tuple[nn.Sequential, nn.Sequential]:
    """Split the head at its first Dropout: (deterministic prefix, stochastic rest)."""
    layers = list(head)
    first = next((i for i, m in enumerate(layers) if isinstance(m, nn.Dropout)), len(layers))
    return nn.Sequential(*layers[:first]), nn.Sequential(*layers[first:])


def mc_statistics(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """MC-dropout statistics from softmax outputs of N samples.

    Parameters
    ----------
    probs
        (N, B, K) float32 softmax outputs: N samples for B crops.

    Returns
    -------
    dict
        mean (B, K), variance (B, K), entropy (B,), mutual_information (B,),
        vote_class (B,), vote_fraction (B,).
    """
    n, _, k = probs.shape
    mean = probs.mean(dim=0)
    variance = ((probs - mean) ** 2).mean(dim=0)  # population variance, as in the paper
    entropy = _entropy(mean)
    mutual_information = (entropy - _entropy(probs).mean(dim=0)).clamp_min(0.0)
    votes = torch.nn.functional.one_hot(probs.argmax(dim=-1), k).sum(dim=0)  # (B, K)
    vote_count, vote_class = votes.max(dim=-1)
    return {
        "mean": mean,
        "variance": variance,
        "entropy": entropy,
        "mutual_information": mutual_information,
        "vote_class": vote_class,
        "vote_fraction": vote_count.float() / n,
    }


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats over the last axis; 0 log 0 = 0."""
    return -(p * torch.log(p.clamp_min(1e-30))).sum(dim=-1)
