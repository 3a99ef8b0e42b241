"""Stochastic mean-only samplers: DDPM (Euler ancestral), noisy DDIM, DPM-Solver++ 2M-SDE / 3M-SDE.

Noise comes from the counter-based stream of the caller's generator (same seed, same samples, whatever the
batch layout) unless a k-diffusion ``noise_sampler(sigma, sigma_next)`` is given; with the same
``noise_sampler`` the updates equal k-diffusion's formula for formula.
"""
from __future__ import annotations

import torch
from tqdm.auto import trange

from ..steps import StepContext, noisy_ddim_step
from ..steps.validation import check_eta, check_inputs, check_number
from .common import ancestral_tensor, covariance_loop, step_noise, to_d
from .registry import register


@register("ddpm", family="ancestral", stochastic=True,
          summary="ancestral Euler (= sample_euler_ancestral); eta=1 DDPM, eta=0 DDIM")
@torch.no_grad()
def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, disable=None, *, eta=1.0, s_noise=1.0,
                noise_sampler=None, generator=None, sample_offset=0, check_finite=True):
    """Ancestral sampling (k-diffusion ``sample_euler_ancestral``); eta = 1 is DDPM, eta = 0 DDIM.
    1 NFE per step."""
    sigmas = check_inputs(x, sigmas)
    eta = check_eta(eta)
    ctx = StepContext(model, x, extra_args, generator=generator, sample_offset=sample_offset,
                      check_finite=check_finite)
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = ctx.denoise(x, sigmas[i], i)
        sigma_down, sigma_up = ancestral_tensor(sigmas[i], sigmas[i + 1], eta)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        d = to_d(x, sigmas[i], denoised)
        x = x + d * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + step_noise(ctx, x, i, noise_sampler, sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@register("noisy_ddim", family="ancestral", stochastic=True,
          summary="DDIM + fresh isotropic noise for the x0 uncertainty of data with std sigma_data "
                  "(the 'noisy DDIM' baseline of the aDDIM paper)")
@torch.no_grad()
def sample_noisy_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, *, eta=0.0, sigma_data=0.5,
                      guidance=None, generator=None, sample_offset=0, check_finite=True):
    """Noisy DDIM: the DDIM mean plus isotropic noise of variance ``(sigma_t - sigma_down)^2 c`` with
    ``c = sigma_data^2 / (sigma_t^2 + sigma_data^2)`` (the posterior of isotropic data of std ``sigma_data``),
    on top of the ancestral ``sigma_up`` noise. 1 NFE per step. (This package called it ``addim`` before the
    published, deterministic aDDIM joined as :func:`sample_addim`.)"""
    sigmas = check_inputs(x, sigmas)
    eta = check_eta(eta)
    sigma_data = check_number(sigma_data, "sigma_data", 0.0, low_open=True)
    ctx = StepContext(model, x, extra_args, generator=generator, sample_offset=sample_offset,
                      check_finite=check_finite, guidance=guidance)
    return covariance_loop(ctx, x, sigmas, callback, disable, lambda c, xx, i, st, ss: noisy_ddim_step(
        c, xx, i, st, ss, eta=eta, sigma_data=sigma_data))


def _check_sde(eta, s_noise, noise_sampler):
    check_number(eta, "eta")
    check_number(s_noise, "s_noise")
    if noise_sampler is not None and not callable(noise_sampler):
        raise TypeError(f"noise_sampler must be a callable (sigma, sigma_next) -> noise or None, "
                        f"got {type(noise_sampler).__name__}")


@register("dpmpp_2m_sde", family="ancestral", stochastic=True,
          summary="DPM-Solver++(2M) SDE (= sample_dpmpp_2m_sde); eta=0 is the deterministic 2M")
@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, *, eta=1.0, s_noise=1.0,
                        noise_sampler=None, solver_type="midpoint", generator=None, sample_offset=0,
                        check_finite=True):
    """DPM-Solver++(2M) SDE (k-diffusion ``sample_dpmpp_2m_sde``) in ``t = -log sigma``: with ``h`` the step
    and ``eta h`` the share of it taken stochastically,
    ``x' = (sigma'/sigma) e^{-eta h} x + (1 - e^{-(1+eta) h}) D + correction + sigma' sqrt(1 - e^{-2 eta h}) z``
    (the second-order correction from the previous output, ``solver_type`` 'midpoint' or 'heun'). 1 NFE per step."""
    sigmas = check_inputs(x, sigmas)
    _check_sde(eta, s_noise, noise_sampler)
    if solver_type not in ("heun", "midpoint"):
        raise ValueError(f"solver_type must be 'heun' or 'midpoint', got {solver_type!r}")
    ctx = StepContext(model, x, extra_args, generator=generator, sample_offset=sample_offset,
                      check_finite=check_finite)
    old_denoised, h_last = None, None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = ctx.denoise(x, sigmas[i], i)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = sigmas[i].log() - sigmas[i + 1].log()
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                noise = step_noise(ctx, x, i, noise_sampler, sigmas[i], sigmas[i + 1])
                x = x + noise * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        old_denoised, h_last = denoised, h
    return x


@register("dpmpp_3m_sde", family="ancestral", stochastic=True,
          summary="DPM-Solver++(3M) SDE (= sample_dpmpp_3m_sde); eta=0 is the deterministic 3M",
          variants={"dpmpp_3m_sde/eta0": {"eta": 0.0}})
@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, *, eta=1.0, s_noise=1.0,
                        noise_sampler=None, generator=None, sample_offset=0, check_finite=True):
    """DPM-Solver++(3M) SDE (k-diffusion ``sample_dpmpp_3m_sde``): the exponential-integrator step with
    ``h_eta = (1 + eta) h`` plus first- and second-difference corrections from the last two outputs
    (``phi_2 = (1 - e^{-h_eta}) / h_eta``-type weights), then ``sigma' sqrt(1 - e^{-2 eta h}) z``. 1 NFE per step."""
    sigmas = check_inputs(x, sigmas)
    _check_sde(eta, s_noise, noise_sampler)
    ctx = StepContext(model, x, extra_args, generator=generator, sample_offset=sample_offset,
                      check_finite=check_finite)
    denoised_1 = denoised_2 = None
    h_1 = h_2 = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = ctx.denoise(x, sigmas[i], i)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = sigmas[i].log() - sigmas[i + 1].log()
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                r = h_1 / h
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * (denoised - denoised_1) / r
            if eta:
                noise = step_noise(ctx, x, i, noise_sampler, sigmas[i], sigmas[i + 1])
                x = x + noise * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x
