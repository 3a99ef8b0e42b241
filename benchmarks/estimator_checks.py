"""Estimator details of the diagonal covariance step, measured on the exact oracles (issue 18).

Parts (each writes its own section of ``results/estimator_checks.{json,md}``; the others are kept):

* ``probes``: relative error of the channel-averaged DCT-diagonal Hutchinson estimate (1 and 4 probes)
  against the exact ``diag(F J F^T)`` (channel-averaged, the estimator's target), for Rademacher probes
  drawn in the DCT domain (``v = F^T z``, today's) vs in pixels (``c = (F v) * (F J v)``). ``F J F^T`` is
  exact: ``torch.func.jacfwd`` of ``c -> F D(F^T c)`` in float64 at points ``x_t = x0 + sigma n`` of the
  forward process (``x0`` exact samples).
* ``clamp``: on the same exact Jacobians, the fraction of DCT-diagonal coefficients and of eigenvalues of
  the symmetrised J above 1 (what ``c_max = 1`` cuts); then ``evaluate`` with c_max 1 vs None.
* ``overlap``: ``evaluate`` of the overlapping ConvDCT (stride 4, block 8) against ConvDCT and DCT.

Every number is a mean over seeds with a Student-t 95% interval; quality comparisons are paired over the
same seeds (common random numbers). Run with ``OMP_NUM_THREADS=1`` beside other jobs:

    python benchmarks/estimator_checks.py --parts probes clamp overlap [--seeds 5] [--points 4]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from common import environment

from covkernels.eval.api import evaluate
from covkernels.eval.intervals import mean_ci95, paired
from covkernels.models import get_model
from covkernels.ops.dct.reference import analysis, dct2, idct2, overlap_analysis
from covkernels.ops.rng.reference import STREAM_PROBE, philox_rademacher

SIGMAS = (0.1, 0.3, 1.0, 3.0, 10.0)  # 10: beyond the brief, where the mixture's modes still mix
MODELS = ("gaussian", "gmm")
SIZE = 16  # the oracles' testbed size: 3 x 16 x 16 = 768 dims, a dense Jacobian per point is cheap
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def exact_coefficient_jacobian(model, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``G = F J F^T`` at one point ``x (C, H, W)``, float64 ``(d, d)`` with ``d = C H W``."""
    shape = x.shape

    def in_coefficients(c):
        return dct2(model(idct2(c.view(1, *shape)), sigma).view(shape)).flatten()

    return torch.func.jacfwd(in_coefficients)(dct2(x.double()).flatten())


def forward_points(model, sigma: float, num: int, seed: int) -> torch.Tensor:
    """``num`` points ``x0 + sigma n`` of the forward process at ``sigma`` (float64 ``(num, C, H, W)``)."""
    gen = torch.Generator().manual_seed(seed)
    x0 = model.sample(num, generator=gen, dtype=torch.float64)
    return x0 + sigma * torch.randn(x0.shape, generator=gen, dtype=torch.float64)


def channel_mean(c: torch.Tensor, shape) -> torch.Tensor:
    """``(..., d)`` -> ``(..., H, W)``: the channel average the step uses."""
    return c.view(*c.shape[:-1], *shape).mean(dim=-3)


def probe_errors(g: torch.Tensor, shape, seed: int, point: int, probes: int) -> dict:
    """Relative L2 error of the channel-averaged estimate from ``probes`` probes, both probe domains.
    The same Rademacher draws serve both domains (common random numbers)."""
    target = channel_mean(torch.diagonal(g), shape)
    z = torch.stack([philox_rademacher(seed, (1, *shape), sample_offset=point, stream=STREAM_PROBE + p,
                                       dtype=torch.float64).flatten() for p in range(probes)])
    transform = (z * (z @ g.T)).mean(0)  # z in coefficients: v = F^T z, F J v = G z
    w = dct2(z.view(probes, *shape)).flatten(1)  # v = z in pixels: F v = w, F J v = G w
    pixel = (w * (w @ g.T)).mean(0)
    err = {}
    for name, est in (("transform", transform), ("pixel", pixel)):
        err[name] = float((channel_mean(est, shape) - target).norm() / target.norm())
    return err


def atom_matrices(shape) -> dict:
    """Unit-norm analysis atoms (rows) of each basis as ``(R d, d)`` float64 matrices, with R."""
    d = shape[0] * shape[1] * shape[2]
    eye = torch.eye(d, dtype=torch.float64).view(d, *shape)
    out = {name: (analysis(eye, name, 8).reshape(d, d).T, 1) for name in ("dct", "convdct")}
    out["convdct-overlap"] = (overlap_analysis(eye, 8, 4).reshape(d, -1).T * 2, 4)  # * r: unit atoms
    return out


