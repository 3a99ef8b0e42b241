"""Reference ops against explicit float64 matrices: Hutchinson estimate, structured noise, Lanczos."""
from __future__ import annotations

import pytest
import torch

from helpers import gen, spd_matrix
from covkernels.ops.dct import reference as dct
from covkernels.ops.lanczos import reference as lz
from covkernels.ops.noise import reference as nz
from covkernels.ops.rng.reference import STREAM_NOISE, philox_normal

SHAPE = (2, 3, 8, 8)


def basis_matrix(basis, h=8, w=8, block=4):
    """Dense (HW, HW) orthonormal F of a basis, built by transforming the identity."""
    eye = torch.eye(h * w, dtype=torch.float64).view(h * w, 1, h, w)
    return dct.analysis(eye, basis, block).view(h * w, h * w).T


@pytest.mark.parametrize("basis", dct.BASES)
def test_hutchinson_is_exact_for_a_diagonal_jacobian(basis):
    """One Rademacher probe recovers diag(c) exactly when J = F^T diag(c) F (z^2 = 1)."""
    f = basis_matrix(basis)
    c_true = torch.rand(SHAPE[1:], generator=gen(1), dtype=torch.float64) * 0.9
    z = nz.probe(3, SHAPE, sample_offset=0, step=0, dtype=torch.float64)
    v = nz.probe_tangent(3, SHAPE, sample_offset=0, step=0, basis=basis, block=4, dtype=torch.float64)
    torch.testing.assert_close(v.flatten(2), z.flatten(2) @ f)  # v = F^T z
    jv = ((v.flatten(2) @ f.T) * c_true.flatten(1)) @ f  # J v with J = F^T diag(c) F
    fjv = dct.analysis(jv.view(SHAPE), basis, 4)
    c = nz.hutchinson_coefficients(z[None], fjv[None], channel_average=False, c_max=None)
    torch.testing.assert_close(c, c_true.expand(SHAPE))
    c_avg = nz.hutchinson_coefficients(z[None], fjv[None], channel_average=True, c_max=None)
    torch.testing.assert_close(c_avg, c_true.mean(0, keepdim=True).expand(2, 1, 8, 8))


