"""Path-space KL of DDPM chains with approximate reverse covariances (claim 6 of docs/claims.md).

The chain is the eta = 1 (DDPM) chain of docs/design.md on a decreasing sigma grid ``sigma_0 > ... > sigma_T``
with ``sigma_T > 0``: all T steps inject noise (a last step to sigma = 0 would return the mean, a point mass,
and make every KL infinite). Its true reverse transition given ``x_t`` has mean ``m`` and covariance
``S = sigma_up^2 I + s^2 J`` with ``s = sigma_t - sigma_down`` and ``J`` the exact Tweedie Jacobian, so a
sampler differs from the truth only in the Gaussian it puts there: ``N(m, V)``. The path KL
``KL(true chain || sampler chain)`` minus the common first-step term is
``sum_steps E_{x_t ~ p_t}[ KL(p(x_s | x_t) || N(m, V)) ]``.

Two identities do the work:

* Gaussian data: ``p(x_s | x_t) = N(m, S)`` exactly and does not depend on ``x_t`` except through a linear
  mean, so the path KL is a closed form (:func:`gaussian_path_kl`); ``V = S`` gives 0 at any T.
* Any data: ``N(m, S)`` is the moment projection of ``p(x_s | x_t)`` and ``log N(y; m, V)`` is quadratic, so
  ``KL(p || N(m, V)) = KL(p || N(m, S)) + KL(N(m, S) || N(m, V))``: a non-Gaussianity *gap* shared by every
  sampler, plus a closed-form Gaussian KL that is the sampler's own.

For a mixture whose components share one covariance, the transition is a mixture of Gaussians with one shared
covariance ``S_c`` and means ``m_k``; after whitening by ``S_c`` it differs from its moment projection only in
the span of the ``K - 1`` whitened mean offsets, so the gap is a ``(K-1)``-dimensional integral, done here by
tensor Gauss-Hermite quadrature (:func:`gap_quadrature`). Plain Monte Carlo over the mixture
(:func:`gap_monte_carlo`) is unbiased but its relative error is about ``sqrt(2 / (M * KL))`` for M draws, i.e.
useless once the per-step gap is 1e-8; it is kept as the check of the quadrature. The outer expectation over
``x_t`` is Monte Carlo in both cases.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from covkernels.models import GaussianMixture
from covkernels.ops.dct.reference import analysis, synthesis
from covkernels.steps import ancestral_split

F64 = torch.float64


def loglog_slope(steps, values) -> float:
    """Least-squares slope of ``log(values)`` against ``log(steps)`` (the order of a power law)."""
    x = np.log(np.asarray(steps, dtype=float))
    y = np.log(np.asarray(values, dtype=float))
    return float(np.polyfit(x, y, 1)[0])


def karras_grid(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """``steps + 1`` sigmas from sigma_max down to sigma_min (covkernels.schedules.karras_sigmas' formula, in
    float64 and without the final 0)."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [(hi + i / steps * (lo - hi)) ** rho for i in range(steps + 1)]


def step_coefficients(sigma_t: float, sigma_s: float) -> tuple[float, float, float]:
    """``(r, s, up)`` of the eta = 1 step: mean ``m = D + r (x_t - D)``, ``S = up^2 I + s^2 J``."""
    down, up = ancestral_split(sigma_t, sigma_s, 1.0)
    return down / sigma_t, sigma_t - down, up


def basis_matrix(shape: tuple, basis: str) -> torch.Tensor:
    """Orthonormal ``F (d, d)`` with ``F x = analysis(x)`` for images of ``shape (C, H, W)``."""
    d = math.prod(shape)
    return analysis(torch.eye(d, dtype=F64).view(d, *shape), basis).reshape(d, d).T.contiguous()


