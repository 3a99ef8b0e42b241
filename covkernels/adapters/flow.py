"""Rectified-flow and x-prediction networks as sigma-space denoisers (docs/design.md, "Other parameterisations").

A rectified-flow model sees ``z = (1 - s) x0 + s k eps`` with the noise at ``s = 1`` and ``k = noise_scale``
(1 for SD3 / Flux / diffusers' ``FlowMatchEulerDiscreteScheduler``). Dividing by ``1 - s`` gives the sigma
(VE) convention of every covkernels sampler: ``x = z / (1 - s) = x0 + sigma eps`` with
``sigma = k s / (1 - s)``, so ``s = sigma / (k + sigma)`` and ``z = x k / (k + sigma)``. A first-order step is
the same in both conventions; noise terms and higher-order steps are not, which is why the samplers stay in
one convention and the change of variables lives here.

The noise end ``s = 1`` is ``sigma = inf``. :class:`FlowDenoiser` evaluates it exactly
(:meth:`FlowDenoiser.denoise_flow` at ``s = 1``), and :func:`sample_flow` takes the first step from pure noise
in its exact closed form ``x_1 = D(k eps, s=1) + sigma_1 eps`` (the limit of the DDIM/Euler step as
``sigma_0 -> inf``; diffusers' ``FlowMatchEulerDiscreteScheduler`` takes the same step), then runs the chosen
sampler from ``sigma_1`` on the rest of the grid, so a multistep solver restarts there. Against starting at
``s = 1 - delta`` instead (python_tests/adapters/test_flow_adapter.py, mixture oracle, 6 steps): DDIM's run converges
like ``delta`` (0.45 delta RMS on the Gaussian oracle); DPM-Solver++(2M)'s like ``1 / log(1/delta)`` (its weight
on the first point decays only logarithmically); iPNDM and UniPC keep the first point in their history and
tend to a different sampler, ~0.05 RMS from the restart; Heun's correction has no limit at ``sigma = inf``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..steps import NonFiniteError
from .guards import covariance_window, warn_if_latent

__all__ = ["FlowDenoiser", "PREDICTIONS", "dynamic_shift_mu", "flow_times", "flow_times_to_sigmas", "sample_flow",
           "shift_flow_times", "sigmas_to_flow_times", "with_guidance"]

PREDICTIONS = ("velocity", "x0", "epsilon")


def _check_positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


class FlowDenoiser(torch.nn.Module):
    """``D(x, sigma, **extra_args) = E[x0 | x]`` from a rectified-flow network ``net(z, t, **extra_args)``.

    Args:
        net: the network; called as ``net(z, t, **extra_args)`` with ``t`` a ``(B,)`` tensor of its own time
            (``call`` changes how it is called). Outputs with a ``.sample`` field or tuples are unpacked.
        prediction: what the network returns: ``"velocity"`` (the derivative of ``z`` in unit flow time in the
            network's direction, i.e. ``k eps - x0`` for ``noise_at=1`` and its negative for ``noise_at=0``,
            whatever ``time_scale``: diffusers' flow models take t in [0, 1000] and predict that velocity), ``"x0"`` (the clean image,
            JiT-style x-prediction) or ``"epsilon"`` (the noise ``eps``; undefined at the noise end).
        noise_at: 1 if the network's ``t = 1`` is pure noise (SD3, Flux, diffusers), 0 if its ``t = 0`` is
            (JiT, PixNerd): such a network is called with ``t = 1 - s``.
        noise_scale: ``k`` in ``z = (1 - s) x0 + s k eps`` (1 for almost every model).
        time_scale: multiplies the network's time (1000 for networks trained on ``t`` in [0, 1000], e.g.
            diffusers transformers fed ``scheduler.timesteps``).
        timestep: optional ``fn(s) -> t`` replacing the rule ``t = time_scale * (s or 1 - s)``; ``s`` is a
            float64 ``(B,)`` tensor of flow times (noise at 1). The diffusers adapter uses it to reproduce a
            scheduler's own (e.g. integer-truncated) timesteps.
        call: optional ``fn(net, z, t, extra_args) -> output`` replacing ``net(z, t, **extra_args)``.
    """

    def __init__(self, net, prediction: str = "velocity", noise_at: int = 1, noise_scale: float = 1.0,
                 time_scale: float = 1.0, timestep: Callable | None = None, call: Callable | None = None):
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be callable, got {type(net).__name__}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if isinstance(noise_at, bool) or noise_at not in (0, 1):
            raise ValueError(f"noise_at must be 1 (t = 1 is noise) or 0 (t = 0 is noise), got {noise_at!r}")
        for name, fn in (("timestep", timestep), ("call", call)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable or None, got {type(fn).__name__}")
        self.net, self.prediction, self.noise_at = net, prediction, int(noise_at)
        self.noise_scale = _check_positive(noise_scale, "noise_scale")
        self.time_scale = _check_positive(time_scale, "time_scale")
        if timestep is not None and self.time_scale != 1.0:
            raise ValueError("time_scale does not apply with a timestep function (it maps s to t itself)")
        self.timestep, self.call = timestep, call

    # -- the change of variables -------------------------------------------------------------------------------
    def flow_time(self, sigma: torch.Tensor) -> torch.Tensor:
        """``s = sigma / (k + sigma)`` in float64 (``inf -> 1``)."""
        return sigmas_to_flow_times(sigma, self.noise_scale)

    def to_sigma_space(self, z: torch.Tensor, sigma) -> torch.Tensor:
        """``x = z / (1 - s) = z (k + sigma) / k``: a flow state at ``sigma`` in the samplers' convention."""
        sig = torch.as_tensor(sigma, dtype=torch.float64)
        if not bool(torch.isfinite(sig).all()):
            raise ValueError("to_sigma_space: sigma = inf (s = 1, pure noise) has no finite sigma-space state; "
                             "sample_flow takes the step from the noise end in closed form")
        return z * _bcast((self.noise_scale + sig) / self.noise_scale, z)

    def from_sigma_space(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """``z = x k / (k + sigma)``: back to the model's own space (``z = x`` at sigma = 0)."""
        sig = torch.as_tensor(sigma, dtype=torch.float64)
        return x * _bcast(self.noise_scale / (self.noise_scale + sig), x)

    # -- evaluation ---------------------------------------------------------------------------------------------
    def net_time(self, s: torch.Tensor) -> torch.Tensor:
        """The network's ``t`` at flow times ``s`` (float64 ``(B,)``)."""
        if self.timestep is not None:
            return self.timestep(s)
        return (s if self.noise_at == 1 else 1 - s) * self.time_scale

    def denoise_flow(self, z: torch.Tensor, s: torch.Tensor, **extra_args) -> torch.Tensor:
        """``E[x0 | z]`` at flow times ``s`` (``(B,)``, noise at 1; ``s = 1`` is evaluated as it is)."""
        s64 = torch.as_tensor(s, dtype=torch.float64, device=z.device).reshape(-1)
        if s64.numel() == 1 and z.shape[0] != 1:
            s64 = s64.expand(z.shape[0])
        t = self.net_time(s64)
        t = t.to(z.dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
        out = self.call(self.net, z, t, extra_args) if self.call is not None else self.net(z, t, **extra_args)
        out = _unpack(out)
        sv = _bcast(s64, z)
        if self.prediction == "x0":
            return out
        if self.prediction == "velocity":
            v = out if self.noise_at == 1 else -out  # dz/ds
            return z - sv * v
        if bool((s64 >= 1).any()):
            raise ValueError("an epsilon-prediction flow model has no x0 estimate at the noise end (s = 1, "
                             "sigma = inf): start the schedule below it (e.g. s = 1 - 1/1000 as diffusers does)")
        # 1 / (1 - s) in float64: at a large finite sigma s rounds to 1 in the sample's dtype
        return (z - sv * self.noise_scale * out) * _bcast(1 / (1 - s64), z)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args) -> torch.Tensor:
        sig = torch.as_tensor(sigma, device=x.device).reshape(-1)
        if sig.numel() == 1 and x.shape[0] != 1:
            sig = sig.expand(x.shape[0])
        if not bool(torch.isfinite(sig).all()):
            raise ValueError("sigma = inf (s = 1, pure noise) has no sigma-space input x: evaluate the noise end "
                             "with denoise_flow(z, s=1), or sample through sample_flow")
        return self.denoise_flow(self.from_sigma_space(x, sig), self.flow_time(sig), **extra_args)


def _unpack(out):
    if hasattr(out, "sample"):
        return out.sample
    return out[0] if isinstance(out, tuple) else out


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``v`` ((B,) or scalar, float64) as a ``(B, 1, ...)`` factor in ``like``'s dtype and device."""
    v = torch.as_tensor(v, dtype=torch.float64, device=like.device)
    return v.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype) if v.dim() else v.to(like.dtype)


