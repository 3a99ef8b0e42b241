"""The ODE / multistep samplers against closed forms: the Gaussian probability-flow ODE, Adams-Bashforth
weights, aDDIM's defining properties; and the registry every tool reads."""
from __future__ import annotations

import math

import pytest
import torch

import covkernels as ck
from helpers import ROOT, gen
from covkernels.models import SpectralGaussian, stationary_spectrum
from covkernels.ops.dct.reference import analysis, synthesis
from covkernels.samplers import REGISTRY
from covkernels.samplers.multistep import adams_bashforth_weights


def dct_gaussian(size: int = 8) -> SpectralGaussian:
    mean = torch.tensor([0.3, -0.1, -0.4], dtype=torch.float64).view(3, 1, 1).expand(3, size, size)
    return SpectralGaussian(mean, stationary_spectrum(3, size, size, std=0.4, length=2.0), basis="dct")


def exact_flow(model: SpectralGaussian, x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """Closed-form probability-flow ODE of N(mu, F^T diag(p) F): each DCT coefficient of x - mu scales by
    sqrt((p + sigma_to^2) / (p + sigma_from^2))."""
    p = model.spectrum
    c = analysis(x - model.mean, "dct") * ((p + sigma_to ** 2) / (p + sigma_from ** 2)).sqrt()
    return model.mean + synthesis(c, "dct")


# every deterministic ODE solver of the registry (aDDIM is left out: it is not a solver of the flow, it
# inflates the step by design), and the SDE solvers at eta = 0, their deterministic limit
ODE_SAMPLERS = {name: {} for name, s in REGISTRY.items()
                if s.family in ("ode_single", "ode_multistep") and name != "addim"}
ODE_SAMPLERS.update({"dpmpp_3m_sde": {"eta": 0.0}, "dpmpp_2m_sde": {"eta": 0.0}})


def flow_error(name: str, steps: int, model: SpectralGaussian) -> float:
    sigmas = ck.karras_sigmas(steps, 0.05, 40.0).double()[:-1]  # stop at sigma_min: the flow is known there
    x0 = model.mean + torch.randn(16, *model.event_shape, generator=gen(3), dtype=torch.float64) * 40.0
    got = ck.get_sampler(name)(model, x0, sigmas, disable=True, **ODE_SAMPLERS[name])
    want = exact_flow(model, x0, 40.0, float(sigmas[-1]))
    return float((got - want).norm() / (want - model.mean).norm())


def test_high_order_solvers_beat_dpmpp_2m_on_the_gaussian_flow():
    """At 32 Karras steps iPNDM, UniPC and DPM-Solver++(3M) have well under half of 2M's error, and every
    solver converges (halving the error at least as its order promises between 16 and 32 steps)."""
    model = dct_gaussian()
    err = {n: (flow_error(n, 16, model), flow_error(n, 32, model)) for n in ODE_SAMPLERS}
    for name in ("ipndm", "ipndm_v", "unipc", "dpmpp_3m_sde"):
        assert err[name][1] < 0.5 * err["dpmpp_2m"][1], (name, err)
    # eta = 0 SDE solvers are the deterministic multistep ones
    assert err["dpmpp_2m_sde"][1] == pytest.approx(err["dpmpp_2m"][1], rel=1e-9)
    for name, order in (("ddim", 1), ("dpmpp_2m", 2), ("heun", 2), ("unipc", 3), ("ipndm_v", 3)):
        assert err[name][0] / err[name][1] > 2 ** order * 0.7, (name, err[name])


def test_dpmpp_2m_sde_at_eta_0_is_dpmpp_2m_bitwise():
    model = dct_gaussian()
    sig = ck.karras_sigmas(7, 0.05, 40.0).double()
    x = torch.randn(2, *model.event_shape, generator=gen(1), dtype=torch.float64) * 40.0
    a = ck.sample_dpmpp_2m(model, x, sig, disable=True)
    b = ck.sample_dpmpp_2m_sde(model, x, sig, disable=True, eta=0.0)
    torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("times,t_next", [([1.0, 2.0], 0.5), ([3.0, 4.5, 7.0], 2.0), ([1.0, 1.7, 2.1, 4.0], 0.6)])
def test_variable_adams_bashforth_weights_integrate_polynomials_exactly(times, t_next):
    w = adams_bashforth_weights(times, t_next)
    for degree in range(len(times)):
        exact = (t_next ** (degree + 1) - times[0] ** (degree + 1)) / (degree + 1)
        assert sum(wj * tj ** degree for wj, tj in zip(w, times)) == pytest.approx(exact, rel=1e-12, abs=1e-12)


def test_ipndm_v_equals_ipndm_on_equal_steps_and_ab_weights_by_hand():
    model = dct_gaussian()
    sig = torch.cat([torch.linspace(10.0, 1.0, 7, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    x = model.mean + torch.randn(2, *model.event_shape, generator=gen(2), dtype=torch.float64) * 10.0
    a = ck.sample_ipndm(model, x, sig, disable=True)
    b = ck.sample_ipndm_v(model, x, sig, disable=True)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # by hand: AB1, AB2, AB3, AB4, AB4, ..., then the denoised at the step to 0; d = (x - D) / sigma
    s, xs, ds = sig.tolist(), x.clone(), []
    weights = [[1.0], [1.5, -0.5], [23 / 12, -16 / 12, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -9 / 24]]
    for i in range(len(s) - 1):
        den = model(xs, torch.full((2,), s[i], dtype=torch.float64))
        if s[i + 1] == 0:
            xs = den
            break
        ds.insert(0, (xs - den) / s[i])
        w = weights[min(4, i + 1) - 1]
        xs = xs + (s[i + 1] - s[i]) * sum(wj * dj for wj, dj in zip(w, ds))
    torch.testing.assert_close(a, xs, rtol=1e-12, atol=1e-12)


def test_addim_is_deterministic_and_reduces_to_ddim():
    model = dct_gaussian()
    sig = ck.karras_sigmas(6, 0.05, 40.0).double()
    x = torch.randn(3, *model.event_shape, generator=gen(5), dtype=torch.float64) * 40.0
    a = ck.sample_addim(model, x, sig, disable=True, generator=gen(1))
    b = ck.sample_addim(model, x, sig, disable=True, generator=gen(2))
    assert torch.equal(a, b)
    ddim = ck.sample_ddim(model, x, sig, disable=True)
    torch.testing.assert_close(ck.sample_addim(model, x, sig, disable=True, variance_scale=0.0), ddim,
                               rtol=1e-12, atol=1e-12)
    assert float((a - ddim).abs().max()) > 1e-3  # the inflation does something


def test_addim_restores_the_norm_ddim_loses():
    """One step from exact x_t samples of a Gaussian: DDIM's E||x_s - mu||^2 falls short of the perfect
    sampler's by about (1 - s/t)^2 tr Cov[x0 | x_t]; aDDIM with the exact posterior variance puts most of
    it back (the paper's argument treats the x0 estimate as orthogonal to the noise estimate, which holds
    only approximately, so the test asks for the gap to shrink at least 3-fold)."""
    model = dct_gaussian(16)
    t, s = 2.0, 0.5
    x0 = model.sample(4096, generator=gen(6), dtype=torch.float64)
    xt = x0 + t * torch.randn(x0.shape, generator=gen(7), dtype=torch.float64)
    sig = torch.tensor([t, s], dtype=torch.float64)
    p = model.spectrum
    v = float((p * t ** 2 / (p + t ** 2)).mean())  # exact per-dimension posterior variance
    perfect = float(((p + s ** 2).sum()))  # E||x_s - mu||^2 of the true marginal at s
    norm = lambda y: float((y - model.mean).flatten(1).square().sum(1).mean())  # noqa: E731
    ddim = norm(ck.sample_ddim(model, xt, sig, disable=True))
    addim = norm(ck.sample_addim(model, xt, sig, disable=True, posterior_variance=lambda sigma: v))
    assert perfect - ddim > 0.05 * perfect
    assert abs(perfect - addim) < (perfect - ddim) / 3


def test_calibrated_addim_variance_matches_the_exact_posterior():
    model = dct_gaussian()
    data = model.sample(2048, generator=gen(8), dtype=torch.float64)
    cal = ck.calibrate_addim_variance(model, data, [0.1, 1.0, 10.0], factor=1.0, generator=gen(9))
    p = model.spectrum
    for sigma in (0.1, 1.0, 10.0):
        exact = float((p * sigma ** 2 / (p + sigma ** 2)).mean())
        assert cal(sigma) == pytest.approx(exact, rel=0.05)
    assert cal(0.1) < cal(0.3) < cal(1.0)  # interpolated between the measured levels
    with pytest.raises(ValueError, match="data must be"):
        ck.calibrate_addim_variance(model, torch.zeros(3), [1.0])


def test_registry_is_the_single_source():
    assert tuple(REGISTRY) == ck.SAMPLERS
    for name, spec in REGISTRY.items():
        assert spec.fn is ck.get_sampler(name) is getattr(ck, f"sample_{name}") is getattr(ck.sampling, f"sample_{name}")
        assert spec.needs_jvp == (spec.family == "covariance")
    for name in ("addim", "noisy_ddim", "ipndm", "ipndm_v", "unipc", "dpmpp_2m_sde", "dpmpp_3m_sde"):
        assert name in ck.SAMPLERS
    with pytest.raises(TypeError, match="takes no option"):
        ck.nfe_per_sample("ddim", 4, lanczos_steps=3)
    assert ck.nfe_per_sample("lanczos", 4, lanczos_steps=2) == 3 * 3 + 1
    assert ck.nfe_per_sample("heun", 4, guided=True) == 2 * (2 * 3 + 1)
    assert ck.nfe_per_sample("cov_ddim", 4, guided=True) == 3 * 3 + 2


@pytest.mark.parametrize("name,option,value,match", [
    ("ipndm", "max_order", 5, "max_order must be an int in"), ("unipc", "order", 0, "order must be an int in"),
    ("unipc", "variant", "bh3", "variant must be"), ("dpmpp_2m_sde", "solver_type", "rk4", "solver_type must be"),
    ("dpmpp_3m_sde", "eta", -0.5, "eta must be a finite number >= 0"),
    ("addim", "variance_scale", math.nan, "variance_scale must be a finite number"),
    ("addim", "posterior_variance", lambda s: 0.1, None),
])
def test_new_samplers_name_bad_options(name, option, value, match):
    model = dct_gaussian()
    x = torch.zeros(1, *model.event_shape, dtype=torch.float64)
    extra = {"sigma_data": 0.5} if option == "posterior_variance" else {}  # the analytic variance's option
    with pytest.raises(ValueError, match=match or "do not apply together"):
        ck.get_sampler(name)(model, x, torch.tensor([1.0, 0.0], dtype=torch.float64), disable=True,
                             **{option: value}, **extra)


def test_readme_sampler_table_lists_the_registry():
    """The README's sampler table and the registry cannot drift apart: same names, same order."""

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| name | family |"):]
    table = table[:table.index("\n\n")]
    rows = [line.split("|")[1].strip().strip("`") for line in table.splitlines()[2:]]
    assert rows == list(ck.SAMPLERS)


def test_ode_cov_single_posterior_draw_is_exact_on_dct_gaussian():
    """Switch above sigma_max: no ODE step, one DCT posterior draw from sigma_max to 0. The DCT diagonalises
    this Gaussian's Jacobian and transform-domain Rademacher probes read its diagonal exactly (z^2 = 1), so
    the one draw is an exact sample (2 NFE), while one DDIM step collapses to the mean."""
    from helpers import expected_cov_error, whitened_errors

    model = dct_gaussian(4)
    n, sig = 4000, torch.tensor([30.0, 0.0], dtype=torch.float64)
    x = model.mean + 30.0 * torch.randn(n, *model.event_shape, generator=gen(11), dtype=torch.float64)
    got = ck.sample_ode_cov(model, x, sig, disable=True, generator=gen(12), switch_sigma=100.0,
                            channel_average=False, jvp="forward_ad")
    mu_err, cov_err = whitened_errors(got, model.mean, model.covariance())
    assert mu_err < 3 * math.sqrt(got[0].numel()) and cov_err < 1.5 * expected_cov_error(got[0].numel(), n)
    assert ck.nfe_per_sample("ode_cov", sig, switch_sigma=100.0) == 2


def test_ode_cov_splits_the_schedule_and_counts():
    from covkernels.samplers.hybrid import split_schedule

    s = [80.0, 20.0, 5.0, 1.5, 0.9, 0.3, 0.1, 0.0]
    assert split_schedule(s, 1.0, 1, 0.1) == ([80.0, 20.0, 5.0, 1.5, 0.9], [0.9, 0.0])
    ode, cov = split_schedule(s, 1.0, 3, 0.1)
    assert ode[-1] == cov[0] == 0.9 and len(cov) == 4 and cov[-1] == 0 and cov[-2] == pytest.approx(0.1)
    assert ck.nfe_per_sample("ode_cov", s, switch_sigma=1.0) == 4 + 2
    assert ck.nfe_per_sample("ode_cov", s, switch_sigma=1.0, ode="heun", covariance="lanczos", cov_steps=2) == 8 + 8
    assert ck.nfe_per_sample("ode_cov", 6) == 5 + 2  # 6 steps: at most 5 ODE steps, then the draw
    with pytest.raises(ValueError, match="ode must be a mean-only sampler"):
        ck.sample_ode_cov(dct_gaussian(), torch.zeros(1, 3, 8, 8), torch.tensor(s), ode="lanczos")
    for bad in ({"lanczos_steps": 5}, {"eta": 1.0}, {"cov_sigma_min": 0.2}, {"block": 4}):
        with pytest.raises(ValueError, match="do not apply"):
            ck.sample_ode_cov(dct_gaussian(), torch.zeros(1, 3, 8, 8), torch.tensor(s), **bad)


def test_ode_cov_guides_its_ode_part():
    """With guidance the ODE steps use the guided denoiser too (not only the final covariance step)."""
    model = dct_gaussian()
    calls = []

    def cond_model(x, sigma, shift=0.0):
        calls.append(shift)
        return model(x, sigma) + shift

    sig = ck.karras_sigmas(5, 0.1, 10.0).double()
    x = torch.randn(2, *model.event_shape, generator=gen(1), dtype=torch.float64) * 10.0
    g = ck.Guidance(2.0, uncond_args={"shift": 0.0})
    ck.sample_ode_cov(cond_model, x, sig, extra_args={"shift": 0.5}, guidance=g, disable=True, generator=gen(2),
                      jvp="finite_difference")
    assert calls.count(0.0) >= 3  # the unconditional branch runs in the ODE part as well
