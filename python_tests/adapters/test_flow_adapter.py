"""Rectified-flow models through covkernels.adapters.flow: the analytic oracles rewritten as flow networks
(velocity / x0 / epsilon prediction, noise at t = 1 or t = 0, noise scale 1 or 2) give the same denoiser, the
same samples for every registered sampler (float64, to rounding) and, for the covariance samplers, exact
samples of a Gaussian; the step from pure noise (s = 1, sigma = inf) is taken in closed form."""
from __future__ import annotations

import math

import pytest
import torch

import covkernels as ck
from helpers import ROOT, EVERY_STEP, expected_cov_error, gen, spd_matrix, whitened_errors
from covkernels.adapters.flow import (FlowDenoiser, dynamic_shift_mu, flow_times, flow_times_to_sigmas,
                                      sample_flow, shift_flow_times, sigmas_to_flow_times)
from covkernels.models import DenseGaussian, get_model
from covkernels.samplers import SAMPLERS, spec


def flow_net(oracle, prediction: str, noise_at: int, k: float):
    """The oracle ``D(x, sigma)`` as a rectified-flow network ``net(z, t)`` with the given conventions."""

    def net(z, t):
        s = (t if noise_at == 1 else 1 - t).to(torch.float64).view(-1, *([1] * (z.dim() - 1)))
        gap = (1 - s).clamp_min(1e-20)  # at s = 1 the oracle's D at sigma = 1e20 k: its mean, to rounding
        x0 = oracle(z / gap, (k * s / gap).flatten())
        if prediction == "x0":
            return x0
        eps = (z - gap * x0) / (s * k)
        if prediction == "epsilon":
            return eps
        v = k * eps - x0  # dz/ds
        return v if noise_at == 1 else -v

    return net


CONVENTIONS = [
    pytest.param("velocity", 1, 1.0, id="velocity-noise_at_1-k1"),
    pytest.param("velocity", 0, 2.0, id="velocity-noise_at_0-k2"),
    pytest.param("x0", 0, 1.0, id="x0-noise_at_0-k1"),
    pytest.param("x0", 1, 2.0, id="x0-noise_at_1-k2"),
    pytest.param("epsilon", 1, 2.0, id="epsilon-noise_at_1-k2"),
    pytest.param("epsilon", 0, 1.0, id="epsilon-noise_at_0-k1"),
]


@pytest.fixture(scope="module")
def gmm():
    return get_model("gmm", size=8)


@pytest.mark.parametrize("prediction,noise_at,k", CONVENTIONS)
def test_flow_denoiser_is_the_oracle(gmm, prediction, noise_at, k):
    model = FlowDenoiser(flow_net(gmm, prediction, noise_at, k), prediction, noise_at=noise_at, noise_scale=k)
    x = torch.randn(3, 3, 8, 8, generator=gen(0), dtype=torch.float64)
    for sigma in (0.01, 0.7, 30.0):
        sig = torch.full((3,), sigma, dtype=torch.float64)
        xs = x * (1 + sigma)
        torch.testing.assert_close(model(xs, sig), gmm(xs, sig), rtol=1e-9, atol=1e-9)


def _jvp_options(name: str) -> dict:
    return {"jvp": "forward_ad"} if "jvp" in spec(name).options() else {}


