"""A per-model posterior spectrum calibrated once (no data, no per-sample JVP): the diagonal of the denoiser's
Jacobian in a DCT / ConvDCT / pixel basis, averaged over the model's own trajectories, at a grid of sigmas.

With it, ``ode_cov(covariance="calibrated", spectrum=...)`` replaces an ODE sampler's last step (the plain
denoise ``x0 = D``) by the Gaussian posterior draw ``x0 = D + F^T(sigma sqrt(c(sigma)) xi)`` at the same cost
(1 evaluation): the draw puts back the fine texture that a few-step deterministic trajectory leaves out, and
the comparison with the ODE sampler alone is at equal schedule and equal NFE.

Interpolation: ``c`` linearly in ``log sigma`` between calibrated levels; outside them through the Gaussian
transfer ``lam = s^2 c / (1 - c)``, ``c(sigma) = lam / (lam + sigma^2)`` from the nearest level, so ``c``
tends to 1 as sigma -> 0 and to 0 at high noise, as any denoiser's Jacobian does.
"""
from __future__ import annotations

import math

import torch

from ..ops.dct.reference import BASES, analysis, check_block
from ..ops.noise.reference import probe_tangent
from .common import check_number
from .gaussianity import coefficients_at, spectrum as transfer_spectrum


class PosteriorSpectrum:
    """Calibrated Jacobian coefficients ``c(sigma)`` of shape ``(1, C or 1, H, W)`` in ``basis``.

    ``sigmas``: increasing positive levels ``(S,)``; ``coefficients``: ``(S, C or 1, H, W)`` in ``[0, 1]``.
    Made by :func:`calibrate_spectrum`; picklable (plain tensors) so it can be saved with ``torch.save``.
    """

    def __init__(self, sigmas, coefficients: torch.Tensor, *, basis: str = "dct", block: int = 8):
        levels = [float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).flatten().tolist()]
        if not levels or any(not (s > 0 and math.isfinite(s)) for s in levels) or levels != sorted(set(levels)):
            raise ValueError(f"sigmas must be increasing positive finite levels, got {levels}")
        if (not isinstance(coefficients, torch.Tensor) or coefficients.dim() != 4
                or coefficients.shape[0] != len(levels)):
            raise ValueError(f"coefficients must be a (S={len(levels)}, C, H, W) tensor, got "
                             f"{getattr(coefficients, 'shape', coefficients)!r}")
        if basis not in BASES:
            raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
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


