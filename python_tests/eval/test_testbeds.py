"""The digits_ideal oracle and the patches model: exactness, limits, likelihood, sampling, and their metrics."""
import importlib.util
import math
import os

import pytest
import torch

from helpers import ROOT

from covkernels.eval.scorers import DigitsIdealScorer as digits_ideal_scorer, PatchesScorer as patches_scorer
from covkernels.models import get_model
from covkernels.models.digits_ideal import DigitsIdeal, shipped_digits
from covkernels.models.image_statistics import dct_matrix, radial_power
from covkernels.models.patches import reference_patches



def small_oracle(k=4, tau=0.05, seed=0):
    images = torch.rand(k, 1, 16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1
    return DigitsIdeal(tau, images), images.flatten(1)


def brute_force_posterior_mean(x, sigma, means, tau):
    """E[x0 | x] from the explicit component densities (no expansion of the squares)."""
    v = tau ** 2 + sigma ** 2
    flat = x.flatten(1).double()
    logw = -((flat[:, None, :] - means[None]) ** 2).sum(-1) / (2 * v)
    w = torch.exp(logw - logw.max(1, keepdim=True).values)
    w = w / w.sum(1, keepdim=True)
    post = means[None] + tau ** 2 / v * (flat[:, None, :] - means[None])  # E[x0 | x, k]
    return (w[..., None] * post).sum(1).view(x.shape)


@pytest.mark.parametrize("sigma", [0.02, 0.3, 1.0, 5.0])
def test_digits_ideal_is_the_exact_posterior_mean(sigma):
    model, means = small_oracle()
    gen = torch.Generator().manual_seed(1)
    x = (means[torch.tensor([0, 1, 2, 3, 0, 2])].view(-1, 1, 16, 16)
         + sigma * torch.randn(6, 1, 16, 16, generator=gen, dtype=torch.float64))
    torch.testing.assert_close(model(x, sigma), brute_force_posterior_mean(x, sigma, means, model.tau),
                               rtol=1e-10, atol=1e-10)


def test_digits_ideal_denoiser_is_tweedie_of_its_log_prob():
    model, means = small_oracle(k=6, tau=0.2)
    sigma = 0.7
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64).requires_grad_()
    (score,) = torch.autograd.grad(model.log_prob(x, sigma=sigma).sum(), x)
    torch.testing.assert_close(model(x.detach(), sigma), x.detach() + sigma ** 2 * score, rtol=1e-9, atol=1e-9)


def test_digits_ideal_limits():
    digits = DigitsIdeal(1e-4)
    mu = digits.means.view(-1, 1, 16, 16)
    gen = torch.Generator().manual_seed(3)
    idx = torch.tensor([5, 100, 1500])
    x = mu[idx] + 0.05 * torch.randn(3, 1, 16, 16, generator=gen, dtype=torch.float64)
    # small sigma (but >> tau): the nearest image; huge sigma: the data mean; sigma -> 0: x itself
    near = ((x.flatten(1)[:, None] - digits.means[None]) ** 2).sum(-1).argmin(1)
    torch.testing.assert_close(digits(x, 0.05), mu[near], rtol=0, atol=1e-6)
    torch.testing.assert_close(digits(x, 1e4), mu.mean(0).expand(3, 1, 16, 16), rtol=0, atol=1e-6)
    torch.testing.assert_close(DigitsIdeal(0.03)(x, 1e-7), x, rtol=0, atol=1e-9)


def test_digits_ideal_log_prob_is_normalised_along_one_pixel():
    tau = 0.05
    means = torch.zeros(2, 1, 16, 16, dtype=torch.float64)
    means[0, 0, 0, 0], means[1, 0, 0, 0] = -0.5, 0.5  # the components differ in pixel 0 only
    model = DigitsIdeal(tau, means)
    grid = torch.linspace(-1.5, 1.5, 6001, dtype=torch.float64)
    x = torch.zeros(grid.numel(), 1, 16, 16, dtype=torch.float64)
    x[:, 0, 0, 0] = grid
    # the other 255 pixels sit at their mean: their density factor is (2 pi tau^2)^(-255/2)
    log_rest = -0.5 * 255 * math.log(2 * math.pi * tau ** 2)
    density = torch.exp(model.log_prob(x) - log_rest)
    assert float(torch.trapezoid(density, grid)) == pytest.approx(1.0, abs=1e-6)
    # and it is the closed-form two-component mixture along that pixel
    normal = torch.distributions.Normal(torch.tensor([-0.5, 0.5], dtype=torch.float64), tau)
    mix = torch.logsumexp(normal.log_prob(grid[:, None]), 1) - math.log(2)
    torch.testing.assert_close(model.log_prob(x) - log_rest, mix, rtol=1e-9, atol=1e-9)


