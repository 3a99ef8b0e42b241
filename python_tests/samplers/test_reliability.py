"""Numerical safety under adversarial Jacobians, low-precision models, and bounded memory over long runs."""
from __future__ import annotations

import math

import pytest
import torch

import covkernels as ck
from helpers import EVERY_STEP, gen, sampler_normal
from covkernels.ops.dct.reference import block_idct2
from covkernels.ops.rng.reference import STREAM_NOISE
from covkernels.steps import draw_seed

SIG = torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64)
X = torch.randn(2, 3, 8, 8, generator=gen(0), dtype=torch.float64) * 4


def expected_one_step(model, seed, c, eta):
    """x after step 0 with J's coefficients clamped to c (a scalar), then the final mean step."""
    s0, s1 = 4.0, 1.0
    up = min(s1, eta * math.sqrt(s1 ** 2 * (s0 ** 2 - s1 ** 2) / s0 ** 2)) if eta else 0.0
    down = math.sqrt(s1 ** 2 - up ** 2)
    d = model(X, torch.full((2,), s0, dtype=torch.float64))
    xi = sampler_normal(seed, X.shape, step=0, stream=STREAM_NOISE, dtype=torch.float64)
    return d + (down / s0) * (X - d), math.sqrt(up ** 2 + (s0 - down) ** 2 * c), xi


@pytest.mark.parametrize("name,fn,c", [
    ("indefinite", lambda x, s: -x, 0.0),          # J = -I: coefficients clamp to 0
    ("huge", lambda x, s: 1e6 * x, 1.0),           # J = 1e6 I: clamp to c_max = 1
    ("zero", lambda x, s: torch.zeros_like(x) + 0.5, 0.0),  # J = 0
])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_cov_ddim_clamps_adversarial_jacobians(name, fn, c, eta):
    out = ck.sample_cov_ddim(fn, X, SIG[:2], disable=True, generator=gen(1), block=4, eta=eta, jvp="forward_ad",
                             **EVERY_STEP)
    mean, std, xi = expected_one_step(fn, draw_seed(gen(1)), c, eta)
    torch.testing.assert_close(out, mean + block_idct2(std * xi, 4))


@pytest.mark.parametrize("name,fn,c", [
    ("indefinite", lambda x, s: -x, 0.0), ("zero", lambda x, s: torch.zeros_like(x) + 0.5, 0.0),
])
def test_lanczos_clamps_ritz_values_and_handles_breakdown(name, fn, c):
    out = ck.sample_lanczos(fn, X, SIG[:2], disable=True, generator=gen(2), jvp="forward_ad", **EVERY_STEP)
    mean, std, xi = expected_one_step(fn, draw_seed(gen(2)), c, 1.0)
    torch.testing.assert_close(out, mean + std * xi)


def test_lanczos_huge_jacobian_respects_c_max():
    fn = lambda x, s: 1e6 * x  # noqa: E731
    out = ck.sample_lanczos(fn, X, SIG[:2], disable=True, generator=gen(3), jvp="forward_ad", c_max=1.0, **EVERY_STEP)
    mean, std, xi = expected_one_step(fn, draw_seed(gen(3)), 1.0, 1.0)
    torch.testing.assert_close(out, mean + std * xi)


