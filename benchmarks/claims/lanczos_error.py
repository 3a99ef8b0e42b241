"""Error of the package's Lanczos square root against the exact ``S^1/2 xi`` (claim 7 of docs/claims.md).

One LGS step (eta = 1) from sigma_t to sigma_s needs ``S^1/2 xi`` with ``S = up^2 I + s^2 J``. On a Gaussian
oracle J is exact and linear, so the exact draw is known in the oracle's eigenbasis, and the k-step draw
``|xi| Q_k sqrt(T_S) e_1`` comes from the package's own ops (``covkernels.ops.lanczos.reference``) with
``J v`` obtained from the oracle denoiser itself (``D(mu + v) - D(mu)``, exact for a linear denoiser).

A bound derived here (no citation needed, it is two lines). Let ``[a, b]`` hold the spectrum of S,
``c = (a + b)/2``, ``q = (b - a)/(b + a)``. On ``[a, b]``, ``sqrt(x) = sqrt(c) sum_j binom(1/2, j) z^j`` with
``z = (x - c)/c``, ``|z| <= q < 1``, and ``|binom(1/2, j)| <= 1/2`` for j >= 1, so the degree-(k-1) Taylor
polynomial is within ``sqrt(c) q^k / (2 (1 - q))`` of sqrt on [a, b]. Lanczos reproduces ``p(S) xi`` exactly
for every polynomial p of degree < k and its Ritz values lie in [a, b], so (exact arithmetic)
``|y_k - S^1/2 xi| <= 2 |xi| min_p max_[a,b] |sqrt - p| <= |xi| sqrt(c) q^k / (1 - q)``.
For the DDPM step ``kappa = b/a <= 1 + s^2/up^2 = sigma_t^2 / sigma_s^2`` (J has eigenvalues in [0, 1] on
Gaussian data), hence ``q <= (sigma_t^2 - sigma_s^2)/(sigma_t^2 + sigma_s^2)``: a geometric rate set by the
step ratio alone, whatever d or the spectrum. The Chebyshev rate ``(sqrt(kappa) - 1)/(sqrt(kappa) + 1)`` is the
sharper classical one; both are reported beside the measured rate.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from covkernels.models import SpectralGaussian
from covkernels.ops.dct.reference import analysis, synthesis
from covkernels.ops.lanczos.reference import krylov_sqrt_e1, lanczos_update

F64 = torch.float64
ROUNDING_FLOOR = 1e-12  # relative errors below this are float64 rounding, left out of rate fits


def power_law_oracle(size: int = 32, exponent: float = 2.0, std: float = 0.5) -> SpectralGaussian:
    """Zero-mean stationary Gaussian on ``(1, size, size)`` images with DCT power ``~ (1 + |f|^2)^(-exponent/2)``
    (natural images: about 1/f^2), per-pixel std ``std``."""
    fu = torch.arange(size, dtype=F64).view(-1, 1)
    fv = torch.arange(size, dtype=F64).view(1, -1)
    power = (1.0 + fu ** 2 + fv ** 2) ** (-exponent / 2)
    power = power * (std ** 2 * size * size / power.sum())
    return SpectralGaussian(torch.zeros(1, size, size, dtype=F64), power.unsqueeze(0), basis="dct")


def lanczos_sqrt(matvec, xi: torch.Tensor, k: int, shift: float, scale: float) -> torch.Tensor:
    """The package's k-step draw ``|xi| Q_k sqrt(shift I + scale^2 T_J) e_1`` for ``S = shift I + scale^2 J``,
    ``xi (B, ...)``; ``matvec(v) = J v``."""
    norm = xi.flatten(1).norm(dim=1)
    basis = torch.zeros(k, *xi.shape, dtype=F64)
    basis[0] = xi / norm.view(-1, *([1] * (xi.dim() - 1)))
    hs, betas = [], []
    for j in range(k):
        h, beta = lanczos_update(matvec(basis[j]), basis, j)
        hs.append(h)
        betas.append(beta)
    g = krylov_sqrt_e1(hs, betas, shift=shift, scale=scale, c_max=None) * norm.unsqueeze(-1)
    return torch.einsum("bk,kb...->b...", g, basis)


def exact_sqrt(oracle: SpectralGaussian, xi: torch.Tensor, sigma_t: float, shift: float, scale: float):
    """``S^1/2 xi`` in the oracle's eigenbasis, and the extreme eigenvalues ``(a, b)`` of S."""
    gain = oracle.jacobian_coefficients(sigma_t)
    eig = shift + scale ** 2 * gain
    root = synthesis(analysis(xi, oracle.basis) * eig.sqrt(), oracle.basis)
    return root, float(eig.min()), float(eig.max())


def derived_bound(a: float, b: float, k: int) -> float:
    """``|y_k - S^1/2 xi| / |xi| <= sqrt(c) q^k / (1 - q)`` (module docstring)."""
    c, q = 0.5 * (a + b), (b - a) / (b + a)
    return math.sqrt(c) * q ** k / (1.0 - q)


def rates(a: float, b: float) -> dict:
    kappa = b / a
    return {"kappa": kappa, "taylor_q": (kappa - 1) / (kappa + 1),
            "chebyshev": (math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1)}


def step_errors(oracle: SpectralGaussian, sigma_t: float, sigma_s: float, ks: list[int], draws: int,
                generator: torch.Generator) -> dict:
    """Relative errors ``|y_k - S^1/2 xi| / |S^1/2 xi|`` ``(draws, len(ks))`` of one eta = 1 step, the
    derived bound (relative to ``|xi|``) per k, and the spectrum's rates."""
    from pathkl import step_coefficients  # noqa: PLC0415 (same folder, on sys.path in run.py and the tests)

    _, s, up = step_coefficients(sigma_t, sigma_s)
    xi = torch.randn(draws, *oracle.event_shape, generator=generator, dtype=F64)
    exact, a, b = exact_sqrt(oracle, xi, sigma_t, up ** 2, s)
    mu = oracle.mean.unsqueeze(0)
    base = oracle(mu, sigma_t)

    def matvec(v):  # J v from the (linear) oracle denoiser
        return oracle(mu + v, sigma_t) - base

    err = torch.empty(draws, len(ks), dtype=F64)
    abs_err = torch.empty(draws, len(ks), dtype=F64)
    for i, k in enumerate(ks):
        diff = (lanczos_sqrt(matvec, xi, k, up ** 2, s) - exact).flatten(1).norm(dim=1)
        err[:, i] = diff / exact.flatten(1).norm(dim=1)
        abs_err[:, i] = diff / xi.flatten(1).norm(dim=1)
    return {"relative_error": err, "error_per_norm_xi": abs_err, "bound_per_norm_xi":
            [derived_bound(a, b, k) for k in ks], "spectrum": [a, b], **rates(a, b)}


def fitted_rate(ks: list[int], errors: torch.Tensor) -> float:
    """Geometric rate ``exp(slope)`` of ``log(error)`` against k, on the k's above the rounding floor (at least
    two; ``nan`` when fewer)."""
    keep = errors > ROUNDING_FLOOR
    if int(keep.sum()) < 2:
        return float("nan")
    x = np.asarray(ks, dtype=float)[keep.numpy()]
    y = np.log(errors[keep].numpy())
    return float(math.exp(np.polyfit(x, y, 1)[0]))
