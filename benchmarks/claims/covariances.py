"""The reverse-step covariance ``V`` each sampler of claim 6 puts on ``N(m, V)``, from the exact step
quantities: the true ``S = up^2 I + s^2 J`` and the exact (symmetric) Jacobian ``J``, batched ``(..., d, d)``.

What a sampler with these estimators would use at one step (docs/design.md, section 2), with the exact J
standing in for the model's JVPs:

* ``ddpm_iso``: ``up^2 I`` (ancestral DDPM, the mean-only sampler);
* ``iso_best``: ``tr(S)/d I``, the best isotropic Gaussian (it minimises ``KL(N(m,S) || N(m, v I))`` over v);
* ``diag_pixel`` / ``diag_dct``: ``up^2 I + s^2 F^T diag(c) F`` with the exact ``c = diag(F J F^T)`` (what
  infinitely many Hutchinson probes estimate), pixel basis / orthonormal DCT;
* ``hutch_pixel`` / ``hutch_dct``: the same with ONE Rademacher probe ``z``, ``c = z * (F J F^T z)`` clamped
  to ``[0, 1]`` (``diag_hutchinson`` with probes=1 / ``cov_ddim`` with the dct basis, their default c_max);
  the probe is part of the sampler's randomness, so the KL is averaged over it too;
* ``lanczos_k1``: the second-moment Gaussian of the k = 1 Lanczos draw, closed form (see below);
* ``lanczos_k<j>``: the second-moment Gaussian of the package's k-step Lanczos draw, Monte Carlo;
* ``full``: ``S`` itself (LGS with exact arithmetic and k = d).

A Lanczos draw ``y = |xi| Q_k sqrt(T_S) e_1`` is not Gaussian for k < d (Q depends on xi); claim 6 compares
Gaussian transitions, so it stands in as ``N(m, E[y y^T])``, the Gaussian with its own second moment.
"""
from __future__ import annotations

import torch

from covkernels.ops.lanczos.reference import krylov_sqrt_e1, lanczos_update

F64 = torch.float64
HUTCHINSON_C_MAX = 1.0


def _eye_like(s: torch.Tensor) -> torch.Tensor:
    return torch.eye(s.shape[-1], dtype=s.dtype).expand_as(s)


def diagonal_in(basis: torch.Tensor, j: torch.Tensor, probe: torch.Tensor | None) -> torch.Tensor:
    """``c`` with ``J ~ F^T diag(c) F``: the exact diagonal of ``F J F^T`` (probe None) or the one-probe
    Hutchinson estimate ``z * (F J F^T z)`` clamped to ``[0, HUTCHINSON_C_MAX]``."""
    jf = basis @ j @ basis.T
    if probe is None:
        return torch.diagonal(jf, dim1=-2, dim2=-1)
    return (probe * (jf @ probe.unsqueeze(-1)).squeeze(-1)).clamp(0.0, HUTCHINSON_C_MAX)


def lanczos_k1_covariance(j: torch.Tensor, s: float, up: float) -> torch.Tensor:
    """``E[y y^T]`` of the k = 1 draw ``y = sqrt(up^2 + s^2 rho) xi``, ``rho = u^T J u`` (``u = xi/|xi|``,
    independent of |xi|, ``E|xi|^2 = d``): with ``E[(u^T J u) u u^T] = (2J + tr(J) I) / (d (d + 2))`` for
    u uniform on the sphere, ``E[y y^T] = up^2 I + s^2 (2 J + tr(J) I) / (d + 2)``."""
    d = j.shape[-1]
    tr = torch.diagonal(j, dim1=-2, dim2=-1).sum(-1)[..., None, None]
    return up ** 2 * _eye_like(j) + s ** 2 * (2 * j + tr * _eye_like(j)) / (d + 2)


def lanczos_draw(j: torch.Tensor, u: torch.Tensor, k: int, s: float, up: float) -> torch.Tensor:
    """The package's Lanczos draw (``covkernels.ops.lanczos.reference``, full reorthogonalisation, Ritz values
    clamped at 0 only) for unit start vectors ``u (n, M, d)`` and per-point ``J (n, d, d)``: ``(n, M, d)``."""
    n, m, d = u.shape
    basis = torch.zeros(k, n * m, d, dtype=F64)
    basis[0] = u.reshape(n * m, d)
    jr = j.unsqueeze(1).expand(n, m, d, d).reshape(n * m, d, d)
    hs, betas = [], []
    for i in range(k):
        h, beta = lanczos_update((jr @ basis[i].unsqueeze(-1)).squeeze(-1), basis, i)
        hs.append(h)
        betas.append(beta)
    g = krylov_sqrt_e1(hs, betas, shift=up ** 2, scale=s, c_max=None)
    return torch.einsum("bk,kbd->bd", g, basis).view(n, m, d)