def test_digits_ideal_samples_reproducible_and_distributed():
    model = get_model("digits_ideal")
    assert model.event_shape == (1, 16, 16) and model.num_components == 1797
    a = model.sample(64, torch.Generator().manual_seed(5))
    b = model.sample(64, torch.Generator().manual_seed(5))
    c = model.sample(64, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.dtype == torch.float32
    x, k = model.sample(2000, torch.Generator().manual_seed(7), dtype=torch.float64, return_labels=True)
    resid = x.flatten(1) - model.means[k]
    assert float(resid.std()) == pytest.approx(model.tau, rel=0.01)
    assert abs(float(resid.mean())) < 3 * model.tau / math.sqrt(resid.numel())
    assert len(torch.unique(k)) > 1000


def test_digits_ideal_forward_ad_matches_finite_differences_and_keeps_dtype():
    model = get_model("digits_ideal")
    gen = torch.Generator().manual_seed(8)
    x = model.sample(3, gen, dtype=torch.float64) + 0.4 * torch.randn(3, 1, 16, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(3, 1, 16, 16, generator=gen, dtype=torch.float64)
    _, jvp = torch.func.jvp(lambda y: model(y, 0.4), (x,), (v,))
    h = 1e-5
    fd = (model(x + h * v, 0.4) - model(x - h * v, 0.4)) / (2 * h)
    torch.testing.assert_close(jvp, fd, rtol=1e-6, atol=1e-7)
    assert model(x.float(), torch.full((3,), 0.4)).dtype == torch.float32


def test_digits_ideal_ships_the_training_images():
    images, labels = shipped_digits()
    assert images.shape == (1797, 1, 16, 16) and labels.shape == (1797,)
    assert float(images.min()) >= -1 and float(images.max()) <= 1 and set(labels.tolist()) == set(range(10))
    pytest.importorskip("sklearn")  # the data's source; only this comparison needs it
    spec = importlib.util.spec_from_file_location("train_digits", os.path.join(ROOT, "benchmarks", "train_digits.py"))
    train_digits = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_digits)
    x, y = train_digits.load_digits_16()
    assert torch.equal(images.float(), x) and torch.equal(labels, y)


def test_digits_ideal_errors():
    with pytest.raises(ValueError, match="tau must be a positive"):
        DigitsIdeal(0.0)
    with pytest.raises(ValueError, match="images must be"):
        DigitsIdeal(0.1, torch.zeros(3, 1, 8, 8))
    with pytest.raises(ValueError, match="x must have shape"):
        get_model("digits_ideal")(torch.zeros(2, 3, 16, 16), 1.0)
    with pytest.raises(ValueError, match="size"):
        get_model("patches", size=32)
    with pytest.raises(TypeError, match="model must be a DigitsIdeal"):
        digits_ideal_scorer(torch.nn.Identity(), 16, 0)


def test_sampled_references_come_from_the_offset_stream_of_their_seed():
    """digits_ideal draws its exact reference, patches its held-out subset, from a generator seeded with
    seed + REFERENCE_SEED_OFFSET: the streams the committed grids were scored with."""
    from covkernels.eval.testbeds import REFERENCE_SEED_OFFSET

    model = get_model("digits_ideal")
    scorer = digits_ideal_scorer(model, 8, 3)
    offset = torch.Generator().manual_seed(3 + REFERENCE_SEED_OFFSET)
    assert torch.equal(scorer.exact, model.sample(8, offset)) and torch.equal(scorer.exact2, model.sample(8, offset))
    perm = torch.randperm(4096, generator=torch.Generator().manual_seed(3 + REFERENCE_SEED_OFFSET))
    assert torch.equal(patches_scorer(None, 8, 3).indices, perm[:8])
    assert not torch.equal(patches_scorer(None, 8, 4).indices, perm[:8])


def blur(x):
    k = torch.tensor([1.0, 2.0, 1.0])
    w = (k[:, None] * k[None] / 16).expand(x.shape[1], 1, 3, 3).contiguous()
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), w,
                                      groups=x.shape[1])


