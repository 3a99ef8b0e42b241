"""Quality vs NFE, one panel per testbed: the main metric (mean and 95% interval over seeds) against the NFE
budget for the best mean-only baseline of each budget (one "best baseline" line, its sampler named at every
point) and selected rows, from the grids written by ``covkernels eval``. Writes a PNG and a CSV of the plotted
points (with each point's paired difference to the best baseline of its budget).

    python benchmarks/quality_vs_nfe.py benchmarks/results/best/quality_*.json --table best \
        --out quality_vs_nfe_best.png

Several files of one testbed are merged (e.g. the baselines of one run and the covariance rows of a later
one) by :func:`quality_summary.merge_grids`; the best baseline and every paired difference are recomputed
on the merged cells.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling script, also when imported
from quality_summary import BEST_BASELINE, TABLE_KEYS, envelope, load, metric_spec, select_rows, versus  # noqa: E402

CSV_FIELDS = ("testbed", "table", "metric", "row", "sampler", "nfe_budget", "nfe_spent", "schedule", "sigma_min",
              "mean", "ci95_lo", "ci95_hi", "num_samples", "num_seeds", "baseline", "diff", "diff_ci95_lo",
              "diff_ci95_hi", "verdict", "relative")


def points(states: dict[str, dict], rows: list[str], table: str) -> list[dict]:
    """One record per plotted point (the CSV rows): per testbed, row and budget the mean and interval of the
    main metric and the paired difference to that budget's best baseline."""
    out = []
    for model, state in states.items():
        metric, lower = metric_spec(model)
        best = envelope(state)
        cells = {(c["sampler"], c["nfe_budget"]): c for c in state["cells"] if metric in c}
        for row in rows:
            for nfe in sorted({n for _, n in cells}):
                cell = best.get(nfe) if row == BEST_BASELINE else cells.get((row, nfe))
                if cell is None:
                    continue
                lo, hi = cell.get(f"{metric}_ci95") or [math.nan, math.nan]
                rec = {"testbed": model, "table": table, "metric": metric, "row": row, "sampler": cell["sampler"],
                       "nfe_budget": nfe, "nfe_spent": cell.get("nfe"), "schedule": cell.get("schedule"),
                       "sigma_min": cell.get("sigma_min"), "mean": cell[metric],
                       "ci95_lo": math.nan if lo is None else lo, "ci95_hi": math.nan if hi is None else hi,
                       "num_samples": state["config"]["num_samples"], "num_seeds": len(cell["seeds"])}
                if nfe in best:
                    vs = versus(cell, best[nfe], metric, lower)
                    own = cell is best[nfe]
                    rec.update(baseline=best[nfe]["sampler"], diff=vs["diff"], diff_ci95_lo=vs["diff_ci95"][0],
                               diff_ci95_hi=vs["diff_ci95"][1], relative=vs["relative"],
                               verdict="baseline" if own else vs["verdict"])
                out.append(rec)
    return out


def wants_log(means: list[float]) -> bool:
    """A log y axis where the plotted means are positive and span more than 10x."""
    finite = [m for m in means if math.isfinite(m)]
    return bool(finite) and min(finite) > 0 and max(finite) > 10 * min(finite)


