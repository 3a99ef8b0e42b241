"""The overlapping ConvDCT (``stride < block``): a Parseval frame of shifted block DCTs, the covariance step on
it, and the ``stride`` option of ``cov_ddim`` / ``ode_cov`` (issue 18, "estimator details")."""
from __future__ import annotations

import pytest
import torch

import covkernels as ck
from covkernels.eval.runner import CountingModel
from covkernels.models import SpectralGaussian
from covkernels.ops.dct.reference import block_dct2, frame_shifts, overlap_analysis, overlap_synthesis
from covkernels.ops.dispatch import backend_status
from covkernels.samplers import get_sampler, nfe_per_sample
from covkernels.samplers.registry import REGISTRY


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def frame_matrix(channels: int, size: int, block: int, stride: int, parseval: bool = True) -> torch.Tensor:
    """The frame analysis as a dense ``(R d, d)`` float64 matrix (columns: images of the unit vectors)."""
    d = channels * size * size
    eye = torch.eye(d, dtype=torch.float64).view(d, channels, size, size)
    a = overlap_analysis(eye, block, stride).reshape(d, -1).T
    return a if parseval else a * (block // stride)


@pytest.mark.parametrize("block,stride", [(8, 4), (8, 2), (4, 1), (4, 2)])
def test_frame_is_parseval_and_redundant(block, stride):
    r = block // stride
    a = frame_matrix(2, 8, block, stride, parseval=False)
    assert a.shape == (r * r * 2 * 64, 2 * 64)
    eye = torch.eye(a.shape[1], dtype=torch.float64)
    assert torch.allclose(a.T @ a / r ** 2, eye, atol=1e-12)  # A^T A = r^2 I: the stack of r^2 bases
    ap = frame_matrix(2, 8, block, stride)
    assert torch.allclose(ap.T @ ap, eye, atol=1e-12)
    gram = ap @ ap.T  # a redundant frame: A_p A_p^T is a projection of rank d, not the identity
    assert abs(float(torch.trace(gram)) - a.shape[1]) < 1e-9
    assert float((gram - torch.eye(gram.shape[0], dtype=torch.float64)).abs().max()) > 0.1


def test_synthesis_is_the_adjoint_and_shift_zero_is_the_block_dct():
    x = torch.randn(3, 2, 16, 16, generator=gen(0), dtype=torch.float64)
    c = torch.randn(3, 2, 4, 16, 16, generator=gen(1), dtype=torch.float64)
    lhs = (overlap_analysis(x, 8, 4) * c).sum()
    rhs = (x * overlap_synthesis(c, 8, 4)).sum()
    assert abs(float(lhs - rhs)) < 1e-10
    assert torch.allclose(overlap_analysis(x, 8, 4)[:, :, 0] * 2, block_dct2(x, 8), atol=1e-12)
    assert frame_shifts(8, 4) == [(0, 0), (0, 4), (4, 0), (4, 4)]
    assert torch.allclose(overlap_synthesis(overlap_analysis(x, 8, 2), 8, 2), x, atol=1e-12)


def test_unit_coefficients_inject_identity_covariance():
    """c = 1 through the step's synthesis ``A_p^T(sqrt(v) xi)`` has covariance exactly v I (float64); without
    the 1/r scaling it would be r^2 v I."""
    ap = frame_matrix(3, 8, 8, 4)
    var = 0.37
    m = ap.T * var ** 0.5  # xi -> A_p^T (sqrt(var) xi), as a matrix
    assert torch.allclose(m @ m.T, var * torch.eye(m.shape[0], dtype=torch.float64), atol=1e-12)
    unscaled = ap.T * 2 * var ** 0.5
    assert torch.allclose(unscaled @ unscaled.T, 4 * var * torch.eye(m.shape[0], dtype=torch.float64), atol=1e-12)


def white_gaussian(level: float) -> SpectralGaussian:
    """``N(mu, level I)`` on 3 x 16 x 16: ``J = level / (level + sigma^2) I`` is diagonal in the frame."""
    mean = torch.linspace(-0.5, 0.5, 3 * 256, dtype=torch.float64).view(3, 16, 16)
    return SpectralGaussian(mean, torch.full((3, 16, 16), level, dtype=torch.float64), basis="dct")


@pytest.mark.parametrize("stride", [4, 2])
def test_posterior_draw_variance_on_frame_diagonal_gaussian(stride):
    """The jump sigma_t -> 0 of ode_cov draws ``x0 = D + A_p^T(sigma_t sqrt(c) xi)``. For J = c0 I the frame
    coefficients are ``c_k = a_k^T J a_k = c0``: the injected per-pixel variance must be ``sigma_t^2 c0``
    (exact posterior). Missing the Parseval scaling, or estimating ``diag(A_p J A_p^T)`` without the factor
    R, is off by R = (8/stride)^2 = 4 or 16. Tolerance 5%: the measured spread over seeds is < 1%."""
    model, sigma_t = white_gaussian(1.0), 1.0
    c0 = 1.0 / (1.0 + sigma_t ** 2)
    x0 = model.sample(64, generator=gen(3), dtype=torch.float64)
    x_t = x0 + sigma_t * torch.randn(x0.shape, generator=gen(4), dtype=torch.float64)
    sigmas = torch.tensor([sigma_t, 0.0], dtype=torch.float64)
    out = get_sampler("ode_cov")(model, x_t, sigmas, covariance="convdct", stride=stride, probes=16,
                                 generator=gen(5), jvp="forward_ad", disable=True)
    var = float(((out - model(x_t, sigma_t)) ** 2).mean())
    assert abs(var / (sigma_t ** 2 * c0) - 1) < 0.05, var


def test_one_probe_estimate_is_unbiased_in_the_frame():
    """One probe per step (cov_ddim's): on J = c0 I the frame estimate is noisy (the overlaps couple the
    coefficients) but centred on c0; with c_max=None nothing is clipped from above, and the mean injected
    variance of one step over 64 samples x 768 pixels is within 10% of the exact one."""
    model, sigma_t = white_gaussian(0.25), 0.5
    c0 = 0.25 / (0.25 + sigma_t ** 2)
    x_t = model.sample(64, generator=gen(6), dtype=torch.float64)
    x_t = x_t + sigma_t * torch.randn(x_t.shape, generator=gen(7), dtype=torch.float64)
    sigmas = torch.tensor([sigma_t, 0.0], dtype=torch.float64)
    out = get_sampler("ode_cov")(model, x_t, sigmas, covariance="convdct", stride=4, c_max=None,
                                 generator=gen(8), jvp="forward_ad", disable=True)
    var = float(((out - model(x_t, sigma_t)) ** 2).mean())
    # clamping the noisy estimate at 0 lifts the mean a little; the exact variance is sigma_t^2 c0
    assert 0.95 < var / (sigma_t ** 2 * c0) < 1.15, var


def run_cov_ddim(seed: int, backend: str = "reference", **options) -> torch.Tensor:
    model = white_gaussian(0.2)
    x = torch.randn(3, 3, 16, 16, generator=gen(11)) * 3.0
    sigmas = ck.karras_sigmas(5, 0.05, 3.0)
    return get_sampler("cov_ddim")(model, x, sigmas, basis="convdct", generator=gen(seed), backend=backend,
                                   jvp="forward_ad", disable=True, cov_sigma_max=float("inf"), **options)


def test_determinism_and_stride_equal_to_block_is_todays_convdct():
    a, b = run_cov_ddim(1, stride=4), run_cov_ddim(1, stride=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, run_cov_ddim(2, stride=4))
    assert not torch.equal(a, run_cov_ddim(1))
    assert torch.equal(run_cov_ddim(1, stride=8), run_cov_ddim(1))


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_fused_backends_match_reference(backend):
    """The frame step composes each backend's fused block DCT and random streams: same samples as the
    reference (gmm at 8 x 8: the Triton interpreter runs every program in Python)."""
    ok, why = backend_status()[backend]
    if not ok:
        pytest.skip(f"{backend} unavailable here: {why}")
    from covkernels.models import get_model

    model = get_model("gmm", size=8)
    x = torch.randn(2, 3, 8, 8, generator=gen(9)) * 20
    sigmas = ck.karras_sigmas(3, 0.05, 20.0)
    runs = [get_sampler("cov_ddim")(model, x, sigmas, basis="convdct", block=4, stride=2, generator=gen(1),
                                    backend=b, jvp="forward_ad", disable=True, cov_sigma_max=float("inf"))
            for b in (backend, "reference")]
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-4, atol=1e-4)


