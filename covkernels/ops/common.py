"""Helpers shared by the fused-kernel wrappers (no Triton import here).

``alloc`` is where every fused kernel's output comes from. With poisoning on (tests turn it on; also
``COVKERNELS_POISON_OUTPUTS=1``), outputs are filled with NaN (or the dtype's max for integers) before the
kernel runs, so an element a kernel forgets to write shows up instead of passing as stale memory.
"""
from __future__ import annotations

import os

import torch

_poison = os.environ.get("COVKERNELS_POISON_OUTPUTS") == "1"


def set_poison(enabled: bool) -> bool:
    """Turn output poisoning on or off; returns the previous setting."""
    global _poison
    previous, _poison = _poison, bool(enabled)
    return previous


def alloc(shape, dtype: torch.dtype, device) -> torch.Tensor:
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    if _poison:
        out.fill_(float("nan") if dtype.is_floating_point else torch.iinfo(dtype).max)
    return out


def launch_grid_1d(rows: int, per_row: int, block: int) -> tuple[int, int]:
    """Grid ``(rows, ceil(per_row / block))`` for kernels with one program axis per sample."""
    return rows, max(1, -(-per_row // block))


def contiguous(t: torch.Tensor) -> torch.Tensor:
    """Kernels index NCHW memory directly: other layouts are copied (documented, not an error)."""
    return t if t.is_contiguous() else t.contiguous()
