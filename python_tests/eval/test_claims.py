"""Cheap re-checks of the claims ledger's measured claims (docs/claims.md, claims 6 and 7) on small oracles.

The estimators of ``benchmarks/claims`` are checked against closed forms (one-component mixture, Gaussian data,
the k = 1 Lanczos second moment, Bayes on the joint Gaussian) and the rates against bands and a derived bound.
"""
from __future__ import annotations

import math
import sys

import pytest
import torch

from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks" / "claims"))

import covariances as cv  # noqa: E402
import lanczos_error as le  # noqa: E402
import pathkl as pk  # noqa: E402

from covkernels.models import DenseGaussian, GaussianMixture  # noqa: E402

F64 = torch.float64
GAUSS_NAMES = ["ddpm_iso", "iso_best", "diag_pixel", "diag_dct", "lanczos_k1", "full"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def small_gaussian(seed: int = 0) -> DenseGaussian:
    """A DenseGaussian on (1, 2, 4) images (d = 8) with a power-law spectrum in a random basis."""
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen(seed), dtype=F64))
    evals = 0.3 * torch.arange(1, 9, dtype=F64) ** -2.0
    return DenseGaussian(0.2 * torch.randn(1, 2, 4, generator=gen(seed + 1), dtype=F64), (q * evals) @ q.T)


def covariance_makers(shape):
    dct = pk.basis_matrix(shape, "dct")
    return {n: (lambda S, J, s, up, n=n: cv.sampler_covariance(n, S, J, s, up, dct=dct)) for n in GAUSS_NAMES}


def test_gauss_kl_matches_the_textbook_formula():
    a = torch.randn(5, 5, generator=gen(1), dtype=F64)
    b = torch.randn(5, 5, generator=gen(2), dtype=F64)
    s, v = a @ a.T + 0.5 * torch.eye(5, dtype=F64), b @ b.T + 0.5 * torch.eye(5, dtype=F64)
    direct = 0.5 * (torch.trace(torch.linalg.solve(v, s)) - 5 + torch.logdet(v) - torch.logdet(s))
    assert float(pk.gauss_kl(s, v)) == pytest.approx(float(direct), rel=1e-12)
    assert abs(float(pk.gauss_kl(s, s))) < 1e-14


@pytest.mark.parametrize("steps", [1, 2, 4, 16], ids=lambda t: f"T{t}")
def test_full_covariance_path_kl_is_zero_on_gaussian_data(steps):
    """The DESIGN step (package oracle D and J) against Bayes on the joint Gaussian: exact at any T."""
    sig = pk.karras_grid(steps, 0.002, 80.0)
    kl = pk.gaussian_path_kl(small_gaussian(), covariance_makers((1, 2, 4)), sig)
    assert abs(kl["full"]) < 1e-12
    assert kl["iso_best"] > 1e-3 and kl["ddpm_iso"] > kl["iso_best"]


@pytest.fixture(scope="module")
def closed_form_rows():
    """Closed-form path KL of the non-exact samplers at T = 32, 64, 128 on a Karras grid over [0.05, 5]
    (a short range, so the asymptotic order shows at small T and the test stays at a few seconds)."""
    model, makers = small_gaussian(), covariance_makers((1, 2, 4))
    makers = {n: m for n, m in makers.items() if n != "full"}
    steps = [32, 64, 128]
    return steps, [pk.gaussian_path_kl(model, makers, pk.karras_grid(t, 0.05, 5.0)) for t in steps]


@pytest.mark.parametrize("name", ["ddpm_iso", "iso_best", "diag_pixel", "diag_dct", "lanczos_k1"])
def test_isotropic_and_diagonal_closed_form_path_kl_decays_like_one_over_t(closed_form_rows, name):
    steps, rows = closed_form_rows
    assert -1.1 < pk.loglog_slope(steps, [r[name] for r in rows]) < -0.9


def one_component(shape=(1, 2, 4)):
    spectrum = 0.3 * (1.0 + torch.arange(math.prod(shape), dtype=F64).view(1, *shape)) ** -1.5
    return GaussianMixture(0.3 * torch.randn(1, *shape, generator=gen(3), dtype=F64), spectrum, basis="dct")


