"""``evaluate(options=...)``: a shared option goes to the grid rows whose sampler takes it, and an option no
selected covariance row takes is refused before any cell runs."""
from __future__ import annotations

import math
import re

import pytest

import covkernels
from covkernels.eval import evaluate
from covkernels.eval.plan import VARIANTS
from covkernels.samplers import nfe_per_sample


@pytest.mark.parametrize("samplers, options, refused", [
    (["ddim", "lanczos/k1"], {"basis": "dct", "cov_sigma_max": 1.0}, ["basis"]),  # lanczos has no basis
    (["ddim", "dpmpp_3m_sde/eta0"], {"eta": 0.5}, ["eta"]),  # eta of a baseline row is not a covariance option
    (["ode_cov/dct"], {"cov_sigma_max": 1.0, "no_such_option": 3}, ["cov_sigma_max", "no_such_option"]),
])
def test_evaluate_refuses_options_no_selected_covariance_sampler_takes(samplers, options, refused, tmp_path):
    assert all(label in VARIANTS for label in samplers)
    with pytest.raises(ValueError, match=re.escape(f"options {refused} are taken by no selected covariance")):
        evaluate("gmm", samplers=samplers, nfes=[4], num_samples=8, seeds=2, tables=["default"], progress=None,
                 options=options, out_dir=str(tmp_path))
    assert not list(tmp_path.iterdir())  # refused before any cell ran


def test_evaluate_passes_an_option_to_the_rows_that_take_it_only():
    """cov_sigma_max: taken by cov_ddim, not by the baseline ddim; the cov_ddim cell's NFE follows it."""
    state = evaluate("gmm", samplers=["ddim", "cov_ddim/dct"], nfes=[6], num_samples=8, seeds=2,
                     tables=["default"], progress=None, options={"cov_sigma_max": math.inf})
    cells = {c["sampler"]: c for c in state["cells"]}
    assert cells["ddim"]["nfe"] == cells["ddim"]["steps"] == 6
    cov = cells["cov_ddim/dct"]
    sigmas = covkernels.get_sigmas("karras", cov["steps"], 0.1, 80.0)
    assert cov["nfe"] == nfe_per_sample("cov_ddim", sigmas, cov_sigma_max=math.inf) == 2 * cov["steps"] - 1


def test_check_finite_reaches_the_covariance_rows_as_a_shared_run_option():
    """check_finite is a run option of every sampler, not a registry option: the grid passes it to the
    covariance rows (mean_only: a non-finite JVP takes the mean-only step) and keeps it from the baselines."""
    from covkernels.eval import EvalConfig
    from covkernels.eval.plan import variant_options

    assert variant_options("cov_ddim/dct", {"check_finite": "mean_only"})[1]["check_finite"] == "mean_only"
    assert "check_finite" not in variant_options("ddim", {"check_finite": "mean_only"})[1]
    EvalConfig(model="gmm", samplers=["ddim", "cov_ddim/dct"], nfes=[6], options={"check_finite": "mean_only"})
