"""Review leftovers, each through its real entry point: ``covkernels sample`` on every testbed with that
testbed's scorer, ``evaluate(options=...)`` refusing options no selected sampler takes, ``covkernels bench``
reading "needs a final 0" from the registry, and ``covkernels.sample`` refusing ``sigmas`` together with the
schedule parameters it would ignore."""
from __future__ import annotations

import re

import pytest
import torch

import covkernels
from covkernels.cli import build_parser, main
from covkernels import testbeds
from covkernels.testbeds import get_testbed


def _choices(parser, command: str, option: str):
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return next(a for a in sub._actions if option in a.option_strings).choices


def _help(parser, command: str, option: str) -> str:
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return next(a for a in sub._actions if option in a.option_strings).help


def test_sample_model_choices_are_the_testbed_registry(capsys):
    # --model also takes package.module:factory (issue 24), so the built-in names are read from the registry
    # into the help and the error, not into argparse choices
    assert ", ".join(testbeds.testbed_names()) in _help(build_parser(), "sample", "--model")
    assert {"patches", "digits_ideal"} <= set(testbeds.testbed_names())
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--model", "nope", "--quiet"])
    assert exc.value.code == 2 and str(testbeds.testbed_names()) in capsys.readouterr().err


@pytest.mark.parametrize("name", ["patches", "digits_ideal", "gmm"])
def test_sample_scores_with_the_testbeds_own_scorer(name, tmp_path, capsys):
    n = 12
    assert main(["sample", "--model", name, "--sampler", "ddim", "--steps", "2", "--num", "4", "--num-eval",
                 str(n), "--quiet", "--out", str(tmp_path / "g.png")]) == 0
    out = capsys.readouterr().out
    testbed = get_testbed(name)
    main_metric = testbed.main_metric
    assert testbed.metrics[main_metric][0] in out
    printed = {m: float(v) for m, v in re.findall(r"(\w+) (-?[0-9.]+(?:e[+-]?\d+)?) \(floor", out)}
    printed[main_metric] = float(re.search(rf"{main_metric} (-?[0-9.]+(?:e[+-]?\d+)?) \(floor, ", out).group(1))
    assert set(printed) == set(testbed.metrics)
    # the same samples (same seed, default schedule) scored by the testbed's scorer, as the evaluation does
    model = testbed.load()
    x = covkernels.sample(model, (n, *model.event_shape), "ddim", steps=2,
                          generator=torch.Generator().manual_seed(0), disable=True)
    expected = testbed.make_scorer(model, n, 0)(x)
    for metric, value in printed.items():
        assert value == pytest.approx(expected[metric], rel=2e-3, abs=1e-9), metric


def test_sample_refuses_a_num_eval_the_testbed_cannot_score(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--model", "patches", "--sampler", "ddim", "--steps", "2", "--num", "2", "--num-eval",
              "3000", "--quiet", "--out", str(tmp_path / "g.png")])
    assert exc.value.code == 2
    assert "--num-eval 3000 does not fit --model patches" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()  # refused before sampling


def _gaussian():
    from covkernels.models import get_model

    return get_model("gaussian", size=8)


@pytest.mark.parametrize("given", [{"steps": 4}, {"sigma_min": 0.002}, {"sigma_max": 80.0}, {"schedule": "karras"},
                                   {"rho": 7.0}, {"steps": 3, "rho": 5.0}])
def test_sample_refuses_sigmas_with_the_schedule_parameters_it_would_ignore(given):
    sigmas = covkernels.get_sigmas("karras", 3, 0.1, 10.0)
    with pytest.raises(ValueError, match="sigmas is an explicit schedule: " + ", ".join(given) + " would be ignored"):
        covkernels.sample(_gaussian(), (2, 3, 8, 8), "ddim", sigmas=sigmas, generator=torch.Generator().manual_seed(0),
                          disable=True, **given)


def test_sample_defaults_and_explicit_sigmas_agree():
    model, gen = _gaussian(), lambda: torch.Generator().manual_seed(3)
    by_default = covkernels.sample(model, (2, 3, 8, 8), "ddim", generator=gen(), disable=True)
    explicit = covkernels.sample(model, (2, 3, 8, 8), "ddim", sigmas=covkernels.get_sigmas("karras", 8, 0.002, 80.0),
                                 generator=gen(), disable=True)
    spelled_out = covkernels.sample(model, (2, 3, 8, 8), "ddim", steps=8, sigma_min=0.002, sigma_max=80.0,
                                    schedule="karras", rho=7.0, generator=gen(), disable=True)
    assert torch.equal(by_default, explicit) and torch.equal(by_default, spelled_out)
    other = covkernels.sample(model, (2, 3, 8, 8), "ddim", steps=4, generator=gen(), disable=True)
    assert not torch.allclose(other, by_default)  # steps is used when no sigmas are given


