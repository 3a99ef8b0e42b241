"""``covkernels.sample``: noise at sigma_max -> n steps of a registered sampler, in one call."""
from __future__ import annotations

import torch

from .. import steps as step_lib
from ..ops.rng.reference import STREAM_INIT, philox_normal
from ..schedules import get_sigmas
from ..steps import draw_seed
from .common import check_inputs
from .registry import get_sampler, spec


# The sampler of ``sample`` and the CLI when none is named: iPNDM, on average within 1.1% of the best baseline
# of each grid cell at 6-8 NFE and the best baseline in 7 of the 8 large-sample cells (README, Quality), where
# the covariance-aware configurations lose 11 of 12 cells on the real-image testbeds.
DEFAULT_SAMPLER = "ipndm"

# The schedule parameters of ``sample`` and their values when the caller leaves them unset (None).
SCHEDULE_DEFAULTS = {"steps": 8, "sigma_min": 0.002, "sigma_max": 80.0, "schedule": "karras", "rho": 7.0}


def schedule_defaults(sampler: str) -> dict:
    """The schedule parameters ``sample`` uses for ``sampler`` where the caller leaves them unset: the
    sampler's recommended ``schedule_defaults`` of the registry over :data:`SCHEDULE_DEFAULTS`."""
    return {**SCHEDULE_DEFAULTS, **spec(sampler).schedule_defaults}


def sample(model, shape, sampler: str = DEFAULT_SAMPLER, steps: int | None = None, sigma_min: float | None = None,
           sigma_max: float | None = None, schedule: str | None = None, rho: float | None = None, generator=None,
           device=None, dtype: torch.dtype = torch.float32, extra_args=None, callback=None, disable=None,
           sample_offset: int = 0, sigmas=None, **options) -> torch.Tensor:
    """One-line sampling: noise of ``shape = (B, ...)`` at ``sigma_max`` -> ``steps`` steps of ``sampler``.

    The initial noise comes from the same counter-based stream as all other noise, so sample ``b`` is the
    same whatever the batch size (pass ``sample_offset`` when sharding). The schedule is either built from
    ``schedule``, ``steps``, ``sigma_min``, ``sigma_max``, ``rho`` (unset: the sampler's recommended
    ``schedule_defaults`` of the registry over :data:`SCHEDULE_DEFAULTS`, karras with 8 steps from 80 to
    0.002, rho 7; ``ipndm``, the default sampler, and ``ode_cov``: exponential down to 0.1; see
    :func:`schedule_defaults`)
    or given as ``sigmas`` (1-D, decreasing); passing ``sigmas`` with any of the others raises ValueError,
    since they would be ignored. ``options`` go to the sampler.
    """
    fn = get_sampler(sampler)
    defaults = schedule_defaults(sampler)
    given = {"steps": steps, "sigma_min": sigma_min, "sigma_max": sigma_max, "schedule": schedule, "rho": rho}
    if sigmas is None:
        args = {k: defaults[k] if v is None else v for k, v in given.items()}
        sigmas = get_sigmas(args["schedule"], args["steps"], args["sigma_min"], args["sigma_max"], args["rho"],
                            device=device)
    else:
        clash = [k for k, v in given.items() if v is not None]
        if clash:
            raise ValueError(f"sigmas is an explicit schedule: {', '.join(clash)} would be ignored; pass either "
                             f"sigmas or {', '.join(clash)}, not both")
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
