"""Claims 6 and 7 of docs/claims.md: measure, write ``benchmarks/results/claims/claim<N>.{json,png}``.

    OMP_NUM_THREADS=1 python benchmarks/claims/run.py --claim 6   # path KL vs T (about 4.5 min of CPU, one core)
    OMP_NUM_THREADS=1 python benchmarks/claims/run.py --claim 6 --tail   # full vs isotropic at T = 1024-4096
    OMP_NUM_THREADS=1 python benchmarks/claims/run.py --claim 7   # Lanczos square-root error vs k (about 15 s)

Every random number comes from ``torch.Generator().manual_seed(...)`` seeded as recorded in the JSON; the same
command gives the same numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from covariances import sampler_names  # noqa: E402
from lanczos_error import ROUNDING_FLOOR, fitted_rate, power_law_oracle, step_errors  # noqa: E402
from pathkl import (SharedMixture, claim_mixture, gaussian_path_kl, karras_grid, loglog_slope,  # noqa: E402
                    mixture_path_kl)

from covkernels.eval.intervals import mean_ci95  # noqa: E402
from covkernels.models import DenseGaussian  # noqa: E402

OUT = HERE.parent / "results" / "claims"
GRID = {"kind": "karras", "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}
ROUNDING_KL = 1e-12  # a closed-form path KL below this is float64 rounding of an exact 0: no slope
TAIL_T, TAIL_NAMES = [1024, 2048, 4096], ["iso_best", "full"]  # --tail: the order of full matching at larger T
GAUSS_NAMES = ["ddpm_iso", "iso_best", "diag_pixel", "diag_dct", "lanczos_k1", "full"]


def sigmas(steps: int) -> list[float]:
    return karras_grid(steps, GRID["sigma_min"], GRID["sigma_max"], GRID["rho"])


def gaussian_oracles() -> dict:
    """Two DenseGaussian oracles on 8 x 8 images with one natural-image-like spectrum: stationary (the DCT
    diagonalises it) and the same eigenvalues in a random orthonormal basis (seed 0: no basis of ours is exact)."""
    spectral = power_law_oracle(size=8)
    cov = spectral.covariance()
    evals = torch.linalg.eigvalsh(cov)
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    mean = torch.zeros(1, 8, 8, dtype=torch.float64)
    return {"stationary_dct": DenseGaussian(mean, cov), "rotated": DenseGaussian(mean, (q * evals) @ q.T)}


def gauss_covariances(dct: torch.Tensor) -> dict:
    from covariances import sampler_covariance  # noqa: PLC0415

    return {n: (lambda S, J, s, up, n=n: sampler_covariance(n, S, J, s, up, dct=dct)) for n in GAUSS_NAMES}


def slope_stats(steps: list[int], per_seed: list[list[float]]) -> dict:
    """Per-seed log-log slopes over ``steps``, their mean and 95% t-interval over seeds."""
    slopes = [loglog_slope(steps, vals) for vals in per_seed]
    mean, ci = mean_ci95(slopes)
    return {"fit_T": steps, "per_seed": slopes, "mean": mean, "ci95": ci}


def claim6(args) -> dict:
    from pathkl import basis_matrix  # noqa: PLC0415

    started = time.time()
    gauss_steps = [2 ** i for i in range(2, 12)]
    dct = basis_matrix((1, 8, 8), "dct")
    closed = {}
    for name, oracle in ({} if args.tail else gaussian_oracles()).items():
        rows = {T: gaussian_path_kl(oracle, gauss_covariances(dct), sigmas(T)) for T in gauss_steps}
        table = {n: [rows[T][n] for T in gauss_steps] for n in GAUSS_NAMES}
        fit = [T for T in gauss_steps if T >= 256]
        exact = [n for n in GAUSS_NAMES if max(abs(v) for v in table[n]) < ROUNDING_KL]
        closed[name] = {"T": gauss_steps, "path_kl": table, "slope_fit_T": fit,
                        "slope": {n: loglog_slope(fit, [table[n][gauss_steps.index(T)] for T in fit])
                                  for n in GAUSS_NAMES if n not in exact},
                        "exact_to_rounding": {n: max(abs(v) for v in table[n]) for n in exact},
                        "full_max_abs": max(abs(v) for v in table["full"])}
    mix = SharedMixture(claim_mixture())
    names = TAIL_NAMES if args.tail else sampler_names(mix.d)
    expensive = [n for n in names if n.startswith("lanczos_k") and n != "lanczos_k1"]  # MC: to T = 512 only
    steps_all = TAIL_T if args.tail else [2 ** i for i in range(2, 10)]
    steps_cheap = steps_all if args.tail else steps_all + [1024]
    per_seed = {n: [] for n in ["gap", *names]}
    for seed in args.seeds:
        vals = {n: [] for n in per_seed}
        for T in steps_cheap:
            use = names if T in steps_all else [n for n in names if n not in expensive]
            gen = torch.Generator().manual_seed(1000 * seed + T)
            res = mixture_path_kl(mix, sigmas(T), use, args.points, gen)
            for n, v in res.items():
                vals[n].append(v)
            print(f"seed {seed} T {T}: gap {res['gap']:.3e} ({time.time() - started:.0f} s)", flush=True)
        for n in per_seed:
            per_seed[n].append(vals[n])
    mixture = {"T": steps_cheap, "per_seed": per_seed, "mean_ci95": {}, "slope": {}, "local_slopes": {}}
    for n, rows in per_seed.items():
        ts = steps_cheap[:len(rows[0])]
        mixture["mean_ci95"][n] = [mean_ci95([r[i] for r in rows]) for i in range(len(ts))]
        fit = [T for T in ts if T >= 128 or args.tail]
        mixture["slope"][n] = slope_stats(fit, [[r[ts.index(T)] for T in fit] for r in rows])
        mixture["local_slopes"][n] = [slope_stats([a, b], [[r[i], r[i + 1]] for r in rows])
                                      for i, (a, b) in enumerate(zip(ts[:-1], ts[1:]))]
    return {"claim": 6, "grid": GRID, "chain": "eta = 1 (DDPM), T noisy steps, no final denoise",
            "gaussian_closed_form": closed,
            "gaussian_oracles": "run.gaussian_oracles(): DenseGaussian on (1, 8, 8), zero mean, the covariance of "
                                "lanczos_error.power_law_oracle(size=8) (DCT power (1 + |f|^2)^-1, per-pixel std 0.5) "
                                "as is (stationary_dct) and with its eigenvalues in a random orthonormal basis "
                                "(QR of a float64 randn(64, 64), generator seed 0: rotated); samplers "
                                + ", ".join(GAUSS_NAMES),
            "mixture": {**mixture, "d": mix.d, "components": mix.k, "points_per_step": args.points,
                        "seeds": args.seeds, "generator_seed": "1000 * seed + T", "quadrature_order": 12,
                        "lanczos_directions": 16, "oracle": "pathkl.claim_mixture() (shape (1, 4, 4), 3 "
                        "components, seed 0, separation 1.5, std 0.25, exponent 2)"},
            "tail": args.tail, "seconds": time.time() - started}


def summarize7(ks: list[int], steps: list[dict]) -> dict:
    """Per grid: the slowest step (fitted rate, kappa, the two reference rates), the largest k = 3 error, the
    k that brings every step under 1e-3, and the largest measured error / derived bound."""
    slow = max(steps, key=lambda s: s["fitted_rate"][0])
    worst3 = max(steps, key=lambda s: s["geo_mean_relative_error"][2])
    need = [next((k for k, e in zip(ks, s["geo_mean_relative_error"]) if e < 1e-3), None) for s in steps]
    return {"slowest_step": {k: slow[k] for k in ("sigma_t", "sigma_s", "kappa", "fitted_rate", "chebyshev_rate",
                                                  "taylor_q")},
            "max_k3_error": [worst3["geo_mean_relative_error"][2], worst3["geo_ci95"][2], worst3["sigma_t"],
                             worst3["sigma_s"]],
            "k_for_1e-3_every_step": None if None in need else max(need),
            "max_error_over_bound": max(s["max_error_over_bound_above_rounding"] or 0.0 for s in steps)}


def claim7(args) -> dict:
    started = time.time()
    oracle = power_law_oracle(size=32)
    ks = list(range(1, 17))
    grids = {}
    for T in (4, 10, 50):
        gen = torch.Generator().manual_seed(T)
        sig = sigmas(T)
        steps = []
        for sigma_t, sigma_s in zip(sig[:-1], sig[1:]):
            r = step_errors(oracle, sigma_t, sigma_s, ks, args.draws, gen)
            err = r["relative_error"]
            per_draw = [fitted_rate(ks, err[i]) for i in range(err.shape[0])]
            logs = [mean_ci95(err[:, i].log().tolist()) for i in range(len(ks))]
            ratio = r["error_per_norm_xi"] / torch.tensor(r["bound_per_norm_xi"], dtype=torch.float64)
            above = r["error_per_norm_xi"] > ROUNDING_FLOOR * math.sqrt(r["spectrum"][1])
            steps.append({"sigma_t": sigma_t, "sigma_s": sigma_s, "kappa": r["kappa"],
                          "chebyshev_rate": r["chebyshev"], "taylor_q": r["taylor_q"],
                          "fitted_rate": mean_ci95([p for p in per_draw if p == p]),
                          "geo_mean_relative_error": [math.exp(m) for m, _ in logs],
                          "geo_ci95": [[math.exp(c[0]), math.exp(c[1])] for _, c in logs],
                          "bound_per_norm_xi": r["bound_per_norm_xi"],
                          "max_error_over_bound_above_rounding": float(ratio[above].max()) if bool(above.any())
                          else None})
        grids[str(T)] = steps
    return {"claim": 7, "summary": {T: summarize7(ks, steps) for T, steps in grids.items()}, "grid": GRID,
            "oracle": "lanczos_error.power_law_oracle(size=32): d = 1024, DCT power (1 + |f|^2)^-1, per-pixel "
            "std 0.5", "ks": ks, "draws": args.draws, "generator_seed": "T", "steps": grids,
            "seconds": time.time() - started}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claim", type=int, choices=(6, 7), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--points", type=int, default=96, help="claim 6: x_t draws per step")
    parser.add_argument("--draws", type=int, default=32, help="claim 7: noise vectors per step")
    parser.add_argument("--tail", action="store_true", help=f"claim 6: only {TAIL_NAMES} on the mixture at "
                        f"T = {TAIL_T}, written to claim6_tail.json (about 6 min of CPU)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = claim6(args) if args.claim == 6 else claim7(args)
    result["command"] = "python benchmarks/claims/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result["torch"] = torch.__version__
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"claim{args.claim}" + ("_tail" if args.tail and args.claim == 6 else "")
    path = args.out / f"{stem}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    from plots import plot_claim  # noqa: PLC0415

    if args.claim == 7:
        plot_claim(result, args.out / "claim7.png")
    else:  # one figure from both claim-6 runs, whichever finished last
        main_json, tail_json = args.out / "claim6.json", args.out / "claim6_tail.json"
        if main_json.exists():
            tail = json.loads(tail_json.read_text()) if tail_json.exists() else None
            plot_claim(json.loads(main_json.read_text()), args.out / "claim6.png", tail)
    print(f"wrote {path} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
