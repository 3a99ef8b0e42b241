"""The README's headline quality table from the committed grids: per testbed and NFE budget, the main
metric of every sampler as ``mean ± 95% half-width`` and its paired difference to the best mean-only
baseline of that column (``win`` / ``loss`` where the paired interval excludes 0).

    python benchmarks/quality_summary.py benchmarks/results/quality_{gmm,gaussian,digits_ideal,digits}.json
"""
from __future__ import annotations

import argparse
import json


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def summary(paths: list[str], table: str = "default") -> str:
    grids = [json.load(open(p)) for p in paths]
    from covkernels.testbeds import get_testbed

    columns, rows = [], {}
    for g in grids:
        model = g["config"]["model"]
        metric = get_testbed(model).main_metric
        for c in g["cells"]:
            if c.get("table", "default") != table or metric not in c:
                continue
            col = (model, metric, c["nfe_budget"])
            if col not in columns:
                columns.append(col)
            lo, hi = c[f"{metric}_ci95"]
            cell = f"{_fmt(c[metric])} ± {_fmt((hi - lo) / 2)}"
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
    for col in columns:
        g = next(g for g in grids if g["config"]["model"] == col[0])
        f = g.get("floor") or {}
        floors.append(_fmt(f[col[1]]) if col[1] in f else "")
    lines.append("| *floor (exact or real vs itself)* | " + " | ".join(floors) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("grids", nargs="+", help="quality_<model>.json files written by covkernels eval")
    p.add_argument("--table", default="default", choices=["default", "best"])
    args = p.parse_args()
    print(summary(args.grids, args.table))


if __name__ == "__main__":
    main()
