"""Fused Triton kernels of the ``cov_ddim`` / ``diag_hutchinson`` step (blockwise or identity basis).

* :func:`probe_tangent` - the Rademacher probe is generated in-register from (seed, counters) and
  inverse-transformed to the JVP tangent in one pass; it is never stored and is regenerated later.
* :func:`structured_step` - ONE kernel from ``(D, x_t, Jv)`` to ``x_s``: per strip of blocks it
  transforms every probe's ``Jv`` of every channel, multiplies by the regenerated probes, averages over
  channels (and probes) in registers, clamps, forms ``sqrt(sigma_up^2 + s^2 c)``, multiplies by
  in-register Gaussian noise, inverse-transforms, adds the DDIM mean and stores. Memory traffic: read
  ``Jv`` (P x), ``D`` and ``x_t`` once, write ``x_s`` once; the coefficients never touch memory.

The identity basis runs the same kernel with ``K = 1``. Not run here (:func:`supports` says why;
:mod:`covkernels.ops.dispatch` runs the reference instead and reports it): the global ``dct`` basis (a dense
transform per plane, torch matmuls in the reference, the same random stream), float64 data, and blocks the
fused kernels cannot hold in registers.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import FLOAT64, GLOBAL_DCT, alloc, block_too_large, check_op, contiguous, unsupported
from ..dct import reference as dct_ref
from ..dct.triton import MAX_FUSED_BLOCK, _strip_width, block_transform, load_matrix, strip_offsets
from ..rng.reference import STREAM_NOISE, STREAM_PROBE
from ..rng.triton import normal, rademacher

_STREAM_NOISE = tl.constexpr(STREAM_NOISE)  # the reference's stream ids: a compiled kernel may only read constexpr globals
_STREAM_PROBE = tl.constexpr(STREAM_PROBE)


@triton.jit
def _probe_tangent_kernel(out_ptr, m_ptr, C, H, W, seed, sample_offset, step, stream,
                          K: tl.constexpr, TW: tl.constexpr):
    plane_row = tl.program_id(0)
    blocks_per_col = H // K
    plane = plane_row // blocks_per_col
    offs, mask = strip_offsets((plane_row % blocks_per_col) * K, tl.program_id(1) * TW, W, K, TW)
    sample = sample_offset + plane // C
    z = rademacher(seed, (plane % C) * H * W + offs, sample, step, stream)
    v = block_transform(z, load_matrix(m_ptr, K, True), K, TW)
    tl.store(out_ptr + plane.to(tl.int64) * H * W + offs, v.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _channel_estimate(jv_ptr, probe_stride, base, elem, offs, mask, m, P: tl.constexpr, seed, sample, step,
                      K: tl.constexpr, TW: tl.constexpr):
    """Sum over probes of ``z_p * (F Jv_p)`` for one channel's strip (float32)."""
    acc = tl.zeros((K, TW), dtype=tl.float32)
    for p in tl.static_range(P):
        jv = tl.load(jv_ptr + p * probe_stride + base + offs, mask=mask, other=0.0).to(tl.float32)
        z = rademacher(seed, elem, sample, step, _STREAM_PROBE + p)
        acc += z * block_transform(jv, m, K, TW)
    return acc


