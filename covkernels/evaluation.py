"""Quality evaluation: a grid of samplers x NFE budgets on one testbed, S seeds of N samples per cell.

``evaluate(model="gmm", ...)`` (and ``covkernels eval``) runs every cell, writes the results after each
finished cell (``<out>/quality_<model>.json``; an interrupted run resumes where it stopped, losing no finished
cell or tuning run), then the CSV, Markdown tables and PNG plot (see :mod:`covkernels.report`).

- Seeds: every cell runs the seeds ``seed, seed + 1, ..., seed + S - 1`` (each its own N samples, scored by
  its own scorer, so a sampled reference is drawn afresh per seed) and reports per metric the mean, a
  Student-t 95% interval over seeds and the per-seed values. All samplers share the seeds, so each cell
  also carries the paired difference to the best baseline of its NFE column (``vs_baseline``); a cell wins
  only where that paired interval excludes 0 (:mod:`covkernels.intervals`).
- Two tables: ``default`` (every sampler on the common schedule) and ``best`` (every sampler on its best
  schedule of the grid ``schedules x sigma_mins``, the default included, chosen by the main metric (or
  ``tune_metric``) on the
  held-out seed ``seed + TUNING_SEED_OFFSET``, never a reported seed; every sampler gets the same candidates
  and N). Budgets and NFE checks as in :mod:`covkernels.grid`.
- Progress: one display over the whole grid, in model evaluations (N x budget per run), with an ETA.
"""
from __future__ import annotations

import json
import math
import os

import torch

from .grid import (NFES, TUNE_SCHEDULES, TUNE_SIGMA_MINS, VARIANTS, CountingModel, canonical_label,  # noqa: F401
                   broadcast_from_rank0, finish_distributed, generate, is_baseline, schedule_for, uses_covariance,
                   variant_options)
from .intervals import annotate_paired, summarize_seeds
from .report import MIN_SEEDS, few_seeds_note
from .testbeds import get_testbed, testbed_names

TUNING_SEED_OFFSET = 1_000_000  # the held-out tuning seed is seed + this; reported seeds stay below it
TABLES = ("default", "best")
EVAL_MODELS = testbed_names()


def load_model(name: str) -> torch.nn.Module:
    """The model of a registered testbed (:mod:`covkernels.testbeds`)."""
    return get_testbed(name).load()


def Scorer(name: str, model, num: int, seed: int):  # noqa: N802 (the old class name, kept for callers)
    """The scorer of testbed ``name`` for ``num`` samples of seed ``seed``."""
    return get_testbed(name).make_scorer(model, num, seed)


def _save(path: str, state: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, path)  # atomic: an interrupt never leaves a half-written results file


def _int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _check(samplers, nfes, num_samples, seeds, batch_size, jvp, tables, tune_schedules, tune_sigma_mins, sigma_max):
    from .schedules import SCHEDULES

    if jvp != "finite_difference":
        # The NFE of the other strategies is not what the papers count: forward AD recomputes the primal on
        # every Lanczos JVP, central differences take 2 evaluations, double VJP 1 forward + 2 backwards,
        # and "auto" probes all of them. Finite differences cost exactly the counted evaluations.
        raise ValueError(f"jvp must be 'finite_difference' for the evaluation (its NFE count is exact), got {jvp!r}")
    _int("batch_size", batch_size, 1)
    _int("num_samples", num_samples, 4)
    if _int("seeds", seeds, 2) >= TUNING_SEED_OFFSET:
        raise ValueError(f"seeds must be below {TUNING_SEED_OFFSET} (the tuning seed's offset), got {seeds}")
    if not nfes or any(isinstance(n, bool) or not isinstance(n, int) or n < 2 for n in nfes):
        raise ValueError(f"nfes must be int budgets >= 2, got {nfes}")
    if not tables or any(t not in TABLES for t in tables):
        raise ValueError(f"tables must be a non-empty subset of {TABLES}, got {tables}")
    for name in tune_schedules:
        if name not in SCHEDULES or name in ("vp", "linear_beta"):  # those two ignore sigma_min / sigma_max
            raise ValueError(f"tune_schedules: {name!r} is not a tunable schedule of {SCHEDULES}")
    for value in tune_sigma_mins:
        if not (isinstance(value, (int, float)) and 0 < value < sigma_max):
            raise ValueError(f"tune_sigma_mins must lie in (0, sigma_max={sigma_max}), got {value!r}")


