"""Counter-based random streams (Philox4x32-10) in pure PyTorch.

Every random number covkernels draws is a pure function of a 64-bit key (the run seed, drawn once from
the caller's ``torch.Generator``) and a 128-bit counter::

    counter = (element index within the sample, global sample index, step index, stream id)

so that

* the noise of one sample never depends on the batch size or on its position in the batch (sharded
  generation reproduces single-process generation when each shard passes its ``sample_offset``);
* a fused kernel can regenerate any value in-register from (seed, counter) without storing it, and this
  reference reproduces those values exactly (the integer stream is bit-exact; the float transforms
  below are the ones the Triton kernels use, so floats agree up to rounding of ``log``/``cos``).

Philox4x32-10 is the standard counter-based generator of Salmon et al. (SC'11), the same one Triton's
``tl.randint4x`` uses. uint32 words live in int64 tensors (torch has no uint32 arithmetic).
"""
from __future__ import annotations

import math

import torch

from ..common import check_op

_MASK32 = 0xFFFFFFFF
_MUL_A = 0xD2511F53  # multiplier of counter word 0
_MUL_B = 0xCD9E8D57  # multiplier of counter word 2
_KEY_A = 0x9E3779B9  # Weyl increments of the key (golden ratio, sqrt(3) - 1)
_KEY_B = 0xBB67AE85
ROUNDS = 10

# Stream ids (counter word 3). A probe index p uses STREAM_PROBE + p.
STREAM_INIT = 0  # initial noise x_T of covkernels.sample
STREAM_NOISE = 1  # the per-step Gaussian noise xi
STREAM_CHURN = 2  # Karras churn noise of ddim/heun
STREAM_PROBE = 16  # Hutchinson probes (16, 17, ...)

# Triton's uint32 -> [0, 1) conversion constant (~2**-31); kept identical so kernels match.
_UNIFORM_SCALE = 4.6566127342e-10


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of ``a * m`` for uint32 values held in int64.

    The exact product is < 2**64; int64 multiplication wraps modulo 2**64 (two's complement, on every
    device torch supports), so the low 64 bits are exact and both 32-bit words can be masked out (an
    arithmetic shift of a wrapped negative value differs from the unsigned one only above bit 31).
    """
    p = a * m
    return (p >> 32) & _MASK32, p & _MASK32


def philox4x32(counter: tuple[torch.Tensor, ...], key: tuple[int, int], rounds: int = ROUNDS):
    """Philox4x32 on int64 tensors holding uint32 words. Returns the four output words."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) & _MASK32 for c in counter)
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    k0, k1 = key[0] & _MASK32, key[1] & _MASK32
    for _ in range(rounds):
        hi_b, lo_b = _mulhilo(c2, _MUL_B)
        hi_a, lo_a = _mulhilo(c0, _MUL_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def uint_to_uniform(u: torch.Tensor) -> torch.Tensor:
    """uint32 words (int64 tensor) -> float32 in [0, 1), as Triton's ``uint_to_uniform_float``."""
    s = torch.where(u >= 2**31, u - 2**32, u)  # reinterpret as int32
    s = torch.where(s < 0, -s - 1, s)
    return s.to(torch.float32) * _UNIFORM_SCALE


def _key(seed: int) -> tuple[int, int]:
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return seed & _MASK32, seed >> 32


def check_counter_range(shape: tuple, sample_offset: int) -> None:
    """Raise a ValueError unless every counter of a ``shape = (B, ...)`` draw fits its 32-bit word."""
    if len(shape) < 1:
        raise ValueError(f"shape must have a batch dimension, got {shape}")
    if math.prod(shape[1:]) >= 2 ** 32 or sample_offset + shape[0] >= 2 ** 32:
        raise ValueError("sample size and sample index must stay below 2**32 (the counter word range)")


def _generate(seed: int, shape, sample_offset: int, step: int, stream: int, device, transform) -> torch.Tensor:
    """float32 tensor of ``shape = (B, ...)``: ``transform(philox words)`` at counters
    ``(flat index within the sample, sample_offset + b, step, stream)``."""
    shape = tuple(shape)
    check_counter_range(shape, sample_offset)
    per_sample, total = math.prod(shape[1:]), math.prod(shape)
    device = torch.device("cpu") if device is None else torch.device(device)
    out = torch.empty(total, dtype=torch.float32, device=device)
    # On the CPU, chunks of 64K elements keep the ~10 live int64 temporaries in cache (about 4x faster
    # than one pass); on a GPU one pass is best.
    chunk = total if device.type != "cpu" else 1 << 16
    key = _key(seed)
    for begin in range(0, total, chunk):
        idx = torch.arange(begin, min(total, begin + chunk), dtype=torch.int64, device=device)
        counter = (idx % per_sample, idx // per_sample + sample_offset, torch.full_like(idx, step),
                   torch.full_like(idx, stream))
        out[begin:begin + idx.numel()] = transform(philox4x32(counter, key))
    return out.view(shape)


def _box_muller(words) -> torch.Tensor:
    u1 = uint_to_uniform(words[0]).clamp_min(1.0e-7)
    u2 = uint_to_uniform(words[1])
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)


def _sign(words) -> torch.Tensor:
    return (1 - 2 * (words[0] >> 31)).to(torch.float32)


def philox_normal(seed: int, shape, *, sample_offset: int = 0, step: int = 0, stream: int = STREAM_NOISE,
                  dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Standard normal tensor of ``shape = (B, ...)``: Box-Muller on words 0 and 1 of each counter.

    Computed in float32 (the kernels' precision) and cast to ``dtype``.
    """
    return _generate(seed, shape, sample_offset, step, stream, device, _box_muller).to(dtype)


def philox_rademacher(seed: int, shape, *, sample_offset: int = 0, step: int = 0, stream: int = STREAM_PROBE,
                      dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Rademacher (+-1) tensor of ``shape = (B, ...)``: the sign is the top bit of word 0."""
    return _generate(seed, shape, sample_offset, step, stream, device, _sign).to(dtype)


OPS = ("philox_normal",)


def supports(op: str, **args) -> None:
    """The reference runs every op on every valid argument (``ops/common.py``: what ``supports`` answers)."""
    check_op(op, OPS, __name__)
    return None
