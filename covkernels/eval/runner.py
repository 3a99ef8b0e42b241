"""Running the grid's cells: sampling one cell (:func:`generate`, sharded under ``torchrun``), counting the
model evaluations it spends (:class:`CountingModel`) and scoring its seeds (:class:`CellRunner`).

The NFE a cell spends is measured by wrapping the model (rows evaluated / samples; a forward-AD call
counts twice) and must equal the accounting of :func:`covkernels.eval.plan.schedule_for`.
"""
from __future__ import annotations

import time
import warnings
import weakref

import torch

from ..samplers import StepSpacingWarning, sample
from ..samplers.registry import spec
from .distributed import gather_on_rank0, rank_and_world, shard
from .plan import variant_options
from .scorers import Scorer

# A grid option value: "calibrate the model's posterior spectrum once" (covkernels.calibrate_spectrum, DCT,
# defaults), with its own seed, outside the counted evaluations: a one-time per-model cost like training.
CALIBRATE = "calibrate"
CALIBRATION_SEED = 2_000_000  # not a reported seed nor the tuning seed
_SPECTRA: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def calibrated_spectrum(model, device):
    """The DCT :class:`~covkernels.PosteriorSpectrum` of ``model``, calibrated once per model object."""
    from ..samplers.calibrated import calibrate_spectrum

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

        from ..jvp import probing

        dual = unpack_dual(x).tangent is not None
        if not probing():
            self.rows += x.shape[0] * (2 if dual else 1)
        return self.model(x, sigma, **extra)


def sampler_call(model, label: str, jvp: str, options: dict | None, device) -> tuple[str, dict]:
    """``(sampler, keyword options)`` of one grid row's run: the row's options, the shared ``options`` the
    sampler takes, the evaluation's JVP strategy for the covariance samplers, a calibrated spectrum where
    asked for (:data:`CALIBRATE`)."""
    sampler, opts = variant_options(label, options)
    if spec(sampler).uses_covariance:
        opts = {"jvp": jvp, **opts}
    if opts.get("spectrum") == CALIBRATE:
        opts["spectrum"] = calibrated_spectrum(model, device)
    return sampler, opts


def generate(model, label: str, sigmas, num: int, *, seed: int, batch_size: int, device, jvp: str,
             options: dict | None = None) -> tuple[torch.Tensor | None, dict]:
    """This rank's share of ``num`` samples of one cell, gathered on rank 0 (others get None).
    Returns ``(samples on rank 0, {"nfe_measured", "seconds_per_sample"})``."""
    sampler, opts = sampler_call(model, label, jvp, options, device)
    counted = CountingModel(model)
    lo, hi = shard(num, device)
    chunks, start = [], time.perf_counter()
    with warnings.catch_warnings():
        # the grid tries every schedule on purpose (tuning): advice about a schedule's spacing is noise here
        warnings.simplefilter("ignore", StepSpacingWarning)
        for offset in range(lo, hi, batch_size):
            gen = torch.Generator(device=device).manual_seed(seed)  # same run seed; sample_offset: the draw
            b = min(batch_size, hi - offset)
            x = sample(counted, (b, *model.event_shape), sampler, sigmas=sigmas, generator=gen, device=device,
                       disable=True, sample_offset=offset, extra_args=batch_args(model, offset, offset + b), **opts)
            chunks.append(x.cpu())
    stats = torch.tensor([counted.rows, hi - lo, time.perf_counter() - start], dtype=torch.float64)
    local = torch.cat(chunks) if chunks else torch.empty(0, *model.event_shape)
    samples, total = gather_on_rank0(local, stats, device)
    return samples, {"nfe_measured": float(total[0] / total[1]), "seconds_per_sample": float(total[2] / total[1])}


def batch_args(model, start: int, stop: int) -> dict | None:
    """The conditioning of samples ``start .. stop - 1`` of a model that has any (a user's model,
    :class:`~covkernels.eval.sources.SamplingModel`); None otherwise."""
    return model.batch_args(start, stop) if hasattr(model, "batch_args") else None


def by_metric(per_seed: list[dict]) -> dict:
    """``[{metric: v}, ...]`` (one dict per seed) -> ``{metric: [v, ...]}``."""
    return {k: [d[k] for d in per_seed] for k in per_seed[0]} if per_seed else {}


class CellRunner:
    """Samples a cell's seeds on the evaluation's device and scores them on rank 0, on the CPU, with one scorer
    per seed and N (built once: a scorer may draw a reference set). ``advance(evaluations)`` is told the
    model evaluations of every finished run (the progress display)."""

    def __init__(self, config, testbed, advance):
        self.config, self.testbed, self.advance = config, testbed, advance
        self.rank, _ = rank_and_world(config.device)
        self.net = testbed.load().to(config.device)
        # scoring runs on the CPU: a second copy of the model where the network runs elsewhere
        self.score_net = self.net if torch.device(config.device).type == "cpu" or not testbed.scores_model \
            else testbed.load()
        self._scorers: dict = {}

    def scorer(self, seed: int, num: int | None = None):
        num = self.config.num_samples if num is None else num
        if (seed, num) not in self._scorers:
            scorer = self.testbed.make_scorer(self.score_net, num, seed)
            if not isinstance(scorer, Scorer):
                raise TypeError(f"testbed {self.testbed.name!r}: make_scorer must return a Scorer (scorer(x) -> "
                                f"{{metric: value}} and scorer.floor()), got {type(scorer).__name__}")
            self._scorers[seed, num] = scorer
        return self._scorers[seed, num]

    def floors(self) -> list[dict]:
        """The floor of every reported seed."""
        return [self.scorer(s).floor() for s in self.config.seed_list]

    def run(self, label: str, nfe: int, schedule: dict, plan, seeds: list[int], num: int | None = None):
        """Sample and score ``label`` at budget ``nfe`` on ``schedule`` (its ``plan``: steps, sigmas, NFE used)
        for each of ``seeds``. Returns ``(the cell's head fields, [{metric: value} per seed])`` (the scores on
        rank 0 only). Raises RuntimeError where the measured NFE is not the accounted one."""
        cfg = self.config
        num = cfg.num_samples if num is None else num
        steps, sigmas, used = plan
        per_seed, seconds, measured = [], [], []
        for s in seeds:
            x, info = generate(self.net, label, sigmas.to(cfg.device), num, seed=s, batch_size=cfg.batch_size,
                               device=cfg.device, jvp=cfg.jvp, options=cfg.options)
            self.advance(num * nfe)
            if self.rank != 0:
                continue
            if abs(info["nfe_measured"] - used) > 1e-9:
                raise RuntimeError(f"{label} at {nfe} NFE: the model was evaluated {info['nfe_measured']} times "
                                   f"per sample, the accounting says {used}")
            per_seed.append(self.scorer(s, num)(x))
            seconds.append(info["seconds_per_sample"])
            measured.append(info["nfe_measured"])
        return {"sampler": label, "nfe_budget": nfe, "schedule": schedule["schedule"],
                "sigma_min": schedule["sigma_min"], "steps": steps, "nfe": used,
                "nfe_measured": max(measured, default=used),
                "seconds_per_sample": sum(seconds) / max(1, len(seconds))}, per_seed
