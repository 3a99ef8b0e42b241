"""benchmarks/quality_summary.py (grid reader, tables) and benchmarks/quality_vs_nfe.py (plot) on small
synthetic grids that follow the JSON contract of ``covkernels eval`` (built with the real covkernels.intervals
helpers): merging files of one testbed, refusing conflicts, the best-baseline envelope, the paired verdict
text, the plot and its CSV."""
from __future__ import annotations

import csv
import importlib
import json
import math
import os
import sys

import pytest

from helpers import ROOT

from covkernels.eval.plan import is_baseline
from covkernels.eval.intervals import annotate_paired, summarize_seeds
from covkernels.eval.testbeds import get_testbed

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
qvn = importlib.import_module("quality_vs_nfe")
qsum = importlib.import_module("quality_summary")

SEEDS = [0, 1, 2, 3, 4]
BASE = [1.0, 1.1, 0.9, 1.0, 1.05]  # per-seed fd_pooled of a baseline: mean 1.01, sd sqrt(0.022 / 4), 95% hw 0.0921
WIN = [b - d for b, d in zip(BASE, [0.2, 0.21, 0.19, 0.2, 0.2])]  # mean 0.81, hw 0.0838; paired diff -0.2
LOSS = [b + d for b, d in zip(BASE, [0.3, 0.31, 0.29, 0.3, 0.3])]
TIE = [b + d for b, d in zip(BASE, [0.1, -0.1, 0.06, -0.05, 0.0])]  # paired diff 0.002, hw 0.1003


