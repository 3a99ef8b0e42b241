"""k-diffusion-compatible samplers: ``sample_<name>(model, x, sigmas, extra_args, callback, disable, **options)``.

``model(x, sigma, **extra_args)`` returns the denoised ``x0`` estimate (sigma a ``(B,)`` tensor); ``x`` is
the initial noise already scaled by ``sigmas[0]``; ``sigmas`` is strictly decreasing and normally ends in
0 (a schedule that stops above 0 runs a partial chain, as in k-diffusion). ``callback`` gets the k-diffusion
dict ``{x, i, sigma, sigma_hat, denoised}`` each step; ``disable`` turns off the tqdm progress bar (None:
on when attached to a terminal). Unknown options raise ``TypeError``.

``ddim``, ``ddpm``, ``heun`` and ``dpmpp_2m`` use k-diffusion's update rules formula for formula
(``sample_euler``, ``sample_euler_ancestral``, ``sample_heun``, ``sample_dpmpp_2m``), so the same model,
noise and sigmas give the same samples. Their noise (ddpm, churn) comes from the counter-based stream
seeded by ``generator`` unless a k-diffusion style ``noise_sampler(sigma, sigma_next)`` is given.
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import trange

from . import steps as step_lib
from .ops.rng.reference import STREAM_CHURN, STREAM_INIT, philox_normal
from .schedules import get_sigmas
from .steps import StepContext, draw_seed

# Steps with sigma above this are plain DDIM/ancestral steps (1 NFE) in the covariance-aware samplers: on
# multimodal data a Gaussian (let alone diagonal) posterior at high noise puts samples between the modes, and
# the evaluation (benchmarks/results/quality_*.md) shows the JVPs are better spent on more steps there.
# In units of sigma for data in [-1, 1] (sigma_data ~ 0.5); float("inf") puts the covariance on every step.
COV_SIGMA_MAX = 1.0

SAMPLERS = ("ddim", "ddpm", "heun", "dpmpp_2m", "addim", "diag_hutchinson", "cov_ddim", "lanczos")


def check_inputs(x, sigmas) -> torch.Tensor:
    """Validate ``x`` and ``sigmas``; return ``sigmas`` as a 1-D tensor on ``x``'s device."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor, got {type(x).__name__}"
                        + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    if x.dim() < 2 or x.shape[0] < 1 or x.numel() == 0:
        raise ValueError(f"x must have shape (B, ...) with B >= 1 and at least one element, got {tuple(x.shape)}")
    if not isinstance(sigmas, torch.Tensor):
        sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    if sigmas.dim() != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D sequence of at least 2 values, got shape {tuple(sigmas.shape)}")
    s = sigmas.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite (it contains NaN or Inf)")
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError(f"sigmas must be finite and non-negative, got {s.tolist()}")
    if not bool((s[1:] < s[:-1]).all()):
        raise ValueError(f"sigmas must be strictly decreasing (e.g. sigma_max ... sigma_min, 0), got {s.tolist()}")
    return sigmas.to(x.device)


def _context(model, x, extra_args, generator, sample_offset, backend="auto", jvp="auto", check_finite=True,
             guidance=None):
    return StepContext(model, x, extra_args, generator=generator, sample_offset=sample_offset, backend=backend,
                       jvp=jvp, check_finite=check_finite, guidance=guidance)


def _churn(ctx, x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise):
    """Karras churn (k-diffusion ``sample_euler``/``sample_heun``): raise sigma_i to sigma_hat with fresh noise."""
    n = len(sigmas) - 1
    gamma = min(s_churn / n, 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        eps = ctx.normal(x.shape, i, stream=STREAM_CHURN, dtype=x.dtype, device=x.device) * s_noise
        x = x + eps * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def _to_d(x, sigma, denoised):
    # sigma as a (1, ..., 1) tensor, as k-diffusion's append_dims makes it: this also reproduces its type
    # promotion (float32 sigmas lift a float16 x to float32), so results match in every dtype.
    if isinstance(sigma, torch.Tensor):
        sigma = sigma.reshape([1] * x.dim())
    return (x - denoised) / sigma


def _ancestral_tensor(sigma_from, sigma_to, eta):
    # k-diffusion's get_ancestral_step on 0-dim tensors (kept in tensor arithmetic for bit-compatibility).
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    return (sigma_to ** 2 - sigma_up ** 2) ** 0.5, sigma_up


@torch.no_grad()
def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, disable=None, *, eta=1.0, s_noise=1.0,
                noise_sampler=None, generator=None, sample_offset=0, check_finite=True):
    """Ancestral sampling (k-diffusion ``sample_euler_ancestral``); eta = 1 is DDPM, eta = 0 DDIM.
    1 NFE per step."""
    sigmas = check_inputs(x, sigmas)
    eta = step_lib.check_eta(eta)
    ctx = _context(model, x, extra_args, generator, sample_offset, check_finite=check_finite)
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = ctx.denoise(x, sigmas[i], i)
        sigma_down, sigma_up = _ancestral_tensor(sigmas[i], sigmas[i + 1], eta)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        d = _to_d(x, sigmas[i], denoised)
        x = x + d * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            noise = noise_sampler(sigmas[i], sigmas[i + 1]) if noise_sampler is not None else \
                ctx.normal(x.shape, i, dtype=x.dtype, device=x.device)
            x = x + noise * s_noise * sigma_up
    return x


