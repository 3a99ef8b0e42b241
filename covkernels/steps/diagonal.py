"""The diagonal covariance steps of ``cov_ddim`` / ``diag_hutchinson`` / ``ode_cov``: the Jacobian's diagonal
in a basis (identity / dct / convdct) from Hutchinson JVP probes, then structured noise; and the same on the
overlapping ConvDCT frame. Returns ``(x_s, denoised)``."""
from __future__ import annotations

import torch

from ..ops.api import ddim_mean, frame_shifts, hutchinson_coefficients, overlap_analysis, overlap_synthesis, \
    work_dtype
from .context import StepContext
from .plain import ancestral_split


def structured_step(ctx: StepContext, x: torch.Tensor, step: int, sigma_t: float, sigma_s: float, *, eta: float,
                    basis: str, block: int, channel_average: bool, c_max: float | None, probes: int = 1,
                    stride: int | None = None, spatial_average: bool = False):
    """``cov_ddim`` / ``diag_hutchinson``: Hutchinson diagonal of J in ``basis`` from ``probes`` JVPs, then
    structured noise; ``stride`` (convdct, < block): the overlapping frame (:func:`overlap_step`);
    ``spatial_average``: the composed step :func:`averaged_step`. Returns ``(x_s, denoised)``."""
    if stride is not None and stride != block:
        return overlap_step(ctx, x, step, sigma_t, sigma_s, eta=eta, block=block, stride=stride,
                            channel_average=channel_average, c_max=c_max, probes=probes,
                            spatial_average=spatial_average)
    if spatial_average:
        return averaged_step(ctx, x, step, sigma_t, sigma_s, eta=eta, basis=basis, block=block,
                             channel_average=channel_average, c_max=c_max, probes=probes,
                             tile=1 if basis == "identity" else block)
    sigma_down, sigma_up = ancestral_split(sigma_t, sigma_s, eta)
    denoised, jvps = None, []
    for p in range(probes):
        v = ctx.ops.probe_tangent(ctx.seed, x.shape, sample_offset=ctx.sample_offset, step=step, index=p,
                                  basis=basis, block=block, dtype=x.dtype, device=x.device)
        mean, jv = ctx.jvp(x, sigma_t, v, step, fresh=p == 0)  # later probes reuse the first one's primal
        if p == 0:
            denoised = mean
        jvps.append(jv)
    jvps = torch.stack(jvps)
    if ctx.mean_only_fallback:  # (no device sync otherwise: a step without it can be graph-captured)
        bad = ctx.fallback_mask(step, x)
        if bool(bad.any()):  # a sample that failed on a later probe drops its earlier probes too: mean-only
            jvps[:, bad] = 0
    x_s = ctx.ops.structured_step(denoised, x, jvps, ctx.seed, sample_offset=ctx.sample_offset,
                                  step=step, sigma_t=sigma_t, sigma_down=sigma_down, sigma_up=sigma_up,
                                  basis=basis, block=block, channel_average=channel_average, c_max=c_max)
    return x_s, denoised


def averaged_step(ctx: StepContext, x: torch.Tensor, step: int, sigma_t: float, sigma_s: float, *, eta: float,
                  basis: str, block: int, channel_average: bool, c_max: float | None, probes: int = 1,
                  tile: int | None):
    """The structured step composed from the backend's transforms and random streams instead of its fused
    step op, so that the coefficients can also be averaged over block positions (``tile``: the block, 1 for
    pixels; None: not). The fused op averages over channels only; with ``tile=None`` this reproduces it
    (same probes, same noise: tested). Returns ``(x_s, denoised)``."""
    if tile is not None and basis == "dct":
        raise ValueError("averaged_step: the global DCT is one block; spatial averaging needs convdct or identity")
    return _composed_step(ctx, x, step, sigma_t, sigma_s, eta=eta, draw_shape=x.shape, coef_shape=x.shape,
                          analysis=lambda t: ctx.ops.analysis(t, basis, block),
                          synthesis=lambda c: ctx.ops.synthesis(c, basis, block), scale=1,
                          channel_average=channel_average, c_max=c_max, probes=probes, tile=tile)


