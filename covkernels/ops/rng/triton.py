"""Triton side of the counter-based random streams: in-register Philox draws shared by every fused kernel.

The values are those of :mod:`covkernels.ops.rng.reference` (same key, same 4-word counter, same
uint32 -> float transforms): integer words bit-exact, floats equal up to the rounding of ``log``/``cos``.
Importing this module imports Triton; :mod:`covkernels.ops.dispatch` only does so on demand.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..common import alloc, check_op, launch_grid_1d
from .reference import STREAM_NOISE


@triton.jit
def philox_words(seed, elem, sample, step, stream):
    """Philox4x32-10 words for counters ``(elem, sample, step, stream)`` (uint32 tensors of one shape)."""
    return tl.random.philox(seed, elem, sample, step, stream)


@triton.jit
def uint_to_uniform(u):
    """uint32 -> float32 in [0, 1): reinterpret as int32, fold negatives, scale by ~2**-31."""
    s = u.to(tl.int32, bitcast=True)
    s = tl.where(s < 0, -s - 1, s)
    return s.to(tl.float32) * 4.6566127342e-10


@triton.jit
def counters(elem, sample, step, stream):
    """Broadcast the scalar counter words to ``elem``'s shape, all as uint32."""
    e = elem.to(tl.uint32)
    zero = e * 0
    # `zero + s` makes a tensor of scalars that may be plain ints (interpreted loop indices)
    return e, (zero + sample).to(tl.uint32), (zero + step).to(tl.uint32), (zero + stream).to(tl.uint32)


@triton.jit
def normal(seed, elem, sample, step, stream):
    """Standard normal (float32) at the given counters: Box-Muller on words 0 and 1."""
    c0, c1, c2, c3 = counters(elem, sample, step, stream)
    w0, w1, _, _ = philox_words(seed, c0, c1, c2, c3)
    u1 = tl.maximum(uint_to_uniform(w0), 1.0e-7)
    u2 = uint_to_uniform(w1)
    return tl.sqrt(-2.0 * tl.log(u1)) * tl.cos(6.283185307179586 * u2)


@triton.jit
def rademacher(seed, elem, sample, step, stream):
    """+-1 (float32) at the given counters: the sign is the top bit of word 0."""
    c0, c1, c2, c3 = counters(elem, sample, step, stream)
    w0, _, _, _ = philox_words(seed, c0, c1, c2, c3)
    return 1.0 - 2.0 * (w0 >> 31).to(tl.float32)


@triton.jit
def _normal_kernel(out_ptr, per_sample, seed, sample_offset, step, stream, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    elem = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = elem < per_sample
    value = normal(seed, elem, sample_offset + b, step, stream)
    tl.store(out_ptr + b.to(tl.int64) * per_sample + elem, value.to(out_ptr.dtype.element_ty), mask=mask)


OPS = ("philox_normal",)


def supports(op: str, **args) -> None:
    """Every draw runs here (float32 math, cast to ``dtype`` on store, as in the reference)."""
    check_op(op, OPS, __name__)
    return None


def philox_normal(seed: int, shape, *, sample_offset: int = 0, step: int = 0, stream: int = STREAM_NOISE,
                  dtype=None, device=None):
    """Triton twin of :func:`covkernels.ops.rng.reference.philox_normal` (float32 math, cast on store)."""
    import math

    import torch

    shape = tuple(shape)
    out = alloc(shape, dtype or torch.float32, device)
    per_sample = math.prod(shape[1:])
    if out.numel():
        block = 1024
        _normal_kernel[launch_grid_1d(shape[0], per_sample, block)](out, per_sample, int(seed), sample_offset,
                                                                    step, stream, BLOCK=block)
    return out
