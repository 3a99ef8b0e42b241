"""Exact Gaussian denoisers: ground truth for tests and the analytic demo models.

For data ``x0 ~ N(mu, C)`` and ``x = x0 + sigma n`` the posterior mean is linear,
``D(x, sigma) = mu + C (C + sigma^2 I)^{-1} (x - mu)``, and its Jacobian ``J = C (C + sigma^2 I)^{-1}`` is
exactly the Tweedie covariance divided by ``sigma^2``. Both classes are ``torch.nn.Module`` denoisers in
the k-diffusion convention: ``model(x, sigma)`` with ``x (B, *event_shape)`` and ``sigma`` a float, a
0-dim tensor or a ``(B,)`` tensor. Parameters are stored in float64 and the computation runs in the
input's dtype (float32 for half inputs, the result cast back).
"""
from __future__ import annotations

import math

import torch

from ..ops.dct.reference import BASES, analysis, check_block, synthesis
from ..ops.noise.reference import work_dtype


def sigma_view(sigma, x: torch.Tensor) -> torch.Tensor:
    """``sigma`` (float, 0-dim or ``(B,)``) as a ``(B, 1, ..., 1)`` tensor matching ``x``'s device/dtype."""
    s = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    if s.dim() == 0:
        s = s.expand(x.shape[0])
    if s.dim() != 1 or s.shape[0] != x.shape[0]:
        raise ValueError(f"sigma must be a scalar or of shape ({x.shape[0]},), got shape {tuple(s.shape)}")
    return s.view(-1, *([1] * (x.dim() - 1)))


class _ExactDenoiser(torch.nn.Module):
    event_shape: tuple

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError("x must be a floating-point torch.Tensor")
        if tuple(x.shape[1:]) != tuple(self.event_shape):
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.event_shape))}), "
                             f"got {tuple(x.shape)}")

    def _param(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, name).to(device=x.device, dtype=work_dtype(x.dtype))


class DenseGaussian(_ExactDenoiser):
    """``N(mean, cov)`` with a dense ``(d, d)`` covariance, ``d = prod(mean.shape)``: for small d."""

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float64)
        d = mean.numel()
        cov = torch.as_tensor(cov, dtype=torch.float64)
        if cov.shape != (d, d):
            raise ValueError(f"cov must have shape ({d}, {d}) for a mean of {d} elements, got {tuple(cov.shape)}")
        if not torch.allclose(cov, cov.T, atol=1e-10 * float(cov.abs().max().clamp_min(1.0))):
            raise ValueError("cov must be symmetric")
        evals, evecs = torch.linalg.eigh(cov)
        if evals.min() < -1e-10 * evals.abs().max():
            raise ValueError(f"cov must be positive semi-definite (smallest eigenvalue {float(evals.min()):.3g})")
        self.event_shape = tuple(mean.shape)
        self.register_buffer("mean", mean)
        self.register_buffer("cov", cov)
        self.register_buffer("evals", evals.clamp_min(0.0))
        self.register_buffer("evecs", evecs)

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        self._check_input(x)
        wd = work_dtype(x.dtype)
        xw = x.to(wd).flatten(1)
        s2 = sigma_view(sigma, xw).to(wd) ** 2
        lam, u, mu = self._param("evals", x), self._param("evecs", x), self._param("mean", x).flatten()
        coef = ((xw - mu) @ u) * (lam / (lam + s2))
        return (mu + coef @ u.T).view(x.shape).to(x.dtype)

    def jacobian(self, sigma: float) -> torch.Tensor:
        """Exact ``J = C (C + sigma^2 I)^{-1}`` (float64, ``(d, d)``)."""
        return (self.evecs * (self.evals / (self.evals + sigma ** 2))) @ self.evecs.T

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32, device=None):
        """``n`` exact data samples ``(n, *event_shape)``."""
        xi = torch.randn(n, self.mean.numel(), generator=generator, dtype=torch.float64)  # CPU generator
        x = self.mean.cpu().flatten() + (xi * self.evals.cpu().sqrt()) @ self.evecs.cpu().T
        return x.view(n, *self.event_shape).to(device=device or self.mean.device, dtype=dtype)