def test_monte_carlo_path_kl_is_exact_for_a_one_component_mixture():
    """K = 1: no gap, and S does not depend on x_t, so the Monte Carlo over x_t must equal the closed form."""
    oracle = one_component()
    mix = pk.SharedMixture(oracle)
    sig = pk.karras_grid(6, 0.002, 80.0)
    mc = pk.mixture_path_kl(mix, sig, GAUSS_NAMES, points=8, generator=gen(4))
    dense = DenseGaussian(oracle.means[0], pk.basis_matrix(mix.shape, "dct").T @ torch.diag(mix.spectrum)
                          @ pk.basis_matrix(mix.shape, "dct"))
    closed = pk.gaussian_path_kl(dense, covariance_makers(mix.shape), sig)
    assert mc["gap"] == 0.0
    for name in GAUSS_NAMES[:-1]:
        assert mc[name] == pytest.approx(closed[name], rel=1e-9), name
    x = mix.sample_noisy(4, 1.0, gen(5))
    assert float(pk.gap_monte_carlo(mix, mix.transition(x, 1.0, 0.7), 64, gen(6)).abs().max()) < 1e-12


def test_transition_matches_the_package_mixture_oracle():
    oracle = pk.claim_mixture()
    mix = pk.SharedMixture(oracle)
    x = mix.sample_noisy(3, 0.6, gen(7))
    tr = mix.transition(x, 0.6, 0.4)
    d = oracle(x.view(3, *mix.shape), 0.6).reshape(3, -1)
    assert torch.allclose(tr["m"], d + tr["r"] * (x - d), atol=1e-12)
    jac = torch.func.jacrev(lambda z: oracle(z.view(1, *mix.shape), 0.6).flatten())(x[0])
    assert torch.allclose(tr["J"][0], 0.5 * (jac + jac.T), atol=1e-12)


@pytest.mark.parametrize("sigmas", [(2.0, 1.2), (0.6, 0.3)], ids=["high_noise", "mode_choice"])
def test_gap_quadrature_agrees_with_monte_carlo_over_the_mixture(sigmas):
    """At the 4 of 32 points with the largest gap (where Monte Carlo over the mixture can resolve it: its
    relative error is about sqrt(2 / (M KL)))."""
    mix = pk.SharedMixture(pk.claim_mixture())
    tr = mix.transition(mix.sample_noisy(32, sigmas[0], gen(8)), *sigmas)
    top = pk.gap_quadrature(mix, tr, order=16).topk(4).indices
    tr = mix.transition(mix.sample_noisy(32, sigmas[0], gen(8))[top], *sigmas)
    quad = pk.gap_quadrature(mix, tr, order=16)
    mc = torch.stack([pk.gap_monte_carlo(mix, tr, 2000, gen(10 + i)) for i in range(8)])
    se = mc.std(0) / math.sqrt(mc.shape[0])
    assert bool((quad > 1e-4).all())
    assert bool(((quad - mc.mean(0)).abs() < 4 * se + 1e-3 * quad).all()), (quad, mc.mean(0), se)
    assert torch.allclose(quad, pk.gap_quadrature(mix, tr, order=24), rtol=1e-3)


def test_lanczos_k1_second_moment_matches_its_closed_form_and_k_equal_d_is_exact():
    mix = pk.SharedMixture(pk.claim_mixture())
    tr = mix.transition(mix.sample_noisy(2, 0.8, gen(11)), 0.8, 0.5)
    s_mat, j = tr["S"], tr["J"]
    mc = cv.lanczos_covariance(s_mat, j, 1, tr["s"], tr["up"], 20000, gen(12))
    closed = cv.lanczos_k1_covariance(j, tr["s"], tr["up"])
    dev = (closed - s_mat).flatten(1).norm(dim=1)
    assert bool(((mc - closed).flatten(1).norm(dim=1) < 0.05 * dev).all())
    u = torch.randn(2, 3, mix.d, generator=gen(13), dtype=F64)
    u = u / u.norm(dim=-1, keepdim=True)
    evals, evecs = torch.linalg.eigh(s_mat)
    exact = u @ ((evecs * evals.sqrt().unsqueeze(-2)) @ evecs.transpose(-1, -2))
    assert torch.allclose(cv.lanczos_draw(j, u, mix.d, tr["s"], tr["up"]), exact, atol=1e-10)


