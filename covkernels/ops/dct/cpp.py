"""Compiled-CPU twin of :mod:`covkernels.ops.dct.reference` (``covkernels._C``, csrc/dct/).

The blockwise transform (``convdct``) is a fused strip-of-blocks kernel, any block size, float64 in
double; the identity returns its input. The global DCT (a dense matrix product per plane, MKL/OpenBLAS
through torch) is not run here: :func:`supports` says so and :mod:`covkernels.ops.dispatch` runs the
reference for it, and reports it.
"""
from __future__ import annotations

import torch

from ..._extension import cpu_operators
from ..common import GLOBAL_DCT, alloc, check_op, contiguous, unsupported
from . import reference as ref

C = cpu_operators()  # torch.ops.covkernels_cpu: the compiled kernels as stable-ABI operators (csrc/python/ops.cpp)


OPS = ("analysis", "synthesis")


def supports(op: str, **args) -> str | None:
    """Why this backend does not run ``op`` (``analysis`` / ``synthesis``) on ``args``, or None when it does."""
    check_op(op, OPS, __name__)
    return GLOBAL_DCT if args["basis"] == "dct" else None


def _blockwise(x: torch.Tensor, block: int, inverse: bool) -> torch.Tensor:
    name = "c" if inverse else "x"
    ref._check_image(x, name)
    ref.check_block(x.shape, block, name)
    x = contiguous(x)
    out = alloc(x.shape, x.dtype, x.device)
    if x.numel():
        C.block_dct2(x, out, block, inverse)
    return out


def block_dct2(x: torch.Tensor, block: int = 8) -> torch.Tensor:
    """Compiled twin of :func:`covkernels.ops.dct.reference.block_dct2`."""
    return _blockwise(x, block, False)


def block_idct2(c: torch.Tensor, block: int = 8) -> torch.Tensor:
    """Compiled twin of :func:`covkernels.ops.dct.reference.block_idct2`."""
    return _blockwise(c, block, True)


def _other_basis(data: torch.Tensor, basis: str, op: str) -> torch.Tensor:
    """The identity is the data itself; the global DCT is not run here (see :func:`supports`)."""
    ref.check_basis(basis)
    if basis == "dct":
        raise unsupported("cpp", op, GLOBAL_DCT)
    return data


def analysis(x: torch.Tensor, basis: str, block: int = 8) -> torch.Tensor:
    """``F x``: blockwise compiled; the identity returns ``x``."""
    return block_dct2(x, block) if basis == "convdct" else _other_basis(x, basis, "analysis")


def synthesis(c: torch.Tensor, basis: str, block: int = 8) -> torch.Tensor:
    """``F^T c``: blockwise compiled; the identity returns ``c``."""
    return block_idct2(c, block) if basis == "convdct" else _other_basis(c, basis, "synthesis")
