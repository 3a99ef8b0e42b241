"""Quality evaluation: a grid of samplers x NFE budgets on one model, N samples per cell, fixed seeds.

``evaluate(model="gmm", ...)`` (and ``covkernels eval``) runs every cell, writes the results after each
finished cell (``<out>/quality_<model>.json``; an interrupted run resumes where it stopped, losing no
finished cell), then the CSV, Markdown table and PNG plot (see :mod:`covkernels.report`).

- Budgets: a cell gets the most steps whose NFE fits the budget (a JVP counts as one evaluation, its
  primal as another, as in the papers); cells that cannot take 2 steps are left out. The NFE actually
  spent is measured by wrapping the model (rows evaluated / samples; a forward-AD call counts twice)
  and must equal the accounting.
- Every cell uses the same seed, so all samplers start from the same noise (common random numbers make
  the differences between samplers far less noisy than the metrics themselves).
- Metrics: analytic models (``gmm``, ``gaussian``): Frechet distance to exact samples in pixel space (and
  pooled 4x4: 48 dimensions, far less biased at N ~ 1000 than the 768 pixels, so it ranks samplers), the
  log-likelihood gap under the true density (nats per dimension, ``E_data log p - E_samples log p``:
  positive = samples too spread, negative = too concentrated) and, for the Gaussian, the exact W2^2 of the
  sample mean and covariance. The trained ``digits`` model: Frechet distance and k-NN precision / recall
  in the feature space of the shipped classifier against the 1797 real digits.
- Scale-out: under ``torchrun`` every rank draws its own contiguous range of sample indices (the
  counter-based noise makes the union equal to a one-process run) and rank 0 gathers and scores.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import time

import torch

from .sampling import get_sampler, nfe_per_sample, sample
from .schedules import get_sigmas

# label -> (sampler, options); the grid of the issue: baselines, cov_ddim per basis, lanczos per k.
VARIANTS = {
    "ddim": ("ddim", {}), "ddpm": ("ddpm", {}), "addim": ("addim", {}), "heun": ("heun", {}),
    "dpmpp_2m": ("dpmpp_2m", {}), "diag_hutchinson": ("diag_hutchinson", {}),
    "cov_ddim/identity": ("cov_ddim", {"basis": "identity"}), "cov_ddim/dct": ("cov_ddim", {"basis": "dct"}),
    "cov_ddim/convdct": ("cov_ddim", {"basis": "convdct"}),
    "lanczos/k1": ("lanczos", {"lanczos_steps": 1}), "lanczos/k2": ("lanczos", {"lanczos_steps": 2}),
    "lanczos/k3": ("lanczos", {"lanczos_steps": 3}), "lanczos/k5": ("lanczos", {"lanczos_steps": 5}),
}
NFES = (4, 6, 8, 12, 16, 24, 32)
EVAL_MODELS = ("gmm", "gaussian", "digits")
COVARIANCE = ("cov_ddim", "diag_hutchinson", "lanczos")


def load_model(name: str) -> torch.nn.Module:
    """The evaluation models: the 3 x 16 x 16 ``gmm`` / ``gaussian`` oracles and the trained ``digits``."""
    from .models import get_model

    if name not in EVAL_MODELS:
        raise ValueError(f"model must be one of {EVAL_MODELS}, got {name!r}")
    return get_model(name) if name == "digits" else get_model(name, size=16)


def variant_options(label: str, options: dict | None) -> tuple[str, dict]:
    """``(sampler, options)`` of a grid label: the shared ``options`` go to the covariance samplers that
    accept them; the label's own options (basis, lanczos_steps) always win."""
    sampler, opts = VARIANTS[label]
    if sampler not in COVARIANCE or not options:
        return sampler, dict(opts)
    accepted = inspect.signature(get_sampler(sampler)).parameters
    return sampler, {**{k: v for k, v in options.items() if k in accepted}, **opts}


def schedule_for(label: str, nfe: int, schedule: dict, options: dict | None = None):
    """``(steps, sigmas, nfe_used)``: the schedule that spends the most of ``nfe`` (then: the most steps);
    None if fewer than 2 steps fit."""
    sampler, opts = variant_options(label, options)
    count = {k: v for k, v in opts.items() if k in ("lanczos_steps", "probes", "cov_sigma_max")}
    best = None
    for steps in range(2, nfe + 1):  # not monotone: one more step can move a sigma below cov_sigma_max
        sigmas = get_sigmas(schedule["schedule"], steps, schedule["sigma_min"], schedule["sigma_max"], schedule["rho"])
        used = nfe_per_sample(sampler, sigmas, **count)
        if used <= nfe and (best is None or (used, steps) > (best[2], best[0])):
            best = (steps, sigmas, used)
    return best