def stationary_spectrum(channels: int, height: int, width: int, *, std: float = 0.25, length: float = 4.0,
                        smoothness: float = 1.5) -> torch.Tensor:
    """A power spectrum ``(C, H, W)`` over DCT frequencies of a smooth stationary field.

    ``p(u, v) ~ (1 + (f/f0)^2)^(-smoothness)`` with ``f0`` set by the correlation ``length`` in pixels,
    normalised so the per-pixel standard deviation is ``std``.
    """
    fu = torch.arange(height, dtype=torch.float64).view(-1, 1) / (2.0 * height)
    fv = torch.arange(width, dtype=torch.float64).view(1, -1) / (2.0 * width)
    f0 = 1.0 / (2.0 * math.pi * length)
    shape = (1.0 + (fu ** 2 + fv ** 2) / f0 ** 2) ** (-smoothness)
    p = shape * (std ** 2 * height * width / shape.sum())
    return p.expand(channels, height, width).clone()


def spectral_parameters(mean, spectrum, basis: str, block: int, components: bool):
    """Validated float64 ``(mean, spectrum)`` of a spectral Gaussian: ``(C, H, W)`` each, or ``(K, C, H, W)``
    for the ``components`` of a mixture (whose spectra must then be strictly positive)."""
    names = ("means", "spectra", "(K, C, H, W)") if components else ("mean", "spectrum", "(C, H, W)")
    if basis not in BASES:
        raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
    mean = torch.as_tensor(mean, dtype=torch.float64)
    spectrum = torch.as_tensor(spectrum, dtype=torch.float64)
    if mean.dim() != (4 if components else 3) or spectrum.shape != mean.shape:
        raise ValueError(f"{names[0]} and {names[1]} must both have shape {names[2]}, got {tuple(mean.shape)} "
                         f"and {tuple(spectrum.shape)}")
    if bool((spectrum <= 0).any() if components else (spectrum < 0).any()):
        raise ValueError(f"{names[1]} must be {'positive' if components else 'non-negative'}")
    if basis == "convdct":
        check_block(mean.shape, block, names[0])
    return mean, spectrum


class SpectralGaussian(_ExactDenoiser):
    """``N(mean, F^T diag(spectrum) F)`` for an orthonormal image basis ``F`` (identity, dct, convdct).

    With ``basis="dct"`` this is a stationary field with symmetric boundaries (the DCT diagonalises such
    covariances as the DFT diagonalises circulant ones). ``mean``, ``spectrum``: ``(C, H, W)``.
    """

    def __init__(self, mean: torch.Tensor, spectrum: torch.Tensor, basis: str = "dct", block: int = 8):
        super().__init__()
        mean, spectrum = spectral_parameters(mean, spectrum, basis, block, components=False)
        self.basis, self.block, self.event_shape = basis, block, tuple(mean.shape)
        self.register_buffer("mean", mean)
        self.register_buffer("spectrum", spectrum)

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        self._check_input(x)
        wd = work_dtype(x.dtype)
        xw = x.to(wd)
        s2 = sigma_view(sigma, xw) ** 2
        mu, p = self._param("mean", x), self._param("spectrum", x)
        c = analysis(xw - mu, self.basis, self.block) * (p / (p + s2))
        return (mu + synthesis(c, self.basis, self.block)).to(x.dtype)

    def jacobian_coefficients(self, sigma: float) -> torch.Tensor:
        """Exact ``diag(F J F^T) = p / (p + sigma^2)`` (float64, ``(C, H, W)``)."""
        return self.spectrum / (self.spectrum + sigma ** 2)

    def covariance(self) -> torch.Tensor:
        """Dense ``(d, d)`` covariance (float64); for tests on small images."""
        d = self.mean.numel()
        eye = torch.eye(d, dtype=torch.float64).view(d, *self.event_shape)
        cols = synthesis(analysis(eye, self.basis, self.block) * self.spectrum, self.basis, self.block)
        return cols.view(d, d)

    def sqrt_cov(self, v: torch.Tensor) -> torch.Tensor:
        """``C^1/2 v`` for a batch ``v (M, C, H, W)`` (float64), for the exact W2 metric."""
        c = analysis(v.to(self.mean.device, torch.float64), self.basis, self.block)
        return synthesis(c * self.spectrum.sqrt(), self.basis, self.block)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density ``(B,)`` (float64)."""
        c = analysis(x.to(self.mean.device, torch.float64) - self.mean, self.basis, self.block)
        return -0.5 * (c ** 2 / self.spectrum + torch.log(2 * math.pi * self.spectrum)).flatten(1).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32, device=None):
        """``n`` exact data samples ``(n, C, H, W)``."""
        xi = torch.randn(n, *self.event_shape, generator=generator, dtype=torch.float64)  # CPU generator
        x = self.mean.cpu() + synthesis(xi * self.spectrum.cpu().sqrt(), self.basis, self.block)
        return x.to(device=device or self.mean.device, dtype=dtype)