@pytest.mark.parametrize("samplers, options, refused", [
    (["ddim", "lanczos/k1"], {"basis": "dct", "cov_sigma_max": 1.0}, ["basis"]),  # lanczos has no basis
    (["ddim", "dpmpp_3m_sde/eta0"], {"eta": 0.5}, ["eta"]),  # eta of a baseline row is not a covariance option
    (["ode_cov/dct"], {"cov_sigma_max": 1.0, "no_such_option": 3}, ["cov_sigma_max", "no_such_option"]),
])
def test_evaluate_refuses_options_no_selected_covariance_sampler_takes(samplers, options, refused, tmp_path):
    from covkernels.evaluation import VARIANTS, evaluate

    assert all(label in VARIANTS for label in samplers)
    with pytest.raises(ValueError, match=re.escape(f"options {refused} are taken by no selected covariance")):
        evaluate("gmm", samplers=samplers, nfes=[4], num_samples=8, seeds=2, tables=["default"], progress=None,
                 options=options, out_dir=str(tmp_path))
    assert not list(tmp_path.iterdir())  # refused before any cell ran


def test_evaluate_passes_an_option_to_the_rows_that_take_it_only():
    """cov_sigma_max: taken by cov_ddim, not by the baseline ddim; the cov_ddim cell's NFE follows it."""
    import math

    from covkernels.evaluation import evaluate
    from covkernels.sampling import nfe_per_sample

    state = evaluate("gmm", samplers=["ddim", "cov_ddim/dct"], nfes=[6], num_samples=8, seeds=2,
                     tables=["default"], progress=None, options={"cov_sigma_max": math.inf})
    cells = {c["sampler"]: c for c in state["cells"]}
    assert cells["ddim"]["nfe"] == cells["ddim"]["steps"] == 6
    cov = cells["cov_ddim/dct"]
    sigmas = covkernels.get_sigmas("karras", cov["steps"], 0.1, 80.0)
    assert cov["nfe"] == nfe_per_sample("cov_ddim", sigmas, cov_sigma_max=math.inf) == 2 * cov["steps"] - 1


class _Stub(torch.nn.Module):
    def forward(self, x, sigma, **extra):
        return 0.5 * x


@pytest.mark.parametrize("name", list(covkernels.sampling.SAMPLERS))
def test_registry_final_zero_flag_matches_what_each_sampler_refuses(name):
    """needs_final_zero is true exactly for the samplers that refuse a schedule not ending in 0."""
    from covkernels.samplers.registry import get_sampler, spec

    fn = get_sampler(name)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    opts = {"disable": True, "generator": torch.Generator().manual_seed(1)}
    if "jvp" in spec(name).options():
        opts["jvp"] = "finite_difference"
    fn(_Stub(), x, torch.tensor([0.8, 0.4, 0.0]), **opts)  # every sampler runs a schedule ending in 0
    if spec(name).needs_final_zero:
        with pytest.raises(ValueError):
            fn(_Stub(), x, torch.tensor([0.8, 0.4]), **opts)
    else:
        assert torch.isfinite(fn(_Stub(), x, torch.tensor([0.8, 0.4]), **opts)).all()


def test_bench_reads_needs_final_zero_from_the_registry_not_an_error_text():
    """A sampler registered with needs_final_zero whose refusal says something else is still timed, on the
    one-step schedule plus its final step to 0."""
    from covkernels.bench import run_bench
    from covkernels.samplers.registry import REGISTRY, register

    def sample_closing(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None,
                       sample_offset=0, check_finite=True):
        if float(sigmas[-1]) != 0:
            raise ValueError("this sampler's schedule must close at zero")
        for sigma in sigmas[:-1]:
            x = model(x, sigma)
        return x

    register("closing_test", family="ode_single", summary="test only", needs_final_zero=True)(sample_closing)
    try:
        res = run_bench(_Stub(), (2, 3, 8, 8), "cpu", samplers=["closing_test", "ddim"], repeats=1)
    finally:
        del REGISTRY["closing_test"]
    closing, ddim = res["steps"]["closing_test"], res["steps"]["ddim"]
    assert closing["error"] is None and closing["seconds"] > 0
    assert closing["sigmas"] == pytest.approx([0.8, 0.4, 0.0]) and ddim["sigmas"] == pytest.approx([0.8, 0.4])


@pytest.mark.parametrize("path, ignored", [
    ("benchmarks/results/quality_gmm.png", False), ("benchmarks/results/best/quality_gmm.png", False),
    ("benchmarks/results/best_schedule/deeper/plot.png", False), ("grid.png", True), ("benchmarks/grid.png", True)])
def test_gitignore_keeps_every_results_png_and_ignores_other_pngs(path, ignored):
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("needs git and a checkout of the repository (CI runs from a clone)")
    run = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=root)
    assert run.returncode == (0 if ignored else 1), path
