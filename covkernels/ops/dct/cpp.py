"""Compiled-CPU twin of :mod:`covkernels.ops.dct.reference` (``covkernels._C``, csrc/dct/).

The blockwise transform (``convdct``) is a fused strip-of-blocks kernel, any block size, float64 in
double. The identity is a no-op and the global DCT a dense matrix product per plane (MKL/OpenBLAS through
torch), both as in the reference.
"""
from __future__ import annotations

import torch

from ... import _C  # noqa: F401  (loading it registers torch.ops.covkernels_cpu)
from ..common import alloc, contiguous
from . import reference as ref

C = torch.ops.covkernels_cpu  # the compiled kernels as stable-ABI operators (csrc/python/ops.cpp)


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


def analysis(x: torch.Tensor, basis: str, block: int = 8) -> torch.Tensor:
    """``F x``: blockwise compiled; identity and global DCT as in the reference."""
    return block_dct2(x, block) if basis == "convdct" else ref.analysis(x, basis, block)


def synthesis(c: torch.Tensor, basis: str, block: int = 8) -> torch.Tensor:
    """``F^T c``: blockwise compiled; identity and global DCT as in the reference."""
    return block_idct2(c, block) if basis == "convdct" else ref.synthesis(c, basis, block)
