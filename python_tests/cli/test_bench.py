"""``covkernels bench``: the real CLI entry point on a tiny model, its JSON, and its refusals."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from covkernels.bench import load_model, parse_shape
from covkernels.cli import main
from covkernels.jvp import STRATEGIES
from covkernels.ops import dispatch
from covkernels.samplers import SAMPLERS

TINY_MODEL = textwrap.dedent("""
    import torch

    class Tiny(torch.nn.Module):
        # D(x) = x - conv(x): a real network with a non-trivial Jacobian, cheap on a CPU
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x, sigma, **extra):
            return x - 0.1 * torch.tanh(self.conv(x))

    def make():
        return Tiny()
""")


def _run_cli(tmp_path, *args):
    (tmp_path / "tinymodel.py").write_text(TINY_MODEL)
    # cwd: the installed package is imported (not the source tree), and `tinymodel` is importable
    return subprocess.run([sys.executable, "-m", "covkernels", "bench", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)


def _positive_finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_bench_cli_writes_positive_finite_ratios_for_every_sampler_and_strategy(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run_cli(tmp_path, "--model", "tinymodel:make", "--shape", "2,2,8,8", "--device", "cpu",
                    "--repeats", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    env = res["environment"]
    assert env["device"].startswith("CPU") and env["torch"] and env["covkernels"]
    assert "git_revision" in env and "triton" in env
    assert res["shape"] == [2, 2, 8, 8] and res["model"] == "tinymodel:make"
    assert res["command"].startswith("covkernels bench --model tinymodel:make")
    assert _positive_finite(res["forward_s"]) and _positive_finite(res["device_copy"]["gb_per_s"])
    # every JVP strategy but auto runs on this differentiable model
    assert set(res["jvp"]) == set(STRATEGIES) - {"auto"}
    for name, r in res["jvp"].items():
        assert r["error"] is None and _positive_finite(r["seconds"]) and _positive_finite(r["ratio"]), name
        assert res["ratios"][f"jvp {name} / forward"] == r["ratio"]
    # the sampler list is the registry's; covariance samplers once per backend that runs on a CPU tensor
    backends = [b for b, (ok, _) in dispatch.backend_status().items() if ok and b in ("reference", "cpp")]
    assert {r["sampler"] for r in res["steps"].values()} == set(SAMPLERS)
    for s in ("cov_ddim", "diag_hutchinson", "lanczos"):
        assert {res["steps"][f"{s} [{b}]"]["backend"] for b in backends} == set(backends)
    assert "triton" not in res["backends"]  # the interpreter is never timed
    for key, r in res["steps"].items():
        assert r["error"] is None and _positive_finite(r["seconds"]) and _positive_finite(r["copies"]), key
        assert r["sigmas"][:2] == pytest.approx([0.8, 0.4]) and len(r["sigmas"]) in (2, 3), key
        assert _positive_finite(res["ratios"][f"{key} non-model / forward"])
    if "cpp" in backends:
        assert _positive_finite(res["ratios"]["cov_ddim [cpp] / cov_ddim [reference]"])
    assert all(_positive_finite(v) for v in res["ratios"].values())
    assert "non-model part of one step" in proc.stdout
    assert ("fused / reference" in proc.stdout) == ("cpp" in backends)


def test_bench_cli_runs_a_builtin_model_on_chosen_samplers(tmp_path):
    out = tmp_path / "b.json"
    proc = _run_cli(tmp_path, "--model", "gaussian", "--shape", "1,3,8,8", "--samplers", "ddim", "cov_ddim",
                    "--repeats", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {r["sampler"] for r in res["steps"].values()} == {"ddim", "cov_ddim"}
    assert res["shape"] == [1, 3, 8, 8]


@pytest.mark.parametrize("args, named", [
    (["--model", "gaussian", "--shape", "2,3,8"], "--shape"),
    (["--model", "gaussian", "--shape", "2,3,8,8", "--samplers", "nope"], "sampler"),
    (["--model", "no_such_module:make"], "--model"),
    (["--model", "digits", "--shape", "2,3,8,8"], "event shape"),
    (["--model", "gaussian", "--shape", "1,3,8,8", "--repeats", "0"], "repeats"),
])
def test_bench_refuses_bad_options_with_the_option_named(args, named, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", *args])
    assert exc.value.code == 2
    assert named in capsys.readouterr().err


def test_parse_shape_and_load_model_validate():
    assert parse_shape("4,3,64,64") == (4, 3, 64, 64)
    for bad in ("4,3,64", "a,b,c,d", "0,3,8,8", None):
        with pytest.raises(ValueError, match="--shape"):
            parse_shape(bad)
    with pytest.raises(ValueError, match="--model"):
        load_model("not a path")
    assert load_model("gaussian", 8).event_shape[-1] == 8


class _HalfDenoiser(torch.nn.Module):
    def forward(self, x, sigma, **extra):
        return 0.5 * x


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
        res = run_bench(_HalfDenoiser(), (2, 3, 8, 8), "cpu", samplers=["closing_test", "ddim"], repeats=1)
    finally:
        del REGISTRY["closing_test"]
    closing, ddim = res["steps"]["closing_test"], res["steps"]["ddim"]
    assert closing["error"] is None and closing["seconds"] > 0
    assert closing["sigmas"] == pytest.approx([0.8, 0.4, 0.0]) and ddim["sigmas"] == pytest.approx([0.8, 0.4])
