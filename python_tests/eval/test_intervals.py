"""Seed statistics of the evaluation (Student-t intervals, paired verdicts, the README-claims checker), the
unbiased kernel distance, the testbed registry and the report's markers and plot layout, on synthetic
states whose answers are known."""
import math

import pytest
import torch

from helpers import toy_grid_state, gen
from covkernels.eval import metrics  # the module itself: the test sets its block sizes
from covkernels.eval.intervals import (annotate_paired, check_orderings, mean_ci95, paired, summarize_seeds,
                                       t_quantile)
import covkernels.eval.testbeds as tb  # the module that holds the registry (monkeypatched below)
from covkernels.eval.testbeds import get_testbed, register

# Two-sided 95% Student-t critical values from published tables (df: value).
T_TABLE = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 29: 2.045, 120: 1.980}


@pytest.mark.parametrize("df", list(T_TABLE))
def test_t_quantile_matches_the_published_table(df):
    assert t_quantile(0.975, df) == pytest.approx(T_TABLE[df], abs=6e-4)


def test_mean_ci95_by_hand_and_its_coverage():
    mean, (lo, hi) = mean_ci95([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4) * sd / sqrt(n)
    assert mean == 3.0 and lo == pytest.approx(3.0 - half) and hi == pytest.approx(3.0 + half)
    assert all(math.isnan(v) for v in mean_ci95([4.0])[1])  # one seed: no interval
    # coverage: intervals of 5 normal draws contain the true mean ~95% of the time (1000 trials: 93-97%)
    draws = torch.randn(1000, 5, generator=gen(0), dtype=torch.float64) + 7.0
    hits = sum(lo <= 7.0 <= hi for lo, hi in (mean_ci95(row.tolist())[1] for row in draws))
    assert 930 <= hits <= 970, hits


def test_summarize_seeds_writes_the_json_contract():
    out = summarize_seeds({"fd": [1.0, 3.0], "kid": [0.5, 0.5]})
    assert out["fd"] == 2.0 and out["fd_per_seed"] == [1.0, 3.0] and out["fd_ci95"][0] < 2.0 < out["fd_ci95"][1]
    assert out["kid_ci95"] == [0.5, 0.5]


def test_paired_difference_resolves_what_independent_intervals_cannot():
    # a seed effect shared by both samplers (common random numbers) hides a small, consistent gap
    shared = [0.0, 5.0, -3.0, 8.0, 2.0]
    a, b = [s + 1.0 for s in shared], [s + 1.1 + 0.01 * i for i, s in enumerate(shared)]
    lo_a, hi_a = mean_ci95(a)[1]
    lo_b, hi_b = mean_ci95(b)[1]
    assert lo_b < hi_a and lo_a < hi_b  # the separate intervals overlap
    result = paired(a, b, lower_is_better=True)
    assert result["verdict"] == "win" and result["diff_ci95"][1] < 0
    assert paired(b, a, lower_is_better=True)["verdict"] == "loss"
    assert paired(a, b, lower_is_better=False)["verdict"] == "loss"  # higher is better: a is worse
    assert paired([1.0, 2.0, 3.0], [1.5, 1.5, 3.2], True)["verdict"] == "tie"
    with pytest.raises(ValueError, match="same seeds"):
        paired([1.0, 2.0], [1.0], True)


def test_annotate_paired_compares_with_the_best_baseline_of_the_column():
    from covkernels.eval.plan import is_baseline

    state = toy_grid_state()
    annotate_paired(state, {"fd": ("fd", True)}, is_baseline)
    verdicts = {c["sampler"]: c["vs_baseline"]["fd"] for c in state["cells"]}
    assert {v["baseline"] for v in verdicts.values()} == {"dpmpp_2m"}  # the best mean-only sampler
    assert verdicts["cov_ddim/dct"]["verdict"] == "win"
    assert verdicts["ddim"]["verdict"] == "loss" and verdicts["dpmpp_2m"]["verdict"] == "tie"
    assert verdicts["lanczos/k1"]["verdict"] == "tie"  # noisy difference: its interval straddles 0
    assert verdicts["cov_ddim/dct"]["relative"] == pytest.approx(-0.14 / 0.94, rel=1e-9)


def test_ordering_checker_passes_true_claims_and_fails_flipped_or_unresolved_ones():
    state = toy_grid_state()
    lower = {"fd": True}
    assert check_orderings(state, [("fd", 8, "dpmpp_2m", "ddim"), ("fd", 8, "cov_ddim/dct", "dpmpp_2m")], lower) == []
    flipped = check_orderings(state, [("fd", 8, "ddim", "dpmpp_2m")], lower)  # the expectation swapped
    assert len(flipped) == 1 and "(loss)" in flipped[0]
    unresolved = check_orderings(state, [("fd", 8, "lanczos/k1", "dpmpp_2m")], lower)
    assert len(unresolved) == 1 and "(tie)" in unresolved[0]
    with pytest.raises(KeyError, match="heun"):
        check_orderings(state, [("fd", 8, "heun", "ddim")], lower)


def test_markdown_shows_intervals_and_marks_wins_losses_and_the_baseline():
    from covkernels.eval.plan import is_baseline
    from covkernels.eval.report import markdown

    state = toy_grid_state()
    annotate_paired(state, {"fd_pooled": ("fd", True)}, is_baseline)
    for cell in state["cells"]:  # the gmm testbed's main metric
        for key in ("", "_ci95", "_per_seed"):
            cell["fd_pooled" + key] = cell.pop("fd" + key)
    state["floor"] = {k.replace("fd", "fd_pooled"): v for k, v in state["floor"].items()}
    annotate_paired(state, get_testbed("gmm").metrics, is_baseline)
    text = markdown(state)
    cov = next(c for c in state["cells"] if c["sampler"] == "cov_ddim/dct")
    half = 0.5 * (cov["fd_pooled_ci95"][1] - cov["fd_pooled_ci95"][0])
    assert f"| cov_ddim/dct | **{cov['fd_pooled']:.4g} ± {half:.2g} [8]** |" in text
    assert "| ddim | " in text and "[8] (-) |" in text
    assert "| dpmpp_2m | *" in text
    assert "8 NFE: beat the best baseline `dpmpp_2m`: `cov_ddim/dct`" in text


def test_plot_draws_intervals_and_keeps_the_axis_label_inside_the_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from covkernels.eval.report import plot

    state = toy_grid_state()
    for cell in state["cells"]:
        for key in ("", "_ci95", "_per_seed"):
            cell["fd_pooled" + key] = cell.pop("fd" + key)
    state["floor"] = {k.replace("fd", "fd_pooled"): v for k, v in state["floor"].items()}
    fig = plot(state, str(tmp_path / "q.png"), return_figure=True)
    renderer = fig.canvas.get_renderer()
    box, label = fig.bbox, fig.axes[0].yaxis.label.get_window_extent(renderer)
    assert label.x0 >= box.x0 and label.y0 >= box.y0 and label.y1 <= box.y1, (label, box)
    assert fig.axes[0].containers  # error bars: one container per sampler
    assert (tmp_path / "q.png").stat().st_size > 1000


def test_kernel_distance_is_unbiased_and_matches_the_formula():
    x = torch.randn(40, 6, generator=gen(1), dtype=torch.float64)
    y = torch.randn(30, 6, generator=gen(2), dtype=torch.float64) + 0.5

    def k(a, b):
        return (a @ b / 6 + 1) ** 3

    kxx = sum(k(x[i], x[j]) for i in range(40) for j in range(40) if i != j) / (40 * 39)
    kyy = sum(k(y[i], y[j]) for i in range(30) for j in range(30) if i != j) / (30 * 29)
    kxy = sum(k(x[i], y[j]) for i in range(40) for j in range(30)) / (40 * 30)
    assert metrics.kernel_distance(x, y) == pytest.approx(float(kxx + kyy - 2 * kxy), rel=1e-10)
    whole = metrics._GRAM_BLOCK
    try:  # row blocks that do not divide N (40 = 7 + ... + 5, 30 = 7 + ... + 2) give the same sums
        metrics._GRAM_BLOCK = 7
        assert metrics.kernel_distance(x, y) == pytest.approx(float(kxx + kyy - 2 * kxy), rel=1e-10)
    finally:
        metrics._GRAM_BLOCK = whole
    full = metrics.KID_FULL_MAX
    try:  # above KID_FULL_MAX: the mean of the full estimates on 4 chunk pairs (40 -> 10 each, 30 -> 8, 8, 7, 7)
        metrics.KID_FULL_MAX = 10
        chunked = metrics.kernel_distance(x, y)
        metrics.KID_FULL_MAX = full
        pieces = [metrics.kernel_distance(u, v) for u, v in zip(x.tensor_split(4), y.tensor_split(4))]
        assert chunked == pytest.approx(sum(pieces) / 4, rel=1e-12) and chunked != metrics.kernel_distance(x, y)
        metrics.KID_FULL_MAX = 15  # ceil(40 / 15) = 3 chunks: y[:5] has fewer than 2 samples for each
        with pytest.raises(ValueError, match="at least 2 samples per chunk"):
            metrics.kernel_distance(x, y[:5])
    finally:
        metrics.KID_FULL_MAX = full
    # same distribution: the mean over 200 pairs of small sets is ~0 (the FD's is clearly positive)
    g = gen(3)
    kid = [metrics.kernel_distance(torch.randn(20, 6, generator=g), torch.randn(20, 6, generator=g))
           for _ in range(200)]
    mean, (lo, hi) = mean_ci95(kid)
    assert lo < 0 < hi and abs(mean) < 0.02
    fd = [metrics.frechet_distance(torch.randn(20, 6, generator=g), torch.randn(20, 6, generator=g))
          for _ in range(50)]
    assert mean_ci95(fd)[1][0] > 0.5
    assert metrics.kernel_distance(x, y) > 0.05  # shifted by 0.5 in every dimension
    with pytest.raises(ValueError, match="degree"):
        metrics.kernel_distance(x, y, degree=0)


def test_testbed_registry_interface_and_guarded_optional_testbeds(monkeypatch):
    import importlib.util


    assert {"gmm", "gaussian", "digits"} <= set(tb.testbed_names())
    with pytest.raises(ValueError, match="model must be one of"):
        get_testbed("imagenet")
    with pytest.raises(ValueError, match="main_metric"):
        tb.Testbed("bad", lambda: None, None, {"gap": ("gap", None)}, "gap")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith(
        "covkernels.models.") else real(name, *a))
    monkeypatch.setattr(tb, "_REGISTRY", {k: v for k, v in tb._REGISTRY.items() if k not in tb.OPTIONAL})
    assert not set(tb.OPTIONAL) & set(tb.testbed_names())  # absent modules: not offered, no import error
    with pytest.raises(ValueError, match="model must be one of"):
        get_testbed("digits_ideal")


