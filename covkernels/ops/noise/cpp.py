"""Compiled-CPU twin of :mod:`covkernels.ops.noise.reference` (``covkernels._C``, csrc/noise/).

* :func:`probe_tangent` - the Rademacher probe regenerated from its counters and inverse-transformed in
  one pass (never stored);
* :func:`structured_step` - one fused pass from ``(D, x_t, Jv)`` to ``x_s`` for the identity and
  ``convdct`` bases: the coefficients and the noise live in a per-thread strip buffer.

The global ``dct`` basis is a dense transform per plane: its two transforms are torch matrix products
and the kernel does everything between them in coefficient space (estimate, clamp, standard deviation,
noise), so the random streams are still the compiled ones. Not run here (:func:`supports` says why;
:mod:`covkernels.ops.dispatch` runs the reference and reports it): data that is not ``(B, C, H, W)`` in a
transform basis, and a step whose inputs have different dtypes (the kernel reads one storage dtype).
"""
from __future__ import annotations

import torch

from ..._extension import cpu_operators
from ..common import alloc, check_op, contiguous, dims, mixed_dtypes
from ..dct import reference as dct_ref
from ..rng.cpp import signed_seed
from ..rng.reference import STREAM_NOISE, STREAM_PROBE, check_counter_range
from . import reference as ref

C = cpu_operators()  # torch.ops.covkernels_cpu: the compiled kernels as stable-ABI operators (csrc/python/ops.cpp)


OPS = ("probe_tangent", "structured_step")


def supports(op: str, **args) -> str | None:
    """Why this backend does not run ``op`` on ``args`` (the reference's argument names), or None when it
    does. An unknown basis is an error of the op, not a reason."""
    check_op(op, OPS, __name__)
    basis = args["basis"]
    if basis not in dct_ref.BASES:
        return None
    ndim = len(args["shape"]) if op == "probe_tangent" else args["x_t"].dim()
    if basis != "identity" and ndim != 4:
        return dims(ndim)
    if op == "structured_step" and not args["denoised"].dtype == args["jvps"].dtype == args["x_t"].dtype:
        return mixed_dtypes(args["denoised"], args["x_t"], args["jvps"])
    return None


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
    dct_ref.check_basis(basis)
    shape = tuple(shape)
    check_counter_range(shape, sample_offset)
    k = _kernel_block(basis, block, shape)
    out = alloc(shape, dtype, device or "cpu")
    if out.numel():
        C.probe_tangent(_kernel_view(out, basis), signed_seed(seed), sample_offset, step,
                         STREAM_PROBE + index, k)
    return dct_ref.idct2(out) if basis == "dct" else out


def structured_step(denoised, x_t, jvps, seed, *, sample_offset, step, sigma_t, sigma_down, sigma_up, basis,
                    block=8, channel_average=True, c_max=1.0):
    """Compiled twin of :func:`covkernels.ops.noise.reference.structured_step` (one fused pass)."""
    dct_ref.check_basis(basis)
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
