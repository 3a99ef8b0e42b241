"""The Lanczos Gaussian Sampler's step: the posterior covariance through a few Lanczos iterations of JVPs."""
from __future__ import annotations

import torch

from ..ops.api import work_dtype
from .context import StepContext
from .plain import ancestral_split


def lanczos_step(ctx: StepContext, x: torch.Tensor, step: int, sigma_t: float, sigma_s: float, *, eta: float,
                 lanczos_steps: int, reorthogonalize: bool, c_max: float | None):
    """LGS: k Lanczos iterations of J started at the step's Gaussian noise xi, then
    ``x_s = m + ||xi|| Q_k sqrt(T_S) e_1`` with ``T_S`` built from the symmetric part of ``Q^T J Q``.
    Stops early when every sample's Krylov space is invariant. Returns ``(x_s, denoised)``."""
    sigma_down, sigma_up = ancestral_split(sigma_t, sigma_s, eta)
    wd = work_dtype(x.dtype)
    xi = ctx.normal(x.shape, step, dtype=wd, device=x.device)
    xi_norm = xi.flatten(1).norm(dim=1)
    # The Krylov basis stays in float32 (float64 for float64 runs) whatever the model's dtype.
    basis = torch.empty((lanczos_steps,) + tuple(x.shape), dtype=wd, device=x.device)
    basis[0] = xi / xi_norm.view(-1, *([1] * (x.dim() - 1)))
    denoised, aq = ctx.jvp(x, sigma_t, basis[0].to(x.dtype), step)
    hs, betas = [], []
    for j in range(lanczos_steps):
        h, beta = ctx.ops.lanczos_update(aq, basis, j, reorthogonalize=reorthogonalize)
        hs.append(h)
        if j == lanczos_steps - 1 or not bool((beta > 0).any()):
            break
        betas.append(beta)
        _, aq = ctx.jvp(x, sigma_t, basis[j + 1].to(x.dtype), step, fresh=False)
    g = ctx.ops.krylov_sqrt_e1(hs, betas, shift=sigma_up ** 2, scale=sigma_t - sigma_down, c_max=c_max)
    x_s = ctx.ops.lanczos_synthesis(denoised, x, basis, g, xi_norm, sigma_t=sigma_t, sigma_down=sigma_down)
    return x_s, denoised
