"""``compile=True``: a whole covariance step and a whole mean-only step each compile into ONE graph
(``fullgraph=True``, Inductor on the CPU), with no graph break (dynamo's counters), once per shape, and the
samples equal eager ones.

Tolerance: the compiled model differs from eager by float32 rounding (Inductor fuses and reorders); the
finite-difference JVP divides that by its step ``h ~ sqrt(eps)``, so the noise coefficients, and the
samples, move by a few ``sqrt(eps)`` of the sample scale: the tests demand at most 2e-3 of it in float32
(sqrt(eps) = 3.5e-4) and 1e-7 in float64 (sqrt(eps) = 1.5e-8; measured 2e-8). A wrong noise stream or
coefficient moves samples by O(1) of the scale.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch._dynamo.utils import counters

import covkernels as ck
from helpers import gen
from covkernels import compiled_steps


class TinyDenoiser(torch.nn.Module):
    """A small conv denoiser with the layers of a UNet block (conv, group norm, SiLU, sigma scaling): a
    network for the compiler, seconds to compile."""

    def __init__(self, channels=3, width=16):
        super().__init__()
        torch.manual_seed(0)
        self.inp = torch.nn.Conv2d(channels, width, 3, padding=1)
        self.norm = torch.nn.GroupNorm(4, width)
        self.out = torch.nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, sigma):
        s = sigma.view(-1, 1, 1, 1)
        c_in, c_skip = 1 / torch.sqrt(s ** 2 + 0.25), 0.25 / (s ** 2 + 0.25)
        h = torch.nn.functional.silu(self.norm(self.inp(x * c_in)))
        return c_skip * x + (s * 0.5 / torch.sqrt(s ** 2 + 0.25)) * self.out(h)


@pytest.fixture(scope="module")
def model():
    return TinyDenoiser().eval()


def _run(model, sampler, x, compile, dtype=torch.float32, **options):
    sigmas = ck.karras_sigmas(5, 0.01, 20.0).to(dtype)
    return ck.get_sampler(sampler)(model, x.to(dtype), sigmas, disable=True, generator=gen(3), compile=compile,
                                   cov_sigma_max=2.0, **options)


@pytest.fixture
def fresh_counters():
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


@pytest.mark.parametrize("sampler,options", [("cov_ddim", {"eta": 0.0}), ("cov_ddim", {"eta": 1.0, "basis": "dct"}),
                                             ("diag_hutchinson", {"probes": 2})],
                         ids=["cov_ddim-convdct-eta0", "cov_ddim-dct-eta1", "diag_hutchinson-2probes"])
def test_whole_steps_compile_without_graph_breaks_and_match_eager(model, fresh_counters, sampler, options):
    x = torch.randn(4, 3, 16, 16, generator=gen(1)) * 20
    eager = _run(model, sampler, x, False, **options)
    compiled = _run(model, sampler, x, True, **options)
    assert dict(fresh_counters["graph_break"]) == {}
    # covariance step, mean-only step above cov_sigma_max, and the final step to 0: one graph each
    assert fresh_counters["stats"]["unique_graphs"] == 3
    scale = float(eager.abs().max())
    assert float((compiled - eager).abs().max()) <= 2e-3 * scale
    again = _run(model, sampler, x, True, **options)  # a second call: no new graph
    assert fresh_counters["stats"]["unique_graphs"] == 3 and torch.equal(again, compiled)


def test_compiled_once_per_shape(model, fresh_counters):
    for batch in (2, 2, 3):
        _run(model, "cov_ddim", torch.randn(batch, 3, 16, 16, generator=gen(batch)) * 20, True)
    assert fresh_counters["stats"]["unique_graphs"] == 6  # 3 graphs for batch 2 (reused), 3 for batch 3


def test_float64_compiled_equals_eager_to_rounding(model, fresh_counters):
    m = TinyDenoiser().double().eval()
    x = torch.randn(2, 3, 16, 16, generator=gen(2)) * 20
    eager, compiled = (_run(m, "cov_ddim", x, c, dtype=torch.float64) for c in (False, True))
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-7 * float(eager.abs().max()))


def test_nfe_and_callback_follow_the_eager_loop(model):
    x = torch.randn(2, 3, 16, 16, generator=gen(4)) * 20
    seen = {}
    for flag in (False, True):
        calls = []
        _run(model, "cov_ddim", x, flag, callback=lambda info: calls.append((info["i"], float(info["sigma"]))))
        seen[flag] = calls
    assert seen[True] == seen[False] and len(seen[True]) == 5


@pytest.mark.parametrize("strategy", ["finite_difference", "central_difference"])
def test_difference_jvps_compile(model, fresh_counters, strategy):
    x = torch.randn(2, 3, 16, 16, generator=gen(5)) * 20
    out = _run(model, "cov_ddim", x, True, jvp=strategy)
    assert torch.isfinite(out).all() and dict(fresh_counters["graph_break"]) == {}


@pytest.mark.parametrize("strategy", ["forward_ad", "double_vjp"])
def test_jvps_that_break_graphs_are_refused(model, strategy):
    """Measured on torch 2.13: dynamo cannot trace torch.func.jvp through group norm, nor autograd.grad
    with create_graph, in one graph; compile=True refuses them rather than falling back silently."""
    with pytest.raises(ValueError, match=f"jvp='{strategy}' does not compile"):
        _run(model, "cov_ddim", torch.zeros(1, 3, 16, 16), True, jvp=strategy)


def test_auto_under_compile_is_a_strategy_that_compiles():
    assert compiled_steps.jvp_strategy("auto") in compiled_steps.COMPILABLE_JVP


def test_compile_refuses_what_it_cannot_trace(model):
    x = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ValueError, match="check_finite='mean_only'"):
        _run(model, "cov_ddim", x, True, check_finite="mean_only")
    with pytest.raises(ValueError, match="overlapping ConvDCT"):
        _run(model, "cov_ddim", x, True, stride=4)
    with pytest.raises(TypeError, match="compile must be a bool"):
        _run(model, "cov_ddim", x, "yes")


def test_compiled_run_reports_a_nan_model_with_the_step(fresh_counters):
    class NaNAtLowSigma(TinyDenoiser):
        def forward(self, x, sigma):
            out = super().forward(x, sigma)
            return torch.where(sigma.view(-1, 1, 1, 1) < 1.0, out * math.nan, out)

    with pytest.raises(ck.NonFiniteError, match="NaN/Inf"):
        _run(NaNAtLowSigma().eval(), "cov_ddim", torch.randn(1, 3, 16, 16, generator=gen(6)) * 20, True)


def test_sample_takes_compile(model):
    out = ck.sample(model, (2, 3, 16, 16), sampler="cov_ddim", steps=4, sigma_max=20.0, generator=gen(7),
                    compile=True, disable=True)
    ref = ck.sample(model, (2, 3, 16, 16), sampler="cov_ddim", steps=4, sigma_max=20.0, generator=gen(7),
                    compile=False, disable=True)
    assert float((out - ref).abs().max()) <= 2e-3 * float(ref.abs().max())