@pytest.mark.parametrize("prediction,noise_at,k", CONVENTIONS)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_gives_the_oracle_samples(gmm, sampler, prediction, noise_at, k):
    """Same seed, same sigmas: the flow-wrapped oracle and the VE oracle give the same samples."""
    model = FlowDenoiser(flow_net(gmm, prediction, noise_at, k), prediction, noise_at=noise_at, noise_scale=k)
    sigmas = ck.karras_sigmas(5, 0.05, 20.0).to(torch.float64)
    x = torch.randn(2, 3, 8, 8, generator=gen(1), dtype=torch.float64) * sigmas[0]
    options = {**_jvp_options(sampler), **({"block": 4} if sampler == "cov_ddim" else {})}
    if sampler in ("cov_ddim", "diag_hutchinson", "lanczos"):
        options.update(EVERY_STEP)
    fn = ck.get_sampler(sampler)
    ours = fn(model, x, sigmas, disable=True, generator=gen(2), **options)
    ref = fn(gmm, x, sigmas, disable=True, generator=gen(2), **options)
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("sampler", ["cov_ddim", "lanczos"])
@pytest.mark.parametrize("prediction,noise_at,k", [CONVENTIONS[1], CONVENTIONS[3]])
def test_covariance_samplers_stay_exact_on_a_gaussian_flow_model(sampler, prediction, noise_at, k):
    """One covariance step from the exact marginal at s = 0.9 to s = 0.001, then the mean: exact samples."""
    d = 16
    dense = DenseGaussian(0.5 * torch.randn(1, 4, 4, generator=gen(7), dtype=torch.float64), spd_matrix(d, seed=3))
    model = FlowDenoiser(flow_net(dense, prediction, noise_at, k), prediction, noise_at=noise_at, noise_scale=k)
    sigmas = flow_times_to_sigmas(torch.tensor([0.9, 0.001, 0.0]), noise_scale=k)
    n = 20000
    x0 = dense.sample(n, generator=gen(200), dtype=torch.float64)
    x = x0 + torch.randn(n, 1, 4, 4, generator=gen(100), dtype=torch.float64) * sigmas[0]
    options = {"lanczos_steps": 16} if sampler == "lanczos" else {"basis": "identity"}
    if sampler == "cov_ddim":  # the pixel diagonal is exact only for a diagonal covariance: use one
        dense = DenseGaussian(dense.mean, torch.diag(torch.linspace(0.1, 2.0, d, dtype=torch.float64)))
        model = FlowDenoiser(flow_net(dense, prediction, noise_at, k), prediction, noise_at=noise_at,
                             noise_scale=k)
        x = dense.sample(n, generator=gen(200), dtype=torch.float64) + (x - x0)
        options["channel_average"] = False
    out = ck.get_sampler(sampler)(model, x, sigmas, disable=True, generator=gen(0), jvp="forward_ad",
                                  **EVERY_STEP, **options)
    mu_err, cov_err = whitened_errors(out, dense.mean, dense.cov)
    assert mu_err < math.sqrt(d) + 5.0
    assert cov_err < 1.6 * expected_cov_error(d, n), cov_err


def test_noise_end_step_is_the_flow_euler_step():
    """From s = 1 (sigma = inf), ddim through sample_flow equals Euler on dz/ds in the model's own space."""
    gauss = get_model("gaussian", size=8)
    net = flow_net(gauss, "velocity", 1, 1.0)
    times = flow_times(6, shift=3.0)
    eps = torch.randn(2, 3, 8, 8, generator=gen(3), dtype=torch.float64)
    z = eps.clone()
    for s, s_next in zip(times[:-1], times[1:]):
        z = z + (s_next - s) * net(z, s.expand(2))
    model = FlowDenoiser(net, "velocity")
    ours = sample_flow(model, "ddim", flow_times_to_sigmas(times), noise=eps, disable=True)
    torch.testing.assert_close(ours, z, rtol=1e-10, atol=1e-10)


def test_starting_below_the_noise_end_costs_a_first_order_error():
    """What starting at s_0 < 1 instead of at the noise end costs: the same 6-step run from s_0 = 1 - delta
    differs from the exact start by O(delta) (measured: 0.45 delta RMS on this Gaussian, data RMS 0.34)."""
    gauss = get_model("gaussian", size=8)
    model = FlowDenoiser(flow_net(gauss, "velocity", 1, 1.0), "velocity")
    eps = torch.randn(4, 3, 8, 8, generator=gen(4), dtype=torch.float64)
    times = flow_times(6)
    exact = sample_flow(model, "ddim", flow_times_to_sigmas(times), noise=eps, disable=True)
    for delta in (1e-2, 1e-4):
        below = times.clone()
        below[0] = 1 - delta
        err = float((sample_flow(model, "ddim", flow_times_to_sigmas(below), noise=eps, disable=True)
                     - exact).pow(2).mean().sqrt())
        assert 0.05 * delta < err < 2 * delta, (delta, err)


