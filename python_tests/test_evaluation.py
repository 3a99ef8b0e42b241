"""Quality evaluation: NFE accounting by a counting wrapper, metrics against dense formulas, incremental
writes and resume, sharded generation with torchrun + gloo equal to one process, the trained digits model,
and the ordering the README's quality table claims (reduced grid)."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import covkernels as ck
from conftest import gen
from covkernels import metrics
from covkernels.evaluation import VARIANTS, CountingModel, evaluate, schedule_for
from covkernels.models import get_model
from covkernels.report import markdown

SMALL = dict(samplers=["ddim", "cov_ddim/dct", "lanczos/k1"], nfes=[4, 8], num_samples=32, batch_size=16)


def test_counting_wrapper_counts_rows_and_dual_inputs_twice():
    model = CountingModel(get_model("gaussian", size=8))
    x = torch.randn(3, 3, 8, 8, generator=gen(0))
    ck.sample_cov_ddim(model, x * 10, ck.karras_sigmas(3, 0.1, 10.0), disable=True, generator=gen(1),
                       jvp="forward_ad", cov_sigma_max=math.inf, block=4)
    # 2 covariance steps (one dual call each = primal + JVP) and the final plain call
    assert model.rows == 3 * ck.sampling.nfe_per_sample("cov_ddim", ck.karras_sigmas(3, 0.1, 10.0),
                                                         cov_sigma_max=math.inf) == 3 * 5


@pytest.mark.parametrize("label", list(VARIANTS))
def test_every_variant_spends_exactly_its_budget_accounting(tmp_path, label):
    """evaluate() raises if the wrapped model's count and nfe_per_sample disagree; every cell fits its budget."""
    state = evaluate("gmm", samplers=[label], nfes=[6, 12], num_samples=8, batch_size=8, progress=None)
    assert state["cells"], label
    for cell in state["cells"]:
        assert cell["nfe_measured"] == cell["nfe"] <= cell["nfe_budget"]


def test_schedule_for_takes_the_most_steps_within_the_budget():
    sched = {"schedule": "karras", "sigma_min": 0.1, "sigma_max": 80.0, "rho": 7.0}
    assert schedule_for("ddim", 8, sched)[0] == 8
    assert schedule_for("heun", 8, sched)[2] == 7  # 2 per step, 1 on the last
    assert schedule_for("lanczos/k5", 4, sched, {"cov_sigma_max": math.inf}) is None  # < 2 steps fit
    steps, _, used = schedule_for("cov_ddim/dct", 8, sched)
    assert used <= 8 and schedule_for("cov_ddim/dct", 8, sched, {"cov_sigma_max": math.inf})[0] < steps


def test_gaussian_w2_matches_the_dense_formula():
    model = get_model("gaussian", size=8)
    x = model.sample(50, generator=gen(2), dtype=torch.float64) * 1.3 + 0.1
    cov = model.covariance()
    a = x.flatten(1) - x.flatten(1).mean(0)
    s = a.T @ a / (x.shape[0] - 1)
    e, v = torch.linalg.eigh(cov)
    root = v @ torch.diag(e.clamp_min(0).sqrt()) @ v.T
    inner = torch.linalg.eigvalsh(root @ s @ root).clamp_min(0).sqrt().sum()
    dense = (x.flatten(1).mean(0) - model.mean.flatten()).square().sum() + cov.trace() + s.trace() - 2 * inner
    # rel 1e-5: the dense route takes square roots of ~0 eigenvalues (rank 49 < 192)
    assert metrics.gaussian_w2(x, model.mean, model.sqrt_cov) == pytest.approx(float(dense), rel=1e-5)
    assert metrics.gaussian_w2(x, model.mean, model.sqrt_cov) > 0.1  # the scaled samples are off


def test_precision_recall_limits():
    real = torch.randn(200, 5, generator=gen(3))
    assert metrics.precision_recall(real, real.clone()) == (1.0, 1.0)
    far = torch.randn(100, 5, generator=gen(4)) + 100.0
    assert metrics.precision_recall(real, far) == (0.0, 0.0)
    collapsed = real[:1].repeat(50, 1) + 1e-3 * torch.randn(50, 5, generator=gen(5))  # one mode only
    precision, recall = metrics.precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.2
    with pytest.raises(ValueError, match="k=3"):
        metrics.precision_recall(real[:3], far)


