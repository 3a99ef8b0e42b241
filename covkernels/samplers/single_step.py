"""One-step ODE solvers: DDIM (Euler), Heun, and aDDIM (deterministic, variance-adjusted DDIM)."""
from __future__ import annotations

import math

import torch
from tqdm.auto import trange

from ..steps import StepContext
from ..steps.validation import check_bool, check_inputs, check_number
from .common import churn, float_sigmas, to_d
from .registry import register


def _karras_ode(model, x, sigmas, extra_args, callback, disable, second_order, s_churn, s_tmin, s_tmax, s_noise,
                generator, sample_offset, check_finite):
    """Euler (``sample_euler``) or Heun (``sample_heun``, Euler on the last step) with Karras churn."""
    sigmas = check_inputs(x, sigmas)
    for name, value in (("s_churn", s_churn), ("s_noise", s_noise)):
        check_number(value, name)
    ctx = StepContext(model, x, extra_args, generator=generator, sample_offset=sample_offset,
                      check_finite=check_finite)
    for i in trange(len(sigmas) - 1, disable=disable):
        x, sigma_hat = churn(ctx, x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = ctx.denoise(x, sigma_hat, i)
        d = to_d(x, sigma_hat, denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})
        dt = sigmas[i + 1] - sigma_hat
        if not second_order or sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], ctx.denoise(x_2, sigmas[i + 1], i))
            x = x + (d + d_2) / 2 * dt
    return x


@register("ddim", family="ode_single", summary="Euler on the probability-flow ODE (= k-diffusion sample_euler)")
@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, *, s_churn=0.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0, generator=None, sample_offset=0, check_finite=True):
    """Deterministic DDIM = the Euler method on the probability-flow ODE (k-diffusion ``sample_euler``).
    1 NFE per step."""
    return _karras_ode(model, x, sigmas, extra_args, callback, disable, False, s_churn, s_tmin, s_tmax, s_noise,
                       generator, sample_offset, check_finite)


@register("heun", family="ode_single", summary="Heun's 2nd order, Euler last step (= sample_heun)",
          step_cost=lambda o: 2)
@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, *, s_churn=0.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0, generator=None, sample_offset=0, check_finite=True):
    """Heun's second-order method (EDM; k-diffusion ``sample_heun``). 2 NFE per step, 1 on the last."""
    return _karras_ode(model, x, sigmas, extra_args, callback, disable, True, s_churn, s_tmin, s_tmax, s_noise,
                       generator, sample_offset, check_finite)


def addim_variance(sigma: float, sigma_data: float = 0.5, variance_scale: float = 0.1) -> float:
    """aDDIM's analytic per-dimension posterior variance at noise level ``sigma`` (sigma convention).

    The posterior variance of isotropic Gaussian data of std ``sigma_data`` is
    ``1 / (1 / sigma_data^2 + 1 / sigma^2)``; aDDIM uses ``variance_scale`` (0.1 in the paper) times it. With
    ``sigma_data^2 = 0.5`` this is the paper's ``0.1 / (2 + alpha^2 / sigma_vp^2)`` (``sigma = sigma_vp /
    alpha``); for other data it scales as ``sigma_data^2`` at high noise and is ``~sigma^2`` at low noise.
    """
    return variance_scale / (1.0 / sigma_data ** 2 + 1.0 / sigma ** 2)


class PosteriorVariance:
    """A per-sigma posterior variance ``v(sigma)`` measured at ``sigmas``, interpolated linearly in
    ``(log sigma, log v)`` and held constant beyond the ends. Made by :func:`calibrate_addim_variance`."""

    def __init__(self, sigmas, values):
        pairs = sorted(zip((float(s) for s in sigmas), (float(v) for v in values)))
        if len(pairs) < 1 or any(not (s > 0 and v > 0 and math.isfinite(s) and math.isfinite(v)) for s, v in pairs):
            raise ValueError(f"sigmas and values must be positive finite numbers, got {pairs}")
        self.sigmas, self.values = [s for s, _ in pairs], [v for _, v in pairs]

    def __call__(self, sigma: float) -> float:
        s, v = self.sigmas, self.values
        if sigma <= s[0]:
            return v[0] * (sigma / s[0]) ** 2 if sigma > 0 else 0.0  # ~sigma^2 below the range (D -> identity)
        if sigma >= s[-1]:
            return v[-1]
        j = next(k for k in range(1, len(s)) if s[k] >= sigma)
        w = (math.log(sigma) - math.log(s[j - 1])) / (math.log(s[j]) - math.log(s[j - 1]))
        return math.exp((1 - w) * math.log(v[j - 1]) + w * math.log(v[j]))

    def __repr__(self) -> str:
        return f"PosteriorVariance(sigmas={self.sigmas}, values={self.values})"


