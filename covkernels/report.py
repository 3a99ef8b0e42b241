"""Reports of an evaluation (:func:`covkernels.evaluation.evaluate`): CSV, Markdown tables, PNG plot.

Files under ``out_dir``: ``quality_<model>.csv`` (one row per cell), ``quality_<model>.md`` (one table per
metric: samplers x NFE budgets, best per column in bold, the exact-vs-exact / data-vs-data floor in the
last row) and ``quality_<model>.png`` (main metric vs NFE, one line per sampler; needs matplotlib, the
``plot`` extra — without it the PNG is skipped with a note).
"""
from __future__ import annotations

import csv
import math
import os

METRICS = {  # metric -> (title, lower is better)
    "fd_pooled": ("Frechet distance to exact samples, 4x4 average-pooled pixels", True),
    "fd_pixels": ("Frechet distance to exact samples, pixel space", True),
    "loglik_gap": ("log-likelihood gap under the true density, nats/dim (0 is ideal; > 0: too spread)", None),
    "w2": ("exact W2^2 of the samples' Gaussian fit to the true Gaussian", True),
    "fd_features": ("Frechet distance to the real digits, classifier features", True),
    "precision": ("precision (k-NN, classifier features)", False),
    "recall": ("recall (k-NN, classifier features)", False),
}


def main_metric(state: dict) -> str:
    return "fd_features" if state["config"]["model"] == "digits" else "fd_pooled"


def table(state: dict, metric: str) -> dict:
    """``{sampler: {nfe_budget: cell}}`` in grid order."""
    out: dict = {}
    for cell in state["cells"]:
        if metric in cell:
            out.setdefault(cell["sampler"], {})[cell["nfe_budget"]] = cell
    return out


def markdown(state: dict, command: str | None = None) -> str:
    cfg = state["config"]
    nfes = sorted({c["nfe_budget"] for c in state["cells"]})
    lines = [f"# Sample quality on `{cfg['model']}`", ""]
    if command:
        lines += [f"Reproduce: `{command}`", ""]
    lines += [f"N = {cfg['num_samples']} samples per cell, seed {cfg['seed']}, {cfg['schedule']} schedule "
              f"(sigma {cfg['sigma_max']} -> {cfg['sigma_min']}, rho {cfg['rho']}) then 0, jvp = {cfg['jvp']}"
              + (f", options {cfg['options']}" if cfg["options"] else "") + ". Cells: metric [steps]; a cell "
              "gets the most steps whose NFE fits the budget (a JVP = 1 NFE, its primal another).", ""]
    for metric, (title, lower) in METRICS.items():
        rows = table(state, metric)
        if not rows:
            continue
        best = {}
        if lower is not None:
            for n in nfes:
                vals = [r[n][metric] for r in rows.values() if n in r]
                best[n] = (min if lower else max)(vals) if vals else None
        lines += [f"## {title}", "", "| sampler | " + " | ".join(f"{n} NFE" for n in nfes) + " |",
                  "|---|" + "---:|" * len(nfes)]
        for label, r in rows.items():
            cells = []
            for n in nfes:
                if n not in r:
                    cells.append("n/a")
                    continue
                text = f"{r[n][metric]:.4g} [{r[n]['steps']}]"
                cells.append(f"**{text}**" if best.get(n) == r[n][metric] else text)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        floor = (state.get("floor") or {}).get(metric)
        if floor is not None:
            name = "real data vs real data" if cfg["model"] == "digits" else "exact vs exact samples"
            lines.append(f"| *{name}* | " + " | ".join(f"{floor:.4g}" for _ in nfes) + " |")
        lines.append("")
    return "\n".join(lines)


def write_reports(state: dict, out_dir: str, command: str | None = None) -> list[str]:
    """Write the CSV, Markdown and (with matplotlib; else no PNG) files; return their paths."""
    name = state["config"]["model"]
    base = os.path.join(out_dir, f"quality_{name}")
    keys = []
    for cell in state["cells"]:
        keys += [k for k in cell if k not in keys]
    with open(base + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(state["cells"])
    with open(base + ".md", "w") as f:
        f.write(markdown(state, command))
    paths = [base + ".csv", base + ".md"]
    if plot(state, base + ".png"):
        paths.append(base + ".png")
    return paths


def plot(state: dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    metric = main_metric(state)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    rows = table(state, metric)
    colours = plt.get_cmap("tab20").colors
    for i, (label, r) in enumerate(rows.items()):
        nfes = sorted(r)
        style = "-" if label.startswith(("cov_ddim", "lanczos", "diag")) else "--"
        ax.plot([r[n]["nfe"] for n in nfes], [r[n][metric] for n in nfes], style, marker="o", ms=3, label=label,
                color=colours[(2 * i) % 20 + (2 * i) // 20])
    values = sorted(c[metric] for r in rows.values() for c in r.values() if math.isfinite(c[metric]))
    if values:  # a diverging sampler at its smallest budget would squash every other line: cut at 5x the median
        floor = (state.get("floor") or {}).get(metric)
        floor = values[0] if floor is None or not math.isfinite(floor) else floor
        ax.set_ylim(0.8 * min(values[0], floor), min(values[-1], 5 * values[len(values) // 2]) * 1.25)
    floor = (state.get("floor") or {}).get(metric)
    if floor is not None:
        ax.axhline(floor, color="grey", lw=0.8, ls=":", label="floor")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("NFE per sample (spent)")
    ax.set_ylabel(METRICS[metric][0])
    ax.set_title(f"{state['config']['model']}: N = {state['config']['num_samples']} per point")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
