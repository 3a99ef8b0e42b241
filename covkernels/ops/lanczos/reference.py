"""Lanczos Gaussian sampling pieces (DESIGN.md 1b), pure PyTorch, batched per sample.

The loop itself (which calls the model for ``J q_j``) lives in ``covkernels.steps``; the ops here never
call the model:

* :func:`lanczos_update` - one Lanczos iteration given ``J q_j``, on a preallocated ``(k, B, ...)`` basis;
* :func:`tridiagonal_sqrt_e1` - ``g = f(T_S) e_1`` with ``f = sqrt`` for the shifted k x k tridiagonal;
* :func:`lanczos_synthesis` - ``x_s = m + ||xi|| Q_k g`` (with the DDIM mean m).

Vectors are ``(B, ...)``; per-sample reductions are over all non-batch dims, accumulated in float32 at
least; ``alpha``/``beta`` are ``(B,)`` per iteration and ``(B, k)`` / ``(B, k-1)`` stacked.
"""
from __future__ import annotations

import torch

from ..noise.reference import ddim_mean, work_dtype


def batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product over all non-batch dims. ``(B, ...) x (B, ...) -> (B,)``."""
    wd = work_dtype(a.dtype)
    return (a.to(wd) * b.to(wd)).flatten(1).sum(dim=1)


def _bcast(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return s.view(-1, *([1] * (like.dim() - 1)))


def breakdown_tolerance(dtype: torch.dtype) -> float:
    """Relative size of the residual below which the Krylov space counts as invariant (beta := 0)."""
    return 100.0 * torch.finfo(work_dtype(dtype)).eps


def lanczos_update(aq: torch.Tensor, basis: torch.Tensor, j: int, beta_prev: torch.Tensor | None, *,
                   reorthogonalize: bool = True):
    """One Lanczos iteration; writes ``q_{j+1}`` into ``basis[j + 1]`` (when that row exists).

    ``aq``: ``J q_j`` ``(B, ...)``; ``basis``: ``(k, B, ...)`` float32 (float64 for float64 runs) whose rows
    ``0..j`` hold ``q_1..q_{j+1}`` (orthonormal, zero after a breakdown); ``beta_prev``: ``beta_{j-1}``
    ``(B,)`` or None for ``j = 0``. Returns ``(alpha_j, beta_j)``, both ``(B,)``. Where the residual is at
    rounding level (the Krylov space is invariant, e.g. J = 0) ``beta_j = 0`` and ``q_{j+1} = 0``, so later
    iterations of that sample are exact no-ops and its T stays block diagonal.
    """
    wd = basis.dtype
    q = basis[j]
    w = aq.to(wd)
    scale = w.flatten(1).norm(dim=1)
    if beta_prev is not None and j > 0:
        w = w - _bcast(beta_prev.to(wd), w) * basis[j - 1]
    alpha = batch_dot(q, w)
    w = w - _bcast(alpha, w) * q
    if reorthogonalize:
        # One classical Gram-Schmidt pass against all previous vectors (k <= 8: cheap); it restores the
        # orthogonality that rounding and approximate (finite-difference) JVPs destroy.
        for i in range(j + 1):
            w = w - _bcast(batch_dot(basis[i], w), w) * basis[i]
    beta = w.flatten(1).norm(dim=1)
    tiny = torch.finfo(wd).tiny
    alive = beta > breakdown_tolerance(aq.dtype) * scale + tiny
    beta = torch.where(alive, beta, torch.zeros_like(beta))
    if j + 1 < basis.shape[0]:
        q_next = w / _bcast(torch.where(alive, beta, torch.ones_like(beta)), w)
        basis[j + 1] = q_next * _bcast(alive.to(wd), w)
    return alpha, beta


def tridiagonal(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Dense symmetric tridiagonal ``(B, k, k)`` from ``alpha (B, k)`` and ``beta (B, k-1)``."""
    t = torch.diag_embed(alpha)
    if beta.shape[-1] > 0:
        t = t + torch.diag_embed(beta, offset=1) + torch.diag_embed(beta, offset=-1)
    return t


def tridiagonal_sqrt_e1(alpha: torch.Tensor, beta: torch.Tensor, *, shift: float, scale: float,
                        c_max: float | None = None) -> torch.Tensor:
    """``g = sqrt(shift I + scale^2 T_J) e_1`` for the Lanczos tridiagonal ``T_J`` of ``J``.

    ``alpha (B, k)``, ``beta (B, k-1)`` -> ``g (B, k)``. Ritz values of ``T_J`` are clamped to
    ``[0, c_max]`` before the shift (indefinite or non-symmetric J must not give imaginary noise). The
    k x k eigendecomposition runs batched in float64 (negligible cost, robust for clustered spectra).
    """
    t = tridiagonal(alpha.to(torch.float64), beta.to(torch.float64))
    ritz, vecs = torch.linalg.eigh(t)
    ritz = ritz.clamp(min=0.0, max=c_max)
    root = torch.sqrt(shift + scale ** 2 * ritz)
    g = (vecs * root.unsqueeze(-2)) @ vecs[..., 0, :].unsqueeze(-1)
    return g.squeeze(-1).to(alpha.dtype)


def lanczos_synthesis(denoised: torch.Tensor, x_t: torch.Tensor, basis: torch.Tensor, g: torch.Tensor,
                      xi_norm: torch.Tensor, *, sigma_t: float, sigma_down: float) -> torch.Tensor:
    """``x_s = m + ||xi|| * sum_j g_j q_j`` with the DDIM mean ``m = D + (sigma_down/sigma_t)(x_t - D)``.

    ``denoised``, ``x_t`` ``(B, ...)``; ``basis`` ``(k, B, ...)`` of which the first ``k' = g.shape[1]``
    rows are used; ``g (B, k')``; ``xi_norm (B,)``. Returns the dtype of ``x_t``.
    """
    wd = work_dtype(x_t.dtype)
    out = ddim_mean(denoised, x_t, sigma_t, sigma_down)
    coef = g.to(wd) * xi_norm.to(wd).unsqueeze(-1)
    for j in range(g.shape[1]):
        out = out + _bcast(coef[:, j], out) * basis[j].to(wd)
    return out.to(x_t.dtype)
