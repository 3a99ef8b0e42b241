"""Exact denoiser of a Gaussian mixture of stationary image fields, and the built-in demo mixture.

Component k is ``N(mu_k, F^T diag(p_k) F)`` with one shared basis ``F``. The posterior mean is
``D(x) = sum_k w_k(x) D_k(x)`` with responsibilities ``w_k ~ pi_k N(x; mu_k, C_k + sigma^2 I)``,
evaluated in coefficient space where every covariance is diagonal. Unlike a single Gaussian, ``D`` is
non-linear and its Jacobian is not diagonal in any basis: the test bed for how well the covariance
approximations do.
"""
from __future__ import annotations

import math

import torch

from ..ops.dct.reference import analysis, synthesis
from ..ops.noise.reference import work_dtype
from .gaussian import _ExactDenoiser, sigma_view, spectral_parameters, stationary_spectrum


class GaussianMixture(_ExactDenoiser):
    """Mixture of ``K`` spectral Gaussians. ``means``, ``spectra``: ``(K, C, H, W)``; ``weights``: ``(K,)``."""

    def __init__(self, means: torch.Tensor, spectra: torch.Tensor, weights: torch.Tensor | None = None,
                 basis: str = "dct", block: int = 8):
        super().__init__()
        means, spectra = spectral_parameters(means, spectra, basis, block, components=True)
        k = means.shape[0]
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or bool((weights <= 0).any()):
            raise ValueError(f"weights must be {k} positive numbers, got {weights.tolist()}")
        self.basis, self.block, self.event_shape = basis, block, tuple(means.shape[1:])
        self.register_buffer("means", means)
        self.register_buffer("spectra", spectra)
        self.register_buffer("log_weights", torch.log(weights / weights.sum()))
        self.register_buffer("mean_coeffs", analysis(means, basis, block))

    def _log_responsibilities(self, c: torch.Tensor, s2: torch.Tensor, wd) -> torch.Tensor:
        """Unnormalised ``log w_k`` ``(B, K)`` from coefficients ``c (B, C, H, W)`` and ``s2 (B,1,1,1)``."""
        var = self._param("spectra", c).unsqueeze(0) + s2.unsqueeze(1)  # (B, K, C, H, W)
        r = c.unsqueeze(1) - self.mean_coeffs.to(device=c.device, dtype=wd).unsqueeze(0)
        quad = (r ** 2 / var + torch.log(var)).flatten(2).sum(2)
        return self.log_weights.to(device=c.device, dtype=wd) - 0.5 * quad

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        self._check_input(x)
        wd = work_dtype(x.dtype)
        xw = x.to(wd)
        s2 = sigma_view(sigma, xw) ** 2
        c = analysis(xw, self.basis, self.block)
        w = torch.softmax(self._log_responsibilities(c, s2, wd), dim=1)  # (B, K)
        p = self._param("spectra", x).unsqueeze(0)
        mc = self.mean_coeffs.to(device=x.device, dtype=wd).unsqueeze(0)
        gain = p / (p + s2.unsqueeze(1))  # (B, K, C, H, W)
        comp = mc + gain * (c.unsqueeze(1) - mc)
        post = (w.view(*w.shape, 1, 1, 1) * comp).sum(1)
        return synthesis(post, self.basis, self.block).to(x.dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density ``(B,)`` (float64)."""
        c = analysis(x.to(self.means.device, torch.float64), self.basis, self.block)
        s2 = torch.zeros(x.shape[0], 1, 1, 1, dtype=torch.float64, device=c.device)
        n = math.prod(self.event_shape)
        return torch.logsumexp(self._log_responsibilities(c, s2, torch.float64), dim=1) - 0.5 * n * math.log(2 * math.pi)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32, device=None):
        """``n`` exact data samples ``(n, C, H, W)``."""
        k = torch.multinomial(self.log_weights.cpu().exp(), n, replacement=True, generator=generator)  # CPU gen.
        xi = torch.randn(n, *self.event_shape, generator=generator, dtype=torch.float64)
        c = self.mean_coeffs.cpu()[k] + xi * self.spectra.cpu()[k].sqrt()
        return synthesis(c, self.basis, self.block).to(device=device or self.means.device, dtype=dtype)


def _demo_means(size: int) -> torch.Tensor:
    """Four recognisable colour patterns in [-1, 1], ``(4, 3, size, size)``: disc, stripes, gradient, ring."""
    t = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2.0 - 1.0
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    r = torch.sqrt(xx ** 2 + yy ** 2)

    def paint(mask, fg, bg):
        fg = torch.tensor(fg, dtype=torch.float64).view(3, 1, 1)
        bg = torch.tensor(bg, dtype=torch.float64).view(3, 1, 1)
        return bg + (fg - bg) * mask

    disc = torch.sigmoid((0.55 - r) * 12.0)
    stripes = 0.5 + 0.5 * torch.cos(yy * math.pi * 3.0)
    gradient = (xx + yy + 2.0) / 4.0
    ring = torch.exp(-((r - 0.6) / 0.15) ** 2)
    return torch.stack([
        paint(disc, (0.9, -0.3, -0.5), (-0.7, -0.6, -0.2)),
        paint(stripes, (-0.4, 0.8, -0.2), (-0.8, -0.5, -0.7)),
        paint(gradient, (0.9, 0.8, -0.6), (-0.4, -0.8, 0.7)),
        paint(ring, (0.8, 0.8, 0.9), (-0.2, -0.5, -0.7)),
    ])


def demo_mixture(size: int = 32) -> GaussianMixture:
    """The built-in ``gmm`` model: 4 colour patterns, each with smooth stationary texture, 3 x size x size."""
    means = _demo_means(size)
    spectra = torch.stack([stationary_spectrum(3, size, size, std=s, length=l)
                           for s, l in ((0.20, 3.0), (0.15, 6.0), (0.25, 2.0), (0.18, 4.0))])
    return GaussianMixture(means, spectra, torch.tensor([0.3, 0.25, 0.25, 0.2]), basis="dct")
