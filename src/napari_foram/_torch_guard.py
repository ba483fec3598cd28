"""Keep torch's triton away from Mesa's LLVM on machines without a CUDA GPU.

Once napari has drawn a canvas with Mesa's llvmpipe (libLLVM loaded), importing
torchvision pulls in triton, whose own bundled LLVM clashes with Mesa's and segfaults the
process. triton is only useful with a CUDA GPU (torch.compile's GPU backend), so where no
NVIDIA driver is present we register it as absent before torch is first imported. With a
GPU, triton stays importable and the GPU path (torch.compile) keeps working.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_NVIDIA_MARKERS = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0")


def cuda_driver_present() -> bool:
    """Whether an NVIDIA driver is visible, checked without importing torch."""
    if os.environ.get("NAPARI_FORAM_ASSUME_CUDA") == "1":
        return True
    return any(Path(p).exists() for p in _NVIDIA_MARKERS)


def guard_triton() -> bool:
    """Mark triton as unavailable when there is no CUDA driver; return True if blocked.

    Does nothing when triton was already imported (someone chose it deliberately) or when
    a CUDA driver is present.
    """
    if "triton" in sys.modules and sys.modules["triton"] is not None:
        return False
    if cuda_driver_present():
        return False
    # ``None`` in sys.modules makes ``import triton`` raise ImportError, which torch
    # treats as "triton not installed".
    sys.modules.setdefault("triton", None)  # type: ignore[arg-type]
    return True
