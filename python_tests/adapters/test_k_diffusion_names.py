"""The names k-diffusion and ComfyUI users type: ours where we implement the method, the tool's own function
where it is installed, a clear error saying how to install it otherwise."""
from __future__ import annotations

import sys
import types

import pytest

import covkernels as ck
from covkernels.adapters import k_diffusion as kd


@pytest.mark.parametrize("name, ours", [
    pytest.param("euler", "ddim", id="euler"),
    pytest.param("euler_ancestral", "ddpm", id="euler_ancestral"),
    pytest.param("uni_pc_bh2", "unipc", id="comfy-uni_pc_bh2"),
    pytest.param("dpmpp_2m", "dpmpp_2m", id="dpmpp_2m"),
    pytest.param("ipndm_v", "ipndm_v", id="ipndm_v"),
])
def test_names_of_methods_we_implement_give_ours(name, ours):
    assert kd.get_sampler(name) is ck.get_sampler(ours)


def test_no_name_is_both_ours_and_foreign():
    assert not set(kd.FOREIGN) & set(kd.SAMPLERS)
    assert {"dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral", "dpmpp_sde"} <= set(kd.FOREIGN)
    assert not set(kd.NOT_DROP_IN) & (set(kd.FOREIGN) | set(kd.SAMPLERS))


@pytest.fixture
def no_foreign_tools(monkeypatch):
    for module in ("k_diffusion", "k_diffusion.sampling", "comfy", "comfy.k_diffusion", "comfy.k_diffusion.sampling"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError


def test_a_foreign_name_without_the_tool_says_how_to_install_it(no_foreign_tools):
    with pytest.raises(ValueError) as err:
        kd.get_sampler("dpm_2")
    message = str(err.value)
    assert "'dpm_2' is a k-diffusion / ComfyUI sampler that covkernels does not implement" in message
    assert "k_diffusion.sampling: ModuleNotFoundError" in message and "comfy.k_diffusion.sampling: " in message
    assert "pip install k-diffusion -c torch.txt" in message


def test_a_foreign_name_comes_from_the_installed_tool(no_foreign_tools, monkeypatch):
    def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
        return x

    sampling = types.ModuleType("k_diffusion.sampling")
    sampling.sample_lms = sample_lms
    monkeypatch.setitem(sys.modules, "k_diffusion", types.ModuleType("k_diffusion"))
    monkeypatch.setitem(sys.modules, "k_diffusion.sampling", sampling)
    assert kd.get_sampler("lms") is sample_lms
    assert kd.get_sampler("sample_lms") is sample_lms
    with pytest.raises(ValueError, match="k_diffusion.sampling has no sample_heunpp2"):
        kd.get_sampler("heunpp2")


def test_comfyui_copy_is_tried_after_k_diffusion(no_foreign_tools, monkeypatch):
    def sample_res_multistep(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return x

    sampling = types.ModuleType("comfy.k_diffusion.sampling")
    sampling.sample_res_multistep = sample_res_multistep
    for name in ("comfy", "comfy.k_diffusion"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "comfy.k_diffusion.sampling", sampling)
    assert kd.get_sampler("res_multistep") is sample_res_multistep


@pytest.mark.parametrize("name, why", [
    pytest.param("uni_pc", "bh1 variant", id="comfy-uni_pc"),
    pytest.param("dpm_fast", "sigma_min, sigma_max, n", id="dpm_fast"),
    pytest.param("dpm_adaptive", "sigma_min, sigma_max", id="dpm_adaptive"),
])
def test_names_that_are_not_drop_in_say_why(name, why):
    with pytest.raises(ValueError, match=f"{name!r} is not available as a k-diffusion-style function: .*{why}"):
        kd.get_sampler(name)


def test_unknown_name_lists_both_sets():
    with pytest.raises(ValueError, match=r"sampler must be one of .*'euler'.* \(covkernels\) or .*'lms'.*got 'magic'"):
        kd.get_sampler("magic")


def test_the_readme_install_line_keeps_torch(tmp_path):
    """The README's way to add k-diffusion (a constraint pinning the installed torch) resolves without replacing
    torch: a pip dry run, which needs the package index (skipped, saying so, when it is unreachable)."""
    import json
    import subprocess

    import torch

    (tmp_path / "torch.txt").write_text(f"torch=={torch.__version__}\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report",
                           str(tmp_path / "report.json"), "-c", str(tmp_path / "torch.txt"), "k-diffusion==0.1.1.post1"],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and any(s in proc.stderr for s in ("Could not find a version", "NewConnectionError",
                                                                "No matching distribution")):
        pytest.skip(f"the package index is unreachable: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    names = {item["metadata"]["name"].lower() for item in json.loads((tmp_path / "report.json").read_text())["install"]}
    assert "k-diffusion" in names and "torch" not in names
