"""napari-foram: count and identify foraminifera under the microscope.

The package root stays light: importing it never imports torch, Qt or napari. It does one
thing on import, `guard_triton()`, because napari may load this plugin after it has drawn
a canvas, and torch's bundled triton then crashes against Mesa's LLVM (see
docs/architecture.md, "The triton/Mesa segfault").
"""

from __future__ import annotations

from napari_foram._torch_guard import guard_triton

__version__ = "0.1.0"

guard_triton()

__all__ = ["__version__"]
