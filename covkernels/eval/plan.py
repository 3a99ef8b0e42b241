"""The rules of the quality grid: its rows (sampler variants), NFE budgets, the schedules that fit a budget,
the schedule candidates of the ``best`` table, and which rows are baselines.

- Rows: every registered sampler and its evaluation variants (:data:`VARIANTS`, label -> sampler and
  options); a sampler's bare name means the row of its defaults (:func:`canonical_label`).
- Budgets: a cell gets the most steps whose NFE fits the budget (a JVP counts as one evaluation, its
  primal as another, as in the papers); cells that cannot take 2 steps are left out.
- Baselines: the mean-only samplers (the registry's ``SamplerSpec.is_baseline``); the evaluation compares
  every cell with the best baseline of its NFE column.

Nothing here samples or scores; :mod:`covkernels.eval.runner` does.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..samplers.registry import names, nfe_per_sample, spec
from ..schedules import get_sigmas

NFES = (4, 6, 8, 12, 16, 24, 32)
# The schedule grid each sampler is tuned over (those of covkernels.schedules.SCHEDULES present at run time).
TUNE_SCHEDULES = ("karras", "exponential", "cosine", "time_uniform")
TUNE_SIGMA_MINS = (0.002, 0.02, 0.1)


def _grid_rows() -> dict:
    """label -> (sampler, options) from the sampler registry: every sampler and its evaluation variants; a
    sampler's bare name is left out where one of its variants is its default (cov_ddim = cov_ddim/convdct)."""
    rows = {}
    for name in names():
        s = spec(name)
        defaults = s.defaults()
        if not any(all(defaults.get(k) == v for k, v in opts.items()) for opts in s.variants.values()):
            rows[name] = (name, {})
        rows.update({label: (name, dict(opts)) for label, opts in s.variants.items()})
    return rows


VARIANTS = _grid_rows()


def canonical_label(name: str) -> str:
    """The grid row a name means: a row label as it is, or a sampler's bare registry name meaning that sampler
    at its defaults (``cov_ddim`` -> ``cov_ddim/convdct``, ``lanczos`` -> ``lanczos/k3``), so the names that
    ``covkernels sample --sampler`` takes work here too. Raises ValueError listing both kinds."""
    if name in VARIANTS:
        return name
    if name in names():
        defaults = spec(name).defaults()
        for label, (sampler, opts) in VARIANTS.items():
            if sampler == name and all(defaults.get(k) == v for k, v in opts.items()):
                return label
    bare = [n for n in names() if n not in VARIANTS]
    raise ValueError(f"samplers: unknown {name!r}; choose a grid row ({', '.join(VARIANTS)}) or a sampler name "
                     f"meaning its defaults ({', '.join(bare)})")


def sampler_of(label: str) -> str:
    """The registry sampler of a grid row; a label the grid no longer lists (a retired variant in a committed
    grid) is read by its part before ``/``."""
    return VARIANTS[label][0] if label in VARIANTS else label.split("/")[0]


def is_baseline(label: str) -> bool:
    """Whether a grid row is a mean-only baseline: the registry's ``is_baseline`` of its sampler. Raises
    ValueError when the row names no registered sampler."""
    try:
        return spec(sampler_of(label)).is_baseline
    except ValueError as exc:
        raise ValueError(f"grid row {label!r} names no sampler of the registry") from exc


# Run options every covariance sampler takes besides its own (not "sampler options" in the registry's sense):
# the grid passes them to the covariance rows too (check_finite="mean_only": a sample whose JVP is not finite
# takes the mean-only step instead of stopping the grid).
SHARED_RUN_OPTIONS = ("check_finite",)


def variant_options(label: str, options: dict | None) -> tuple[str, dict]:
    """``(sampler, options)`` of a grid label: each key of the shared ``options`` goes to the covariance
    samplers that take it, and is dropped for the others (the configuration refuses a key that no selected
    covariance row takes); the label's own options (basis, lanczos_steps) always win."""
    sampler, opts = VARIANTS[label]
    s = spec(sampler)
    if not s.uses_covariance or not options:
        return sampler, dict(opts)
    return sampler, {**{k: v for k, v in options.items() if s.takes(k) or k in SHARED_RUN_OPTIONS}, **opts}


def schedule_for(label: str, nfe: int, schedule: dict, options: dict | None = None):
    """``(steps, sigmas, nfe_used)``: the schedule that spends the most of ``nfe`` (then: the most steps);
    None if fewer than 2 steps fit."""
    sampler, count = variant_options(label, options)
    best = None
    for steps in range(2, nfe + 1):  # not monotone: one more step can move a sigma below cov_sigma_max
        sigmas = get_sigmas(schedule["schedule"], steps, schedule["sigma_min"], schedule["sigma_max"], schedule["rho"])
        used = nfe_per_sample(sampler, sigmas, **count)
        if used <= nfe and (best is None or (used, steps) > (best[2], best[0])):
            best = (steps, sigmas, used)
    return best


def schedule_candidates(config) -> list[dict]:
    """The schedules a sampler is tuned over for the ``best`` table: the default first, then every
    ``tune_schedules x tune_sigma_mins`` pair that differs from it (the same for every sampler)."""
    default = config.default_schedule
    return [default] + [{**default, "schedule": s, "sigma_min": m} for s in config.tune_schedules
                        for m in config.tune_sigma_mins if (s, m) != (default["schedule"], default["sigma_min"])]


@dataclass(frozen=True)
class GridPlan:
    """Per ``(label, nfe)`` the ``(schedule, (steps, sigmas, nfe_used))`` pairs of the candidates that fit the
    budget; a cell exists where the default schedule (the first candidate) fits."""

    default: dict
    runs: dict
    total_evaluations: int

    def plans(self, label: str, nfe: int) -> list | None:
        """The fitting candidates of a cell, the default first; None where the default does not fit (no cell)."""
        plans = self.runs[label, nfe]
        return plans if plans and plans[0][0] is self.default else None


def plan_grid(config) -> GridPlan:
    """Every cell's fitting schedules and the model evaluations the whole grid spends (N x budget per run), the
    progress total. ``config``: an :class:`~covkernels.eval.config.EvalConfig`."""
    candidates = schedule_candidates(config)
    default = candidates[0]
    runs = {}
    for nfe in config.nfes:
        for label in config.samplers:
            fitting = [(c, schedule_for(label, nfe, c, config.options)) for c in candidates]
            runs[label, nfe] = [(c, p) for c, p in fitting if p is not None]
    best = "best" in config.tables
    total = sum(nfe * (config.num_samples * config.seeds * len(config.tables)
                       + best * config.tuning_num_samples * len(plans))
                for (label, nfe), plans in runs.items() if plans and plans[0][0] is default)
    return GridPlan(default, runs, total)