class CountingModel(torch.nn.Module):
    """Wraps a denoiser and counts the rows it evaluates; a forward-AD (dual) input counts twice."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0
        self.event_shape = getattr(model, "event_shape", None)

    def forward(self, x, sigma, **extra):
        from torch.autograd.forward_ad import unpack_dual

        dual = unpack_dual(x).tangent is not None
        self.rows += x.shape[0] * (2 if dual else 1)
        return self.model(x, sigma, **extra)


def _dist(device=None):
    """``(rank, world)`` of an initialised (or torchrun-launched, then initialised here) process group:
    nccl when the evaluation runs on CUDA (each rank on its ``LOCAL_RANK`` GPU), gloo otherwise."""
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        cuda = device is not None and torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def finish_distributed(failed: bool = False) -> None:
    """Barrier (unless ``failed``: the other ranks may never arrive) and destroy the process group, if any:
    a rank leaving with gloo threads alive aborts the interpreter at exit."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()


def generate(model, label: str, sigmas, num: int, *, seed: int, batch_size: int, device, jvp: str,
             options: dict | None = None) -> tuple[torch.Tensor | None, dict]:
    """This rank's share of ``num`` samples of one cell, gathered on rank 0 (others get None).
    Returns ``(samples on rank 0, {"nfe_measured", "seconds_per_sample"})``."""
    rank, world = _dist(device)
    sampler, opts = variant_options(label, options)
    if sampler in COVARIANCE:
        opts = {"jvp": jvp, **opts}
    counted = CountingModel(model)
    lo, hi = num * rank // world, num * (rank + 1) // world
    chunks, start = [], time.perf_counter()
    for offset in range(lo, hi, batch_size):
        gen = torch.Generator(device=device).manual_seed(seed)  # same run seed; sample_offset makes the draw
        b = min(batch_size, hi - offset)
        x = sample(counted, (b, *model.event_shape), sampler, sigmas=sigmas, generator=gen, device=device,
                   disable=True, sample_offset=offset, **opts)
        chunks.append(x.cpu())
    stats = torch.tensor([counted.rows, hi - lo, time.perf_counter() - start], dtype=torch.float64)
    local = torch.cat(chunks) if chunks else torch.empty(0, *model.event_shape)
    if world == 1:
        return local, {"nfe_measured": float(stats[0] / stats[1]), "seconds_per_sample": float(stats[2] / stats[1])}
    import torch.distributed as dist

    gathered, all_stats = [None] * world, [None] * world
    dist.all_gather_object(gathered, local)
    dist.all_gather_object(all_stats, stats)
    total = torch.stack(all_stats).sum(0)
    info = {"nfe_measured": float(total[0] / total[1]), "seconds_per_sample": float(total[2] / total[1])}
    return (torch.cat(gathered) if rank == 0 else None), info


class Scorer:
    """The metrics of one model; the reference sets are drawn once (seeded) and shared by all cells."""

    def __init__(self, name: str, model, num: int, seed: int):
        from . import metrics

        self.name, self.model, self.m = name, model, metrics
        if name == "digits":
            from .models.digits import digits_classifier

            self.classifier = digits_classifier()
            self.real = self.classifier.reference_features.float()
        else:
            gen = torch.Generator().manual_seed(seed + 1)
            self.exact, self.exact2 = model.sample(num, generator=gen), model.sample(num, generator=gen)
            self.logp_data = float(model.log_prob(self.exact).mean())

    def __call__(self, x: torch.Tensor) -> dict:
        if self.name == "digits":
            f = self.classifier.features(x.clamp(-1, 1))
            precision, recall = self.m.precision_recall(self.real, f)
            return {"fd_features": self.m.frechet_distance(f, self.real), "precision": precision, "recall": recall}
        d = math.prod(self.model.event_shape)
        out = {"fd_pixels": self.m.frechet_distance(x, self.exact), "fd_pooled": self.m.frechet_distance(
                   *(torch.nn.functional.avg_pool2d(t.float(), 4) for t in (x, self.exact))),
               "loglik_gap": (self.logp_data - float(self.model.log_prob(x).mean())) / d}
        if self.name == "gaussian":
            out["w2"] = self.m.gaussian_w2(x, self.model.mean, self.model.sqrt_cov)
        return out

    def floor(self) -> dict:
        """The metrics of a second set of exact samples: the noise floor of the table. For digits: one half of
        the 1797 real digits against the other (a fixed split; at ~900 samples, not the cells' N)."""
        if self.name == "digits":
            gen = torch.Generator().manual_seed(7)
            idx = torch.randperm(self.real.shape[0], generator=gen)
            half = self.real.shape[0] // 2
            a, b = self.real[idx[:half]], self.real[idx[half:]]
            precision, recall = self.m.precision_recall(b, a)
            return {"fd_features": self.m.frechet_distance(a, b), "precision": precision, "recall": recall}
        return self(self.exact2)


def _save(path: str, state: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, path)  # atomic: an interrupt never leaves a half-written results file