def test_a_registered_testbed_runs_through_the_grid(monkeypatch):
    from covkernels.eval.api import evaluate
    from covkernels.models import get_model

    class MeanScorer:  # distance of the sample mean to the true mean: deterministic per sample set
        def __init__(self, model, num, seed):
            self.model = model

        def __call__(self, x):
            return {"mean_error": float((x.mean(0) - self.model.mean).square().mean())}

        def floor(self):
            return {"mean_error": 0.0}

    monkeypatch.setattr(tb, "_REGISTRY", dict(tb._REGISTRY))
    register(tb.Testbed("toy", lambda: get_model("gaussian", size=8), MeanScorer,
                     {"mean_error": ("squared error of the sample mean", True)}, "mean_error"))
    state = evaluate("toy", samplers=["ddim", "dpmpp_2m"], nfes=[4], num_samples=16, seeds=3, tables=["default"],
                     progress=None)
    assert [len(c["mean_error_per_seed"]) for c in state["cells"]] == [3, 3]
    assert state["floor"]["mean_error"] == 0.0


@pytest.mark.parametrize("n, m, d", [(300, 200, 48), (40, 30, 48)])  # the d x d (QR) and the N x M route
def test_frechet_distance_matches_the_dense_formula_on_both_routes(n, m, d):
    g = gen(5)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64) * 2 + 0.3
    a, b = x - x.mean(0), y - y.mean(0)
    ca, cb = a.T @ a / (n - 1), b.T @ b / (m - 1)
    e, v = torch.linalg.eigh(ca)
    root = v @ torch.diag(e.clamp_min(0).sqrt()) @ v.T
    inner = torch.linalg.eigvalsh(root @ cb @ root).clamp_min(0).sqrt().sum()
    dense = (x.mean(0) - y.mean(0)).square().sum() + ca.trace() + cb.trace() - 2 * inner
    # rel 1e-7: the dense route takes square roots of ~0 eigenvalues when N < d
    assert metrics.frechet_distance(x, y) == pytest.approx(float(dense), rel=1e-7)