def test_mixture_path_kl_is_deterministic_given_the_seed():
    mix = pk.SharedMixture(pk.claim_mixture())
    names = ["hutch_pixel", "hutch_dct", "lanczos_k3"]
    runs = [pk.mixture_path_kl(mix, pk.karras_grid(2, 0.002, 80.0), names, 16, gen(14), directions=4)
            for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("step", [(2.5, 0.17), (1.0, 0.5), (0.3, 0.2)], ids=["coarse", "halving", "fine"])
def test_lanczos_error_decays_geometrically_within_the_derived_bound(step):
    oracle = le.power_law_oracle(size=4)  # d = 16
    ks = list(range(1, 9))
    res = le.step_errors(oracle, *step, ks, draws=6, generator=gen(15))
    err, bound = res["error_per_norm_xi"], torch.tensor(res["bound_per_norm_xi"], dtype=F64)
    above = bound > 1e-11
    assert bool((err[:, above] <= bound[above]).all())
    assert res["kappa"] <= (step[0] / step[1]) ** 2 * (1 + 1e-12)  # the step-ratio bound on kappa
    geo = res["relative_error"].log().mean(0).exp()
    live = geo > le.ROUNDING_FLOOR
    assert bool((geo[1:][live[1:]] < geo[:-1][live[1:]]).all())  # strictly decreasing above rounding
    assert le.fitted_rate(ks, geo) < res["taylor_q"]
    full = le.step_errors(oracle, *step, [16], draws=2, generator=gen(16))["relative_error"]
    assert float(full.max()) < 1e-9  # k = d: exact


def test_grid_verdicts_quoted_in_the_ledger_match_the_committed_grids():
    """docs/claims.md quotes claims 1 and 9 from the committed grids; a regenerated grid that changes a quoted
    verdict must fail here rather than leave the ledger stale."""
    import from_grids as fg

    rows = {}
    for files, table, sampler, rivals in fg.CLAIMS[1] + fg.CLAIMS[9]:
        for name in files:
            if isinstance(name, str) and (fg.RESULTS / name).exists() and not name.startswith("claims/"):
                # the 6-8 NFE package grids
                for r in fg.compare(fg.RESULTS / name, table, sampler, rivals):
                    rows[(r["testbed"], r["table"], r["nfe"], r["sampler"], r["rival"])] = r["verdict"]
    best_2m = [v for k, v in rows.items() if k[1] == "best" and k[4] == "dpmpp_2m"]
    assert len(best_2m) == 10 and set(best_2m) == {"loss"}
    best_addim = [v for k, v in rows.items() if k[1] == "best" and k[4] == "addim"]
    assert sorted(best_addim).count("win") == 3 and best_addim.count("loss") == 4
    assert [rows[(t, "default", n, "addim", "ddim")] for t in ("gaussian", "gmm") for n in (6, 8)] == ["win"] * 4
    assert rows[("digits", "default", 6, "addim", "ddim")] == "loss"


def test_claim3_verdicts_quoted_in_the_ledger_match_its_grid():
    import from_grids as fg

    rows = {}
    for files, table, sampler, rivals in fg.CLAIMS[3]:
        for name in files:
            for r in fg.compare(fg.RESULTS / name, table, sampler, rivals):
                rows[(r["testbed"], r["nfe"])] = r["verdict"]
    assert len(rows) == 35 and "win" not in rows.values()
    assert sorted(k for k, v in rows.items() if v == "loss") == [("gaussian", 4), ("gmm", 4), ("patches", 4),
                                                                  ("patches", 6), ("patches", 8)]
    assert all(v == "tie" for (_, nfe), v in rows.items() if nfe >= 12)


def test_claim8_verdicts_quoted_in_the_ledger_match_its_grid():
    """docs/claims.md, claim 8 on the oracles: Lanczos k = 3 never loses to the Hutchinson diagonal or to DDPM
    on the power-spectrum error, with the tallies and the per-testbed ranges the ledger quotes."""
    import from_grids as fg

    rows = {}
    for files, table, sampler, rivals, metric in fg.CLAIMS[8]:
        for name in files:
            for r in fg.compare(fg.RESULTS / name, table, sampler, rivals, metric):
                rows[(r["testbed"], r["nfe"], r["sampler"], r["rival"])] = r["verdict"]

    def tally(sampler, rival):
        found = [v for (t, _, s, r), v in rows.items() if (s, r) == (sampler, rival) and t in fg.ORACLES]
        return found.count("win"), found.count("tie"), found.count("loss")

    assert tally("lanczos/k3", "diag_hutchinson") == (9, 9, 0)
    assert tally("lanczos/k3", "ddpm") == (13, 5, 0)
    assert tally("diag_hutchinson", "ddpm") == (10, 7, 1)
    wins = {t: sorted(n for (tb, n, s, r), v in rows.items() if tb == t and (s, r) == ("lanczos/k3", "diag_hutchinson")
                      and v == "win") for t in ("gaussian", "gmm")}
    assert wins == {"gaussian": [10, 20, 40, 50, 80, 100, 200], "gmm": [10, 20]}


def _grid_rows(claim: int, keep=lambda name: True) -> dict:
    """(testbed, nfe, table, sampler, rival, metric) -> verdict over the claim's committed grids (the file
    entries that ``keep``)."""
    import from_grids as fg

    rows = {}
    for files, table, sampler, rivals, *metric in fg.CLAIMS[claim]:
        for name in filter(keep, files):
            mine, theirs = fg.split(name)
            for r in fg.compare(fg.RESULTS / mine, table, sampler, rivals, *(metric or [None]), fg.RESULTS / theirs):
                rows[(r["testbed"], r["nfe"], table, sampler, r["rival"], r["metric"])] = r["verdict"]
    return rows


def _tally(rows: dict, **match) -> tuple[int, int, int]:
    keys = ("testbed", "nfe", "table", "sampler", "rival", "metric")
    found = [v for k, v in rows.items() if all(dict(zip(keys, k))[f] in want for f, want in match.items())]
    return found.count("win"), found.count("tie"), found.count("loss")


def test_claim8_real_image_verdicts_quoted_in_the_ledger_match_its_grid():
    rows = _grid_rows(8)
    real = ("digits_ideal", "digits", "patches", "patches_flow")
    assert _tally(rows, testbed=real, sampler=["lanczos/k3"], rival=["diag_hutchinson"]) == (9, 9, 0)
    assert _tally(rows, testbed=real, sampler=["lanczos/k3"], rival=["ddpm"]) == (5, 13, 0)
    assert _tally(rows, testbed=["patches"], sampler=["lanczos/k3"], rival=["diag_hutchinson"]) == (4, 0, 0)
    assert _tally(rows, testbed=["patches"], sampler=["lanczos/k3"], rival=["ddpm"]) == (3, 1, 0)
    assert _tally(rows, testbed=["patches_flow"], sampler=["lanczos/k3"]) == (4, 4, 0)


def test_claim4_verdicts_quoted_in_the_ledger_match_its_grid():
    rows = _grid_rows(4)
    spatial, glob, none = (f"cov_ddim/convdct-avg-{k}" for k in ("spatial", "global", "none"))
    for rival in (spatial, glob):
        assert [rows[("patches", n, "best", "cov_ddim/convdct", rival, "fd_features")] for n in (4, 8, 16)] == \
            ["loss", "loss", "tie"]
    for testbed in ("patches", "patches_flow"):
        assert [rows[(testbed, n, "best", "cov_ddim/convdct", none, "fd_features")] for n in (4, 8, 16)] == \
            ["win", "win", "tie"]
    assert _tally(rows, testbed=["patches_flow"], rival=[spatial]) == (0, 3, 0)
    assert _tally(rows, testbed=["patches_flow"], rival=[glob]) == (1, 2, 0)
    oracles = ("gaussian", "gmm")
    assert [_tally(rows, testbed=oracles, rival=[r], metric=["fd_pooled"]) for r in (spatial, glob, none)] == \
        [(0, 5, 1), (1, 4, 1), (1, 4, 1)]
    assert [_tally(rows, testbed=oracles, rival=[r], metric=["spectrum_error"]) for r in (spatial, glob, none)] == \
        [(1, 4, 1), (0, 5, 1), (1, 2, 3)]


def test_claim2_verdicts_quoted_in_the_ledger_match_its_grid():
    rows = _grid_rows(2)
    for basis in ("cov_ddim/dct", "cov_ddim/convdct"):
        assert _tally(rows, sampler=[basis], rival=["addim"]) == (0, 9, 6)
        assert all(rows[(t, 128, "default", basis, r, "fd_features")] == "tie"
                   for t in ("digits_ideal", "digits", "patches") for r in ("addim", "ddim"))
    assert _tally(rows, sampler=["cov_ddim/dct"], rival=["ddim"]) == (1, 10, 4)
    assert _tally(rows, sampler=["cov_ddim/convdct"], rival=["ddim"]) == (0, 10, 5)
    assert rows[("patches", 8, "default", "cov_ddim/dct", "ddim", "fd_features")] == "win"


def test_claim5_verdicts_quoted_in_the_ledger_match_its_grid():
    rows = _grid_rows(5)
    for testbed in ("patches_latent", "patches"):
        for table in ("default", "best"):
            # the sampler is ddim: a "win" means DDIM beats the structured noise
            assert rows[(testbed, 4, table, "ddim", "cov_ddim/dct", "fd_features")] == "win"
    for table in ("default", "best"):
        assert rows[("patches_latent", 8, table, "ddim", "cov_ddim/dct", "fd_features")] == "loss"
        assert [rows[("patches_latent", n, table, "ddim", "cov_ddim/dct", "fd_features")] for n in (16, 32)] == \
            ["tie", "tie"]
    assert _tally(rows, testbed=["patches_latent"], rival=["addim", "dpmpp_2m"]) == (0, 2, 14)


def test_claim9_verdicts_from_the_claim2_and_claim5_grids():
    import from_grids as fg

    rows = {}
    for files, table, sampler, rivals in fg.CLAIMS[9]:
        for name in (n for n in files if n.startswith("claims/")):
            for r in fg.compare(fg.RESULTS / name, table, sampler, rivals):
                rows[(r["testbed"], r["nfe"], table, r["grid"].split("/")[1])] = r["verdict"]
    natural = [v for (t, n, _, _), v in rows.items() if t in ("patches", "patches_latent") and n <= 32]
    assert (natural.count("win"), natural.count("tie"), natural.count("loss")) == (17, 2, 0)
    digits = [v for (t, *_), v in rows.items() if t in ("digits_ideal", "digits")]
    assert (digits.count("win"), digits.count("loss")) == (0, 3)


def test_claim1_published_configuration_verdicts_quoted_in_the_ledger():
    rows = _grid_rows(1, keep=lambda name: not isinstance(name, str))  # the pairs across two grids
    assert _tally(rows, sampler=["cov_ddim/dct"], rival=["dpmpp_2m"]) == (0, 13, 12)
    assert _tally(rows, sampler=["cov_ddim/convdct"], rival=["dpmpp_2m"]) == (0, 9, 16)
    assert _tally(rows, sampler=["cov_ddim/dct"], rival=["addim"]) == (5, 14, 6)
    assert _tally(rows, sampler=["cov_ddim/convdct"], rival=["addim"]) == (3, 13, 9)
    assert _tally(rows, sampler=["cov_ddim/dct"], rival=["heun"]) == (9, 11, 5)
    assert _tally(rows, sampler=["cov_ddim/convdct"], rival=["heun"]) == (8, 10, 7)
    assert [rows[("patches", n, "best", "cov_ddim/dct", "addim", "fd_features")] for n in (6, 8)] == ["win", "win"]


def test_pairing_across_grids_refuses_different_settings(tmp_path):
    import json

    import from_grids as fg

    mine = fg.RESULTS / "claims/claim3/quality_patches.json"
    other = json.loads((fg.RESULTS / "claims/claim1_published/quality_patches.json").read_text())
    other["config"]["num_samples"] = 128
    (tmp_path / "g.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="num_samples"):
        fg.compare(mine, "best", "cov_ddim/dct", ["addim"], None, tmp_path / "g.json")