# -- time grids ------------------------------------------------------------------------------------------------
def _times(times, name: str) -> torch.Tensor:
    t = torch.as_tensor(times, dtype=torch.float64)
    if t.dim() > 1:
        raise ValueError(f"{name} must be a scalar or 1-D, got shape {tuple(t.shape)}")
    if bool(torch.isnan(t).any()):
        raise ValueError(f"{name} contains NaN")
    return t


def flow_times_to_sigmas(times, noise_scale: float = 1.0) -> torch.Tensor:
    """Flow times ``s`` in [0, 1] (noise at 1) -> sigmas ``k s / (1 - s)``, float64; ``s = 1 -> inf``.

    Sigma grids that start at ``inf`` run through :func:`sample_flow` (the samplers themselves take finite
    sigmas only)."""
    k = _check_positive(noise_scale, "noise_scale")
    s = _times(times, "times")
    if bool(((s < 0) | (s > 1)).any()):
        raise ValueError(f"times must lie in [0, 1] (noise at 1), got {s.tolist()}")
    return torch.where(s >= 1, torch.full_like(s, math.inf), k * s / (1 - s).clamp_min(1e-300))


def sigmas_to_flow_times(sigmas, noise_scale: float = 1.0) -> torch.Tensor:
    """Sigmas -> flow times ``s = sigma / (k + sigma)``, float64 (``inf -> 1``, exactly)."""
    k = _check_positive(noise_scale, "noise_scale")
    sig = torch.as_tensor(sigmas).to(torch.float64)
    if bool((torch.isnan(sig) | (sig < 0)).any()):
        raise ValueError(f"sigmas must be non-negative, got {sig.tolist()}")
    return torch.where(torch.isinf(sig), torch.ones_like(sig), sig / (k + sig))


