"""Baselines against updates computed by hand on a linear denoiser, in float64.

The denoiser ``D(x, sigma) = a(sigma) x + b`` keeps every update a closed-form affine map, so each step
below is the textbook formula (k-diffusion's rules: Euler, Euler-ancestral, Heun with an Euler last step,
DPM-Solver++(2M) with a first-order first and last step), written out independently of the package.
"""
from __future__ import annotations

import math

import pytest
import torch

import covkernels as ck
from helpers import gen

B_SHIFT = 0.3


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, sigma):
        self.calls += 1
        s = sigma.view(-1, *([1] * (x.dim() - 1)))
        return x / (1 + s ** 2) + B_SHIFT


def lin(x, s):
    return x / (1 + s ** 2) + B_SHIFT


SIGMAS = torch.tensor([8.0, 3.0, 1.2, 0.5, 0.1, 0.0], dtype=torch.float64)


@pytest.fixture
def x0():
    return torch.randn(3, 2, 4, 4, generator=gen(0), dtype=torch.float64) * 8.0


def test_ddim_is_euler(x0):
    got = ck.sample_ddim(Linear(), x0, SIGMAS, disable=True)
    x = x0.clone()
    s = SIGMAS.tolist()
    for i in range(len(s) - 1):
        x = x + (x - lin(x, s[i])) / s[i] * (s[i + 1] - s[i])
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)
    # the last step to 0 lands exactly on the denoised mean
    torch.testing.assert_close(got, ck.sample_ddim(Linear(), x0, SIGMAS[:-1], disable=True) / (1 + 0.1 ** 2)
                               + B_SHIFT, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_ddpm_is_euler_ancestral(x0, eta):
    noises = [torch.randn(x0.shape, generator=gen(10 + i), dtype=torch.float64) for i in range(len(SIGMAS))]
    calls = []

    def noise_sampler(sigma, sigma_next):
        calls.append((float(sigma), float(sigma_next)))
        return noises[len(calls) - 1]

    got = ck.sample_ddpm(Linear(), x0, SIGMAS, disable=True, eta=eta, noise_sampler=noise_sampler)
    x, s = x0.clone(), SIGMAS.tolist()
    for i in range(len(s) - 1):
        up = min(s[i + 1], eta * math.sqrt(s[i + 1] ** 2 * (s[i] ** 2 - s[i + 1] ** 2) / s[i] ** 2))
        down = math.sqrt(s[i + 1] ** 2 - up ** 2)
        x = x + (x - lin(x, s[i])) / s[i] * (down - s[i])
        if s[i + 1] > 0:
            x = x + noises[i] * up
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)
    assert calls == [(s[i], s[i + 1]) for i in range(len(s) - 2)]  # no noise drawn for the last step


def test_ddpm_eta0_equals_ddim(x0):
    torch.testing.assert_close(ck.sample_ddpm(Linear(), x0, SIGMAS, disable=True, eta=0.0),
                               ck.sample_ddim(Linear(), x0, SIGMAS, disable=True), rtol=1e-12, atol=1e-12)


def test_heun(x0):
    model = Linear()
    got = ck.sample_heun(model, x0, SIGMAS, disable=True)
    x, s = x0.clone(), SIGMAS.tolist()
    for i in range(len(s) - 1):
        d = (x - lin(x, s[i])) / s[i]
        dt = s[i + 1] - s[i]
        if s[i + 1] == 0:
            x = x + d * dt
        else:
            x2 = x + d * dt
            d2 = (x2 - lin(x2, s[i + 1])) / s[i + 1]
            x = x + (d + d2) / 2 * dt
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)
    assert model.calls == 2 * (len(s) - 1) - 1 == ck.sampling.nfe_per_sample("heun", SIGMAS)


