"""The one registry of samplers: name -> :class:`SamplerSpec` (function, family, NFE formula, needs-JVP).

``sample``, ``nfe_per_sample``, ``get_sampler``, the CLI, the evaluation grid and the adapters read it, so
adding a sampler means registering it once in its family module (``samplers/<family>.py``). Families:

- ``ode_single``: one-step ODE solvers (DDIM/Euler, Heun, aDDIM);
- ``ode_multistep``: multistep ODE solvers reusing past model outputs (DPM-Solver++(2M), iPNDM, UniPC);
- ``ancestral``: stochastic mean-only samplers (DDPM, noisy DDIM, DPM-Solver++ SDE);
- ``covariance``: samplers whose noise has a covariance estimated from model JVPs.

This module imports nothing of the family modules (they import it), so the arrows run one way.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..steps.validation import check_cov_sigma_max

FAMILIES = ("ode_single", "ode_multistep", "ancestral", "covariance")

# Options every sampler takes (k-diffusion's signature plus our randomness / checks); not "sampler options".
COMMON_PARAMETERS = ("model", "x", "sigmas", "extra_args", "callback", "disable", "generator", "sample_offset",
                     "check_finite")


def _one(options: dict) -> int:
    return 1


@dataclass(frozen=True)
class SamplerSpec:
    """What the rest of the package needs to know about a sampler.

    ``step_cost(options) -> int``: model evaluations of one regular step (a JVP counts as one, its primal as
    another); the step to sigma = 0 always costs one. ``last_step_cost``: cost of the step to 0 (1 for
    every sampler here). ``windowed``: steps that start above ``cov_sigma_max`` are plain 1-NFE steps.
    ``variants``: evaluation-grid rows beyond the default, label -> options. ``guided_defaults``: option
    defaults that change under classifier-free guidance (UniPC: order 2), applied by the adapters.
    ``nfe_fn(sigmas, options) -> int``: the count for samplers whose cost is not per step (hybrids).
    ``needs_final_zero``: the sampler refuses a schedule that does not end in 0 (unset: the hybrids, i.e.
    those with an ``nfe_fn``, whose last step is a posterior draw to 0). ``schedule_defaults``: the
    sampler's recommended schedule parameters (``schedule``, ``sigma_min``, ...), used by ``sample`` where
    the caller leaves them unset, over :data:`covkernels.samplers.api.SCHEDULE_DEFAULTS`. ``spellings``:
    keyword options the sampler takes through ``**options`` besides its named parameters (``ode_cov``'s
    flat spellings of its option objects: ``probes``, ``switch_sigma``, ...); they count as its options,
    with default None (not given).
    """

    name: str
    fn: Callable
    family: str
    summary: str
    step_cost: Callable[[dict], int] = _one
    needs_jvp: bool = False
    stochastic: bool = False
    windowed: bool = False
    variants: dict = field(default_factory=dict)
    guided_defaults: dict = field(default_factory=dict)
    nfe_fn: Callable | None = None
    needs_final_zero: bool | None = None
    schedule_defaults: dict = field(default_factory=dict)
    spellings: tuple = ()

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.needs_final_zero is None:
            object.__setattr__(self, "needs_final_zero", self.nfe_fn is not None)

    def _named(self) -> dict:
        """The sampler's named parameters minus the shared k-diffusion ones (no ``*args`` / ``**options``)."""
        variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        return {n: p for n, p in inspect.signature(self.fn).parameters.items()
                if n not in COMMON_PARAMETERS and p.kind not in variadic}

    def options(self) -> tuple[str, ...]:
        """The sampler's own keyword options: its named parameters minus the shared k-diffusion ones, then
        its ``spellings``."""
        return tuple(self._named()) + tuple(self.spellings)

    def defaults(self) -> dict:
        """Option -> default (None for a spelling: not given)."""
        return {**{n: p.default for n, p in self._named().items()}, **dict.fromkeys(self.spellings)}

    # Capabilities: the one place the rest of the package asks what a sampler takes (never its signature).
    def takes(self, option: str) -> bool:
        """Whether ``option`` is one of the sampler's own keyword options."""
        return option in self.options()

    @property
    def takes_guidance(self) -> bool:
        """Takes a ``guidance`` option (JVP samplers guide inside the engine; others get ``cfg_denoiser``)."""
        return self.takes("guidance")

    @property
    def takes_backend(self) -> bool:
        """Takes a ``backend`` option (runs fused ops picked by ``ops/dispatch.py``)."""
        return self.takes("backend")

    @property
    def takes_jvp(self) -> bool:
        """Takes a ``jvp`` strategy option."""
        return self.takes("jvp")

    @property
    def uses_covariance(self) -> bool:
        """Of the covariance family or needs JVPs: takes the shared covariance options."""
        return self.family == "covariance" or self.needs_jvp

    @property
    def is_baseline(self) -> bool:
        """Mean-only (no covariance, no JVP): what the covariance samplers have to beat."""
        return not self.uses_covariance


