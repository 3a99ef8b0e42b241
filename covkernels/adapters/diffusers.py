"""diffusers UNets as sigma-space denoisers, and their schedulers' timesteps as sigmas.

A discrete VP model with cumulative alphas ``abar_t`` sees ``x_vp = sqrt(abar) x0 + sqrt(1 - abar) eps``;
in the sigma convention ``x = x_vp / sqrt(abar) = x0 + sigma eps`` with ``sigma_t = sqrt((1 - abar_t) /
abar_t)``. :class:`DiffusersDenoiser` maps ``(x, sigma)`` to ``(x_vp, t)`` (sigma -> the nearest training
timestep, or a fractional one interpolated in log sigma, as diffusers' Karras-sigma schedulers do), calls
the UNet and turns its output into ``D(x, sigma) = E[x0 | x]`` for ``prediction_type`` epsilon,
v_prediction or sample. With ``clip_sample`` the denoised estimate is clipped; unlike diffusers'
``DDIMScheduler`` (which keeps the model's unclipped epsilon next to the clipped x0) covkernels then
derives the step from the clipped estimate, so the two agree exactly only with ``clip_sample=False``.

No scheduler-shaped object: a diffusers scheduler's ``step(model_output, t, sample)`` never sees the model,
and the covariance samplers need it (the JVP). A "scheduler" holding the model would be a sampler in
disguise that silently evaluates the model again inside ``step``; :func:`sample` (one call) and the
``sample_*`` functions on a :class:`DiffusersDenoiser` are the honest shapes.
"""
from __future__ import annotations

import torch

from ..schedules import alphas_cumprod_to_sigmas

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class DiffusersDenoiser(torch.nn.Module):
    """``D(x, sigma, **extra_args)`` from a diffusers ``UNet2DModel``/``UNet2DConditionModel`` and the
    scheduler (or its config) it was trained with. ``extra_args`` go to the UNet (``class_labels``,
    ``encoder_hidden_states``, ...). ``timesteps``: ``"nearest"`` or ``"interpolate"``."""

    def __init__(self, unet, scheduler, *, prediction_type: str | None = None, clip_sample: bool | None = None,
                 timesteps: str = "nearest"):
        super().__init__()
        ac = getattr(scheduler, "alphas_cumprod", None)
        if ac is None:
            raise TypeError("scheduler must be a diffusers scheduler with alphas_cumprod (e.g. DDIMScheduler)")
        config = scheduler.config
        self.unet = unet
        self.prediction_type = prediction_type or config.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        self.clip_sample = config.get("clip_sample", False) if clip_sample is None else bool(clip_sample)
        self.clip_range = float(config.get("clip_sample_range", 1.0))
        if timesteps not in ("nearest", "interpolate"):
            raise ValueError(f"timesteps must be 'nearest' or 'interpolate', got {timesteps!r}")
        self.timesteps = timesteps
        self.register_buffer("log_sigmas", alphas_cumprod_to_sigmas(ac).log(), persistent=False)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Training timestep(s) of ``sigma (B,)``: nearest (long) or interpolated in log sigma (float)."""
        log_sigmas = self.log_sigmas.to(sigma.device)
        ls = sigma.to(torch.float64).clamp_min(torch.finfo(torch.float64).tiny).log()
        dist = (ls[:, None] - log_sigmas[None, :]).abs()
        if self.timesteps == "nearest":
            return dist.argmin(dim=1)
        low = torch.searchsorted(log_sigmas, ls).clamp(1, len(log_sigmas) - 1) - 1
        w = ((ls - log_sigmas[low]) / (log_sigmas[low + 1] - log_sigmas[low])).clamp(0, 1)
        return (low + w).to(torch.float32)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args) -> torch.Tensor:
        s = sigma.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        c_in = 1 / (1 + s ** 2).sqrt()  # sqrt(abar): x_vp = x * sqrt(abar)
        out = self.unet(x * c_in, self.sigma_to_t(sigma), **extra_args)
        out = out.sample if hasattr(out, "sample") else out[0] if isinstance(out, tuple) else out
        if self.prediction_type == "epsilon":
            d = x - s * out
        elif self.prediction_type == "v_prediction":
            d = c_in ** 2 * x - s * c_in * out  # x0 = sqrt(abar) x_vp - sqrt(1 - abar) v
        else:
            d = out
        return d.clamp(-self.clip_range, self.clip_range) if self.clip_sample else d


def scheduler_sigmas(scheduler, num_inference_steps: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The sigmas of the scheduler's own inference timesteps (its spacing and ``steps_offset``), ending
    in 0 when the last step goes to ``abar = 1`` (``set_alpha_to_one``, the default), else in the sigma of
    ``abar_0``. float32 by default (k-diffusion's convention); float64 keeps the schedule's precision."""
    scheduler.set_timesteps(num_inference_steps)
    sig = alphas_cumprod_to_sigmas(scheduler.alphas_cumprod)
    steps = sig[scheduler.timesteps.long()]
    final = 0.0 if scheduler.config.get("set_alpha_to_one", True) else float(sig[0])
    return torch.cat([steps, torch.tensor([final], dtype=steps.dtype)]).to(dtype=dtype, device=device)


