"""JVP strategies against the exact Jacobian of an analytic model; auto selection and its errors."""
from __future__ import annotations

import pytest
import torch

from helpers import gen, spd_matrix
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


def _choice_for(model_type_name):
    return [c for name, c in jvp_engine.auto_choices() if name == model_type_name][-1]


class NoForwardADModel(torch.nn.Module):
    def forward(self, x, sigma):
        return NoForwardAD.apply(x)


def test_auto_falls_back_and_remembers_why():
    """A model that raises in forward AD: auto falls through, keeps the reason, still agrees and caches."""
    model = NoForwardADModel()
    x = torch.randn(2, 3, dtype=torch.float64)
    v = torch.ones(2, 3, dtype=torch.float64)
    _, jv = jvp_engine.jvp(model, x, torch.ones(2), v)
    torch.testing.assert_close(jv, 2 * x, rtol=1e-6, atol=1e-6)
    choice = _choice_for("NoForwardADModel")
    assert choice.strategy in ("double_vjp", "finite_difference")
    assert "Error" in choice.skipped["forward_ad"]  # the reason forward AD failed is kept
    assert "rel. diff" in choice.agreement
    assert choice.signature == ((3,), torch.float64, "cpu")  # per-sample shape: any batch size reuses it


class NoDoubleBackward(torch.autograd.Function):
    """Backward is not itself differentiable (once_differentiable), and there is no forward-mode rule."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return torch.cos(x) * g


class FirstOrderOnly(torch.nn.Module):
    def forward(self, x, sigma):
        return NoDoubleBackward.apply(x)


def test_model_without_double_backward_falls_through_to_finite_difference():
    model = FirstOrderOnly()
    x = torch.randn(2, 4, dtype=torch.float64)
    v = torch.randn(2, 4, dtype=torch.float64)
    _, jv = jvp_engine.jvp(model, x, torch.ones(2), v)
    torch.testing.assert_close(jv, torch.cos(x) * v, rtol=1e-6, atol=1e-6)
    choice = _choice_for("FirstOrderOnly")
    assert choice.strategy == "finite_difference"
    assert set(choice.skipped) == {"forward_ad", "double_vjp"}
    assert choice.agreement.startswith("unverified")


def test_auto_picks_a_verified_strategy_on_plain_models():
    model = get_model("gaussian", size=8)
    x = torch.randn(1, 3, 8, 8)
    jvp_engine.jvp(model, x, torch.ones(1), torch.ones_like(x))
    choice = _choice_for("SpectralGaussian")
    assert choice.strategy in ("forward_ad", "double_vjp", "finite_difference")
    assert set(choice.seconds) == {"forward_ad", "double_vjp", "finite_difference"}
    assert choice.seconds[choice.strategy] == min(choice.seconds.values())


class BatchDependent(torch.nn.Module):
    """Answers differently for the doubled batch of a finite difference: that strategy must be rejected."""

    def __init__(self, first_order_only: bool):
        super().__init__()
        self.first_order_only = first_order_only

    def forward(self, x, sigma):
        y = NoForwardAD.apply(x) if self.first_order_only else x * x
        return y * (5.0 if x.shape[0] > 2 else 1.0)


def test_auto_rejects_a_disagreeing_strategy():
    x = torch.randn(2, 3, dtype=torch.float64)
    model = BatchDependent(False)  # the choice cache holds models weakly: keep it alive
    _, jv = jvp_engine.jvp(model, x, torch.ones(2), torch.ones_like(x))
    torch.testing.assert_close(jv, 2 * x)
    choice = _choice_for("BatchDependent")
    assert choice.strategy in ("forward_ad", "double_vjp")
    assert choice.skipped["finite_difference"].startswith("disagrees with the others")


def test_auto_refuses_when_the_only_two_strategies_disagree():
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(jvp_engine.JVPError, match="disagree"):
        jvp_engine.jvp(BatchDependent(True), x, torch.ones(2), torch.ones_like(x))


def test_auto_lists_every_reason_when_nothing_works():
    def broken(x, sigma):
        raise RuntimeError("model exploded")

    with pytest.raises(jvp_engine.JVPError) as err:
        jvp_engine.jvp(broken, torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2))
    for name in ("forward_ad", "double_vjp", "finite_difference"):
        assert f"{name}: RuntimeError: model exploded" in str(err.value)


def test_model_returning_nan_is_reported_as_nan_not_as_a_jvp_failure():
    import covkernels as ck

    def nan_model(x, sigma):
        return x * float("nan")

    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ck.NonFiniteError, match=r"NaN/Inf \(denoised\) at step 0"):
        ck.sample_cov_ddim(nan_model, x, ck.karras_sigmas(3, 0.1, 10.0), disable=True, basis="dct")


def test_unknown_strategy():
    with pytest.raises(ValueError, match="jvp must be one of"):
        jvp_engine.jvp(lambda x, s: x, torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2), strategy="magic")