@triton.jit
def _emit_channel(d_ptr, x_ptr, out_ptr, base, elem, offs, mask, mt, std, r, seed, sample, step,
                  K: tl.constexpr, TW: tl.constexpr):
    """``x_s = D + r (x_t - D) + F^T(std * xi)`` for one channel's strip."""
    xi = normal(seed, elem, sample, step, _STREAM_NOISE)
    noise = block_transform(std * xi, mt, K, TW)
    d = tl.load(d_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    xt = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + base + offs, (d + r * (xt - d) + noise).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _clamped_std(c, var0, scale2, c_max, HAS_CMAX: tl.constexpr):
    c = tl.maximum(c, 0.0)
    if HAS_CMAX:
        c = tl.minimum(c, c_max)
    return tl.sqrt(var0 + scale2 * c)


@triton.jit
def _structured_step_kernel(d_ptr, x_ptr, jv_ptr, out_ptr, m_ptr, H, W, probe_stride, seed, sample_offset,
                            step, r, var0, scale2, c_max, C: tl.constexpr, P: tl.constexpr, K: tl.constexpr,
                            TW: tl.constexpr, CHANNEL_AVERAGE: tl.constexpr, HAS_CMAX: tl.constexpr):
    # C and P are compile-time: loops over a few channels/probes unroll (and Triton 3.6's interpreter
    # cannot iterate over a runtime scalar).
    strip = tl.program_id(0)
    blocks_per_col = H // K
    b = strip // blocks_per_col
    offs, mask = strip_offsets((strip % blocks_per_col) * K, tl.program_id(1) * TW, W, K, TW)
    sample = sample_offset + b
    m = load_matrix(m_ptr, K, False)
    mt = load_matrix(m_ptr, K, True)
    plane = H * W
    if CHANNEL_AVERAGE:
        total = tl.zeros((K, TW), dtype=tl.float32)
        for c in tl.static_range(C):
            base = (b * C + c).to(tl.int64) * plane
            total += _channel_estimate(jv_ptr, probe_stride, base, c * plane + offs, offs, mask, m, P, seed,
                                       sample, step, K, TW)
        std = _clamped_std(total / (C * P), var0, scale2, c_max, HAS_CMAX)
        for c in tl.static_range(C):
            base = (b * C + c).to(tl.int64) * plane
            _emit_channel(d_ptr, x_ptr, out_ptr, base, c * plane + offs, offs, mask, mt, std, r, seed, sample,
                          step, K, TW)
    else:
        for c in tl.static_range(C):
            base = (b * C + c).to(tl.int64) * plane
            est = _channel_estimate(jv_ptr, probe_stride, base, c * plane + offs, offs, mask, m, P, seed,
                                    sample, step, K, TW)
            std = _clamped_std(est / P, var0, scale2, c_max, HAS_CMAX)
            _emit_channel(d_ptr, x_ptr, out_ptr, base, c * plane + offs, offs, mask, mt, std, r, seed, sample,
                          step, K, TW)


OPS = ("probe_tangent", "structured_step")


def supports(op: str, **args) -> str | None:
    """Why this backend does not run ``op`` on ``args`` (the reference's argument names), or None when it
    does. The checks and their order are those the kernels need; a block that is not a power of two is an
    error of the step, not a reason."""
    check_op(op, OPS, __name__)
    basis, block = args["basis"], args["block"]
    if basis == "dct":
        return GLOBAL_DCT
    if (args["dtype"] if op == "probe_tangent" else args["x_t"].dtype) == torch.float64:
        return FLOAT64
    if op == "probe_tangent":
        return block_too_large(block, MAX_FUSED_BLOCK) if basis == "convdct" and block > MAX_FUSED_BLOCK else None
    k = _block_of(basis, block)
    if k in STEP_STRIP:
        return None
    return block_too_large(block, max(STEP_STRIP)) if k > max(STEP_STRIP) else f"block {block}: no fused kernel"


def _block_of(basis: str, block: int) -> int:
    k = 1 if basis == "identity" else block
    if k & (k - 1):
        raise ValueError(f"the triton backend needs a power-of-two block, got block={block}")
    return k


def _as_nchw(x: torch.Tensor, basis: str):
    """``(B, C, H, W)`` view for the kernels. The identity basis sees every channel as one flat row (any
    ``(B, ...)`` data works, and long strips mean few programs)."""
    if basis != "identity":
        return x
    return x.reshape(x.shape[0], x.shape[1] if x.dim() == 4 else 1, 1, -1)


# Widest strip of the fused structured step per block size. Ahead-of-time builds for sm_80/sm_90
# (benchmarks/triton_aot.py) show the unrolled channel loop spilling at K=8 with a 64-wide strip
# (255 registers, ~2.9 KB spilled per thread), 12-16 B on sm_80 at 16, none at 8 (40 registers); K=4 builds
# clean at 32 (72 registers).
# At K=16 the kernel spills ~178 KB whatever the strip, so that block takes the reference path.
STEP_STRIP = {1: 1024, 2: 64, 4: 32, 8: 8}


def _strip(w: int, k: int) -> int:
    return min(1024, triton.next_power_of_2(w)) if k == 1 else _strip_width(w, k)


def _step_strip(w: int, k: int) -> int:
    return max(k, min(STEP_STRIP[k], triton.next_power_of_2(w)))


def _geometry(view: torch.Tensor, basis: str, block: int):
    """``(B, C, H, W, K, strip width, K x K DCT matrix)`` of a launch, the block checked."""
    k = _block_of(basis, block)
    if basis == "convdct":
        dct_ref.check_block(view.shape, k)
    b, c, h, w = view.shape
    return b, c, h, w, k, _strip(w, k), dct_ref.dct_matrix(k, torch.float32, view.device)


def probe_tangent(seed: int, shape, *, sample_offset: int, step: int, index: int = 0, basis: str, block: int = 8,
                  dtype=torch.float32, device=None) -> torch.Tensor:
    """Triton twin of :func:`covkernels.ops.noise.reference.probe_tangent`."""
    dct_ref.check_basis(basis)
    if basis == "dct":
        raise unsupported("triton", "probe_tangent", GLOBAL_DCT)
    out = alloc(shape, dtype, device)
    view = _as_nchw(out, basis)
    b, c, h, w, k, tw, m = _geometry(view, basis, block)
    if view.numel():
        _probe_tangent_kernel[(b * c * (h // k), triton.cdiv(w, tw))](view, m, c, h, w, int(seed), sample_offset,
                                                                      step, STREAM_PROBE + index, K=k, TW=tw)
    return out


def structured_step(denoised, x_t, jvps, seed, *, sample_offset, step, sigma_t, sigma_down, sigma_up, basis,
                    block=8, channel_average=True, c_max=1.0, out=None):
    """Triton twin of :func:`covkernels.ops.noise.reference.structured_step` (one fused kernel)."""
    dct_ref.check_basis(basis)
    if basis == "dct":
        raise unsupported("triton", "structured_step", GLOBAL_DCT)
    d, x, jv = (contiguous(t) for t in (denoised, x_t, jvps))
    out = alloc(x_t.shape, x_t.dtype, x_t.device) if out is None else out
    dv, xv, ov = _as_nchw(d, basis), _as_nchw(x, basis), _as_nchw(out, basis)
    b, c, h, w, k, _, m = _geometry(xv, basis, block)
    tw = _step_strip(w, k)
    if xv.numel():
        _structured_step_kernel[(b * (h // k), triton.cdiv(w, tw))](
            dv, xv, jv, ov, m, h, w, x.numel(), int(seed), sample_offset, step,
            sigma_down / sigma_t, sigma_up ** 2, (sigma_t - sigma_down) ** 2, 0.0 if c_max is None else c_max,
            C=c, P=jv.shape[0], K=k, TW=tw, CHANNEL_AVERAGE=bool(channel_average), HAS_CMAX=c_max is not None)
    return out
