"""Command line: ``covkernels sample`` (image grid + quality figure), ``covkernels eval`` (the quality grid,
:mod:`covkernels.eval`), ``covkernels bench`` and ``covkernels info``.

Start-up: this module imports neither torch nor the sampler stack at import time; ``covkernels``,
``covkernels --help`` and ``covkernels --version`` answer from :data:`SUBCOMMANDS` alone (tens of
milliseconds), and a subcommand (its ``--help`` included) imports what it needs (about a second, most of
it torch's own import).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys

from ._version import __version__

# The subcommands and their one-line help: the top-level help is printed from these without importing torch.
SUBCOMMANDS = {
    "sample": "sample a testbed's model, write a PNG grid, print its quality figure",
    "eval": "quality grid: samplers x NFE budgets, tables + plot under --out",
    "info": "versions, devices, available backends and why the others are not",
    "bench": "per-step overhead on a model: forward, JVPs, non-model part of each sampler step per backend, "
             "as ratios",
}
DESCRIPTION = "covariance-aware diffusion samplers"


def eval_config(args, model: str):
    """The :class:`~covkernels.eval.config.EvalConfig` of ``covkernels eval``'s arguments for one ``--model``."""
    import torch

    from .eval.config import EvalConfig

    return EvalConfig(
        model=model, samplers=args.samplers, nfes=args.nfe, num_samples=args.num_samples, seed=args.seed,
        seeds=args.seeds, batch_size=args.batch_size, schedule=args.schedule, sigma_min=args.sigma_min,
        sigma_max=args.sigma_max, rho=args.rho, tables=args.tables, tune_schedules=args.tune_schedules,
        tune_sigma_mins=args.tune_sigma_mins, tune_metric=args.tune_metric, tune_num_samples=args.tune_num_samples,
        device=torch.device(args.device), out_dir=args.out, resume=not args.no_resume,
        options={} if args.cov_sigma_max is None else {"cov_sigma_max": args.cov_sigma_max},
        command=args.command_line or "covkernels " + shlex.join(args.argv), reference=args.reference,
        reference_resize=args.reference_resize, metrics=args.metrics, feature_cache=args.feature_cache)


def cmd_eval(args) -> int:
    from .eval.api import run_evaluation
    from .eval.distributed import finish_distributed
    from .eval.plan import canonical_label

    if args.samplers is not None:
        args.samplers = [canonical_label(name) for name in args.samplers]  # a bad name: usage error, exit 2
    try:
        for model in args.model:
            run_evaluation(eval_config(args, model), progress=None if args.quiet else print)
    except BaseException:
        finish_distributed(failed=True)
        raise
    finish_distributed()
    return 0


def cmd_info(args) -> int:
    import torch

    if args.probe_jvp:
        from .jvp import jvp
        from .models import get_model

        model = get_model(args.probe_jvp)
        x = torch.randn(2, *model.event_shape, generator=torch.Generator().manual_seed(0))
        jvp(model, x, torch.ones(2), torch.randn_like(x))
    from .system_info import info_dict, print_info  # the report lives outside the CLI: covkernels.info() too

    info = info_dict()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print_info(info)
    return 0


def _add_run_options(p: argparse.ArgumentParser, sigma_min: float | None, schedule: str | None = "karras") -> None:
    """The options ``sample`` and ``eval`` share: batching, seed, device, schedule, covariance window."""
    from .schedules import SCHEDULES

    p.add_argument("--batch-size", type=int, default=256,
                   help="samples per sampler call (results do not depend on it: the noise is counter-based)")
    p.add_argument("--seed", type=int, default=0, help="seed of the run's torch.Generator")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    unset = " (unset: the sampler's recommended value, covkernels.sample's)"
    p.add_argument("--schedule", default=schedule, choices=SCHEDULES,
                   help="noise schedule" + (unset if schedule is None else ""))
    p.add_argument("--sigma-min", type=float, default=sigma_min,
                   help="smallest nonzero sigma of the schedule" + (unset if sigma_min is None else ""))
    p.add_argument("--sigma-max", type=float, default=80.0, help="largest sigma (the initial noise level)")
    p.add_argument("--cov-sigma-max", type=float, default=None,
                   help="covariance samplers: plain DDIM steps above this sigma (sampler default if unset; inf: none)")


def _add_reference_options(p: argparse.ArgumentParser) -> None:
    """``--reference`` and its companions (``sample`` and ``eval``): your images, the metrics against them."""
    from .eval.reference import RESIZE_MODES
    from .eval.reference_scorer import DEFAULT_METRICS, METRICS

    p.add_argument("--reference", default=None, metavar="PATH",
                   help="real images the samples are compared with: a folder of PNG/JPEG, an .npy or an .npz "
                        "(uint8 [0, 255] -> the model's range; needed with a factory --model)")
    p.add_argument("--reference-resize", default=None, choices=RESIZE_MODES,
                   help="resize reference images of another size to the model's (same aspect ratio; unset: a "
                        "size mismatch is refused)")
    # no argparse choices: a metric that the --model factory's module registers when it is imported counts
    # too, so the names are checked after that import (an unknown one: an error listing the known ones)
    p.add_argument("--metrics", nargs="+", default=None, metavar="METRIC",
                   help=f"metrics against --reference, the first the headline (unset: {' '.join(DEFAULT_METRICS)}"
                        f", weight-free; fid, kid, precision, recall, fd_dinov2, kid_dinov2 need "
                        f"covkernels[metrics]); choices: {', '.join(METRICS)}, or one the --model factory's "
                        f"module registers (register_metric)")
    p.add_argument("--feature-cache", default=None, metavar="DIR",
                   help="folder of cached reference features (unset: $COVKERNELS_CACHE/features or "
                        "~/.cache/covkernels/features)")