def _karras_ode(model, x, sigmas, extra_args, callback, disable, second_order, s_churn, s_tmin, s_tmax, s_noise,
                generator, sample_offset, check_finite):
    """Euler (``sample_euler``) or Heun (``sample_heun``, Euler on the last step) with Karras churn."""
    sigmas = check_inputs(x, sigmas)
    for name, value in (("s_churn", s_churn), ("s_noise", s_noise)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    ctx = _context(model, x, extra_args, generator, sample_offset, check_finite=check_finite)
    for i in trange(len(sigmas) - 1, disable=disable):
        x, sigma_hat = _churn(ctx, x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = ctx.denoise(x, sigma_hat, i)
        d = _to_d(x, sigma_hat, denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})
        dt = sigmas[i + 1] - sigma_hat
        if not second_order or sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = _to_d(x_2, sigmas[i + 1], ctx.denoise(x_2, sigmas[i + 1], i))
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, *, s_churn=0.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0, generator=None, sample_offset=0, check_finite=True):
    """Deterministic DDIM = the Euler method on the probability-flow ODE (k-diffusion ``sample_euler``).
    1 NFE per step."""
    return _karras_ode(model, x, sigmas, extra_args, callback, disable, False, s_churn, s_tmin, s_tmax, s_noise,
                       generator, sample_offset, check_finite)


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, *, s_churn=0.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0, generator=None, sample_offset=0, check_finite=True):
    """Heun's second-order method (EDM; k-diffusion ``sample_heun``). 2 NFE per step, 1 on the last."""
    return _karras_ode(model, x, sigmas, extra_args, callback, disable, True, s_churn, s_tmin, s_tmax, s_noise,
                       generator, sample_offset, check_finite)


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None, *, generator=None,
                    sample_offset=0, check_finite=True):
    """DPM-Solver++(2M) (k-diffusion ``sample_dpmpp_2m``), in ``t = -log sigma``. 1 NFE per step."""
    sigmas = check_inputs(x, sigmas)
    ctx = _context(model, x, extra_args, generator, sample_offset, check_finite=check_finite)
    old_denoised = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = ctx.denoise(x, sigmas[i], i)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            target = denoised
        else:
            r = (t - sigmas[i - 1].log().neg()) / h
            target = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * target
        old_denoised = denoised
    return x


def _covariance_loop(ctx, x, sigmas, callback, disable, step_fn, eta=0.0, cov_sigma_max=float("inf")):
    """Shared loop of the covariance-aware samplers: ``step_fn(ctx, x, i, sigma_t, sigma_s)`` on the steps
    with ``sigma_t <= cov_sigma_max``; a plain ancestral step (DDIM mean + ``sigma_up`` isotropic noise,
    1 NFE) above it; the final step to sigma = 0 returns the denoised mean (1 NFE, no JVP)."""
    s = sigmas.detach().to("cpu", torch.float64).tolist()
    for i in trange(len(s) - 1, disable=disable):
        if s[i + 1] == 0:
            denoised = ctx.denoise(x, sigmas[i], i)
            x_next = denoised
        elif s[i] > cov_sigma_max:
            denoised = ctx.denoise(x, sigmas[i], i)
            x_next = step_lib.plain_step(ctx, x, denoised, i, s[i], s[i + 1], eta)
        else:
            x_next, denoised = step_fn(ctx, x, i, s[i], s[i + 1])
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x_next
    return x


