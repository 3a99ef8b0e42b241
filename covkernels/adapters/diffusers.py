"""diffusers models as sigma-space denoisers, and their schedulers' timesteps as sigmas.

A discrete VP model with cumulative alphas ``abar_t`` sees ``x_vp = sqrt(abar) x0 + sqrt(1 - abar) eps``;
in the sigma convention ``x = x_vp / sqrt(abar) = x0 + sigma eps`` with ``sigma_t = sqrt((1 - abar_t) /
abar_t)``. :class:`DiffusersDenoiser` maps ``(x, sigma)`` to ``(x_vp, t)`` (sigma -> the nearest training
timestep, or a fractional one interpolated in log sigma, as diffusers' Karras-sigma schedulers do), calls
the model and turns its output into ``D(x, sigma) = E[x0 | x]`` for ``prediction_type`` epsilon,
v_prediction or sample. A rectified-flow scheduler (``FlowMatchEulerDiscreteScheduler``, or
``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler`` with ``use_flow_sigmas``) makes it a
:class:`covkernels.adapters.flow.FlowDenoiser` with ``noise_scale=1``, ``time_scale=num_train_timesteps``.

Every model is called the same way: ``model(sample, timestep=t, **extra_args)``, the sample positionally and
the timestep by keyword, so ``UNet2DModel``, ``UNet2DConditionModel``, ``DiTTransformer2DModel``,
``PixArtTransformer2DModel`` (whose second positional argument is ``encoder_hidden_states``) and any module
with a ``(sample or hidden_states, timestep, ...)`` forward fit. An output with twice the input's channels
is a learned-variance (ADM / DiT) output: its first half is the prediction.

``clip_sample``: diffusers' ``DDIMScheduler`` clips the x0 estimate but by default keeps the model's
unclipped epsilon for the step; covkernels steps from the clipped estimate, which is diffusers' step with
``use_clipped_model_output=True``. The two loops therefore agree exactly only with ``clip_sample=False`` (or
``use_clipped_model_output=True`` on diffusers' side), and a clipping adapter warns once
(:class:`ClipSampleWarning`).

No scheduler-shaped object: a diffusers scheduler's ``step(model_output, t, sample)`` never sees the model,
and the covariance samplers need it (the JVP). A "scheduler" holding the model would be a sampler in
disguise that silently evaluates the model again inside ``step``; :func:`sample` (one call) and the
``sample_*`` functions on a :class:`DiffusersDenoiser` are the honest shapes.
"""
from __future__ import annotations

import warnings

import torch

from ..schedules import alphas_cumprod_to_sigmas
from .flow import FlowDenoiser, flow_times_to_sigmas
from .guards import CovarianceWindowWarning, LatentDiffusionWarning, covariance_window, warn_if_latent  # noqa: F401

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# diffusers' prediction_type with flow sigmas -> FlowDenoiser's prediction
FLOW_PREDICTIONS = {"flow_prediction": "velocity", "sample": "x0", "epsilon": "epsilon"}


class ClipSampleWarning(UserWarning):
    """The adapter clips the x0 estimate and steps from it; diffusers' DDIM loop (by default) does not."""


def is_flow_scheduler(scheduler) -> bool:
    """Rectified-flow schedulers: ``FlowMatch*`` ones, and multistep ones configured with ``use_flow_sigmas``."""
    config = getattr(scheduler, "config", {})
    return type(scheduler).__name__.startswith("FlowMatch") or bool(config.get("use_flow_sigmas", False))


def call_model(net, sample: torch.Tensor, t, extra_args: dict) -> torch.Tensor:
    """The one documented call of a diffusers model: ``net(sample, timestep=t, **extra_args)``, unpacked;
    a learned-variance output (twice the channels) gives its first half."""
    out = net(sample, timestep=t, **extra_args)
    out = out.sample if hasattr(out, "sample") else out[0] if isinstance(out, tuple) else out
    if out.dim() >= 2 and out.shape[1] == 2 * sample.shape[1]:
        out = out[:, :sample.shape[1]]
    return out


