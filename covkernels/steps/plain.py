"""The mean-only steps: the ancestral split of a step, the plain DDIM/ancestral step the covariance samplers
take above their window, and noisy DDIM (isotropic posterior noise of data with a known std).

Steps take ``x_t`` and the run's :class:`~covkernels.steps.context.StepContext`, draw their noise from its
counter-based stream, and return ``x_s`` (and the denoised mean where they call the model).
"""
from __future__ import annotations

import math

import torch

from ..ops.api import ddim_mean, work_dtype
from .context import StepContext


def ancestral_split(sigma_t: float, sigma_s: float, eta: float) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` of k-diffusion's ancestral step (eta = 0: DDIM, eta = 1: DDPM)."""
    if not eta:
        return sigma_s, 0.0
    sigma_up = min(sigma_s, eta * math.sqrt(sigma_s ** 2 * (sigma_t ** 2 - sigma_s ** 2) / sigma_t ** 2))
    return math.sqrt(sigma_s ** 2 - sigma_up ** 2), sigma_up


def plain_step(ctx: StepContext, x: torch.Tensor, denoised: torch.Tensor, step: int, sigma_t: float,
               sigma_s: float, eta: float) -> torch.Tensor:
    """The mean-only ancestral step ``m + sigma_up xi`` (DDIM for eta = 0) of the covariance samplers above
    their ``cov_sigma_max``; ``xi`` from the step's noise stream."""
    sigma_down, sigma_up = ancestral_split(sigma_t, sigma_s, eta)
    x_s = ddim_mean(denoised, x, sigma_t, sigma_down)
    if sigma_up > 0:
        x_s = x_s + sigma_up * ctx.normal(x.shape, step, dtype=x_s.dtype, device=x.device)
    return x_s.to(x.dtype)


def noisy_ddim_step(ctx: StepContext, x: torch.Tensor, step: int, sigma_t: float, sigma_s: float, *, eta: float,
                    sigma_data: float):
    """Noisy DDIM: DDIM plus isotropic noise for the x0 uncertainty, with the posterior variance of
    isotropic data of std ``sigma_data``, i.e. ``J ~= sigma_data^2 / (sigma_t^2 + sigma_data^2) I``.
    One model evaluation. Returns ``(x_s, denoised)``."""
    sigma_down, sigma_up = ancestral_split(sigma_t, sigma_s, eta)
    denoised = ctx.denoise(x, sigma_t, step)
    c = sigma_data ** 2 / (sigma_t ** 2 + sigma_data ** 2)
    std = math.sqrt(sigma_up ** 2 + (sigma_t - sigma_down) ** 2 * c)
    xi = ctx.normal(x.shape, step, dtype=work_dtype(x.dtype), device=x.device)
    x_s = ddim_mean(denoised, x, sigma_t, sigma_down) + std * xi
    return x_s.to(x.dtype), denoised
