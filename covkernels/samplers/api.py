"""``covkernels.sample``: noise at sigma_max -> n steps of a registered sampler, in one call."""
from __future__ import annotations

import torch

from .. import steps as step_lib
from ..ops.rng.reference import STREAM_INIT, philox_normal
from ..schedules import get_sigmas
from ..steps import draw_seed
from .common import check_inputs
from .registry import get_sampler


def sample(model, shape, sampler: str = "cov_ddim", steps: int = 8, sigma_min: float = 0.002,
           sigma_max: float = 80.0, schedule: str = "karras", rho: float = 7.0, generator=None, device=None,
           dtype: torch.dtype = torch.float32, extra_args=None, callback=None, disable=None, sample_offset: int = 0,
           sigmas=None, **options) -> torch.Tensor:
    """One-line sampling: noise of ``shape = (B, ...)`` at ``sigma_max`` -> ``steps`` steps of ``sampler``.

    The initial noise comes from the same counter-based stream as all other noise, so sample ``b`` is the
    same whatever the batch size (pass ``sample_offset`` when sharding). ``sigmas``: an explicit schedule
    (then ``steps``, ``sigma_min``, ``sigma_max``, ``schedule``, ``rho`` are not used). ``options`` go to
    the sampler.
    """
    fn = get_sampler(sampler)
    if sigmas is None:
        sigmas = get_sigmas(schedule, steps, sigma_min, sigma_max, rho, device=device)
    else:
        sigmas = check_inputs(torch.zeros(1, 1, device=device), sigmas)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    shape = tuple(shape)
    if len(shape) < 2 or any(not isinstance(n, int) or n < 1 for n in shape):
        raise ValueError(f"shape must be (B, ...) of positive ints, got {shape}")
    step_lib.check_sample_offset(sample_offset)
    seed = draw_seed(generator)
    x = philox_normal(seed, shape, sample_offset=sample_offset, step=0, stream=STREAM_INIT, dtype=dtype,
                      device=device) * sigmas[0].to(dtype)
    return fn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, generator=generator,
              sample_offset=sample_offset, **options)
