"""Compiled-CPU twin of :mod:`covkernels.ops.rng.reference` (``covkernels._C``, csrc/rng/).

The same Philox4x32-10 counters and float transforms (csrc/include/covkernels/philox.h): integer words
bit-exact, floats equal up to the rounding of ``log``/``cos``. Importing this module imports the extension;
:mod:`covkernels.ops.dispatch` does so on demand and reports why it failed.
"""
from __future__ import annotations

import math

import torch

from ..._extension import cpu_operators
from ..common import alloc, check_op
from .reference import STREAM_NOISE, check_counter_range

C = cpu_operators()  # torch.ops.covkernels_cpu: the compiled kernels as stable-ABI operators (csrc/python/ops.cpp)

SEED_MASK = 0xFFFFFFFFFFFFFFFF


def signed_seed(seed: int) -> int:
    """The 64-bit key as the operators' (signed) ``int``: the same 64 bits, read back as uint64 in C++."""
    s = int(seed) & SEED_MASK
    return s - (1 << 64) if s >= (1 << 63) else s


OPS = ("philox_normal",)


def supports(op: str, **args) -> None:
    """Every draw runs here (float32 math, cast to ``dtype`` on store, as in the reference)."""
    check_op(op, OPS, __name__)
    return None


def philox_normal(seed: int, shape, *, sample_offset: int = 0, step: int = 0, stream: int = STREAM_NOISE,
                  dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Compiled twin of :func:`covkernels.ops.rng.reference.philox_normal` (float32 math, cast on store)."""
    shape = tuple(shape)
    check_counter_range(shape, sample_offset)
    out = alloc(shape, dtype or torch.float32, device or "cpu")
    if math.prod(shape):
        C.philox_normal(out, signed_seed(seed), sample_offset, step, stream)
    return out
