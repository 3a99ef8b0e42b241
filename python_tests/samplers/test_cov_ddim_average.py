"""``cov_ddim``'s spatial averaging (the claim 4 ablation, docs/claims.md): the averaging arithmetic, the
composed step against the fused op it must reproduce without averaging, and the exact step on a linear
denoiser whose Jacobian is diagonal in the basis (one Hutchinson probe is then exact, so the averaged
coefficients are known in closed form)."""
from __future__ import annotations

import pytest
import torch

from covkernels.ops.api import hutchinson_coefficients
from covkernels.ops.dct.reference import analysis, synthesis
from covkernels.ops.noise.reference import ddim_mean, tile_mean
from covkernels.samplers.registry import get_sampler
from covkernels.steps import StepContext
from covkernels.steps.diagonal import averaged_step, structured_step
from covkernels.steps.plain import ancestral_split

from helpers import EVERY_STEP, gen

F64 = torch.float64


def test_tile_mean_averages_each_in_block_frequency_over_positions():
    c = torch.arange(2 * 3 * 4 * 4, dtype=F64).reshape(2, 3, 4, 4)
    out = tile_mean(c, 2)
    blocks = c.reshape(2, 3, 2, 2, 2, 2)  # (B, C, tile row, freq row, tile col, freq col)
    want = blocks.mean(dim=(2, 4))  # (B, C, freq row, freq col)
    assert out.shape == c.shape
    for i in range(2):
        for j in range(2):
            torch.testing.assert_close(out[:, :, i::2, j::2], want[:, :, i, j, None, None].expand(2, 3, 2, 2))


def test_tile_mean_over_pixels_and_frame_shifts():
    c = torch.randn(2, 3, 4, 4, generator=gen(1), dtype=F64)
    torch.testing.assert_close(tile_mean(c, 1), c.mean(dim=(2, 3), keepdim=True).expand_as(c))
    frame = torch.randn(2, 1, 4, 4, 4, generator=gen(2), dtype=F64)  # (B, C, R shifts, H, W)
    out = tile_mean(frame, 2)
    want = frame.reshape(2, 1, 4, 2, 2, 2, 2).mean(dim=(2, 3, 5))  # over shifts and both tile axes
    torch.testing.assert_close(out[:, :, 3, 1::2, 0::2], want[:, :, 1, 0, None, None].expand(2, 1, 2, 2))
    with pytest.raises(ValueError, match="must divide"):
        tile_mean(c, 3)


def test_hutchinson_averages_before_clamping():
    z = torch.ones(1, 1, 1, 2, 2, dtype=F64)
    fjv = torch.tensor([3.0, -1.0, 0.5, 0.5], dtype=F64).reshape(1, 1, 1, 2, 2)
    c = hutchinson_coefficients(z, fjv, channel_average=False, c_max=1.0, tile=1)
    torch.testing.assert_close(c, torch.full_like(c, 0.75))  # clamping first would give mean(1, 0, .5, .5) = 0.5


def _context(model, x, backend):
    return StepContext(model, x, None, generator=gen(7), backend=backend, jvp="finite_difference")


