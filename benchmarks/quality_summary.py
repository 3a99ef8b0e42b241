"""The quality tables of docs/evaluation.md from the committed grids, per testbed and NFE budget.

Default (full) mode: the main metric of every sampler as ``mean ± 95% half-width`` and its paired difference
to the best mean-only baseline of that column (**bold** = win, ``(-)`` = loss where the paired interval
excludes 0, *italics* = that baseline). Compact mode (``--rows best-baseline,<labels>``): one line per
testbed x NFE with the best baseline (name, mean ± half-width) and for each selected row its mean ±
half-width, the paired difference to that baseline with its 95% interval, the verdict (win / loss / tie) and
the difference relative to the baseline's mean.

    python benchmarks/quality_summary.py benchmarks/results/quality_{gmm,gaussian,digits_ideal,digits}.json
    python benchmarks/quality_summary.py benchmarks/results/best/quality_*.json --table best \
        --rows best-baseline,ode_cov/dct,ode_cov/ipndm-dct

``--half-widths``: per testbed and metric, how wide the intervals are as a share of the mean (the sample-size
target of the evaluation issue: under 10%).

Several files of one testbed are merged (e.g. the baselines of one run and the covariance rows of a later
one): cells are keyed by (table, sampler, nfe_budget), and the files must share N, the seeds, the JVP
strategy, the covariance options, the schedule settings of the table and the reference floor, or the paired
comparisons would not compare like with like. The best baseline and every paired difference are recomputed
on the merged cells. This module is also the grid reader of ``quality_vs_nfe.py``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from covkernels.eval.intervals import half_width, paired
from covkernels.eval.plan import is_baseline  # a retired row is judged by its sampler

TITLES = {"default": "common default schedule", "best": "each sampler at its best schedule"}
BEST_BASELINE = "best-baseline"
SHARED_KEYS = ("num_samples", "seeds", "jvp", "options", "sigma_max", "rho")
TABLE_KEYS = {"default": ("schedule", "sigma_min"), "best": ("tuning",)}  # what makes a table's cells comparable


METRIC: list = [None]  # --metric: the metric compared instead of each testbed's main metric


def metric_spec(model: str) -> tuple[str, bool]:
    """``(metric, lower_is_better)`` of a testbed: its main metric, or ``--metric`` where that is one of its
    metrics with a direction."""
    from covkernels.eval.testbeds import get_testbed

    testbed = get_testbed(model)
    metric = METRIC[0] or testbed.main_metric
    if metric not in testbed.metrics or testbed.metrics[metric][1] is None:
        raise ValueError(f"metric: {metric!r} is not a metric of {model!r} with a direction")
    return metric, testbed.metrics[metric][1]


def _same_cell(a: dict, b: dict) -> bool:
    """Two records of one run: same schedule and per-seed values (to rounding; a NaN or null matches itself)."""
    def close(x, y):
        return x == y or (None not in (x, y) and (math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
                                                  or math.isnan(x) and math.isnan(y)))

    keys = {k for k in a if k.endswith("_per_seed")} | {k for k in b if k.endswith("_per_seed")}
    if any(a.get(k) != b.get(k) for k in ("schedule", "sigma_min", "steps", "seeds")):
        return False
    return all(k in a and k in b and len(a[k]) == len(b[k]) and all(map(close, a[k], b[k])) for k in keys)


def merge_grids(grids: list[tuple[str, dict]], table: str) -> dict[str, dict]:
    """``{model: state}`` of the ``(path, state)`` grids, each state holding only the cells of ``table``, with
    ``vs_baseline`` recomputed on the merged cells. Raises ValueError on files of one model that disagree in
    N, seeds or the table's settings and on two different cells under one key (an identical repeat is kept
    once); files without a cell of ``table`` are left out (with a note), none left is an error."""
    from covkernels.eval.intervals import annotate_paired
    from covkernels.eval.testbeds import get_testbed

    if table not in TABLE_KEYS:
        raise ValueError(f"table must be one of {tuple(TABLE_KEYS)}, got {table!r}")
    merged: dict[str, dict] = {}
    origin: dict[tuple, str] = {}  # (model, sampler, nfe) or (model,) -> the file it came from
    for path, state in grids:
        if not isinstance(state, dict) or "config" not in state or "cells" not in state:
            raise ValueError(f"{path}: not a grid of covkernels eval (needs 'config' and 'cells')")
        if not any(c.get("table", "default") == table for c in state["cells"]):
            print(f"note: {path} has no cell of the {table!r} table; left out", file=sys.stderr)
            continue
        cfg = state["config"]
        model = cfg["model"]
        if model not in merged:
            merged[model] = {"config": {**cfg, "tables": [table]}, "floor": state.get("floor"), "cells": []}
            origin[(model,)] = path
        else:
            ref, where = merged[model], origin[(model,)]
            for key in SHARED_KEYS + TABLE_KEYS[table]:
                if ref["config"].get(key) != cfg.get(key):
                    raise ValueError(f"{path} and {where} ({model}) differ in {key!r}: "
                                     f"{cfg.get(key)!r} vs {ref['config'].get(key)!r}; cannot merge")
            metric, _ = metric_spec(model)
            f_ref, f_new = (ref["floor"] or {}).get(metric), (state.get("floor") or {}).get(metric)
            if None not in (f_ref, f_new) and not math.isclose(f_ref, f_new, rel_tol=1e-6):
                raise ValueError(f"{path} and {where} ({model}) have different {metric} floors "
                                 f"({f_new:.6g} vs {f_ref:.6g}): a different scorer or reference; cannot merge")
        cells = {(c["sampler"], c["nfe_budget"]): c for c in merged[model]["cells"]}
        for cell in state["cells"]:
            if cell.get("table", "default") != table:
                continue
            cell = dict(cell)  # the merged state gets its own vs_baseline; the caller's grids stay as they were
            if cell.setdefault("seeds", cfg["seeds"]) != cfg["seeds"]:
                raise ValueError(f"{path}: cell {cell['sampler']} at {cell['nfe_budget']} NFE ran seeds "
                                 f"{cell['seeds']}, not the grid's {cfg['seeds']}")
            key = (cell["sampler"], cell["nfe_budget"])
            if key in cells and not _same_cell(cells[key], cell):
                raise ValueError(f"conflicting duplicate: {model} {table}-table cell {key[0]} at {key[1]} NFE "
                                 f"differs between {origin[(model, *key)]} and {path}")
            if key not in cells:
                cells[key], origin[(model, *key)] = cell, path
        merged[model]["cells"] = list(cells.values())
    if not merged:
        raise ValueError(f"none of {[p for p, _ in grids]} has a cell of the {table!r} table (see --table)")
    for model, state in merged.items():
        annotate_paired(state, get_testbed(model).metrics, is_baseline)
    return merged


def envelope(state: dict) -> dict[int, dict]:
    """``{nfe_budget: cell}``: the baseline with the best mean of the main metric at each budget."""
    metric, lower = metric_spec(state["config"]["model"])
    best: dict[int, dict] = {}
    for cell in state["cells"]:
        if not is_baseline(cell["sampler"]) or not math.isfinite(cell.get(metric, math.nan)):
            continue
        held = best.get(cell["nfe_budget"])
        if held is None or (cell[metric] < held[metric] if lower else cell[metric] > held[metric]):
            best[cell["nfe_budget"]] = cell
    return best


def versus(cell: dict, base: dict, metric: str, lower: bool) -> dict:
    """The paired comparison of ``cell - base`` over their shared seeds (:func:`covkernels.eval.intervals.paired`)."""
    if cell.get("seeds") != base.get("seeds"):
        raise ValueError(f"{cell['sampler']} and {base['sampler']} ran different seeds: not a paired comparison")
    return paired(cell[f"{metric}_per_seed"], base[f"{metric}_per_seed"], lower)


def select_rows(states: dict[str, dict], rows: list[str] | None, argument: str = "samplers") -> list[str]:
    """The rows to show: ``rows`` as given (``best-baseline`` for the envelope), else the envelope plus every
    covariance row of any grid. Unknown labels raise ValueError naming ``argument``."""
    present = list(dict.fromkeys(c["sampler"] for s in states.values() for c in s["cells"]))
    if rows is None:
        return [BEST_BASELINE] + [r for r in present if not is_baseline(r)]
    unknown = [r for r in rows if r != BEST_BASELINE and r not in present]
    if unknown:
        raise ValueError(f"{argument}: {unknown} are in none of the grids; they hold {present}")
    return list(dict.fromkeys(rows))


def load(paths: list[str], table: str) -> dict[str, dict]:
    """:func:`merge_grids` of the JSON files ``paths``."""
    return merge_grids([(path, json.loads(Path(path).read_text())) for path in paths], table)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def value_text(cell: dict, metric: str) -> str:
    """``mean ± half-width`` of the cell's 95% interval."""
    return f"{_fmt(cell[metric])} ± {_fmt(half_width(cell[f'{metric}_ci95']))}"


