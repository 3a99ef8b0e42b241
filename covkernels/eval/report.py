"""Reports of an evaluation (:func:`covkernels.eval.evaluate`): CSV, Markdown tables, PNG plot.

Files under ``out_dir``: ``quality_<model>.csv`` (one row per cell; lists as JSON text),
``quality_<model>.md`` (per table — default schedule, best schedule — and metric: samplers x NFE budgets,
cells ``mean ± half-width [steps]``, the paired verdicts against the best baseline of each column, the floor
in the last row, and for the main metric which sampler wins each column) and ``quality_<model>.png`` (main
metric vs NFE with 95% intervals, one panel per table; needs matplotlib, the ``plot`` extra — without it
the PNG is skipped with a note).
"""
from __future__ import annotations

import csv
import json
import math
import os
import textwrap

from .intervals import half_width, t_quantile
from .plan import is_baseline
from .testbeds import all_metrics, get_testbed

TABLE_TITLES = {"default": "common default schedule", "best": "each sampler at its best schedule"}
# The project's rule for a quality claim: at least this many seeds. Fewer still run, with a warning (the
# Student-t 95% factor is 12.7 at 2 seeds, 2.8 at 5), and the reports say so.
MIN_SEEDS = 5


def metrics_of(state: dict) -> dict:
    """``{metric: (title, lower_is_better)}`` of the state: those it records (a model scored against a
    reference), else its testbed's (every known metric if not registered)."""
    if "metrics" in state["config"]:
        return {m: tuple(spec) for m, spec in state["config"]["metrics"].items()}
    try:
        return get_testbed(state["config"]["model"]).metrics
    except ValueError:
        return all_metrics()


def main_metric(state: dict) -> str:
    """The metric the grid's schedules were tuned on (its headline), else the testbed's main metric."""
    tuned = state.get("config", {}).get("tuning", {}).get("metric")
    if tuned:
        return tuned
    if "metrics" in state["config"]:
        return next(iter(state["config"]["metrics"]))
    try:
        return get_testbed(state["config"]["model"]).main_metric
    except ValueError:
        return next(m for m in metrics_of(state) if m in (state["cells"] or [{}])[0])


def table(state: dict, metric: str, which: str = "default") -> dict:
    """``{sampler: {nfe_budget: cell}}`` of one table, in grid order."""
    out: dict = {}
    for cell in state["cells"]:
        if metric in cell and cell.get("table", "default") == which:
            out.setdefault(cell["sampler"], {})[cell["nfe_budget"]] = cell
    return out


def _half(cell: dict, metric: str) -> float:
    """The half-width of a metric's interval; NaN where it has none (one seed; null in strict JSON)."""
    ci = cell.get(f"{metric}_ci95", [math.nan, math.nan])
    return half_width(ci) if None not in ci else math.nan


def cell_text(cell: dict, metric: str, which: str) -> str:
    """``mean ± half-width [steps]`` (best table: ``[steps; schedule sigma_min]``); a paired win against the
    best baseline in bold, a paired loss with ``(-)``, the best baseline itself in italics."""
    where = f"{cell['steps']}" if which == "default" else f"{cell['steps']}; {cell['schedule']} {cell['sigma_min']:g}"
    text = f"{cell[metric]:.4g} ± {_half(cell, metric):.2g} [{where}]"
    vs = cell.get("vs_baseline", {}).get(metric)
    if vs is None:
        return text
    if vs["baseline"] == cell["sampler"]:
        return f"*{text}*"
    return {"win": f"**{text}**", "loss": f"{text} (-)"}.get(vs["verdict"], text)


def winners(state: dict, metric: str, which: str) -> list[str]:
    """One line per NFE column: the cells whose paired interval beats the best baseline, or that none does."""
    lines = []
    for nfe in sorted({c["nfe_budget"] for c in state["cells"] if c.get("table", "default") == which}):
        column = [c for c in state["cells"] if c.get("table", "default") == which and c["nfe_budget"] == nfe]
        vs = [(c, c.get("vs_baseline", {}).get(metric)) for c in column]
        vs = [(c, v) for c, v in vs if v is not None]
        if not vs:
            continue
        base = vs[0][1]["baseline"]
        wins = [f"`{c['sampler']}` ({v['diff']:+.3g} [{v['diff_ci95'][0]:.3g}, {v['diff_ci95'][1]:.3g}], "
                f"{100 * v['relative']:+.0f}%)" for c, v in vs if v["verdict"] == "win"]
        lines.append(f"- {nfe} NFE: " + (f"beat the best baseline `{base}`: " + ", ".join(wins) if wins else
                                          f"no sampler beats the best baseline `{base}` with significance"))
    return lines