def test_dpmpp_2m(x0):
    got = ck.sample_dpmpp_2m(Linear(), x0, SIGMAS, disable=True)
    x, s, old = x0.clone(), SIGMAS.tolist(), None
    for i in range(len(s) - 1):
        den = lin(x, s[i])
        if s[i + 1] == 0:
            x = den  # t_next = inf: the first-order update lands on the denoised mean
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            target = den
            if old is not None:
                r = (math.log(s[i - 1]) - math.log(s[i])) / h
                target = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
            x = (s[i + 1] / s[i]) * x - math.expm1(-h) * target
        old = den
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)


def test_churn_adds_noise_from_the_generator(x0):
    a = ck.sample_ddim(Linear(), x0, SIGMAS, disable=True, s_churn=2.0, generator=gen(1))
    b = ck.sample_ddim(Linear(), x0, SIGMAS, disable=True, s_churn=2.0, generator=gen(1))
    c = ck.sample_ddim(Linear(), x0, SIGMAS, disable=True)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3


def test_noisy_ddim_adds_isotropic_x0_variance(x0):
    """aDDIM = DDIM mean + sqrt((sigma_t - sigma_s)^2 sd^2 / (sigma_t^2 + sd^2)) xi with the run's noise."""
    from helpers import sampler_normal
    from covkernels.ops.rng.reference import STREAM_NOISE
    from covkernels.steps import draw_seed

    sig = SIGMAS[[0, 1, -1]]
    got = ck.sample_noisy_ddim(Linear(), x0, sig, disable=True, generator=gen(4), sigma_data=0.7)
    seed = draw_seed(gen(4))
    s0, s1 = float(sig[0]), float(sig[1])
    xi = sampler_normal(seed, x0.shape, step=0, stream=STREAM_NOISE, dtype=torch.float64)
    den = lin(x0, s0)
    x = den + (s1 / s0) * (x0 - den) + math.sqrt((s0 - s1) ** 2 * 0.49 / (s0 ** 2 + 0.49)) * xi
    torch.testing.assert_close(got, lin(x, s1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ck.SAMPLERS)
def test_callback_and_nfe(name, x0):
    """Every sampler calls back once per step with k-diffusion's dict, and makes exactly
    ``nfe_per_sample`` evaluations (counted in batch rows, with batched finite-difference JVPs). Samplers
    that re-plan the schedule (a registry ``nfe_fn``, e.g. the ODE-then-covariance hybrid) call back once
    per step they take, numbered consecutively."""
    from covkernels.samplers import spec

    rows = []

    def model(x, sigma):
        rows.append(x.shape[0] // x0.shape[0])
        return lin(x, sigma.view(-1, 1, 1, 1)) + 0.05 * torch.sin(x)  # non-trivial J: no Lanczos early stop

    seen = []
    options = {"jvp": "finite_difference"} if spec(name).needs_jvp else {}
    if spec(name).defaults().get("block") is not None:  # a convdct default: tile the 4 x 4 test images
        options["block"] = 4
    ck.get_sampler(name)(model, x0, SIGMAS, callback=seen.append, disable=True, generator=gen(0), **options)
    steps = len(SIGMAS) - 1 if spec(name).nfe_fn is None else len(seen)
    assert steps >= 2 and [d["i"] for d in seen] == list(range(steps))
    standard = {"x", "i", "sigma", "sigma_hat", "denoised"}  # ode_cov's automatic draw adds its diagnostics
    assert all(set(d) == standard or (set(d) - standard == {"switch_sigma", "misses"} and name == "ode_cov")
               for d in seen)
    assert all(d["denoised"].shape == x0.shape for d in seen)
    assert sum(rows) == ck.sampling.nfe_per_sample(name, SIGMAS)


def test_half_precision_follows_k_diffusion_type_promotion(x0):
    """k-diffusion divides by append_dims(sigma): float32 sigmas lift a float16 x to float32."""
    out = ck.sample_ddim(lambda x, s: (x.float() / (1 + s.view(-1, 1, 1, 1) ** 2)).to(x.dtype), x0.half(),
                         SIGMAS.float(), disable=True)
    assert out.dtype == torch.float32