def verdict_text(vs: dict) -> str:
    """A paired comparison as ``diff [lo, hi] verdict, relative%``, e.g. ``-0.0871 [-0.12, -0.054] win, -65%``."""
    lo, hi = vs["diff_ci95"]
    return f"{vs['diff']:+.3g} [{_fmt(lo)}, {_fmt(hi)}] {vs['verdict']}, {100 * vs['relative']:+.3g}%"


def summary(paths: list[str], table: str = "default") -> str:
    """The full table: every sampler (rows) x testbed and NFE budget (columns) of ``table``."""
    states = load(paths, table)
    columns, rows = [], {}
    for model, state in states.items():
        metric, _ = metric_spec(model)
        for c in state["cells"]:
            if metric not in c:
                continue
            col = (model, metric, c["nfe_budget"])
            if col not in columns:
                columns.append(col)
            cell = value_text(c, metric)
            vs = c.get("vs_baseline", {}).get(metric)
            if vs is None or vs["baseline"] == c["sampler"]:
                cell = f"*{cell}*" if vs is None or vs.get("diff") == 0 else cell
            elif vs["verdict"] == "win":
                cell = f"**{cell}**"
            elif vs["verdict"] == "loss":
                cell += " (-)"
            rows.setdefault(c["sampler"], {})[col] = cell
    head = "| sampler | " + " | ".join(f"{m} {n} NFE" for m, _, n in columns) + " |"
    lines = [head, "|---|" + "---:|" * len(columns)]
    for label, r in rows.items():
        lines.append(f"| `{label}` | " + " | ".join(r.get(col, "") for col in columns) + " |")
    floors = []
    for model, metric, _ in columns:
        f = states[model].get("floor") or {}
        floors.append(_fmt(f[metric]) if metric in f else "")
    lines.append("| *floor (exact or real vs itself)* | " + " | ".join(floors) + " |")
    return "\n".join(lines)


