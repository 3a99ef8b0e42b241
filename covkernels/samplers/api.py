"""``covkernels.sample``: noise at sigma_max -> n steps of a registered sampler, in one call."""
from __future__ import annotations

import math
import warnings

import torch

from ..ops.dispatch import initial_noise
from ..schedules import get_sigmas
from ..steps import draw_seed
from ..steps.validation import check_inputs, check_sample_offset
from .registry import get_sampler, spec


# The sampler of ``sample`` and the CLI when none is named: iPNDM, on average within 1.1% of the best baseline
# of each grid cell at 6-8 NFE and the best baseline in 7 of the 8 large-sample cells (docs/evaluation.md, Quality), where
# the covariance-aware configurations lose 11 of 12 cells on the real-image testbeds.
DEFAULT_SAMPLER = "ipndm"
# The sampler when none is named and the schedule is the caller's (``sigmas=``, a diffusers scheduler's
# sigmas): DPM-Solver++(2M), whose weights follow the actual steps. iPNDM's equal-step weights were measured
# on our schedules; on a host's, a user's lightly trained diffusers models gave their noisiest images with
# it (issue 29), and benchmarks/results/host_schedules.md finds 2M never significantly worse than the
# variable-step ipndm_v on DDPM-leading, Karras and exponential sigmas and better in 3 of 6 cells.
HOST_SCHEDULE_SAMPLER = "dpmpp_2m"
# iPNDM applies past derivatives with equal-step weights; a step this many times longer in log sigma than
# the median step stretches that extrapolation far beyond where it was measured (DDPM's 10 "leading"
# steps end 0.34 -> 0.01: 5.3x; Karras rho 7 at 4-16 steps: at most 2.7x; exponential: 1x).
IPNDM_MAX_LOG_STEP_RATIO = 4.0


class StepSpacingWarning(UserWarning):
    """A sampler runs on a schedule whose step spacing its formulas do not fit (iPNDM's equal-step weights
    on a schedule with one step much longer than the others)."""


def default_sampler(explicit_sigmas: bool) -> str:
    """The sampler of ``sample`` and the adapters when none is named: :data:`DEFAULT_SAMPLER` on the
    package's own schedules, :data:`HOST_SCHEDULE_SAMPLER` on a schedule the caller brings."""
    return HOST_SCHEDULE_SAMPLER if explicit_sigmas else DEFAULT_SAMPLER


def spacing_warning(sampler: str, sigmas) -> str | None:
    """Why ``sampler``'s assumptions about step spacing do not hold on ``sigmas``, or None."""
    if sampler != "ipndm":
        return None
    s = [float(v) for v in torch.as_tensor(sigmas).detach().flatten().cpu() if v > 0]
    steps = sorted(math.log(a / b) for a, b in zip(s[:-1], s[1:]))
    if len(steps) < 2:
        return None
    ratio = steps[-1] / steps[len(steps) // 2]
    if ratio <= IPNDM_MAX_LOG_STEP_RATIO:
        return None
    return (f"ipndm applies equal-step Adams-Bashforth weights, and one step of this schedule is {ratio:.1f}x "
            f"longer in log sigma than its median step (over {IPNDM_MAX_LOG_STEP_RATIO:g}x); ipndm_v or dpmpp_2m "
            f"use the actual steps (benchmarks/results/host_schedules.md)")


def warn_spacing(sampler: str, sigmas, stacklevel: int = 3) -> None:
    """Emit :class:`StepSpacingWarning` where :func:`spacing_warning` finds a reason."""
    reason = spacing_warning(sampler, sigmas)
    if reason is not None:
        warnings.warn(reason, StepSpacingWarning, stacklevel=stacklevel)


# The schedule parameters of ``sample`` and their values when the caller leaves them unset (None).
SCHEDULE_DEFAULTS = {"steps": 8, "sigma_min": 0.002, "sigma_max": 80.0, "schedule": "karras", "rho": 7.0}


def schedule_defaults(sampler: str) -> dict:
    """The schedule parameters ``sample`` uses for ``sampler`` where the caller leaves them unset: the
    sampler's recommended ``schedule_defaults`` of the registry over :data:`SCHEDULE_DEFAULTS`."""
    return {**SCHEDULE_DEFAULTS, **spec(sampler).schedule_defaults}


def sample(model, shape, sampler: str | None = None, steps: int | None = None, sigma_min: float | None = None,
           sigma_max: float | None = None, schedule: str | None = None, rho: float | None = None, generator=None,
           device=None, dtype: torch.dtype = torch.float32, extra_args=None, callback=None, disable=None,
           sample_offset: int = 0, sigmas=None, **options) -> torch.Tensor:
    """One-line sampling: noise of ``shape = (B, ...)`` at ``sigma_max`` -> ``steps`` steps of ``sampler``.

    The initial noise comes from the same counter-based stream as all other noise, so sample ``b`` is the
    same whatever the batch size (pass ``sample_offset`` when sharding); it is the reference backend's
    stream whatever ``backend`` the sampler runs (``covkernels.ops.dispatch.INITIAL_NOISE_BACKEND`` says
    why). The schedule is either built from ``schedule``, ``steps``, ``sigma_min``, ``sigma_max``, ``rho``
    (unset: the sampler's recommended ``schedule_defaults`` of the registry over :data:`SCHEDULE_DEFAULTS`,
    karras with 8 steps from 80 to 0.002, rho 7; ``ipndm``, the default sampler, and ``ode_cov``:
    exponential down to 0.1; see :func:`schedule_defaults`) or given as ``sigmas`` (1-D, decreasing); passing
    ``sigmas`` with any of the others raises ValueError,
    since they would be ignored. ``sampler``: a registry name; unset, :data:`DEFAULT_SAMPLER` (``ipndm``) on
    the package's schedules and :data:`HOST_SCHEDULE_SAMPLER` (``dpmpp_2m``) on given ``sigmas``. ``ipndm``
    on ``sigmas`` it does not fit warns (:class:`StepSpacingWarning`). ``options`` go to the sampler.
    """
    sampler = default_sampler(sigmas is not None) if sampler is None else sampler
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
        warn_spacing(sampler, sigmas)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    shape = tuple(shape)
    if len(shape) < 2 or any(not isinstance(n, int) or n < 1 for n in shape):
        raise ValueError(f"shape must be (B, ...) of positive ints, got {shape}")
    check_sample_offset(sample_offset)
    seed = draw_seed(generator)
    x = initial_noise(seed, shape, sample_offset=sample_offset, dtype=dtype, device=device) * sigmas[0].to(dtype)
    return fn(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, generator=generator,
              sample_offset=sample_offset, **options)
