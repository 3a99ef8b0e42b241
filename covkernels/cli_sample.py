"""``covkernels sample``: sample a testbed's model, write a PNG grid, print its quality figure.

The models and their metrics are those of the evaluation (:mod:`covkernels.eval.testbeds`): ``--model`` takes
any registered testbed and ``--num-eval`` samples are scored by that testbed's scorer (main metric, its
floor, the other metrics).

Which sampler options apply is read from the sampler registry (``spec(name).takes(option)``), so a sampler
added to the registry is covered without edits here. Progress: one display over all batches and
one over the scoring (:class:`covkernels.progress.Progress`: a bar on a terminal, plain lines otherwise).
"""
from __future__ import annotations

import os
import sys
import time

import torch

from .progress import Progress
from .samplers import nfe_per_sample, sample
from .samplers.api import schedule_defaults
from .schedules import get_sigmas

# CLI flag of each sampler keyword the command exposes; a flag applies to a sampler the registry says takes it.
SAMPLER_FLAGS = {"eta": "--eta", "basis": "--basis", "block": "--block", "lanczos_steps": "--lanczos-steps",
                 "probes": "--probes", "jvp": "--jvp", "backend": "--backend", "cov_sigma_max": "--cov-sigma-max",
                 "ode": "--ode", "switch_sigma": "--switch-sigma", "covariance": "--covariance"}

# Below this many samples a Frechet distance is dominated by its small-sample bias (it shrinks like 1/N):
# the README's tables use 512-1024. A run with fewer still prints the figure, with a warning.
MIN_EVAL_SAMPLES = 256


def sampler_options(sampler: str, given: dict) -> dict:
    """The sampler keywords of the options the user gave (``None``: not given). Raises ValueError naming the
    sampler and the options it takes when a given option does not apply to it."""
    from .samplers.registry import spec

    s_spec = spec(sampler)
    takes = [flag for name, flag in SAMPLER_FLAGS.items() if s_spec.takes(name)]
    extra = [SAMPLER_FLAGS[name] for name, value in given.items() if value is not None and not s_spec.takes(name)]
    if extra:
        verb = "does" if len(extra) == 1 else "do"
        options = ", ".join(takes) if takes else "none of the sampler options"
        raise ValueError(f"{', '.join(extra)} {verb} not apply to --sampler {sampler}; {sampler} takes: {options}")
    return {name: value for name, value in given.items() if value is not None}


def fill_schedule(args):
    """``--schedule`` / ``--sigma-min`` left unset: the sampler's recommended values (as ``covkernels.sample``)."""
    recommended = schedule_defaults(args.sampler)
    args.schedule = recommended["schedule"] if args.schedule is None else args.schedule
    args.sigma_min = recommended["sigma_min"] if args.sigma_min is None else args.sigma_min
    return args


def check_sample_args(args) -> dict:
    """Validate what argparse cannot; returns the sampler options. Raises ValueError (a usage error)."""
    if args.scale < 1:
        raise ValueError(f"--scale must be an int >= 1 (nearest-neighbour upscaling of the grid), got {args.scale}")
    if os.path.splitext(args.out)[1].lower() != ".png":
        raise ValueError(f"--out must name a .png file (the grid is written as PNG), got {args.out!r}")
    return sampler_options(args.sampler, {name: getattr(args, name) for name in SAMPLER_FLAGS})


def min_eval_samples(testbed) -> int:
    """Fewest samples a testbed's scorer takes: its k-NN precision / recall (k = 3) need 4, the distances 2."""
    return 4 if "precision" in testbed.metrics else 2


def warnings_for(args, sigmas: torch.Tensor, opts: dict | None = None) -> list[str]:
    """Configurations known to give meaningless output or figures (the run goes on; these go to stderr)."""
    from .samplers.registry import spec
    from .eval.testbeds import get_testbed

    out = []
    steps = len(sigmas) - 1
    # a windowed covariance sampler spends more than 1 NFE on every covariance step (ode_cov always draws)
    if spec(args.sampler).windowed and nfe_per_sample(args.sampler, sigmas, **(opts or {})) == steps:
        out.append(f"{args.sampler} with {steps} step{'s' if steps != 1 else ''} takes no covariance step: the step "
                   f"to sigma 0 returns the mean and steps from above --cov-sigma-max are plain DDIM steps, so this "
                   f"samples like ddim; use more --steps (or a larger --cov-sigma-max)")
    positive = [float(s) for s in sigmas if s > 0]
    if args.sampler == "heun" and len(positive) == 2:
        out.append(f"heun with {len(sigmas) - 1} steps takes its only Heun step from sigma_max={positive[0]:g} "
                   f"straight to sigma_min={positive[1]:g}, which gives saturated noise (README quality table: "
                   f"Frechet distance 4.1e3 on gmm at 2 steps, 4.7 at 4); use --steps 4 or more")
    min_eval = min_eval_samples(get_testbed(args.model))
    if 0 < args.num_eval < min_eval:
        out.append(f"--num-eval {args.num_eval}: no quality figure, it needs at least {min_eval} samples")
    elif min_eval <= args.num_eval < MIN_EVAL_SAMPLES:
        out.append(f"--num-eval {args.num_eval}: a Frechet distance from fewer than {MIN_EVAL_SAMPLES} samples is "
                   f"dominated by its small-sample bias; compare runs only at equal N")
    return out