def draw(records: list[dict], states: dict[str, dict], path: str, return_figure: bool = False):
    """One panel per testbed: each row's mean vs NFE budget with 95% interval bars (rows side by side at a
    budget), the best baseline as a band with its sampler named at each point, a ring around the points whose
    paired interval beats (green) or loses to (red) that baseline. The figure with ``return_figure``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["testbed"] for r in records))
    if not models:
        raise ValueError("nothing to plot: no selected row has a cell in the chosen table")
    ncols, nrows = min(3, len(models)), -(-len(models) // 3)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.0 * nrows + 0.6), dpi=110, squeeze=False)
    colours, rows = plt.get_cmap("tab10").colors, list(dict.fromkeys(r["row"] for r in records))
    handles = {}
    for ax, model in zip(axes.flat, models):
        mine = [r for r in records if r["testbed"] == model]
        log = wants_log([r["mean"] for r in mine])
        others = [row for row in rows if row != BEST_BASELINE and any(r["row"] == row for r in mine)]
        slots = others[:len(others) // 2] + [BEST_BASELINE] + others[len(others) // 2:]  # the baseline mid-group
        for i, row in enumerate(rows):
            pts = sorted((r for r in mine if r["row"] == row), key=lambda r: r["nfe_budget"])
            if not pts:
                continue
            # overlapping bars at one budget hide each other: spread the rows by a few % of the budget
            shift = 0.02 * (slots.index(row) - (len(slots) - 1) / 2)
            x = [p["nfe_budget"] * (1 + shift) for p in pts]
            m = [p["mean"] for p in pts]
            # a lower end at or below 0 has no place on a log axis: there the whisker stops just above 0
            lo = [min(max(0.0, p["mean"] - p["ci95_lo"]), 0.999 * p["mean"] if log else math.inf)
                  if math.isfinite(p["ci95_lo"]) else 0.0 for p in pts]
            hi = [max(0.0, p["ci95_hi"] - p["mean"]) if math.isfinite(p["ci95_hi"]) else 0.0 for p in pts]
            if row == BEST_BASELINE:
                ax.fill_between(x, [a - b for a, b in zip(m, lo)], [a + b for a, b in zip(m, hi)], color="black",
                                alpha=0.12, lw=0)
                handles["best baseline (band: 95% CI)"] = ax.errorbar(x, m, yerr=[lo, hi], fmt="k--", marker="s",
                                                                      ms=4, lw=1.4, capsize=3)
                for xi, p in zip(x, pts):
                    ax.annotate(p["sampler"], (xi, p["mean"]), fontsize=6, xytext=(3, 4), textcoords="offset points")
            else:
                handles[row] = ax.errorbar(x, m, yerr=[lo, hi], marker="o", ms=3, capsize=3, lw=1,
                                           color=colours[i % len(colours)])
            for verdict, colour in (("win", "green"), ("loss", "red")):
                ring = [(xi, p["mean"]) for xi, p in zip(x, pts) if p.get("verdict") == verdict]
                if ring:
                    handles[f"paired {verdict} vs best baseline"] = ax.scatter(
                        *zip(*ring), s=90, facecolors="none", edgecolors=colour, lw=1.2, zorder=3)
        budgets = sorted({r["nfe_budget"] for r in mine})
        if budgets[-1] >= 4 * budgets[0]:  # budgets grow geometrically (4 ... 32): equal spacing per doubling
            ax.set_xscale("log", base=2)
            ax.minorticks_off()
        ax.set_xticks(budgets, [str(b) for b in budgets])
        if log:
            ax.set_yscale("log")
        floor = (states[model].get("floor") or {}).get(mine[0]["metric"])
        if floor is not None and math.isfinite(floor) and floor > 0:
            handles["floor (reference vs reference)"] = ax.axhline(floor, color="grey", lw=0.8, ls=":")
        cfg = states[model]["config"]
        ax.set_title(f"{model}: {mine[0]['metric']} (N = {cfg['num_samples']}, S = {len(cfg['seeds'])})", fontsize=9)
        ax.set_xlabel("NFE budget")
        ax.set_ylabel(f"{mine[0]['metric']} (mean, 95% CI)", fontsize=8)
    for ax in list(axes.flat)[len(models):]:
        ax.set_visible(False)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(4, len(handles)), fontsize=7)
    fig.suptitle(f"quality vs NFE, {records[0]['table']} schedule table", fontsize=10)
    legend_inches = 0.2 + 0.16 * -(-len(handles) // 4)  # room below the panels for the legend's lines
    fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 1))
    fig.savefig(path)
    if return_figure:
        return fig
    plt.close(fig)
    return None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("grids", nargs="+", help="quality_<model>.json files written by covkernels eval")
    p.add_argument("--table", default="best", choices=sorted(TABLE_KEYS))
    p.add_argument("--samplers", default=None,
                   help=f"comma-separated rows ('{BEST_BASELINE}' = the envelope); default: the best baseline "
                        "and every covariance row")
    p.add_argument("--out", default="quality_vs_nfe.png", help="PNG path; the CSV goes beside it (.csv)")
    args = p.parse_args(argv)
    if not args.out.endswith(".png"):
        p.error(f"--out must end in .png, got {args.out!r}")
    try:  # bad files or labels: one line naming the problem, not a traceback
        states = load(args.grids, args.table)
        rows = select_rows(states, None if args.samplers is None else [s for s in args.samplers.split(",") if s])
        records = points(states, rows, args.table)
    except (OSError, ValueError) as exc:
        p.error(str(exc))
    with open(args.out[:-4] + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(records)
    draw(records, states, args.out)
    print(f"wrote {args.out} and {args.out[:-4]}.csv: {len(records)} points, testbeds {list(states)}")


if __name__ == "__main__":
    main()
