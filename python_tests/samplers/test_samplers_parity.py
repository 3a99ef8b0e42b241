"""Parity with the implementations users know: k-diffusion's sampling functions (run from its published
wheel, fetched by the test: nothing of it is in the package) and diffusers' UniPCMultistepScheduler."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
import zipfile

import diffusers
import pytest
import torch

import covkernels as ck
from helpers import gen, tiny_unet, scheduler_loop
from covkernels.adapters.diffusers import DiffusersDenoiser, scheduler_sigmas
from covkernels.models import get_model

K_DIFFUSION = "k-diffusion==0.1.1.post1"


@pytest.fixture(scope="module")
def kd_sampling(tmp_path_factory):
    """k-diffusion's ``sampling`` module from its wheel, with its heavy imports (torchsde, torchdiffeq,
    scipy, torchvision via utils) stubbed where missing: the functions compared here use none of them when
    given a noise_sampler."""
    where = tmp_path_factory.mktemp("kd")
    got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(where), K_DIFFUSION],
                         capture_output=True, text=True, timeout=180)
    wheels = list(where.glob("*.whl"))
    if got.returncode != 0 or not wheels:
        pytest.skip(f"cannot download {K_DIFFUSION} from the package index (offline?): {got.stderr[-300:]}")
    pkg = where / "kd_ref"
    pkg.mkdir()
    with zipfile.ZipFile(wheels[0]) as z:
        (pkg / "sampling.py").write_bytes(z.read("k_diffusion/sampling.py"))
    (pkg / "__init__.py").write_text("")
    # the two helpers of k-diffusion's utils that the compared functions use, written from their definitions
    (pkg / "utils.py").write_text(
        "def append_dims(x, target_dims):\n    return x[(...,) + (None,) * (target_dims - x.ndim)]\n\n"
        "def append_zero(x):\n    import torch\n    return torch.cat([x, x.new_zeros([1])])\n")
    stubbed = ("torchsde", "torchdiffeq", "scipy", "scipy.integrate")  # used only by samplers not compared
    saved = {name: sys.modules.get(name) for name in stubbed}
    for name in stubbed:
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
    sys.modules["torchdiffeq"].odeint = getattr(sys.modules["torchdiffeq"], "odeint", None)
    sys.modules["scipy"].integrate = sys.modules["scipy.integrate"]
    spec_pkg = importlib.util.spec_from_file_location("kd_ref", pkg / "__init__.py",
                                                      submodule_search_locations=[str(pkg)])
    sys.modules["kd_ref"] = importlib.util.module_from_spec(spec_pkg)
    spec = importlib.util.spec_from_file_location("kd_ref.sampling", pkg / "sampling.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["kd_ref.sampling"] = module
    spec.loader.exec_module(module)
    yield module
    for name, old in saved.items():
        if old is None:
            sys.modules.pop(name, None)
    sys.modules.pop("kd_ref", None), sys.modules.pop("kd_ref.sampling", None)


def recorded_noise(shape, seed):
    """A k-diffusion noise_sampler giving the same sequence to both implementations."""
    g = gen(seed)
    return lambda sigma, sigma_next: torch.randn(shape, generator=g, dtype=torch.float64)


CASES = [("dpmpp_2m_sde", "sample_dpmpp_2m_sde", {"eta": 1.0}),
         ("dpmpp_2m_sde", "sample_dpmpp_2m_sde", {"eta": 0.5, "solver_type": "heun", "s_noise": 0.9}),
         ("dpmpp_2m_sde", "sample_dpmpp_2m_sde", {"eta": 0.0}),
         ("dpmpp_3m_sde", "sample_dpmpp_3m_sde", {"eta": 1.0}),
         ("dpmpp_3m_sde", "sample_dpmpp_3m_sde", {"eta": 0.0}),
         ("ddpm", "sample_euler_ancestral", {"eta": 1.0}),
         ("dpmpp_2m", "sample_dpmpp_2m", {}), ("ddim", "sample_euler", {}), ("heun", "sample_heun", {})]


@pytest.mark.parametrize("ours,theirs,options", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_equals_k_diffusion(kd_sampling, ours, theirs, options):
    model = get_model("gmm", size=8).double()
    sigmas = ck.karras_sigmas(7, 0.03, 20.0).double()
    x = torch.randn(3, *model.event_shape, generator=gen(0), dtype=torch.float64) * 20.0
    stochastic = "eta" in options
    kw = {"noise_sampler": recorded_noise(x.shape, 1)} if stochastic else {}
    want = getattr(kd_sampling, theirs)(model, x, sigmas, disable=True, **options, **kw)
    kw = {"noise_sampler": recorded_noise(x.shape, 1)} if stochastic else {}
    got = ck.get_sampler(ours)(model, x, sigmas, disable=True, **options, **kw)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order,steps,variant", [(3, 8, "bh2"), (2, 10, "bh2"), (1, 5, "bh2")])
def test_unipc_equals_diffusers_unipc_scheduler(order, steps, variant):
    """Same UNet, noise and timesteps: our unipc equals UniPCMultistepScheduler (data prediction, UniC
    corrector, lower order at the end, final sigma 0) to the float32 rounding of its sigma table. (bh1 is
    not compared: diffusers' bh1 returns NaN on the step to sigma = 0, where B(h) = -h is infinite.)"""
    unet = tiny_unet()
    sched = diffusers.UniPCMultistepScheduler(solver_order=order, solver_type=variant, final_sigmas_type="zero")
    noise = torch.randn(2, 3, 16, 16, generator=gen(0), dtype=torch.float64)
    x = scheduler_loop(unet, sched, steps, noise)
    sigmas = scheduler_sigmas(sched, steps, dtype=torch.float64)
    ours = ck.sample_unipc(DiffusersDenoiser(unet, sched), noise * (1 + sigmas[0] ** 2).sqrt(), sigmas,
                           disable=True, order=order, variant=variant)
    scale = float(x.abs().max())
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5 * scale)
    # and the corrector matters: without it the result is measurably different
    plain = ck.sample_unipc(DiffusersDenoiser(unet, sched), noise * (1 + sigmas[0] ** 2).sqrt(), sigmas,
                            disable=True, order=order, variant=variant, corrector=False)
    assert float((plain - x).abs().max()) > 100 * 1e-5 * scale
