"""Shared pieces of the sampler loops: the covariance samplers' loop and window, k-diffusion's small helpers.
(The input checks are in :mod:`covkernels.steps.validation`.)"""
from __future__ import annotations

import torch
from tqdm.auto import trange

from ..ops.api import STREAM_CHURN
from ..steps import plain_step

# Steps with sigma above this are plain DDIM/ancestral steps (1 NFE) in the covariance-aware samplers: on
# multimodal data a Gaussian (let alone diagonal) posterior at high noise puts samples between the modes, and
# the evaluation (benchmarks/results/quality_*.md) shows the JVPs are better spent on more steps there.
# In units of sigma for data in [-1, 1] (sigma_data ~ 0.5); float("inf") puts the covariance on every step.
COV_SIGMA_MAX = 1.0


def churn(ctx, x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise):
    """Karras churn (k-diffusion ``sample_euler``/``sample_heun``): raise sigma_i to sigma_hat with fresh noise."""
    n = len(sigmas) - 1
    gamma = min(s_churn / n, 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        eps = ctx.normal(x.shape, i, stream=STREAM_CHURN, dtype=x.dtype, device=x.device) * s_noise
        x = x + eps * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def to_d(x, sigma, denoised):
    """The ODE derivative ``(x - D) / sigma``."""
    # sigma as a (1, ..., 1) tensor, as k-diffusion's append_dims makes it: this also reproduces its type
    # promotion (float32 sigmas lift a float16 x to float32), so results match in every dtype.
    if isinstance(sigma, torch.Tensor):
        sigma = sigma.reshape([1] * x.dim())
    return (x - denoised) / sigma


def ancestral_tensor(sigma_from, sigma_to, eta):
    """k-diffusion's get_ancestral_step on 0-dim tensors (kept in tensor arithmetic for bit-compatibility)."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    return (sigma_to ** 2 - sigma_up ** 2) ** 0.5, sigma_up


def step_noise(ctx, x, i, noise_sampler, sigma, sigma_next):
    """The step's Gaussian noise: a k-diffusion ``noise_sampler(sigma, sigma_next)`` if given, else the
    counter-based stream of ``ctx`` (same seed, same noise, whatever the batch layout)."""
    if noise_sampler is not None:
        return noise_sampler(sigma, sigma_next)
    return ctx.normal(x.shape, i, dtype=x.dtype, device=x.device)


def float_sigmas(sigmas: torch.Tensor) -> list[float]:
    return sigmas.detach().to("cpu", torch.float64).tolist()


def covariance_loop(ctx, x, sigmas, callback, disable, step_fn, eta=0.0, cov_sigma_max=float("inf")):
    """Shared loop: ``step_fn(ctx, x, i, sigma_t, sigma_s) -> (x_s, denoised)`` on the steps with
    ``sigma_t <= cov_sigma_max``; a plain ancestral step (DDIM mean + ``sigma_up`` isotropic noise, 1 NFE)
    above it; the final step to sigma = 0 returns the denoised mean (1 NFE, no JVP)."""
    s = float_sigmas(sigmas)
    for i in trange(len(s) - 1, disable=disable):
        if s[i + 1] == 0:
            denoised = ctx.denoise(x, sigmas[i], i)
            x_next = denoised
        elif s[i] > cov_sigma_max:
            denoised = ctx.denoise(x, sigmas[i], i)
            x_next = plain_step(ctx, x, denoised, i, s[i], s[i + 1], eta)
        else:
            x_next, denoised = step_fn(ctx, x, i, s[i], s[i + 1])
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x_next
    return x
