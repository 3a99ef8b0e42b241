"""``compile=True`` of the covariance samplers: each step (model call, JVP, fused ops) as one ``torch.compile``
graph with ``fullgraph=True``, compiled once per input shape and reused by every later step and call.

Two graphs per shape: the covariance step (:func:`structured_step`: probe tangents, the JVPs, the fused
structured update) and the mean-only step (:func:`plain_step`: one model call, the DDIM mean, isotropic
noise; with ``final=True`` the step to sigma = 0, which returns the denoised mean). The fused ops are the
registered ``torch.ops.covkernels`` ops (:mod:`covkernels.ops.library`), opaque to the compiler; what changes
from step to step (sigmas, step index, run seed) enters as small tensors, so no step recompiles a graph.

What stays outside the graphs, on purpose: the checks of the model's outputs (shape, dtype, NaN/Inf need the
host and would split the graph; they run on the graph's outputs, with the same messages as eager), the NFE
count, the progress bar and the callback.

Not compiled (refused with the reason): classifier-free guidance (its concurrent executor runs Python on
two streams), ``check_finite="mean_only"`` (data-dependent masks), the overlapping ConvDCT, and JVP
strategies that do not compile with ``fullgraph=True`` (:data:`COMPILABLE_JVP`). ``jvp="auto"`` under
compilation is ``finite_difference``: the one strategy that compiles on every model tested and the one the
eager ``auto`` picks on CPUs.
"""
from __future__ import annotations

import functools

import torch
from tqdm.auto import trange

from . import jvp as jvp_engine
from .ops import library
from .ops.api import STREAM_NOISE, ddim_mean
from .steps import ancestral_split

# Strategies that trace into one graph (python_tests/samplers/test_compile.py measures each; docs/kernels.md, torch.compile).
COMPILABLE_JVP = ("finite_difference", "central_difference")
AUTO_UNDER_COMPILE = "finite_difference"


def jvp_strategy(requested: str) -> str:
    """The JVP strategy a compiled step uses for ``requested``; raises ValueError for one that breaks graphs."""
    if requested == "auto":
        return AUTO_UNDER_COMPILE
    if requested not in COMPILABLE_JVP:
        raise ValueError(f"jvp={requested!r} does not compile into one graph (torch.compile fullgraph=True); with "
                         f"compile=True use one of {COMPILABLE_JVP} or 'auto' ({AUTO_UNDER_COMPILE})")
    return requested


def check_compilable(ctx, stride=None) -> None:
    """Raise ValueError naming the option when a run with these options cannot be compiled."""
    if ctx.guided is not None:
        raise ValueError("compile=True does not support guidance (the guided step runs Python on two streams); "
                         "run guided sampling eagerly")
    if ctx.mean_only_fallback:
        raise ValueError("compile=True does not support check_finite='mean_only' (per-sample masks depend on "
                         "the data); use check_finite=True or False")
    if stride is not None:
        raise ValueError("compile=True does not support the overlapping ConvDCT (stride < block)")


def _sigma_batch(sig: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sig[0].to(x.dtype).expand(x.shape[0])


def structured_step(model, extra: dict, strategy: str, backend: str, x: torch.Tensor, key: torch.Tensor,
                    sig: torch.Tensor, basis: str, block: int, channel_average: bool, c_max, probes: int):
    """One covariance step as :func:`covkernels.steps.structured_step` computes it; ``sig``: float64
    ``[sigma_t, sigma_down, sigma_up]``, ``key``: int64 ``[seed, sample_offset, step]``.
    Returns ``(x_s, denoised, jvps)`` (the JVPs for the checks outside the graph)."""
    ops = torch.ops.covkernels
    sigma = _sigma_batch(sig, x)
    denoised, jvps = None, []
    for p in range(probes):
        v = ops.probe_tangent(key, list(x.shape), p, basis, block, x.dtype, x.device, backend)
        d, jv = jvp_engine.IMPLS[strategy](model, x, sigma, v, extra, denoised)  # later probes reuse the primal
        denoised = d if denoised is None else denoised
        jvps.append(jv)
    jvps = torch.stack(jvps)
    x_s = ops.structured_step(denoised, x, jvps, key, sig, basis, block, channel_average, c_max, backend)
    return x_s, denoised, jvps


def plain_step(model, extra: dict, backend: str, x: torch.Tensor, key: torch.Tensor, sig: torch.Tensor,
               final: bool, noise: bool):
    """The mean-only step of :func:`covkernels.steps.plain_step` (``final``: the step to 0, which returns
    the denoised mean). Returns ``(x_s, denoised)``."""
    denoised = model(x, _sigma_batch(sig, x), **extra)
    if final:
        return denoised, denoised
    x_s = ddim_mean(denoised, x, sig[0], sig[1])
    if noise:
        xi = torch.ops.covkernels.philox_normal(key, list(x.shape), STREAM_NOISE, x_s.dtype, x.device, backend)
        x_s = x_s + sig[2].to(x_s.dtype) * xi
    return x_s.to(x.dtype), denoised


@functools.lru_cache(maxsize=None)
def compiled(kind: str):
    """The ``torch.compile`` of a step function, made once per process: dynamo then keeps one graph per
    input shape (and model, options) and reuses it for every step and call."""
    fn = {"structured": structured_step, "plain": plain_step}[kind]
    return torch.compile(fn, fullgraph=True, dynamic=False)


def structured_loop(ctx, x, sigmas, callback, disable, *, eta: float, cov_sigma_max: float, basis: str, block: int,
                    channel_average: bool, c_max, probes: int = 1, stride=None):
    """:func:`covkernels.samplers.common.covariance_loop` with :func:`structured_step` steps, compiled."""
    check_compilable(ctx, stride)
    strategy = jvp_strategy(ctx.jvp_strategy)
    backend = ctx.ops.name
    s = sigmas.detach().to("cpu", torch.float64).tolist()
    for i in trange(len(s) - 1, disable=disable):
        key = library.stream_key(ctx.seed, ctx.sample_offset, i)
        sigma_down, sigma_up = ancestral_split(s[i], s[i + 1], eta) if s[i + 1] else (0.0, 0.0)
        sig = library.scalars(s[i], sigma_down, sigma_up)
        if s[i + 1] == 0 or s[i] > cov_sigma_max:
            x_next, denoised = compiled("plain")(ctx.model, ctx.extra, backend, x, key, sig, s[i + 1] == 0,
                                                 sigma_up > 0)
            ctx.nfe += 1
        else:
            x_next, denoised, jvps = compiled("structured")(ctx.model, ctx.extra, strategy, backend, x, key, sig,
                                                            basis, block, channel_average, c_max, probes)
            ctx.nfe += 1 + probes
            for jv in jvps:
                ctx._checked(jv, x, i, s[i], "JVP")
        ctx._checked(denoised, x, i, s[i], "denoised")
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x_next
    return x
