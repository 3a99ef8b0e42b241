"""The cells of the quality grid: sampler variants, NFE budgets and the schedules that fit them, a model
wrapper that counts evaluations, and sharded generation under ``torchrun``.

- Budgets: a cell gets the most steps whose NFE fits the budget (a JVP counts as one evaluation, its
  primal as another, as in the papers); cells that cannot take 2 steps are left out. The NFE actually
  spent is measured by wrapping the model (rows evaluated / samples; a forward-AD call counts twice).
- Baselines: the mean-only samplers (no JVP, no covariance); the evaluation compares every cell with the
  best baseline of its NFE column.
- Scale-out: under ``torchrun`` every rank draws its own contiguous range of sample indices (the
  counter-based noise makes the union equal to a one-process run) and rank 0 gathers and scores.
"""
from __future__ import annotations

import inspect
import os
import time
import weakref

import torch

from .sampling import get_sampler, nfe_per_sample, sample
from .schedules import get_sigmas



def _grid_rows() -> dict:
    """label -> (sampler, options) from the sampler registry: every sampler and its evaluation variants; a
    sampler's bare name is left out where one of its variants is its default (cov_ddim = cov_ddim/convdct)."""
    from .samplers.registry import names, spec

    rows = {}
    for name in names():
        s = spec(name)
        defaults = s.defaults()
        if not any(all(defaults.get(k) == v for k, v in opts.items()) for opts in s.variants.values()):
            rows[name] = (name, {})
        rows.update({label: (name, dict(opts)) for label, opts in s.variants.items()})
    return rows


VARIANTS = _grid_rows()


def canonical_label(name: str) -> str:
    """The grid row a name means: a row label as it is, or a sampler's bare registry name meaning that sampler
    at its defaults (``cov_ddim`` -> ``cov_ddim/convdct``, ``lanczos`` -> ``lanczos/k3``), so the names that
    ``covkernels sample --sampler`` takes work here too. Raises ValueError listing both kinds."""
    from .samplers.registry import names, spec

    if name in VARIANTS:
        return name
    if name in names():
        defaults = spec(name).defaults()
        for label, (sampler, opts) in VARIANTS.items():
            if sampler == name and all(defaults.get(k) == v for k, v in opts.items()):
                return label
    bare = [n for n in names() if n not in VARIANTS]
    raise ValueError(f"samplers: unknown {name!r}; choose a grid row ({', '.join(VARIANTS)}) or a sampler name "
                     f"meaning its defaults ({', '.join(bare)})")
NFES = (4, 6, 8, 12, 16, 24, 32)
# The schedule grid each sampler is tuned over (those of covkernels.schedules.SCHEDULES present at run time).
TUNE_SCHEDULES = ("karras", "exponential", "cosine", "time_uniform")
TUNE_SIGMA_MINS = (0.002, 0.02, 0.1)


def uses_covariance(sampler: str) -> bool:
    """A sampler of the registry's covariance family or one that takes JVPs (takes the shared covariance
    options and the evaluation's JVP strategy)."""
    from .samplers.registry import spec

    return spec(sampler).family == "covariance" or spec(sampler).needs_jvp


def is_baseline(label: str) -> bool:
    """A mean-only sampler (no covariance, no JVP): what the covariance samplers have to beat."""
    return not uses_covariance(VARIANTS[label][0])


def variant_options(label: str, options: dict | None) -> tuple[str, dict]:
    """``(sampler, options)`` of a grid label: each key of the shared ``options`` goes to the covariance
    samplers whose function takes it, and is dropped for the others (``evaluate`` refuses a key that no
    selected covariance row takes); the label's own options (basis, lanczos_steps) always win."""
    sampler, opts = VARIANTS[label]
    if not uses_covariance(sampler) or not options:
        return sampler, dict(opts)
    accepted = inspect.signature(get_sampler(sampler)).parameters
    return sampler, {**{k: v for k, v in options.items() if k in accepted}, **opts}


def schedule_for(label: str, nfe: int, schedule: dict, options: dict | None = None):
    """``(steps, sigmas, nfe_used)``: the schedule that spends the most of ``nfe`` (then: the most steps);
    None if fewer than 2 steps fit."""
    sampler, count = variant_options(label, options)
    best = None
    for steps in range(2, nfe + 1):  # not monotone: one more step can move a sigma below cov_sigma_max
        sigmas = get_sigmas(schedule["schedule"], steps, schedule["sigma_min"], schedule["sigma_max"], schedule["rho"])
        used = nfe_per_sample(sampler, sigmas, **count)
        if used <= nfe and (best is None or (used, steps) > (best[2], best[0])):
            best = (steps, sigmas, used)
    return best


# A grid option value: "calibrate the model's posterior spectrum once" (covkernels.calibrate_spectrum, DCT,
# defaults), with its own seed, outside the counted evaluations: a one-time per-model cost like training.
CALIBRATE = "calibrate"
CALIBRATION_SEED = 2_000_000  # not a reported seed nor the tuning seed
_SPECTRA: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def calibrated_spectrum(model, device):
    """The DCT :class:`~covkernels.PosteriorSpectrum` of ``model``, calibrated once per model object."""
    from .samplers.calibrated import calibrate_spectrum

    if model not in _SPECTRA:
        gen = torch.Generator(device=device).manual_seed(CALIBRATION_SEED)
        _SPECTRA[model] = calibrate_spectrum(model, model.event_shape, generator=gen, device=device)
    return _SPECTRA[model]


class CountingModel(torch.nn.Module):
    """Wraps a denoiser and counts the rows it evaluates; the ``jvp="auto"`` probe's calls are not the run's
    and are not counted. Exact with finite-difference JVPs (the evaluation's strategy): a dual input of
    ``torch.autograd.forward_ad`` counts twice, but ``torch.func.jvp``'s duals and double-VJP's backward
    passes are not visible to it."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0
        self.event_shape = getattr(model, "event_shape", None)

    def forward(self, x, sigma, **extra):
        from torch.autograd.forward_ad import unpack_dual

        from .jvp import probing

        dual = unpack_dual(x).tangent is not None
        if not probing():
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


def broadcast_from_rank0(obj, device=None):
    """``obj`` of rank 0 on every rank (the schedule rank 0 chose from its scores); ``obj`` itself alone."""
    rank, world = _dist(device)
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def generate(model, label: str, sigmas, num: int, *, seed: int, batch_size: int, device, jvp: str,
             options: dict | None = None) -> tuple[torch.Tensor | None, dict]:
    """This rank's share of ``num`` samples of one cell, gathered on rank 0 (others get None).
    Returns ``(samples on rank 0, {"nfe_measured", "seconds_per_sample"})``."""
    rank, world = _dist(device)
    sampler, opts = variant_options(label, options)
    if uses_covariance(sampler):
        opts = {"jvp": jvp, **opts}
    if opts.get("spectrum") == CALIBRATE:
        opts["spectrum"] = calibrated_spectrum(model, device)
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


