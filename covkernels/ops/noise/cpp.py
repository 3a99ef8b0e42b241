"""Compiled-CPU twin of :mod:`covkernels.ops.noise.reference` (``covkernels._C``, csrc/noise/).

* :func:`probe_tangent` - the Rademacher probe regenerated from its counters and inverse-transformed in
  one pass (never stored);
* :func:`structured_step` - one fused pass from ``(D, x_t, Jv)`` to ``x_s`` for the identity and
  ``convdct`` bases: the coefficients and the noise live in a per-thread strip buffer.

The global ``dct`` basis is a dense transform per plane: its two transforms are torch matrix products
and the kernel does everything between them in coefficient space (estimate, clamp, standard deviation,
noise), so the random streams are still the compiled ones.
"""
from __future__ import annotations

import torch

from ... import _C  # noqa: F401  (loading it registers torch.ops.covkernels_cpu)
from ..common import alloc, contiguous
from ..dct import reference as dct_ref
from ..rng.cpp import signed_seed
from ..rng.reference import STREAM_NOISE, STREAM_PROBE, check_counter_range
from . import reference as ref

C = torch.ops.covkernels_cpu  # the compiled kernels as stable-ABI operators (csrc/python/ops.cpp)


def _check_basis(basis: str) -> None:
    if basis not in dct_ref.BASES:
        raise ValueError(f"basis must be one of {dct_ref.BASES}, got {basis!r}")


def _kernel_view(t: torch.Tensor, basis: str) -> torch.Tensor:
    """The ``(B, C, H, W)`` view a kernel walks: identity data of any ``(B, C, ...)`` shape is one long row
    per channel (so channel averaging is over dim 1, as in the reference)."""
    if basis == "identity":
        return t.reshape(t.shape[0], t.shape[1] if t.dim() > 1 else 1, 1, -1)
    return t


def _kernel_block(basis: str, block: int, shape) -> int:
    if basis == "convdct":
        dct_ref.check_block(shape, block)
        return block
    return 1


def probe_tangent(seed: int, shape, *, sample_offset: int, step: int, index: int = 0, basis: str, block: int = 8,
                  dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Compiled twin of :func:`covkernels.ops.noise.reference.probe_tangent`."""
    _check_basis(basis)
    shape = tuple(shape)
    check_counter_range(shape, sample_offset)
    if basis != "identity" and len(shape) != 4:  # other layouts: the reference composition
        return ref.probe_tangent(seed, shape, sample_offset=sample_offset, step=step, index=index, basis=basis,
                                 block=block, dtype=dtype, device=device)
    k = _kernel_block(basis, block, shape)
    out = alloc(shape, dtype, device or "cpu")
    if out.numel():
        C.probe_tangent(_kernel_view(out, basis), signed_seed(seed), sample_offset, step,
                         STREAM_PROBE + index, k)
    return dct_ref.idct2(out) if basis == "dct" else out


def structured_step(denoised, x_t, jvps, seed, *, sample_offset, step, sigma_t, sigma_down, sigma_up, basis,
                    block=8, channel_average=True, c_max=1.0):
    """Compiled twin of :func:`covkernels.ops.noise.reference.structured_step` (one fused pass)."""
    _check_basis(basis)
    # Other layouts, and inputs of mixed dtypes (the reference converts each to the work dtype; the kernel
    # reads one storage dtype), take the reference composition.
    if (basis != "identity" and x_t.dim() != 4) or not denoised.dtype == jvps.dtype == x_t.dtype:
        return ref.structured_step(denoised, x_t, jvps, seed, sample_offset=sample_offset, step=step,
                                   sigma_t=sigma_t, sigma_down=sigma_down, sigma_up=sigma_up, basis=basis,
                                   block=block, channel_average=channel_average, c_max=c_max)
    k = _kernel_block(basis, block, x_t.shape)
    check_counter_range(tuple(x_t.shape), sample_offset)
    dtype = x_t.dtype
    x = contiguous(x_t)
    # (seed, sample_offset, step, ratio, var0, scale2, c_max, block, channel_average, noise/probe streams)
    params = (signed_seed(seed), sample_offset, step, sigma_down / sigma_t, sigma_up ** 2,
              (sigma_t - sigma_down) ** 2, c_max, k, bool(channel_average), STREAM_NOISE, STREAM_PROBE)
    if basis == "dct":
        # Dense transforms in torch; estimate -> std -> std * xi fused in coefficient space (block 1).
        wd = ref.work_dtype(dtype)
        fjv = contiguous(dct_ref.dct2(jvps.to(wd)))
        noise = alloc(x.shape, wd, x.device)
        if x.numel():
            C.structured_step(noise, noise, fjv, noise, *params, True)  # D, x_t unread (noise only)
        return (ref.ddim_mean(denoised, x, sigma_t, sigma_down) + dct_ref.idct2(noise)).to(dtype)
    d, jv = contiguous(denoised), contiguous(jvps)
    out = alloc(x.shape, dtype, x.device)
    if x.numel():
        xv = _kernel_view(x, basis)
        C.structured_step(_kernel_view(d, basis), xv, jv.view(jv.shape[0], *xv.shape), _kernel_view(out, basis),
                           *params, False)
    return out
