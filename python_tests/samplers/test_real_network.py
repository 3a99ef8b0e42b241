"""The JVP engine on a real architecture: a small randomly initialised diffusers UNet2DModel with attention.

Plain forward AD fails on this network (fused CPU attention has no forward-mode rule; group_norm's
forward-mode rule fails on non-contiguous inputs); the engine must still give correct JVPs and the
covariance samplers must run end to end with ``jvp="auto"``.
"""
from __future__ import annotations

import pytest
import torch

import covkernels as ck
from helpers import EVERY_STEP, gen
from covkernels import jvp as jvp_engine
from covkernels.guidance import Guidance
from covkernels.models.unet import random_diffusers_unet

diffusers = pytest.importorskip("diffusers")


def EDMUNet(num_classes=None, size=16):
    return random_diffusers_unet(size=size, channels=(16, 32), num_classes=num_classes)


@pytest.fixture(scope="module")
def unet():
    return EDMUNet()


def test_plain_torch_func_jvp_fails_on_this_network(unet):
    """The premise: without the engine's fixes forward AD breaks here."""
    x = torch.randn(1, 3, 16, 16, generator=gen(0))
    with pytest.raises((NotImplementedError, RuntimeError)):
        torch.func.jvp(lambda a: unet(a, torch.ones(1)), (x,), (x,))


def test_strategies_agree_on_the_unet(unet):
    x = torch.randn(2, 3, 16, 16, generator=gen(1)) * 2
    v = torch.randn(2, 3, 16, 16, generator=gen(2))
    sigma = torch.full((2,), 2.0)
    results = {name: jvp_engine.jvp(unet, x, sigma, v, strategy=name)
               for name in ("forward_ad", "double_vjp", "finite_difference", "central_difference")}
    ref = results["double_vjp"][1]
    rel = {k: float((r[1] - ref).norm() / ref.norm()) for k, r in results.items()}
    assert rel["forward_ad"] < 1e-4, rel
    assert rel["central_difference"] < 1e-3, rel
    assert rel["finite_difference"] < 1e-2, rel
    for name, (d, _) in results.items():
        torch.testing.assert_close(d, unet(x, sigma), rtol=1e-4, atol=1e-4)  # math vs fused attention


@pytest.mark.parametrize("sampler,options", [("cov_ddim", {"block": 8}), ("lanczos", {"lanczos_steps": 2}),
                                             ("diag_hutchinson", {})])
def test_covariance_samplers_run_end_to_end_with_auto(unet, sampler, options):
    x = torch.randn(2, 3, 16, 16, generator=gen(3)) * 10
    out = ck.get_sampler(sampler)(unet, x, ck.karras_sigmas(3, 0.05, 10.0), disable=True, generator=gen(4),
                                  **options, **EVERY_STEP)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    choice = [c for name, c in jvp_engine.auto_choices() if name.startswith("EDMDenoiser(")][-1]  # its wrapped UNet
    assert choice.strategy in ("forward_ad", "double_vjp", "finite_difference")
    assert "rel. diff" in choice.agreement  # verified against a second strategy


def test_guided_sampling_on_a_class_conditional_unet():
    model = EDMUNet(num_classes=4)
    rows = []
    model.register_forward_pre_hook(lambda mod, args: rows.append(args[0].shape[0]))
    x = torch.randn(2, 3, 16, 16, generator=gen(5)) * 10
    g = Guidance(2.0, uncond_args={"class_labels": torch.tensor([3, 3])})
    sigmas = ck.karras_sigmas(3, 0.05, 10.0)
    out = ck.sample_cov_ddim(model, x, sigmas, extra_args={"class_labels": torch.tensor([0, 1])}, disable=True,
                             generator=gen(6), guidance=g, jvp="finite_difference", **EVERY_STEP)
    assert bool(torch.isfinite(out).all())
    # 2 covariance steps of ONE tripled call each, then one doubled call for the final step
    assert rows == [6, 6, 4]