def frame_fit(g: torch.Tensor, shape, atoms: dict, seed: int, point: int) -> dict:
    """Per basis: relative Frobenius error of ``J ~= M^T diag(c) M / R`` (sym. J; c channel-averaged) with the
    exact ``c = diag(M J M^T)`` (``fit_exact``) and with today's 1-probe estimate clamped to [0, 1]
    (``fit_1probe``), and the 1-probe estimate's relative error (``est_1probe``)."""
    f = atoms["dct"][0]
    j = f.T @ (0.5 * (g + g.T)) @ f  # pixel-space J from its DCT-coefficient form
    out = {}
    for name, (m, r) in atoms.items():
        k = m @ j @ m.T
        z = philox_rademacher(seed, (1, m.shape[0]), sample_offset=point, stream=STREAM_PROBE,
                              dtype=torch.float64).flatten()

        def avg(c):  # channel average, broadcast back
            return c.view(shape[0], -1).mean(0).repeat(shape[0])

        exact, est = avg(torch.diagonal(k)), avg(z * (k @ z))
        for key, c in (("fit_exact", exact), ("fit_1probe", est.clamp(0, 1))):
            out[f"{name} {key}"] = float((j - (m.T * c) @ m / r).norm() / j.norm())
        out[f"{name} est_1probe"] = float((est - exact).norm() / exact.norm())
    return out


def study_probes_and_spectrum(seeds: list[int], points: int) -> tuple[dict, dict]:
    """The ``probes`` and the Jacobian half of the ``clamp`` parts, from one set of exact Jacobians."""
    probe_rows, clamp_rows, frame_rows = [], [], []
    atoms = atom_matrices((3, SIZE, SIZE))
    for name in MODELS:
        model = get_model(name, size=SIZE).double()
        for sigma in SIGMAS:
            per_seed = {f"{dom}_{p}": [] for dom in ("transform", "pixel") for p in (1, 4)}
            fits: dict = {}
            spectrum = {"diag_above_1": [], "eig_above_1": [], "points_eig_above_1": [], "estimate_above_1": [],
                        "max_eig": [], "max_diag": []}
            for seed in seeds:
                acc, fit_acc = {k: [] for k in per_seed}, {}
                frac = {k: [] for k in spectrum}
                for i, x in enumerate(forward_points(model, sigma, points, seed)):
                    g = exact_coefficient_jacobian(model, x, sigma)
                    for p in (1, 4):
                        for dom, e in probe_errors(g, x.shape, seed, i, p).items():
                            acc[f"{dom}_{p}"].append(e)
                    for k, v in frame_fit(g, x.shape, atoms, seed, i).items():
                        fit_acc.setdefault(k, []).append(v)
                    diag, eig = torch.diagonal(g), torch.linalg.eigvalsh(0.5 * (g + g.T))
                    frac["diag_above_1"].append(float((diag > 1).double().mean()))
                    frac["eig_above_1"].append(float((eig > 1).double().mean()))
                    frac["points_eig_above_1"].append(float(eig.max() > 1))
                    z = philox_rademacher(seed, (1, *x.shape), sample_offset=i, stream=STREAM_PROBE,
                                          dtype=torch.float64).flatten()  # today's 1-probe estimate
                    frac["estimate_above_1"].append(float((channel_mean(z * (g @ z), x.shape) > 1).double().mean()))
                    frac["max_eig"].append(float(eig.max()))
                    frac["max_diag"].append(float(diag.max()))
                for k, v in acc.items():
                    per_seed[k].append(sum(v) / len(v))
                for k, v in fit_acc.items():
                    fits.setdefault(k, []).append(sum(v) / len(v))
                for k, v in frac.items():
                    spectrum[k].append(max(v) if k.startswith("max") else sum(v) / len(v))
            probe_rows.append({"model": name, "sigma": sigma, **_summary(per_seed)})
            clamp_rows.append({"model": name, "sigma": sigma, **_summary(spectrum)})
            frame_rows.append({"model": name, "sigma": sigma, **_summary(fits)})
            print(f"{name} sigma={sigma}: " + ", ".join(f"{k} {v[0]:.3g}" for k, v in probe_rows[-1].items()
                                                        if isinstance(v, list) and len(v) == 2 and k != "seeds"),
                  flush=True)
    return ({"points_per_seed": points, "seeds": seeds, "rows": probe_rows},
            {"points_per_seed": points, "seeds": seeds, "rows": clamp_rows},
            {"points_per_seed": points, "seeds": seeds, "rows": frame_rows})


