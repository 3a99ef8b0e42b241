"""Seed statistics of an evaluation grid: Student-t 95% intervals over seeds and paired differences.

Every cell of :func:`covkernels.eval.evaluate` runs the same seeds, so two samplers of one NFE column
start from the same noise (common random numbers). The per-seed difference of their metrics then varies far
less than either metric, and its t-interval tells whether one sampler is better than the other: a *win* is
a paired interval that lies entirely on the better side of 0.

No scipy: the t quantile comes from the regularised incomplete beta function (a continued fraction).
"""
from __future__ import annotations

import functools
import math


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), converging for x < (a+1)/(a+b+2)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


@functools.lru_cache(maxsize=None)
def t_quantile(p: float, df: int) -> float:
    """``q`` with ``t_cdf(q, df) = p`` for ``0.5 <= p < 1`` (bisection; t_quantile(0.975, 4) = 2.776)."""
    if not 0.5 <= p < 1.0 or df < 1:
        raise ValueError(f"need 0.5 <= p < 1 and df >= 1, got p={p!r}, df={df!r}")
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def mean_ci95(values) -> tuple[float, list[float]]:
    """``(mean, [lo, hi])``: the Student-t 95% interval of the mean of independent per-seed values. One value
    (or a non-finite one) has no interval: ``[nan, nan]`` (strict JSON writers turn it into null)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("values must not be empty")
    mean = sum(vals) / len(vals)
    if len(vals) < 2 or not all(math.isfinite(v) for v in vals):
        return mean, [math.nan, math.nan]
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    half = t_quantile(0.975, len(vals) - 1) * sd / math.sqrt(len(vals))
    return mean, [mean - half, mean + half]


def half_width(ci: list[float]) -> float:
    return 0.5 * (ci[1] - ci[0])


def summarize_seeds(per_seed: dict[str, list[float]]) -> dict:
    """``{metric: [v_seed0, ...]}`` -> the JSON contract: ``metric`` (mean), ``metric_ci95`` ``[lo, hi]``,
    ``metric_per_seed``."""
    out = {}
    for metric, vals in per_seed.items():
        mean, ci = mean_ci95(vals)
        out[metric], out[f"{metric}_ci95"], out[f"{metric}_per_seed"] = mean, ci, [float(v) for v in vals]
    return out


def paired(a: list[float], b: list[float], lower_is_better: bool) -> dict:
    """Paired comparison of per-seed values of the same seeds: ``diff = a - b`` with its t-interval;
    ``verdict`` "win" where the interval lies on ``a``'s better side of 0, "loss" on the worse side, else
    "tie"; ``relative``: the mean difference over ``b``'s mean."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds, got {len(a)} and {len(b)} values")
    diffs = [x - y for x, y in zip(a, b)]
    mean, ci = mean_ci95(diffs)
    verdict = "tie"
    if ci[1] < 0 or ci[0] > 0:  # nan compares False: no interval, no verdict
        verdict = "win" if (ci[1] < 0) == lower_is_better else "loss"
    base = sum(b) / len(b)
    return {"diff": mean, "diff_ci95": ci, "diff_per_seed": diffs, "verdict": verdict,
            "relative": mean / base if base else math.nan}


def annotate_paired(state: dict, metrics: dict, is_baseline) -> None:
    """Set ``cell["vs_baseline"] = {metric: {"baseline": label, **paired(...)}}`` on every cell of ``state``:
    per table and NFE column, the paired comparison with the baseline (``is_baseline(label)``) of the best
    mean in that metric. Metrics without a direction (``metrics[m][1] is None``) get none."""
    columns: dict = {}
    for cell in state["cells"]:
        columns.setdefault((cell.get("table", "default"), cell["nfe_budget"]), []).append(cell)
    for column in columns.values():
        for cell in column:
            cell["vs_baseline"] = {}
        for metric, (_, lower) in metrics.items():
            if lower is None:
                continue
            bases = [c for c in column if is_baseline(c["sampler"]) and math.isfinite(c.get(metric, math.nan))]
            if not bases:
                continue
            best = (min if lower else max)(bases, key=lambda c: c[metric])
            for cell in column:
                if f"{metric}_per_seed" in cell:
                    cell["vs_baseline"][metric] = {"baseline": best["sampler"], **paired(
                        cell[f"{metric}_per_seed"], best[f"{metric}_per_seed"], lower)}


def find_cell(state: dict, sampler: str, nfe_budget: int, table: str = "default") -> dict:
    for cell in state["cells"]:
        if (cell["sampler"], cell["nfe_budget"], cell.get("table", "default")) == (sampler, nfe_budget, table):
            return cell
    raise KeyError(f"no cell {sampler!r} at {nfe_budget} NFE in the {table!r} table")


def check_orderings(state: dict, claims, lower_is_better: dict, table: str = "default") -> list[str]:
    """The claims that do NOT hold, as messages. A claim ``(metric, nfe_budget, better, worse)`` holds when the
    paired 95% interval of ``better - worse`` over the shared seeds lies entirely on the better side of 0:
    a flipped ordering and an unresolved one (interval straddling 0) both fail."""
    failures = []
    for metric, nfe, better, worse in claims:
        a, b = find_cell(state, better, nfe, table), find_cell(state, worse, nfe, table)
        if a["seeds"] != b["seeds"]:
            raise ValueError(f"{better} and {worse} at {nfe} NFE ran different seeds: not a paired comparison")
        result = paired(a[f"{metric}_per_seed"], b[f"{metric}_per_seed"], lower_is_better[metric])
        if result["verdict"] != "win":
            lo, hi = result["diff_ci95"]
            failures.append(f"{metric} at {nfe} NFE: {better} - {worse} = {result['diff']:.4g} "
                            f"[{lo:.4g}, {hi:.4g}] ({result['verdict']}), claimed {better} better")
    return failures