def test_strongly_non_symmetric_jacobian_stays_finite_and_bounded():
    """J = 0.1 I + 5 (S - S^T): a huge skew part the covariance must not see (its symmetric part is 0.1 I).
    One step 4 -> 1: each sampler's draw around its own step mean ``D + (sigma_down / sigma_t)(x - D)`` has the
    spread of a posterior no wider than the noise (c <= 1, an exact denoiser's bound): without the
    symmetrisation and the clip to [0, c_max], the skew part (|J| ~ 190) would blow the noise up ~14x."""
    from covkernels.steps import ancestral_split

    skew = torch.randn(192, 192, generator=gen(4), dtype=torch.float64)
    a = 0.1 * torch.eye(192, dtype=torch.float64) + 5.0 * (skew - skew.T)

    def fn(x, s):
        return (x.flatten(1) @ a.T).view_as(x)

    sigma_t, sigma_s = float(SIG[0]), float(SIG[1])
    for sampler in ("cov_ddim", "lanczos", "diag_hutchinson"):
        opts = {"block": 4} if sampler == "cov_ddim" else {}
        out = ck.get_sampler(sampler)(fn, X, SIG[:2], disable=True, generator=gen(5), jvp="forward_ad", **opts,
                                      **EVERY_STEP)
        assert bool(torch.isfinite(out).all()), sampler
        down, up = ancestral_split(sigma_t, sigma_s, ck.samplers.spec(sampler).defaults()["eta"])
        d = fn(X, None)
        noise = out - (d + down / sigma_t * (X - d))
        widest = math.sqrt(up ** 2 + (sigma_t - down) ** 2 * 1.0)  # the step's std at c = 1
        assert float(noise.std()) <= widest, (sampler, float(noise.std()), widest)
        assert float(noise.abs().max()) <= 6 * widest, sampler
        assert abs(float(noise.mean())) <= 4 * widest / math.sqrt(noise.numel()), sampler  # centred on the mean


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sampler", ["cov_ddim", "lanczos"])
def test_low_precision_models(sampler, dtype):
    """fp16/bf16 models: covariance estimate and Krylov basis run in float32; output keeps the dtype."""
    from covkernels.models import get_model

    model = get_model("gmm", size=8)
    x = (torch.randn(2, 3, 8, 8, generator=gen(6)) * 10).to(dtype)
    out = ck.get_sampler(sampler)(model, x, ck.karras_sigmas(4, 0.05, 10.0), disable=True, generator=gen(7),
                                  jvp="finite_difference", **EVERY_STEP)
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
    ref = ck.get_sampler(sampler)(model, x.float(), ck.karras_sigmas(4, 0.05, 10.0), disable=True,
                                  generator=gen(7), jvp="finite_difference", **EVERY_STEP)
    assert float((out.float() - ref).abs().max()) < 0.2  # same noise, precision-level differences only


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_long_runs_do_not_grow_memory():
    """1000 steps after a warm-up: resident memory stays flat (no graph, cache or tensor kept per step).
    One leaked image-sized tensor per step would add 48 MB, three times the allowance."""
    from covkernels.models import get_model

    model = get_model("gaussian", size=32)
    x = torch.randn(4, 3, 32, 32, generator=gen(8)) * 10
    run = lambda n: ck.sample_cov_ddim(model, x, ck.karras_sigmas(n, 0.05, 10.0), disable=True,  # noqa: E731
                                       generator=gen(9), block=8, jvp="finite_difference", **EVERY_STEP)
    run(100)
    before = _rss_bytes()
    run(1000)
    assert _rss_bytes() - before < 16 * 2 ** 20


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU allocator statistics need CUDA")
@pytest.mark.parametrize("sampler", ["cov_ddim", "lanczos"])
def test_long_runs_do_not_grow_gpu_memory(sampler):
    """The CUDA caching allocator's live bytes after 1000 steps equal those after a 100-step warm-up (up
    to one step's transient tensors), and the peak does not grow with the run length."""
    from covkernels.models import get_model

    model = get_model("gaussian", size=32).cuda()
    x = (torch.randn(4, 3, 32, 32, generator=gen(8)) * 10).cuda()
    run = lambda n: ck.get_sampler(sampler)(model, x, ck.karras_sigmas(n, 0.05, 10.0), disable=True,  # noqa: E731
                                            generator=gen(9), jvp="finite_difference", **EVERY_STEP)
    run(100)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    live = torch.cuda.memory_allocated()
    run(100)
    peak_short = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run(1000)
    torch.cuda.synchronize()
    image = x.numel() * x.element_size()
    assert torch.cuda.memory_allocated() - live <= 2 * image
    assert torch.cuda.max_memory_allocated() <= peak_short + 2 * image


def _nan_tangent_for_sample_1(x, s):
    """Finite mean 0.5 x for every sample; under forward AD the tangent of sample 1 is NaN (0 * inf)."""
    mask = (torch.arange(x.shape[0]) == 1).view(-1, 1, 1, 1)
    return 0.5 * x + torch.where(mask, 0.0 * torch.sqrt(x - x.detach()), torch.zeros_like(x))


@pytest.mark.parametrize("sampler,opts", [("cov_ddim", {"block": 4, "eta": 0.0}), ("lanczos", {"eta": 0.0})])
def test_nonfinite_jvp_raises_or_falls_back_to_the_mean_only_step(sampler, opts):
    run = ck.get_sampler(sampler)
    kw = dict(disable=True, jvp="forward_ad", **opts, **EVERY_STEP)
    with pytest.raises(ck.NonFiniteError, match=r"JVP.*step 0, sigma=4"):
        run(_nan_tangent_for_sample_1, X, SIG, generator=gen(1), **kw)
    with pytest.warns(ck.NonFiniteFallbackWarning, match=r"step 0, sigma=4.*samples \[1\]"):
        out = run(_nan_tangent_for_sample_1, X, SIG, generator=gen(1), check_finite="mean_only", **kw)
    healthy = run(lambda x, s: 0.5 * x, X, SIG, generator=gen(1), **kw)
    torch.testing.assert_close(out[0], healthy[0])  # the other sample is untouched
    mean_only = ck.sample_ddim(lambda x, s: 0.5 * x, X, SIG, disable=True)
    torch.testing.assert_close(out[1], mean_only[1])  # eta = 0: the mean-only step is DDIM
    assert not torch.allclose(healthy[1], mean_only[1])  # ... which differs from the covariance step
    with pytest.raises(ValueError, match="check_finite"):
        run(lambda x, s: 0.5 * x, X, SIG, check_finite="warn", **kw)


def test_mean_only_fallback_drops_every_probe_of_the_failing_sample():
    """diag_hutchinson with 2 probes: sample 1's SECOND probe is non-finite; its first (finite) probe must
    not be used alone (that would halve its variance): the sample takes the mean-only step."""
    calls = []

    def model(x, s):
        calls.append(1)
        return _nan_tangent_for_sample_1(x, s) if len(calls) % 2 == 0 else 0.5 * x

    kw = dict(disable=True, jvp="forward_ad", eta=0.0, probes=2, **EVERY_STEP)
    with pytest.warns(ck.NonFiniteFallbackWarning, match=r"samples \[1\]"):
        out = ck.sample_diag_hutchinson(model, X, SIG, generator=gen(1), check_finite="mean_only", **kw)
    healthy = ck.sample_diag_hutchinson(lambda x, s: 0.5 * x, X, SIG, generator=gen(1), **kw)
    torch.testing.assert_close(out[0], healthy[0])
    torch.testing.assert_close(out[1], ck.sample_ddim(lambda x, s: 0.5 * x, X, SIG, disable=True)[1])
