"""Noise schedules: descending sigma sequences ending in 0, k-diffusion conventions.

Every helper returns a float32 tensor of ``n + 1`` entries (``n`` steps) ``sigma_max ... sigma_min, 0``,
computed with the same formulas (and float32 arithmetic) as k-diffusion's ``get_sigmas_*`` so schedules
are interchangeable (``cosine_sigmas`` and ``time_uniform_sigmas`` have no k-diffusion twin; they compute in
float64 and round once). ``linear_beta_sigmas`` turns a discrete DDPM (VP, linear-beta) model's training
schedule into sigmas for ``n`` inference steps.
"""
from __future__ import annotations

import math

import torch

SCHEDULES = ("karras", "exponential", "cosine", "time_uniform", "vp", "linear_beta")


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"steps must be a positive int, got {n!r}")
    return n


def _check_range(sigma_min, sigma_max) -> None:
    if not (math.isfinite(sigma_min) and sigma_min > 0):
        raise ValueError(f"sigma_min must be a positive finite number, got {sigma_min!r}")
    if not (math.isfinite(sigma_max) and sigma_max > sigma_min):
        raise ValueError(f"sigma_max must be finite and greater than sigma_min={sigma_min}, got {sigma_max!r}")


def _append_zero(s: torch.Tensor) -> torch.Tensor:
    return torch.cat([s, s.new_zeros(1)])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device=None) -> torch.Tensor:
    """Karras et al. (2022): uniform in ``sigma^(1/rho)``."""
    _check_n(n)
    _check_range(sigma_min, sigma_max)
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho!r}")
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho).to(device)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float, device=None) -> torch.Tensor:
    """Uniform in ``log sigma``."""
    _check_n(n)
    _check_range(sigma_min, sigma_max)
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp()).to(device)


def cosine_sigmas(n: int, sigma_min: float, sigma_max: float, shift: float = 1.0, device=None) -> torch.Tensor:
    """Shifted cosine schedule, uniform in ``t`` of ``sigma(t) = shift * tan(pi t / 2)``.

    With ``shift = 1`` this is the cosine schedule of Nichol & Dhariwal (2021), ``alphabar(t) = cos^2(pi t/2)``
    (VP), written as ``sigma = sqrt(1 - alphabar) / sqrt(alphabar) = tan(pi t / 2)``, without their small
    offset since the grid is truncated to ``[sigma_min, sigma_max]`` anyway: ``t`` runs uniformly from
    ``(2/pi) atan(sigma_max / shift)`` to ``(2/pi) atan(sigma_min / shift)``. ``shift`` multiplies every
    sigma at fixed ``t``, i.e. adds ``-2 log shift`` to the log-SNR (the "shifted cosine" of Hoogeboom et al.
    (2023), whose ``shift = resolution / 64``). Per unit of ``log sigma`` the steps are densest at
    ``sigma = shift`` (there ``d log sigma / dt = pi``, the least anywhere), so ``shift`` says which
    noise level gets the most steps; far below it the spacing becomes uniform in sigma, far above it
    uniform in ``1 / sigma``.
    """
    _check_n(n)
    _check_range(sigma_min, sigma_max)
    if not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a positive finite number, got {shift!r}")
    t = torch.linspace(math.atan(sigma_max / shift), math.atan(sigma_min / shift), n, dtype=torch.float64)
    return _append_zero((shift * torch.tan(t)).to(torch.float32)).to(device)


def _vp_time(sigma: float, beta_d: float, beta_min: float) -> float:
    """The ``t`` with ``sigma = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)`` (positive root of a quadratic)."""
    return (math.sqrt(beta_min ** 2 + 2 * beta_d * math.log1p(sigma ** 2)) - beta_min) / beta_d