@torch.no_grad()
def sample_addim(model, x, sigmas, extra_args=None, callback=None, disable=None, *, eta=0.0, sigma_data=0.5,
                 guidance=None, generator=None, sample_offset=0, check_finite=True):
    """aDDIM: DDIM plus isotropic noise for the x0 uncertainty of data with std ``sigma_data``. 1 NFE/step."""
    sigmas = check_inputs(x, sigmas)
    eta = step_lib.check_eta(eta)
    if isinstance(sigma_data, bool) or not isinstance(sigma_data, (int, float)) or not sigma_data > 0 \
            or not math.isfinite(sigma_data):
        raise ValueError(f"sigma_data must be a positive finite number, got {sigma_data!r}")
    ctx = _context(model, x, extra_args, generator, sample_offset, check_finite=check_finite, guidance=guidance)
    return _covariance_loop(ctx, x, sigmas, callback, disable, lambda c, xx, i, st, ss: step_lib.addim_step(
        c, xx, i, st, ss, eta=eta, sigma_data=float(sigma_data)))


@torch.no_grad()
def sample_cov_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, *, eta=0.0, basis="convdct",
                    block=8, c_max=1.0, channel_average=True, cov_sigma_max=COV_SIGMA_MAX, guidance=None,
                    jvp="auto", backend="auto", generator=None, sample_offset=0, check_finite=True):
    """Covariance-aware DDIM: Tweedie covariance diagonal in ``basis`` from one Hutchinson JVP per step.
    2 NFE per step with ``sigma <= cov_sigma_max``, 1 on the others and on the last (see COV_SIGMA_MAX)."""
    sigmas = check_inputs(x, sigmas)
    eta = step_lib.check_eta(eta)
    step_lib.check_basis(basis, block, x)
    if not isinstance(channel_average, bool):
        raise TypeError(f"channel_average must be a bool, got {channel_average!r}")
    if channel_average and x.dim() != 4:
        raise ValueError(f"channel_average=True needs images x of shape (B, C, H, W), got shape {tuple(x.shape)}; "
                         f"pass channel_average=False for other data")
    c_max = step_lib.check_c_max(c_max, allow_none=True)
    cov_sigma_max = step_lib.check_cov_sigma_max(cov_sigma_max)
    ctx = _context(model, x, extra_args, generator, sample_offset, backend, jvp, check_finite, guidance)
    return _covariance_loop(ctx, x, sigmas, callback, disable, lambda c, xx, i, st, ss: step_lib.structured_step(
        c, xx, i, st, ss, eta=eta, basis=basis, block=block, channel_average=bool(channel_average), c_max=c_max),
        eta, cov_sigma_max)


@torch.no_grad()
def sample_diag_hutchinson(model, x, sigmas, extra_args=None, callback=None, disable=None, *, eta=1.0, probes=1,
                           c_max=1.0, cov_sigma_max=COV_SIGMA_MAX, guidance=None, jvp="auto", backend="auto",
                           generator=None, sample_offset=0, check_finite=True):
    """Pixel-diagonal covariance from ``probes`` Hutchinson JVPs (training-free OCM-DDPM diagonal), no
    channel averaging. ``1 + probes`` NFE per step with ``sigma <= cov_sigma_max``, 1 on the others."""
    sigmas = check_inputs(x, sigmas)
    eta = step_lib.check_eta(eta)
    probes = step_lib.check_count(probes, "probes", 64)
    c_max = step_lib.check_c_max(c_max, allow_none=True)
    cov_sigma_max = step_lib.check_cov_sigma_max(cov_sigma_max)
    ctx = _context(model, x, extra_args, generator, sample_offset, backend, jvp, check_finite, guidance)
    return _covariance_loop(ctx, x, sigmas, callback, disable, lambda c, xx, i, st, ss: step_lib.structured_step(
        c, xx, i, st, ss, eta=eta, basis="identity", block=1, channel_average=False, c_max=c_max, probes=probes),
        eta, cov_sigma_max)