def test_time_grid_helpers_round_trip_and_shift():
    s = torch.tensor([1.0, 0.75, 0.5, 0.1, 0.0], dtype=torch.float64)
    sig = flow_times_to_sigmas(s, noise_scale=2.0)
    assert math.isinf(float(sig[0])) and float(sig[-1]) == 0.0
    torch.testing.assert_close(sig[1:], 2 * s[1:] / (1 - s[1:]))
    torch.testing.assert_close(sigmas_to_flow_times(sig, noise_scale=2.0), s)
    # a shift multiplies every sigma; mu is the shift exp(mu)
    torch.testing.assert_close(flow_times_to_sigmas(shift_flow_times(s, shift=3.0))[1:],
                               3 * flow_times_to_sigmas(s)[1:])
    torch.testing.assert_close(shift_flow_times(s, mu=math.log(3.0)), shift_flow_times(s, shift=3.0))
    assert dynamic_shift_mu(256) == pytest.approx(0.5) and dynamic_shift_mu(4096) == pytest.approx(1.15)
    assert float(flow_times(4)[0]) == 1.0 and float(flow_times(4)[-1]) == 0.0


@pytest.mark.parametrize("bad,match", [
    pytest.param({"prediction": "flow"}, "prediction must be one of", id="prediction"),
    pytest.param({"noise_at": 2}, "noise_at must be", id="noise_at"),
    pytest.param({"noise_scale": 0.0}, "noise_scale must be", id="noise_scale"),
    pytest.param({"time_scale": float("nan")}, "time_scale must be", id="time_scale"),
])
def test_bad_flow_options_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        FlowDenoiser(lambda z, t: z, **bad)


def test_bad_grids_and_the_epsilon_noise_end_raise():
    with pytest.raises(ValueError, match="times must lie in"):
        flow_times_to_sigmas([1.5, 0.0])
    with pytest.raises(ValueError, match="exactly one of shift and mu"):
        shift_flow_times([0.5], shift=2.0, mu=1.0)
    with pytest.raises(ValueError, match="time_scale does not apply"):
        FlowDenoiser(lambda z, t: z, time_scale=1000.0, timestep=lambda s: s)
    with pytest.raises(ValueError, match="no sigma-space input"):
        FlowDenoiser(lambda z, t: z)(torch.zeros(1, 3, 4, 4), torch.tensor([float("inf")]))
    model = FlowDenoiser(lambda z, t: z, "epsilon")
    with pytest.raises(ValueError, match="no x0 estimate at the noise end"):
        sample_flow(model, "ddim", flow_times_to_sigmas(flow_times(3)), shape=(1, 3, 4, 4), generator=gen(0))
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_flow(model, "ddim", [1.0, 2.0, 0.0], shape=(1, 3, 4, 4), generator=gen(0))


def test_comfyui_const_model_is_an_x0_flow_model(gmm):
    """ComfyUI's CONST sampling (SD3, Flux): ``apply_model(z, sigma)`` with sigma its flow time returns the
    denoised ``z - sigma v``, so ``FlowDenoiser(apply_model, "x0")`` is the model in the sigma convention."""
    velocity = flow_net(gmm, "velocity", 1, 1.0)

    def apply_model(z, s):
        return z - s.view(-1, 1, 1, 1) * velocity(z, s)

    model = FlowDenoiser(apply_model, "x0")
    x = torch.randn(2, 3, 8, 8, generator=gen(6), dtype=torch.float64) * 3
    sig = torch.full((2,), 2.0, dtype=torch.float64)
    torch.testing.assert_close(model(x, sig), gmm(x, sig), rtol=1e-9, atol=1e-9)