def markdown(state: dict, command: str | None = None) -> str:
    cfg = state["config"]
    seeds = cfg.get("seeds", [cfg.get("seed")])
    lines = [f"# Sample quality on `{model_name(cfg)}`", ""]
    if command:
        lines += [f"Reproduce: `{command}`", ""]
    lines += source_lines(cfg)
    tuning = cfg.get("tuning", {})
    lines += [f"N = {cfg['num_samples']} samples per cell and seed, S = {len(seeds)} seeds {seeds} shared by all "
              f"samplers; default schedule {cfg['schedule']} (sigma {cfg['sigma_max']} -> {cfg['sigma_min']}, "
              f"rho {cfg['rho']}) then 0, jvp = {cfg['jvp']}"
              + (f", options {cfg['options']}" if cfg["options"] else "") + ". Cells: mean ± 95% half-width over "
              "seeds (Student t) [steps]; a cell gets the most steps whose NFE fits the budget (a JVP = 1 NFE, its "
              "primal another). Against the best baseline (mean-only sampler) of each column, paired over seeds: "
              "**bold** = better with a 95% interval excluding 0, (-) = worse likewise, *italics* = that baseline.",
              ""]
    if len(seeds) < MIN_SEEDS:
        lines += [f"**Few seeds:** {few_seeds_note(len(seeds))}", ""]
    if "best" in cfg.get("tables", []):
        lines += [f"Best schedule: per sampler and budget the best of {tuning.get('schedules')} x sigma_min "
                  f"{tuning.get('sigma_mins')} (and the default) in `{tuning.get('metric')}` on the held-out seed "
                  f"{tuning.get('seed')}" + (f" at N = {tuning['num_samples']}" if "num_samples" in tuning else "")
                  + "; cells read [steps; schedule sigma_min].", ""]
    metrics = metrics_of(state)
    floor_label = floor_label_of(cfg)
    main = main_metric(state)
    for which in cfg.get("tables", ["default"]):
        nfes = sorted({c["nfe_budget"] for c in state["cells"] if c.get("table", "default") == which})
        lines += [f"## {TABLE_TITLES.get(which, which)}", ""]
        lines += [f"Wins in `{main}`:"] + winners(state, main, which) + [""]
        for metric, (title, _) in metrics.items():
            rows = table(state, metric, which)
            if not rows:
                continue
            lines += [f"### {title} ({which} schedule)", "",
                      "| sampler | " + " | ".join(f"{n} NFE" for n in nfes) + " |", "|---|" + "---:|" * len(nfes)]
            for label, r in rows.items():
                lines.append(f"| {label} | " + " | ".join(cell_text(r[n], metric, which) if n in r else "n/a"
                                                           for n in nfes) + " |")
            floor = state.get("floor") or {}
            if metric in floor:
                text = f"{floor[metric]:.4g} ± {_half(floor, metric):.2g}"
                lines.append(f"| *{floor_label}* | " + " | ".join(text for _ in nfes) + " |")
            lines.append("")
    return "\n".join(lines)


def floor_label_of(cfg: dict) -> str:
    """What the floor row of a results file compares: recorded with a reference, else its testbed's label."""
    if "reference" in cfg:
        return cfg["reference"]["floor"]
    try:
        return get_testbed(cfg["model"]).floor_label
    except ValueError:
        return "floor"


def model_name(cfg: dict) -> str:
    """The model's name in a results file's ``config`` (a testbed's name; a factory's recorded name)."""
    return cfg.get("model_name", cfg["model"])


def source_lines(cfg: dict) -> list[str]:
    """What the Markdown report says of a model scored against a reference: the model as given on the command
    line, the reference (path, size, content hash, conversion) and the metrics. Nothing for a testbed."""
    ref = cfg.get("reference")
    if ref is None:
        return []
    rng = cfg.get("data_range", [-1.0, 1.0])
    return [f"Model: `{cfg['model']}` (data range [{rng[0]:g}, {rng[1]:g}]). Reference: `{ref['path']}`, M = "
            f"{ref['count']} images (sha256 {ref['sha256'][:16]}...; {ref['conversion']}). Metrics: "
            + ", ".join(f"`{m}`" for m in cfg.get("metrics", {})) + f"; the samples are compared with all M images; "
            f"the floor row (where M >= 2N): {ref['floor']}.", ""]


def few_seeds_note(seeds: int) -> str:
    """Why a grid with fewer than :data:`MIN_SEEDS` seeds gives intervals too wide to decide much."""
    return (f"S = {seeds} seeds: the 95% intervals use Student's t with {seeds - 1} degree(s) of freedom (factor "
            f"{t_quantile(0.975, seeds - 1):.1f}, against {t_quantile(0.975, MIN_SEEDS - 1):.1f} at {MIN_SEEDS} seeds), so they "
            f"can be wider than the values; quality claims here use >= {MIN_SEEDS} seeds (--seeds)")


def _csv_row(cell: dict) -> dict:
    row = {k: (json.dumps(v) if isinstance(v, list) else v) for k, v in cell.items() if k != "vs_baseline"}
    for metric, vs in cell.get("vs_baseline", {}).items():
        row.update({f"{metric}_baseline": vs["baseline"], f"{metric}_diff": vs["diff"],
                    f"{metric}_diff_ci95": json.dumps(vs["diff_ci95"]), f"{metric}_verdict": vs["verdict"]})
    return row