def overlap_step(ctx: StepContext, x: torch.Tensor, step: int, sigma_t: float, sigma_s: float, *, eta: float,
                 block: int, stride: int, channel_average: bool, c_max: float | None, probes: int = 1,
                 spatial_average: bool = False):
    """The ``convdct`` step on the overlapping frame ``A_p`` (Parseval, ``R = (block/stride)^2`` shifts; see
    ``ops/dct/reference.py``), composed from the backend's fused block DCT and random streams.

    ``J ~= A_p^T diag(c) A_p`` with ``c_k = a_k^T J a_k`` along each unit-norm atom ``a_k`` (``= R`` times the
    diagonal of ``A_p J A_p^T``), so that ``J = c0 I`` gives ``c = c0`` and ``c = 1`` injects identity
    covariance. Probe: ``z`` Rademacher in frame coefficients ``(B, C, R, H, W)``, ``v = A_p^T z``, estimate
    ``R z * (A_p J v)``; unlike a basis, the frame's overlaps leave this estimate noisy even where ``J`` is
    diagonal in every shift. Noise ``xi (B, C, R, H, W)``: ``x_s = m + A_p^T(sqrt(sigma_up^2 + s^2 c) xi)``.
    ``spatial_average``: ``c`` averaged over block positions and shifts per in-block frequency. Returns
    ``(x_s, denoised)``."""
    b, ch, h, w = x.shape
    r2 = len(frame_shifts(block, stride))
    # The frame's draws are the identity basis' draws of shape (B, C*R, H, W): same counters on every backend.
    return _composed_step(ctx, x, step, sigma_t, sigma_s, eta=eta, draw_shape=(b, ch * r2, h, w),
                          coef_shape=(b, ch, r2, h, w),
                          analysis=lambda t: overlap_analysis(t, block, stride,
                                                              lambda u, k: ctx.ops.analysis(u, "convdct", k)),
                          synthesis=lambda c: overlap_synthesis(c, block, stride,
                                                                lambda u, k: ctx.ops.synthesis(u, "convdct", k)),
                          scale=r2, channel_average=channel_average, c_max=c_max, probes=probes,
                          tile=block if spatial_average else None)


def _composed_step(ctx: StepContext, x: torch.Tensor, step: int, sigma_t: float, sigma_s: float, *, eta: float,
                   draw_shape, coef_shape, analysis, synthesis, scale: int, channel_average: bool,
                   c_max: float | None, probes: int, tile: int | None):
    """A structured step from the backend's streams and an ``analysis`` / ``synthesis`` pair (a basis, or the
    overlapping frame with its ``scale = R``): Rademacher probes ``z`` and noise ``xi`` drawn as identity-basis
    tensors of ``draw_shape`` and viewed as ``coef_shape``, the estimate ``scale * z * analysis(J synthesis(z))``
    averaged by :func:`hutchinson_coefficients`, then ``m + synthesis(sqrt(sigma_up^2 + s^2 c) xi)``."""
    sigma_down, sigma_up = ancestral_split(sigma_t, sigma_s, eta)
    wd = work_dtype(x.dtype)
    denoised, zs, fjvs = None, [], []
    for p in range(probes):
        z = ctx.ops.probe_tangent(ctx.seed, draw_shape, sample_offset=ctx.sample_offset, step=step, index=p,
                                  basis="identity", dtype=wd, device=x.device).view(coef_shape)
        mean, jv = ctx.jvp(x, sigma_t, synthesis(z).to(x.dtype), step, fresh=p == 0)
        if p == 0:
            denoised = mean
        zs.append(z)
        fjvs.append(analysis(jv.to(wd)) * scale)
    fjv = torch.stack(fjvs)
    if ctx.mean_only_fallback:  # a sample that failed on a later probe drops its earlier probes too
        fjv[:, ctx.fallback_mask(step, x)] = 0
    c = hutchinson_coefficients(torch.stack(zs), fjv, channel_average=channel_average, c_max=c_max, tile=tile)
    xi = ctx.normal(draw_shape, step, dtype=wd, device=x.device).view(coef_shape)
    std = torch.sqrt(sigma_up ** 2 + (sigma_t - sigma_down) ** 2 * c)
    x_s = ddim_mean(denoised, x, sigma_t, sigma_down) + synthesis(std * xi)
    return x_s.to(x.dtype), denoised
