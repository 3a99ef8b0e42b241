"""Hutchinson coefficient estimate and structured noise synthesis (the ``cov_ddim`` step), pure PyTorch.

Notation (docs/design.md, "cov_ddim"): ``F`` is the orthonormal basis (identity / dct / convdct), ``J = dD/dx``, and
``J ~= F^T diag(c) F``. One Hutchinson probe ``z`` (Rademacher, coefficient space) gives the tangent
``v = F^T z``; from ``Jv`` the estimate is ``c_hat = z * (F Jv)``. The step then draws

    x_s = m + F^T( sqrt(sigma_up^2 + (sigma_t - sigma_down)^2 * c) * xi ),   m = D + (sigma_down/sigma_t)(x_t - D)

Shapes: images ``(B, C, H, W)``; stacked tangents / JVPs ``(P, B, C, H, W)`` for ``P`` probes.
The variance arithmetic is done in float32 at least, whatever the storage dtype.
"""
from __future__ import annotations

import torch

from ..common import check_op
from ..dct.reference import analysis, synthesis
from ..rng.reference import STREAM_NOISE, STREAM_PROBE, philox_normal, philox_rademacher


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype for a storage dtype: float32 for half types, else the dtype itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def probe(seed: int, shape, *, sample_offset: int, step: int, index: int = 0,
          dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The Rademacher probe ``z`` number ``index`` of a step, in coefficient space. ``shape = (B, C, H, W)``."""
    return philox_rademacher(seed, shape, sample_offset=sample_offset, step=step,
                             stream=STREAM_PROBE + index, dtype=dtype, device=device)


def probe_tangent(seed: int, shape, *, sample_offset: int, step: int, index: int = 0, basis: str,
                  block: int = 8, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The JVP tangent ``v = F^T z`` for probe ``index`` (regenerable from the seed: never stored)."""
    z = probe(seed, shape, sample_offset=sample_offset, step=step, index=index, dtype=dtype, device=device)
    return synthesis(z, basis, block)


def hutchinson_coefficients(z: torch.Tensor, fjv: torch.Tensor, *, channel_average: bool = True,
                            c_max: float | None = 1.0, tile: int | None = None) -> torch.Tensor:
    """Per-coefficient diagonal estimate of ``F J F^T``.

    ``z``, ``fjv``: ``(P, B, C, H, W)`` probes and transformed JVPs ``F J F^T z`` (or ``(P, B, C, R, H, W)``
    on the overlapping frame). Returns ``(B, C, H, W)`` (``(B, 1, H, W)`` broadcastable when
    ``channel_average``): the mean over probes of ``z * fjv``, averaged over channels, and with ``tile`` (the
    basis' block: 1 for pixels) over the positions that share an in-block frequency (:func:`tile_mean`),
    clamped to ``[0, c_max]`` (``c_max=None``: no upper clamp).
    """
    c = (z.to(work_dtype(fjv.dtype)) * fjv.to(work_dtype(fjv.dtype))).mean(dim=0)
    if channel_average:
        c = c.mean(dim=1, keepdim=True)
    if tile is not None:
        c = tile_mean(c, tile)
    return c.clamp(min=0.0, max=c_max)


def tile_mean(c: torch.Tensor, tile: int) -> torch.Tensor:
    """Spatial averaging of coefficients ``(B, C, [R,] H, W)`` laid out in ``tile x tile`` blocks: each
    in-block frequency gets its mean over all block positions (and over the frame's shifts ``R``), per
    sample and channel. Same shape as ``c``."""
    *lead, h, w = c.shape
    if h % tile or w % tile:
        raise ValueError(f"tile_mean: the block {tile} must divide the image size {h} x {w}")
    t = c.reshape(*lead, h // tile, tile, w // tile, tile).mean(dim=(-4, -2), keepdim=True)
    if len(lead) > 2:  # the overlapping frame's shifts are translates too
        t = t.mean(dim=tuple(range(2, len(lead))), keepdim=True)
    return t.expand(*lead, h // tile, tile, w // tile, tile).reshape(c.shape)


def structured_noise(mean: torch.Tensor, c: torch.Tensor, xi: torch.Tensor, *, sigma_up: float,
                     scale: float, basis: str, block: int = 8) -> torch.Tensor:
    """``mean + F^T(sqrt(sigma_up^2 + scale^2 * c) * xi)``; ``xi`` is standard normal in coefficient space."""
    wd = work_dtype(mean.dtype)
    std = torch.sqrt(sigma_up ** 2 + scale ** 2 * c.to(wd))
    return (mean.to(wd) + synthesis(std * xi.to(wd), basis, block)).to(mean.dtype)


def ddim_mean(denoised: torch.Tensor, x_t: torch.Tensor, sigma_t: float, sigma_down: float) -> torch.Tensor:
    """``D + (sigma_down / sigma_t) (x_t - D)`` in the accumulation dtype."""
    wd = work_dtype(x_t.dtype)
    d = denoised.to(wd)
    return d + (sigma_down / sigma_t) * (x_t.to(wd) - d)


def structured_step(denoised: torch.Tensor, x_t: torch.Tensor, jvps: torch.Tensor, seed: int, *,
                    sample_offset: int, step: int, sigma_t: float, sigma_down: float, sigma_up: float,
                    basis: str, block: int = 8, channel_average: bool = True,
                    c_max: float | None = 1.0) -> torch.Tensor:
    """One whole structured-noise step: the op a fused kernel replaces.

    ``denoised``, ``x_t``: ``(B, C, H, W)``; ``jvps``: ``(P, B, C, H, W)``, the JVPs ``J F^T z_p`` of the
    ``P`` probes regenerated here from ``seed``. Returns ``x_s`` with the dtype of ``x_t``.
    """
    shape = x_t.shape
    wd = work_dtype(x_t.dtype)
    z = torch.stack([probe(seed, shape, sample_offset=sample_offset, step=step, index=p, dtype=wd,
                           device=x_t.device) for p in range(jvps.shape[0])])
    fjv = analysis(jvps.to(wd), basis, block)
    c = hutchinson_coefficients(z, fjv, channel_average=channel_average, c_max=c_max)
    xi = philox_normal(seed, shape, sample_offset=sample_offset, step=step, stream=STREAM_NOISE, dtype=wd,
                       device=x_t.device)
    mean = ddim_mean(denoised, x_t, sigma_t, sigma_down)
    out = structured_noise(mean, c, xi, sigma_up=sigma_up, scale=sigma_t - sigma_down, basis=basis, block=block)
    return out.to(x_t.dtype)


OPS = ("probe_tangent", "structured_step")


def supports(op: str, **args) -> None:
    """The reference runs every op on every valid argument (``ops/common.py``: what ``supports`` answers)."""
    check_op(op, OPS, __name__)
    return None
