"""Orthonormal 2-D DCT-II, global and blockwise ("convdct"), in pure PyTorch.

All transforms act per channel on the last two dims of a ``(B, C, H, W)`` tensor (any leading dims work)
and keep the layout: the blockwise transform replaces each ``k x k`` block by its DCT coefficients in
place (JPEG layout), so a coefficient tensor has the shape of the image and element offsets are shared
by every backend (the random streams index coefficients by that offset).

The transforms are orthonormal, so the inverse is the transpose: ``inverse(forward(x)) == x`` and
``<forward(x), forward(y)> == <x, y>``. Any dtype works; float64 is the test oracle.
"""
from __future__ import annotations

import functools
import math

import torch

from ..common import check_op


@functools.lru_cache(maxsize=64)
def _dct_matrix_f64(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    m = torch.cos(math.pi * (2.0 * i + 1.0) * k / (2.0 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


def dct_matrix(n: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``M`` of size ``(n, n)``: ``coeffs = M @ signal``, ``M @ M.T == I``."""
    if n < 1:
        raise ValueError(f"DCT size must be >= 1, got {n}")
    m = _dct_matrix_f64(int(n))
    out = m.to(dtype=dtype, device=device)
    return out.clone() if out is m else out  # never hand out the cached tensor itself


def _check_image(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{name} must have at least 2 dims (..., H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def _matrix_for(x: torch.Tensor, n: int) -> torch.Tensor:
    # Half-precision inputs are transformed in float32 (accumulation precision of the fused kernels).
    work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    return dct_matrix(n, dtype=work, device=x.device)


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Global orthonormal DCT-II over the last two dims. ``(..., H, W) -> (..., H, W)``."""
    _check_image(x)
    mh, mw = _matrix_for(x, x.shape[-2]), _matrix_for(x, x.shape[-1])
    return (mh @ x.to(mh.dtype) @ mw.T).to(x.dtype)


def idct2(c: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dct2` (its transpose). ``(..., H, W) -> (..., H, W)``."""
    _check_image(c, "c")
    mh, mw = _matrix_for(c, c.shape[-2]), _matrix_for(c, c.shape[-1])
    return (mh.T @ c.to(mh.dtype) @ mw).to(c.dtype)


def check_block(shape, block: int, name: str = "x") -> None:
    """Raise a ValueError unless ``block`` is a positive int that tiles the last two dims of ``shape``."""
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    h, w = shape[-2], shape[-1]
    if h % block or w % block:
        raise ValueError(f"block={block} does not tile {name} of spatial size {h}x{w}: H and W must be "
                         f"multiples of the block (pad or crop the image, or choose another block)")


def _blockwise(x: torch.Tensor, block: int, inverse: bool) -> torch.Tensor:
    _check_image(x, "c" if inverse else "x")
    check_block(x.shape, block, "c" if inverse else "x")
    m = _matrix_for(x, block)
    if inverse:
        m = m.T
    *lead, h, w = x.shape
    # (..., H/k, k, W/k, k): rows of every block on dim -3, columns on dim -1.
    t = x.to(m.dtype).reshape(*lead, h // block, block, w // block, block)
    t = torch.einsum("ai,...ibj->...abj", m, t)
    t = torch.einsum("...ibj,cj->...ibc", t, m)
    return t.reshape(*lead, h, w).to(x.dtype)


def block_dct2(x: torch.Tensor, block: int = 8) -> torch.Tensor:
    """Blockwise orthonormal DCT-II on non-overlapping ``block x block`` tiles, coefficients in place."""
    return _blockwise(x, block, inverse=False)


def block_idct2(c: torch.Tensor, block: int = 8) -> torch.Tensor:
    """Inverse of :func:`block_dct2`."""
    return _blockwise(c, block, inverse=True)


BASES = ("identity", "dct", "convdct")


def check_basis(basis: str) -> None:
    if basis not in BASES:
        raise ValueError(f"basis must be one of {BASES}, got {basis!r}")


def analysis(x: torch.Tensor, basis: str, block: int = 8) -> torch.Tensor:
    """``F x`` for a basis name in :data:`BASES` (``block`` is used by ``convdct`` only)."""
    if basis == "identity":
        return x
    if basis == "dct":
        return dct2(x)
    check_basis(basis)
    return block_dct2(x, block)


def synthesis(c: torch.Tensor, basis: str, block: int = 8) -> torch.Tensor:
    """``F^T c``, the inverse of :func:`analysis`."""
    if basis == "identity":
        return c
    if basis == "dct":
        return idct2(c)
    check_basis(basis)
    return block_idct2(c, block)


OPS = ("analysis", "synthesis")


def supports(op: str, **args) -> None:
    """The reference runs every op on every valid argument (``ops/common.py``: what ``supports`` answers)."""
    check_op(op, OPS, __name__)
    return None


# The overlapping ConvDCT ("convdct" with stride < block) is a frame, not a basis: the block DCT of every one
# of the r^2 shifts (dy, dx) in {0, stride, ..., block - stride}^2, r = block / stride, stacked. Each shift
# is orthonormal, so the stack A has A^T A = r^2 I; dividing by r makes it Parseval (A_p^T A_p = I), and
# then noise synthesised with unit coefficient variance has exactly identity covariance. Shifts are
# circular (torch.roll), so every pixel is covered by r^2 tiles also at the border. Composed from the
# blockwise transform: a backend passes its own fused one, so no new kernel is needed.


def check_stride(shape, block: int, stride: int) -> None:
    """Raise a ValueError unless ``stride`` is a positive int dividing ``block`` and ``block`` tiles the
    last two dims of ``shape``."""
    check_block(shape, block)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1 or block % stride:
        raise ValueError(f"stride must be a positive int dividing block={block}, got {stride!r}")


def frame_shifts(block: int, stride: int) -> list[tuple[int, int]]:
    """The ``(block // stride)^2`` tile offsets ``(dy, dx)`` of the overlapping frame, row-major."""
    offsets = range(0, block, stride)
    return [(dy, dx) for dy in offsets for dx in offsets]


def overlap_analysis(x: torch.Tensor, block: int, stride: int, transform=block_dct2) -> torch.Tensor:
    """Parseval frame coefficients ``A_p x``: ``(..., H, W) -> (..., R, H, W)``, ``R = (block/stride)^2``,
    shift ``j`` of :func:`frame_shifts` on dim -3 (each in the JPEG layout of :func:`block_dct2`).
    ``transform(x, block)``: the blockwise DCT to use (a backend's fused one)."""
    _check_image(x)
    check_stride(x.shape, block, stride)
    r = block // stride
    return torch.stack([transform(torch.roll(x, (-dy, -dx), dims=(-2, -1)), block)
                        for dy, dx in frame_shifts(block, stride)], dim=-3) / r


def overlap_synthesis(c: torch.Tensor, block: int, stride: int, transform=block_idct2) -> torch.Tensor:
    """``A_p^T c``, the adjoint of :func:`overlap_analysis` (its left inverse): ``(..., R, H, W) -> (..., H, W)``."""
    _check_image(c, "c")
    check_stride(c.shape, block, stride)
    shifts = frame_shifts(block, stride)
    if c.dim() < 3 or c.shape[-3] != len(shifts):
        raise ValueError(f"c must have shape (..., {len(shifts)}, H, W) for block={block}, stride={stride}, "
                         f"got {tuple(c.shape)}")
    out = sum(torch.roll(transform(c[..., j, :, :], block), (dy, dx), dims=(-2, -1))
              for j, (dy, dx) in enumerate(shifts))
    return out / (block // stride)