@pytest.mark.parametrize("basis", ["convdct", "identity"])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_composed_step_reproduces_the_fused_op_without_spatial_averaging(basis, backend):
    x = torch.randn(2, 3, 16, 16, generator=gen(3), dtype=F64) * 2.0
    model = lambda x, s: torch.tanh(x) / (1 + s[:, None, None, None] ** 2) ** 0.5  # noqa: E731 (nonlinear)
    kw = dict(eta=0.5, basis=basis, block=8, channel_average=basis == "convdct", c_max=1.0, probes=2)
    fused, d1 = structured_step(_context(model, x, backend), x, 3, 2.0, 1.0, **kw)
    composed, d2 = averaged_step(_context(model, x, backend), x, 3, 2.0, 1.0, tile=None, **kw)
    torch.testing.assert_close(d1, d2, rtol=0, atol=0)
    torch.testing.assert_close(composed, fused, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channel_average", [False, True], ids=["spatial", "global"])
def test_spatial_average_step_is_exact_for_a_basis_diagonal_jacobian(channel_average):
    # D(x) = F^T diag(c) F x: J is diagonal in the convdct basis, so one probe estimates c exactly (z^2 = 1) and
    # the averaged coefficients are tile_mean(c) (and its channel mean): the step's noise is then known.
    g = gen(4)
    c = torch.rand(1, 3, 16, 16, generator=g, dtype=F64)
    model = lambda x, s: synthesis(c * analysis(x, "convdct", 8), "convdct", 8)  # noqa: E731
    x = torch.randn(2, 3, 16, 16, generator=g, dtype=F64)
    ctx = _context(model, x, "reference")
    sigma_t, sigma_s, eta = 2.0, 0.5, 1.0
    x_s, _ = structured_step(ctx, x, 2, sigma_t, sigma_s, eta=eta, basis="convdct", block=8,
                             channel_average=channel_average, c_max=1.0, spatial_average=True)
    cbar = tile_mean(c.mean(dim=1, keepdim=True) if channel_average else c, 8)
    down, up = ancestral_split(sigma_t, sigma_s, eta)
    xi = _context(model, x, "reference").normal(x.shape, 2, dtype=F64)
    want = ddim_mean(model(x, None), x, sigma_t, down) + synthesis(
        torch.sqrt(up ** 2 + (sigma_t - down) ** 2 * cbar) * xi, "convdct", 8)
    torch.testing.assert_close(x_s, want, rtol=1e-6, atol=1e-6)  # finite-difference JVP on a linear map


def test_the_sampler_passes_spatial_average_to_its_step():
    # one covariance step 2 -> 0.5 then the plain last step to 0 (D of the state): the sampler's output is the
    # hand-composed averaged step's, and differs from the unaveraged one
    g = gen(4)
    c = torch.rand(1, 3, 16, 16, generator=g, dtype=F64)
    model = lambda x, s: synthesis(c * analysis(x, "convdct", 8), "convdct", 8)  # noqa: E731
    x = torch.randn(2, 3, 16, 16, generator=g, dtype=F64) * 2.0
    run = dict(eta=1.0, basis="convdct", channel_average=False, generator=gen(7), jvp="finite_difference",
               backend="reference", disable=True, **EVERY_STEP)
    sigmas = torch.tensor([2.0, 0.5, 0.0], dtype=F64)
    out = get_sampler("cov_ddim")(model, x, sigmas, spatial_average=True, **run)
    x_s, _ = structured_step(_context(model, x, "reference"), x, 0, 2.0, 0.5, eta=1.0, basis="convdct", block=8,
                             channel_average=False, c_max=1.0, spatial_average=True)
    torch.testing.assert_close(out, model(x_s, None), rtol=1e-12, atol=1e-12)
    plain = get_sampler("cov_ddim")(model, x, sigmas, spatial_average=False, **{**run, "generator": gen(7)})
    assert float((plain - out).abs().max()) > 1e-3


def test_spatial_average_on_the_overlapping_frame_changes_the_step():
    model = lambda x, s: torch.tanh(x) / (1 + s[:, None, None, None] ** 2) ** 0.5  # noqa: E731
    x = torch.randn(2, 3, 16, 16, generator=gen(8), dtype=F64)
    kw = dict(eta=1.0, basis="convdct", block=8, channel_average=True, c_max=1.0, stride=4)
    a, _ = structured_step(_context(model, x, "reference"), x, 1, 2.0, 0.5, spatial_average=True, **kw)
    b, _ = structured_step(_context(model, x, "reference"), x, 1, 2.0, 0.5, spatial_average=False, **kw)
    again, _ = structured_step(_context(model, x, "reference"), x, 1, 2.0, 0.5, spatial_average=True, **kw)
    assert bool(torch.isfinite(a).all()) and float((a - b).abs().max()) > 1e-4
    torch.testing.assert_close(a, again, rtol=0, atol=0)


@pytest.mark.parametrize("label", ["cov_ddim/convdct-avg-spatial", "cov_ddim/convdct-avg-global",
                                   "cov_ddim/convdct-avg-none"])
def test_averaging_variants_are_grid_rows_that_sample(label):
    from covkernels.eval.plan import VARIANTS
    name, opts = VARIANTS[label]
    x = torch.randn(2, 3, 16, 16, generator=gen(5)) * 80
    out = get_sampler(name)(lambda x, s: x / (1 + s[:, None, None, None] ** 2), x,
                            torch.tensor([80.0, 1.0, 0.1, 0.0]), disable=True, generator=gen(6),
                            **opts, **EVERY_STEP)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())


def test_spatial_average_refused_where_it_does_not_apply():
    sampler = get_sampler("cov_ddim")
    x, sigmas = torch.randn(1, 3, 16, 16), torch.tensor([1.0, 0.5, 0.0])
    model = lambda x, s: x * 0  # noqa: E731
    with pytest.raises(ValueError, match="spatial_average.*basis='dct'"):
        sampler(model, x, sigmas, basis="dct", spatial_average=True)
    with pytest.raises(ValueError, match="spatial_average.*compile=True"):
        sampler(model, x, sigmas, spatial_average=True, compile=True)
    with pytest.raises(TypeError, match="spatial_average must be a bool"):
        sampler(model, x, sigmas, spatial_average="yes")
    with pytest.raises(ValueError, match="one block position"):
        sampler(model, torch.randn(1, 3, 8, 8), sigmas, spatial_average=True)
    with pytest.raises(ValueError, match="global DCT"):
        averaged_step(_context(model, x, "reference"), x, 0, 1.0, 0.5, eta=0.0, basis="dct", block=8,
                      channel_average=True, c_max=1.0, tile=8)
    with pytest.raises(ValueError, match="spatial_average.*images"):
        sampler(model, torch.randn(2, 8), sigmas, basis="identity", channel_average=False, spatial_average=True)