def test_hutchinson_averages_probes_and_clamps():
    z = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1, 1).expand(2, 1, 2, 1, 2)
    fjv = torch.tensor([[0.5, -3.0], [-0.9, 2.0]]).view(1, 1, 2, 1, 2).expand(2, 1, 2, 1, 2) * z
    c = nz.hutchinson_coefficients(z, fjv, channel_average=False, c_max=1.0)
    torch.testing.assert_close(c, torch.tensor([[0.5, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2))


@pytest.mark.parametrize("basis", dct.BASES)
def test_structured_noise_has_the_explicit_covariance(basis):
    """x = m + F^T sqrt(s_up^2 + s^2 c) xi is linear in xi: its matrix M must satisfy
    M M^T = F^T diag(s_up^2 + s^2 c) F, the explicit step covariance."""
    f = basis_matrix(basis)
    c = torch.rand(1, 1, 8, 8, generator=gen(2), dtype=torch.float64)
    s_up, s = 0.3, 1.7
    xi = torch.eye(64, dtype=torch.float64).view(64, 1, 8, 8)
    cols = nz.structured_noise(torch.zeros(64, 1, 8, 8, dtype=torch.float64), c.expand(64, 1, 8, 8), xi,
                               sigma_up=s_up, scale=s, basis=basis, block=4)
    m = cols.view(64, 64).T
    cov = f.T @ torch.diag(s_up ** 2 + s ** 2 * c.flatten()) @ f
    torch.testing.assert_close(m @ m.T, cov)


def test_structured_step_composes_the_pieces():
    x = torch.randn(SHAPE, generator=gen(4), dtype=torch.float64)
    den = torch.randn(SHAPE, generator=gen(5), dtype=torch.float64)
    jv = torch.randn(2, *SHAPE, generator=gen(6), dtype=torch.float64)
    kw = dict(sample_offset=3, step=1)
    out = nz.structured_step(den, x, jv, 9, sigma_t=2.0, sigma_down=0.5, sigma_up=0.4, basis="convdct", block=4,
                             channel_average=True, c_max=0.8, **kw)
    z = torch.stack([nz.probe(9, SHAPE, index=p, dtype=torch.float64, **kw) for p in range(2)])
    c = (z * dct.block_dct2(jv, 4)).mean(0).mean(1, keepdim=True).clamp(0, 0.8)
    xi = philox_normal(9, SHAPE, stream=STREAM_NOISE, dtype=torch.float64, **kw)
    expected = den + 0.25 * (x - den) + dct.block_idct2((0.4 ** 2 + 1.5 ** 2 * c).sqrt() * xi, 4)
    torch.testing.assert_close(out, expected)


def run_lanczos(a, xi, k, reorth=True, ops=lz):
    """Drive the ops with an explicit matrix A ((d, d), per sample identical), start xi (B, d)."""
    xi_norm = xi.norm(dim=1)
    basis = torch.zeros((k,) + tuple(xi.shape), dtype=xi.dtype)
    basis[0] = xi / xi_norm[:, None]
    hs, betas = [], []
    for j in range(k):
        h, beta = ops.lanczos_update(basis[j] @ a.T, basis, j, reorthogonalize=reorth)
        hs.append(h)
        betas.append(beta)
    return basis, hs, betas, xi_norm


def synthesize(basis, g, xi_norm):
    zeros = torch.zeros_like(basis[0])
    return lz.lanczos_synthesis(zeros, zeros, basis, g, xi_norm, sigma_t=1.0, sigma_down=0.0)


def sqrtm(m):
    evals, evecs = torch.linalg.eigh(m)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def test_lanczos_full_krylov_reproduces_the_matrix_square_root():
    d = 12
    a = spd_matrix(d, seed=8) * 0.4
    xi = torch.randn(3, d, generator=gen(9), dtype=torch.float64)
    basis, hs, betas, xi_norm = run_lanczos(a, xi, d)
    q = basis.permute(1, 2, 0)  # (B, d, k)
    torch.testing.assert_close(q.transpose(1, 2) @ q, torch.eye(d, dtype=torch.float64).expand(3, d, d))
    t = lz.krylov_matrix(hs, betas[:-1])
    torch.testing.assert_close(q.transpose(1, 2) @ a @ q, t)
    off = t - torch.diag_embed(t.diagonal(dim1=1, dim2=2))
    assert float(off.abs().triu(2).max()) < 1e-10  # symmetric J: the projection is tridiagonal
    shift, scale = 0.25, 1.5
    y = synthesize(basis, lz.krylov_sqrt_e1(hs, betas[:-1], shift=shift, scale=scale), xi_norm)
    torch.testing.assert_close(y, xi @ sqrtm(shift * torch.eye(d, dtype=torch.float64) + scale ** 2 * a).T)


def test_lanczos_uses_the_symmetric_part_of_a_non_symmetric_jacobian():
    """Trained networks (and finite differences) have non-symmetric J; the covariance uses sym(J)."""
    d = 10
    sym = spd_matrix(d, seed=1) * 0.4
    skew = torch.randn(d, d, generator=gen(2), dtype=torch.float64)
    a = sym + 0.3 * (skew - skew.T)
    xi = torch.randn(2, d, generator=gen(3), dtype=torch.float64)
    basis, hs, betas, xi_norm = run_lanczos(a, xi, d)
    q = basis.permute(1, 2, 0)
    torch.testing.assert_close(lz.krylov_matrix(hs, betas[:-1]), q.transpose(1, 2) @ sym @ q)
    y = synthesize(basis, lz.krylov_sqrt_e1(hs, betas[:-1], shift=0.1, scale=1.0), xi_norm)
    torch.testing.assert_close(y, xi @ sqrtm(0.1 * torch.eye(d, dtype=torch.float64) + sym).T)


def test_lanczos_one_step_is_the_rayleigh_quotient():
    a = spd_matrix(6, seed=1)
    xi = torch.randn(2, 6, generator=gen(2), dtype=torch.float64)
    basis, hs, betas, xi_norm = run_lanczos(a, xi, 1)
    rq = ((xi @ a) * xi).sum(1) / (xi * xi).sum(1)
    torch.testing.assert_close(hs[0][:, 0], rq)
    g = lz.krylov_sqrt_e1(hs, [], shift=0.1, scale=2.0)
    torch.testing.assert_close(g[:, 0], (0.1 + 4.0 * rq).sqrt())


@pytest.mark.parametrize("a_kind", ["zero", "identity"])
def test_lanczos_breakdown_gives_zero_beta_and_vector(a_kind):
    d = 5
    a = torch.zeros(d, d, dtype=torch.float64) if a_kind == "zero" else torch.eye(d, dtype=torch.float64)
    xi = torch.randn(2, d, generator=gen(3), dtype=torch.float64)
    basis, hs, betas, xi_norm = run_lanczos(a, xi, 3)
    assert all(torch.equal(b, torch.zeros_like(b)) for b in betas)
    assert torch.equal(basis[1:], torch.zeros_like(basis[1:]))
    y = synthesize(basis, lz.krylov_sqrt_e1(hs, betas[:-1], shift=0.09, scale=1.0), xi_norm)
    expected_std = 0.3 if a_kind == "zero" else (0.09 + 1.0) ** 0.5
    torch.testing.assert_close(y, expected_std * xi)


def test_ritz_values_are_clamped():
    """An indefinite operator must not give imaginary noise: Ritz values are clamped to [0, c_max]."""
    hs = [torch.tensor([[-2.0]], dtype=torch.float64), torch.tensor([[0.0, 3.0]], dtype=torch.float64)]
    betas = [torch.zeros(1, dtype=torch.float64)]
    g = lz.krylov_sqrt_e1(hs, betas, shift=0.04, scale=1.0)
    torch.testing.assert_close(g, torch.tensor([[0.2, 0.0]], dtype=torch.float64))
    g = lz.krylov_sqrt_e1(hs[:1], [], shift=0.0, scale=1.0, c_max=1.0)
    torch.testing.assert_close(g, torch.tensor([[0.0]], dtype=torch.float64))
    g = lz.krylov_sqrt_e1([torch.tensor([[3.0]], dtype=torch.float64)], [], shift=0.0, scale=1.0, c_max=1.0)
    torch.testing.assert_close(g, torch.tensor([[1.0]], dtype=torch.float64))