def evaluate(model: str = "gmm", samplers=None, nfes=None, num_samples: int = 1024, *, seed: int = 0,
             batch_size: int = 256, schedule: str = "karras", sigma_min: float = 0.1, sigma_max: float = 80.0,
             rho: float = 7.0, jvp: str = "finite_difference", device="cpu", out_dir: str | None = None,
             resume: bool = True, options: dict | None = None, progress=print, command: str | None = None) -> dict:
    """Run the grid; return ``{"config", "floor", "cells"}`` (also written to ``out_dir`` on rank 0).

    ``samplers``: labels of :data:`VARIANTS` (default: all); ``nfes``: budgets (default :data:`NFES`);
    ``options``: extra sampler options for every covariance sampler (e.g. ``{"cov_sigma_max": inf}``).
    ``resume``: reuse the finished cells of an existing results file with the same configuration.
    ``command``: the command line quoted in the Markdown report.
    """
    progress = progress or (lambda message: None)
    samplers = list(dict.fromkeys(VARIANTS if samplers is None else samplers))  # repeats run once
    nfes = list(NFES) if nfes is None else list(dict.fromkeys(nfes))
    if any(isinstance(n, bool) or not isinstance(n, int) for n in nfes):
        raise ValueError(f"nfes must be int budgets >= 2, got {nfes}")
    if jvp != "finite_difference":
        # The NFE of the other strategies is not what the papers count: forward AD recomputes the primal on
        # every Lanczos JVP, central differences take 2 evaluations, double VJP 1 forward + 2 backwards,
        # and "auto" probes all of them. Finite differences cost exactly the counted evaluations.
        raise ValueError(f"jvp must be 'finite_difference' for the evaluation (its NFE count is exact), got {jvp!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    for label in samplers:
        if label not in VARIANTS:
            raise ValueError(f"samplers: unknown {label!r}; choose from {list(VARIANTS)}")
    if not nfes or min(nfes) < 2:
        raise ValueError(f"nfes must be budgets >= 2, got {nfes}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 4:
        raise ValueError(f"num_samples must be an int >= 4, got {num_samples!r}")
    sched = {"schedule": schedule, "sigma_min": sigma_min, "sigma_max": sigma_max, "rho": rho}
    from . import __version__
    from .sampling import COV_SIGMA_MAX

    opts = {"cov_sigma_max": COV_SIGMA_MAX, **(options or {})}
    config = {"model": model, "num_samples": num_samples, "seed": seed, "jvp": jvp, **sched,
              # inf as a string: strict JSON has no Infinity
              "options": {k: (str(v) if isinstance(v, float) and math.isinf(v) else v) for k, v in opts.items()},
              "device": torch.device(device).type, "covkernels": __version__, "torch": torch.__version__}
    rank, world = _dist(device)
    path = None if out_dir is None else os.path.join(out_dir, f"quality_{model}.json")
    state = {"config": config, "floor": None, "cells": []}
    if path and resume and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old.get("config") != config:
            keys = sorted(k for k in set(config) | set(old.get("config", {}))
                          if config.get(k) != old.get("config", {}).get(k))
            raise ValueError(f"out_dir: {path} holds results of another configuration (differs in {keys}); "
                             f"choose another output directory or start over with resume=False (--no-resume)")
        state = old
        progress(f"resuming {path}: {len(old['cells'])} finished cells kept")
    done = {(c["sampler"], c["nfe_budget"]) for c in state["cells"]}
    net = load_model(model).to(device)
    scorer = Scorer(model, net, num_samples, seed) if rank == 0 else None
    if rank == 0 and state["floor"] is None:
        state["floor"] = scorer.floor()
    for nfe in nfes:
        for label in samplers:
            plan = schedule_for(label, nfe, sched, options)
            if (label, nfe) in done or plan is None:
                continue
            steps, sigmas, used = plan
            x, info = generate(net, label, sigmas.to(device), num_samples, seed=seed, batch_size=batch_size,
                               device=device, jvp=jvp, options=options)
            if rank != 0:
                continue
            cell = {"sampler": label, "nfe_budget": nfe, "steps": steps, "nfe": used, **info, **scorer(x)}
            if abs(info["nfe_measured"] - used) > 1e-9:
                raise RuntimeError(f"{label} at {nfe} NFE: the model was evaluated {info['nfe_measured']} times "
                                   f"per sample, the accounting says {used}")
            state["cells"].append(cell)
            done.add((label, nfe))
            if path:
                os.makedirs(out_dir, exist_ok=True)
                _save(path, state)
            progress(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in cell.items()))
    if rank == 0 and path:
        from .report import write_reports

        written = write_reports(state, out_dir, command)
        for name in written:
            progress(f"wrote {name}")
        if not any(name.endswith(".png") for name in written):
            progress("note: matplotlib is not installed (pip install 'covkernels[plot]'): no PNG plot written")
    return state
