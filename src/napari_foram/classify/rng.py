"""Seeded torch randomness that leaves the caller's random state as it was."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Seed torch's RNGs for the block (the CPU's and, for a CUDA `device`, that
    device's), then restore them: weights initialised or dropout drawn inside depend on
    `seed` alone, and code after the block sees the same random stream as without it.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(int(seed))
        yield