def compact(paths: list[str], table: str, rows: list[str], strict: bool = True) -> str:
    """Per testbed x NFE budget of ``table``: the best baseline and each of ``rows`` against it (the
    ``best-baseline`` token is accepted and implied: the baseline column is always shown). ``strict``: a
    label in none of the grids' cells of ``table`` raises ValueError (else it reads n/a)."""
    states = load(paths, table)
    labels = [r for r in (select_rows(states, rows, "rows") if strict else rows) if r != BEST_BASELINE]
    lines = ["| testbed (metric; N, S) | NFE | best baseline | " + " | ".join(f"`{r}`: value; − baseline [95% CI]"
                                                                          for r in labels) + " |",
             "|---|---:|---|" + "---|" * len(labels)]
    for model, state in states.items():
        metric, lower = metric_spec(model)
        cfg = state["config"]
        where = f"`{model}` ({metric}; N {cfg['num_samples']}, S {len(cfg['seeds'])})"
        cells = {(c["sampler"], c["nfe_budget"]): c for c in state["cells"] if metric in c}
        for nfe, base in sorted(envelope(state).items()):
            parts = [where, str(nfe), f"`{base['sampler']}` {value_text(base, metric)}"]
            for label in labels:
                cell = cells.get((label, nfe))
                if cell is None:
                    parts.append("n/a")
                elif cell is base:
                    parts.append(f"{value_text(cell, metric)}; is the best baseline")
                else:
                    parts.append(f"{value_text(cell, metric)}; {verdict_text(versus(cell, base, metric, lower))}")
            lines.append("| " + " | ".join(parts) + " |")
    return "\n".join(lines)


def average(paths: list[str], table: str, rows: list[str], nfes: list[int] | None = None) -> str:
    """Per row, over every testbed x NFE cell of ``table`` it shares with a best baseline: the mean and the
    range of its relative difference to that baseline and its paired verdicts (wins / ties / losses)."""
    states = load(paths, table)
    labels = [r for r in select_rows(states, rows, "rows") if r != BEST_BASELINE]
    lines = ["| row | cells | mean relative difference | range | wins / ties / losses | worst loss |",
             "|---|---:|---:|---|---|---|"]
    for label in labels:
        rel, verdicts, worst = [], {"win": 0, "tie": 0, "loss": 0}, None
        for model, state in states.items():
            metric, lower = metric_spec(model)
            cells = {(c["sampler"], c["nfe_budget"]): c for c in state["cells"] if metric in c}
            for nfe, base in envelope(state).items():
                cell = cells.get((label, nfe))
                if cell is None or (nfes and nfe not in nfes):
                    continue
                vs = {"relative": 0.0, "verdict": "tie"} if cell is base else versus(cell, base, metric, lower)
                rel.append(vs["relative"])
                verdicts[vs["verdict"]] += 1
                if vs["verdict"] == "loss" and (worst is None or abs(vs["relative"]) > abs(worst[0])):
                    worst = (vs["relative"], f"{model} {nfe} NFE")
        if not rel:
            continue
        worst_text = "—" if worst is None else f"{100 * worst[0]:+.3g}% ({worst[1]})"
        lines.append(f"| `{label}` | {len(rel)} | {100 * sum(rel) / len(rel):+.3g}% | "
                     f"{100 * min(rel):+.3g}% .. {100 * max(rel):+.3g}% | {verdicts['win']} / {verdicts['tie']} / "
                     f"{verdicts['loss']} | {worst_text} |")
    return "\n".join(lines)