def lanczos_covariance(big_s: torch.Tensor, j: torch.Tensor, k: int, s: float, up: float, directions: int,
                       generator: torch.Generator) -> torch.Tensor:
    """``E[y y^T]`` of the k-step draw by Monte Carlo over ``directions`` uniform start vectors per point, with
    the exact draw ``S^1/2 u`` (same u) as control variate: ``S + d * mean(y y^T - y* y*^T)``, whose error
    shrinks with the Lanczos error itself instead of staying at ``|S| / sqrt(directions)``."""
    n, d = big_s.shape[0], big_s.shape[-1]
    u = torch.randn(n, directions, d, generator=generator, dtype=F64)
    u = u / u.norm(dim=-1, keepdim=True)
    evals, evecs = torch.linalg.eigh(big_s)
    root = (evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)) @ evecs.transpose(-1, -2)
    exact = u @ root  # root symmetric
    y = lanczos_draw(j, u, k, s, up)
    corr = (y.transpose(1, 2) @ y - exact.transpose(1, 2) @ exact) * (d / directions)
    out = big_s + corr
    return 0.5 * (out + out.transpose(-1, -2))


def sampler_covariance(name: str, big_s: torch.Tensor, j: torch.Tensor, s: float, up: float, *,
                       dct: torch.Tensor, generator: torch.Generator | None = None,
                       directions: int = 32) -> torch.Tensor:
    """``V`` of sampler ``name`` (module docstring) at one step; ``big_s``, ``j`` ``(..., d, d)``."""
    d = big_s.shape[-1]
    eye = _eye_like(big_s)
    if name == "full":
        return big_s
    if name == "ddpm_iso":
        return up ** 2 * eye
    if name == "iso_best":
        return torch.diagonal(big_s, dim1=-2, dim2=-1).mean(-1)[..., None, None] * eye
    if name == "lanczos_k1":
        return lanczos_k1_covariance(j, s, up)
    if name.startswith("lanczos_k"):
        k = int(name[len("lanczos_k"):])
        # k >= d is exact up to rounding, so the control-variate correction is rounding-sized and a couple
        # of directions measure it; the k x k reorthogonalised loop is the expensive part.
        return lanczos_covariance(big_s, j, k, s, up, directions if k < d else min(directions, 2), generator)
    kind, basis_name = name.split("_")
    basis = torch.eye(d, dtype=F64) if basis_name == "pixel" else dct
    probe = None
    if kind == "hutch":
        probe = 2.0 * torch.randint(0, 2, big_s.shape[:-1], generator=generator).to(F64) - 1.0
    elif kind != "diag":
        raise ValueError(f"unknown sampler covariance {name!r}")
    c = diagonal_in(basis, j, probe)
    return up ** 2 * eye + s ** 2 * (basis.T * c.unsqueeze(-2)) @ basis


def sampler_names(d: int, with_k_equal_d: bool = False) -> list[str]:
    """The samplers of claim 6 on a d-dimensional testbed (Lanczos with k = 1, 3 and, optionally, d: k = d
    reproduces ``full`` to rounding, checked in python_tests/eval/test_claims.py, and costs the most to run)."""
    return ["ddpm_iso", "iso_best", "hutch_pixel", "diag_pixel", "hutch_dct", "diag_dct", "lanczos_k1",
            "lanczos_k3", *([f"lanczos_k{d}"] if with_k_equal_d else []), "full"]


def check_names(names: list[str]) -> None:
    ok = {"full", "ddpm_iso", "iso_best", "hutch_pixel", "diag_pixel", "hutch_dct", "diag_dct"}
    bad = [n for n in names if n not in ok and not (n.startswith("lanczos_k") and n[9:].isdigit())]
    if bad:
        raise ValueError(f"unknown sampler covariance(s) {bad}")

