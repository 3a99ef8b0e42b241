"""JVP strategies against the exact Jacobian of an analytic model; auto selection and its errors."""
from __future__ import annotations

import pytest
import torch

from conftest import gen, spd_matrix
from covkernels import jvp as jvp_engine
from covkernels.models import DenseGaussian, get_model


@pytest.fixture(scope="module")
def dense():
    return DenseGaussian(torch.zeros(1, 3, 3, dtype=torch.float64), spd_matrix(9, seed=2))


@pytest.mark.parametrize("strategy,tol", [("forward_ad", 1e-12), ("double_vjp", 1e-12),
                                          ("finite_difference", 1e-6), ("central_difference", 1e-9)])
def test_strategies_match_the_exact_jacobian(dense, strategy, tol):
    x = torch.randn(4, 1, 3, 3, generator=gen(1), dtype=torch.float64) * 2
    v = torch.randn(4, 1, 3, 3, generator=gen(2), dtype=torch.float64)
    sigma = torch.full((4,), 0.7, dtype=torch.float64)
    d, jv = jvp_engine.jvp(dense, x, sigma, v, strategy=strategy)
    torch.testing.assert_close(d, dense(x, sigma))
    torch.testing.assert_close(jv.flatten(1), v.flatten(1) @ dense.jacobian(0.7).T, rtol=tol, atol=tol)


def test_finite_difference_batches_primal_and_tangent_in_one_call():
    calls = []
    labels = torch.arange(3)

    def model(x, sigma, label=None, scale=1.0):
        calls.append((x.shape[0], tuple(label.tolist())))
        return torch.tanh(x) * scale + label.view(-1, 1, 1, 1)

    x = torch.randn(3, 1, 2, 2, generator=gen(3), dtype=torch.float64)
    v = torch.randn(3, 1, 2, 2, generator=gen(4), dtype=torch.float64)
    d, jv = jvp_engine.jvp(model, x, torch.ones(3), v, {"label": labels, "scale": 2.0}, strategy="finite_difference")
    assert calls == [(6, (0, 1, 2, 0, 1, 2))]
    torch.testing.assert_close(jv, 2.0 * v / torch.cosh(x) ** 2, rtol=1e-6, atol=1e-6)
    _, jv2 = jvp_engine.jvp(model, x, torch.ones(3), v, {"label": labels, "scale": 2.0},
                            strategy="finite_difference", primal=d)
    assert calls[-1] == (3, (0, 1, 2))
    torch.testing.assert_close(jv2, jv)


def test_zero_tangent_gives_zero_jvp_without_nan():
    x = torch.randn(2, 4, dtype=torch.float64)
    v = torch.zeros(2, 4, dtype=torch.float64)
    for strategy in ("finite_difference", "central_difference"):
        _, jv = jvp_engine.jvp(lambda a, s: torch.sin(a), x, torch.ones(2), v, strategy=strategy)
        assert torch.equal(jv, torch.zeros_like(jv))


class NoForwardAD(torch.autograd.Function):
    """A custom op with a backward but no forward-mode rule (like fused attention kernels)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


def test_auto_falls_back_and_remembers_why():
    def model(x, sigma):
        return NoForwardAD.apply(x)

    x = torch.randn(2, 3, dtype=torch.float64)
    v = torch.ones(2, 3, dtype=torch.float64)
    _, jv = jvp_engine.jvp(model, x, torch.ones(2), v)
    torch.testing.assert_close(jv, 2 * x)
    rows = {name: (chosen, skipped) for name, chosen, skipped in jvp_engine.auto_choices()}
    chosen, skipped = next(r for n, r in rows.items() if "function" in n or "model" in n)
    assert chosen == "double_vjp" and "forward_ad" in skipped


def test_auto_picks_forward_ad_on_plain_models():
    model = get_model("gaussian", size=8)
    x = torch.randn(1, 3, 8, 8)
    jvp_engine.jvp(model, x, torch.ones(1), torch.ones_like(x))
    assert ("SpectralGaussian", "forward_ad", {}) in jvp_engine.auto_choices()


def test_auto_lists_every_reason_when_nothing_works():
    def broken(x, sigma):
        raise RuntimeError("model exploded")

    with pytest.raises(jvp_engine.JVPError) as err:
        jvp_engine.jvp(broken, torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2))
    for name in ("forward_ad", "double_vjp", "finite_difference"):
        assert f"{name}: RuntimeError: model exploded" in str(err.value)


def test_unknown_strategy():
    with pytest.raises(ValueError, match="jvp must be one of"):
        jvp_engine.jvp(lambda x, s: x, torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2), strategy="magic")