def time_uniform_sigmas(n: int, sigma_min: float, sigma_max: float, beta_d: float = 19.9, beta_min: float = 0.1,
                        device=None) -> torch.Tensor:
    """Uniform in the time ``t`` of the continuous VP SDE with linear ``beta(t) = beta_min + beta_d t``
    (Song et al. 2021; DPM-Solver's "time_uniform"), between the times of ``sigma_max`` and ``sigma_min``.

    ``alphabar(t) = exp(-beta_d t^2 / 2 - beta_min t)``, so ``sigma(t) = sqrt(exp(beta_d t^2/2 + beta_min t) - 1)``
    and ``t(sigma) = (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d``. With the default
    betas, ``sigma_max = 80`` is ``t = 0.9335``. :func:`vp_sigmas` is the same grid over a fixed ``t`` range.
    """
    _check_n(n)
    _check_range(sigma_min, sigma_max)
    if not (beta_d > 0 and beta_min >= 0):
        raise ValueError(f"need beta_d > 0 and beta_min >= 0, got {beta_d!r}, {beta_min!r}")
    t = torch.linspace(_vp_time(sigma_max, beta_d, beta_min), _vp_time(sigma_min, beta_d, beta_min), n,
                       dtype=torch.float64)
    return _append_zero(torch.sqrt(torch.expm1(beta_d * t ** 2 / 2 + beta_min * t)).to(torch.float32)).to(device)


def vp_sigmas(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3,
              device=None) -> torch.Tensor:
    """Continuous-time VP (Song et al. 2021) with linear beta(t), mapped to ``sigma = sqrt(1/alphabar - 1)``."""
    _check_n(n)
    t = torch.linspace(1, eps_s, n)
    return _append_zero(torch.sqrt(torch.exp(beta_d * t ** 2 / 2 + beta_min * t) - 1)).to(device)


def alphas_cumprod_to_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``sigma_t = sqrt((1 - alphabar_t) / alphabar_t)`` (VP -> VE), float64."""
    ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    if bool(((ac <= 0) | (ac > 1)).any()):
        raise ValueError("alphas_cumprod must lie in (0, 1]")
    return torch.sqrt((1 - ac) / ac)


def linear_beta_sigmas(n: int, beta_start: float = 1e-4, beta_end: float = 0.02, num_train_timesteps: int = 1000,
                       spacing: str = "trailing", device=None) -> torch.Tensor:
    """Sigmas of a discrete DDPM model (linear betas) at ``n`` inference timesteps.

    ``spacing``: ``"trailing"`` (``T, T - T/n, ...``, the first step at the last training timestep),
    ``"leading"`` (``0, T/n, ...`` reversed) or ``"linspace"`` (``n`` evenly spaced in ``[0, T-1]``).
    """
    _check_n(n)
    if not 0 < beta_start < beta_end < 1:
        raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start!r}, {beta_end!r}")
    if n > num_train_timesteps:
        raise ValueError(f"steps={n} exceeds num_train_timesteps={num_train_timesteps}")
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    sig = alphas_cumprod_to_sigmas(torch.cumprod(1 - betas, 0))
    tt = num_train_timesteps
    if spacing == "trailing":
        ts = torch.round(tt - torch.arange(n, dtype=torch.float64) * (tt / n)).long() - 1
    elif spacing == "leading":
        ts = (torch.arange(n, dtype=torch.int64) * (tt // n)).flip(0)
    elif spacing == "linspace":
        ts = torch.round(torch.linspace(0, tt - 1, n, dtype=torch.float64)).long().flip(0)
    else:
        raise ValueError(f"spacing must be 'trailing', 'leading' or 'linspace', got {spacing!r}")
    return _append_zero(sig[ts].to(torch.float32)).to(device)


def get_sigmas(schedule: str, steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
               device=None, *, shift: float = 1.0) -> torch.Tensor:
    """Dispatch by name for ``covkernels.sample`` and the CLI (``vp``/``linear_beta`` use their own
    defaults and ignore ``sigma_min``/``sigma_max``). ``rho`` is read by ``karras`` only (ignored by the
    others, as before); ``shift`` applies to ``cosine`` only and is refused elsewhere."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule != "cosine" and shift != 1.0:
        raise ValueError(f"shift applies to the cosine schedule only, got shift={shift!r} with {schedule!r}")
    if schedule == "karras":
        return karras_sigmas(steps, sigma_min, sigma_max, rho, device)
    if schedule == "exponential":
        return exponential_sigmas(steps, sigma_min, sigma_max, device)
    if schedule == "cosine":
        return cosine_sigmas(steps, sigma_min, sigma_max, shift, device)
    if schedule == "time_uniform":
        return time_uniform_sigmas(steps, sigma_min, sigma_max, device=device)
    if schedule == "vp":
        return vp_sigmas(steps, device=device)
    return linear_beta_sigmas(steps, device=device)
