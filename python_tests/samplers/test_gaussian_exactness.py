"""The check of docs/design.md, section 2: with Gaussian data and the exact denoiser, a sampler that uses the
exact reverse-step covariance is exact in any number of steps, even one; DDIM is not.

"One step" is one stochastic step sigma_max -> sigma_min followed by the final mean-only step to 0
(every sampler returns the mean on the step to sigma = 0); sigma_min is small enough that what that
last step drops (sigma_min^2 J) is far below the sampling error.

Errors are measured in whitened units (conftest.whitened_errors) against the exact mean/covariance, with
thresholds at 1.6x the exact-sample expectation: N is large enough that an exact sampler sits well
inside and a wrong one far outside, and every generator is fixed.
"""
from __future__ import annotations

import math

import pytest
import torch

import covkernels as ck
from helpers import EVERY_STEP, expected_cov_error, gen, spd_matrix, whitened_errors
from covkernels.models import DenseGaussian, SpectralGaussian, stationary_spectrum

SIGMA_MAX, SIGMA_MIN = 10.0, 1e-3
ONE_STEP = torch.tensor([SIGMA_MAX, SIGMA_MIN, 0.0], dtype=torch.float64)
FEW_STEPS = ck.karras_sigmas(4, 0.01, SIGMA_MAX).to(torch.float64)


COVARIANCE = ("cov_ddim", "lanczos", "diag_hutchinson")


def run(model, n, sampler, sigmas, seed=0, **options):
    """Start from the exact marginal at sigma_max (data + noise): exactness is a property of the steps,
    and a pure-noise start would add its own (small, sigma_max-dependent) error."""
    x0 = model.sample(n, generator=gen(200 + seed), dtype=torch.float64)
    noise = torch.randn(n, *model.event_shape, generator=gen(100 + seed), dtype=torch.float64)
    return ck.get_sampler(sampler)(model, x0 + noise * sigmas[0], sigmas, disable=True, generator=gen(seed),
                                   **{**(EVERY_STEP if sampler in COVARIANCE else {}), **options})


def assert_exact(samples, mean, cov):
    d, n = mean.numel(), samples.shape[0]
    mu_err, cov_err = whitened_errors(samples, mean, cov)
    # chi_d has mean ~sqrt(d) and sd ~0.7: sqrt(d) + 5 is > 6 sd away.
    assert mu_err < math.sqrt(d) + 5.0, (mu_err, d)
    assert cov_err < 1.6 * expected_cov_error(d, n), (cov_err, expected_cov_error(d, n))


@pytest.fixture(scope="module")
def dense():
    d = 16
    return DenseGaussian(0.5 * torch.randn(1, 4, 4, generator=gen(7), dtype=torch.float64), spd_matrix(d, seed=3))


def test_exact_samples_pass_the_check(dense):
    """The threshold is calibrated: exact data samples pass it (and DDIM below fails it by far)."""
    x = dense.sample(20000, generator=gen(5), dtype=torch.float64)
    assert_exact(x, dense.mean, dense.cov)


@pytest.mark.parametrize("sigmas", [ONE_STEP, FEW_STEPS], ids=["one_step", "few_steps"])
@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_lanczos_full_krylov_is_exact(dense, sigmas, eta):
    x = run(dense, 20000, "lanczos", sigmas, lanczos_steps=16, eta=eta)
    assert_exact(x, dense.mean, dense.cov)


def test_ddim_one_step_is_not_exact(dense):
    x = run(dense, 20000, "ddim", ONE_STEP)
    _, cov_err = whitened_errors(x, dense.mean, dense.cov)
    assert cov_err > 10 * expected_cov_error(16, 20000)


def test_lanczos_single_iteration_is_not_exact(dense):
    """k = 1 is an isotropic (Rayleigh quotient) variance: wrong for an anisotropic posterior."""
    x = run(dense, 20000, "lanczos", ONE_STEP, lanczos_steps=1)
    _, cov_err = whitened_errors(x, dense.mean, dense.cov)
    assert cov_err > 5 * expected_cov_error(16, 20000)


def _image_gaussian(basis, block=4, per_channel=False):
    c, h, w = 3, 8, 8
    mean = 0.3 * torch.randn(c, h, w, generator=gen(11), dtype=torch.float64)
    if basis == "dct":
        spec = stationary_spectrum(c, h, w, std=0.5, length=2.0) + 0.02
    else:  # any positive diagonal is a valid covariance in the identity / blockwise basis
        spec = 0.05 + torch.rand(1 if not per_channel else c, h, w, generator=gen(12), dtype=torch.float64)
        spec = spec.expand(c, h, w).clone()
    return SpectralGaussian(mean, spec, basis=basis, block=block)


CASES = [
    ("dct", {"basis": "dct"}, False),
    ("convdct", {"basis": "convdct", "block": 4}, False),
    ("identity", {"basis": "identity"}, False),
    ("identity", {"basis": "identity", "channel_average": False}, True),
]


@pytest.mark.parametrize("basis,options,per_channel", CASES, ids=["dct", "convdct", "identity", "identity_per_channel"])
@pytest.mark.parametrize("sigmas", [ONE_STEP, FEW_STEPS], ids=["one_step", "few_steps"])
def test_cov_ddim_with_a_diagonalising_basis_is_exact(basis, options, per_channel, sigmas):
    model = _image_gaussian(basis, per_channel=per_channel)
    x = run(model, 8000, "cov_ddim", sigmas, **options)
    assert_exact(x, model.mean, model.covariance())


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_cov_ddim_exact_for_any_eta(eta):
    model = _image_gaussian("convdct")
    x = run(model, 8000, "cov_ddim", FEW_STEPS, basis="convdct", block=4, eta=eta)
    assert_exact(x, model.mean, model.covariance())


def test_diag_hutchinson_exact_on_pixel_diagonal_gaussian():
    model = _image_gaussian("identity", per_channel=True)
    x = run(model, 8000, "diag_hutchinson", ONE_STEP)
    assert_exact(x, model.mean, model.covariance())


def test_cov_ddim_with_the_wrong_basis_is_not_exact():
    """The basis matters: a DCT-diagonal covariance is not pixel-diagonal."""
    model = _image_gaussian("dct")
    x = run(model, 8000, "cov_ddim", ONE_STEP, basis="identity")
    _, cov_err = whitened_errors(x, model.mean, model.covariance())
    assert cov_err > 3 * expected_cov_error(192, 8000)


def test_ddim_one_step_not_exact_on_images():
    model = _image_gaussian("dct")
    x = run(model, 8000, "ddim", ONE_STEP)
    _, cov_err = whitened_errors(x, model.mean, model.covariance())
    assert cov_err > 3 * expected_cov_error(192, 8000)
