"""The calibrated posterior spectrum (covkernels/samplers/calibrated.py) and ode_cov's zero-JVP draw."""
from __future__ import annotations

import math

import pytest
import torch

import covkernels as ck
from helpers import expected_cov_error, gen, whitened_errors
from covkernels.eval.runner import CountingModel
from covkernels.models import SpectralGaussian, stationary_spectrum


def dct_gaussian(size: int = 4) -> SpectralGaussian:
    mean = torch.tensor([0.3, -0.1, -0.4], dtype=torch.float64).view(3, 1, 1).expand(3, size, size)
    return SpectralGaussian(mean, stationary_spectrum(3, size, size, std=0.4, length=2.0), basis="dct")


def test_calibration_reads_a_dct_gaussians_jacobian_exactly():
    """J does not depend on x for Gaussian data and the DCT diagonalises it: transform-domain probes read its
    diagonal exactly at every level (finite-difference JVP in float64), and between levels the interpolation
    stays within the exact values' range."""
    model = dct_gaussian()
    spec = ck.calibrate_spectrum(model, model.event_shape, [0.05, 0.5, 2.0], num_samples=4, probes=2, steps=8,
                                 channel_average=False, generator=gen(1), dtype=torch.float64)
    for s in (0.05, 0.5, 2.0):
        assert torch.allclose(spec(s)[0], model.jacobian_coefficients(s), atol=1e-6)
    for s in (0.01, 10.0):  # outside the levels: the Gaussian transfer, exact for Gaussian data
        assert torch.allclose(spec(s)[0], model.jacobian_coefficients(s), atol=1e-5)
    lo, hi = model.jacobian_coefficients(2.0), model.jacobian_coefficients(0.5)
    mid = spec(1.0)[0]
    assert bool(((mid >= lo - 1e-9) & (mid <= hi + 1e-9)).all())


def test_calibrated_end_draw_is_exact_on_a_dct_gaussian_at_the_cost_of_a_plain_denoise():
    model = dct_gaussian()
    levels = [0.5, 1.0, 3.0]
    spec = ck.calibrate_spectrum(model, model.event_shape, levels, num_samples=4, probes=1, steps=8,
                                 channel_average=False, generator=gen(2), dtype=torch.float64)
    n = 4000
    sig = torch.tensor([30.0, 3.0, 0.0], dtype=torch.float64)  # one ODE step to sigma 3 (exact: linear data)
    x = model.mean + 30.0 * torch.randn(n, *model.event_shape, generator=gen(3), dtype=torch.float64)
    counted = CountingModel(model)
    got = ck.sample_ode_cov(counted, x, sig, ode="ddim", covariance="calibrated", spectrum=spec,
                            switch_sigma="end", disable=True, generator=gen(4))
    assert counted.rows == 2 * n  # = DDIM's 2 steps on the same schedule
    assert ck.nfe_per_sample("ode_cov", sig, ode="ddim", covariance="calibrated", switch_sigma="end") == 2
    mu_err, cov_err = whitened_errors(got, model.mean, model.covariance())
    # DDIM's first step from 30 is exact for Gaussian data up to (sigma_data/30)-size terms; a loose factor
    assert mu_err < 3 * math.sqrt(got[0].numel()) and cov_err < 2.0 * expected_cov_error(got[0].numel(), n)
    plain = ck.sample_ddim(model, x, sig, disable=True)
    _, plain_err = whitened_errors(plain, model.mean, model.covariance())
    assert plain_err > 3 * cov_err  # the plain denoise collapses the variance below sigma 3


def test_spectrum_checks_and_refusals():
    model = dct_gaussian()
    spec = ck.calibrate_spectrum(model, model.event_shape, [0.5], num_samples=2, probes=1, steps=4,
                                 generator=gen(5))
    assert spec.event_shape == (1, 4, 4)  # channel-averaged by default
    sig = torch.tensor([10.0, 1.0, 0.0])
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(TypeError, match="spectrum must be a PosteriorSpectrum"):
        ck.sample_ode_cov(model, x, sig, covariance="calibrated", switch_sigma="end")
    with pytest.raises(ValueError, match="does not fit"):
        ck.sample_ode_cov(model, torch.zeros(2, 3, 8, 8), sig, covariance="calibrated", spectrum=spec)
    for bad in ({"probes": 2}, {"channel_average": False}):
        with pytest.raises(ValueError, match="do not apply"):
            ck.sample_ode_cov(model, x, sig, covariance="calibrated", spectrum=spec, **bad)
    with pytest.raises(ValueError, match="do not apply"):
        ck.sample_ode_cov(model, x, sig, covariance="dct", spectrum=spec)
    with pytest.raises(ValueError, match="sigmas must lie"):
        ck.calibrate_spectrum(model, model.event_shape, [100.0])
    with pytest.raises(ValueError, match="shape must be"):
        ck.calibrate_spectrum(model, (48,))
    with pytest.raises(ValueError, match="increasing positive"):
        ck.PosteriorSpectrum([1.0, 0.5], torch.zeros(2, 1, 4, 4))
    a = ck.calibrate_spectrum(model, model.event_shape, [0.5], num_samples=2, probes=1, steps=4, generator=gen(6))
    b = ck.calibrate_spectrum(model, model.event_shape, [0.5], num_samples=2, probes=1, steps=4, generator=gen(6))
    assert torch.equal(a.coefficients, b.coefficients)  # same generator seed, same spectrum


def test_grid_calibrates_once_per_model_with_its_own_seed():
    """The grid's spectrum="calibrate": one calibration per model object (seeded with CALIBRATION_SEED, not
    from the run's seeds), the same object for every cell; the end-cal row runs at 2M's NFE."""
    from covkernels.eval.runner import calibrated_spectrum, generate
    from covkernels.eval.testbeds import get_testbed

    model = get_testbed("gaussian").load()
    first = calibrated_spectrum(model, "cpu")
    assert calibrated_spectrum(model, "cpu") is first and first.basis == "dct"
    other = get_testbed("gaussian").load()
    assert torch.equal(calibrated_spectrum(other, "cpu").coefficients, first.coefficients)
    sig = ck.get_sigmas("exponential", 6, 0.3, 80.0)
    _, info = generate(model, "ode_cov/end-cal", sig, 8, seed=0, batch_size=8, device="cpu",
                       jvp="finite_difference")
    assert info["nfe_measured"] == ck.nfe_per_sample("dpmpp_2m", sig) == 6
