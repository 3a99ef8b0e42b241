"""CUDA-graph capture of a whole ``cov_ddim`` step, model calls included (a
:class:`covkernels.executor.CapturedStep`).

Kept apart from :mod:`covkernels.executor` because a step needs :mod:`covkernels.steps`, which (through
guidance) needs the executor: this module sits on top of both, so the imports run one way.
"""
from __future__ import annotations

import torch

from . import steps as step_lib
from .executor import CapturedStep


def cov_ddim_step_fn(model, x: torch.Tensor, sigma_t: float, sigma_s: float, *, step: int = 0, generator=None,
                     extra_args=None, eta: float = 0.0, basis: str = "convdct", block: int = 8,
                     channel_average: bool = True, c_max: float | None = 1.0, jvp: str = "finite_difference",
                     backend: str = "auto"):
    """``f(x) -> (x_s, denoised)``: one ``cov_ddim`` step sigma_t -> sigma_s with everything but ``x`` fixed
    (the run seed is drawn here from ``generator``). Finite checks are off: they synchronise with the host,
    which a graph capture forbids. Eager and captured calls of ``f`` give the same result."""
    ctx = step_lib.StepContext(model, x, extra_args, generator=generator, backend=backend, jvp=jvp,
                               check_finite=False)
    step_lib.check_basis(basis, block, x)

    def f(x_in: torch.Tensor):
        return step_lib.structured_step(ctx, x_in, step, float(sigma_t), float(sigma_s), eta=eta, basis=basis,
                                        block=block, channel_average=channel_average, c_max=c_max)

    return f


def capture_cov_ddim_step(model, x: torch.Tensor, sigma_t: float, sigma_s: float, *, warmup: int = 2, **options):
    """A :class:`CapturedStep` of :func:`cov_ddim_step_fn` (same options): ``captured(x) -> (x_s, denoised)``."""
    return CapturedStep(cov_ddim_step_fn(model, x, sigma_t, sigma_s, **options), x, warmup=warmup)