def _summary(per_seed: dict) -> dict:
    """``{k: [mean, [lo, hi]], k + '_per_seed': [...]}``."""
    out = {}
    for k, v in per_seed.items():
        mean, ci = mean_ci95(v)
        out[k], out[k + "_per_seed"] = [mean, ci], v
    return out


def compare(model: str, rows: list[tuple[str, str, dict | None, str | None]], nfes, num: int, seeds: int) -> dict:
    """``evaluate`` every ``(label, sampler, options, reference label)`` row (default table, same seeds) and
    pair it with its reference row of the same NFE column on the testbed's main metric."""
    cells, refs, states = {}, {label: ref for label, _, _, ref in rows}, {}
    for label, sampler, options, _ in rows:
        key = (sampler, repr(options))  # a row repeated against another reference runs once
        if key not in states:
            states[key] = evaluate(model, [sampler], nfes, num, seeds=seeds, tables=("default",), options=options,
                                   progress=None)
        state = states[key]
        metric = state["config"]["tuning"]["metric"]
        for cell in state["cells"]:
            cells[label, cell["nfe_budget"]] = {"sampler": sampler, "nfe": cell["nfe"],
                                                "options": None if options is None else  # strict JSON: no inf
                                                {k: str(v) if v == float("inf") else v for k, v in options.items()},
                                                metric: [cell[metric], cell[metric + "_ci95"]],
                                                "per_seed": cell[metric + "_per_seed"]}
        print(f"{model} {label}: " + ", ".join(f"{n} NFE {cells[label, n][metric][0]:.4g}" for n in nfes
                                               if (label, n) in cells), flush=True)
    out = []
    for (label, nfe), cell in cells.items():
        base = cells.get((refs[label], nfe))
        pair = None if base is None else paired(cell["per_seed"], base["per_seed"], lower_is_better=True)
        out.append({"label": label, "nfe_budget": nfe, **cell, "reference": refs[label], "vs_reference": pair})
    return {"metric": metric, "num_samples": num, "seeds": list(range(seeds)), "rows": out}


# (label, grid sampler, shared options, the row it is paired with)
CLAMP_ROWS = [("ode_cov/dct", "ode_cov/dct", None, None),
              ("ode_cov/dct c_max=None", "ode_cov/dct", {"c_max": None}, "ode_cov/dct"),
              ("cov_ddim/dct", "cov_ddim/dct", None, None),
              ("cov_ddim/dct c_max=None", "cov_ddim/dct", {"c_max": None}, "cov_ddim/dct"),
              # the published methods' window: covariance steps from sigma_max = 80 down, where modes still mix
              ("cov_ddim/dct window=inf", "cov_ddim/dct", {"cov_sigma_max": float("inf")}, None),
              ("cov_ddim/dct window=inf c_max=None", "cov_ddim/dct", {"cov_sigma_max": float("inf"), "c_max": None},
               "cov_ddim/dct window=inf")]
OVERLAP_ROWS = [("ode_cov/convdct", "ode_cov/convdct", None, None),
                ("ode_cov/convdct-overlap", "ode_cov/convdct-overlap", None, "ode_cov/convdct"),
                ("ode_cov/dct", "ode_cov/dct", None, "ode_cov/convdct"),
                ("ode_cov/convdct-overlap vs dct", "ode_cov/convdct-overlap", None, "ode_cov/dct")]


def _fmt(v) -> str:
    return f"{v[0]:.3g} [{v[1][0]:.3g}, {v[1][1]:.3g}]"