@torch.no_grad()
def calibrate_spectrum(model, shape, sigmas=None, *, basis: str = "dct", block: int = 8, num_samples: int = 64,
                       probes: int = 4, steps: int = 32, sigma_max: float = 80.0, channel_average: bool = True,
                       generator: torch.Generator | None = None, dtype=torch.float32, device="cpu",
                       extra_args: dict | None = None) -> PosteriorSpectrum:
    """Calibrate ``c(sigma)`` on the model's own samples: ``num_samples`` trajectories of a fine DPM-Solver++(2M)
    (``steps`` Karras steps from ``sigma_max``, the calibration ``sigmas`` inserted), and at each level
    ``probes`` transform-domain Rademacher JVPs (finite differences), averaged over samples and probes.

    ``shape``: one sample's ``(C, H, W)``. ``sigmas``: the levels (default 12 log-spaced in [0.002, 5]).
    Cost: about ``num_samples * (steps + len(sigmas) * (1 + probes))`` model evaluations, once per model.
    Randomness only from ``generator``.
    """
    from .. import jvp as jvp_engine
    from ..schedules import karras_sigmas
    from ..steps import draw_seed
    from .multistep import sample_dpmpp_2m

    if basis not in BASES:
        raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
    shape = tuple(shape)
    if len(shape) != 3:
        raise ValueError(f"shape must be one sample's (C, H, W), got {shape}")
    if basis == "convdct":
        check_block((1, *shape), block, "shape")
    for name, value in (("num_samples", num_samples), ("probes", probes), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    sigma_max = check_number(sigma_max, "sigma_max", 0.0, low_open=True)
    if sigmas is None:
        sigmas = torch.logspace(math.log10(0.002), math.log10(5.0), 12, dtype=torch.float64)
    levels = sorted({float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).flatten().tolist()})
    if not levels or levels[0] <= 0 or levels[-1] >= sigma_max:
        raise ValueError(f"sigmas must lie in (0, sigma_max={sigma_max}), got {levels}")
    fine = [float(s) for s in karras_sigmas(steps, levels[0], sigma_max).tolist() if s > 0]
    schedule = sorted(set(fine) | set(levels), reverse=True)
    seed = draw_seed(generator)  # on the generator's device, whatever ``device`` is
    noise_device = generator.device if generator is not None else device
    x = sigma_max * torch.randn((num_samples, *shape), generator=generator, dtype=dtype,
                                device=noise_device).to(device)
    at = {}

    def keep(info):
        s = float(info["sigma"])
        if s in levels:
            at[s] = info["x"].clone()

    sample_dpmpp_2m(model, x, torch.tensor(schedule + [0.0], dtype=torch.float64), extra_args=extra_args,
                    callback=keep, disable=True)
    rows = []
    for s in levels:
        xs, acc = at[s], 0.0
        sig = torch.full((num_samples,), s, dtype=dtype, device=device)
        for p in range(probes):
            v = probe_tangent(seed, xs.shape, sample_offset=0, step=levels.index(s), index=p, basis=basis,
                              block=block, dtype=torch.float64, device=device)
            _, jv = jvp_engine.jvp(model, xs, sig, v.to(dtype), extra_args or {}, strategy="finite_difference")
            acc = acc + analysis(v, basis, block) * analysis(jv.to(torch.float64), basis, block)
        c = (acc / probes).mean(dim=0)
        rows.append(c.mean(dim=0, keepdim=True) if channel_average else c)
    return PosteriorSpectrum(levels, torch.stack(rows), basis=basis, block=block)


def calibrated_step(ctx, x: torch.Tensor, step: int, sigma_t: float, sigma_s: float, *, eta: float,
                    spectrum: PosteriorSpectrum, c_max: float | None = None):
    """One covariance step with the calibrated diagonal: ``m + F^T(sqrt(sigma_up^2 + (sigma_t - sigma_down)^2
    c(sigma_t)) xi)`` with the DDIM mean ``m`` (the draw ``D + F^T(sigma_t sqrt(c) xi)`` on the step to 0).
    1 evaluation. Returns ``(x_s, denoised)``."""
    from .. import steps as step_lib
    from ..ops.noise.reference import ddim_mean, work_dtype

    sigma_down, sigma_up = step_lib.ancestral_split(sigma_t, sigma_s, eta)
    denoised = ctx.denoise(x, sigma_t, step)
    wd = work_dtype(x.dtype)
    c = spectrum(sigma_t).to(device=x.device, dtype=wd).clamp(max=c_max)
    std = torch.sqrt(sigma_up ** 2 + (sigma_t - sigma_down) ** 2 * c)
    xi = ctx.normal(x.shape, step, dtype=wd, device=x.device)
    mean = ddim_mean(denoised, x, sigma_t, sigma_down)
    return (mean + ctx.ops.synthesis(std * xi, spectrum.basis, spectrum.block)).to(x.dtype), denoised


def check_spectrum(spectrum, x: torch.Tensor) -> PosteriorSpectrum:
    if not isinstance(spectrum, PosteriorSpectrum):
        raise TypeError(f"spectrum must be a PosteriorSpectrum (covkernels.calibrate_spectrum), got "
                        f"{type(spectrum).__name__}")
    c, h, w = spectrum.event_shape
    if x.dim() != 4 or (c not in (1, x.shape[1])) or (h, w) != tuple(x.shape[2:]):
        raise ValueError(f"spectrum of shape {spectrum.event_shape} does not fit x of shape {tuple(x.shape)}")
    return spectrum
