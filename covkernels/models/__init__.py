"""Analytic oracle denoisers (exact posterior means) usable as the ``model`` of any sampler.

``get_model(name)`` builds a named demo model: ``gmm`` (the 4-pattern Gaussian mixture of stationary
colour fields, 3 x 32 x 32) or ``gaussian`` (one stationary colour field). Every model has
``sample(n, generator)`` for exact data samples and ``event_shape``.
"""
from __future__ import annotations

import torch

from .gaussian import DenseGaussian, SpectralGaussian, sigma_view, stationary_spectrum
from .mixture import GaussianMixture, demo_mixture

MODELS = ("gmm", "gaussian")


def get_model(name: str, size: int = 32) -> torch.nn.Module:
    """A named analytic model of ``3 x size x size`` images (``size`` a multiple of 8 for convdct)."""
    if name == "gmm":
        return demo_mixture(size)
    if name == "gaussian":
        mean = torch.tensor([0.3, -0.1, -0.4], dtype=torch.float64).view(3, 1, 1).expand(3, size, size)
        return SpectralGaussian(mean, stationary_spectrum(3, size, size, std=0.3, length=3.0), basis="dct")
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


__all__ = ["DenseGaussian", "SpectralGaussian", "GaussianMixture", "demo_mixture", "get_model",
           "sigma_view", "stationary_spectrum", "MODELS"]
