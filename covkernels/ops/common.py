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


# --- what a backend runs ----------------------------------------------------------------------------------
# Every backend module answers ``supports(op, **args) -> None | reason``: None when it runs ``op`` on these
# arguments (the reference's names and defaults), else a short reason. Only ops.dispatch asks, and runs the
# reference (reporting the fallback) on a reason; a backend function never reroutes by itself. Arguments
# that are invalid for every backend get None: the op itself raises the error that names them.

FLOAT64 = "float64"  # the fused kernels accumulate in float32
GLOBAL_DCT = "global DCT basis"  # a dense transform per plane: torch matmuls, no fused kernel


def block_too_large(block: int, limit: int) -> str:
    return f"block {block} > {limit}"


def dims(ndim: int) -> str:
    return f"{ndim}-D input"


def mixed_dtypes(*tensors: torch.Tensor) -> str:
    return "mixed input dtypes (" + ", ".join(str(t.dtype).removeprefix("torch.") for t in tensors) + ")"


def check_op(op: str, ops: tuple[str, ...], module: str) -> None:
    """``supports`` answers only for the ops its own module defines."""
    if op not in ops:
        raise ValueError(f"{module} has no op {op!r}; its ops are {ops}")


def unsupported(backend: str, op: str, reason: str) -> NotImplementedError:
    """What a backend function raises when called with arguments its ``supports`` declines: a direct call
    that skipped :mod:`covkernels.ops.dispatch` (which runs the reference for them)."""
    return NotImplementedError(f"the {backend} backend does not run {op} for these arguments ({reason}); "
                               f"covkernels.ops.dispatch runs the reference for them")
