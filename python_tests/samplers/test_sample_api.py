"""``covkernels.sample`` and the registry's contract: explicit ``sigmas`` refuse the schedule parameters they
would make ignored, defaults equal their spelled-out schedule, and ``needs_final_zero`` is true exactly for the
samplers that refuse a schedule not ending in 0."""
from __future__ import annotations

import pytest
import torch

import covkernels
from covkernels.samplers.registry import REGISTRY, get_sampler, spec


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


class _Stub(torch.nn.Module):
    def forward(self, x, sigma, **extra):
        return 0.5 * x


@pytest.mark.parametrize("name", list(REGISTRY))
def test_registry_final_zero_flag_matches_what_each_sampler_refuses(name):
    """needs_final_zero is true exactly for the samplers that refuse a schedule not ending in 0."""
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
