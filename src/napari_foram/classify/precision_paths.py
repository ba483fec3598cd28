"""The conv blocks' compute paths: fp32, bf16 and int8 (`PATHS`).

Part of `napari_foram.classify.precision` (which re-exports the public names and decides
which path a predictor takes). All paths are channels-last; the head and the MC
statistics always run in fp32.

``fp32``
    The reference.
``bf16``
    The conv blocks under CPU bf16 autocast (oneDNN bf16 kernels; fp32 weights kept).
``int8``
    Post-training static quantisation of the conv blocks with PyTorch's own x86 backend
    (fbgemm/oneDNN): each conv fused with its ReLU, per-channel int8 weights, uint8
    activations whose ranges come from a histogram of the activations of a fixed set of
    calibration crops (`napari_foram.classify.precision_crops.calibration_crops`). The
    features leave the blocks dequantised to fp32.

All paths are per-crop deterministic: a crop's output does not depend on what else is in
its batch (fixed quantisation ranges, no batch statistics).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

#: Compute paths of the conv blocks, the reference first.
PATHS: tuple[str, ...] = ("fp32", "bf16", "int8")
#: What ``--precision`` accepts: a path, or "auto" (measure and choose on this machine).
PRECISION_CHOICES: tuple[str, ...] = ("auto", *PATHS)
#: Environment variable that overrides what "auto" means (a path name), e.g. to pin fp32.
PRECISION_ENV = "NAPARI_FORAM_PRECISION"


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
    """Torch warns on every use that eager-mode quantisation is deprecated (in favour of
    torchao, not installed here) and that ``reduce_range`` will go; the kernels are the
    current ones. Silenced only around building and the first forward (torch warns once
    per process), so the suite's warnings-as-errors does not trip on them.
    """
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