def half_widths(paths: list[str], table: str, rows: list[str] | None = None, nfes: list[int] | None = None) -> str:
    """Per testbed and metric (those with a direction) over the cells of ``rows`` (default: every row;
    ``best-baseline``: the best baseline of each budget by the main metric) and ``nfes`` (default: all): the
    range of the 95% half-width as a share of the mean and how many cells are under 10% (the evaluation
    issue's target). A cell whose mean or interval is not finite counts as over 10%."""
    from covkernels.eval.testbeds import get_testbed

    states = load(paths, table)
    labels = None if rows is None else [r for r in select_rows(states, rows, "rows") if r != BEST_BASELINE]
    lines = ["| testbed (N, S) | metric | half-width / mean | cells under 10% |", "|---|---|---|---:|"]
    for model, state in states.items():
        cfg = state["config"]
        base = list(envelope(state).values()) if rows and BEST_BASELINE in rows else []
        cells = [c for c in state["cells"] if (labels is None or c["sampler"] in labels or any(c is b for b in base))
                 and (not nfes or c["nfe_budget"] in nfes)]

        def share(c, metric):
            value, half = c[metric], half_width(c[f"{metric}_ci95"])
            ok = value and math.isfinite(value) and math.isfinite(half)
            return abs(half / value) if ok else math.inf

        for metric, (_, lower) in get_testbed(model).metrics.items():
            shares = [share(c, metric) for c in cells if lower is not None and f"{metric}_ci95" in c]
            if shares:
                lines.append(f"| `{model}` (N {cfg['num_samples']}, S {len(cfg['seeds'])}) | {metric} | "
                             f"{100 * min(shares):.3g}% .. {100 * max(shares):.3g}% | "
                             f"{sum(x < 0.1 for x in shares)} / {len(shares)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("grids", nargs="+", help="quality_<model>.json files written by covkernels eval")
    p.add_argument("--table", default="default", choices=["default", "best", "both"])
    p.add_argument("--rows", default=None,
                   help=f"compact mode: comma-separated rows, e.g. '{BEST_BASELINE},ode_cov/dct' (default: the "
                        "full table of every sampler)")
    p.add_argument("--average", action="store_true",
                   help="with --rows: per row, the mean relative difference to the best baseline over all cells")
    p.add_argument("--nfe", nargs="+", type=int, default=None,
                   help="with --average or --half-widths: only these NFE budgets")
    p.add_argument("--half-widths", action="store_true",
                   help="per testbed and metric: the 95%% half-widths as a share of the mean (over --rows or all)")
    p.add_argument("--metric", default=None, help="compare this metric instead of each testbed's main metric")
    args = p.parse_args(argv)
    METRIC[0] = args.metric
    if args.average and (args.rows is None or args.table == "both"):
        p.error("--average needs --rows and one --table")
    if args.half_widths and (args.average or args.table == "both" or args.metric):
        p.error("--half-widths takes one --table and no --average or --metric")
    if args.nfe and not (args.average or args.half_widths):
        p.error("--nfe applies to --average and --half-widths only")
    rows = None if args.rows is None else [r for r in args.rows.split(",") if r]
    if rows is not None and not rows:
        p.error("--rows needs at least one label")
    tables, both = [args.table], args.table == "both"
    try:  # bad files or labels: one line naming the problem, not a traceback
        if both:  # the tables the files hold; a row need only be in one of them
            cells = [c for path in args.grids for c in json.loads(Path(path).read_text()).get("cells", [])]
            tables = [t for t in TITLES if any(c.get("table", "default") == t for c in cells)] or ["default"]
            select_rows({"all": {"cells": cells}}, rows or [], "rows")
        blocks = []
        for table in tables:
            if args.half_widths:
                text = half_widths(args.grids, table, rows, args.nfe)
            elif args.average:
                text = average(args.grids, table, rows, args.nfe)
            else:
                text = summary(args.grids, table) if rows is None else compact(args.grids, table, rows, not both)
            blocks.append(f"### {TITLES[table]}\n\n{text}" if both else text)
    except (OSError, ValueError) as exc:
        p.error(str(exc))
    finally:
        METRIC[0] = None  # --metric holds for this call only
    print("\n\n".join(blocks))


if __name__ == "__main__":
    main()