def write_reports(state: dict, out_dir: str, command: str | None = None) -> list[str]:
    """Write the CSV, Markdown and (with matplotlib; else no PNG) files; return their paths."""
    from .sources import file_stem

    base = os.path.join(out_dir, f"quality_{file_stem(model_name(state['config']))}")
    rows = [_csv_row(c) for c in state["cells"]]
    keys: list = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(base + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    with open(base + ".md", "w") as f:
        f.write(markdown(state, command))
    paths = [base + ".csv", base + ".md"]
    if plot(state, base + ".png"):
        paths.append(base + ".png")
    return paths


def plot(state: dict, path: str, return_figure: bool = False):
    """Main metric vs NFE budget, mean and 95% interval per sampler, one panel per table, the legend beside
    the panels (never over the lines). A cell is drawn at its budget, the column of the tables, not at the
    NFE it spent (a 6-NFE cell of a 2-NFE-per-step sampler spends 5): two budgets whose cells spend the same
    would otherwise fall on one point. Returns False without matplotlib; with ``return_figure`` the open
    figure instead of closing it (tests measure its layout)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    metric = main_metric(state)
    tables = state["config"].get("tables", ["default"])
    fig, axes = plt.subplots(1, len(tables), figsize=(6.5 * len(tables) + 2.5, 4.8), dpi=110, sharey=True,
                             squeeze=False)
    colours = plt.get_cmap("tab20").colors
    values, ends, budgets, floor = [], [], set(), (state.get("floor") or {}).get(metric)
    for ax, which in zip(axes[0], tables):
        for i, (label, r) in enumerate(table(state, metric, which).items()):
            nfes = sorted(r)
            mean = [r[n][metric] for n in nfes]
            lo, hi = zip(*(_error_bar(r[n], metric) for n in nfes))
            ax.errorbar(nfes, mean, yerr=[lo, hi], fmt="--" if _dashed(label) else "-",
                        marker="o", ms=3, capsize=2, lw=1, label=label, color=colours[(2 * i) % 20 + (2 * i) // 20])
            values += [m for m in mean if math.isfinite(m) and m > 0]
            # a lower end at or below 0 has no place on the log axis: its whisker runs off the bottom
            ends += [m - d for m, d in zip(mean, lo) if math.isfinite(m) and 0 < d < 0.999 * m]
            ends += [m + u for m, u in zip(mean, hi) if math.isfinite(m + u)]
            budgets.update(nfes)
        if floor is not None and math.isfinite(floor) and floor > 0:
            ax.axhline(floor, color="grey", lw=0.8, ls=":", label="floor")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(budgets), [str(n) for n in sorted(budgets)])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel("NFE budget per sample")
        ax.set_title(TABLE_TITLES.get(which, which), fontsize=10)
    _limit_y(axes[0][0], values, ends, floor)
    # a long metric title as one line runs off the figure's edge: wrap it and let the layout make room
    axes[0][0].set_ylabel("\n".join(textwrap.wrap(metrics_of(state)[metric][0] + " (mean, 95% CI)", 42)))
    cfg = state["config"]
    seeds = len(cfg.get("seeds", [0]))
    fig.suptitle(f"{model_name(cfg)}: N = {cfg['num_samples']} per seed, {seeds} seeds per point"
                 + (f" (fewer than {MIN_SEEDS}: wide intervals)" if seeds < MIN_SEEDS else ""))
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 6.5 * len(tables) / (6.5 * len(tables) + 2.5), 1))
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(6.5 * len(tables) / (6.5 * len(tables) + 2.5), 0.5),
               fontsize=7, frameon=False)
    fig.savefig(path)
    if return_figure:
        return fig
    plt.close(fig)
    return True


def _limit_y(ax, values: list, ends: list, floor) -> None:
    """A diverging sampler at its smallest budget would squash every other line: cut at 5x the median."""
    if not values:
        return
    values.sort()
    cap = 5 * values[len(values) // 2]
    ends = [e for e in ends if e <= cap] + values
    low = min(ends + ([floor] if floor is not None and math.isfinite(floor) and floor > 0 else []))
    ax.set_ylim(0.8 * low, min(max(ends), cap) * 1.25)


def _error_bar(cell: dict, metric: str) -> tuple[float, float]:
    """``(below, above)`` the mean of its 95% interval; clipped above 0 (the log axis), 0 without an interval."""
    m, (lo, hi) = cell[metric], cell.get(f"{metric}_ci95") or [math.nan, math.nan]
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi) and math.isfinite(m)):
        return 0.0, 0.0
    return min(max(0.0, m - lo), 0.999 * m if m > 0 else 0.0), max(0.0, hi - m)


def _dashed(label: str) -> bool:
    """Baseline rows are drawn dashed; so is a row that names no registered sampler (nothing to judge it by)."""
    try:
        return is_baseline(label)
    except ValueError:
        return True
