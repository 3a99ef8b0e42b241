"""Helpers shared by the test areas (imported as ``from helpers import ...``; ``python_tests/`` is on the path
through its conftest). CPU; float64 is the oracle dtype."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent  # the repository root


# Covariance samplers take plain DDIM steps above sigma = cov_sigma_max (default 1.0); tests about the
# covariance step itself put it on every step.
EVERY_STEP = {"cov_sigma_max": math.inf}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def spd_matrix(d: int, seed: int, floor: float = 0.1) -> torch.Tensor:
    """A well-conditioned random SPD matrix (float64) with distinct eigenvalues in about [floor, 2]."""
    a = torch.randn(d, d, generator=gen(seed), dtype=torch.float64)
    q, _ = torch.linalg.qr(a)
    evals = torch.linspace(floor, 2.0, d, dtype=torch.float64)
    return (q * evals) @ q.T


def whitened_errors(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[float, float]:
    """(mean error, covariance error) of samples against N(mean, cov), both in whitened units.

    mean error: ``sqrt(N) |C^-1/2 (mu_hat - mu)|`` (chi with d dof for exact samples: ~sqrt(d));
    covariance error: ``|C^-1/2 C_hat C^-1/2 - I|_F`` (~sqrt(d (d+1) / N) for exact samples).
    """
    x = samples.to(torch.float64).flatten(1)
    n = x.shape[0]
    evals, evecs = torch.linalg.eigh(cov.to(torch.float64))
    w = evecs / evals.sqrt()  # x @ w whitens
    z = (x - mean.to(torch.float64).flatten()) @ w
    mu_err = math.sqrt(n) * float(z.mean(0).norm())
    zc = z - z.mean(0)
    c_hat = zc.T @ zc / (n - 1)
    cov_err = float((c_hat - torch.eye(z.shape[1], dtype=torch.float64)).norm())
    return mu_err, cov_err


def expected_cov_error(d: int, n: int) -> float:
    return math.sqrt(d * (d + 1) / n)


def sampler_normal(seed, shape, **kw):
    """The Gaussian stream the samplers draw on this machine (the ``auto`` backend's). Hand-computed
    expectations use it: a compiled backend computes float64 runs natively, and its float32 noise differs
    from the reference's by the 1-ulp differences of libm's and torch's float32 log/cos."""
    from covkernels.ops import dispatch

    return dispatch.resolve("auto", kw.get("device") or "cpu").normal(seed, shape, **kw)


def tiny_unet(num_classes=None):
    """A seeded float64 diffusers UNet2DModel (16 x 16, 3 channels, one attention level) for the adapter
    and scheduler-equivalence tests (diffusers is in the test extra)."""
    import diffusers

    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                 attention_head_dim=8, num_class_embeds=num_classes).eval().double()


def run_cli(args, cwd, **env_changes):
    """``(exit code, stdout, stderr)`` of ``python -m covkernels *args``; stderr goes to a file, not a TTY."""
    env = {k: v for k, v in os.environ.items() if k not in env_changes}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    err_path = Path(cwd) / "stderr.log"
    with open(err_path, "w") as err:
        proc = subprocess.run([sys.executable, "-m", "covkernels", *args], stdout=subprocess.PIPE, stderr=err,
                              text=True, cwd=cwd, env=env)
    return proc.returncode, proc.stdout, err_path.read_text()


def grid_cell(sampler, nfe, values, table="default"):
    """One cell of a results state (the evaluation's format) with the per-seed values of metric ``fd``."""
    from covkernels.eval.intervals import summarize_seeds

    return {"sampler": sampler, "nfe_budget": nfe, "table": table, "steps": nfe, "nfe": nfe, "schedule": "karras",
            "sigma_min": 0.1, "seeds": list(range(len(values))), **summarize_seeds({"fd": values})}


def toy_grid_state():
    """A small committed-format grid state on gmm at 8 NFE: ddim, dpmpp_2m, cov_ddim/dct, lanczos/k1 over 5
    seeds, with a floor (for report and interval tests)."""
    from covkernels.eval.intervals import summarize_seeds

    seed_effect = [0.0, 0.4, -0.2, 0.3, 0.1]
    cells = [grid_cell("ddim", 8, [1.0 + s for s in seed_effect]),
             grid_cell("dpmpp_2m", 8, [0.8 + s + 0.01 * i for i, s in enumerate(seed_effect)]),
             grid_cell("cov_ddim/dct", 8, [0.7 + s - 0.01 * i for i, s in enumerate(seed_effect)]),
             grid_cell("lanczos/k1", 8, [0.8 + s + (-0.1) ** i for i, s in enumerate(seed_effect)])]
    return {"config": {"model": "gmm", "num_samples": 64, "seeds": [0, 1, 2, 3, 4], "schedule": "karras",
                       "sigma_min": 0.1, "sigma_max": 80.0, "rho": 7.0, "jvp": "finite_difference", "options": {},
                       "tables": ["default"]},
            "floor": summarize_seeds({"fd": [0.1, 0.12, 0.11, 0.1, 0.09]}), "tuning": [], "cells": cells}


def scheduler_loop(unet, sched, steps: int, noise: torch.Tensor, **step_kwargs) -> torch.Tensor:
    """A diffusers scheduler's own sampling loop from ``noise`` (the reference the parity tests compare
    our samplers with, on the same UNet, noise and timesteps); ``step_kwargs`` go to ``sched.step``."""
    sched.set_timesteps(steps)
    x = noise.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x, **step_kwargs).prev_sample
    return x