def shift_flow_times(times, shift: float | None = None, mu: float | None = None,
                     time_shift: str = "exponential") -> torch.Tensor:
    """The resolution shift of SD3 / Flux hosts on flow times ``s`` (noise at 1), float64.

    ``shift``: ``s' = shift s / (1 + (shift - 1) s)`` (diffusers' ``shift`` / ``flow_shift``; 3.0 for SD3).
    ``mu`` (dynamic shifting, :func:`dynamic_shift_mu`): ``exp(mu) / (exp(mu) + 1/s - 1)`` for
    ``time_shift="exponential"`` (= ``shift = exp(mu)``), ``mu / (mu + 1/s - 1)`` for ``"linear"``.
    Give one of ``shift`` and ``mu``. In sigma space a shift multiplies every sigma by ``shift``."""
    if (shift is None) == (mu is None):
        raise ValueError("shift_flow_times: give exactly one of shift and mu")
    s = _times(times, "times")
    if shift is not None:
        factor = _check_positive(shift, "shift")
    elif time_shift == "exponential":
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu):
            raise ValueError(f"mu must be a finite number, got {mu!r}")
        factor = math.exp(mu)
    elif time_shift == "linear":
        factor = _check_positive(mu, "mu (linear time_shift)")
    else:
        raise ValueError(f"time_shift must be 'exponential' or 'linear', got {time_shift!r}")
    return factor * s / (1 + (factor - 1) * s)


