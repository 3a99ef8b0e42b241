"""ode_cov's "end" and "auto" switches and the Gaussian-consistency diagnostic behind "auto"
(covkernels/steps/switch.py), checked on the exact oracles."""
from __future__ import annotations

import math

import pytest
import torch

import covkernels as ck
from helpers import expected_cov_error, gen, whitened_errors
from covkernels.eval.runner import CountingModel
from covkernels.models import SpectralGaussian, stationary_spectrum
from covkernels.ops.dct.reference import analysis, synthesis
from covkernels.samplers.gaussianity import (coefficients_at, earliest_consistent, ode_gain, prediction_misses,
                                             spectrum)
from covkernels.eval.testbeds import get_testbed


def dct_gaussian(size: int = 8) -> SpectralGaussian:
    mean = torch.tensor([0.3, -0.1, -0.4], dtype=torch.float64).view(3, 1, 1).expand(3, size, size)
    return SpectralGaussian(mean, stationary_spectrum(3, size, size, std=0.4, length=2.0), basis="dct")


def exact_flow(model, x, sigma_from, sigma_to):
    p = model.spectrum
    return model.mean + synthesis(analysis(x - model.mean, "dct") * ((p + sigma_to ** 2) / (p + sigma_from ** 2)).sqrt(),
                                  "dct")


def test_spectrum_transfer_and_ode_gain_are_exact_on_a_gaussian():
    """lam = sigma^2 c / (1 - c) recovers the data spectrum from J's coefficients at any sigma, and the gain
    predicts D at another sigma along the exact flow without knowing the mean (to float64 rounding)."""
    model = dct_gaussian()
    for t in (0.3, 2.0):
        c = model.jacobian_coefficients(t)
        assert torch.allclose(spectrum(c, t), model.spectrum, rtol=1e-9)
        assert torch.allclose(coefficients_at(model.spectrum, 5.0), model.jacobian_coefficients(5.0), rtol=1e-12)
    x_t = model.mean + 2.0 * torch.randn(4, *model.event_shape, generator=gen(1), dtype=torch.float64)
    d_t = model(x_t, 2.0)
    for s in (0.5, 9.0):  # forwards and backwards along the flow
        d_s = model(exact_flow(model, x_t, 2.0, s), s)
        pred = d_t + synthesis(ode_gain(model.spectrum, 2.0, s) * analysis(x_t - d_t, "dct"), "dct")
        assert float((pred - d_s).abs().max()) < 1e-10 * float((d_s - d_t).abs().max())
        misses = prediction_misses([(s, d_s)], x_t, d_t, model.spectrum, 2.0, lambda v: analysis(v, "dct"),
                                   lambda v: synthesis(v, "dct"))
        assert misses.shape == (1, 4) and float(misses.max()) < 1e-9
        wrong = prediction_misses([(s, d_s)], x_t, d_t, 4.0 * model.spectrum, 2.0, lambda v: analysis(v, "dct"),
                                  lambda v: synthesis(v, "dct"))
        assert float(wrong.min()) > 0.05  # a wrong spectrum is caught


def test_earliest_consistent_needs_every_later_miss_small():
    misses = torch.tensor([[0.1, 0.9, 0.1, 0.9],
                           [0.1, 0.1, 0.9, 0.9],
                           [0.1, 0.1, 0.1, 0.9]])  # (3 earlier points, 4 samples)
    assert earliest_consistent(misses, 0.25).tolist() == [0, 1, 2, 3]
    assert earliest_consistent(torch.empty(0, 2), 0.25).tolist() == [0, 0]


def _auto(model, x, sig, **kw):
    seen = {}

    def callback(info):
        if "switch_sigma" in info:
            seen.update(info)

    out = ck.sample_ode_cov(model, x, sig, disable=True, generator=gen(12), switch_sigma="auto",
                            jvp="forward_ad", callback=callback, **kw)
    return out, seen


def test_auto_draws_from_the_first_point_and_exactly_on_a_dct_gaussian():
    """On Gaussian data the whole trajectory is consistent: every sample draws at sigma_max with the spectrum
    transferred there from the end point, and the draws are exact samples (whitened-error test)."""
    model = dct_gaussian(4)
    n, sig = 4000, ck.karras_sigmas(12, 0.5, 30.0).double()
    x = model.mean + 30.0 * torch.randn(n, *model.event_shape, generator=gen(11), dtype=torch.float64)
    got, seen = _auto(model, x, sig, channel_average=False)
    assert torch.all(seen["switch_sigma"] == float(sig[0]))
    mu_err, cov_err = whitened_errors(got, model.mean, model.covariance())
    assert mu_err < 3 * math.sqrt(got[0].numel()) and cov_err < 1.5 * expected_cov_error(got[0].numel(), n)


def test_auto_waits_for_the_mode_on_a_mixture():
    """On the gmm oracle (well separated Gaussian components) the trajectory at high sigma is still choosing
    a component: the Gaussian prediction from the end point misses there, so no sample draws at sigma_max,
    and the misses fall as sigma falls."""
    model = get_testbed("gmm").load()
    sig = ck.karras_sigmas(8, 0.3, 80.0)
    x = 80.0 * torch.randn(64, *model.event_shape, generator=gen(3))
    _, seen = _auto(model, x, sig)
    assert float(seen["switch_sigma"].max()) < 80.0
    median = seen["misses"].median(dim=1).values
    assert float(median[0]) > 0.5 > float(median[-1])


