"""The variant table of ``benchmarks/triton_aot.py``: which Triton kernels it builds, with which constexprs
and storage dtypes (``variants(grid)``), and the argument types a build gives each kernel (``arg_types``).

The grids follow the launch wrappers of :mod:`covkernels.ops` (strip widths, the largest fused block, the
structured step's strips), so a build here is a build of what the samplers launch.
"""
from __future__ import annotations

import dataclasses

# storage dtype of the image-like tensors -> Triton pointer type; Lanczos bases and DCT matrices are fp32
PTR = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16", "fp64": "*fp64"}
FLOAT_ARGS = {"r", "var0", "scale2", "c_max"}
FP32_POINTERS = {"m_ptr", "part_ptr", "coef_ptr", "scale_ptr", "basis_ptr", "w_ptr"}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One compile: a kernel (``module:function`` under covkernels.ops), its constexprs and storage dtype."""

    kernel: str
    constexprs: tuple  # ((name, value), ...)
    storage: str = "fp32"

    @property
    def label(self) -> str:
        return ",".join([f"{k}={v}" for k, v in self.constexprs] + [f"dtype={self.storage}"])


def _v(kernel, storage="fp32", **constexprs) -> Variant:
    return Variant(kernel, tuple(constexprs.items()), storage)


def _limits():
    """(largest fused block, {block: widest structured-step strip}) as the wrappers define them."""
    from covkernels.ops.dct.triton import MAX_FUSED_BLOCK
    from covkernels.ops.noise.triton import STEP_STRIP

    return MAX_FUSED_BLOCK, STEP_STRIP


def _cov_step(storage="fp32", C=3, P=1, K=8, TW=None, CHANNEL_AVERAGE=True, HAS_CMAX=True):
    # cov_ddim's defaults (block 8, channel average, c_max=1) on a 3-channel image; TW None: the widest
    # strip the wrapper launches for this block (images at least that wide)
    TW = _limits()[1][K] if TW is None else TW
    return _v("noise:_structured_step_kernel", storage, C=C, P=P, K=K, TW=TW, CHANNEL_AVERAGE=CHANNEL_AVERAGE,
              HAS_CMAX=HAS_CMAX)


def _diag_step(storage="fp32", C=3, P=1, HAS_CMAX=True):
    # diag_hutchinson: identity basis (K = 1, channels as flat rows of >= 1024 px), no channel average
    return _cov_step(storage, C=C, P=P, K=1, TW=1024, CHANNEL_AVERAGE=False, HAS_CMAX=HAS_CMAX)


def variants(grid: str) -> list[Variant]:
    """The kernel variants of a grid. Strip widths follow the wrappers: ``max(K, min(64, next_pow2(W)))``
    for the DCT and the probes, ``STEP_STRIP[K]`` at most for the structured step, ``min(1024,
    next_pow2(H W))`` for the identity basis; blocks above ``MAX_FUSED_BLOCK`` take the reference path.
    Lanczos rows are ``j + 1`` for iteration ``j`` with reorthogonalisation (the default;
    ``lanczos_steps=3`` gives rows 1-3)."""
    if grid not in ("ci", "full"):
        raise ValueError(f"grid must be 'ci' or 'full', got {grid!r}")
    out = []
    for dt in ("fp32", "bf16"):
        out += [_v("rng:_normal_kernel", dt, BLOCK=1024),
                _v("dct:_block_dct_kernel", dt, K=8, TW=64, INVERSE=False),
                _v("dct:_block_dct_kernel", dt, K=8, TW=64, INVERSE=True),
                _v("noise:_probe_tangent_kernel", dt, K=8, TW=64),
                _v("noise:_probe_tangent_kernel", dt, K=1, TW=1024),
                _cov_step(dt), _diag_step(dt), _v("lanczos:_scale_kernel", "fp32", CHUNK=1024),
                _v("lanczos:_synthesis_kernel", dt, rows=3, CHUNK=1024)]
        rows = (1, 2, 3) if dt == "fp32" else (3,)  # the Lanczos passes differ only in their unrolled rows
        out += [_v(f"lanczos:_{k}_kernel", dt, rows=r, CHUNK=1024) for k in ("dots", "residual") for r in rows]
    if grid == "full":
        out += [_v("rng:_normal_kernel", dt, BLOCK=1024) for dt in ("fp16", "fp64")]
        max_block = _limits()[0]  # larger blocks take the reference path
        for dt in ("fp32", "fp16", "bf16"):
            for k in (k for k in (4, 8, 16) if k <= max_block):
                for tw in (32, 64):
                    out += [_v("dct:_block_dct_kernel", dt, K=k, TW=tw, INVERSE=inv) for inv in (False, True)]
                    out.append(_v("noise:_probe_tangent_kernel", dt, K=k, TW=tw))
        out += [_cov_step("fp16"), _diag_step("fp16"), _cov_step(K=4), _cov_step(TW=8),
                _cov_step(C=1), _cov_step(C=4), _cov_step(CHANNEL_AVERAGE=False), _cov_step(HAS_CMAX=False),
                _cov_step(K=4, C=1), _diag_step(P=2), _diag_step(P=4), _diag_step(C=1),
                _diag_step(HAS_CMAX=False)]
        out += [_v(f"lanczos:_{k}_kernel", "fp32", rows=r, CHUNK=1024) for k in ("dots", "residual", "synthesis")
                for r in (4, 8, 16)]
        out += [_v(f"lanczos:_{k}_kernel", "fp16", rows=3, CHUNK=1024) for k in ("dots", "residual", "synthesis")]
    return list(dict.fromkeys(out))  # drop repeats, keep order


def arg_types(fn, variant: Variant) -> dict:
    """Argument types as the JIT would see them: storage pointers, fp32 scratch, i64 seed, i32 sizes."""
    const = dict(variant.constexprs)
    sig = {}
    for name in fn.arg_names:
        if name in const:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*fp32" if name in FP32_POINTERS else PTR[variant.storage]
        elif name == "seed":
            sig[name] = "i64"  # 63-bit run seeds
        else:
            sig[name] = "fp32" if name in FLOAT_ARGS else "i32"
    return sig


def kernel_function(name: str):
    """The ``@triton.jit`` function ``module:function`` of ``covkernels.ops.<module>.triton``."""
    import importlib

    module, fn = name.split(":")
    return getattr(importlib.import_module(f"covkernels.ops.{module}.triton"), fn)