REGISTRY: dict[str, SamplerSpec] = {}


def register(name: str, *, family: str, summary: str, step_cost: Callable[[dict], int] = _one,
             needs_jvp: bool = False, stochastic: bool = False, windowed: bool = False, variants: dict | None = None,
             guided_defaults: dict | None = None, nfe_fn: Callable | None = None,
             needs_final_zero: bool | None = None, schedule_defaults: dict | None = None,
             spellings: tuple = ()):
    """Decorator: register ``sample_<name>`` once, with its family and NFE formula."""

    def wrap(fn):
        if name in REGISTRY:
            raise ValueError(f"sampler {name!r} is registered twice")
        REGISTRY[name] = SamplerSpec(name, fn, family, summary, step_cost, needs_jvp, stochastic, windowed,
                                     dict(variants or {}), dict(guided_defaults or {}), nfe_fn, needs_final_zero,
                                     dict(schedule_defaults or {}), tuple(spellings))
        return fn

    return wrap


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def spec(name: str) -> SamplerSpec:
    if name not in REGISTRY:
        raise ValueError(f"sampler must be one of {names()}, got {name!r}")
    return REGISTRY[name]


def get_sampler(name: str):
    """The ``sample_<name>`` function of a registered sampler."""
    return spec(name).fn


def nfe_per_sample(sampler: str, sigmas, *, guided: bool = False, **options) -> int:
    """Model evaluations per sample of a run (a JVP counts as one, its primal as another, as in the papers).

    ``sigmas``: the schedule (or an int number of steps of a schedule ending in 0; then every step but the
    last counts as a full step, also for the windowed covariance samplers). ``options``: the sampler's own
    options that change the count (``lanczos_steps``, ``probes``, ``cov_sigma_max``, ...; defaults from
    :meth:`SamplerSpec.defaults`); an option the sampler does not take raises TypeError. ``guided``: the count
    with classifier-free guidance (JVP samplers: one unconditional forward more per step; others: every
    evaluation doubles). Lanczos is counted at its maximum (an early stop on an invariant Krylov space saves
    JVPs).
    """
    s_spec = spec(sampler)
    accepted = s_spec.options()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"nfe_per_sample: {sampler!r} takes no option(s) {unknown}; its options: {list(accepted)}")
    opts = {**s_spec.defaults(), **options}
    if s_spec.nfe_fn is not None:
        if guided:
            raise ValueError(f"nfe_per_sample: guided counts are not defined for {sampler!r}")
        plain = sigmas if isinstance(sigmas, int) and not isinstance(sigmas, bool) else \
            torch.as_tensor(sigmas).detach().to("cpu", torch.float64).flatten().tolist()
        return s_spec.nfe_fn(plain, opts)
    if isinstance(sigmas, int) and not isinstance(sigmas, bool):
        if sigmas < 1:
            raise ValueError(f"sigmas as a number of steps must be >= 1, got {sigmas}")
        s = [float("inf")] * sigmas + [0.0]
    else:
        s = torch.as_tensor(sigmas).detach().to("cpu", torch.float64).flatten().tolist()
    window = check_cov_sigma_max(opts["cov_sigma_max"]) if s_spec.windowed else float("inf")
    per_step = s_spec.step_cost(opts)
    total = 0
    for t, u in zip(s[:-1], s[1:]):
        plain = u == 0 or (t > window and not isinstance(sigmas, int))
        cost = 1 if plain else per_step
        if guided:
            # JVP samplers add one unconditional forward per step (the covariance comes from the conditional
            # JVP); every evaluation of a mean-only sampler is a guided pair (``cfg_denoiser``).
            cost = cost + 1 if s_spec.needs_jvp else 2 * cost
        total += cost
    return total
