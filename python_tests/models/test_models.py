"""Analytic oracle models: their denoisers, Jacobians, densities and samples against explicit formulas."""
from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from helpers import gen, spd_matrix, whitened_errors
from covkernels.models import DenseGaussian, GaussianMixture, SpectralGaussian, get_model, stationary_spectrum


def test_dense_gaussian_denoiser_and_jacobian():
    cov = spd_matrix(6, seed=1)
    mean = torch.randn(1, 2, 3, generator=gen(2), dtype=torch.float64)
    model = DenseGaussian(mean, cov)
    x = torch.randn(4, 1, 2, 3, generator=gen(3), dtype=torch.float64)
    sigma = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    got = model(x, sigma)
    for b in range(4):
        s2 = float(sigma[b]) ** 2
        expected = mean.flatten() + cov @ torch.linalg.solve(cov + s2 * torch.eye(6, dtype=torch.float64),
                                                             (x[b] - mean).flatten())
        torch.testing.assert_close(got[b].flatten(), expected)
    jac = torch.autograd.functional.jacobian(lambda v: model(v.view(1, 1, 2, 3), 1.5).flatten(), x[0].flatten())
    torch.testing.assert_close(jac, model.jacobian(1.5))


@pytest.mark.parametrize("basis", ["dct", "convdct", "identity"])
def test_spectral_gaussian_matches_its_dense_twin(basis):
    spec = 0.1 + torch.rand(2, 8, 8, generator=gen(4), dtype=torch.float64)
    mean = torch.randn(2, 8, 8, generator=gen(5), dtype=torch.float64)
    model = SpectralGaussian(mean, spec, basis=basis, block=4)
    twin = DenseGaussian(mean, model.covariance())
    x = torch.randn(3, 2, 8, 8, generator=gen(6), dtype=torch.float64)
    torch.testing.assert_close(model(x, 0.7), twin(x, 0.7))
    lp = MultivariateNormal(mean.flatten(), model.covariance()).log_prob(x.flatten(1))
    torch.testing.assert_close(model.log_prob(x), lp)
    s = model.sample(20000, generator=gen(7), dtype=torch.float64)
    _, cov_err = whitened_errors(s, mean, model.covariance())
    assert cov_err < 1.3 * (128 * 129 / 20000) ** 0.5


def test_stationary_spectrum_sets_pixel_std():
    p = stationary_spectrum(3, 16, 16, std=0.4, length=3.0)
    model = SpectralGaussian(torch.zeros(3, 16, 16), p)
    assert torch.allclose(model.covariance().diagonal().mean(), torch.tensor(0.16, dtype=torch.float64))


def test_gaussian_mixture_against_brute_force():
    """D(x) = sum_k w_k D_k(x) with w_k from the dense Gaussians N(mu_k, C_k + s^2 I)."""
    k, shape = 3, (1, 4, 4)
    means = torch.randn(k, *shape, generator=gen(8), dtype=torch.float64)
    spectra = 0.05 + torch.rand(k, *shape, generator=gen(9), dtype=torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    gmm = GaussianMixture(means, spectra, weights, basis="dct")
    comps = [SpectralGaussian(means[i], spectra[i], basis="dct") for i in range(k)]
    x = 1.5 * torch.randn(5, *shape, generator=gen(10), dtype=torch.float64)
    s = 0.8
    logw = torch.stack([weights[i].log() + MultivariateNormal(
        means[i].flatten(), comps[i].covariance() + s ** 2 * torch.eye(16, dtype=torch.float64)
    ).log_prob(x.flatten(1)) for i in range(k)], 1)
    w = torch.softmax(logw, 1)
    expected = sum(w[:, i].view(-1, 1, 1, 1) * comps[i](x, s) for i in range(k))
    torch.testing.assert_close(gmm(x, s), expected)
    lp = torch.logsumexp(torch.stack([weights[i].log() + comps[i].log_prob(x) for i in range(k)], 1), 1)
    torch.testing.assert_close(gmm.log_prob(x), lp)


def test_models_accept_sigma_forms_and_low_precision():
    model = get_model("gmm", size=16)
    x = torch.randn(2, 3, 16, 16, generator=gen(1))
    a = model(x, 2.0)
    torch.testing.assert_close(model(x, torch.tensor(2.0)), a)
    torch.testing.assert_close(model(x, torch.tensor([2.0, 2.0])), a)
    half = model(x.to(torch.bfloat16), torch.tensor([2.0, 2.0]))
    assert half.dtype == torch.bfloat16
    assert float((half.float() - a).abs().max()) < 0.05
    with pytest.raises(ValueError, match="sigma must be a scalar or of shape"):
        model(x, torch.ones(3))
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.zeros(2, 3, 8, 8), 1.0)


def test_model_parameters_are_validated():
    with pytest.raises(ValueError, match="symmetric"):
        DenseGaussian(torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="positive semi-definite"):
        DenseGaussian(torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    with pytest.raises(ValueError, match="non-negative"):
        SpectralGaussian(torch.zeros(1, 2, 2), -torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="model must be one of"):
        get_model("imagenet")
