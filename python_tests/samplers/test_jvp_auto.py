"""``jvp="auto"``: the probe is small, runs once per network and event signature (whatever wrapper object
or batch size), is reported after its model is gone, and its calls are not the run's evaluations."""
from __future__ import annotations

import pytest
import torch

import covkernels as ck
from helpers import gen, tiny_unet
from covkernels import jvp as jvp_engine
from covkernels.eval.runner import CountingModel


class Net(torch.nn.Module):
    """A smooth network that records the batch size of every call."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x, sigma):
        self.batches.append(x.shape[0])
        return torch.tanh(x) / (1 + sigma.view(-1, *[1] * (x.dim() - 1)) ** 2)


class Wrapper(torch.nn.Module):
    """An adapter-like wrapper around a network (as DiffusersDenoiser is around its UNet)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, sigma):
        return 2 * self.net(x, sigma)


def _decisions_for(description: str) -> list:
    return [c for name, c in jvp_engine.auto_choices() if name == description]


def test_probe_runs_on_a_small_batch_and_is_reported():
    net = Net()
    x = torch.randn(8, 1, 4, 4, generator=gen(0))
    _, jv = jvp_engine.jvp(net, x, torch.full((8,), 0.5), torch.ones_like(x))
    expected = (1 - torch.tanh(x) ** 2) / 1.25
    torch.testing.assert_close(jv, expected, rtol=2e-2, atol=2e-3)
    probe_calls = net.batches[:-1]  # the last call is the chosen strategy on the whole batch
    assert probe_calls and max(probe_calls) <= 2 * jvp_engine.PROBE_BATCH
    (choice,) = _decisions_for("Net")
    assert choice.probe_batch == jvp_engine.PROBE_BATCH and choice.probe_seconds > 0
    assert choice.signature == ((1, 4, 4), torch.float32, "cpu")


def test_one_probe_per_network_across_wrappers_and_batch_sizes():
    net = Net()
    for batch in (4, 3, 4):  # a new wrapper object each call, and a smaller last chunk
        x = torch.randn(batch, 2, 4, 4, generator=gen(batch))
        jvp_engine.jvp(Wrapper(net), x, torch.ones(batch), torch.ones_like(x))
    assert len(_decisions_for("Wrapper(Net)")) == 1
    calls_after_probe = len(net.batches)
    jvp_engine.jvp(Wrapper(net), x, torch.ones(4), torch.ones_like(x))
    assert len(net.batches) == calls_after_probe + 1  # every strategy: one model call, no new probe


def test_decision_outlives_its_model_in_info(capsys):
    jvp_engine.jvp(Wrapper(Net()), torch.randn(3, 5), torch.ones(3), torch.ones(3, 5))
    import gc

    gc.collect()
    ck.info()
    out = capsys.readouterr().out
    assert "jvp=auto for Wrapper(Net), samples of shape (5,)" in out
    assert "probe: 2 sample(s)" in out


class FirstOrderTanh(torch.autograd.Function):
    """tanh with a backward that is not differentiable and no forward-mode rule: only finite differences run,
    so ``auto`` deterministically picks the strategy whose evaluations the counting wrapper counts exactly."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y ** 2)


class FiniteDifferenceOnlyNet(torch.nn.Module):
    def forward(self, x, sigma):
        return FirstOrderTanh.apply(x)


@pytest.mark.parametrize("sampler", ["cov_ddim", "lanczos"])
def test_probe_calls_are_not_counted_as_the_runs_evaluations(sampler):
    """The counting wrapper of the evaluation sees exactly the sampler's NFE with jvp="auto" (the probe's four
    rows are not counted)."""
    model = CountingModel(Wrapper(FiniteDifferenceOnlyNet()))
    sigmas = ck.karras_sigmas(4, 0.1, 10.0)
    x = torch.randn(6, 1, 8, 8, generator=gen(1)) * sigmas[0]
    ck.get_sampler(sampler)(model, x, sigmas, disable=True, generator=gen(2), jvp="auto",
                            cov_sigma_max=float("inf"), **({"basis": "dct"} if sampler == "cov_ddim" else {}))
    (choice,) = _decisions_for("CountingModel(Wrapper(FiniteDifferenceOnlyNet))")[-1:]
    assert choice.strategy == "finite_difference" and choice.probe_batch == 2
    assert model.rows == ck.nfe_per_sample(sampler, sigmas, cov_sigma_max=float("inf")) * x.shape[0]


class NestedArgsNet(torch.nn.Module):
    """Takes a per-sample tensor nested in a dict (as SDXL's added_cond_kwargs)."""

    def forward(self, x, sigma, added=None):
        return torch.tanh(x) * added["scale"].view(-1, *[1] * (x.dim() - 1))


def test_nested_per_sample_arguments_probe_the_whole_batch():
    net = NestedArgsNet()
    x = torch.randn(4, 3, generator=gen(2), dtype=torch.float64)
    scale = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    _, jv = jvp_engine.jvp(net, x, torch.ones(4), torch.ones_like(x), {"added": {"scale": scale}})
    torch.testing.assert_close(jv, (1 - torch.tanh(x) ** 2) * scale[:, None], rtol=1e-5, atol=1e-6)
    (choice,) = _decisions_for("NestedArgsNet")
    assert choice.probe_batch == 4 and choice.strategy in ("forward_ad", "double_vjp")


def test_diffusers_one_call_helper_probes_once():
    diffusers = pytest.importorskip("diffusers")
    from covkernels.adapters.diffusers import sample

    unet = tiny_unet().float()
    sched = diffusers.DDIMScheduler(clip_sample=False)
    before = len(jvp_engine.auto_choices())
    for seed in (0, 1):
        out = sample(unet, sched, sampler="cov_ddim", num_inference_steps=3, batch_size=3, generator=gen(seed),
                     disable=True, cov_sigma_max=float("inf"))
        assert out.shape == (3, 3, 16, 16) and bool(torch.isfinite(out).all())
    new = jvp_engine.auto_choices()[before:]
    assert [name for name, _ in new] == ["DiffusersDenoiser(UNet2DModel)"]