def grid(rows: dict, model: str = "gmm", table: str = "default", num_samples: int = 64, seeds=SEEDS,
         floor: float = 0.5, tuning_sigma_mins=(0.002, 0.1)) -> dict:
    """A grid state: ``rows = {label: {nfe_budget: per-seed values of the main metric}}``."""
    metric = get_testbed(model).main_metric
    cells = [{"table": table, "sampler": label, "nfe_budget": nfe, "schedule": "karras", "sigma_min": 0.1,
              "steps": nfe // 2, "nfe": nfe, "seeds": list(seeds), **summarize_seeds({metric: vals})}
             for label, by_nfe in rows.items() for nfe, vals in by_nfe.items()]
    state = {"config": {"model": model, "num_samples": num_samples, "seeds": list(seeds), "jvp": "finite_difference",
                        "schedule": "karras", "sigma_min": 0.1, "sigma_max": 80.0, "rho": 7.0, "tables": [table],
                        "tuning": {"seed": 1000000, "schedules": ["karras"], "sigma_mins": list(tuning_sigma_mins),
                                   "metric": metric}, "options": {"cov_sigma_max": 1.0}},
             "floor": summarize_seeds({metric: [floor] * len(seeds)}), "tuning": [], "cells": cells}
    annotate_paired(state, get_testbed(model).metrics, is_baseline)
    return state


def write(tmp_path, name: str, state: dict) -> str:
    path = str(tmp_path / name)
    with open(path, "w") as f:
        json.dump(state, f)
    return path


def baselines():
    return {"ipndm": {6: BASE, 8: [v * 0.9 for v in BASE]}, "dpmpp_2m": {6: [v + 0.5 for v in BASE], 8: BASE}}


def test_merge_joins_files_and_recomputes_the_paired_difference(tmp_path):
    a = grid(baselines())
    b = grid({"ode_cov/dct": {6: WIN, 8: LOSS}})
    assert b["cells"][0]["vs_baseline"] == {}  # alone, the covariance file has no baseline to compare with
    states = qsum.merge_grids([("a.json", a), ("b.json", b)], "default")
    cells = {(c["sampler"], c["nfe_budget"]): c for c in states["gmm"]["cells"]}
    assert len(cells) == 6
    vs = cells[("ode_cov/dct", 6)]["vs_baseline"]["fd_pooled"]
    assert vs["baseline"] == "ipndm" and vs["verdict"] == "win"
    assert vs["diff"] == pytest.approx(-0.2)
    assert vs["relative"] == pytest.approx(-0.2 / 1.01)
    # at 8 NFE ipndm's 0.9 x BASE is the best baseline: LOSS - 0.9 x BASE, seed by seed
    vs8 = cells[("ode_cov/dct", 8)]["vs_baseline"]["fd_pooled"]
    assert vs8["baseline"] == "ipndm" and vs8["verdict"] == "loss"
    assert vs8["diff"] == pytest.approx(sum(x - 0.9 * y for x, y in zip(LOSS, BASE)) / 5)
    assert b["cells"][0]["vs_baseline"] == {}  # the caller's grids are not modified


def test_identical_repeat_is_kept_once_and_conflicts_are_refused(tmp_path):
    a = grid(baselines())
    states = qsum.merge_grids([("a.json", a), ("a_again.json", json.loads(json.dumps(a)))], "default")
    assert len(states["gmm"]["cells"]) == 4
    changed = grid({"ipndm": {6: [v + 0.01 for v in BASE]}})
    with pytest.raises(ValueError, match=r"conflicting duplicate.*ipndm at 6 NFE.*a\.json.*c\.json"):
        qsum.merge_grids([("a.json", a), ("c.json", changed)], "default")


@pytest.mark.parametrize("change, key", [({"num_samples": 128}, "num_samples"), ({"seeds": [5, 6, 7, 8, 9]}, "seeds")])
def test_files_with_different_n_or_seeds_are_refused(change, key):
    a, b = grid(baselines()), grid({"ode_cov/dct": {6: WIN}}, **change)
    with pytest.raises(ValueError, match=f"differ in '{key}'"):
        qsum.merge_grids([("a.json", a), ("b.json", b)], "default")


def test_tuning_grid_must_match_for_the_best_table_only():
    a = grid(baselines(), table="best")
    b = grid({"ode_cov/dct": {6: WIN}}, table="best", tuning_sigma_mins=(0.002, 0.3))
    with pytest.raises(ValueError, match="differ in 'tuning'"):
        qsum.merge_grids([("a.json", a), ("b.json", b)], "best")
    a, b = grid(baselines()), grid({"ode_cov/dct": {6: WIN}}, tuning_sigma_mins=(0.002, 0.3))
    assert len(qsum.merge_grids([("a.json", a), ("b.json", b)], "default")["gmm"]["cells"]) == 5


def test_different_floors_and_missing_table_are_refused():
    a, b = grid(baselines()), grid({"ode_cov/dct": {6: WIN}}, floor=0.6)
    with pytest.raises(ValueError, match="different fd_pooled floors"):
        qsum.merge_grids([("a.json", a), ("b.json", b)], "default")
    with pytest.raises(ValueError, match="has a cell of the 'best' table"):
        qsum.merge_grids([("a.json", a)], "best")
    with pytest.raises(ValueError, match="table must be one of"):
        qsum.merge_grids([("a.json", a)], "fastest")


def test_envelope_takes_the_best_baseline_per_budget_and_skips_covariance_rows():
    rows = {**baselines(), "ode_cov/dct": {6: [v - 0.5 for v in BASE], 8: [v - 0.5 for v in BASE]}}
    state = qsum.merge_grids([("a.json", grid(rows))], "default")["gmm"]
    best = qsum.envelope(state)
    assert {n: c["sampler"] for n, c in best.items()} == {6: "ipndm", 8: "ipndm"}
    assert best[8]["fd_pooled"] == pytest.approx(0.9 * 1.01)
    rows["dpmpp_2m"][8] = [v * 0.8 for v in BASE]  # now dpmpp_2m leads at 8 NFE, ipndm still at 6
    best = qsum.envelope(qsum.merge_grids([("a.json", grid(rows))], "default")["gmm"])
    assert {n: c["sampler"] for n, c in best.items()} == {6: "ipndm", 8: "dpmpp_2m"}


def test_row_selection_and_unknown_labels():
    states = qsum.merge_grids([("a.json", grid({**baselines(), "ode_cov/dct": {6: WIN},
                                               "cov_ddim/dct": {6: LOSS}}))], "default")
    assert qsum.select_rows(states, None) == ["best-baseline", "ode_cov/dct", "cov_ddim/dct"]
    assert qsum.select_rows(states, ["dpmpp_2m", "best-baseline"]) == ["dpmpp_2m", "best-baseline"]
    with pytest.raises(ValueError, match="'unipc'.*none of the grids"):
        qsum.select_rows(states, ["best-baseline", "unipc"])
    assert qsum.is_baseline("dpmpp_2m/some-retired-variant") and not qsum.is_baseline("ode_cov/retired")
    with pytest.raises(ValueError, match="no sampler of the registry"):
        qsum.is_baseline("no_such_sampler/x")


def test_verdict_text_reads_diff_interval_verdict_and_relative_difference():
    base = {"seeds": SEEDS, "sampler": "ipndm", **summarize_seeds({"fd_pooled": BASE})}
    cell = {"seeds": SEEDS, "sampler": "ode_cov/dct", **summarize_seeds({"fd_pooled": WIN})}
    # diff -0.2, sd sqrt(5e-5), half-width t(0.975, 4) sqrt(5e-5 / 5) = 2.776 x 0.003162 = 0.00878
    assert qsum.verdict_text(qsum.versus(cell, base, "fd_pooled", True)) == "-0.2 [-0.209, -0.191] win, -19.8%"
    cell = {"seeds": SEEDS, "sampler": "ode_cov/dct", **summarize_seeds({"fd_pooled": LOSS})}
    assert qsum.verdict_text(qsum.versus(cell, base, "fd_pooled", True)) == "+0.3 [0.291, 0.309] loss, +29.7%"
    text = qsum.verdict_text(qsum.versus({**cell, **summarize_seeds({"fd_pooled": TIE})}, base, "fd_pooled", True))
    assert text == "+0.002 [-0.0983, 0.102] tie, +0.198%"
    with pytest.raises(ValueError, match="different seeds"):
        qsum.versus({**cell, "seeds": [9, 10, 11, 12, 13]}, base, "fd_pooled", True)


def test_compact_summary_lines_per_testbed_and_budget(tmp_path):
    a = write(tmp_path, "a.json", grid(baselines()))
    b = write(tmp_path, "b.json", grid({"ode_cov/dct": {6: WIN, 8: [0.9 * v for v in TIE]}, "cov_ddim/dct": {6: LOSS}}))
    lines = qsum.compact([a, b], "default", ["best-baseline", "ode_cov/dct", "dpmpp_2m", "cov_ddim/dct"]).splitlines()
    assert len(lines) == 4 and lines[0].count("|") == 7  # header, rule, 6 NFE and 8 NFE of gmm
    assert lines[2].endswith("+0.3 [0.291, 0.309] loss, +29.7% |") and lines[3].endswith("| n/a |")
    six, eight = lines[2].split(" | "), lines[3].split(" | ")
    assert six[1:3] == ["6", "`ipndm` 1.01 ± 0.0921"]
    assert six[3] == "0.81 ± 0.0838; -0.2 [-0.209, -0.191] win, -19.8%"
    assert six[4].startswith("1.51 ± 0.0921; +0.5 [0.5, 0.5] loss, +49.5%")
    assert eight[2].startswith("`ipndm` 0.909") and "tie" in eight[3]


def test_full_summary_default_output_and_both_tables(tmp_path, capsys):
    a = write(tmp_path, "a.json", grid({**baselines(), "ode_cov/dct": {6: WIN, 8: LOSS}}))
    text = qsum.summary([a], "default")
    rows = {line.split(" | ")[0]: line for line in text.splitlines()}
    assert "**0.81 ± 0.0838**" in rows["| `ode_cov/dct`"] and "(-)" in rows["| `ode_cov/dct`"]
    assert "*1.01 ± 0.0921*" in rows["| `ipndm`"]
    b = write(tmp_path, "b.json", grid(baselines(), table="best"))
    qsum.main([a, b, "--table", "both", "--rows", "best-baseline,dpmpp_2m"])
    out = capsys.readouterr().out
    assert out.index("### common default schedule") < out.index("### each sampler at its best schedule")
    assert out.count("| `gmm` (fd_pooled; N 64, S 5) |") == 4


def test_plot_and_csv_of_the_plotted_points(tmp_path):
    gmm = write(tmp_path, "gmm.json", grid({**baselines(), "ode_cov/dct": {6: WIN, 8: LOSS}}))
    spread = {"ipndm": {6: BASE, 8: BASE}, "cov_ddim/dct": {6: [20 * v for v in BASE], 8: [3 * v for v in BASE]}}
    gauss = write(tmp_path, "gauss.json", grid(spread, model="gaussian", num_samples=32, floor=0.1))
    out = str(tmp_path / "q.png")
    qvn.main([gmm, gauss, "--table", "default", "--out", out])
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(str(tmp_path / "q.csv")) as f:
        recs = list(csv.DictReader(f))
    got = {(r["testbed"], r["row"], int(r["nfe_budget"])): r for r in recs}
    assert len(recs) == 8 and set(got) == {(m, r, n) for m, r in [("gmm", "best-baseline"), ("gmm", "ode_cov/dct"),
                                                                  ("gaussian", "best-baseline"),
                                                                  ("gaussian", "cov_ddim/dct")] for n in (6, 8)}
    assert got[("gmm", "best-baseline", 8)]["sampler"] == "ipndm"
    assert float(got[("gmm", "best-baseline", 8)]["mean"]) == pytest.approx(0.909)
    win = got[("gmm", "ode_cov/dct", 6)]
    assert (win["verdict"], win["baseline"]) == ("win", "ipndm")
    assert float(win["diff"]) == pytest.approx(-0.2) and float(win["relative"]) == pytest.approx(-0.2 / 1.01)
    assert float(win["ci95_lo"]) < float(win["mean"]) < float(win["ci95_hi"])
    assert got[("gmm", "ode_cov/dct", 8)]["verdict"] == "loss"
    assert got[("gmm", "best-baseline", 6)]["verdict"] == "baseline"

    states = qsum.load([gmm, gauss], "default")
    records = qvn.points(states, qsum.select_rows(states, None), "default")
    fig = qvn.draw(records, states, str(tmp_path / "again.png"), return_figure=True)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 2
    titles = {ax.get_title(): ax for ax in panels}
    assert set(titles) == {"gmm: fd_pooled (N = 64, S = 5)", "gaussian: fd_pooled (N = 32, S = 5)"}
    # gaussian's means run 1.01 ... 20.2 (> 10x): log axis; gmm's 0.81 ... 1.51: linear
    assert titles["gaussian: fd_pooled (N = 32, S = 5)"].get_yscale() == "log"
    assert titles["gmm: fd_pooled (N = 64, S = 5)"].get_yscale() == "linear"
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_log_axis_rule():
    assert qvn.wants_log([0.1, 1.01]) and not qvn.wants_log([0.1, 1.0])
    assert not qvn.wants_log([-1.0, 50.0]) and not qvn.wants_log([math.nan])


def test_both_tables_take_a_row_of_either_and_refuse_unknown_rows(tmp_path, capsys):
    a = write(tmp_path, "a.json", grid(baselines()))
    b = write(tmp_path, "b.json", grid({**baselines(), "ode_cov/dct": {6: WIN}}, table="best"))
    qsum.main([a, b, "--table", "both", "--rows", "ode_cov/dct"])
    default, best = capsys.readouterr().out.split("### each sampler at its best schedule")
    assert default.count("| n/a |") == 2 and "-0.2 [-0.209, -0.191] win, -19.8% |" in best
    for table in ("both", "default"):  # default: ode_cov/dct is in no cell of that table
        with pytest.raises(SystemExit):
            qsum.main([a, b, "--table", table, "--rows", "ode_cov/dct,nosuch" if table == "both" else "ode_cov/dct"])
        assert "error: rows: [" in capsys.readouterr().err


def test_average_over_cells_counts_verdicts_and_the_worst_loss(tmp_path, capsys):
    path = write(tmp_path, "g.json", grid({**baselines(), "ode_cov/dct": {6: WIN, 8: LOSS}}))
    text = qsum.average([path], "default", ["ode_cov/dct", "ipndm"])
    row = next(line for line in text.splitlines() if line.startswith("| `ode_cov/dct`"))
    win_rel, loss_rel = -0.2 / 1.01, sum(x - 0.9 * y for x, y in zip(LOSS, BASE)) / (0.9 * sum(BASE))
    assert f"{100 * (win_rel + loss_rel) / 2:+.3g}%" in row and "| 1 / 0 / 1 |" in row
    assert f"{100 * loss_rel:+.3g}% (gmm 8 NFE)" in row
    assert next(line for line in text.splitlines() if line.startswith("| `ipndm`")).count("0 / 2 / 0") == 1
    with pytest.raises(SystemExit):
        qsum.main([path, "--average"])  # needs --rows
    with pytest.raises(SystemExit):
        qsum.main([path, "--rows", "ode_cov/dct", "--nfe", "6"])  # --nfe without --average
    state = grid({**baselines(), "ode_cov/dct": {6: WIN, 8: LOSS}})
    for cell in state["cells"]:  # a second metric that ranks the covariance row the other way round
        per = [2.0 - v for v in cell["fd_pooled_per_seed"]]
        cell.update(summarize_seeds({"kid_pooled": per}))
    annotate_paired(state, get_testbed("gmm").metrics, is_baseline)
    other = write(tmp_path, "k.json", state)
    capsys.readouterr()
    qsum.main([other, "--average", "--rows", "ode_cov/dct", "--metric", "kid_pooled"])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| `ode_cov/dct`"))
    assert "| 1 / 0 / 1 |" in row and "(gmm 6 NFE)" in row  # the 6-NFE win under fd_pooled is a loss here


def test_average_restricted_to_budgets(tmp_path):
    path = write(tmp_path, "g.json", grid({**baselines(), "ode_cov/dct": {6: WIN, 8: LOSS}}))
    row = next(line for line in qsum.average([path], "default", ["ode_cov/dct"], [6]).splitlines()
               if line.startswith("| `ode_cov/dct`"))
    assert f"| 1 | {100 * -0.2 / 1.01:+.3g}% |" in row and "| 1 / 0 / 0 |" in row


def test_half_widths_range_and_count_under_ten_percent(tmp_path, capsys):
    from covkernels.eval.intervals import half_width

    wide = [0.5, 1.5, 0.7, 1.2, 1.0]  # half-width 0.48 of a mean 0.98; BASE: 9.1%, LOSS: 7.0%
    path = write(tmp_path, "g.json", grid({"ipndm": {6: wide, 8: BASE}, "ode_cov/dct": {6: LOSS}}))
    rows = qsum.half_widths([path], "default").splitlines()
    share = [half_width(summarize_seeds({"fd_pooled": v})["fd_pooled_ci95"]) / (sum(v) / len(v))
             for v in (wide, BASE, LOSS)]
    line = next(r for r in rows if "| fd_pooled |" in r)
    assert "(N 64, S 5)" in line and f"{100 * min(share):.3g}% .. {100 * max(share):.3g}%" in line
    assert line.endswith("| 2 / 3 |") and min(share) < 0.1 < max(share)
    only = next(r for r in qsum.half_widths([path], "default", ["ode_cov/dct"]).splitlines() if "fd_pooled" in r)
    assert f"{100 * share[2]:.3g}% .. {100 * share[2]:.3g}%" in only and only.endswith("| 1 / 1 |")
    # best-baseline: the best baseline of each budget, ipndm at 6 (wide) and 8 (BASE); ode_cov/dct is no baseline
    best = next(r for r in qsum.half_widths([path], "default", ["best-baseline"]).splitlines() if "fd_pooled" in r)
    assert best.endswith("| 1 / 2 |")
    at8 = next(r for r in qsum.half_widths([path], "default", None, [8]).splitlines() if "fd_pooled" in r)
    assert f"{100 * share[1]:.3g}% .. {100 * share[1]:.3g}%" in at8 and at8.endswith("| 1 / 1 |")
    nan = grid({"ipndm": {6: [float("nan")] * 5}})
    line = next(r for r in qsum.half_widths([write(tmp_path, "n.json", nan)], "default").splitlines()
                if "fd_pooled" in r)
    assert line.endswith("| 0 / 1 |")  # not finite: over 10%, not silently dropped
    with pytest.raises(SystemExit):
        qsum.main([path, "--half-widths", "--average", "--rows", "ipndm"])