def test_digits_ideal_metrics_rank_exact_samples_first():
    model = get_model("digits_ideal")
    scorer = digits_ideal_scorer(model, 256, seed=0)
    exact = model.sample(256, torch.Generator().manual_seed(11))
    gen = torch.Generator().manual_seed(12)
    good, floor = scorer(exact), scorer.floor()
    # the classifier was trained with pixel noise, so its features need visible damage; the exact metrics less
    for name, x in {"noise 0.3": exact + 0.3 * torch.randn(exact.shape, generator=gen), "blur x2": blur(blur(exact)),
                    "shrunk": 0.8 * exact}.items():
        bad = scorer(x)
        for metric in ("fd_features", "fd_pixels"):
            assert bad[metric] > good[metric] + abs(floor[metric] - good[metric]), (name, metric, bad, good, floor)
        assert bad["loglik_gap"] > 1.0 > 0.05 > abs(good["loglik_gap"]), (name, bad, good)
    # the cubic-kernel KID of the (unnormalised) classifier features swings by ~+-400 at N = 256: only a gross
    # error clears that
    assert scorer(0.8 * exact)["kid_features"] > good["kid_features"] + abs(floor["kid_features"] - good["kid_features"])
    mild = scorer(exact + 0.1 * torch.randn(exact.shape, generator=gen))
    # 0.1 per pixel off the data costs 0.1^2 / (2 tau^2) = 5.6 nats/dim at tau = 0.03
    assert mild["loglik_gap"] == pytest.approx(0.01 / (2 * model.tau ** 2), rel=0.05)
    assert mild["fd_pixels"] > good["fd_pixels"] + abs(floor["fd_pixels"] - good["fd_pixels"])


def test_patches_model_denoises_held_out_patches():
    model = get_model("patches")
    assert model.event_shape == (3, 16, 16)
    clean = reference_patches()[:256]
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(13))
    for sigma in (0.1, 0.5):
        noisy = clean + sigma * noise
        with torch.no_grad():
            err = (model(noisy, torch.full((256,), sigma)) - clean).square().mean()
        assert float(err) < 0.5 * sigma ** 2, (sigma, float(err))


def test_patches_metrics_rank_real_patches_first():
    scorer = patches_scorer(None, 512, seed=0)
    real = reference_patches()[torch.randperm(4096, generator=torch.Generator().manual_seed(14))[:512]]
    gen = torch.Generator().manual_seed(15)
    good = scorer.floor()
    corrupted = {"blur": blur(real), "noise 0.05": real + 0.05 * torch.randn(real.shape, generator=gen),
                 "noise 0.1": real + 0.1 * torch.randn(real.shape, generator=gen)}
    for name, x in corrupted.items():
        bad = scorer(x)
        for metric in ("fd_features", "spectrum_error"):
            assert bad[metric] > 1.5 * good[metric], (name, metric, bad, good)
    colour = scorer(real + torch.tensor([0.2, 0.0, -0.2]).view(1, 3, 1, 1))
    assert colour["fd_pooled"] > 5 * good["fd_pooled"]


def test_patches_scorer_reference_sets():
    a, b, c = patches_scorer(None, 64, 0), patches_scorer(None, 64, 0), patches_scorer(None, 64, 1)
    assert torch.equal(a.reference, b.reference) and not torch.equal(a.reference, c.reference)
    pool = reference_patches()
    assert torch.equal(a.reference, pool[a.indices]) and torch.equal(a.reference2, pool[a.indices2])
    assert len(set(a.indices.tolist()) | set(a.indices2.tolist())) == 128
    with pytest.raises(ValueError, match="num must be an int in"):
        patches_scorer(None, 4000, 0)
    with pytest.raises(ValueError, match="x must be"):
        a(torch.zeros(4, 1, 16, 16))


def test_radial_power_of_white_noise_is_flat():
    m = dct_matrix(16)
    torch.testing.assert_close(m @ m.T, torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-12)
    x = 0.3 * torch.randn(4000, 3, 16, 16, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    p = radial_power(x)
    assert p.shape == (15,)
    torch.testing.assert_close(p, torch.full_like(p, 0.09), rtol=0.03, atol=0)


def test_oracle_spectrum_error_sees_the_blur_the_pooled_fd_misses():
    """The oracles' spectrum_error: exact samples sit at its sampling noise, a 3x3 box blur of them (the
    within-mode texture a few-step ODE loses) is > 10x worse, while the pooled FD moves far less."""
    import torch.nn.functional as F

    from covkernels.eval.testbeds import get_testbed

    for name in ("gmm", "gaussian"):
        tb = get_testbed(name)
        scorer = tb.make_scorer(tb.load(), 512, 0)
        floor = scorer.floor()
        blurred = scorer(F.avg_pool2d(scorer.exact2, 3, 1, 1))
        assert "spectrum_error" in tb.metrics and floor["spectrum_error"] < 0.1
        assert blurred["spectrum_error"] > 10 * floor["spectrum_error"]
        assert blurred["fd_pooled"] < 4 * floor["fd_pooled"]