def test_auto_and_end_cost_the_plain_draw_and_refuse_what_does_not_apply():
    model = dct_gaussian()
    sig = ck.karras_sigmas(6, 0.3, 20.0).double()
    for mode in ("end", "auto"):
        assert ck.nfe_per_sample("ode_cov", sig, switch_sigma=mode) == 5 + 2  # 6 positive sigmas: 5 ODE steps, then the draw
        assert ck.nfe_per_sample("ode_cov", sig, switch_sigma=mode, probes=2) == 5 + 3
    counted = CountingModel(model)
    x = torch.randn(3, *model.event_shape, generator=gen(4), dtype=torch.float64) * 20.0
    ck.sample_ode_cov(counted, x, sig, disable=True, generator=gen(5), switch_sigma="auto", jvp="finite_difference")
    assert counted.rows == 3 * 7
    x0 = torch.zeros(1, 3, 8, 8)
    for bad, match in (({"covariance": "lanczos"}, "diagonal covariance"), ({"cov_steps": 2}, "cov_steps=1"),
                       ({"switch_sigma": "later"}, "switch_sigma"), ({"switch_sigma": -1.0}, "switch_sigma")):
        with pytest.raises(ValueError, match=match):
            ck.sample_ode_cov(model, x0, sig, **{"switch_sigma": "auto", **bad})
    with pytest.raises(ValueError, match="do not apply"):
        ck.sample_ode_cov(model, x0, sig, switch_sigma="end", auto_tolerance=0.3)


def test_end_switch_draws_from_the_last_positive_sigma():
    from covkernels.samplers.hybrid import split_schedule

    s = [80.0, 20.0, 5.0, 1.5, 0.3, 0.0]
    assert split_schedule(s, "end", 1, 0.1) == ([80.0, 20.0, 5.0, 1.5, 0.3], [0.3, 0.0])
    assert split_schedule(s, "auto", 1, 0.1) == ([80.0, 20.0, 5.0, 1.5, 0.3], [0.3, 0.0])


def test_sample_defaults_to_ipndm_and_each_sampler_to_its_recommended_schedule():
    """The package default (README, "defaults"): iPNDM on exponential sigmas down to 0.1 (its registry
    schedule_defaults); ode_cov (automatic switch) on the same; others on Karras to 0.002 unless the caller
    sets the schedule."""
    model = get_testbed("gaussian").load()
    shape = (4, *model.event_shape)
    sig = ck.get_sigmas("exponential", 8, 0.1, 80.0)
    got = ck.sample(model, shape, generator=gen(7), disable=True)
    assert torch.equal(got, ck.sample(model, shape, "ipndm", sigmas=sig, generator=gen(7), disable=True))
    got = ck.sample(model, shape, "ode_cov", generator=gen(7), disable=True, jvp="finite_difference")
    same = ck.sample(model, shape, "ode_cov", sigmas=sig, generator=gen(7), disable=True, jvp="finite_difference",
                     switch_sigma="auto")
    assert torch.equal(got, same)
    ddim = ck.sample(model, shape, "ddim", generator=gen(7), disable=True)
    assert torch.equal(ddim, ck.sample(model, shape, "ddim", sigmas=ck.get_sigmas("karras", 8, 0.002, 80.0),
                                       generator=gen(7), disable=True))


def test_auto_needs_a_deterministic_ode_part_and_none_falls_back_to_end():
    model = dct_gaussian()
    sig = ck.karras_sigmas(5, 0.3, 20.0).double()
    x = torch.randn(2, *model.event_shape, generator=gen(8), dtype=torch.float64) * 20.0
    for ode, opts in (("ddpm", None), ("ddim", {"s_churn": 1.0})):
        with pytest.raises(ValueError, match="deterministic ODE part"):
            ck.sample_ode_cov(model, x, sig, ode=ode, ode_options=opts, switch_sigma="auto", disable=True)
        seen = []
        ck.sample_ode_cov(model, x, sig, ode=ode, ode_options=opts, disable=True, generator=gen(9),
                          jvp="forward_ad", callback=seen.append)  # None: the draw at the end, no diagnostics
        assert all("switch_sigma" not in d for d in seen)


def test_auto_gathers_each_samples_own_point_and_clamps_to_c_max():
    """Samples that choose different points get their own point's mean and transferred coefficients; c_max
    caps every coefficient the draw uses (the end point's and the transferred ones)."""
    model = get_testbed("gmm").load()
    sig = ck.karras_sigmas(8, 0.3, 80.0)
    x = 80.0 * torch.randn(64, *model.event_shape, generator=gen(3))
    means = {}

    def keep(info):
        if "switch_sigma" in info:
            means["end"] = info
        else:
            means[float(info["sigma_hat"])] = info["denoised"]

    out = ck.sample_ode_cov(model, x, sig, disable=True, generator=gen(12), switch_sigma="auto", jvp="forward_ad",
                            callback=keep, c_max=1e-12)  # c ~ 0: each draw is its chosen point's mean
    chosen = means["end"]["switch_sigma"]
    assert len(set(chosen.tolist())) > 1  # the batch really splits
    for b in range(x.shape[0]):
        s = float(chosen[b])
        ref = means["end"]["denoised"][b] if s == float(sig[-2]) else means[s][b]
        assert torch.allclose(out[b], ref, atol=1e-4)
