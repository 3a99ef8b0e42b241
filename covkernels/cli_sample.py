"""``covkernels sample``: sample a model, write a PNG grid and print its quality figure, or export samples.

The models and their metrics are those of the evaluation: ``--model`` takes a registered testbed
(:mod:`covkernels.eval.testbeds`), whose scorer scores ``--num-eval`` samples (main metric, its floor, the
other metrics), or your model as ``package.module:factory`` (:mod:`covkernels.eval.user_model`), scored
against ``--reference`` in ``--metrics`` where one is given (:mod:`covkernels.eval.sources`). With
``--out-dir DIR`` the command writes ``--num`` samples as numbered PNGs or one npz instead, resumably and
the same under ``torchrun`` (:mod:`covkernels.eval.export`).

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
# docs/evaluation.md's tables use 512-1024. A run with fewer still prints the figure, with a warning.
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


def warnings_for(args, sigmas: torch.Tensor, opts: dict | None = None, testbed=None) -> list[str]:
    """Configurations known to give meaningless output or figures (the run goes on; these go to stderr).
    ``testbed``: what scores the samples (unset: the testbed ``--model`` names, if it names one)."""
    from .samplers.registry import spec
    from .eval.testbeds import get_testbed, testbed_names

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
                   f"straight to sigma_min={positive[1]:g}, which gives saturated noise (on gmm, seed 0, N 512: "
                   f"pooled Frechet distance 4.5e3 at 2 steps, 14 at 4, floor 0.08); use --steps 4 or more")
    if testbed is None and args.model not in testbed_names():
        return out  # nothing scores the samples: no --num-eval advice
    min_eval = min_eval_samples(testbed or get_testbed(args.model))
    if 0 < args.num_eval < min_eval:
        out.append(f"--num-eval {args.num_eval}: no quality figure, it needs at least {min_eval} samples")
    elif min_eval <= args.num_eval < MIN_EVAL_SAMPLES:
        out.append(f"--num-eval {args.num_eval}: a Frechet distance from fewer than {MIN_EVAL_SAMPLES} samples is "
                   f"dominated by its small-sample bias; compare runs only at equal N")
    return out


def checked_scorer(testbed, model, num_eval: int, seed: int):
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
    if not floor:  # a reference of fewer than 2N images has no floor
        floor = {name: float("nan") for name in scores}

    def hint(name):
        return _direction(scores[name], floor[name], testbed.metrics[name][1])

    others = ", ".join(f"{name} {scores[name]:.4g} (floor {floor[name]:.4g}; {hint(name)})" for name in testbed.metrics
                       if name != main)
    return (f" | {testbed.metrics[main][0]} (N={samples.shape[0]}): {main} {scores[main]:.4g} "
            f"(floor, {testbed.floor_label}: {floor[main]:.4g}; {hint(main)}); {others}")


def sampling_source(args, device):
    """``(model to sample, UserModel, scoring testbed or None)`` of ``--model`` / ``--reference`` /
    ``--metrics``: a testbed's model and its scorer, or your model (``package.module:factory``) scored
    against ``--reference`` where one is given (:mod:`covkernels.eval.sources`)."""
    from .eval.sources import SamplingModel, reference_source
    from .eval.testbeds import get_testbed
    from .eval.user_model import as_user_model, is_factory_path, load_factory

    if args.metrics is not None and args.reference is None:
        raise ValueError("--metrics applies to a --reference (a testbed scores with its own metrics)")
    if not is_factory_path(args.model) and args.reference is None:
        testbed = get_testbed(args.model)  # an unknown name: ValueError listing the testbeds
        model = testbed.load()
        return model, as_user_model(model, args.model), testbed
    user = load_factory(args.model) if is_factory_path(args.model) else \
        as_user_model(get_testbed(args.model).load(), args.model)
    testbed = None
    if args.reference is not None and args.out_dir is None:
        testbed = reference_source(args.model, user, args.reference, args.metrics, resize=args.reference_resize,
                                   cache_dir=args.feature_cache, device=device, min_count=args.num_eval).testbed
    return SamplingModel(user), user, testbed


def draw(model, args, opts: dict, device, start: int, stop: int) -> torch.Tensor:
    """Samples ``start .. stop - 1`` of the run: the generator re-seeded and ``sample_offset=start``, so a
    sample is the same whatever the batch it is drawn in (the documented sharding recipe)."""
    gen = torch.Generator(device=device).manual_seed(args.seed)
    extra = model.batch_args(start, stop) if hasattr(model, "batch_args") else None
    return sample(model, (stop - start, *model.event_shape), args.sampler, steps=args.steps, sigma_min=args.sigma_min,
                  sigma_max=args.sigma_max, schedule=args.schedule, generator=gen, device=device, disable=True,
                  sample_offset=start, extra_args=extra, **opts)


def export_run(args, model, user, opts: dict, device) -> int:
    """``--out-dir``: write ``--num`` samples as files (:mod:`covkernels.eval.export`), sharded under torchrun."""
    from .eval.distributed import finish_distributed, rank_and_world
    from .eval.export import export_samples

    config = {"model": args.model, "sampler": args.sampler, "options": opts, "steps": args.steps,
              "schedule": args.schedule, "sigma_min": args.sigma_min, "sigma_max": args.sigma_max, "seed": args.seed}
    try:
        rank, world = rank_and_world(device)
        with Progress(args.num, desc=f"exporting ({args.sampler})", disable=True if args.quiet or rank else None) as bar:
            done = export_samples(lambda a, b: user.images(draw(model, args, opts, device, a, b)), args.num,
                                  args.out_dir,
                                  fmt=args.format, batch_size=args.batch_size, data_range=user.data_range,
                                  config=config, device=device, progress=bar.update)
    except BaseException:
        finish_distributed(failed=True)
        raise
    finish_distributed()
    who = f"rank {rank}/{world}: " if world > 1 else ""
    if done["count"] > args.num:  # an npz of an earlier, larger --num: rewriting it would lose samples
        print(f"{who}{done['path']} already holds {done['count']} samples, at least --num {args.num}: nothing "
              f"written, the file left as it is")
        return 0
    print(f"{who}{args.sampler} on {user.name}: wrote {done['written']} samples, kept {done['skipped']} already "
          f"there; {args.num} in {done['path']}")
    return 0


def cmd_sample(args) -> int:
    from .eval.features import to_unit
    from .imageio import save_grid

    opts = check_sample_args(args)
    fill_schedule(args)
    device = torch.device(args.device)
    if args.out_dir is not None:
        if args.reference is not None:
            raise ValueError("--reference does not apply with --out-dir (score the written samples with "
                             "`covkernels eval --reference` or your FID tool)")
        model, user, _ = sampling_source(args, device)
        return export_run(args, model.to(device), user, opts, device)
    model, user, testbed = sampling_source(args, device)
    scorer = None
    if testbed is not None and args.num_eval >= min_eval_samples(testbed):  # scoring runs on the CPU
        score_net = model if device.type == "cpu" or not testbed.scores_model else testbed.load()
        scorer = checked_scorer(testbed, score_net, args.num_eval, args.seed)
    model = model.to(device)
    sigmas = get_sigmas(args.schedule, args.steps, args.sigma_min, args.sigma_max)
    for message in warnings_for(args, sigmas, opts, testbed=testbed):
        print(f"covkernels: warning: {message}", file=sys.stderr, flush=True)
    n_total = max(args.num, args.num_eval if scorer is not None else 0)
    chunks, start = [], time.perf_counter()
    with Progress(n_total, desc=f"sampling ({args.sampler})", disable=True if args.quiet else None) as progress:
        for offset in range(0, n_total, args.batch_size):
            b = min(args.batch_size, n_total - offset)
            chunks.append(draw(model, args, opts, device, offset, offset + b).cpu())
            progress.update(b)
    samples = torch.cat(chunks)
    elapsed = time.perf_counter() - start
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_grid(to_unit(user.images(samples[:args.num]), user.data_range), args.out, scale=args.scale)
    nfe = nfe_per_sample(args.sampler, sigmas, **opts)
    line = (f"{args.sampler} on {user.name}: {args.steps} step{'s' if args.steps != 1 else ''}, {nfe} NFE/sample, "
            f"{elapsed:.2f} s")
    if scorer is not None:
        with Progress(2, desc="scoring", unit="stages", disable=True if args.quiet else None) as progress:
            line += quality_line(testbed, scorer, samples[:args.num_eval], progress)
    elif testbed is None:
        line += " | no quality figure: pass --reference PATH to score your model"
    print(line)
    print(f"wrote {args.out}")
    return 0