class _Labelled(torch.nn.Module):
    """A denoiser whose prediction depends on x (for the JVP) and on class labels (for guidance)."""

    def forward(self, x, sigma, labels):
        s = sigma.view(-1, 1, 1, 1).to(x.dtype)
        return torch.tanh(x) / (1 + s ** 2) + 0.1 * labels.view(-1, 1, 1, 1).to(x.dtype)


@pytest.mark.parametrize("sampler", ["cov_ddim", "lanczos"])
def test_guidance_interval_in_the_covariance_step(sampler):
    """Through the guided JVP path: an interval no step reaches is the unguided run, one that holds every step
    is the run without an interval, and a partial one differs from both."""
    model, labels, null = _Labelled(), torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
    sigmas = ck.karras_sigmas(4, 0.05, 5.0).to(torch.float64)
    x = torch.randn(2, 3, 8, 8, generator=gen(8), dtype=torch.float64) * sigmas[0]

    def run(guidance):
        options = {"block": 4} if sampler == "cov_ddim" else {}
        return ck.get_sampler(sampler)(model, x, sigmas, extra_args={"labels": labels}, disable=True,
                                       generator=gen(9), jvp="forward_ad", guidance=guidance, **EVERY_STEP,
                                       **options)

    unguided = run(None)
    everywhere = run(ck.Guidance(3.0, uncond_args={"labels": null}))
    torch.testing.assert_close(run(ck.Guidance(3.0, uncond_args={"labels": null}, interval=(50.0, 60.0))),
                               unguided, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(run(ck.Guidance(3.0, uncond_args={"labels": null}, interval=(0.0, math.inf))),
                               everywhere, rtol=1e-12, atol=1e-12)
    partial = run(ck.Guidance(3.0, uncond_args={"labels": null}, interval=(0.0, 1.0)))
    assert float((partial - unguided).abs().max()) > 1e-3 and float((partial - everywhere).abs().max()) > 1e-3


def test_time_scale_feeds_the_net_its_own_time_range(gmm):
    """A net trained on t in [0, 1000] (``time_scale=1000``), noise at t = 0: the same denoiser."""
    net = flow_net(gmm, "velocity", 0, 1.0)
    model = FlowDenoiser(lambda z, t: net(z, t / 1000), "velocity", noise_at=0, time_scale=1000.0)
    x = torch.randn(2, 3, 8, 8, generator=gen(10), dtype=torch.float64) * 2
    sig = torch.full((2,), 1.5, dtype=torch.float64)
    torch.testing.assert_close(model(x, sig), gmm(x, sig), rtol=1e-9, atol=1e-9)


def test_every_model_family_row_of_the_readme_names_an_existing_test():
    """README "Your model": each row's test exists, so the table cannot outlive its evidence."""
    import ast
    import re

    root = ROOT
    text = (root / "README.md").read_text()
    table = text.split("### Your model", 1)[1].split("\n\n")[2]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 10
    for row in rows:
        for path, name in re.findall(r"`(test_\w+\.py)(?:::(\w+))?`", row):
            found = list((root / "python_tests").glob(f"*/{path}"))  # the tests live by area
            assert len(found) == 1, row
            source = found[0]
            if name:
                defined = {n.name for n in ast.walk(ast.parse(source.read_text())) if isinstance(n, ast.FunctionDef)}
                assert name in defined, (path, name)
        assert "`test_" in row or "same test" in row, row


@pytest.mark.parametrize("sampler,kind", [
    pytest.param("ddim", "limit", id="ddim-limit"),
    pytest.param("dpmpp_2m", "slow_limit", id="dpmpp_2m-slow_limit"),
    pytest.param("ipndm", "differs", id="ipndm-differs"),
    pytest.param("unipc", "differs", id="unipc-differs"),
    pytest.param("heun", "diverges", id="heun-diverges"),
])
def test_the_noise_end_step_against_starting_at_1_minus_delta(gmm, sampler, kind):
    """sample_flow from s = 1 (the closed-form step, then the sampler from sigma_1) against the same run
    started at s = 1 - delta, on the mixture oracle (6 steps, RMS difference): DDIM's start converges like
    delta; DPM-Solver++(2M) converges like 1 / log(1/delta) (its weight on the first point, 1 / (2 r), decays
    with r = log(sigma_0 / sigma_1) / h); iPNDM and UniPC keep the first point in their history and tend to
    a different sampler (~0.05 RMS away); Heun's correction has no limit at sigma = inf."""
    model = FlowDenoiser(flow_net(gmm, "velocity", 1, 1.0), "velocity")
    eps = torch.randn(4, 3, 8, 8, generator=gen(4), dtype=torch.float64)
    times = flow_times(6)
    exact = sample_flow(model, sampler, flow_times_to_sigmas(times), noise=eps, disable=True)
    errors = []
    for delta in (1e-3, 1e-6, 1e-9):
        below = times.clone()
        below[0] = 1 - delta
        out = sample_flow(model, sampler, flow_times_to_sigmas(below), noise=eps, disable=True)
        errors.append(float((out - exact).pow(2).mean().sqrt()))
    if kind == "limit":
        assert errors[0] < 1e-3 and errors[1] < 1e-6 and errors[2] < 1e-7, errors
    elif kind == "slow_limit":
        assert errors[0] > errors[1] > errors[2] > 1e-3 and errors[0] / errors[2] > 2.5, errors
    elif kind == "differs":
        assert min(errors) > 1e-2 and max(errors) / min(errors) < 1.2, errors
    else:
        assert errors[2] > 1e3 * errors[1] > 1e6 * errors[0] > 1, errors


def test_one_step_grid_checks_the_noise_end_and_refuses_unknown_options():
    def nan_net(z, t):
        return z * float("nan")

    eps = torch.randn(2, 3, 4, 4, generator=gen(5))
    with pytest.raises(ck.NonFiniteError, match="noise-end step"):
        sample_flow(FlowDenoiser(nan_net, "x0"), "ddim", [math.inf, 0.0], noise=eps, disable=True)
    model = FlowDenoiser(lambda z, t: torch.zeros_like(z), "x0")
    with pytest.raises(TypeError, match=r"'ddim' takes no option\(s\) \['bogus'\]"):
        sample_flow(model, "ddim", [math.inf, 0.0], noise=eps, disable=True, bogus=1)


def test_epsilon_prediction_stays_finite_at_a_large_finite_sigma():
    model = FlowDenoiser(lambda z, t: torch.zeros_like(z), "epsilon")
    x = torch.ones(1, 1, 2, 2)
    d = model(x, torch.tensor([1e8]))
    assert bool(torch.isfinite(d).all())
    torch.testing.assert_close(d, x)  # eps = 0: D = z / (1 - s) = x


def test_guided_noise_end_takes_an_adapter_as_the_unconditional_model():
    gauss = get_model("gaussian", size=4)
    cond = FlowDenoiser(flow_net(gauss, "x0", 1, 1.0), "x0")
    uncond = FlowDenoiser(flow_net(gauss, "x0", 1, 1.0), "x0")
    class Adapter(torch.nn.Module):  # e.g. a DiffusersDenoiser on a flow scheduler: the flow model as .flow
        def __init__(self, flow):
            super().__init__()
            self.flow = flow

        def forward(self, x, sigma, **extra):
            return self.flow(x, sigma, **extra)

    adapter = Adapter(uncond)
    eps = torch.randn(2, 3, 4, 4, generator=gen(6), dtype=torch.float64)
    sigmas = flow_times_to_sigmas(flow_times(3))
    guided = sample_flow(cond, "ddim", sigmas, noise=eps, disable=True, guidance=ck.Guidance(2.0, uncond_model=adapter))
    plain = sample_flow(cond, "ddim", sigmas, noise=eps, disable=True)
    torch.testing.assert_close(guided, plain)  # the same network on both branches: guidance changes nothing
