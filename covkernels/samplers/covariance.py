"""Covariance-aware samplers: the step's noise has a covariance estimated from model JVPs.

``cov_ddim`` (diagonal of J in a DCT / ConvDCT / pixel basis from one Hutchinson JVP per step),
``diag_hutchinson`` (pixel diagonal from ``probes`` JVPs) and ``lanczos`` (full covariance through k Lanczos
iterations). Each takes plain 1-NFE steps above ``cov_sigma_max`` (see :data:`COV_SIGMA_MAX`).
"""
from __future__ import annotations

import torch

from .. import compiled_steps
from ..steps import StepContext, lanczos_step, structured_step
from ..steps.validation import check_basis, check_bool, check_c_max, check_channel_average, check_count, \
    check_cov_sigma_max, check_eta, check_inputs, check_spatial_average, check_stride_option
from .common import COV_SIGMA_MAX, covariance_loop
from .registry import register


@register("cov_ddim", family="covariance", needs_jvp=True, stochastic=True, windowed=True,
          step_cost=lambda o: 2,
          summary="covariance-aware DDIM: diagonal of J in a DCT/ConvDCT basis from one JVP",
          variants={"cov_ddim/identity": {"basis": "identity"}, "cov_ddim/dct": {"basis": "dct"},
                    "cov_ddim/convdct": {"basis": "convdct"},
                    # the averaging ablation (docs/claims.md, claim 4): over space, over both, over neither
                    # (both keys explicit, so a shared grid option cannot turn one row into another)
                    "cov_ddim/convdct-avg-spatial": {"basis": "convdct", "channel_average": False,
                                                     "spatial_average": True},
                    "cov_ddim/convdct-avg-global": {"basis": "convdct", "channel_average": True,
                                                    "spatial_average": True},
                    "cov_ddim/convdct-avg-none": {"basis": "convdct", "channel_average": False,
                                                  "spatial_average": False}})
@torch.no_grad()
def sample_cov_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, *, eta=0.0, basis="convdct",
                    block=8, stride=None, c_max=1.0, channel_average=True, spatial_average=False,
                    cov_sigma_max=COV_SIGMA_MAX, guidance=None, jvp="auto", backend="auto", generator=None,
                    sample_offset=0, check_finite=True, compile=False):
    """Covariance-aware DDIM: Tweedie covariance diagonal in ``basis`` from one Hutchinson JVP per step;
    ``stride`` (convdct only, dividing ``block``; None = ``block``): tiles every ``stride`` pixels, the
    overlapping ConvDCT frame (``steps.overlap_step``). The one-probe estimate is averaged over channels
    (``channel_average``, the default) and, with ``spatial_average=True``, over the block positions that share
    a frequency (convdct / identity; composed from the backend's transforms, ``steps.averaged_step``).
    2 NFE per step with ``sigma <= cov_sigma_max``, 1 on the others and on the last (see COV_SIGMA_MAX).
    ``compile=True``: every step one ``torch.compile`` graph, compiled once per shape
    (:mod:`covkernels.compiled_steps`)."""
    sigmas = check_inputs(x, sigmas)
    eta = check_eta(eta)
    check_basis(basis, block, x)
    stride = check_stride_option(stride, basis, block, x)
    check_channel_average(channel_average, x)
    spatial_average = check_spatial_average(spatial_average, basis, block, stride, x, compile)
    c_max = check_c_max(c_max, allow_none=True)
    cov_sigma_max = check_cov_sigma_max(cov_sigma_max)
    ctx = StepContext(model, x, extra_args, generator=generator, sample_offset=sample_offset, backend=backend,
                      jvp=jvp, check_finite=check_finite, guidance=guidance)
    if check_bool(compile, "compile"):
        return compiled_steps.structured_loop(ctx, x, sigmas, callback, disable, eta=eta, cov_sigma_max=cov_sigma_max,
                                              basis=basis, block=block, channel_average=channel_average,
                                              c_max=c_max, stride=stride)
    return covariance_loop(ctx, x, sigmas, callback, disable, lambda c, xx, i, st, ss: structured_step(
        c, xx, i, st, ss, eta=eta, basis=basis, block=block, channel_average=bool(channel_average), c_max=c_max,
        stride=stride, spatial_average=spatial_average), eta, cov_sigma_max)


