"""Lanczos Gaussian sampling pieces (docs/design.md, "Lanczos Gaussian sampler"), pure PyTorch, batched per sample.

The loop itself (which calls the model for ``J q_j``) lives in ``covkernels.steps``; the ops here never
call the model:

* :func:`lanczos_update` - one Lanczos iteration given ``J q_j``, on a preallocated ``(k, B, ...)`` basis;
* :func:`krylov_sqrt_e1` - ``g = f(T_S) e_1``, ``f = sqrt``, for the shifted k x k projected operator;
* :func:`lanczos_synthesis` - ``x_s = m + ||xi|| Q_k g`` (with the DDIM mean m).

Vectors are ``(B, ...)``; per-sample reductions are over all non-batch dims, accumulated in float32 at
least; per iteration ``h (B, j+1)`` (projections on the basis) and ``beta (B,)``.
"""
from __future__ import annotations

import torch

from ..common import check_op
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


def update_rows(j: int, reorthogonalize: bool) -> tuple[int, int]:
    """``(first, count)``: the basis rows ``q_i`` an iteration orthogonalises ``J q_j`` against."""
    return (0, j + 1) if reorthogonalize else (max(j - 1, 0), min(j, 1) + 1)


def lanczos_update(aq: torch.Tensor, basis: torch.Tensor, j: int, *, reorthogonalize: bool = True):
    """One Lanczos iteration; writes ``q_{j+1}`` into ``basis[j + 1]`` (when that row exists).

    ``aq``: ``J q_j`` ``(B, ...)``; ``basis``: ``(k, B, ...)`` float32 (float64 for float64 runs) whose rows
    ``0..j`` hold ``q_1..q_{j+1}`` (orthonormal, zero after a breakdown). The residual
    ``w = J q_j - sum_i h_i q_i`` with ``h_i = <q_i, J q_j>`` is taken against every previous row
    (``reorthogonalize``: two classical Gram-Schmidt sweeps, the three-term recurrence plus the correction
    rounding and approximate JVPs need) or against ``q_{j-1}, q_j`` only (plain Lanczos).
    Returns ``(h, beta)``: ``h (B, j+1)`` (zero for rows not used) and ``beta = |w| (B,)``. Where the
    residual is at rounding level (the Krylov space is invariant, e.g. J = 0) ``beta = 0`` and
    ``q_{j+1} = 0``, so later iterations of that sample are exact no-ops.
    """
    wd = basis.dtype
    w = aq.to(wd)
    first, count = update_rows(j, reorthogonalize)
    h = torch.zeros(w.shape[0], j + 1, dtype=wd, device=w.device)
    for i in range(first, first + count):
        h[:, i] = batch_dot(basis[i], w)
    scale = w.flatten(1).norm(dim=1)
    for i in range(first, first + count):
        w = w - _bcast(h[:, i], w) * basis[i]
    if reorthogonalize:
        # "Twice is enough": one classical Gram-Schmidt sweep loses orthogonality to cancellation when
        # the residual is small next to J q_j (nearly invariant Krylov spaces, J ~ I at low sigma); a
        # second sweep restores it, and its projections belong to h too.
        h2 = torch.stack([batch_dot(basis[i], w) for i in range(first, first + count)], dim=1)
        for i in range(first, first + count):
            w = w - _bcast(h2[:, i - first], w) * basis[i]
        h[:, first:first + count] += h2
    beta = w.flatten(1).norm(dim=1)
    alive = beta > breakdown_tolerance(aq.dtype) * scale + torch.finfo(wd).tiny
    beta = torch.where(alive, beta, torch.zeros_like(beta))
    if j + 1 < basis.shape[0]:
        inv = torch.where(alive, 1.0 / torch.where(alive, beta, torch.ones_like(beta)), torch.zeros_like(beta))
        basis[j + 1] = w * _bcast(inv, w)
    return h, beta


def krylov_matrix(hs: list[torch.Tensor], betas: list[torch.Tensor]) -> torch.Tensor:
    """Symmetric part of the projected operator, ``sym(Q^T J Q)`` ``(B, k, k)`` (float64).

    ``M = Q^T J Q`` is upper Hessenberg: column ``j`` holds ``h_j`` above the diagonal and ``beta_j`` just
    below. For a symmetric J, ``sym(M)`` is the Lanczos tridiagonal; for the non-symmetric Jacobians of
    trained networks it is the projection of ``sym(J)`` (docs/design.md, section 2: the covariance uses the symmetric
    part of J), where ``beta`` alone would absorb the antisymmetric part.
    """
    k, b = len(hs), hs[0].shape[0]
    m = torch.zeros(b, k, k, dtype=torch.float64, device=hs[0].device)
    for j, h in enumerate(hs):
        m[:, :j + 1, j] = h.to(torch.float64)
        if j + 1 < k:
            m[:, j + 1, j] = betas[j].to(torch.float64)
    return 0.5 * (m + m.transpose(1, 2))


def krylov_sqrt_e1(hs: list[torch.Tensor], betas: list[torch.Tensor], *, shift: float, scale: float,
                   c_max: float | None = None) -> torch.Tensor:
    """``g = sqrt(shift I + scale^2 T) e_1 (B, k)`` for ``T`` = :func:`krylov_matrix`.

    Ritz values of ``T`` are clamped to ``[0, c_max]`` before the shift (an indefinite J must not give
    imaginary noise). The k x k eigendecomposition runs batched in float64 (negligible, robust for
    clustered spectra).
    """
    ritz, vecs = torch.linalg.eigh(krylov_matrix(hs, betas))
    ritz = ritz.clamp(min=0.0, max=c_max)
    root = torch.sqrt(shift + scale ** 2 * ritz)
    g = (vecs * root.unsqueeze(-2)) @ vecs[..., 0, :].unsqueeze(-1)
    return g.squeeze(-1).to(hs[0].dtype)


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


OPS = ("lanczos_update", "krylov_sqrt_e1", "lanczos_synthesis")


def supports(op: str, **args) -> None:
    """The reference runs every op on every valid argument (``ops/common.py``: what ``supports`` answers)."""
    check_op(op, OPS, __name__)
    return None
