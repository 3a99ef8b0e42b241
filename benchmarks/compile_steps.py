"""Eager vs ``compile=True`` (torch.compile, Inductor) on the CPU: the non-model part of one step, and
whole samples with the model, side by side in one run; compile time reported separately.

* non-model part of a step: the sampler on a one-step schedule (0.8 -> 0.4) with the model replaced by the
  one-multiply stub of ``covkernels bench``, at the model's shape: a covariance step (probe, finite-difference
  JVP, fused structured step) and a mean-only step (DDIM mean + isotropic noise);
* whole sample: ``covkernels.sample(model, shape, "cov_ddim", steps=8, compile=...)`` with the real model
  (karras 80 -> 0.002, covariance steps below sigma 1, plain steps above, the final step to 0).

Eager and compiled runs alternate within each round (``covkernels.bench.paired_times``), medians over
rounds of the times and of the per-round ratios; the machine is shared with other jobs, so single rounds
are noisy and only medians are reported. The compile time is the first compiled call minus the median
steady compiled call; run with Inductor's on-disk caches off for a cold one. Writes JSON (with the device)
and a Markdown table.

    TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 python benchmarks/compile_steps.py --repeats 5 \
        --out benchmarks/results/compile_cpu
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

import covkernels as ck
from covkernels.bench import STEP_SIGMAS, _StubDenoiser, environment, paired_times

CONFIGS = {  # name: (model loader, shape of the non-model step, shape of the whole sample)
    "digits": ("digits", (64, 1, 16, 16), (64, 1, 16, 16)),
    "unet64": ("unet64", (8, 3, 64, 64), (2, 3, 64, 64)),
}


def _load(name: str):
    from covkernels.bench import load_model

    return load_model(name).eval()


def step_runs(shape, compile: bool):
    """``{kind: run()}``: one covariance step and one mean-only step of cov_ddim on the stub model."""
    stub = _StubDenoiser(shape[1:], torch.device("cpu"), torch.float32)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor(STEP_SIGMAS)
    fn = ck.get_sampler("cov_ddim")

    def run(cov_sigma_max):
        return lambda: fn(stub, x, sigmas, disable=True, generator=torch.Generator().manual_seed(1),
                          jvp="finite_difference", cov_sigma_max=cov_sigma_max, compile=compile)

    return {"covariance step": run(math.inf), "mean-only step": run(0.1)}


def first_call(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_config(name: str, repeats: int) -> dict:
    loader, step_shape, sample_shape = CONFIGS[name]
    out = {"model": loader, "step_shape": list(step_shape), "sample_shape": list(sample_shape), "steps": {}}
    eager, compiled = step_runs(step_shape, False), step_runs(step_shape, True)
    for kind in eager:
        compile_s = first_call(compiled[kind])
        t_eager, other = paired_times(eager[kind], {"compiled": compiled[kind]}, torch.device("cpu"), repeats)
        out["steps"][kind] = {"eager_s": t_eager, "compiled_s": other["compiled"]["seconds"],
                              "compiled_over_eager": other["compiled"]["ratio"],
                              "compile_s": compile_s - other["compiled"]["seconds"]}
    model = _load(loader)

    def sample(flag):
        return lambda: ck.sample(model, sample_shape, sampler="cov_ddim", steps=8, jvp="finite_difference",
                                 generator=torch.Generator().manual_seed(2), compile=flag, disable=True)

    first = first_call(sample(True))
    t_eager, other = paired_times(sample(False), {"compiled": sample(True)}, torch.device("cpu"), repeats)
    out["sample"] = {"eager_s": t_eager, "compiled_s": other["compiled"]["seconds"],
                     "compiled_over_eager": other["compiled"]["ratio"],
                     "compile_s": first - other["compiled"]["seconds"]}
    a, b = sample(False)(), sample(True)()
    out["sample"]["max_abs_diff_vs_eager"] = float((a - b).abs().max())
    out["sample"]["sample_scale"] = float(a.abs().max())
    return out


def markdown(res: dict) -> str:
    env = res["environment"]
    lines = [f"# Eager vs compile=True on the CPU ({env['device']}, torch {env['torch']})",
             "", f"Command: `{res['command']}`. Medians of {res['repeats']} rounds; eager and compiled alternate "
             "in each round; the compiled / eager column is the median of per-round ratios. The CPU is shared "
             "with other jobs (2 cores, 4 agents), so absolute times are noisy; the compile time is the first "
             "compiled call minus the steady one.", "",
             "| model | what | shape | eager (ms) | compiled (ms) | compiled / eager | compile time (s) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in res["configs"].items():
        for kind, s in r["steps"].items():
            lines.append(f"| {name} | non-model part, {kind} | {'x'.join(map(str, r['step_shape']))} | "
                         f"{1e3 * s['eager_s']:.2f} | {1e3 * s['compiled_s']:.2f} | {s['compiled_over_eager']:.2f} | "
                         f"{s['compile_s']:.1f} |")
        s = r["sample"]
        lines.append(f"| {name} | whole sample, cov_ddim 8 steps (model included) | "
                     f"{'x'.join(map(str, r['sample_shape']))} | {1e3 * s['eager_s']:.0f} | "
                     f"{1e3 * s['compiled_s']:.0f} | {s['compiled_over_eager']:.2f} | {s['compile_s']:.1f} |")
    lines += ["", "Compiled samples vs eager (same seed): max |difference| "
              + ", ".join(f"{n} {r['sample']['max_abs_diff_vs_eager']:.2g} (scale {r['sample']['sample_scale']:.2g})"
                          for n, r in res["configs"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--out", default=None, help="path prefix: writes PREFIX.json and PREFIX.md")
    args = p.parse_args(argv)
    # Inductor caches compiled code on disk across processes: a cold compile time needs them off
    cold = os.environ.get("TORCHINDUCTOR_FORCE_DISABLE_CACHES") == "1"
    command = " ".join(["python benchmarks/compile_steps.py", *(argv if argv is not None else sys.argv[1:])])
    res = {"environment": environment(torch.device("cpu")), "repeats": args.repeats,
           "command": ("TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 " if cold else "") + command,
           "configs": {name: bench_config(name, args.repeats) for name in args.models}}
    text = markdown(res)
    print(text)
    if args.out:
        with open(args.out + ".json", "w") as f:
            json.dump(res, f, indent=2)
        with open(args.out + ".md", "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
