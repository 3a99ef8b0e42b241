"""Calibrating a model's posterior spectrum once (no data, no per-sample JVP): the diagonal of the denoiser's
Jacobian in a DCT / ConvDCT / pixel basis, averaged over the model's own trajectories, at a grid of sigmas.

With it, ``ode_cov(covariance="calibrated", spectrum=...)`` replaces an ODE sampler's last step (the plain
denoise ``x0 = D``) by the Gaussian posterior draw ``x0 = D + F^T(sigma sqrt(c(sigma)) xi)`` at the same cost
(1 evaluation): the draw puts back the fine texture that a few-step deterministic trajectory leaves out, and
the comparison with the ODE sampler alone is at equal schedule and equal NFE.

The spectrum and its step are in :mod:`covkernels.steps.calibrated` (re-exported here); the calibration runs
a sampler (:func:`~covkernels.samplers.multistep.sample_dpmpp_2m`), so it lives here, on the sampler side.
"""
from __future__ import annotations

import math

import torch

from .. import jvp as jvp_engine
from ..ops import dispatch
from ..ops.api import check_block
from ..schedules import karras_sigmas
from ..steps import draw_seed
from ..steps.calibrated import PosteriorSpectrum
from ..steps.validation import check_basis_name, check_number
from .multistep import sample_dpmpp_2m

__all__ = ["PosteriorSpectrum", "calibrate_spectrum"]


def _calibration_levels(shape, sigmas, *, basis, block, num_samples, probes, steps, sigma_max):
    """Validate the calibration's arguments; return ``(shape, sigma_max, levels)`` (levels increasing)."""
    check_basis_name(basis)
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
    return shape, sigma_max, levels


def _trajectory_points(model, x, levels, steps, sigma_max, extra_args) -> dict:
    """``{level: x at that level}`` along a fine DPM-Solver++(2M) trajectory with the levels inserted."""
    fine = [float(s) for s in karras_sigmas(steps, levels[0], sigma_max).tolist() if s > 0]
    schedule = sorted(set(fine) | set(levels), reverse=True)
    at = {}

    def keep(info):
        s = float(info["sigma"])
        if s in levels:
            at[s] = info["x"].clone()

    sample_dpmpp_2m(model, x, torch.tensor(schedule + [0.0], dtype=torch.float64), extra_args=extra_args,
                    callback=keep, disable=True)
    return at


def _level_coefficients(model, xs, sigma, step, seed, *, basis, block, probes, dtype, extra_args) -> torch.Tensor:
    """The Hutchinson diagonal ``(C, H, W)`` at one level, averaged over samples and ``probes`` (float64, the
    reference backend's probes and transform: the spectrum is a stored model property, the same everywhere)."""
    ops = dispatch.resolve("reference", xs.device)
    sig = torch.full((xs.shape[0],), sigma, dtype=dtype, device=xs.device)
    acc = 0.0
    for p in range(probes):
        v = ops.probe_tangent(seed, xs.shape, sample_offset=0, step=step, index=p, basis=basis, block=block,
                              dtype=torch.float64, device=xs.device)
        _, jv = jvp_engine.jvp(model, xs, sig, v.to(dtype), extra_args or {}, strategy="finite_difference")
        acc = acc + ops.analysis(v, basis, block) * ops.analysis(jv.to(torch.float64), basis, block)
    return (acc / probes).mean(dim=0)


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
    shape, sigma_max, levels = _calibration_levels(shape, sigmas, basis=basis, block=block, num_samples=num_samples,
                                                   probes=probes, steps=steps, sigma_max=sigma_max)
    seed = draw_seed(generator)  # on the generator's device, whatever ``device`` is
    noise_device = generator.device if generator is not None else device
    x = sigma_max * torch.randn((num_samples, *shape), generator=generator, dtype=dtype,
                                device=noise_device).to(device)
    at = _trajectory_points(model, x, levels, steps, sigma_max, extra_args)
    rows = []
    for step, s in enumerate(levels):
        c = _level_coefficients(model, at[s], s, step, seed, basis=basis, block=block, probes=probes, dtype=dtype,
                                extra_args=extra_args)
        rows.append(c.mean(dim=0, keepdim=True) if channel_average else c)
    return PosteriorSpectrum(levels, torch.stack(rows), basis=basis, block=block)
