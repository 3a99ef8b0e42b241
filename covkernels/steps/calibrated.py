"""The calibrated posterior step of ``ode_cov(covariance="calibrated")``: a per-model posterior spectrum
calibrated once (no data, no per-sample JVP), the diagonal of the denoiser's Jacobian in a DCT / ConvDCT /
pixel basis at a grid of sigmas (:class:`PosteriorSpectrum`), and the step that draws with it.

The step replaces an ODE sampler's last step (the plain denoise ``x0 = D``) by the Gaussian posterior draw
``x0 = D + F^T(sigma sqrt(c(sigma)) xi)`` at the same cost (1 evaluation). The spectrum is made by
:func:`covkernels.samplers.calibrated.calibrate_spectrum`, which runs a sampler and so lives on the sampler
side (the steps never import the samplers).

Interpolation: ``c`` linearly in ``log sigma`` between calibrated levels; outside them through the Gaussian
transfer ``lam = s^2 c / (1 - c)``, ``c(sigma) = lam / (lam + sigma^2)`` from the nearest level, so ``c``
tends to 1 as sigma -> 0 and to 0 at high noise, as any denoiser's Jacobian does.
"""
from __future__ import annotations

import math

import torch

from ..ops.api import ddim_mean, work_dtype
from .plain import ancestral_split
from .switch import coefficients_at, spectrum as transfer_spectrum
from .validation import check_basis_name


class PosteriorSpectrum:
    """Calibrated Jacobian coefficients ``c(sigma)`` of shape ``(1, C or 1, H, W)`` in ``basis``.

    ``sigmas``: increasing positive levels ``(S,)``; ``coefficients``: ``(S, C or 1, H, W)`` in ``[0, 1]``.
    Made by :func:`~covkernels.samplers.calibrated.calibrate_spectrum`; picklable (plain tensors) so it can be
    saved with ``torch.save``.
    """

    def __init__(self, sigmas, coefficients: torch.Tensor, *, basis: str = "dct", block: int = 8):
        levels = [float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).flatten().tolist()]
        if not levels or any(not (s > 0 and math.isfinite(s)) for s in levels) or levels != sorted(set(levels)):
            raise ValueError(f"sigmas must be increasing positive finite levels, got {levels}")
        if (not isinstance(coefficients, torch.Tensor) or coefficients.dim() != 4
                or coefficients.shape[0] != len(levels)):
            raise ValueError(f"coefficients must be a (S={len(levels)}, C, H, W) tensor, got "
                             f"{getattr(coefficients, 'shape', coefficients)!r}")
        check_basis_name(basis)
        self.sigmas, self.basis, self.block = levels, basis, int(block)
        self.coefficients = coefficients.detach().to(torch.float64).clamp(0.0, 1.0).cpu()

    @property
    def event_shape(self) -> tuple:
        return tuple(self.coefficients.shape[1:])

    def __call__(self, sigma: float) -> torch.Tensor:
        """``c(sigma)``, ``(1, C or 1, H, W)`` float64 on the CPU."""
        s, c = self.sigmas, self.coefficients
        if sigma <= s[0] or sigma >= s[-1]:
            j = 0 if sigma <= s[0] else -1
            return coefficients_at(transfer_spectrum(c[j], s[j]), sigma).unsqueeze(0)
        j = next(k for k in range(1, len(s)) if s[k] >= sigma)
        w = (math.log(sigma) - math.log(s[j - 1])) / (math.log(s[j]) - math.log(s[j - 1]))
        return ((1 - w) * c[j - 1] + w * c[j]).unsqueeze(0)

    def __repr__(self) -> str:
        return (f"PosteriorSpectrum(basis={self.basis!r}, block={self.block}, sigmas={self.sigmas}, "
                f"shape={tuple(self.coefficients.shape[1:])})")


def calibrated_step(ctx, x: torch.Tensor, step: int, sigma_t: float, sigma_s: float, *, eta: float,
                    spectrum: PosteriorSpectrum, c_max: float | None = None):
    """One covariance step with the calibrated diagonal: ``m + F^T(sqrt(sigma_up^2 + (sigma_t - sigma_down)^2
    c(sigma_t)) xi)`` with the DDIM mean ``m`` (the draw ``D + F^T(sigma_t sqrt(c) xi)`` on the step to 0).
    1 evaluation. Returns ``(x_s, denoised)``."""
    sigma_down, sigma_up = ancestral_split(sigma_t, sigma_s, eta)
    denoised = ctx.denoise(x, sigma_t, step)
    wd = work_dtype(x.dtype)
    c = spectrum(sigma_t).to(device=x.device, dtype=wd).clamp(max=c_max)
    std = torch.sqrt(sigma_up ** 2 + (sigma_t - sigma_down) ** 2 * c)
    xi = ctx.normal(x.shape, step, dtype=wd, device=x.device)
    mean = ddim_mean(denoised, x, sigma_t, sigma_down)
    return (mean + ctx.ops.synthesis(std * xi, spectrum.basis, spectrum.block)).to(x.dtype), denoised


def check_spectrum(spectrum, x: torch.Tensor) -> PosteriorSpectrum:
    """``spectrum`` is a :class:`PosteriorSpectrum` whose event shape fits images ``x`` (its channels 1 or C)."""
    if not isinstance(spectrum, PosteriorSpectrum):
        raise TypeError(f"spectrum must be a PosteriorSpectrum (covkernels.calibrate_spectrum), got "
                        f"{type(spectrum).__name__}")
    c, h, w = spectrum.event_shape
    if x.dim() != 4 or (c not in (1, x.shape[1])) or (h, w) != tuple(x.shape[2:]):
        raise ValueError(f"spectrum of shape {spectrum.event_shape} does not fit x of shape {tuple(x.shape)}")
    return spectrum