def make_scorer(testbed, model, num_eval: int, seed: int):
    """The testbed's scorer of ``num_eval`` samples of seed ``seed`` (built before sampling, so that a
    ``--num-eval`` the testbed cannot score is refused at once). Raises ValueError naming ``--num-eval``."""
    try:
        return testbed.make_scorer(model, num_eval, seed)
    except ValueError as exc:
        raise ValueError(f"--num-eval {num_eval} does not fit --model {testbed.name}: {exc}") from exc


def _direction(value: float, floor: float, lower_is_better) -> str:
    """What a good value of a metric is, and how far this one is from the floor (exact sampling's value)."""
    if lower_is_better is None:
        return "0 is ideal"
    if lower_is_better and floor > 0 and value > 0:
        return f"lower is better, {value / floor:.2g}x the floor"
    return "lower is better" if lower_is_better else "higher is better"


def quality_line(testbed, scorer, samples: torch.Tensor, progress) -> str:
    """`` | <main metric title> (N=n): value (floor: <floor label> value; direction); other metrics`` of
    ``samples (n, *event_shape)`` scored by the testbed's scorer, as the evaluation tables score them. Each
    metric says which way is better and, for a distance, its ratio to the floor: a value at the floor is as
    good as the testbed's reference samples at the same N."""
    scores = scorer(samples)
    progress.update()
    floor = scorer.floor()
    progress.update()
    main = testbed.main_metric

    def hint(name):
        return _direction(scores[name], floor[name], testbed.metrics[name][1])

    others = ", ".join(f"{name} {scores[name]:.4g} (floor {floor[name]:.4g}; {hint(name)})" for name in testbed.metrics
                       if name != main)
    return (f" | {testbed.metrics[main][0]} (N={samples.shape[0]}): {main} {scores[main]:.4g} "
            f"(floor, {testbed.floor_label}: {floor[main]:.4g}; {hint(main)}); {others}")


def cmd_sample(args) -> int:
    from .imageio import save_grid
    from .eval.testbeds import get_testbed

    opts = check_sample_args(args)
    fill_schedule(args)
    device = torch.device(args.device)
    testbed = get_testbed(args.model)
    model = testbed.load()
    scorer = None
    if args.num_eval >= min_eval_samples(testbed):  # scoring runs on the CPU, as in the evaluation
        scorer = make_scorer(testbed, model if device.type == "cpu" else testbed.load(), args.num_eval, args.seed)
    model = model.to(device)
    sigmas = get_sigmas(args.schedule, args.steps, args.sigma_min, args.sigma_max)
    for message in warnings_for(args, sigmas, opts):
        print(f"covkernels: warning: {message}", file=sys.stderr, flush=True)
    n_total = max(args.num, args.num_eval)
    chunks, start = [], time.perf_counter()
    with Progress(n_total, desc=f"sampling ({args.sampler})", disable=True if args.quiet else None) as progress:
        for offset in range(0, n_total, args.batch_size):
            # Every chunk re-seeds the same generator and passes its sample_offset: the samples are those of
            # one big batch, whatever --batch-size is (the documented sharding recipe).
            gen = torch.Generator(device=device).manual_seed(args.seed)
            b = min(args.batch_size, n_total - offset)
            chunks.append(sample(model, (b, *model.event_shape), args.sampler, steps=args.steps,
                                 sigma_min=args.sigma_min, sigma_max=args.sigma_max, schedule=args.schedule,
                                 generator=gen, device=device, disable=True, sample_offset=offset, **opts).cpu())
            progress.update(b)
    samples = torch.cat(chunks)
    elapsed = time.perf_counter() - start
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_grid(samples[:args.num], args.out, scale=args.scale)
    nfe = nfe_per_sample(args.sampler, sigmas, **opts)
    line = (f"{args.sampler} on {args.model}: {args.steps} step{'s' if args.steps != 1 else ''}, {nfe} NFE/sample, "
            f"{elapsed:.2f} s")
    if scorer is not None:
        with Progress(2, desc="scoring", unit="stages", disable=True if args.quiet else None) as progress:
            line += quality_line(testbed, scorer, samples[:args.num_eval], progress)
    print(line)
    print(f"wrote {args.out}")
    return 0