@torch.no_grad()
def sample_lanczos(model, x, sigmas, extra_args=None, callback=None, disable=None, *, eta=1.0, lanczos_steps=3,
                   reorthogonalize=True, c_max=None, cov_sigma_max=COV_SIGMA_MAX, guidance=None, jvp="auto",
                   backend="auto", generator=None, sample_offset=0, check_finite=True):
    """Lanczos Gaussian Sampler: full posterior covariance through ``lanczos_steps`` Lanczos iterations of
    JVPs started from the step noise. ``1 + lanczos_steps`` NFE per step with ``sigma <= cov_sigma_max``,
    1 on the others and on the last."""
    sigmas = check_inputs(x, sigmas)
    eta = step_lib.check_eta(eta)
    k = step_lib.check_count(lanczos_steps, "lanczos_steps", 64)
    c_max = step_lib.check_c_max(c_max, allow_none=True)
    cov_sigma_max = step_lib.check_cov_sigma_max(cov_sigma_max)
    ctx = _context(model, x, extra_args, generator, sample_offset, backend, jvp, check_finite, guidance)
    return _covariance_loop(ctx, x, sigmas, callback, disable, lambda c, xx, i, st, ss: step_lib.lanczos_step(
        c, xx, i, st, ss, eta=eta, lanczos_steps=k, reorthogonalize=bool(reorthogonalize), c_max=c_max),
        eta, cov_sigma_max)


def nfe_per_sample(sampler: str, sigmas, *, lanczos_steps: int = 3, probes: int = 1, guided: bool = False,
                   cov_sigma_max: float | None = None) -> int:
    """Model evaluations per sample of a run (a JVP counts as one, its primal as another, as in the papers).

    ``sigmas``: the schedule (or an int number of steps of a schedule ending in 0, then every step but the
    last is counted as a covariance step). ``cov_sigma_max``: the covariance samplers' option (None: their
    default); steps above it cost 1. Lanczos is counted at its maximum; an early stop on an invariant
    Krylov space saves JVPs.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    window = step_lib.check_cov_sigma_max(COV_SIGMA_MAX if cov_sigma_max is None else cov_sigma_max)
    if isinstance(sigmas, int):
        if sigmas < 1:
            raise ValueError(f"sigmas as a number of steps must be >= 1, got {sigmas}")
        s = [float("inf")] * sigmas + [0.0]
    else:
        s = torch.as_tensor(sigmas).detach().to("cpu", torch.float64).flatten().tolist()
    extra = 1 if guided else 0  # guidance adds the unconditional forward to every step
    per_step = {"ddim": 1, "ddpm": 1, "dpmpp_2m": 1, "addim": 1, "heun": 2, "cov_ddim": 2,
                "diag_hutchinson": 1 + probes, "lanczos": 1 + lanczos_steps}[sampler]
    covariance = sampler in ("cov_ddim", "diag_hutchinson", "lanczos")
    total = 0
    for t, u in zip(s[:-1], s[1:]):
        # the final step to sigma = 0 and steps above the window are one plain (guided) evaluation
        if u == 0 or (covariance and t > window and not isinstance(sigmas, int)):
            total += 1 + extra
        else:
            total += per_step + extra
    return total


def get_sampler(name: str):
    """The ``sample_<name>`` function for a name in :data:`SAMPLERS`."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")
    return globals()[f"sample_{name}"]


def sample(model, shape, sampler: str = "cov_ddim", steps: int = 8, sigma_min: float = 0.002,
           sigma_max: float = 80.0, schedule: str = "karras", rho: float = 7.0, generator=None, device=None,
           dtype: torch.dtype = torch.float32, extra_args=None, callback=None, disable=None, sample_offset: int = 0,
           sigmas=None, **options) -> torch.Tensor:
    """One-line sampling: noise of ``shape = (B, ...)`` at ``sigma_max`` -> ``steps`` steps of ``sampler``.

    The initial noise comes from the same counter-based stream as all other noise, so sample ``b`` is the
    same whatever the batch size (pass ``sample_offset`` when sharding). ``sigmas``: an explicit schedule
    (then ``steps``, ``sigma_min``, ``sigma_max``, ``schedule``, ``rho`` are not used). ``options`` go to
    the sampler.
    """
    fn = get_sampler(sampler)
    if sigmas is None:
        sigmas = get_sigmas(schedule, steps, sigma_min, sigma_max, rho, device=device)
    else:
        sigmas = check_inputs(torch.zeros(1, 1, device=device), sigmas)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    shape = tuple(shape)
    if len(shape) < 2 or any(not isinstance(n, int) or n < 1 for n in shape):
        raise ValueError(f"shape must be (B, ...) of positive ints, got {shape}")
    step_lib.check_sample_offset(sample_offset)
    seed = draw_seed(generator)
    x = philox_normal(seed, shape, sample_offset=sample_offset, step=0, stream=STREAM_INIT, dtype=dtype,
                      device=device) * sigmas[0].to(dtype)
    return fn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, generator=generator,
              sample_offset=sample_offset, **options)

