"""Figures of claims 6 and 7 (log-log path KL vs T; Lanczos error vs k), from the JSON that run.py writes."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"ddpm_iso": ("tab:red", "o"), "iso_best": ("tab:orange", "o"), "hutch_pixel": ("tab:olive", "^"),
         "diag_pixel": ("tab:green", "^"), "hutch_dct": ("tab:cyan", "s"), "diag_dct": ("tab:blue", "s"),
         "lanczos_k1": ("tab:purple", "v"), "lanczos_k3": ("tab:pink", "D"), "full": ("black", "*"),
         "gap": ("grey", "x")}


def _reference_lines(ax, ts, anchor):
    for order, ls in ((1, ":"), (2, "--")):
        ax.plot(ts, [anchor * (ts[0] / t) ** order for t in ts], ls, color="grey", lw=0.8, label=f"1/T^{order}")


def _plot_tail(ax, tail: dict) -> None:
    """The --tail run's points (same estimator, larger T), hollow, in the samplers' colours."""
    mix = tail["mixture"]
    for n, cells in mix["mean_ci95"].items():
        if n == "gap":
            continue
        color, marker = STYLE.get(n, ("k", "."))
        means = [m for m, _ in cells]
        err = [[m - c[0] for m, c in cells], [c[1] - m for m, c in cells]]
        ax.errorbar(mix["T"], means, yerr=err, marker=marker, color=color, mfc="none", ls="--", ms=5, capsize=2,
                    label=f"{n} (--tail)")


def plot_claim6(result: dict, path, tail: dict | None = None) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, (name, block) in zip(axes[:2], result["gaussian_closed_form"].items()):
        for n, vals in block["path_kl"].items():
            if n in block.get("exact_to_rounding", {"full": 0}):
                continue
            color, marker = STYLE.get(n, ("k", "."))
            ax.loglog(block["T"], vals, marker=marker, color=color, label=n)
        _reference_lines(ax, block["T"], block["path_kl"]["iso_best"][0])
        exact = block.get("exact_to_rounding", {"full": block["full_max_abs"]})
        zeros = ", ".join(f"{n} <= {v:.0e}" for n, v in exact.items())
        ax.set_title(f"Gaussian {name}, closed form; exact (not drawn): {zeros}", fontsize=9)
    ax = axes[2]
    mix = result["mixture"]
    for n, cells in mix["mean_ci95"].items():
        if n.startswith("lanczos_k") and n not in STYLE:
            continue  # k = d coincides with full
        color, marker = STYLE.get(n, ("k", "."))
        ts = mix["T"][:len(cells)]
        means = [m for m, _ in cells]
        err = [[m - c[0] for m, c in cells], [c[1] - m for m, c in cells]]
        ax.errorbar(ts, means, yerr=err, marker=marker, color=color, label=n, ms=4, capsize=2)
    if tail is not None:
        _plot_tail(ax, tail)
    ts = mix["T"] + ([t for t in tail["mixture"]["T"] if t > mix["T"][-1]] if tail else [])
    _reference_lines(ax, ts, mix["mean_ci95"]["full"][0][0])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(f"mixture d={mix['d']}, K={mix['components']}: MC over x_t, {len(mix['seeds'])} seeds, 95% CI",
                 fontsize=9)
    for ax in axes:
        ax.set_xlabel("T (eta = 1 steps, Karras grid)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("path KL (sum of per-step KL)")
    axes[2].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_claim7(result: dict, path) -> None:
    grids = result["steps"]
    fig, axes = plt.subplots(1, len(grids), figsize=(5.2 * len(grids), 4.5), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, (T, steps) in zip(axes[0], grids.items()):
        for i, st in enumerate(steps):
            color = cmap(i / max(len(steps) - 1, 1))
            ax.semilogy(result["ks"], st["geo_mean_relative_error"], "o-", ms=3, color=color,
                        label=f"{st['sigma_t']:.3g}->{st['sigma_s']:.3g}" if len(steps) <= 10 else None)
        ax.axhline(1e-3, color="grey", ls=":", lw=0.8)
        ax.set_title(f"Karras T={T}: relative error of the k-step Lanczos S^1/2 xi", fontsize=9)
        ax.set_xlabel("Lanczos steps k")
        ax.grid(True, which="both", alpha=0.3)
        if len(steps) <= 10:
            ax.legend(fontsize=6)
    axes[0][0].set_ylabel("|y_k - S^1/2 xi| / |S^1/2 xi| (geometric mean over draws)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_claim(result: dict, path, tail: dict | None = None) -> None:
    if result["claim"] == 6:
        plot_claim6(result, path, tail)
    else:
        plot_claim7(result, path)


def plot_grids(claim: int, entries: list, path) -> None:
    """Quality vs NFE of the rows a grid claim compares: one panel per testbed grid, one line per (table,
    row) with its 95% interval over seeds, the floor (reference vs reference) dashed. ``entries``: ``(grid
    path, table, labels[, metric])`` as ``from_grids.CLAIMS`` lists them; the path may be a pair (the grid of
    the first label, the grid of the others), whose cells are drawn in one panel."""
    import json

    from covkernels.eval.testbeds import get_testbed

    panels: dict = {}
    for file, table, labels, *metric in entries:
        mine, theirs = (file, file) if not isinstance(file, tuple) else file
        panels.setdefault(mine, []).append((table, labels, metric[0] if metric else None, theirs))
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    colors = plt.get_cmap("tab10")
    for ax, (file, specs) in zip(axes.flat, panels.items()):
        grid = json.loads(file.read_text())
        for other in {theirs for *_, theirs in specs if theirs != file}:
            grid["cells"] = list(grid["cells"]) + list(json.loads(other.read_text())["cells"])
        testbed = get_testbed(grid["config"]["model"])
        metric = specs[0][2] or testbed.main_metric
        drawn: list = []
        for table, labels, _, _ in specs:
            for label in labels:
                if (table, label) in drawn:
                    continue
                cells = sorted((c for c in grid["cells"] if c["table"] == table and c["sampler"] == label),
                               key=lambda c: c["nfe_budget"])
                if not cells:
                    continue
                drawn.append((table, label))
                nfe = [c["nfe_budget"] for c in cells]
                mean = [c[metric] for c in cells]
                err = [[m - c[f"{metric}_ci95"][0] for m, c in zip(mean, cells)],
                       [c[f"{metric}_ci95"][1] - m for m, c in zip(mean, cells)]]
                ax.errorbar(nfe, mean, yerr=err, marker="o", ms=3, capsize=2, color=colors(len(drawn) - 1),
                            ls="-" if table == "default" else "--", label=f"{label} ({table})")
        if metric in grid.get("floor", {}):
            ax.axhline(grid["floor"][metric], color="grey", ls=":", lw=1, label="floor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("NFE budget")
        ax.set_title(f"{grid['config']['model']}: {metric} (N={grid['config']['num_samples']}, "
                     f"{len(grid['config']['seeds'])} seeds, 95% CI)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f"claim {claim}: quality vs NFE (lower is better)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
