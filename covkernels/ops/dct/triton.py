"""Blockwise orthonormal DCT-II (convdct) in Triton: forward and inverse, coefficients in place.

One program transforms one row of ``K x K`` blocks of one plane over ``TW`` columns: it loads a
``(K, TW)`` strip, views it as ``(K, TW/K, K)`` (block rows, blocks, block columns) and applies the
separable transform ``M X M^T`` as two broadcast-multiply-reduce contractions in float32 registers.
No ``tl.dot``: K = 4 and 8 are below its minimum tile size, the flops are negligible next to the memory
traffic, and fp32 stays exact IEEE (no TF32 rounding) on every GPU and in the interpreter.
Storage may be float32, float16 or bfloat16; accumulation is float32.

Not run here (:func:`supports` says why; :mod:`covkernels.ops.dispatch` runs the reference instead and
reports it): the global DCT (``basis="dct"``, a dense matrix product per plane: a torch matmul, cuBLAS),
float64 data, and blocks above :data:`MAX_FUSED_BLOCK`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import FLOAT64, GLOBAL_DCT, alloc, block_too_large, check_op, contiguous, unsupported
from . import reference as ref

STRIP = 64  # columns per program: 16 blocks of 4, 8 of 8 or 4 of 16


@triton.jit
def load_matrix(m_ptr, K: tl.constexpr, TRANSPOSE: tl.constexpr):
    """The ``(K, K)`` float32 DCT matrix (or its transpose, for the inverse)."""
    r = tl.arange(0, K)
    if TRANSPOSE:
        return tl.load(m_ptr + r[None, :] * K + r[:, None])
    return tl.load(m_ptr + r[:, None] * K + r[None, :])


@triton.jit
def block_transform(tile, m, K: tl.constexpr, TW: tl.constexpr):
    """``M X M^T`` on every ``K x K`` block of a ``(K, TW)`` float32 strip."""
    x = tl.reshape(tile, (K, TW // K, K))
    # rows: y[u, b, j] = sum_i m[u, i] x[i, b, j]
    y = tl.sum(tl.reshape(m, (K, K, 1, 1)) * tl.reshape(x, (1, K, TW // K, K)), axis=1)
    # columns: z[u, b, v] = sum_j y[u, b, j] m[v, j]
    z = tl.sum(tl.reshape(y, (K, TW // K, 1, K)) * tl.reshape(m, (1, 1, K, K)), axis=3)
    return tl.reshape(z, (K, TW))


@triton.jit
def strip_offsets(row0, col0, W, K: tl.constexpr, TW: tl.constexpr):
    """Offsets ``row * W + col`` of a ``(K, TW)`` strip within a plane, and the column mask."""
    rows = row0 + tl.arange(0, K)
    cols = col0 + tl.arange(0, TW)
    return rows[:, None] * W + cols[None, :], (cols < W)[None, :] & (rows >= 0)[:, None]


@triton.jit
def _block_dct_kernel(x_ptr, out_ptr, m_ptr, H, W, K: tl.constexpr, TW: tl.constexpr, INVERSE: tl.constexpr):
    plane_row = tl.program_id(0)
    blocks_per_col = H // K
    plane = plane_row // blocks_per_col
    offs, mask = strip_offsets((plane_row % blocks_per_col) * K, tl.program_id(1) * TW, W, K, TW)
    base = plane.to(tl.int64) * H * W
    tile = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    z = block_transform(tile, load_matrix(m_ptr, K, INVERSE), K, TW)
    tl.store(out_ptr + base + offs, z.to(out_ptr.dtype.element_ty), mask=mask)


# Largest block the fused kernels take. Ahead-of-time builds for sm_80/sm_90 (benchmarks/triton_aot.py)
# spill at block 16 (255 registers, up to ~1.5 KB per thread in the inverse transform); larger blocks
# take the reference path (unfold + matmul), which cuBLAS runs at bandwidth for such small matrices.
MAX_FUSED_BLOCK = 8


def _strip_width(w: int, k: int) -> int:
    return max(k, min(STRIP, triton.next_power_of_2(w)))


OPS = ("analysis", "synthesis")


def _is_power_of_two(block) -> bool:
    return isinstance(block, int) and block > 0 and not block & (block - 1)


def supports(op: str, **args) -> str | None:
    """Why this backend does not run ``op`` (``analysis(x, basis, block)`` / ``synthesis(c, basis, block)``)
    on ``args``, or None when it does. A block that is not a power of two is an error here, not a reason."""
    check_op(op, OPS, __name__)
    if args["basis"] == "dct":
        return GLOBAL_DCT
    if args["basis"] != "convdct":
        return None  # identity: the data itself; an unknown basis: the op raises
    data = args["x" if op == "analysis" else "c"]
    if isinstance(data, torch.Tensor) and data.dtype == torch.float64:
        return FLOAT64
    block = args["block"]
    if _is_power_of_two(block) and block > MAX_FUSED_BLOCK:
        return block_too_large(block, MAX_FUSED_BLOCK)
    return None


def _blockwise(x: torch.Tensor, block: int, inverse: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    ref._check_image(x, "c" if inverse else "x")
    ref.check_block(x.shape, block, "c" if inverse else "x")
    if block & (block - 1):
        raise ValueError(f"the triton backend needs a power-of-two block, got block={block}")
    x = contiguous(x)
    h, w = x.shape[-2:]
    out = alloc(x.shape, x.dtype, x.device) if out is None else out
    planes = x.numel() // (h * w)
    if planes:
        tw = _strip_width(w, block)
        m = ref.dct_matrix(block, torch.float32, x.device)
        _block_dct_kernel[(planes * (h // block), triton.cdiv(w, tw))](x, out, m, h, w, K=block, TW=tw,
                                                                       INVERSE=inverse)
    return out


def block_dct2(x: torch.Tensor, block: int = 8, out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton twin of :func:`covkernels.ops.dct.reference.block_dct2`."""
    return _blockwise(x, block, False, out)


def block_idct2(c: torch.Tensor, block: int = 8, out: torch.Tensor | None = None) -> torch.Tensor:
    """Triton twin of :func:`covkernels.ops.dct.reference.block_idct2`."""
    return _blockwise(c, block, True, out)


def _other_basis(data: torch.Tensor, basis: str, op: str) -> torch.Tensor:
    """The identity is the data itself; the global DCT is not run here (see :func:`supports`)."""
    ref.check_basis(basis)
    if basis == "dct":
        raise unsupported("triton", op, GLOBAL_DCT)
    return data


def analysis(x: torch.Tensor, basis: str, block: int = 8) -> torch.Tensor:
    """``F x``: blockwise in Triton; the identity returns ``x``."""
    return block_dct2(x, block) if basis == "convdct" else _other_basis(x, basis, "analysis")


def synthesis(c: torch.Tensor, basis: str, block: int = 8) -> torch.Tensor:
    """``F^T c``: blockwise in Triton; the identity returns ``c``."""
    return block_idct2(c, block) if basis == "convdct" else _other_basis(c, basis, "synthesis")
