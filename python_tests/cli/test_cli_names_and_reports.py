"""What a new user ran into (issue 29), through the real entry points: one sampler name everywhere, flags for
``ode_cov``, few seeds said out loud, a plot by NFE budget with its legend off the lines, a covariance
sampler that takes no covariance step, metrics that say which way is better."""
from __future__ import annotations

import json

import pytest

from covkernels.eval.api import evaluate
from covkernels.eval.plan import VARIANTS, canonical_label
from helpers import run_cli
from helpers import grid_cell, toy_grid_state


@pytest.mark.parametrize("name, label", [
    pytest.param("cov_ddim", "cov_ddim/convdct", id="cov_ddim-defaults"),
    pytest.param("lanczos", "lanczos/k3", id="lanczos-defaults"),
    pytest.param("ipndm", "ipndm", id="row-name-unchanged"),
    pytest.param("cov_ddim/dct", "cov_ddim/dct", id="variant-unchanged"),
])
def test_a_bare_registry_name_means_the_row_of_its_defaults(name, label):
    assert canonical_label(name) == label


def test_every_registered_sampler_names_a_grid_row():
    from covkernels.samplers.registry import names

    for name in names():
        assert canonical_label(name) in VARIANTS


def test_unknown_name_lists_rows_and_names():
    with pytest.raises(ValueError, match=r"unknown 'cov_dim'.*grid row .*cov_ddim/convdct.*sampler name .*cov_ddim"):
        canonical_label("cov_dim")


def test_eval_takes_the_names_sample_takes(tmp_path):
    code, out, err = run_cli(["eval", "--model", "gaussian", "--samplers", "cov_ddim", "ddim", "--nfe", "4",
                              "--num-samples", "8", "--seeds", "2", "--tables", "default", "--out", "res",
                              "--quiet"], tmp_path)
    assert code == 0, err
    state = json.loads((tmp_path / "res" / "quality_gaussian.json").read_text())
    assert {c["sampler"] for c in state["cells"]} == {"cov_ddim/convdct", "ddim"}
    code, _, err = run_cli(["eval", "--samplers", "cov_dim", "--out", "res"], tmp_path)
    assert code == 2 and "covkernels: error: samplers: unknown 'cov_dim'" in err


def test_few_seeds_are_said_in_the_run_and_the_report(tmp_path):
    messages = []
    evaluate("gaussian", samplers=["ddim"], nfes=[4], num_samples=8, seeds=2, tables=["default"],
             out_dir=str(tmp_path), progress=messages.append)
    assert any(m.startswith("warning: S = 2 seeds") and "factor 12.7" in m for m in messages)
    assert "**Few seeds:** S = 2 seeds" in (tmp_path / "quality_gaussian.md").read_text()
    messages.clear()
    evaluate("gaussian", samplers=["ddim"], nfes=[4], num_samples=8, seeds=5, tables=["default"],
             out_dir=str(tmp_path / "five"), progress=messages.append)
    assert not any(m.startswith("warning:") for m in messages)
    assert "Few seeds" not in (tmp_path / "five" / "quality_gaussian.md").read_text()


def test_plot_puts_cells_at_their_budget_and_the_legend_beside_the_panels(tmp_path):
    pytest.importorskip("matplotlib")
    from covkernels.eval.report import plot

    state = toy_grid_state()
    # lanczos/k1 (2 NFE a step) spends 5 of a 6 budget and 5 of a 5 budget: two points, not one
    state["cells"] += [dict(grid_cell("lanczos/k1", 6, [0.9, 1.0, 1.1, 0.95, 1.05]), nfe=5),
                       dict(grid_cell("lanczos/k1", 5, [0.9, 1.0, 1.1, 0.95, 1.05]), nfe=5)]
    for cell in state["cells"]:  # the gmm testbed's main metric
        for key in ("", "_ci95", "_per_seed"):
            cell["fd_pooled" + key] = cell.pop("fd" + key)
    fig = plot(state, str(tmp_path / "q.png"), return_figure=True)
    ax = fig.axes[0]
    lanczos = next(c for c in ax.containers if c.get_label() == "lanczos/k1")
    assert sorted(lanczos.lines[0].get_xdata()) == [5, 6, 8]
    renderer = fig.canvas.get_renderer()
    legend, panel = fig.legends[0].get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 >= panel.x1  # beside the panel, not over its lines
    assert legend.x1 <= fig.bbox.x1 + 1  # and inside the figure


def test_covariance_sampler_without_a_covariance_step_warns(tmp_path):
    code, out, err = run_cli(["sample", "--model", "gaussian", "--sampler", "lanczos", "--steps", "1", "--num", "2",
                              "--num-eval", "0", "--quiet", "--out", "g.png"], tmp_path)
    assert code == 0, err
    assert "warning: lanczos with 1 step takes no covariance step" in err
    code, out, err = run_cli(["sample", "--model", "gaussian", "--sampler", "lanczos", "--steps", "4", "--num", "2",
                              "--num-eval", "0", "--quiet", "--out", "g.png"], tmp_path)
    assert code == 0 and "no covariance step" not in err


def test_ode_cov_flags_reach_the_sampler_and_others_refuse_them(tmp_path):
    code, out, err = run_cli(["sample", "--model", "gaussian", "--sampler", "ode_cov", "--ode", "ipndm",
                              "--switch-sigma", "end", "--covariance", "lanczos", "--steps", "4", "--num", "2",
                              "--num-eval", "0", "--quiet", "--out", "g.png"], tmp_path)
    assert code == 0, err
    assert "ode_cov on gaussian: 4 steps, 7 NFE/sample" in out  # 3 ODE steps + 1 draw of 1 + 3 Lanczos JVPs
    code, _, err = run_cli(["sample", "--sampler", "ddim", "--switch-sigma", "end", "--num-eval", "0"], tmp_path)
    assert code == 2 and "--switch-sigma does not apply to --sampler ddim" in err
    code, _, err = run_cli(["sample", "--sampler", "ode_cov", "--switch-sigma", "-1"], tmp_path)
    assert code == 2 and "expected a sigma > 0, 'end' or 'auto'" in err


def test_demo_metrics_say_which_way_is_better(tmp_path):
    code, out, err = run_cli(["sample", "--model", "gaussian", "--sampler", "ddim", "--steps", "2", "--num", "4",
                              "--num-eval", "16", "--quiet", "--out", "g.png"], tmp_path)
    assert code == 0, err
    assert "lower is better, " in out and "x the floor" in out


@pytest.mark.parametrize("argv", [["--help"], ["--version"], []], ids=["help", "version", "no-command"])
def test_top_level_cli_answers_without_importing_torch(argv, tmp_path):
    import subprocess
    import sys

    code = ("import sys\nfrom covkernels.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', file=sys.stderr)" % argv)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.stderr.strip().endswith("NO TORCH"), proc.stderr
    assert ("covkernels" in proc.stdout) or ("required: command" in proc.stderr)


def test_subcommand_help_still_lists_its_choices(tmp_path):
    code, out, err = run_cli(["sample", "--help"], tmp_path)
    assert code == 0 and "--switch-sigma" in out and "ode_cov" in out