@register("diag_hutchinson", family="covariance", needs_jvp=True, stochastic=True, windowed=True,
          step_cost=lambda o: 1 + o["probes"],
          summary="pixel-diagonal covariance from Hutchinson probes (training-free OCM-DDPM diagonal)")
@torch.no_grad()
def sample_diag_hutchinson(model, x, sigmas, extra_args=None, callback=None, disable=None, *, eta=1.0, probes=1,
                           c_max=1.0, cov_sigma_max=COV_SIGMA_MAX, guidance=None, jvp="auto", backend="auto",
                           generator=None, sample_offset=0, check_finite=True, compile=False):
    """Pixel-diagonal covariance from ``probes`` Hutchinson JVPs (training-free OCM-DDPM diagonal), no
    channel averaging. ``1 + probes`` NFE per step with ``sigma <= cov_sigma_max``, 1 on the others.
    ``compile=True``: as for :func:`sample_cov_ddim`."""
    sigmas = check_inputs(x, sigmas)
    eta = check_eta(eta)
    probes = check_count(probes, "probes", 64)
    c_max = check_c_max(c_max, allow_none=True)
    cov_sigma_max = check_cov_sigma_max(cov_sigma_max)
    ctx = StepContext(model, x, extra_args, generator=generator, sample_offset=sample_offset, backend=backend,
                      jvp=jvp, check_finite=check_finite, guidance=guidance)
    if check_bool(compile, "compile"):
        return compiled_steps.structured_loop(ctx, x, sigmas, callback, disable, eta=eta, cov_sigma_max=cov_sigma_max,
                                              basis="identity", block=1, channel_average=False, c_max=c_max,
                                              probes=probes)
    return covariance_loop(ctx, x, sigmas, callback, disable, lambda c, xx, i, st, ss: structured_step(
        c, xx, i, st, ss, eta=eta, basis="identity", block=1, channel_average=False, c_max=c_max, probes=probes),
        eta, cov_sigma_max)


@register("lanczos", family="covariance", needs_jvp=True, stochastic=True, windowed=True,
          step_cost=lambda o: 1 + o["lanczos_steps"],
          summary="Lanczos Gaussian Sampler: full covariance from k Lanczos JVPs",
          variants={f"lanczos/k{k}": {"lanczos_steps": k} for k in (1, 2, 3, 5)})
@torch.no_grad()
def sample_lanczos(model, x, sigmas, extra_args=None, callback=None, disable=None, *, eta=1.0, lanczos_steps=3,
                   reorthogonalize=True, c_max=None, cov_sigma_max=COV_SIGMA_MAX, guidance=None, jvp="auto",
                   backend="auto", generator=None, sample_offset=0, check_finite=True):
    """Lanczos Gaussian Sampler: full posterior covariance through ``lanczos_steps`` Lanczos iterations of
    JVPs started from the step noise. ``1 + lanczos_steps`` NFE per step with ``sigma <= cov_sigma_max``,
    1 on the others and on the last."""
    sigmas = check_inputs(x, sigmas)
    eta = check_eta(eta)
    k = check_count(lanczos_steps, "lanczos_steps", 64)
    c_max = check_c_max(c_max, allow_none=True)
    cov_sigma_max = check_cov_sigma_max(cov_sigma_max)
    ctx = StepContext(model, x, extra_args, generator=generator, sample_offset=sample_offset, backend=backend,
                      jvp=jvp, check_finite=check_finite, guidance=guidance)
    return covariance_loop(ctx, x, sigmas, callback, disable, lambda c, xx, i, st, ss: lanczos_step(
        c, xx, i, st, ss, eta=eta, lanczos_steps=k, reorthogonalize=bool(reorthogonalize), c_max=c_max),
        eta, cov_sigma_max)
