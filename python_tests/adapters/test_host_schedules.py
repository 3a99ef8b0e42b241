"""The default sampler on a host's schedule (issue 29, item 2): iPNDM on the package's own schedules, DPM-Solver++(2M)
on sigmas the caller brings; iPNDM warns on sigmas its equal-step weights do not fit."""
from __future__ import annotations

import warnings

import pytest
import torch

import covkernels as ck
from helpers import gen
from covkernels.models import get_model
from covkernels.samplers.api import DEFAULT_SAMPLER, HOST_SCHEDULE_SAMPLER, spacing_warning

diffusers = pytest.importorskip("diffusers")
from covkernels.adapters.diffusers import scheduler_sigmas  # noqa: E402


def ddpm_leading(steps=10):
    return scheduler_sigmas(diffusers.DDPMScheduler(), steps)


def test_the_defaults_are_the_measured_ones():
    assert (DEFAULT_SAMPLER, HOST_SCHEDULE_SAMPLER) == ("ipndm", "dpmpp_2m")


def test_given_sigmas_sample_with_the_host_default():
    model = get_model("gaussian", size=8)
    sigmas = ddpm_leading()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default itself never warns
        ours = ck.sample(model, (3, 3, 8, 8), sigmas=sigmas, generator=gen(0))
    x = ck.sample(model, (3, 3, 8, 8), "dpmpp_2m", sigmas=sigmas, generator=gen(0))
    assert torch.equal(ours, x)
    own = ck.sample(model, (3, 3, 8, 8), generator=gen(0))  # the package's schedule: ipndm
    assert torch.equal(own, ck.sample(model, (3, 3, 8, 8), "ipndm", generator=gen(0)))


@pytest.mark.parametrize("sigmas, warns", [
    pytest.param(lambda: ddpm_leading(10), True, id="ddpm-leading-10"),
    pytest.param(lambda: scheduler_sigmas(diffusers.DDIMScheduler(timestep_spacing="trailing"), 10), False,
                 id="ddim-trailing-10"),
    *[pytest.param(lambda n=n: ck.karras_sigmas(n, 0.002, 80.0), False, id=f"karras-{n}") for n in (4, 8, 16)],
    *[pytest.param(lambda n=n: ck.exponential_sigmas(n, 0.1, 80.0), False, id=f"exponential-{n}") for n in (4, 16)],
])
def test_ipndm_warns_only_where_one_step_dwarfs_the_others(sigmas, warns):
    s = sigmas()
    assert (spacing_warning("ipndm", s) is not None) == warns
    assert spacing_warning("ipndm_v", s) is None and spacing_warning("dpmpp_2m", s) is None


def test_the_warning_reaches_the_caller_of_sample():
    model = get_model("gaussian", size=8)
    with pytest.warns(ck.StepSpacingWarning, match=r"ipndm applies equal-step .* 5\.\dx longer in log sigma"):
        ck.sample(model, (2, 3, 8, 8), "ipndm", sigmas=ddpm_leading(), generator=gen(0))


def test_diffusers_one_call_defaults_to_2m_and_warns_for_ipndm():
    from helpers import tiny_unet
    from covkernels.adapters.diffusers import sample

    unet, sched = tiny_unet().float(), diffusers.DDPMScheduler(clip_sample=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ck.StepSpacingWarning)
        a = sample(unet, sched, num_inference_steps=10, batch_size=2, generator=gen(1), disable=True)
    b = sample(unet, sched, sampler="dpmpp_2m", num_inference_steps=10, batch_size=2, generator=gen(1), disable=True)
    assert torch.equal(a, b)
    with pytest.warns(ck.StepSpacingWarning):
        sample(unet, sched, sampler="ipndm", num_inference_steps=10, batch_size=2, generator=gen(1), disable=True)
