"""The cosine (shifted) and time-uniform schedules against independent closed forms and their endpoints."""
import math

import numpy as np
import pytest
import torch

from covkernels.schedules import SCHEDULES, cosine_sigmas, get_sigmas, time_uniform_sigmas, vp_sigmas


def check_convention(s: torch.Tensor, n: int, sigma_min: float, sigma_max: float):
    assert s.dtype == torch.float32 and s.shape == (n + 1,)
    assert float(s[-1]) == 0.0
    assert math.isclose(float(s[0]), sigma_max, rel_tol=1e-6)
    assert math.isclose(float(s[-2]), sigma_min, rel_tol=1e-6)
    assert bool((s[:-1].diff() < 0).all())


@pytest.mark.parametrize("n", [1, 2, 7, 30])
def test_cosine_endpoints_and_alphabar_form(n):
    s = cosine_sigmas(n, 0.02, 80.0)
    if n == 1:  # one step: linspace's single point is its start
        assert float(s[0]) == pytest.approx(80.0, rel=1e-6) and float(s[1]) == 0.0
        return
    check_convention(s, n, 0.02, 80.0)
    # Independent form: alphabar = cos^2(pi t / 2) on a uniform t grid, sigma = sqrt((1 - ab) / ab)
    t_hi, t_lo = np.arccos(1 / np.sqrt(1 + 80.0 ** 2)) * 2 / np.pi, np.arccos(1 / np.sqrt(1 + 0.02 ** 2)) * 2 / np.pi
    ab = np.cos(np.pi / 2 * np.linspace(t_hi, t_lo, n)) ** 2
    np.testing.assert_allclose(s[:-1].numpy(), np.sqrt((1 - ab) / ab), rtol=2e-6)


@pytest.mark.parametrize("shift", [0.25, 1.0, 4.0])
def test_shifted_cosine_is_uniform_in_shifted_logsnr_time(shift):
    s = cosine_sigmas(12, 0.002, 80.0, shift=shift).double()[:-1]
    # logSNR(t) = -2 log tan(pi t / 2) - 2 log shift  =>  t = (2 / pi) atan(exp(-(logSNR + 2 log shift) / 2))
    logsnr = -2 * np.log(s.numpy())
    t = 2 / np.pi * np.arctan(np.exp(-(logsnr + 2 * np.log(shift)) / 2))
    steps = np.diff(t)
    np.testing.assert_allclose(steps, steps.mean(), rtol=1e-4)
    assert float(s[0]) == pytest.approx(80.0, rel=1e-6) and float(s[-1]) == pytest.approx(0.002, rel=1e-6)


@pytest.mark.parametrize("shift", [0.1, 1.0, 10.0])
def test_shift_is_where_the_log_sigma_steps_are_densest(shift):
    s = cosine_sigmas(200, 0.002, 80.0, shift=shift).double()[:-1]
    gaps = -torch.diff(s.log())
    densest = int(gaps.argmin())
    assert math.isclose(math.sqrt(float(s[densest] * s[densest + 1])), shift, rel_tol=0.05)


@pytest.mark.parametrize("n", [2, 5, 18])
def test_time_uniform_against_inverse_vp_time(n):
    bd, bm = 19.9, 0.1
    s = time_uniform_sigmas(n, 0.002, 80.0)
    check_convention(s, n, 0.002, 80.0)
    # Invert sigma -> t with numpy's polynomial root finder (independent of the closed-form root in the code)
    t = [max(np.roots([bd / 2, bm, -np.log1p(float(v) ** 2)]).real) for v in s[:-1].double()]
    steps = np.diff(t)
    np.testing.assert_allclose(steps, steps.mean(), rtol=1e-4)
    # the documented example: sigma_max = 80 is t = 0.9335
    assert t[0] == pytest.approx(0.9335, abs=1e-4)


def test_time_uniform_matches_vp_over_the_vp_range():
    def sigma_at(t):
        return math.sqrt(math.exp(19.9 * t ** 2 / 2 + 0.1 * t) - 1)

    u = time_uniform_sigmas(9, sigma_at(1e-3), sigma_at(1.0))
    exact = [sigma_at(t) for t in np.linspace(1.0, 1e-3, 9)]
    np.testing.assert_allclose(u[:-1].numpy(), exact, rtol=1e-6)
    # vp_sigmas computes exp(.) - 1 in float32, which loses ~2e-4 relative at its smallest sigma
    torch.testing.assert_close(u, vp_sigmas(9), rtol=5e-4, atol=0)


def test_get_sigmas_dispatch_and_backward_compatibility():
    assert {"karras", "exponential", "cosine", "time_uniform", "vp", "linear_beta"} <= set(SCHEDULES)
    torch.testing.assert_close(get_sigmas("cosine", 6, 0.1, 10.0, shift=2.0), cosine_sigmas(6, 0.1, 10.0, 2.0))
    torch.testing.assert_close(get_sigmas("time_uniform", 6, 0.1, 10.0), time_uniform_sigmas(6, 0.1, 10.0))
    # the old positional signature still works, rho positional
    k = get_sigmas("karras", 4, 0.1, 10.0, 5.0, None)
    ramp = torch.linspace(0, 1, 4, dtype=torch.float64)
    ref = (10.0 ** 0.2 + ramp * (0.1 ** 0.2 - 10.0 ** 0.2)) ** 5
    torch.testing.assert_close(k[:-1].double(), ref, rtol=1e-6, atol=0)


def test_schedule_option_errors():
    with pytest.raises(ValueError, match="shift applies to the cosine schedule only"):
        get_sigmas("karras", 4, 0.1, 10.0, shift=2.0)
    with pytest.raises(ValueError, match="shift must be a positive"):
        cosine_sigmas(4, 0.1, 10.0, shift=0.0)
    with pytest.raises(ValueError, match="sigma_max must be finite and greater"):
        time_uniform_sigmas(4, 1.0, 0.5)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        cosine_sigmas(0, 0.1, 10.0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        get_sigmas("sigmoid", 4, 0.1, 10.0)
