"""Warnings the adapters give before a covariance sampler runs on a host's model.

- :class:`LatentDiffusionWarning`: a pipeline with a VAE, or inputs with more than 4 channels (SD3 / Flux
  latents have 16), look like latent diffusion, where the covariance-aware DDIM paper reports that
  structured noise hurts (plain DDIM wins).
- :class:`CovarianceWindowWarning`: the covariance samplers use JVPs only on steps with
  ``sigma <= cov_sigma_max`` (default 1.0, for data in [-1, 1]); on a host's schedule that window can cover
  only a few steps (DDPM's 10 leading-spaced steps: 2), so the sampler is mostly plain DDIM. The adapters
  scale the default window with the model's data range and say when it covers fewer than half the steps.
"""
from __future__ import annotations

import math
import warnings

__all__ = ["LatentDiffusionWarning", "CovarianceWindowWarning", "warn_if_latent", "covariance_window",
           "LATENT_CHANNELS"]

LATENT_CHANNELS = 4  # more input channels than this: a latent model (pixel models have 1, 3 or 4)


class LatentDiffusionWarning(UserWarning):
    """Structured covariance noise on a latent diffusion model: the covariance-aware DDIM paper reports that
    it hurts there (plain DDIM wins). Silence with ``warnings.simplefilter("ignore", LatentDiffusionWarning)``
    to proceed anyway."""


class CovarianceWindowWarning(UserWarning):
    """The covariance window (``cov_sigma_max``) covers fewer than half of the schedule's steps."""


def warn_if_latent(sampler: str, family: str, channels: int, has_vae: bool, stacklevel: int = 3) -> None:
    """Warn (:class:`LatentDiffusionWarning`) before a covariance sampler runs on a latent-looking model."""
    if family != "covariance":
        return
    why = "a pipeline with a VAE" if has_vae else \
        f"inputs with {channels} channels (> {LATENT_CHANNELS}: latents)" if channels > LATENT_CHANNELS else None
    if why is not None:
        warnings.warn(f"{sampler} on a latent diffusion model ({why}): structured covariance noise is reported "
                      f"to hurt latent models (plain ddim wins); proceeding", LatentDiffusionWarning,
                      stacklevel=stacklevel)


def covariance_window(sampler_spec, sigmas, options: dict, data_range=(-1.0, 1.0), stacklevel: int = 3) -> dict:
    """``options`` with the default ``cov_sigma_max`` scaled to the model's data range (1.0 for [-1, 1]:
    half the range), and a :class:`CovarianceWindowWarning` when that window covers fewer than half of the
    steps before the last (an explicit ``cov_sigma_max`` is kept as given and not second-guessed)."""
    from ..samplers.common import COV_SIGMA_MAX

    if not sampler_spec.windowed or "cov_sigma_max" in options:
        return options
    low, high = (float(v) for v in data_range)
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(f"data_range must be (low, high) with low < high, got {data_range!r}")
    window = COV_SIGMA_MAX * (high - low) / 2
    s = [float(v) for v in sigmas]
    steps = [t for t, u in zip(s[:-1], s[1:]) if u > 0]  # the last step to 0 is a plain denoise anyway
    covered = sum(t <= window for t in steps)
    if steps and covered < len(steps) / 2:
        warnings.warn(
            f"{sampler_spec.name}: its covariance window cov_sigma_max={window:g} (data in [{low:g}, {high:g}]) "
            f"covers {covered} of the {len(steps)} steps before the last of this schedule (sigma "
            f"{s[0]:.4g} -> {s[-2]:.4g}); the others are plain DDIM steps. Pass cov_sigma_max=float('inf') for "
            f"the published methods, a larger window, or more steps", CovarianceWindowWarning,
            stacklevel=stacklevel)
    return {**options, "cov_sigma_max": window}
