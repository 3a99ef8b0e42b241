"""What a new user ran into (issue 17), through the real entry point: ``python -m covkernels ...`` in a
subprocess started outside the source tree, stderr redirected to a file as in a log, CI or nohup run."""
from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_cli

import covkernels
from covkernels import cli_sample
from covkernels.cli import build_parser
from covkernels.samplers import SAMPLERS, spec

PACKAGE_DIR = Path(covkernels.__file__).parent


def test_progress_lines_off_a_terminal_across_batches_and_scoring(tmp_path):
    code, out, err = run_cli(["sample", "--model", "gaussian", "--sampler", "ddim", "--steps", "2", "--num", "4",
                              "--num-eval", "4", "--batch-size", "2", "--out", "g.png"], tmp_path,
                             COVKERNELS_PROGRESS_INTERVAL="0")
    assert code == 0, err
    lines = err.splitlines()
    # one overall display over both batches, no per-batch tqdm bar (no carriage returns)
    assert "sampling (ddim): 2/4 samples (50%)" in err and "sampling (ddim): 4/4 samples (100%)" in err
    assert "\r" not in err and not any(line.startswith("  0%") for line in lines)
    assert "scoring: 2/2 stages (100%)" in err
    assert "Frechet distance to exact samples" in out


def test_quiet_shows_no_progress(tmp_path):
    code, _, err = run_cli(["sample", "--model", "gaussian", "--sampler", "ddim", "--steps", "2", "--num", "2",
                            "--num-eval", "0", "--quiet", "--out", "g.png"], tmp_path, COVKERNELS_PROGRESS_INTERVAL="0")
    assert code == 0 and err == ""


@pytest.mark.parametrize("args, named", [
    (["--sampler", "heun", "--eta", "0.5"], "--eta"),
    (["--sampler", "ddim", "--cov-sigma-max", "2"], "--cov-sigma-max"),
    (["--sampler", "lanczos", "--basis", "dct"], "--basis"),
    (["--sampler", "ddim", "--jvp", "forward_ad", "--backend", "reference"], "--jvp, --backend"),
])
def test_inapplicable_options_are_usage_errors(tmp_path, args, named):
    code, _, err = run_cli(["sample", *args, "--num", "2", "--num-eval", "0", "--out", "g.png"], tmp_path)
    sampler = args[1]
    assert code == 2
    assert err.startswith(f"covkernels: error: {named} ")
    assert f"--sampler {sampler}; {sampler} takes: " in err
    assert not (tmp_path / "g.png").exists()


def test_applicability_follows_the_registry():
    """Every sampler in the registry x every option: accepted exactly when the registry says the sampler takes
    it (its keyword parameters and its declared spellings, e.g. ode_cov's flat probes / switch_sigma)."""
    for name in SAMPLERS:
        for keyword, flag in cli_sample.SAMPLER_FLAGS.items():
            if spec(name).takes(keyword):
                assert cli_sample.sampler_options(name, {keyword: 1}) == {keyword: 1}
            else:
                with pytest.raises(ValueError, match=f"{flag} does not apply to --sampler {name}"):
                    cli_sample.sampler_options(name, {keyword: 1})
        assert cli_sample.sampler_options(name, dict.fromkeys(cli_sample.SAMPLER_FLAGS)) == {}  # none given


def test_a_newly_registered_sampler_is_covered_without_edits(monkeypatch):
    def sample_brand_new(model, x, sigmas, extra_args=None, callback=None, disable=None, *, eta=0.5, probes=1):
        return x

    from covkernels.samplers import registry

    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))  # undone after the test
    registry.register("brand_new", family="ancestral", summary="test")(sample_brand_new)
    assert cli_sample.sampler_options("brand_new", {"eta": 0.1, "probes": 2}) == {"eta": 0.1, "probes": 2}
    with pytest.raises(ValueError, match="brand_new takes: --eta, --probes"):
        cli_sample.sampler_options("brand_new", {"basis": "dct"})


@pytest.mark.parametrize("args, message", [
    (["--scale", "0"], "--scale must be an int >= 1"),
    (["--scale", "-1"], "--scale must be an int >= 1"),
    (["--out", "grid.jpg"], "--out must name a .png file"),
])
def test_silent_acceptances_are_refused(tmp_path, args, message):
    code, _, err = run_cli(["sample", "--num", "2", "--num-eval", "0", *args], tmp_path)
    assert code == 2 and err.startswith(f"covkernels: error: {message}")
    assert list(tmp_path.glob("grid.*")) == []


def test_degenerate_heun_and_tiny_evaluation_warn(tmp_path):
    code, out, err = run_cli(["sample", "--model", "gaussian", "--sampler", "heun", "--steps", "2", "--num", "2",
                              "--num-eval", "3", "--quiet", "--out", "g.png"], tmp_path)
    assert code == 0, err
    assert "covkernels: warning: heun with 2 steps takes its only Heun step from sigma_max=80 straight to " \
           "sigma_min=0.002" in err
    assert "covkernels: warning: --num-eval 3: a Frechet distance from fewer than 256 samples" in err
    assert "N=3" in out  # the figure is still printed, with the warning