def _check_options(samplers, options) -> None:
    """Refuse ``options`` keys that no selected covariance sampler takes: they would change no cell. A key
    that some rows take goes to those rows only (and a row's own options win over it)."""
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"options must be a dict or None, got {type(options).__name__}")
    taken = set().union(*(variant_options(label, options)[1] for label in samplers
                          if uses_covariance(VARIANTS[label][0])))
    unused = sorted(set(options or {}) - taken)
    if unused:
        raise ValueError(f"options {unused} are taken by no selected covariance sampler of {samplers} (an option "
                         f"goes to the covariance samplers whose function has that keyword)")


def evaluate(model: str = "gmm", samplers=None, nfes=None, num_samples: int = 1024, *, seed: int = 0,
             seeds: int = 5, batch_size: int = 256, schedule: str = "karras", sigma_min: float = 0.1,
             sigma_max: float = 80.0, rho: float = 7.0, tables=TABLES, tune_schedules=None,
             tune_sigma_mins=TUNE_SIGMA_MINS, tune_metric: str | None = None, tune_num_samples: int | None = None,
             jvp: str = "finite_difference", device="cpu",
             out_dir: str | None = None, resume: bool = True, options: dict | None = None, progress=print,
             command: str | None = None) -> dict:
    """Run the grid; return ``{"config", "floor", "tuning", "cells"}`` (also written to ``out_dir`` on rank 0).

    ``samplers``: labels of :data:`VARIANTS` (default: all); ``nfes``: budgets (default :data:`NFES`);
    ``seeds``: S, the number of reported seeds (from ``seed`` on); ``tables``: ``"default"`` and/or
    ``"best"``; ``tune_schedules`` (default: those of :data:`TUNE_SCHEDULES` that exist) x ``tune_sigma_mins``:
    the schedule grid of the ``best`` table, tuned on ``tune_metric`` (default: the testbed's main metric;
    any metric of the testbed with a direction) at ``tune_num_samples`` samples (default: ``num_samples``; a
    smaller N makes large-N grids affordable, the same for every sampler); ``options``: extra options for
    the covariance samplers (e.g. ``{"cov_sigma_max": inf}``), each passed to those of the selected rows that
    take it (a row's own options win) and refused (ValueError) if none does; ``resume``: reuse the finished
    cells of an existing results file with the same configuration; ``progress``: a callable for messages
    (None: silent, no progress display); ``command``: the command line quoted in the Markdown report.
    """
    from ._version import __version__
    from .progress import Progress
    from .sampling import COV_SIGMA_MAX
    from .schedules import SCHEDULES

    testbed = get_testbed(model)
    if tune_metric is not None and "best" not in tables:
        raise ValueError(f"tune_metric applies to the best table only (tables={list(tables)})")
    tune_metric = testbed.main_metric if tune_metric is None else tune_metric
    if tune_num_samples is not None and "best" not in tables:
        raise ValueError(f"tune_num_samples applies to the best table only (tables={list(tables)})")
    tune_num = num_samples if tune_num_samples is None else _int("tune_num_samples", tune_num_samples, 4)
    if tune_metric not in testbed.metrics or testbed.metrics[tune_metric][1] is None:
        raise ValueError(f"tune_metric must be a metric of {model!r} with a direction, one of "
                         f"{[m for m, (_, d) in testbed.metrics.items() if d is not None]}, got {tune_metric!r}")
    samplers = list(dict.fromkeys(VARIANTS if samplers is None else
                                  [canonical_label(label) for label in samplers]))  # repeats run once
    nfes = list(NFES) if nfes is None else list(dict.fromkeys(nfes))
    tables = list(dict.fromkeys(tables))
    if tune_schedules is None:
        tune_schedules = [s for s in TUNE_SCHEDULES if s in SCHEDULES]
    tune_schedules, tune_sigma_mins = list(dict.fromkeys(tune_schedules)), list(dict.fromkeys(tune_sigma_mins))
    _check(samplers, nfes, num_samples, seeds, batch_size, jvp, tables, tune_schedules, tune_sigma_mins, sigma_max)
    _check_options(samplers, options)
    default = {"schedule": schedule, "sigma_min": sigma_min, "sigma_max": sigma_max, "rho": rho}
    candidates = [default] + [{**default, "schedule": s, "sigma_min": m} for s in tune_schedules
                              for m in tune_sigma_mins if (s, m) != (schedule, sigma_min)]
    seed_list, tune_seed = [seed + i for i in range(seeds)], seed + TUNING_SEED_OFFSET
    opts = {"cov_sigma_max": COV_SIGMA_MAX, **(options or {})}
    config = {"model": model, "num_samples": num_samples, "seeds": seed_list, "jvp": jvp, **default,
              "tables": tables, "tuning": {"seed": tune_seed, "schedules": tune_schedules,
                                           "sigma_mins": tune_sigma_mins, "metric": tune_metric,
                                           # only where it differs: files written before the option still resume
                                           **({"num_samples": tune_num} if tune_num != num_samples else {})},
              # inf as a string: strict JSON has no Infinity
              "options": {k: (str(v) if isinstance(v, float) and math.isinf(v) else v) for k, v in opts.items()},
              "device": torch.device(device).type, "covkernels": __version__, "torch": torch.__version__}
    config = json.loads(json.dumps(config))  # tuples -> lists: compares equal to a reloaded file
    from .grid import _dist

    rank, _ = _dist(device)
    runs = {}  # (label, nfe) -> the plans of this grid, for the progress total
    for nfe in nfes:
        for label in samplers:
            plans = [(c, schedule_for(label, nfe, c, options)) for c in candidates]
            runs[label, nfe] = [(c, p) for c, p in plans if p is not None]
    total = sum(nfe * (num_samples * seeds * len(tables) + ("best" in tables) * tune_num * len(ps))
                for (label, nfe), ps in runs.items() if ps and ps[0][0] is default)
    bar = Progress(total, desc=f"eval {model}", unit="evaluations", disable=progress is None or rank != 0)
    say = bar.write if progress is print else (progress or (lambda message: None))  # print: beside the bar

    path = None if out_dir is None else os.path.join(out_dir, f"quality_{model}.json")
    state = {"config": config, "floor": None, "tuning": [], "cells": []}
    if path and resume and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old.get("config") != config:
            keys = sorted(k for k in set(config) | set(old.get("config", {}))
                          if config.get(k) != old.get("config", {}).get(k))
            raise ValueError(f"out_dir: {path} holds results of another configuration (differs in {keys}); "
                             f"choose another output directory or start over with resume=False (--no-resume)")
        state = old
        say(f"resuming {path}: {len(old['cells'])} finished cells and {len(old['tuning'])} tuning runs kept")
    if seeds < MIN_SEEDS:
        say(f"warning: {few_seeds_note(seeds)}")
    net = testbed.load().to(device)
    score_net = net if torch.device(device).type == "cpu" else testbed.load()  # scoring runs on the CPU
    scorers: dict = {}

    def scorer(s, n=num_samples):  # built once per seed and N, on rank 0 only (it gathers the samples)
        if (s, n) not in scorers:
            scorers[s, n] = testbed.make_scorer(score_net, n, s)
        return scorers[s, n]

    if rank == 0 and state["floor"] is None:
        state["floor"] = summarize_seeds(_by_metric([scorer(s).floor() for s in seed_list]))
    if rank == 0 and "best" in tables and tune_num != num_samples:
        scorer(tune_seed, tune_num)  # a tuning N the testbed cannot score fails here, before any sampling
    cells = {(c["table"], c["sampler"], c["nfe_budget"]): c for c in state["cells"]}
    tuned = {(t["sampler"], t["nfe_budget"], t["schedule"], t["sigma_min"]): t for t in state["tuning"]}

    def run(label, nfe, sched, plan, run_seeds, n=num_samples):
        steps, sigmas, used = plan
        per_seed, seconds, measured = [], [], []
        for s in run_seeds:
            x, info = generate(net, label, sigmas.to(device), n, seed=s, batch_size=batch_size,
                               device=device, jvp=jvp, options=options)
            bar.update(n * nfe)
            if rank != 0:
                continue
            if abs(info["nfe_measured"] - used) > 1e-9:
                raise RuntimeError(f"{label} at {nfe} NFE: the model was evaluated {info['nfe_measured']} times "
                                   f"per sample, the accounting says {used}")
            per_seed.append(scorer(s, n)(x))
            seconds.append(info["seconds_per_sample"])
            measured.append(info["nfe_measured"])
        return {"sampler": label, "nfe_budget": nfe, "schedule": sched["schedule"], "sigma_min": sched["sigma_min"],
                "steps": steps, "nfe": used, "nfe_measured": max(measured, default=used),
                "seconds_per_sample": sum(seconds) / max(1, len(seconds))}, per_seed

    def save():
        if path:
            os.makedirs(out_dir, exist_ok=True)
            _save(path, state)

    def record(cell):
        state["cells"].append(cell)
        cells[cell["table"], cell["sampler"], cell["nfe_budget"]] = cell
        annotate_paired(state, testbed.metrics, is_baseline)
        save()
        main = tune_metric
        say(f"{cell['table']:>7} {cell['sampler']:<18} {cell['nfe_budget']:>3} NFE [{cell['steps']} steps, "
            f"{cell['schedule']} {cell['sigma_min']}]: {main} {cell[main]:.4g} ± {_half(cell[main + '_ci95']):.2g}")

    for nfe in nfes:
        for label in samplers:
            plans = runs[label, nfe]
            if not plans or plans[0][0] is not default:
                continue  # fewer than 2 steps fit the budget on the default schedule: no cell
            if "default" in tables:
                if ("default", label, nfe) in cells:
                    bar.update(num_samples * nfe * seeds)
                else:
                    head, per_seed = run(label, nfe, default, plans[0][1], seed_list)
                    if rank == 0:
                        record({"table": "default", **head, "seeds": seed_list,
                                **summarize_seeds(_by_metric(per_seed))})
            if "best" not in tables:
                continue
            scores = []
            for sched, plan in plans:  # tuning on the held-out seed, the same candidates for every sampler
                key = (label, nfe, sched["schedule"], sched["sigma_min"])
                if key not in tuned:
                    head, per_seed = run(label, nfe, sched, plan, [tune_seed], n=tune_num)
                    if rank == 0:
                        tuned[key] = {**{k: head[k] for k in ("sampler", "nfe_budget", "schedule", "sigma_min",
                                                                "steps", "nfe")},
                                      tune_metric: per_seed[0][tune_metric]}
                        state["tuning"].append(tuned[key])
                        save()  # an interrupted tuning keeps its finished runs
                else:
                    bar.update(tune_num * nfe)
                scores.append((tuned.get(key, {}).get(tune_metric), sched, plan))
            if ("best", label, nfe) in cells:
                bar.update(num_samples * nfe * seeds)
                continue
            choice = broadcast_from_rank0(_choose(scores, testbed.metrics[tune_metric][1]), device)
            sched, plan = plans[choice]
            if choice == 0 and "default" in tables:  # the default schedule won: its cell has the same samples
                bar.update(num_samples * nfe * seeds)
                if rank == 0:
                    record({**cells["default", label, nfe], "table": "best", "vs_baseline": {}})
                continue
            head, per_seed = run(label, nfe, sched, plan, seed_list)
            if rank == 0:
                record({"table": "best", **head, "seeds": seed_list, **summarize_seeds(_by_metric(per_seed))})
    bar.close()
    if rank == 0 and path:
        from .report import write_reports

        written = write_reports(state, out_dir, command)
        for name in written:
            say(f"wrote {name}")
        if not any(name.endswith(".png") for name in written):
            say("note: matplotlib is not installed (pip install 'covkernels[plot]'): no PNG plot written")
    return state


def _by_metric(per_seed: list[dict]) -> dict:
    """``[{metric: v}, ...]`` (one dict per seed) -> ``{metric: [v, ...]}``."""
    return {k: [d[k] for d in per_seed] for k in per_seed[0]} if per_seed else {}


def _half(ci) -> float:
    return 0.5 * (ci[1] - ci[0])


def _choose(scores, lower_is_better: bool) -> int:
    """Index of the best tuning score (the first on ties; a non-finite score never wins unless all are)."""
    best = 0
    for i, (value, _, _) in enumerate(scores):
        ok = value is not None and math.isfinite(value)
        ref = scores[best][0]
        ref_ok = ref is not None and math.isfinite(ref)
        if ok and (not ref_ok or (value < ref if lower_is_better else value > ref)):
            best = i
    return best
