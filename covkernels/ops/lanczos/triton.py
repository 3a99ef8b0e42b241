"""Lanczos vector updates and the final synthesis in Triton, per-sample reductions in float32.

One iteration (``J q_j`` given) is three passes over a sample's ``N = C H W`` elements (five with
reorthogonalisation, whose second Gram-Schmidt sweep repeats passes 1 and 2 on ``w``):

1. dots: ``h_i = <q_i, J q_j>`` for the rows the update needs (all ``i <= j`` with reorthogonalisation,
   else ``j - 1, j``) and ``|J q_j|^2`` (the breakdown scale), as per-program partial sums;
2. residual: ``w = J q_j - sum_i coef_i q_i`` written into ``basis[j + 1]``, with partial ``|w|^2``;
3. normalise ``basis[j + 1]`` by ``beta_j`` (zero where the Krylov space is invariant).

Partial sums go to a ``(B, programs, ...)`` buffer reduced by torch, not by atomics, so results are
bitwise reproducible. The algorithm is the reference's: one classical Gram-Schmidt sweep with the dots.
The synthesis ``x_s = m + |xi| sum_j g_j q_j`` with the DDIM mean is one pass. float64 runs are not run
here (:func:`supports`; :mod:`covkernels.ops.dispatch` runs the reference and reports it). The batched
``k x k`` eigendecomposition (:data:`krylov_sqrt_e1`) is torch's on every backend: nothing to fuse.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import FLOAT64, alloc, check_op, contiguous
from . import reference as ref

CHUNK = 1024

OPS = ("lanczos_update", "krylov_sqrt_e1", "lanczos_synthesis")


def supports(op: str, **args) -> str | None:
    """Why this backend does not run ``op`` on ``args`` (the reference's argument names), or None when it
    does: the kernels accumulate in float32, so float64 runs are the reference's."""
    check_op(op, OPS, __name__)
    data = {"lanczos_update": "basis", "lanczos_synthesis": "x_t"}.get(op)
    return FLOAT64 if data is not None and args[data].dtype == torch.float64 else None


@triton.jit
def _chunk(N, CHUNK: tl.constexpr):
    """This program's sample index, element offsets and mask, and the sample's base offset."""
    b = tl.program_id(0)
    offs = tl.program_id(1) * CHUNK + tl.arange(0, CHUNK)
    return b, offs, offs < N, b.to(tl.int64) * N


@triton.jit
def _dots_kernel(aq_ptr, basis_ptr, part_ptr, N, row_stride, first, NPART, rows: tl.constexpr, CHUNK: tl.constexpr):
    b, offs, mask, sample = _chunk(N, CHUNK)
    chunk = tl.program_id(1)
    aq = tl.load(aq_ptr + sample + offs, mask=mask, other=0.0).to(tl.float32)
    out = part_ptr + (b * NPART + chunk) * (rows + 1)
    tl.store(out + rows, tl.sum(aq * aq, axis=0))
    for i in tl.static_range(rows):
        q = tl.load(basis_ptr + (first + i) * row_stride + sample + offs, mask=mask, other=0.0)
        tl.store(out + i, tl.sum(q.to(tl.float32) * aq, axis=0))


@triton.jit
def _residual_kernel(aq_ptr, basis_ptr, coef_ptr, w_ptr, part_ptr, N, row_stride, first, NPART,
                     rows: tl.constexpr, CHUNK: tl.constexpr):
    b, offs, mask, sample = _chunk(N, CHUNK)
    chunk = tl.program_id(1)
    w = tl.load(aq_ptr + sample + offs, mask=mask, other=0.0).to(tl.float32)
    for i in tl.static_range(rows):
        q = tl.load(basis_ptr + (first + i) * row_stride + sample + offs, mask=mask, other=0.0).to(tl.float32)
        w -= tl.load(coef_ptr + b * rows + i) * q
    tl.store(w_ptr + sample + offs, w.to(w_ptr.dtype.element_ty), mask=mask)
    tl.store(part_ptr + b * NPART + chunk, tl.sum(w * w, axis=0))


@triton.jit
def _scale_kernel(w_ptr, scale_ptr, N, CHUNK: tl.constexpr):
    b, offs, mask, sample = _chunk(N, CHUNK)
    ptr = w_ptr + sample + offs
    w = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptr, (w * tl.load(scale_ptr + b)).to(w_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _synthesis_kernel(d_ptr, x_ptr, basis_ptr, coef_ptr, out_ptr, N, row_stride, r, rows: tl.constexpr,
                      CHUNK: tl.constexpr):
    b, offs, mask, sample = _chunk(N, CHUNK)
    d = tl.load(d_ptr + sample + offs, mask=mask, other=0.0).to(tl.float32)
    xt = tl.load(x_ptr + sample + offs, mask=mask, other=0.0).to(tl.float32)
    acc = d + r * (xt - d)
    for j in tl.static_range(rows):
        q = tl.load(basis_ptr + j * row_stride + sample + offs, mask=mask, other=0.0).to(tl.float32)
        acc += tl.load(coef_ptr + b * rows + j) * q
    tl.store(out_ptr + sample + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _geometry(aq: torch.Tensor, basis: torch.Tensor):
    if not basis.is_contiguous():
        raise ValueError("basis must be a contiguous (k, B, ...) tensor")
    b = aq.shape[0]
    n = aq.numel() // b if b else 0
    return b, n, triton.cdiv(max(n, 1), CHUNK)


def lanczos_update(aq, basis, j, *, reorthogonalize=True):
    """Triton twin of :func:`covkernels.ops.lanczos.reference.lanczos_update` (three passes)."""
    aq = contiguous(aq)
    b, n, parts = _geometry(aq, basis)
    first, rows = ref.update_rows(j, reorthogonalize)
    partials = alloc((b, parts, rows + 1), torch.float32, aq.device)
    _dots_kernel[(b, parts)](aq, basis, partials, n, b * n, first, parts, rows=rows, CHUNK=CHUNK)
    sums = partials.sum(1)
    coef, scale = sums[:, :rows].contiguous(), sums[:, rows].sqrt()
    h = torch.zeros(b, j + 1, dtype=torch.float32, device=aq.device)
    h[:, first:first + rows] = coef
    # The residual goes straight into the row of q_{j+1}; on the last iteration (no such row) only its
    # norm is wanted and a scratch buffer takes it.
    w = basis[j + 1] if j + 1 < basis.shape[0] else alloc(basis.shape[1:], basis.dtype, basis.device)
    wparts = alloc((b, parts), torch.float32, aq.device)
    _residual_kernel[(b, parts)](aq, basis, coef, w, wparts, n, b * n, first, parts, rows=rows, CHUNK=CHUNK)
    if reorthogonalize:  # second Gram-Schmidt sweep ("twice is enough"), in place on w
        _dots_kernel[(b, parts)](w, basis, partials, n, b * n, first, parts, rows=rows, CHUNK=CHUNK)
        coef2 = partials.sum(1)[:, :rows].contiguous()
        _residual_kernel[(b, parts)](w, basis, coef2, w, wparts, n, b * n, first, parts, rows=rows, CHUNK=CHUNK)
        h[:, first:first + rows] += coef2
    beta = wparts.sum(1).sqrt()
    alive = beta > ref.breakdown_tolerance(aq.dtype) * scale + torch.finfo(torch.float32).tiny
    beta = torch.where(alive, beta, torch.zeros_like(beta))
    inv = torch.where(alive, 1.0 / torch.where(alive, beta, torch.ones_like(beta)), torch.zeros_like(beta))
    _scale_kernel[(b, parts)](w, inv.contiguous(), n, CHUNK=CHUNK)
    return h, beta


def lanczos_synthesis(denoised, x_t, basis, g, xi_norm, *, sigma_t, sigma_down, out=None):
    """Triton twin of :func:`covkernels.ops.lanczos.reference.lanczos_synthesis` (one pass)."""
    d, x = contiguous(denoised), contiguous(x_t)
    b, n, parts = _geometry(x, basis)
    out = alloc(x.shape, x.dtype, x.device) if out is None else out
    coef = (g.to(torch.float32) * xi_norm.to(torch.float32).unsqueeze(-1)).contiguous()
    if b and n:
        _synthesis_kernel[(b, parts)](d, x, basis, coef, out, n, b * n, sigma_down / sigma_t, rows=g.shape[1],
                                      CHUNK=CHUNK)
    return out


krylov_sqrt_e1 = ref.krylov_sqrt_e1  # a batched k x k eigh: torch's on every backend (this backend's own op)