def _switch_sigma(text: str):
    """``--switch-sigma``: 'end', 'auto' or a positive number."""
    if text in ("end", "auto"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a sigma > 0, 'end' or 'auto', got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a sigma > 0, 'end' or 'auto', got {text!r}")
    return value


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None``: those options say in their help what leaving them unset means."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def _top_parser() -> tuple[argparse.ArgumentParser, object]:
    """The top level: ``--version`` and the subcommands' names and help, nothing imported."""
    p = argparse.ArgumentParser(prog="covkernels", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"covkernels {__version__}")
    return p, p.add_subparsers(dest="command", required=True)


def _top_level_only(argv: list[str]) -> bool:
    """No subcommand to run: the answer (help, version, a usage error) needs only :func:`_top_parser`."""
    return not argv or argv[0].startswith("-") or argv[0] not in SUBCOMMANDS


def build_parser() -> argparse.ArgumentParser:
    from .cli_sample import cmd_sample
    from .eval.config import TABLES
    from .eval.plan import NFES, TUNE_SIGMA_MINS, VARIANTS
    from .eval.testbeds import testbed_names
    from .jvp import STRATEGIES
    from .ops.dispatch import BACKENDS
    from .samplers import SAMPLERS
    from .samplers.api import DEFAULT_SAMPLER
    from .samplers.registry import spec
    from .schedules import SCHEDULES

    p, sub = _top_parser()
    fmt = _DefaultsHelpFormatter

    s = sub.add_parser("sample", help=SUBCOMMANDS["sample"], formatter_class=fmt)
    s.add_argument("--model", default="gmm", metavar="MODEL",
                   help=f"a testbed ({', '.join(testbed_names())}: its model is sampled and --num-eval samples are "
                        f"scored with its metrics) or your model as package.module:factory or "
                        f"path/to/file.py:factory (scored against --reference where given)")
    s.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=SAMPLERS,
                   help="sampler; its options below apply only where it takes them (others are refused)")
    s.add_argument("--steps", type=int, default=8, help="sampler steps (NFE depends on the sampler)")
    s.add_argument("--out", default="grid.png", help="PNG file (.png) for the grid of the first --num samples")
    # -n: under torchrun, whose own parser takes --num for an abbreviation of its --numa-binding
    s.add_argument("-n", "--num", type=int, default=64,
                   help="samples shown in the grid (with --out-dir: samples written; -n under torchrun)")
    s.add_argument("--num-eval", type=int, default=1024,
                   help="samples for the Frechet distance (most of the run time; 0 skips it; a warning below "
                        "256, where its small-sample bias dominates; not with --out-dir)")
    s.add_argument("--out-dir", default=None, metavar="DIR",
                   help="write --num samples to DIR as numbered PNGs (or --format npz) for external FID tools, "
                        "resumably, the same bytes under torchrun; no grid, no figure")
    s.add_argument("--format", default="png", choices=["png", "npz"],
                   help="--out-dir files: 000000.png, ... or one samples.npz (arr_0, uint8 N x H x W x C)")
    _add_reference_options(s)
    _add_run_options(s, sigma_min=None, schedule=None)
    s.add_argument("--eta", type=float, default=None,
                   help="ancestral noise level in [0, 1], for samplers with an eta option (sampler default if unset)")
    s.add_argument("--basis", default=None, choices=["identity", "dct", "convdct"],
                   help="cov_ddim: basis of the covariance diagonal (sampler default if unset: convdct)")
    s.add_argument("--block", type=int, default=None, help="cov_ddim: convdct block size (sampler default if unset: 8)")
    s.add_argument("--lanczos-steps", type=int, default=None,
                   help="lanczos: Lanczos iterations (JVPs) per step (sampler default if unset: 3)")
    s.add_argument("--probes", type=int, default=None,
                   help="diag_hutchinson: Hutchinson probes (JVPs) per step (sampler default if unset: 1)")
    s.add_argument("--ode", default=None, choices=[n for n in SAMPLERS if not spec(n).needs_jvp],
                   help="ode_cov: the mean-only ODE sampler before the posterior draw (sampler default if unset: "
                        "dpmpp_2m)")
    s.add_argument("--switch-sigma", default=None, type=_switch_sigma, metavar="{SIGMA,end,auto}",
                   help="ode_cov: where the ODE hands over to the covariance steps: a sigma, 'end' (the draw "
                        "replaces the last step) or 'auto' (the Gaussianity diagnostic; sampler default if unset)")
    s.add_argument("--covariance", default=None, choices=["identity", "dct", "convdct", "lanczos"],
                   help="ode_cov: covariance of the posterior draw (sampler default if unset: dct; 'calibrated' "
                        "needs a PosteriorSpectrum object: Python API only)")
    s.add_argument("--jvp", default=None, choices=STRATEGIES,
                   help="covariance samplers: JVP strategy (sampler default if unset: auto)")
    s.add_argument("--backend", default=None, choices=BACKENDS,
                   help="covariance samplers: fused-op backend (sampler default if unset: auto)")
    s.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscaling of the grid (>= 1)")
    s.add_argument("--quiet", action="store_true",
                   help="no progress (otherwise a bar on a terminal, plain lines on stderr elsewhere)")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help=SUBCOMMANDS["eval"], formatter_class=fmt)
    e.add_argument("--model", nargs="+", default=["gmm"], metavar="MODEL",
                   help=f"one table per model: a testbed ({', '.join(testbed_names())}) or your model as "
                        f"package.module:factory or path/to/file.py:factory (with --reference)")
    _add_reference_options(e)
    e.add_argument("--samplers", nargs="+", default=None, metavar="NAME",
                   help=f"grid rows: labels ({', '.join(VARIANTS)}) or sampler names meaning the sampler at its "
                        f"defaults (cov_ddim = cov_ddim/convdct, lanczos = lanczos/k3; default: every row)")
    e.add_argument("--nfe", nargs="+", type=int, default=list(NFES), help="NFE budgets")
    e.add_argument("--num-samples", type=int, default=1024, help="samples per cell and seed (N)")
    e.add_argument("--seeds", type=int, default=5,
                   help="seeds per cell (S): --seed, --seed + 1, ...; shared by all samplers (paired comparisons)")
    _add_run_options(e, sigma_min=0.1)
    e.add_argument("--rho", type=float, default=7.0, help="Karras schedule exponent")
    e.add_argument("--tables", nargs="+", default=list(TABLES), choices=list(TABLES),
                   help="default: every sampler on --schedule/--sigma-min; best: each at its best of the tuning grid")
    e.add_argument("--tune-schedules", nargs="+", default=None,
                   choices=[s for s in SCHEDULES if s not in ("vp", "linear_beta")],
                   help="schedules of the tuning grid (default: karras, exponential, cosine, time_uniform where present)")
    e.add_argument("--tune-sigma-mins", nargs="+", type=float, default=list(TUNE_SIGMA_MINS),
                   help="sigma_min values of the tuning grid (chosen on a held-out seed, --seed + 1000000)")
    e.add_argument("--tune-metric", default=None,
                   help="metric the best table's schedules are chosen by (default: the testbed's main metric)")
    e.add_argument("--tune-num-samples", type=int, default=None,
                   help="N of the tuning runs (default: --num-samples; the same for every sampler)")
    e.add_argument("--out", default="eval_results", help="directory for quality_<model>.{json,csv,md,png}")
    e.add_argument("--no-resume", action="store_true", help="start over instead of reusing finished cells")
    e.add_argument("--command-line", default=None, help=argparse.SUPPRESS)
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help=SUBCOMMANDS["info"])
    i.add_argument("--json", action="store_true", help="the same report as JSON (for scripts and bug reports)")
    i.add_argument("--probe-jvp", choices=["gmm", "gaussian"], default=None,
                   help="run the jvp=auto selection on a built-in model first and report it")
    i.set_defaults(func=cmd_info)

    from .bench import add_bench_parser  # the whole bench command lives in covkernels/bench.py
    add_bench_parser(sub, SUBCOMMANDS["bench"])
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _top_level_only(argv):
        top, sub = _top_parser()
        for name, text in SUBCOMMANDS.items():
            sub.add_parser(name, help=text)
        top.parse_args(argv)  # prints the help / version / usage error and exits
    import torch

    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command in ("sample", "eval"):
        for name in ("num", "num_samples", "batch_size", "steps"):
            if not hasattr(args, name):
                continue
            if getattr(args, name) < 1:
                parser.error(f"--{name.replace('_', '-')} must be >= 1")
        if min(getattr(args, "nfe", None) or [2]) < 2:
            parser.error("--nfe budgets must be >= 2")
        if getattr(args, "num_eval", 0) < 0:
            parser.error("--num-eval must be >= 0")
        try:
            device = torch.device(args.device)
        except RuntimeError:
            parser.error(f"--device {args.device!r} is not a torch device (e.g. cpu, cuda, cuda:1)")
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda: this torch has no usable CUDA device; use --device cpu")
    try:
        return args.func(args)
    except (ValueError, TypeError, RuntimeError) as exc:  # bad option values: one line, not a traceback
        parser.exit(2, f"covkernels: error: {exc}\n")
    except BrokenPipeError:  # `covkernels info --json | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