def markdown(results: dict) -> str:
    env = results["environment"]
    md = [f"# estimator_checks\n\nDevice: {env['device']}; torch {env['torch']}, git {env['git_revision']}.\n"]
    for part, command in results.get("commands", {}).items():
        md.append(f"- `{part}`: `{command}`")
    if "probes" in results:
        r = results["probes"]
        md += [f"\n## Probe domain: relative L2 error of the channel-averaged DCT diagonal\n\n"
               f"Mean over seeds {r['seeds']} ({r['points_per_seed']} forward-process points each) with 95% "
               f"intervals; target: exact diag(F J F^T), channel-averaged.\n",
               "| model | sigma | transform, 1 probe | pixel, 1 probe | transform, 4 probes | pixel, 4 probes |",
               "|---|---|---|---|---|---|"]
        md += [f"| {x['model']} | {x['sigma']} | {_fmt(x['transform_1'])} | {_fmt(x['pixel_1'])} | "
               f"{_fmt(x['transform_4'])} | {_fmt(x['pixel_4'])} |" for x in r["rows"]]
    if "clamp_spectrum" in results:
        r = results["clamp_spectrum"]
        md += ["\n## c_max = 1: how much of the exact Jacobian lies above 1\n",
               "Fractions are means over points; 'points' is the fraction of points with any eigenvalue > 1; "
               "'estimate' is today's 1-probe channel-averaged estimate before the clamp; the maxima are per seed.\n",
               "| model | sigma | DCT diagonal > 1 | eigenvalues of sym(J) > 1 | points | estimate > 1 | "
               "largest eigenvalue | largest diagonal |", "|---|---|---|---|---|---|---|---|"]
        md += [f"| {x['model']} | {x['sigma']} | {_fmt(x['diag_above_1'])} | {_fmt(x['eig_above_1'])} | "
               f"{_fmt(x['points_eig_above_1'])} | {_fmt(x['estimate_above_1'])} | {_fmt(x['max_eig'])} | "
               f"{_fmt(x['max_diag'])} |" for x in r["rows"]]
    if "frames" in results:
        r, names = results["frames"], ("dct", "convdct", "convdct-overlap")
        md += ["\n## Which basis fits J: relative Frobenius error of F^T diag(c) F (frame: / R) to the exact "
               "symmetrised J\n", "Exact c = diag(F J F^T) channel-averaged, or today's 1-probe estimate "
               "clamped to [0, 1]; overlap = stride 4, block 8.\n",
               "| model | sigma | " + " | ".join(f"{n}, exact c | {n}, 1 probe" for n in names) + " |",
               "|---|---|" + "---|---|" * len(names)]
        md += [f"| {x['model']} | {x['sigma']} | " + " | ".join(
            f"{_fmt(x[n + ' fit_exact'])} | {_fmt(x[n + ' fit_1probe'])}" for n in names) + " |" for x in r["rows"]]
    for key, title in (("clamp_quality", "c_max = 1 vs None: quality"),
                       ("overlap_quality", "Overlapping ConvDCT (stride 4, block 8): quality")):
        for model, r in results.get(key, {}).items():
            md += [f"\n## {title} on {model}\n\n{r['metric']} (lower is better), N = {r['num_samples']}, seeds "
                   f"{r['seeds']}, default table; paired difference (row - reference) over the same seeds.\n",
                   f"| row | NFE | {r['metric']} | reference | paired diff | relative | verdict |",
                   "|---|---|---|---|---|---|---|"]
            for x in sorted(r["rows"], key=lambda x: (x["nfe_budget"], x["label"])):
                p = x["vs_reference"]
                tail = f"| {x['reference'] or '-'} | - | - | - |" if p is None else \
                    f"| {x['reference']} | {p['diff']:+.3g} [{p['diff_ci95'][0]:+.3g}, {p['diff_ci95'][1]:+.3g}] | " \
                    f"{100 * p['relative']:+.1f}% | {p['verdict']} |"
                md.append(f"| {x['label']} | {x['nfe']} | {_fmt(x[r['metric']])} {tail}")
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", nargs="+", choices=("probes", "clamp", "overlap"), default=["probes", "clamp"])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--points", type=int, default=4, help="forward-process points per seed and sigma")
    p.add_argument("--num-samples", type=int, default=512)
    p.add_argument("--nfes", type=int, nargs="+", default=[6, 8])
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args(argv)
    if args.seeds < 2 or args.points < 1:
        raise SystemExit("--seeds must be >= 2 and --points >= 1")
    path = os.path.join(args.out, "estimator_checks.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    results["environment"] = environment(torch.device("cpu"))
    command = "python benchmarks/estimator_checks.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results.setdefault("commands", {})
    seeds = list(range(args.seeds))
    if "probes" in args.parts or "clamp" in args.parts:
        results["probes"], results["clamp_spectrum"], results["frames"] = study_probes_and_spectrum(seeds, args.points)
        results["commands"]["probes + clamp spectrum"] = command
    if "clamp" in args.parts:
        results["clamp_quality"] = {m: compare(m, CLAMP_ROWS, args.nfes, args.num_samples, args.seeds)
                                    for m in MODELS}
        results["commands"]["clamp quality"] = command
    if "overlap" in args.parts:
        results["overlap_quality"] = {m: compare(m, OVERLAP_ROWS, args.nfes, args.num_samples, args.seeds)
                                      for m in MODELS}
        results["commands"]["overlap quality"] = command
    os.makedirs(args.out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "estimator_checks.md"), "w") as f:
        f.write(markdown(results))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
