"""Which sampler is safe on a host's schedule? The multistep solvers on the sigmas diffusers schedulers hand us.

    python benchmarks/host_schedules.py            # ~15 min on one idle CPU core; writes benchmarks/results/host_schedules.*

Why: iPNDM (the package default) applies the Adams-Bashforth weights of equal steps whatever the actual step
sizes; a user reported the noisiest images of every sampler with it on DDPM's 10 leading-spaced steps and
lightly trained models, while on the package's exponential schedule it is the best standard solver.

What: the digits testbed's models - the shipped one (4000 training steps) and the same network trained
lightly here (``--light-steps``, same recipe, seeded) - sampled by ipndm, ipndm_v (variable-step weights),
dpmpp_2m, unipc and ddim on three 10-step schedules: diffusers' DDPMScheduler defaults (1000 linear betas,
"leading" spacing, as the user ran them; DDIMScheduler's defaults give the same sigmas), Karras (80 -> 0.002,
rho 7) and exponential (80 -> 0.1). Scored by the testbed's main metric (Frechet distance to the real digits in the shipped
classifier's features; N samples, S seeds shared by all samplers) and by the mean |Laplacian| of the pixels
(the user's measure of noise; real digits: see ``real_laplacian``). Paired 95% intervals against ipndm_v.
Everything seeded; the JSON records the command, N, S and the per-seed values.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

SAMPLERS = ("ipndm", "ipndm_v", "dpmpp_2m", "unipc", "ddim")
REFERENCE = "ipndm_v"


def schedules(steps: int) -> dict:
    """name -> sigmas (float64, ending in 0)."""
    import diffusers

    from covkernels import exponential_sigmas, karras_sigmas
    from covkernels.adapters.diffusers import scheduler_sigmas

    # DDIMScheduler's defaults give the same sigmas as DDPMScheduler's (same betas, leading spacing, final 0)
    return {"ddpm_leading": scheduler_sigmas(diffusers.DDPMScheduler(), steps, dtype=torch.float64),
            "karras": karras_sigmas(steps, 0.002, 80.0).double(),
            "exponential": exponential_sigmas(steps, 0.1, 80.0).double()}


def mean_abs_laplacian(x: torch.Tensor) -> float:
    """Mean |5-point Laplacian| of images in [-1, 1] mapped to [0, 1] (the user's noise measure)."""
    u = (x.clamp(-1, 1) + 1) / 2
    lap = (u[..., 1:-1, :-2] + u[..., 1:-1, 2:] + u[..., :-2, 1:-1] + u[..., 2:, 1:-1] - 4 * u[..., 1:-1, 1:-1])
    return float(lap.abs().mean())


def frechet_features(scorer, x: torch.Tensor) -> float:
    """The testbed's main metric alone (its scorer also runs k-NN precision / recall, not needed here)."""
    return scorer.m.frechet_distance(scorer.classifier.features(x.clamp(-1, 1)), scorer.real)


def models(light_steps: int, seed: int) -> dict:
    from train_digits import load_digits_16, train_denoiser

    from covkernels.models import get_model

    x, _ = load_digits_16()
    light, _ = train_denoiser(x, light_steps, 128, torch.Generator().manual_seed(seed))
    return {"digits (shipped, 4000 training steps)": get_model("digits"),
            f"digits (lightly trained, {light_steps} steps)": light}


def run_cell(model, sampler, sigmas, num, seed, batch):
    import covkernels as ck

    chunks = []
    for offset in range(0, num, batch):
        gen = torch.Generator().manual_seed(seed)
        chunks.append(ck.sample(model, (min(batch, num - offset), 1, 16, 16), sampler, sigmas=sigmas.float(),
                                generator=gen, sample_offset=offset, disable=True))
    return torch.cat(chunks)


def main() -> None:
    from covkernels.eval.intervals import paired, summarize_seeds
    from covkernels.eval.testbeds import get_testbed

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--light-steps", type=int, default=300)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--num", type=int, default=256)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--out", default=os.path.join(HERE, "results", "host_schedules"))
    args = p.parse_args()
    torch.set_num_threads(1)
    testbed = get_testbed("digits")
    scorer = testbed.make_scorer(None, args.num, 0)
    from train_digits import load_digits_16

    out = {"command": "python benchmarks/host_schedules.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "torch": torch.__version__, "num": args.num, "seeds": list(range(args.seeds)),
        "real_laplacian": mean_abs_laplacian(load_digits_16()[0]), "cells": []}
    start = time.time()
    for model_name, model in models(args.light_steps, 0).items():
        for sched_name, sigmas in schedules(args.steps).items():
            per = {}
            for sampler in SAMPLERS:
                fd, lap = [], []
                for seed in range(args.seeds):
                    x = run_cell(model, sampler, sigmas, args.num, seed, args.batch)
                    fd.append(frechet_features(scorer, x))
                    lap.append(mean_abs_laplacian(x))
                per[sampler] = {"fd_features": fd, "laplacian": lap}
                print(f"{time.time() - start:5.0f} s  {model_name} | {sched_name:12s} | {sampler:8s} "
                      f"fd {sum(fd) / len(fd):.4g}  |lap| {sum(lap) / len(lap):.3f}", flush=True)
            for sampler, vals in per.items():
                cell = {"model": model_name, "schedule": sched_name, "sampler": sampler,
                        "sigmas": [round(float(s), 5) for s in sigmas], **summarize_seeds(vals)}
                if sampler != REFERENCE:
                    cell["vs_" + REFERENCE] = {m: paired(vals[m], per[REFERENCE][m], True)
                                               for m in ("fd_features",)}
                out["cells"].append(cell)
    out["seconds"] = round(time.time() - start)
    with open(args.out + ".json", "w") as f:
        json.dump(out, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(out))
    print(f"wrote {args.out}.json and .md")


def markdown(out: dict) -> str:
    lines = ["# Multistep solvers on host schedules (digits testbed, 10 steps)", "",
             f"Reproduce: `{out['command']}` ({out['seconds']} s). N = {out['num']}, S = {len(out['seeds'])} "
             f"seeds shared by all samplers. Cells: Frechet distance to the real digits in classifier features, "
             f"mean ± 95% half-width; in brackets the paired difference to `{REFERENCE}` with its 95% interval "
             f"(**bold**: interval excludes 0); then mean |Laplacian| (real digits: {out['real_laplacian']:.3f}).",
             ""]
    by = {}
    for c in out["cells"]:
        by.setdefault((c["model"], c["schedule"]), []).append(c)
    for (model, sched), cells in by.items():
        lines += [f"## {model}, {sched}", "", "| sampler | FD (features) | vs " + REFERENCE + " | mean abs Laplacian |",
                  "|---|---:|---:|---:|"]
        for c in cells:
            half = 0.5 * (c["fd_features_ci95"][1] - c["fd_features_ci95"][0])
            vs = c.get("vs_" + REFERENCE, {}).get("fd_features")
            diff = "" if vs is None else f"{vs['diff']:+.3g} [{vs['diff_ci95'][0]:.3g}, {vs['diff_ci95'][1]:.3g}]"
            if vs is not None and vs["verdict"] != "tie":
                diff = f"**{diff}**"
            lines.append(f"| {c['sampler']} | {c['fd_features']:.4g} ± {half:.2g} | {diff} | {c['laplacian']:.3f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