def test_registry_variant_and_nfe():
    opts = REGISTRY["ode_cov"].variants["ode_cov/convdct-overlap"]
    assert opts == {"covariance": "convdct", "block": 8, "stride": 4, "switch_sigma": 1.0}
    sigmas = ck.karras_sigmas(6, 0.1, 80.0)
    assert nfe_per_sample("ode_cov", sigmas, **opts) == nfe_per_sample("ode_cov", sigmas, covariance="convdct", switch_sigma=1.0)
    counted = CountingModel(white_gaussian(0.2))
    x = torch.randn(2, 3, 16, 16, generator=gen(0)) * 80.0
    get_sampler("ode_cov")(counted, x, sigmas, generator=gen(0), jvp="finite_difference", disable=True, **opts)
    assert counted.rows / 2 == nfe_per_sample("ode_cov", sigmas, **opts)


@pytest.mark.parametrize("sampler,options,match", [
    ("cov_ddim", {"basis": "dct", "stride": 4}, "stride applies to basis='convdct'"),
    ("cov_ddim", {"basis": "identity", "stride": 4}, "stride applies to basis='convdct'"),
    ("cov_ddim", {"stride": 3}, "stride must be a positive int dividing block=8"),
    ("cov_ddim", {"stride": 0}, "stride must be a positive int"),
    ("cov_ddim", {"stride": 4.0}, "stride must be a positive int"),
    ("cov_ddim", {"stride": True}, "stride must be a positive int"),
    ("cov_ddim", {"block": 16, "stride": 4}, "block=16 does not tile"),
    ("ode_cov", {"covariance": "dct", "stride": 4}, r"\['stride'\] do not apply"),
    ("ode_cov", {"covariance": "lanczos", "stride": 4}, r"\['stride'\] do not apply"),
    ("ode_cov", {"covariance": "convdct", "stride": 16}, "stride must be a positive int dividing block=8"),
])
def test_bad_stride_is_refused(sampler, options, match):
    x = torch.randn(2, 3, 24, 24)
    with pytest.raises(ValueError, match=match):
        get_sampler(sampler)(lambda x, s: x, x, ck.karras_sigmas(4, 0.1, 10.0), generator=gen(0), disable=True,
                             **options)


def test_frame_transforms_refuse_bad_input():
    with pytest.raises(ValueError, match="stride must be a positive int dividing block=8"):
        overlap_analysis(torch.zeros(1, 16, 16), 8, 3)
    with pytest.raises(ValueError, match=r"c must have shape \(\.\.\., 4, H, W\)"):
        overlap_synthesis(torch.zeros(1, 3, 16, 16), 8, 4)