class LatentDiffusionWarning(UserWarning):
    """Structured covariance noise on a latent diffusion model: the covariance-aware DDIM paper reports that
    it hurts there (plain DDIM wins). Silence with ``warnings.simplefilter("ignore", LatentDiffusionWarning)``
    to proceed anyway."""


def sample(pipe_or_unet, scheduler=None, sampler: str | None = None, num_inference_steps: int = 8,
           batch_size: int = 1, guidance_scale: float | None = None, extra_args: dict | None = None,
           uncond_args: dict | None = None, generator: torch.Generator | None = None, latents: torch.Tensor = None,
           disable=None, **options) -> torch.Tensor:
    """One call, like a diffusers pipeline: images ``(B, C, H, W)`` in [0, 1] (diffusers' ``output_type="pt"``).

    ``pipe_or_unet``: a pipeline with ``.unet`` (and ``.scheduler``, ``.vae`` for latent pipelines) or a
    bare UNet with ``scheduler``. Conditioning goes in ``extra_args`` (``class_labels``,
    ``encoder_hidden_states``); with ``guidance_scale`` the unconditional branch gets ``uncond_args`` and
    the samplers with a ``guidance`` option use the JVP engine's guided step (3 evaluations per step); the
    mean-only baselines get a guided denoiser (with the registry's guided defaults, e.g. UniPC order 2, unless
    given). ``latents``: initial VP noise (else drawn from
    ``generator``). Latent pipelines are decoded with their VAE; the covariance samplers on them warn once
    (:class:`LatentDiffusionWarning`). ``sampler``: a registry name (default: the package default,
    ``covkernels.samplers.api.DEFAULT_SAMPLER``). ``options`` go to the sampler.
    """
    import inspect
    import warnings

    from .. import sampling
    from ..guidance import Guidance, cfg_denoiser
    from ..samplers import spec
    from ..samplers.api import DEFAULT_SAMPLER

    sampler = DEFAULT_SAMPLER if sampler is None else sampler
    unet = getattr(pipe_or_unet, "unet", pipe_or_unet)
    scheduler = scheduler if scheduler is not None else getattr(pipe_or_unet, "scheduler", None)
    if scheduler is None:
        raise ValueError("scheduler is required when pipe_or_unet is a bare UNet")
    vae = getattr(pipe_or_unet, "vae", None)
    if vae is not None and spec(sampler).family == "covariance":
        warnings.warn(f"{sampler} on a latent diffusion model: structured covariance noise is reported to hurt "
                      f"latent models (plain ddim wins); proceeding", LatentDiffusionWarning, stacklevel=2)
    model = DiffusersDenoiser(unet, scheduler)
    fn = sampling.get_sampler(sampler)
    param = next(unet.parameters())
    sigmas = scheduler_sigmas(scheduler, num_inference_steps, device=param.device)
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    shape = (batch_size, unet.config.in_channels, *size)
    if latents is None:
        latents = torch.randn(shape, generator=generator, device=param.device, dtype=param.dtype)
    x = latents.to(param.dtype) * (1 + sigmas[0] ** 2).sqrt().to(param.dtype)  # VP noise -> sigma space
    if guidance_scale is not None:
        g = Guidance(float(guidance_scale), uncond_args=uncond_args)
        options = {**spec(sampler).guided_defaults, **options}  # e.g. UniPC's order 2 under guidance
        if "guidance" in inspect.signature(fn).parameters:
            options["guidance"] = g
        else:
            model = cfg_denoiser(model, g)
    out = fn(model, x, sigmas, extra_args=extra_args, disable=disable, generator=generator, **options)
    if vae is not None:
        out = vae.decode(out / vae.config.scaling_factor).sample
    return (out / 2 + 0.5).clamp(0, 1)