@torch.no_grad()
def calibrate_addim_variance(model, data: torch.Tensor, sigmas, *, factor: float = 0.75, generator=None,
                             batch_size: int = 256, extra_args=None) -> PosteriorVariance:
    """aDDIM's calibrated posterior variance: ``factor * E||x0 - D(x0 + sigma n)||^2 / d`` at each sigma.

    ``data``: ``(N, ...)`` clean samples: real data, or the model's own samples when no data is at hand.
    ``sigmas``: the noise levels to measure (e.g. the sampling schedule without its final 0). Returns a
    :class:`PosteriorVariance` to pass as ``sample_addim(..., posterior_variance=v)``.
    """
    if not isinstance(data, torch.Tensor) or data.dim() < 2 or data.shape[0] < 1:
        raise ValueError(f"data must be a tensor of clean samples (N, ...), got {getattr(data, 'shape', data)!r}")
    factor = check_number(factor, "factor", 0.0, low_open=True)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    levels = [float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).flatten().tolist() if s > 0]
    if not levels:
        raise ValueError("sigmas must contain at least one positive noise level")
    extra = extra_args or {}
    values = []
    for sigma in levels:
        total = 0.0
        for lo in range(0, data.shape[0], batch_size):
            x0 = data[lo:lo + batch_size]
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
            d = model(x0 + sigma * noise, torch.full((x0.shape[0],), sigma, dtype=x0.dtype, device=x0.device), **extra)
            total += float((x0 - d).double().square().sum())
        values.append(max(factor * total / data.numel(), 1e-30))
    return PosteriorVariance(levels, values)


@register("addim", family="ode_single",
          summary="aDDIM (Heek et al. 2024): deterministic DDIM that inflates the predicted-noise direction "
                  "by the x0 uncertainty")
@torch.no_grad()
def sample_addim(model, x, sigmas, extra_args=None, callback=None, disable=None, *, sigma_data=None,
                 variance_scale=None, posterior_variance=None, inflate_last=False, guidance=None, generator=None,
                 sample_offset=0, check_finite=True):
    """aDDIM, deterministic: ``x_s = D + sqrt(sigma_s^2 + d (1 - sigma_s/sigma_t)^2 v_t / ||eps||^2) eps``
    with ``eps = (x_t - D) / sigma_t`` per sample and ``d`` its dimension.

    The DDIM step ``D + sigma_s eps`` loses ``(1 - sigma_s/sigma_t)^2 tr Cov[x0 | x_t]`` of the perfect
    sampler's squared norm (the x0 estimate is a mean); aDDIM puts it back along ``eps`` instead of adding
    fresh noise. ``v_t``: ``posterior_variance(sigma_t)`` if given (e.g. from
    :func:`calibrate_addim_variance`), else the analytic :func:`addim_variance` with ``sigma_data`` (default
    0.5) and ``variance_scale`` (default 0.1); giving those with ``posterior_variance`` raises. The step to sigma = 0 returns ``D`` like every sampler here, unless
    ``inflate_last=True`` (the formula with ``sigma_s = 0``). With ``guidance`` ``D`` is the guided mean;
    ``v_t`` is a property of the conditional model (calibrate it on the conditional branch).
    ``generator`` / ``sample_offset`` are accepted for a uniform signature and not used. 1 NFE per step.
    """
    sigmas = check_inputs(x, sigmas)
    if posterior_variance is not None:
        if not callable(posterior_variance):
            raise TypeError(f"posterior_variance must be a callable sigma -> variance or None, "
                            f"got {type(posterior_variance).__name__}")
        if sigma_data is not None or variance_scale is not None:
            raise ValueError("sigma_data / variance_scale set the analytic variance: they do not apply together "
                             "with posterior_variance")
    sigma_data = check_number(0.5 if sigma_data is None else sigma_data, "sigma_data", 0.0, low_open=True)
    variance_scale = check_number(0.1 if variance_scale is None else variance_scale, "variance_scale", 0.0)
    check_bool(inflate_last, "inflate_last")
    ctx = StepContext(model, x, extra_args, generator=generator, sample_offset=sample_offset,
                      check_finite=check_finite, guidance=guidance)
    s = float_sigmas(sigmas)
    d = x[0].numel()
    for i in trange(len(s) - 1, disable=disable):
        denoised = ctx.denoise(x, sigmas[i], i)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if s[i + 1] == 0 and not inflate_last:
            x = denoised
            continue
        v = posterior_variance(s[i]) if posterior_variance is not None else \
            addim_variance(s[i], sigma_data, variance_scale)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"posterior_variance({s[i]:.6g}) must be a finite number >= 0, got {v!r}")
        eps = (x - denoised) / s[i]
        norm2 = eps.flatten(1).double().square().sum(1).clamp_min(1e-30)
        scale = (s[i + 1] ** 2 + d * (1 - s[i + 1] / s[i]) ** 2 * v / norm2).sqrt()
        x = denoised + scale.to(x.dtype).view(-1, *([1] * (x.dim() - 1))) * eps
    return x
