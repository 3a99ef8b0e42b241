"""benchmarks/estimator_checks.py: its exact Jacobian and probe-error arithmetic on cases with known answers."""
from __future__ import annotations

import sys

import pytest
import torch

from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import estimator_checks as ec  # noqa: E402

from covkernels.models import DenseGaussian, get_model  # noqa: E402
from covkernels.ops.dct.reference import dct2  # noqa: E402


def test_exact_coefficient_jacobian_of_the_gaussian_oracle_is_its_closed_form():
    model = get_model("gaussian", size=8).double()
    x = ec.forward_points(model, 0.5, 1, seed=0)[0]
    g = ec.exact_coefficient_jacobian(model, x, 0.5)
    exact = model.jacobian_coefficients(0.5).flatten()
    assert torch.allclose(torch.diagonal(g), exact, atol=1e-12)
    assert float((g - torch.diag(exact)).abs().max()) < 1e-12  # the DCT diagonalises it


def test_exact_coefficient_jacobian_of_a_dense_gaussian_matches_F_J_FT():
    d = 2 * 4 * 4
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = DenseGaussian(torch.zeros(2, 4, 4, dtype=torch.float64), a @ a.T / d)
    f = dct2(torch.eye(d, dtype=torch.float64).view(d, 2, 4, 4)).view(d, d).T  # F: column j = F e_j
    g = ec.exact_coefficient_jacobian(model, torch.zeros(2, 4, 4, dtype=torch.float64), 0.7)
    assert torch.allclose(g, f @ model.jacobian(0.7) @ f.T, atol=1e-10)


def test_probe_errors_transform_probes_are_exact_only_for_a_diagonal_G():
    shape = (3, 4, 4)
    diag = torch.diag(torch.rand(48, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    err = ec.probe_errors(diag, shape, seed=0, point=0, probes=1)
    assert err["transform"] < 1e-12 and err["pixel"] > 0.1
    q, _ = torch.linalg.qr(torch.randn(48, 48, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    dense = q @ diag @ q.T
    err = ec.probe_errors(dense, shape, seed=0, point=0, probes=1)
    assert err["transform"] > 0.05
    many = ec.probe_errors(dense, shape, seed=0, point=0, probes=256)  # Hutchinson converges to the diagonal
    assert many["transform"] < err["transform"] / 4 and many["pixel"] < 0.3


def test_markdown_renders_every_section():
    row = {"model": "gmm", "sigma": 1.0, **{k: [0.5, [0.4, 0.6]] for k in (
        "transform_1", "pixel_1", "transform_4", "pixel_4", "diag_above_1", "eig_above_1", "points_eig_above_1",
        "estimate_above_1", "max_eig", "max_diag")}}
    cell = {"label": "a", "nfe_budget": 6, "nfe": 6, "fd_pooled": [0.2, [0.1, 0.3]], "reference": "b",
            "vs_reference": {"diff": -0.1, "diff_ci95": [-0.2, -0.05], "relative": -0.5, "verdict": "win"}}
    results = {"environment": {"device": "CPU", "torch": "x", "git_revision": "y"}, "commands": {"p": "cmd"},
               "probes": {"seeds": [0, 1], "points_per_seed": 1, "rows": [row]},
               "clamp_spectrum": {"rows": [row]},
               "overlap_quality": {"gmm": {"metric": "fd_pooled", "num_samples": 8, "seeds": [0, 1],
                                           "rows": [cell, {**cell, "label": "b", "vs_reference": None}]}}}
    md = ec.markdown(results)
    assert "| gmm | 1.0 | 0.5 [0.4, 0.6] |" in md
    assert "| a | 6 | 0.2 [0.1, 0.3] | b | -0.1 [-0.2, -0.05] | -50.0% | win |" in md
    assert "`p`: `cmd`" in md


@pytest.mark.parametrize("argv", [["--seeds", "1"], ["--points", "0"]])
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit):
        ec.main(argv)


def test_frame_fit_is_exact_where_the_basis_diagonalises_J():
    """White J = c0 I: every basis and the Parseval frame fit it exactly with exact coefficients (the
    frame only with its 1/R normalisation); a DCT-diagonal J is fitted exactly by the DCT alone."""
    shape = (3, 16, 16)
    atoms = ec.atom_matrices(shape)
    white = ec.frame_fit(0.4 * torch.eye(768, dtype=torch.float64), shape, atoms, seed=0, point=0)
    for name in ("dct", "convdct", "convdct-overlap"):
        assert white[f"{name} fit_exact"] < 1e-12
    assert white["convdct fit_1probe"] < 1e-12  # a basis: the transform-domain probe is exact
    assert white["convdct-overlap fit_1probe"] > 0.05  # a frame: its overlaps make the probe noisy
    model = get_model("gaussian", size=16).double()
    g = torch.diag(model.jacobian_coefficients(0.5).flatten())
    fit = ec.frame_fit(g, shape, atoms, seed=0, point=0)
    assert fit["dct fit_exact"] < 1e-12 and fit["convdct fit_exact"] > 0.05