def test_warnings_only_where_known_degenerate():
    parser = build_parser()
    from covkernels.schedules import get_sigmas

    def warned(argv):
        args = cli_sample.fill_schedule(parser.parse_args(["sample", *argv]))
        return cli_sample.warnings_for(args, get_sigmas(args.schedule, args.steps, args.sigma_min, args.sigma_max))

    assert warned(["--sampler", "heun", "--steps", "3"]) == []
    assert warned(["--sampler", "ddim", "--steps", "2"]) == []
    assert warned(["--num-eval", "256"]) == [] and warned(["--num-eval", "0"]) == []
    recommended = cli_sample.fill_schedule(parser.parse_args(["sample"]))  # ipndm's recommended schedule
    assert (recommended.sampler, recommended.schedule, recommended.sigma_min) == ("ipndm", "exponential", 0.1)
    ddim = cli_sample.fill_schedule(parser.parse_args(["sample", "--sampler", "ddim", "--sigma-min", "0.5"]))
    assert (ddim.schedule, ddim.sigma_min) == ("karras", 0.5)
    assert "no quality figure" in warned(["--model", "digits", "--num-eval", "3"])[0]


@pytest.mark.parametrize("command", ["sample", "info"])
def test_every_option_has_help_text(command):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    missing = [a.option_strings for a in sub._actions if not a.help]
    assert missing == []


def _fake_clone(root: Path) -> Path:
    """A source checkout after a regular (non-editable) install: the package sources without a compiled
    library, next to setup.py and csrc/."""
    shutil.copytree(PACKAGE_DIR, root / "covkernels",
                    ignore=shutil.ignore_patterns("_C.*", "*.so", "*.pyd", "__pycache__"))
    (root / "setup.py").write_text("")
    (root / "csrc").mkdir()
    return root


# `python -m covkernels` as a regular install runs it: an editable install's finder would hand the clone the
# library of the editable checkout, which a regular install does not have.
REGULAR_INSTALL_MAIN = ("import runpy, sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in "
                        "repr(f).lower()]; sys.argv[0] = 'covkernels'; runpy.run_module('covkernels', "
                        "run_name='__main__', alter_sys=True)")


@pytest.mark.parametrize("installed_copy_has_library", [True, False])
def test_source_tree_shadowing_is_diagnosed(tmp_path, installed_copy_has_library):
    clone = _fake_clone(tmp_path / "clone")
    site = tmp_path / "site"  # where `pip install .` put the package (with its library, when it was built)
    (site / "covkernels").mkdir(parents=True)
    # a regular package (an __init__.py): a bare folder would be a namespace portion, and the import system
    # prefers any regular covkernels further down sys.path (the test environment's own installed copy)
    (site / "covkernels" / "__init__.py").write_text("")
    if installed_copy_has_library:
        (site / "covkernels" / ("_C" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"")
    env = dict(os.environ, PYTHONPATH=str(site))
    with open(tmp_path / "stderr.log", "w") as err:
        proc = subprocess.run([sys.executable, "-c", REGULAR_INSTALL_MAIN, "info", "--json"], cwd=clone, env=env,
                              stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.returncode == 0, (tmp_path / "stderr.log").read_text()
    why = json.loads(proc.stdout)["extension"]
    assert f"covkernels is imported from the source tree {clone}" in why
    assert "Rebuilding does not change this: run from another directory" in why
    assert "Rebuild from the source tree" not in why  # the misleading advice of issue 17
    if installed_copy_has_library:
        assert f"the installed copy in {site / 'covkernels'} has it" in why
    else:
        assert "no other copy of covkernels with a compiled library was found" in why


def test_info_lists_triton_only_where_it_can_run(tmp_path):
    triton = pytest.importorskip("triton")
    code, out, err = run_cli(["info", "--json"], tmp_path, TRITON_INTERPRET=None)
    assert code == 0, err
    info = json.loads(out)
    status = info["backends"]["triton"]
    if info["cuda_devices"]:
        assert status["available"]
    else:
        assert not status["available"] and "no usable CUDA device" in status["why"], status
    code, out, _ = run_cli(["info", "--json"], tmp_path, TRITON_INTERPRET="1")
    assert json.loads(out)["backends"]["triton"]["available"], triton.__version__


def test_forward_ad_probing_does_not_repeat_torch_deprecation_warnings(tmp_path):
    """torch scripts its forward-AD decompositions on a process's first dual tensor, warning 18 times that
    torch.jit.script is deprecated; a fresh process is needed to see it."""
    code = ("import warnings, torch\nfrom covkernels.jvp import jvp\nfrom covkernels.models import get_model\n"
            "m = get_model('digits'); x = torch.randn(1, 1, 16, 16)\n"
            "with warnings.catch_warnings(record=True) as seen:\n    warnings.simplefilter('always')\n"
            "    jvp(m, x, torch.ones(1), torch.randn_like(x), strategy='forward_ad')\n"
            "print(sum('torch.jit.script' in str(w.message) for w in seen))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout.strip() == "0", out.stderr
