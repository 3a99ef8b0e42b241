"""Analytic oracle denoisers (exact posterior means) usable as the ``model`` of any sampler.

``get_model(name)`` builds a named demo model: ``gmm`` (the 4-pattern Gaussian mixture of stationary
colour fields, 3 x 32 x 32), ``gaussian`` (one stationary colour field) — both analytic, with
``sample(n, generator)`` for exact data samples — ``digits`` (the trained 1 x 16 x 16 UNet denoiser
shipped with the package, see :mod:`covkernels.models.digits`), ``digits_ideal`` (the exact denoiser of the
tau-smoothed 1797 digits, :mod:`covkernels.models.digits_ideal`), ``patches`` (a trained 3 x 16 x 16 UNet
of photo patches, :mod:`covkernels.models.patches`), ``patches_flow`` (the same data and backbone trained
as a rectified-flow x-prediction network, run through the flow adapter, :mod:`covkernels.models.patches_flow`)
or ``patches_latent`` (a latent diffusion model of the same data: 4 x 8 x 8 latents with the autoencoder's
``decode``, :mod:`covkernels.models.patches_latent`).
Every model has ``event_shape``.
"""
from __future__ import annotations

import torch

from .gaussian import DenseGaussian, SpectralGaussian, sigma_view, stationary_spectrum
from .mixture import GaussianMixture, demo_mixture

MODELS = ("gmm", "gaussian", "digits", "digits_ideal", "patches", "patches_flow", "patches_latent")


def get_model(name: str, size: int | None = None) -> torch.nn.Module:
    """A named model: analytic ones of ``3 x size x size`` images (default 32; a multiple of 8 for convdct);
    ``digits``, ``digits_ideal`` (1 channel), ``patches`` and ``patches_flow`` (3) are always 16 x 16 (``size``
    None or 16); ``patches_latent`` is 4 x 8 x 8 (``size`` None or 8)."""
    if name in ("gmm", "gaussian"):
        size = 32 if size is None else size
    if name == "gmm":
        return demo_mixture(size)
    if name == "gaussian":
        mean = torch.tensor([0.3, -0.1, -0.4], dtype=torch.float64).view(3, 1, 1).expand(3, size, size)
        return SpectralGaussian(mean, stationary_spectrum(3, size, size, std=0.3, length=3.0), basis="dct")
    if name == "digits":
        if size not in (None, 16):
            raise ValueError(f"the digits model is 1 x 16 x 16, got size={size}")
        from .digits import digits_denoiser

        return digits_denoiser()
    if name == "patches_latent":
        if size not in (None, 8):
            raise ValueError(f"the patches_latent model has 4 x 8 x 8 latents, got size={size}")
        from .patches_latent import patches_latent_denoiser

        return patches_latent_denoiser()
    if name == "patches_flow":
        if size not in (None, 16):
            raise ValueError(f"the patches_flow model is 3 x 16 x 16, got size={size}")
        from .patches_flow import patches_flow_denoiser

        return patches_flow_denoiser()
    if name in ("digits_ideal", "patches"):
        if size not in (None, 16):
            raise ValueError(f"the {name} model is {'1' if name == 'digits_ideal' else '3'} x 16 x 16, got size={size}")
        if name == "digits_ideal":
            from .digits_ideal import digits_ideal

            return digits_ideal()
        from .patches import patches_denoiser

        return patches_denoiser()
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


__all__ = ["DenseGaussian", "SpectralGaussian", "GaussianMixture", "demo_mixture", "get_model",
           "sigma_view", "stationary_spectrum", "MODELS"]