class _SchedulerTimesteps:
    """Flow time ``s`` -> the timestep the scheduler's own loop gives the model at that sigma: its current
    ``timesteps`` entry when ``s`` is one of its current sigmas (so DPM-Solver's ``int64(s * T)`` truncation
    is reproduced), else ``s * T``."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.scale = float(scheduler.config.get("num_train_timesteps", 1000))

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        table = getattr(self.scheduler, "timesteps", None)
        sig = getattr(self.scheduler, "sigmas", None)
        t = (s * self.scale).to(torch.float32)
        if table is None or sig is None or not len(table):
            return t
        flow_s = torch.as_tensor(sig[:len(table)], dtype=torch.float64).to(s.device)
        dist = (s[:, None] - flow_s[None, :]).abs()
        best, idx = dist.min(dim=1)
        own = torch.as_tensor(table).to(s.device)[idx]
        if not own.is_floating_point():
            return own if bool((best <= 1e-5).all()) else t
        return torch.where(best <= 1e-5, own.to(torch.float32), t)


class DiffusersDenoiser(torch.nn.Module):
    """``D(x, sigma, **extra_args)`` from a diffusers model and the scheduler (or its config) it was trained
    with.

    Args:
        unet: the network, any diffusers ``ModelMixin`` (or module) called as
            ``unet(sample, timestep=t, **extra_args)``: ``UNet2DModel``, ``UNet2DConditionModel``,
            ``DiTTransformer2DModel``, ``PixArtTransformer2DModel``, a JiT-like ViT. ``extra_args``
            (``class_labels``, ``encoder_hidden_states``, ...) come from the sampler.
        scheduler: a VP scheduler with ``alphas_cumprod`` (``DDIMScheduler``, ``DDPMScheduler``, ...) or a
            flow scheduler (``FlowMatchEulerDiscreteScheduler``; ``DPMSolverMultistepScheduler`` /
            ``UniPCMultistepScheduler`` with ``use_flow_sigmas=True``).
        prediction_type: overrides the scheduler config's. VP: epsilon, v_prediction or sample; flow:
            flow_prediction (velocity; ``FlowMatchEulerDiscreteScheduler``'s), sample or epsilon.
        clip_sample: clip the x0 estimate to ``clip_sample_range`` (VP only; default: the config's). Warns
            once (:class:`ClipSampleWarning`) since diffusers' DDIM keeps the unclipped epsilon by default.
        timesteps: VP: ``"nearest"`` (default) or ``"interpolate"``; flow: ``"scheduler"`` (default: the
            scheduler's own timestep at its own sigmas, else ``s * T``) or ``"continuous"`` (``s * T``).
    """

    def __init__(self, unet, scheduler, *, prediction_type: str | None = None, clip_sample: bool | None = None,
                 timesteps: str | None = None):
        super().__init__()
        config = scheduler.config
        self.unet = unet
        self.flow = None
        self.clip_range = float(config.get("clip_sample_range", 1.0))
        self.data_range = (-self.clip_range, self.clip_range)  # diffusers' pixel models: data in [-1, 1]
        if is_flow_scheduler(scheduler):
            self._init_flow(scheduler, prediction_type, clip_sample, timesteps)
            return
        ac = getattr(scheduler, "alphas_cumprod", None)
        if ac is None:
            raise TypeError("scheduler must be a diffusers scheduler with alphas_cumprod (e.g. DDIMScheduler) "
                            "or a flow scheduler (FlowMatchEulerDiscreteScheduler, use_flow_sigmas=True)")
        self.prediction_type = prediction_type or config.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        self.clip_sample = config.get("clip_sample", False) if clip_sample is None else bool(clip_sample)
        if self.clip_sample:
            warnings.warn(
                f"DiffusersDenoiser clips the x0 estimate to [-{self.clip_range:g}, {self.clip_range:g}] "
                f"(clip_sample=True, from {'the argument' if clip_sample else 'the scheduler config'}) and steps "
                f"from the clipped estimate, as diffusers' DDIMScheduler.step(..., use_clipped_model_output=True); "
                f"diffusers' default keeps the unclipped epsilon, so the two loops differ (by up to ~0.7 on a "
                f"random UNet). Pass clip_sample=False (DiffusersDenoiser or sample()) for parity with diffusers' "
                f"default loop with clip_sample=False", ClipSampleWarning, stacklevel=2)
        timesteps = "nearest" if timesteps is None else timesteps
        if timesteps not in ("nearest", "interpolate"):
            raise ValueError(f"timesteps must be 'nearest' or 'interpolate' for a VP scheduler, got {timesteps!r}")
        self.timesteps = timesteps
        self.register_buffer("log_sigmas", alphas_cumprod_to_sigmas(ac).log(), persistent=False)

    def _init_flow(self, scheduler, prediction_type, clip_sample, timesteps):
        kind = prediction_type or scheduler.config.get("prediction_type") or "flow_prediction"
        if kind not in FLOW_PREDICTIONS:
            raise ValueError(f"prediction_type must be one of {tuple(FLOW_PREDICTIONS)} with a flow scheduler, "
                             f"got {kind!r}")
        if clip_sample:
            raise ValueError("clip_sample applies to VP schedulers only, not to a flow scheduler")
        timesteps = "scheduler" if timesteps is None else timesteps
        if timesteps not in ("scheduler", "continuous"):
            raise ValueError(f"timesteps must be 'scheduler' or 'continuous' for a flow scheduler, got {timesteps!r}")
        self.prediction_type, self.clip_sample, self.timesteps = kind, False, timesteps
        scale = float(scheduler.config.get("num_train_timesteps", 1000))
        rule = _SchedulerTimesteps(scheduler) if timesteps == "scheduler" else None
        self.flow = FlowDenoiser(self.unet, FLOW_PREDICTIONS[kind], noise_at=1, noise_scale=1.0,
                                 time_scale=1.0 if rule is not None else scale, timestep=rule, call=call_model)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Training timestep(s) of ``sigma (B,)``: nearest (long) or interpolated in log sigma (float)."""
        if self.flow is not None:
            return self.flow.net_time(self.flow.flow_time(sigma))
        log_sigmas = self.log_sigmas.to(sigma.device)
        ls = sigma.to(torch.float64).clamp_min(torch.finfo(torch.float64).tiny).log()
        dist = (ls[:, None] - log_sigmas[None, :]).abs()
        if self.timesteps == "nearest":
            return dist.argmin(dim=1)
        low = torch.searchsorted(log_sigmas, ls).clamp(1, len(log_sigmas) - 1) - 1
        w = ((ls - log_sigmas[low]) / (log_sigmas[low + 1] - log_sigmas[low])).clamp(0, 1)
        return (low + w).to(torch.float32)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args) -> torch.Tensor:
        if self.flow is not None:
            return self.flow(x, sigma, **extra_args)
        s = sigma.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        c_in = 1 / (1 + s ** 2).sqrt()  # sqrt(abar): x_vp = x * sqrt(abar)
        out = call_model(self.unet, x * c_in, self.sigma_to_t(sigma), extra_args)
        if self.prediction_type == "epsilon":
            d = x - s * out
        elif self.prediction_type == "v_prediction":
            d = c_in ** 2 * x - s * c_in * out  # x0 = sqrt(abar) x_vp - sqrt(1 - abar) v
        else:
            d = out
        return d.clamp(-self.clip_range, self.clip_range) if self.clip_sample else d


def scheduler_sigmas(scheduler, num_inference_steps: int, device=None, dtype=torch.float32,
                     mu: float | None = None) -> torch.Tensor:
    """The sigmas of the scheduler's own inference timesteps (its spacing, ``steps_offset``, shift).

    VP schedulers: ending in 0 when the last step goes to ``abar = 1`` (``set_alpha_to_one``, the default),
    else in the sigma of ``abar_0``. Flow schedulers: ``sigma = s / (1 - s)`` of its flow sigmas ``s``, so
    ``FlowMatchEulerDiscreteScheduler``'s first one is ``inf`` (``s = 1``: run it through
    :func:`covkernels.adapters.flow.sample_flow`, which takes that step in closed form); ``mu``: its dynamic
    shift (required with ``use_dynamic_shifting``, see ``flow.dynamic_shift_mu``), refused otherwise.
    float32 by default (k-diffusion's convention); float64 keeps the schedule's precision."""
    if is_flow_scheduler(scheduler):
        dynamic = bool(scheduler.config.get("use_dynamic_shifting", False))
        if mu is not None and not dynamic:
            raise ValueError("mu applies with use_dynamic_shifting=True only; this scheduler shifts by its "
                             "shift / flow_shift")
        if dynamic and mu is None:
            raise ValueError("this scheduler has use_dynamic_shifting=True: pass mu (e.g. "
                             "covkernels.adapters.flow.dynamic_shift_mu(image_seq_len))")
        scheduler.set_timesteps(num_inference_steps, **({"mu": mu} if dynamic else {}))
        return flow_times_to_sigmas(scheduler.sigmas.double()).to(dtype=dtype, device=device)
    if mu is not None:
        raise ValueError("mu applies to flow schedulers with use_dynamic_shifting only")
    scheduler.set_timesteps(num_inference_steps)
    sig = alphas_cumprod_to_sigmas(scheduler.alphas_cumprod)
    steps = sig[scheduler.timesteps.long()]
    final = 0.0 if scheduler.config.get("set_alpha_to_one", True) else float(sig[0])
    return torch.cat([steps, torch.tensor([final], dtype=steps.dtype)]).to(dtype=dtype, device=device)


def sample(pipe_or_unet, scheduler=None, sampler: str | None = None, num_inference_steps: int = 8,
           batch_size: int = 1, guidance_scale: float | None = None, extra_args: dict | None = None,
           uncond_args: dict | None = None, generator: torch.Generator | None = None, latents: torch.Tensor = None,
           disable=None, clip_sample: bool | None = None, mu: float | None = None,
           guidance_interval: tuple | None = None, **options) -> torch.Tensor:
    """One call, like a diffusers pipeline: images ``(B, C, H, W)`` in [0, 1] (diffusers' ``output_type="pt"``).

    ``pipe_or_unet``: a pipeline with ``.unet`` or ``.transformer`` (and ``.scheduler``, ``.vae`` for latent
    pipelines) or a bare model with ``scheduler``; VP and flow schedulers alike (:class:`DiffusersDenoiser`).
    Conditioning goes in ``extra_args`` (``class_labels``, ``encoder_hidden_states``); with
    ``guidance_scale`` the unconditional branch gets ``uncond_args`` (and ``guidance_interval``, a sigma
    interval, limits where it applies) and the samplers with a ``guidance`` option use the JVP engine's
    guided step (3 evaluations per step); the mean-only baselines get a guided denoiser (with the registry's
    guided defaults, e.g. UniPC order 2, unless given). ``latents``: the initial noise, standard normal as
    diffusers draws it (else drawn from ``generator``). ``clip_sample``: see :class:`DiffusersDenoiser`;
    ``mu``: a flow scheduler's dynamic shift. Latent pipelines are decoded with their VAE; the covariance
    samplers warn once on them (:class:`LatentDiffusionWarning`), and when their covariance window covers
    few of the scheduler's steps (:class:`CovarianceWindowWarning`; its default is scaled to the model's
    data range). ``sampler``: a registry name (default: ``dpmpp_2m``, the package's default on a host's
    schedule, ``covkernels.samplers.api.HOST_SCHEDULE_SAMPLER``; ``ipndm`` on sigmas its equal-step weights
    do not fit warns, :class:`~covkernels.samplers.api.StepSpacingWarning`). ``options`` go to the sampler.
    """
    from ..guidance import Guidance
    from ..samplers import spec
    from ..samplers.api import default_sampler, warn_spacing
    from .flow import sample_flow, with_guidance

    sampler = default_sampler(explicit_sigmas=True) if sampler is None else sampler
    s_spec = spec(sampler)
    net = _network(pipe_or_unet)
    scheduler = scheduler if scheduler is not None else getattr(pipe_or_unet, "scheduler", None)
    if scheduler is None:
        raise ValueError("scheduler is required when pipe_or_unet is a bare model")
    vae = getattr(pipe_or_unet, "vae", None)
    model = DiffusersDenoiser(net, scheduler, clip_sample=clip_sample)
    param = next(net.parameters())
    sigmas = scheduler_sigmas(scheduler, num_inference_steps, device=param.device, mu=mu)
    warn_spacing(sampler, sigmas[1:] if bool(torch.isinf(sigmas[0])) else sigmas)
    if latents is None:
        latents = torch.randn(_sample_shape(net, batch_size), generator=generator, device=param.device,
                              dtype=param.dtype)
    if guidance_scale is None and (uncond_args is not None or guidance_interval is not None):
        raise ValueError("uncond_args and guidance_interval need guidance_scale")
    g = None if guidance_scale is None else Guidance(float(guidance_scale), uncond_args=uncond_args,
                                                     interval=guidance_interval)
    if model.flow is not None:
        out = sample_flow(model, sampler, sigmas, noise=latents.to(param.dtype), generator=generator,
                          extra_args=extra_args, guidance=g, disable=disable, data_range=model.data_range,
                          has_vae=vae is not None, **options)
    else:
        warn_if_latent(sampler, s_spec.family, latents.shape[1], vae is not None)
        options = covariance_window(s_spec, sigmas, options, model.data_range)
        x = latents.to(param.dtype) * (1 + sigmas[0] ** 2).sqrt().to(param.dtype)  # VP noise -> sigma space
        denoiser, options = with_guidance(model, sampler, g, options)
        out = s_spec.fn(denoiser, x, sigmas, extra_args=extra_args, disable=disable, generator=generator,
                        **options)
    if vae is not None:
        # SD3 / Flux VAEs also shift their latents (diffusers' pipelines add shift_factor back before decoding)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        out = vae.decode(out / vae.config.scaling_factor + shift).sample
    return (out / 2 + 0.5).clamp(0, 1)


def _network(pipe_or_model):
    for name in ("unet", "transformer"):
        if getattr(pipe_or_model, name, None) is not None:
            return getattr(pipe_or_model, name)
    if not isinstance(pipe_or_model, torch.nn.Module):
        raise TypeError(f"pipe_or_unet must be a pipeline with .unet or .transformer, or a model, got "
                        f"{type(pipe_or_model).__name__}")
    return pipe_or_model


def _sample_shape(net, batch_size: int) -> tuple:
    size = net.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return (batch_size, net.config.in_channels, *size)
