"""The ``best`` table's schedule tuning: every candidate schedule of a cell is run once on the held-out seed
(``seed + TUNING_SEED_OFFSET``, never a reported seed) at the tuning N, the same candidates and N for every
sampler, and the best by the tuning metric is the cell's schedule. Rank 0 chooses; the others follow."""
from __future__ import annotations

import math

from .distributed import broadcast_from_rank0

TUNING_FIELDS = ("sampler", "nfe_budget", "schedule", "sigma_min", "steps", "nfe")


def choose(scores, lower_is_better: bool) -> int:
    """Index of the best tuning score of ``[(value, schedule, plan), ...]`` (the first on ties; a non-finite
    or missing score never wins unless all are)."""
    best = 0
    for i, (value, _, _) in enumerate(scores):
        ok = value is not None and math.isfinite(value)
        ref = scores[best][0]
        ref_ok = ref is not None and math.isfinite(ref)
        if ok and (not ref_ok or (value < ref if lower_is_better else value > ref)):
            best = i
    return best


def tune_cell(label: str, nfe: int, plans: list, config, store, runner) -> list:
    """``[(tuning score or None off rank 0, schedule, plan), ...]`` over the fitting candidates ``plans`` of a
    cell; runs only the candidates ``store`` has not kept from an earlier (interrupted) run."""
    metric, num = config.tuning_metric, config.tuning_num_samples
    scores = []
    for schedule, plan in plans:
        key = (label, nfe, schedule["schedule"], schedule["sigma_min"])
        if key in store.tuned:
            runner.advance(num * nfe)
        else:
            head, per_seed = runner.run(label, nfe, schedule, plan, [config.tuning_seed], num=num)
            if runner.rank == 0:
                store.add_tuning({**{k: head[k] for k in TUNING_FIELDS}, metric: per_seed[0][metric]})
        scores.append((store.tuned.get(key, {}).get(metric), schedule, plan))
    return scores


def chosen_plan(scores: list, lower_is_better: bool, device) -> int:
    """The index rank 0 chooses from its scores, on every rank."""
    return broadcast_from_rank0(choose(scores, lower_is_better), device)