def test_results_are_written_per_cell_and_a_run_resumes(tmp_path):
    messages = []
    state = evaluate("gmm", **SMALL, out_dir=str(tmp_path), progress=messages.append)
    path = tmp_path / "quality_gmm.json"
    on_disk = json.loads(path.read_text())
    assert on_disk["cells"] == json.loads(json.dumps(state["cells"])) and len(state["cells"]) == 6
    for ext in ("csv", "md"):
        assert (tmp_path / f"quality_gmm.{ext}").stat().st_size > 0
    assert "exact vs exact" in (tmp_path / "quality_gmm.md").read_text()
    # an interrupted run: the last two cells never finished
    on_disk["cells"] = on_disk["cells"][:-2]
    path.write_text(json.dumps(on_disk))
    messages.clear()
    resumed = evaluate("gmm", **SMALL, out_dir=str(tmp_path), progress=messages.append)
    assert messages[0].startswith("resuming") and "4 finished cells kept" in messages[0]
    assert sum(m.startswith("sampler=") for m in messages) == 2  # only the missing cells ran
    untimed = [[{k: v for k, v in c.items() if k != "seconds_per_sample"} for c in cells]
               for cells in (resumed["cells"], state["cells"])]
    assert untimed[0] == untimed[1]  # same seeds: the same numbers
    # a different configuration never mixes into (or silently replaces) the table
    with pytest.raises(ValueError, match=r"out_dir.*another configuration.*num_samples"):
        evaluate("gmm", **{**SMALL, "num_samples": 16}, out_dir=str(tmp_path), progress=None)
    other = evaluate("gmm", **{**SMALL, "num_samples": 16}, out_dir=str(tmp_path), progress=None, resume=False)
    assert len(other["cells"]) == 6 and other["config"]["num_samples"] == 16


def test_bad_grid_arguments_name_the_argument():
    with pytest.raises(ValueError, match="samplers"):
        evaluate("gmm", samplers=["euler_a"], progress=None)
    with pytest.raises(ValueError, match="nfes"):
        evaluate("gmm", nfes=[1], progress=None)
    with pytest.raises(ValueError, match="model"):
        evaluate("imagenet", progress=None)
    with pytest.raises(ValueError, match="jvp"):  # only finite differences cost exactly the counted NFE
        evaluate("gmm", jvp="forward_ad", progress=None)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate("gmm", batch_size=0, progress=None)


def test_repeated_grid_entries_run_once_and_options_do_not_relabel():
    state = evaluate("gmm", samplers=["lanczos/k2", "lanczos/k2"], nfes=[12, 12], num_samples=8, progress=None,
                     options={"lanczos_steps": 5, "basis": "dct", "cov_sigma_max": math.inf})
    assert len(state["cells"]) == 1
    assert state["cells"][0]["nfe"] == ck.sampling.nfe_per_sample(
        "lanczos", ck.karras_sigmas(state["cells"][0]["steps"], 0.1, 80.0), lanczos_steps=2,
        cov_sigma_max=math.inf)


def test_torchrun_two_gloo_processes_reproduce_one_process(tmp_path):
    # 12 NFE: lanczos/k1 takes covariance (JVP) steps below sigma = 1
    args = ["--model", "gmm", "--samplers", "ddim", "lanczos/k1", "--nfe", "12", "--num-samples", "24",
            "--batch-size", "8", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "covkernels", "eval", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)  # the installed package
    assert run.returncode == 0, run.stderr[-3000:]
    single = evaluate("gmm", samplers=["ddim", "lanczos/k1"], nfes=[12], num_samples=24, batch_size=8,
                      progress=None)
    sharded = json.loads((tmp_path / "two" / "quality_gmm.json").read_text())
    assert len(sharded["cells"]) == 2
    for a, b in zip(sharded["cells"], single["cells"]):
        assert a["sampler"] == b["sampler"] and a["nfe_measured"] == b["nfe_measured"]
        assert a["fd_pixels"] == pytest.approx(b["fd_pixels"], rel=1e-9)
        assert a["loglik_gap"] == pytest.approx(b["loglik_gap"], rel=1e-9, abs=1e-12)


def test_markdown_marks_the_best_cell_per_column():
    state = evaluate("gmm", samplers=["ddim", "heun"], nfes=[6], num_samples=32, progress=None)
    text = markdown(state)
    best = min(state["cells"], key=lambda c: c["fd_pixels"])
    assert f"| {best['sampler']} | **" in text


def _ranking(state, metric, nfe):
    cells = [c for c in state["cells"] if c["nfe_budget"] == nfe]
    return [c["sampler"] for c in sorted(cells, key=lambda c: c[metric])]


def test_quality_ordering_claimed_in_the_readme():
    """The README's quality claims on a reduced grid (the full grid: benchmarks/results/quality_*.md).
    gmm: DPM-Solver++(2M) < cov_ddim (DCT, default cov_sigma_max) < its base DDIM at 8 and 12 NFE, in the
    pooled Frechet distance (N = 1024: the pixel-space FD is too biased to rank at this N).
    digits: DPM-Solver++(2M) < DDIM < cov_ddim at 8 NFE (the covariance does not pay off there)."""
    labels = ["ddim", "dpmpp_2m", "cov_ddim/dct"]
    gmm = evaluate("gmm", samplers=labels, nfes=[8, 12], num_samples=1024, progress=None)
    for nfe in (8, 12):
        assert _ranking(gmm, "fd_pooled", nfe) == ["dpmpp_2m", "cov_ddim/dct", "ddim"], nfe
    digits = evaluate("digits", samplers=labels, nfes=[8], num_samples=256, progress=None)
    assert _ranking(digits, "fd_features", 8) == ["dpmpp_2m", "ddim", "cov_ddim/dct"]
