"""Classifier-free guidance: guided updates against hand computation, and the evaluation count."""
from __future__ import annotations

import math

import pytest
import torch

import covkernels as ck
from helpers import EVERY_STEP, gen, sampler_normal
from covkernels.guidance import Guidance, cfg_denoiser
from covkernels.ops.dct.reference import block_idct2
from covkernels.ops.rng.reference import STREAM_NOISE
from covkernels.steps import draw_seed

SHIFTS = torch.tensor([0.5, -0.25, 0.0], dtype=torch.float64)  # per label; label 2 is the "null" label
W = 3.0


class Labelled(torch.nn.Module):
    """Linear denoiser D(x, s, y) = x / (1 + s^2) + shift[y]: J = I / (1 + s^2) for both branches."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def forward(self, x, sigma, labels):
        self.rows.append(x.shape[0])
        s = sigma.view(-1, 1, 1, 1)
        return x / (1 + s ** 2) + SHIFTS[labels].view(-1, 1, 1, 1)


def lin(x, s, shift):
    return x / (1 + s ** 2) + shift


@pytest.fixture
def setup():
    x = torch.randn(2, 2, 8, 8, generator=gen(0), dtype=torch.float64) * 5
    labels = torch.tensor([0, 1])
    return x, {"labels": labels}, Guidance(W, uncond_args={"labels": torch.tensor([2, 2])})


SIG = torch.tensor([5.0, 1.0, 0.0], dtype=torch.float64)


def expected_cov_ddim(x, labels, seed, eta=0.0):
    s0, s1 = 5.0, 1.0
    up = 0.0 if not eta else min(s1, eta * math.sqrt(s1 ** 2 * (s0 ** 2 - s1 ** 2) / s0 ** 2))
    down = math.sqrt(s1 ** 2 - up ** 2)
    shift_c = SHIFTS[labels].view(-1, 1, 1, 1)
    d_g = (1 - W) * lin(x, s0, 0.0) + W * lin(x, s0, shift_c)  # uncond shift is 0
    m = d_g + (down / s0) * (x - d_g)
    a = 1 / (1 + s0 ** 2)  # exact diagonal of J in any basis
    xi = sampler_normal(seed, x.shape, step=0, stream=STREAM_NOISE, dtype=torch.float64)
    x1 = m + block_idct2(math.sqrt(up ** 2 + (s0 - down) ** 2 * a) * xi, 4)
    d1 = (1 - W) * lin(x1, s1, 0.0) + W * lin(x1, s1, shift_c)
    return d1


@pytest.mark.parametrize("jvp", ["finite_difference", "forward_ad", "double_vjp"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_guided_cov_ddim_equals_hand_computed_update(setup, jvp, eta):
    x, extra, g = setup
    got = ck.sample_cov_ddim(Labelled(), x, SIG, extra_args=extra, disable=True, generator=gen(1), block=4,
                             guidance=g, jvp=jvp, eta=eta, **EVERY_STEP)
    exp = expected_cov_ddim(x, extra["labels"], draw_seed(gen(1)), eta)
    tol = 1e-6 if jvp == "finite_difference" else 1e-12
    torch.testing.assert_close(got, exp, rtol=tol, atol=tol)


def test_guided_step_is_three_evaluations_in_one_call(setup):
    x, extra, g = setup
    model = Labelled()
    ck.sample_cov_ddim(model, x, SIG, extra_args=extra, disable=True, generator=gen(1), block=4, guidance=g,
                       jvp="finite_difference", **EVERY_STEP)
    # step 0: ONE call on [x, x + h v, x] (cond, cond, uncond); final step: one call on [x, x] (cond, uncond)
    assert model.rows == [3 * 2, 2 * 2]
    assert sum(model.rows) // 2 == ck.sampling.nfe_per_sample("cov_ddim", SIG, guided=True, **EVERY_STEP) == 5


def test_separate_uncond_model_and_unpairable_args_give_the_same_samples(setup):
    x, extra, g = setup
    ref = ck.sample_cov_ddim(Labelled(), x, SIG, extra_args=extra, disable=True, generator=gen(1), block=4,
                             guidance=g, jvp="finite_difference")
    uncond = Labelled()
    sep = Guidance(W, uncond_model=lambda xx, s: uncond(xx, s, torch.full((xx.shape[0],), 2)))
    got = ck.sample_cov_ddim(Labelled(), x, SIG, extra_args=extra, disable=True, generator=gen(1), block=4,
                             guidance=sep, jvp="finite_difference")
    torch.testing.assert_close(got, ref)
    assert uncond.rows == [2, 2]


def test_guided_lanczos_equals_hand_computed_update(setup):
    """J = a I: the Krylov space is invariant after one step, and the noise is sqrt(s_up^2 + s^2 a) xi."""
    x, extra, g = setup
    got = ck.sample_lanczos(Labelled(), x, SIG, extra_args=extra, disable=True, generator=gen(2), guidance=g,
                            jvp="forward_ad", eta=1.0, **EVERY_STEP)
    s0, s1 = 5.0, 1.0
    up = min(s1, math.sqrt(s1 ** 2 * (s0 ** 2 - s1 ** 2) / s0 ** 2))
    down = math.sqrt(s1 ** 2 - up ** 2)
    shift_c = SHIFTS[extra["labels"]].view(-1, 1, 1, 1)
    d_g = (1 - W) * lin(x, s0, 0.0) + W * lin(x, s0, shift_c)
    xi = sampler_normal(draw_seed(gen(2)), x.shape, step=0, stream=STREAM_NOISE, dtype=torch.float64)
    x1 = d_g + (down / s0) * (x - d_g) + math.sqrt(up ** 2 + (s0 - down) ** 2 / (1 + s0 ** 2)) * xi
    torch.testing.assert_close(got, (1 - W) * lin(x1, s1, 0.0) + W * lin(x1, s1, shift_c))


def test_cfg_denoiser_for_plain_samplers(setup):
    x, extra, g = setup
    guided = cfg_denoiser(Labelled(), g)
    got = ck.sample_ddim(guided, x, SIG, extra_args=extra, disable=True)
    shift_c = SHIFTS[extra["labels"]].view(-1, 1, 1, 1)
    xx = x.clone()
    for s, s_next in ((5.0, 1.0), (1.0, 0.0)):
        d = (1 - W) * lin(xx, s, 0.0) + W * lin(xx, s, shift_c)
        xx = xx + (xx - d) / s * (s_next - s)
    torch.testing.assert_close(got, xx)


def test_guidance_validation():
    with pytest.raises(ValueError, match="guidance scale must be a finite number"):
        Guidance(float("inf"))
    with pytest.raises(TypeError, match="guidance got unknown keys"):
        ck.sample_cov_ddim(lambda x, s: x, torch.zeros(1, 1, 8, 8), SIG, disable=True, guidance={"w": 2.0})
    with pytest.raises(TypeError, match="guidance must be None, a number"):
        ck.sample_lanczos(lambda x, s: x, torch.zeros(1, 1, 8, 8), SIG, disable=True, guidance="strong")


def test_guidance_without_an_unconditional_branch_is_refused():
    """A bare scale on a model called with no extra_args: the 'unconditional' call would be the conditional
    one, and sampling would silently be unguided (issue 17, item 4)."""
    model, x = (lambda xx, s: xx / (1 + s.view(-1, 1, 1, 1) ** 2)), torch.randn(1, 1, 8, 8, generator=gen(0))
    for sampler in (ck.sample_cov_ddim, ck.sample_lanczos):
        with pytest.raises(ValueError, match="no unconditional branch.*uncond_args.*uncond_model"):
            sampler(model, x, SIG, disable=True, generator=gen(1), guidance=3.0)
    labels = {"labels": torch.tensor([1])}
    with pytest.raises(ValueError, match="uncond_args equal to the extra_args"):
        ck.sample_cov_ddim(Labelled(), x.double(), SIG, extra_args=labels, disable=True, generator=gen(1), block=4,
                           guidance=Guidance(2.0, uncond_args={"labels": torch.tensor([1])}))
    with pytest.raises(ValueError, match="no unconditional branch"):
        ck.sample_ddim(cfg_denoiser(model, 3.0), x, SIG, disable=True)


def test_guidance_with_a_branch_of_its_own_is_accepted():
    """Either a separate uncond_model, or uncond_args that differ from the conditional ones, is a branch."""
    x = torch.randn(1, 1, 8, 8, generator=gen(0), dtype=torch.float64)
    labels = {"labels": torch.tensor([1])}
    ck.sample_cov_ddim(Labelled(), x, SIG, extra_args=labels, disable=True, generator=gen(1), block=4,
                       guidance=Guidance(W, uncond_model=lambda xx, s: lin(xx, s.view(-1, 1, 1, 1), 0.0)))
    ck.sample_cov_ddim(Labelled(), x, SIG, extra_args=labels, disable=True, generator=gen(1), block=4,
                       guidance=Guidance(W, uncond_args={"labels": torch.tensor([2])}))


@pytest.mark.parametrize("scale", [-1.5, 0.0, 0.5])
def test_scales_outside_the_usual_range_mean_what_the_docs_say(setup, scale):
    """0: the unconditional model; (0, 1): interpolation; < 0: steered away from the condition."""
    x, extra, _ = setup
    guided = cfg_denoiser(Labelled(), Guidance(scale, uncond_args={"labels": torch.tensor([2, 2])}))
    sigma = torch.full((2,), 2.0, dtype=torch.float64)
    shift_c = SHIFTS[extra["labels"]].view(-1, 1, 1, 1)
    want = lin(x, 2.0, 0.0) + scale * (lin(x, 2.0, shift_c) - lin(x, 2.0, 0.0))
    torch.testing.assert_close(guided(x, sigma, **extra), want, rtol=1e-12, atol=1e-12)
