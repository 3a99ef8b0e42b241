"""diffusers UNets as sigma-space denoisers, and their schedulers' timesteps as sigmas.

A discrete VP model with cumulative alphas ``abar_t`` sees ``x_vp = sqrt(abar) x0 + sqrt(1 - abar) eps``;
in the sigma convention ``x = x_vp / sqrt(abar) = x0 + sigma eps`` with ``sigma_t = sqrt((1 - abar_t) /
abar_t)``. :class:`DiffusersDenoiser` maps ``(x, sigma)`` to ``(x_vp, t)`` (sigma -> the nearest training
timestep, or a fractional one interpolated in log sigma, as diffusers' Karras-sigma schedulers do), calls
the UNet and turns its output into ``D(x, sigma) = E[x0 | x]`` for ``prediction_type`` epsilon,
v_prediction or sample. With ``clip_sample`` the denoised estimate is clipped; unlike diffusers'
``DDIMScheduler`` (which keeps the model's unclipped epsilon next to the clipped x0) covkernels then
derives the step from the clipped estimate, so the two agree exactly only with ``clip_sample=False``.
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
