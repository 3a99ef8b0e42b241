"""Compiled-CPU twin of :mod:`covkernels.ops.lanczos.reference` (``covkernels._C``, csrc/lanczos/).

One iteration is at most four fused passes over each sample (dots; residual with the second sweep's
projections; second residual with the norm; normalisation); partial sums are reduced in a fixed order, so
results repeat bit for bit whatever the thread count. The k x k eigendecomposition stays in torch. Not run
here (:func:`supports`; :mod:`covkernels.ops.dispatch` runs the reference and reports it): a synthesis whose
inputs have different dtypes (the kernel reads one storage dtype; the reference converts each input).
"""
from __future__ import annotations

import torch

from ..._extension import cpu_operators
from ..common import alloc, check_op, contiguous, mixed_dtypes
from ..noise.reference import work_dtype
from . import reference as ref

C = cpu_operators()  # torch.ops.covkernels_cpu: the compiled kernels as stable-ABI operators (csrc/python/ops.cpp)

krylov_sqrt_e1 = ref.krylov_sqrt_e1  # a batched k x k eigh: torch's on every backend (this backend's own op)

OPS = ("lanczos_update", "krylov_sqrt_e1", "lanczos_synthesis")


def supports(op: str, **args) -> str | None:
    """Why this backend does not run ``op`` on ``args`` (the reference's argument names), or None when it does."""
    check_op(op, OPS, __name__)
    if op == "lanczos_synthesis" and args["denoised"].dtype != args["x_t"].dtype:
        return mixed_dtypes(args["denoised"], args["x_t"])
    return None


def lanczos_update(aq: torch.Tensor, basis: torch.Tensor, j: int, *, reorthogonalize: bool = True):
    """Compiled twin of :func:`covkernels.ops.lanczos.reference.lanczos_update`."""
    if not basis.is_contiguous():
        raise ValueError("basis must be a contiguous (k, B, ...) tensor")
    tol = ref.breakdown_tolerance(aq.dtype)
    h, beta = C.lanczos_update(contiguous(aq.to(basis.dtype)), basis, j, bool(reorthogonalize), tol,
                                torch.finfo(basis.dtype).tiny)
    return h, beta


def lanczos_synthesis(denoised, x_t, basis, g, xi_norm, *, sigma_t, sigma_down):
    """Compiled twin of :func:`covkernels.ops.lanczos.reference.lanczos_synthesis` (one pass)."""
    wd = work_dtype(x_t.dtype)
    x, d = contiguous(x_t), contiguous(denoised)
    coef = contiguous(g.to(wd) * xi_norm.to(wd).unsqueeze(-1))
    out = alloc(x.shape, x.dtype, x.device)
    C.lanczos_synthesis(d, x, contiguous(basis.to(wd)), coef, out, sigma_down / sigma_t)
    return out