def gauss_kl(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``KL(N(0, S) || N(0, V))`` for batches of SPD ``(..., d, d)``: ``0.5 sum(1/nu - 1 + log nu)`` over the
    eigenvalues ``nu`` of ``L^-1 V L^-T`` (``S = L L^T``), in a form that keeps its precision as ``nu -> 1``."""
    chol = torch.linalg.cholesky(s)
    a = torch.linalg.solve_triangular(chol, v, upper=False)
    a = torch.linalg.solve_triangular(chol, a.transpose(-1, -2), upper=False)
    nu = torch.linalg.eigvalsh(0.5 * (a + a.transpose(-1, -2)))
    if bool((nu <= 0).any()):
        raise ValueError("sampler covariance V is not positive definite")
    delta = nu - 1.0
    return 0.5 * (torch.log1p(delta) - delta / nu).sum(-1)


# ----------------------------------------------------------------------------------------------------------
# Gaussian data: closed form

def gaussian_transition(mean: torch.Tensor, cov: torch.Tensor, sigma_t: float, sigma_s: float):
    """Exact ``p(x_s | x_t) = N(A x_t + b, S)`` for ``x0 ~ N(mean, cov)`` by Bayes on the joint Gaussian of
    ``(x_s, x_t)`` (independent of the Tweedie formulas it checks). Returns ``(A, b, S)``."""
    eye = torch.eye(cov.shape[0], dtype=F64)
    c_ss, c_tt = cov + sigma_s ** 2 * eye, cov + sigma_t ** 2 * eye
    gain = torch.linalg.solve(c_tt, c_ss).T  # Cov(x_s, x_t) Cov(x_t)^-1, Cov(x_s, x_t) = Cov(x_s)
    s = c_ss - gain @ c_ss
    return gain, mean - gain @ mean, 0.5 * (s + s.T)


def linear_map(model, d: int, shape: tuple, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, c)`` with ``model(x) = M x + c`` for an affine (Gaussian-oracle) denoiser, read off basis vectors."""
    eye = torch.cat([torch.zeros(1, d, dtype=F64), torch.eye(d, dtype=F64)])
    out = model(eye.view(d + 1, *shape), sigma).reshape(d + 1, d)
    return (out[1:] - out[:1]).T, out[0]


def gaussian_path_kl(model, covariances: dict, sigmas: list[float]) -> dict[str, float]:
    """``sum_steps E_{x_t}[KL(p(x_s|x_t) || N(m, V))]`` in closed form for a package Gaussian oracle ``model``
    (``model.mean``, dense ``model.cov`` or ``covariance()``). ``covariances[name](S, J, s, up) -> V``.
    The sampler mean ``m = D + r (x_t - D)`` uses the oracle ``D`` itself, so a mean error (there is none)
    would show up too: ``E[KL] = KL(S || V) + 0.5 E[dm^T V^-1 dm]`` with ``dm`` affine in ``x_t``."""
    shape, mean = tuple(model.event_shape), model.mean.flatten()
    cov = model.cov if hasattr(model, "cov") else model.covariance()
    d = mean.numel()
    total = dict.fromkeys(covariances, 0.0)
    for sigma_t, sigma_s in zip(sigmas[:-1], sigmas[1:]):
        r, s, up = step_coefficients(sigma_t, sigma_s)
        a_true, b_true, s_true = gaussian_transition(mean, cov, sigma_t, sigma_s)
        m_d, c_d = linear_map(model, d, shape, sigma_t)
        jac = 0.5 * (m_d + m_d.T)
        a_smp = (1 - r) * m_d + r * torch.eye(d, dtype=F64)
        da, db = a_smp - a_true, (1 - r) * c_d - b_true
        cov_t = cov + sigma_t ** 2 * torch.eye(d, dtype=F64)
        s_model = up ** 2 * torch.eye(d, dtype=F64) + s ** 2 * jac
        for name, make in covariances.items():
            v = make(s_model, jac, s, up)
            vinv = torch.linalg.inv(v)
            off = da @ mean + db
            mean_term = 0.5 * (torch.trace(vinv @ da @ cov_t @ da.T) + off @ vinv @ off)
            total[name] += float(gauss_kl(s_true, v) + mean_term)
    return total


# ----------------------------------------------------------------------------------------------------------
# Shared-covariance Gaussian mixture: dense form of the package oracle

class SharedMixture:
    """Dense float64 view of a package :class:`GaussianMixture` whose components share one spectrum:
    ``x0 ~ sum_k pi_k N(mu_k, C)``, ``C = F^T diag(p) F``. Holds what the transitions need."""

    def __init__(self, oracle: GaussianMixture):
        spectra = oracle.spectra
        if not torch.allclose(spectra, spectra[:1].expand_as(spectra)):
            raise ValueError("SharedMixture needs components with one shared spectrum")
        self.oracle, self.shape = oracle, tuple(oracle.event_shape)
        self.means = oracle.means.flatten(1)  # (K, d)
        self.log_weights = oracle.log_weights
        self.basis = basis_matrix(self.shape, oracle.basis)  # rows: eigenvectors of C
        self.spectrum = spectra[0].flatten()
        self.d, self.k = self.means.shape[1], self.means.shape[0]

    def sample_noisy(self, n: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
        """``x_t = x0 + sigma n`` ``(n, d)`` drawn from the forward process."""
        comp = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        coef = torch.randn(n, self.d, generator=generator, dtype=F64) * self.spectrum.sqrt()
        x0 = self.means[comp] + coef @ self.basis
        return x0 + sigma * torch.randn(n, self.d, generator=generator, dtype=F64)

    def transition(self, x: torch.Tensor, sigma_t: float, sigma_s: float) -> dict:
        """The exact reverse transition at ``x (n, d)``: mixture weights ``w (n, K)``, component means
        ``mk (n, K, d)``, shared covariance ``sc (d, d)``, moments ``m (n, d)``, ``S (n, d, d)``, the exact
        Jacobian ``J (n, d, d)`` of the mixture denoiser and the step's ``(r, s, up)``."""
        r, s, up = step_coefficients(sigma_t, sigma_s)
        gain = self.spectrum / (self.spectrum + sigma_t ** 2)
        jac_c = (self.basis.T * gain) @ self.basis
        resid = x.unsqueeze(1) - self.means.unsqueeze(0)  # (n, K, d)
        quad = ((resid @ self.basis.T) ** 2 / (self.spectrum + sigma_t ** 2)).sum(-1)
        log_w = torch.log_softmax(self.log_weights - 0.5 * quad, dim=1)
        a = self.means.unsqueeze(0) + resid @ jac_c  # component posterior means (jac_c symmetric)
        mk = a + r * (x.unsqueeze(1) - a)
        w = log_w.exp()
        m = (w.unsqueeze(-1) * mk).sum(1)
        dev = mk - m.unsqueeze(1)
        sc = up ** 2 * torch.eye(self.d, dtype=F64) + s ** 2 * jac_c
        big_s = sc + torch.einsum("nk,nki,nkj->nij", w, dev, dev)
        return {"w": w, "log_w": log_w, "mk": mk, "sc": sc, "m": m, "S": big_s,
                "J": (big_s - up ** 2 * torch.eye(self.d, dtype=F64)) / s ** 2, "r": r, "s": s, "up": up,
                "sc_evals": up ** 2 + s ** 2 * gain}


def hermite_rule(order: int, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor Gauss-Hermite rule for ``E_{N(0, I_dims)}[f]``: nodes ``(order^dims, dims)``, weights summing to 1."""
    t, w = np.polynomial.hermite.hermgauss(order)
    nodes = torch.cartesian_prod(*[torch.as_tensor(t * math.sqrt(2.0))] * dims).reshape(-1, dims)
    weights = torch.cartesian_prod(*[torch.as_tensor(w / math.sqrt(math.pi))] * dims).reshape(-1, dims)
    return nodes.to(F64), weights.prod(-1).to(F64)


def gap_quadrature(mix: SharedMixture, tr: dict, order: int = 12) -> torch.Tensor:
    """``KL(p(x_s|x_t) || N(m, S))`` per point ``(n,)`` by Gauss-Hermite quadrature in the span of the whitened
    component offsets ``b_k = S_c^-1/2 (m_k - m)`` (``K - 1`` dims); outside it p and N(m, S) coincide."""
    if mix.k == 1:  # one component: the transition is Gaussian
        return torch.zeros(tr["m"].shape[0], dtype=F64)
    white = (mix.basis.T * tr["sc_evals"].rsqrt()) @ mix.basis  # S_c^-1/2
    b = (tr["mk"] - tr["m"].unsqueeze(1)) @ white  # (n, K, d)
    dims = mix.k - 1
    u, _, _ = torch.linalg.svd(b.transpose(1, 2), full_matrices=False)
    beta = b @ u[..., :dims]  # (n, K, dims): offsets in an orthonormal basis of their span
    w, log_w = tr["w"], tr["log_w"]
    cov_q = torch.eye(dims, dtype=F64) + torch.einsum("nk,nki,nkj->nij", w, beta, beta)
    chol_q = torch.linalg.cholesky(cov_q)
    logdet_q = 2 * torch.log(torch.diagonal(chol_q, dim1=-2, dim2=-1)).sum(-1)
    nodes, weights = hermite_rule(order, dims)
    total = torch.zeros(b.shape[0], dtype=F64)
    for k in range(mix.k):  # E_{N(beta_k, I)}[log p - log q], weighted by w_k
        pts = beta[:, k:k + 1, :] + nodes.unsqueeze(0)  # (n, Q, dims)
        log_p = torch.logsumexp(log_w.unsqueeze(1) - 0.5 * ((pts.unsqueeze(2) - beta.unsqueeze(1)) ** 2).sum(-1), 2)
        sol = torch.cholesky_solve(pts.transpose(1, 2), chol_q)  # (n, dims, Q)
        log_q = -0.5 * (pts.transpose(1, 2) * sol).sum(1) - 0.5 * logdet_q.unsqueeze(1)
        total = total + w[:, k] * ((log_p - log_q) * weights).sum(1)
    return total


def gap_monte_carlo(mix: SharedMixture, tr: dict, draws: int, generator: torch.Generator) -> torch.Tensor:
    """The same gap per point ``(n,)`` by plain Monte Carlo over the mixture in all d dims: ``draws`` samples
    ``y ~ p(x_s|x_t)`` per point, mean of ``log p(y) - log N(y; m, S)`` (unbiased; for checks)."""
    n, d = tr["m"].shape
    comp = torch.multinomial(tr["w"], draws, replacement=True, generator=generator)  # (n, draws)
    chol_c = torch.linalg.cholesky(tr["sc"])
    y = torch.gather(tr["mk"], 1, comp.unsqueeze(-1).expand(n, draws, d))
    y = y + torch.randn(n, draws, d, generator=generator, dtype=F64) @ chol_c.T
    dev = y.unsqueeze(2) - tr["mk"].unsqueeze(1)  # (n, draws, K, d)
    quad_c = (torch.linalg.solve_triangular(chol_c, dev.reshape(-1, d).T, upper=False) ** 2).sum(0)
    log_p = torch.logsumexp(tr["log_w"].unsqueeze(1) - 0.5 * quad_c.view(n, draws, -1), 2) \
        - torch.log(torch.diagonal(chol_c)).sum()
    chol_s = torch.linalg.cholesky(tr["S"])
    z = torch.linalg.solve_triangular(chol_s, (y - tr["m"].unsqueeze(1)).transpose(1, 2), upper=False)
    log_q = -0.5 * (z ** 2).sum(1) - torch.log(torch.diagonal(chol_s, dim1=-2, dim2=-1)).sum(-1, keepdim=True)
    return (log_p - log_q).mean(1)


def mixture_path_kl(mix: SharedMixture, sigmas: list[float], names: list[str], points: int,
                    generator: torch.Generator, *, order: int = 12, directions: int = 16) -> dict:
    """Monte Carlo estimate of ``sum_steps E_{x_t ~ p_t}[KL(p(x_s|x_t) || N(m, V_name))]`` over the eta = 1
    chain on ``sigmas``: ``points`` fresh forward-process draws of ``x_t`` per step (shared by all samplers:
    common random numbers), the gap by quadrature, the Gaussian part in closed form. Returns
    ``{"gap": total, name: total, ...}`` (the samplers' totals include the gap)."""
    from covariances import sampler_covariance  # noqa: PLC0415 (same folder, on sys.path in run.py and the tests)

    dct = basis_matrix(mix.shape, "dct")
    totals = dict.fromkeys(["gap", *names], 0.0)
    for sigma_t, sigma_s in zip(sigmas[:-1], sigmas[1:]):
        x = mix.sample_noisy(points, sigma_t, generator)
        tr = mix.transition(x, sigma_t, sigma_s)
        gap = float(gap_quadrature(mix, tr, order).mean())
        totals["gap"] += gap
        for name in names:
            v = sampler_covariance(name, tr["S"], tr["J"], tr["s"], tr["up"], dct=dct, generator=generator,
                                   directions=directions)
            totals[name] += gap + float(gauss_kl(tr["S"], v).mean())
    return totals


def claim_mixture(shape: tuple = (1, 4, 4), components: int = 3, seed: int = 0, separation: float = 1.5,
                  std: float = 0.25, exponent: float = 2.0) -> GaussianMixture:
    """The package oracle of claim 6: ``components`` images of ``shape`` with means drawn from ``seed``
    (``separation * N(0, I) / sqrt(d)``: norms about ``separation``, distances about ``separation * sqrt(2)``)
    and one shared power-law DCT spectrum ``p(f) ~ (1 + |f|^2)^(-exponent/2)`` with per-pixel std ``std``
    (natural images: power falling about like 1/f^2). Unequal weights 0.5, 0.3, 0.2, ...."""
    gen = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    means = separation * torch.randn(components, *shape, generator=gen, dtype=F64) / math.sqrt(d)
    fu = torch.arange(shape[1], dtype=F64).view(-1, 1)
    fv = torch.arange(shape[2], dtype=F64).view(1, -1)
    power = (1.0 + fu ** 2 + fv ** 2) ** (-exponent / 2)
    power = (power * (std ** 2 * d / power.sum())).expand(*shape)
    weights = torch.tensor([0.5, 0.3, 0.2, 0.1, 0.05][:components], dtype=F64)
    return GaussianMixture(means, power.expand(components, *shape).clone(), weights, basis="dct")