def dynamic_shift_mu(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                     base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """``mu`` of the SD3 / Flux pipelines: linear in the number of image tokens, ``base_shift`` at
    ``base_seq_len`` and ``max_shift`` at ``max_seq_len`` (defaults: diffusers' scheduler config)."""
    if isinstance(image_seq_len, bool) or not isinstance(image_seq_len, int) or image_seq_len < 1:
        raise ValueError(f"image_seq_len must be a positive int, got {image_seq_len!r}")
    if not base_seq_len < max_seq_len:
        raise ValueError(f"need base_seq_len < max_seq_len, got {base_seq_len}, {max_seq_len}")
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return float(image_seq_len * slope + base_shift - slope * base_seq_len)


def flow_times(steps: int, shift: float | None = None, mu: float | None = None, t_min: float = 1e-3,
               time_shift: str = "exponential") -> torch.Tensor:
    """``steps`` flow times uniform from 1 (pure noise) to ``t_min``, shifted, then 0: ``steps + 1`` values.

    (diffusers' ``FlowMatchEulerDiscreteScheduler`` also shifts its lower end ``1/T`` once more; for its exact
    grid use :func:`covkernels.adapters.diffusers.scheduler_sigmas`.)"""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not (isinstance(t_min, (int, float)) and 0 < t_min < 1):
        raise ValueError(f"t_min must lie in (0, 1), got {t_min!r}")
    s = torch.linspace(1.0, t_min, steps, dtype=torch.float64)
    if shift is not None or mu is not None:
        s = shift_flow_times(s, shift=shift, mu=mu, time_shift=time_shift)
    return torch.cat([s, s.new_zeros(1)])


# -- sampling from pure noise ----------------------------------------------------------------------------------
def sample_flow(model: FlowDenoiser, sampler: str, sigmas, *, noise: torch.Tensor | None = None, shape=None,
                generator: torch.Generator | None = None, extra_args: dict | None = None, guidance=None,
                disable=None, dtype: torch.dtype = torch.float32, device=None, data_range=(-1.0, 1.0),
                has_vae: bool = False, **options) -> torch.Tensor:
    """Sample a flow model with a registered sampler; returns the final state in the model's own space
    (``z``; at a final sigma of 0 that is the clean sample itself).

    ``sigmas``: decreasing, e.g. ``flow_times_to_sigmas(flow_times(8, shift=3.0))`` or the diffusers
    adapter's ``scheduler_sigmas``; it may start at ``inf`` (``s = 1``): then the first step is the exact
    noise-end step ``x_1 = D(k eps, s=1) + sigma_1 eps`` (one evaluation, deterministic for every sampler)
    and the sampler runs on ``sigmas[1:]`` (a multistep solver restarts; see the module docstring for how
    that compares with starting just below ``s = 1``). ``noise``: the standard-normal ``eps`` of shape ``(B, ...)``
    (else drawn from ``generator`` with ``shape``); the host convention of starting from pure noise
    ``z_0 = k eps`` at the first time is kept also when that time is below 1 (``x_0 = (k + sigma_0) eps``).
    ``guidance``: a :class:`covkernels.Guidance` (or scale) for the conditional ``extra_args``: passed to
    samplers that take it, else through ``covkernels.cfg_denoiser``. ``options`` go to the sampler.
    ``data_range``: the model's data range, which scales the covariance samplers' default window
    (``cov_sigma_max`` 1.0 for [-1, 1]); they warn when it covers few steps
    (:class:`~covkernels.adapters.guards.CovarianceWindowWarning`), and on inputs with more than 4 channels
    (:class:`~covkernels.adapters.guards.LatentDiffusionWarning`; also with ``has_vae``, a latent pipeline).
    ``model``: a :class:`FlowDenoiser`, or a denoiser with one as ``.flow`` (the diffusers adapter).
    """
    from ..guidance import as_guidance
    from ..samplers import spec

    flow = getattr(model, "flow", model)
    if not isinstance(flow, FlowDenoiser):
        raise TypeError(f"model must be a FlowDenoiser (or have one as .flow), got {type(model).__name__}")
    sig = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu().reshape(-1)
    if sig.numel() < 2 or bool((sig[1:] >= sig[:-1]).any()) or bool(torch.isinf(sig[1:]).any()):
        raise ValueError(f"sigmas must be strictly decreasing with only the first one possibly inf, "
                         f"got {sig.tolist()}")
    eps = _initial_noise(noise, shape, generator, dtype, device)
    s_spec, g, extra = spec(sampler), as_guidance(guidance), extra_args or {}
    warn_if_latent(sampler, s_spec.family, eps.shape[1], has_vae=has_vae)
    denoiser, options = with_guidance(model, sampler, g, options)
    tail = torch.as_tensor(sigmas).reshape(-1).to(eps.device, eps.dtype)  # k-diffusion promotes x to sigmas dtype
    unknown = sorted(k for k in options if not s_spec.takes(k))
    if unknown:  # refused here too: the one-step grid below never reaches the sampler's own check
        raise TypeError(f"sample_flow: {sampler!r} takes no option(s) {unknown}; its options: {list(s_spec.options())}")
    if math.isinf(float(sig[0])):
        d_end = _noise_end_denoised(flow, eps * flow.noise_scale, extra, g)
        if not bool(torch.isfinite(d_end).all()):
            raise NonFiniteError("the model returned NaN/Inf (denoised) at the noise-end step (s = 1, sigma = inf)")
        if float(sig[1]) == 0:
            return d_end
        x = d_end + eps * float(sig[1])
        tail = tail[1:]
    else:
        x = eps * (flow.noise_scale + float(sig[0]))
    options = covariance_window(s_spec, tail.tolist(), options, data_range)
    out = s_spec.fn(denoiser, x, tail, extra_args=extra, disable=disable, generator=generator, **options)
    return flow.from_sigma_space(out, float(sig[-1]))


def with_guidance(model, sampler: str, guidance, options: dict):
    """``(denoiser, options)`` for a guided run: the :class:`~covkernels.Guidance` goes to a sampler that takes
    it (the registry's options), else the model becomes ``cfg_denoiser(model, guidance)``; the registry's
    guided defaults (e.g. UniPC order 2) fill options the caller left unset."""
    from ..guidance import as_guidance, cfg_denoiser
    from ..samplers import spec

    g = as_guidance(guidance)
    if g is None:
        return model, options
    s_spec = spec(sampler)
    options = {**s_spec.guided_defaults, **options}
    if s_spec.takes_guidance:
        return model, {**options, "guidance": g}
    return cfg_denoiser(model, g), options


def _initial_noise(noise, shape, generator, dtype, device) -> torch.Tensor:
    if noise is not None:
        if shape is not None:
            raise ValueError("give noise or shape, not both")
        if not isinstance(noise, torch.Tensor) or not noise.is_floating_point() or noise.dim() < 2:
            raise TypeError("noise must be a floating-point tensor of shape (B, ...)")
        return noise
    if shape is None:
        raise ValueError("give noise (standard normal, (B, ...)) or shape")
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)


def _noise_end_denoised(model: FlowDenoiser, z: torch.Tensor, extra: dict, g) -> torch.Tensor:
    """``D`` at ``s = 1`` (pure noise), guided when ``g`` applies at ``sigma = inf``."""
    with torch.no_grad():
        s = torch.ones(z.shape[0], dtype=torch.float64)
        d_cond = model.denoise_flow(z, s, **extra)
        if g is None or not bool(g.active(torch.tensor([math.inf])).all()):
            return d_cond
        uncond = getattr(g.uncond_model, "flow", g.uncond_model) or model
        if not isinstance(uncond, FlowDenoiser):
            raise TypeError("guidance uncond_model must be a FlowDenoiser to guide the step from the noise end")
        d_uncond = uncond.denoise_flow(z, s, **(g.uncond_args or {}))
        return d_uncond + g.scale * (d_cond - d_uncond)
