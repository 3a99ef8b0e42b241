"""``covkernels bench``: what a step costs on *your* model, beside one forward pass of it, in one run.

    covkernels bench --model digits|unet64|unet256|gmm|gaussian|pkg.module:factory --shape B,C,H,W
                     --device cpu|cuda [--samplers ...] [--out bench.json]

Measured (median wall time of ``--repeats`` runs after a warm-up, the device synchronised around each):

* one model forward ``D(x, sigma)`` on a ``(B, C, H, W)`` batch;
* one JVP ``(D(x), J v)`` per strategy of :mod:`covkernels.jvp` (a strategy the model cannot run is
  reported with its reason), as a multiple of the forward;
* the non-model part of one step of every sampler of the registry (``covkernels.samplers.SAMPLERS``), on
  every backend that runs on the device for samplers that take ``backend``: the step is run with the
  model replaced by a stub ``D(x) = w * x`` (``w`` a fixed random ``(C, H, W)`` tensor, so Lanczos does
  not stop early), so the figure includes one elementwise multiply per model call (an upper bound);
  finite-difference JVPs on the stub, so their arithmetic counts as non-model work too;
* a device-to-device copy of one ``(B, C, H, W)`` tensor: its GB/s, and every step as a number of such
  copies (the memory-bound yardstick of the fused kernels).

Ratios: non-model part / forward, JVP / forward, fused / reference (same sampler, same run). The JSON has
the device name, the versions and the git revision. Triton on CPU tensors runs in its interpreter, whose
timings say nothing about a GPU: it is never benchmarked.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import time

import torch

BUILTIN_MODELS = ("digits", "unet64", "unet256", "gmm", "gaussian")
# the step measured: sigma 0.8 -> 0.4, inside the covariance samplers' default window (cov_sigma_max = 1)
STEP_SIGMAS = (0.8, 0.4)


def environment(device: torch.device) -> dict:
    """Device name, library versions and the git revision of the source tree (None outside a checkout)."""
    from ._version import __version__

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        rev = None
    versions = {}
    for lib in ("triton", "diffusers"):
        try:
            versions[lib] = importlib.import_module(lib).__version__
        except ImportError:
            versions[lib] = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {"device": name, "covkernels": __version__, "torch": torch.__version__, "cuda": torch.version.cuda,
            **versions, "python": platform.python_version(), "git_revision": rev}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, warmup: int = 1, repeats: int = 5) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup``, the device synchronised."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """``"B,C,H,W"`` -> a tuple of four positive ints."""
    parts = text.replace("x", ",").split(",") if isinstance(text, str) else []
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"--shape must be four positive ints B,C,H,W, got {text!r}")
    return shape


def load_model(name: str, size: int | None = None) -> torch.nn.Module:
    """A built-in model (:data:`BUILTIN_MODELS`) or your model as ``package.module:factory`` (or
    ``path/to/file.py:factory``; the contract: :mod:`covkernels.eval.user_model`), as a denoiser with
    ``event_shape`` (a factory's plain denoiser without one is returned as it is: then ``--shape`` says the
    shape). ``size``: the image side of the analytic ``gmm`` / ``gaussian`` models (default 32)."""
    from .eval.sources import SamplingModel
    from .eval.user_model import as_user_model, factory_output, is_factory_path, is_model

    if isinstance(name, str) and is_factory_path(name):
        made = factory_output(name)
        return SamplingModel(as_user_model(made, name)) if is_model(made) or not callable(made) else made
    if name in ("digits", "gmm", "gaussian"):
        from .models import get_model

        return get_model(name, size if name != "digits" else None)
    if name in ("unet64", "unet256"):
        from .models.unet import random_diffusers_unet

        return random_diffusers_unet(size=int(name[4:]), channels=(64, 128, 256), seed=0)
    raise ValueError(f"--model must be one of {BUILTIN_MODELS} or package.module:factory, got {name!r}")


def default_shape(model, batch: int = 4) -> tuple[int, ...] | None:
    shape = getattr(model, "event_shape", None)
    return (batch, *shape) if shape is not None else None


class _StubDenoiser(torch.nn.Module):
    """``D(x) = w * x``: a diagonal Jacobian with distinct entries, at the cost of one multiply."""

    def __init__(self, event_shape, device, dtype):
        super().__init__()
        gen = torch.Generator(device="cpu").manual_seed(0)
        self.w = torch.rand(event_shape, generator=gen).mul_(0.9).add_(0.05).to(device, dtype)

    def forward(self, x, sigma, **extra):
        return self.w * x


def _available_backends(device: torch.device) -> dict[str, str]:
    """``{backend: why}`` of the concrete backends that run on ``device`` (never Triton's interpreter)."""
    from .ops import dispatch

    out = {}
    for name, (ok, why) in dispatch.backend_status().items():
        if not ok or (name == "triton" and device.type != "cuda"):
            continue
        try:
            dispatch.resolve(name, device)
        except RuntimeError:
            continue
        out[name] = why
    return out


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def paired_times(base, others: dict, device: torch.device, repeats: int) -> tuple[float, dict]:
    """Rounds of ``base()`` then every ``others[name]()``, so that a drift of the machine's load hits both
    sides of a ratio alike. Returns ``(median base seconds, {name: {"seconds", "ratio", "error"}})`` with
    medians over rounds of the seconds and of the per-round ratios; a callable that raises on its warm-up
    is left out of the rounds and reported with its error."""
    def timed(fn):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - start

    base()
    result, live = {}, {}
    for name, fn in others.items():
        try:
            fn()
            live[name] = fn
        except Exception as exc:  # a strategy / sampler this model cannot run is a result, with its reason
            result[name] = {"seconds": None, "ratio": None, "error": _error(exc)}
    base_times, times = [], {name: [] for name in live}
    for _ in range(repeats):
        base_times.append(timed(base))
        for name, fn in live.items():
            times[name].append(timed(fn))
    for name in live:
        result[name] = {"seconds": statistics.median(times[name]), "error": None,
                        "ratio": statistics.median(t / b for t, b in zip(times[name], base_times))}
    return statistics.median(base_times), {name: result[name] for name in others}


def step_sigmas(sampler: str, device) -> torch.Tensor:
    """The one-step schedule ``STEP_SIGMAS``, or ``STEP_SIGMAS + (0,)`` for a sampler the registry marks as
    needing a schedule that ends in 0 (then the time includes its final step to 0)."""
    from .samplers.registry import spec

    return torch.tensor(STEP_SIGMAS + ((0.0,) if spec(sampler).needs_final_zero else ()), device=device)


def run_bench(model, shape, device, *, samplers=None, dtype=torch.float32, repeats: int = 5,
              seed: int = 0, jvp_strategies=None) -> dict:
    """The measurements of ``covkernels bench`` as a JSON-ready dict (see the module docstring).

    ``model``: a denoiser ``D(x, sigma)``; ``shape``: ``(B, C, H, W)``; ``samplers``: names from the
    registry (default: all)."""
    from . import jvp as jvp_engine
    from .samplers import SAMPLERS, get_sampler, spec

    device = torch.device(device)
    samplers = list(SAMPLERS) if samplers is None else list(samplers)
    for s in samplers:
        get_sampler(s)  # ValueError naming the registry for an unknown name
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    if isinstance(model, torch.nn.Module):
        model = model.to(device=device, dtype=dtype).eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    v = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    sigma = torch.full((shape[0],), STEP_SIGMAS[0], device=device, dtype=dtype)
    strategies = jvp_strategies or [s for s in jvp_engine.STRATEGIES if s != "auto"]

    def forward():
        with torch.no_grad():
            model(x, sigma)

    t_fwd, jvps = paired_times(forward, {name: (lambda name=name: jvp_engine.jvp(model, x, sigma, v, strategy=name))
                                         for name in strategies}, device, repeats)
    out = {"environment": environment(device), "shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
           "repeats": repeats, "step_sigmas": list(STEP_SIGMAS), "forward_s": t_fwd, "jvp": jvps, "steps": {},
           "ratios": {}}
    for name, r in jvps.items():
        if r["ratio"] is not None:
            out["ratios"][f"jvp {name} / forward"] = r["ratio"]
    src, dst = torch.randn(shape, generator=gen, device=device, dtype=dtype), torch.empty(shape, device=device,
                                                                                          dtype=dtype)
    t_copy = median_seconds(lambda: dst.copy_(src), device, repeats=max(repeats, 20))
    out["device_copy"] = {"bytes": src.numel() * src.element_size(), "seconds": t_copy,
                          "gb_per_s": 2 * src.numel() * src.element_size() / t_copy / 1e9}
    stub = _StubDenoiser(shape[1:], device, dtype)
    out["stub_forward_s"] = median_seconds(lambda: stub(x, sigma), device, repeats=max(repeats, 20))
    backends = _available_backends(device)
    out["backends"] = backends
    for s in samplers:
        fn, s_spec = get_sampler(s), spec(s)
        runs, sigmas = {}, step_sigmas(s, device)
        for backend in (list(backends) if s_spec.takes_backend else [None]):
            opts = {"disable": True, "generator": torch.Generator(device=device).manual_seed(seed)}
            if backend is not None:
                opts["backend"] = backend
            if s_spec.takes_jvp:
                opts["jvp"] = "finite_difference"
            runs[s if backend is None else f"{s} [{backend}]"] = (backend, lambda o=opts, g=sigmas: fn(stub, x, g, **o))
        # the reference run is the base of the rounds, so fused / reference is a same-round ratio
        base_key = f"{s} [reference]" if f"{s} [reference]" in runs else next(iter(runs))
        others = {k: run for k, (_, run) in runs.items() if k != base_key}
        try:
            t_base, timed = paired_times(runs[base_key][1], others, device, repeats)
            timed[base_key] = {"seconds": t_base, "ratio": 1.0, "error": None}
        except Exception as exc:
            timed = {k: {"seconds": None, "ratio": None, "error": _error(exc)} for k in runs}
        for key, (backend, _) in runs.items():
            r = timed[key]
            out["steps"][key] = {"sampler": s, "backend": backend, "seconds": r["seconds"], "error": r["error"],
                                 "sigmas": [float(g) for g in sigmas],
                                 "copies": None if r["seconds"] is None else r["seconds"] / t_copy}
            if r["seconds"] is not None:
                out["ratios"][f"{key} non-model / forward"] = r["seconds"] / t_fwd
                if base_key.endswith("[reference]") and key != base_key:
                    out["ratios"][f"{key} / {base_key}"] = r["ratio"]
    return out


def format_report(res: dict) -> str:
    """Plain-text table of a :func:`run_bench` result."""
    env = res["environment"]
    lines = [f"covkernels bench on {env['device']} (torch {env['torch']}, triton {env['triton']}, git "
             f"{env['git_revision']}); shape {tuple(res['shape'])} {res['dtype']}, median of {res['repeats']}",
             f"model forward: {res['forward_s'] * 1e3:.3f} ms; device copy of one batch: "
             f"{res['device_copy']['seconds'] * 1e3:.3f} ms ({res['device_copy']['gb_per_s']:.1f} GB/s)", "",
             f"{'JVP strategy':<28}{'ms':>10}{'x forward':>11}  (x forward: median of same-round ratios)"]
    for name, r in res["jvp"].items():
        lines.append(f"{name:<28}" + (f"{r['seconds'] * 1e3:>10.3f}{r['ratio']:>11.2f}"
                                      if r["seconds"] is not None else f"  failed: {r['error']}"))
    lines += ["", f"{'non-model part of one step':<36}{'ms':>10}{'x forward':>11}{'copies':>9}"]
    for key, r in res["steps"].items():
        lines.append(f"{key:<36}" + (f"{r['seconds'] * 1e3:>10.3f}{r['seconds'] / res['forward_s']:>11.4f}"
                                     f"{r['copies']:>9.1f}" if r["seconds"] is not None else f"  failed: {r['error']}"))
    fused = {k: v for k, v in res["ratios"].items() if "[reference]" in k and k.count("[") == 2}
    if fused:
        lines += ["", "fused / reference (same sampler, same run):"] + [f"  {k}: {v:.3f}" for k, v in fused.items()]
    return "\n".join(lines)


def add_bench_parser(sub, help_text: str) -> None:
    """Register ``covkernels bench`` on the CLI's subparsers (``help_text``: its line in the top-level help)."""
    p = sub.add_parser("bench", help=help_text, description=__doc__.split("\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="digits",
                   help=f"built-in ({', '.join(BUILTIN_MODELS)}; unet64/unet256: seeded random diffusers "
                        f"UNet2DModel) or package.module:factory")
    p.add_argument("--shape", default=None, help="B,C,H,W (default: batch 4 of the model's event shape)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--samplers", nargs="+", default=None, help="sampler names (default: every registered one)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per quantity (the median is reported)")
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs' torch.Generator")
    p.add_argument("--out", default=None, help="write the results as JSON to this file")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this torch")
    # a ValueError (bad --model, --shape, sampler name) becomes the CLI's one-line error
    shape = None if args.shape is None else parse_shape(args.shape)
    model = load_model(args.model, None if shape is None else shape[-1])
    if shape is not None:
        pass
    elif (shape := default_shape(model)) is None:
        raise ValueError(f"--model {args.model!r} has no event_shape: pass --shape B,C,H,W")
    event = getattr(model, "event_shape", None)
    if event is not None and tuple(event) != tuple(shape[1:]):
        raise ValueError(f"--shape {','.join(map(str, shape))} does not fit the model's event shape {tuple(event)}")
    res = run_bench(model, shape, device, samplers=args.samplers, dtype=getattr(torch, args.dtype),
                    repeats=args.repeats, seed=args.seed)
    res["command"] = "covkernels " + shlex.join(getattr(args, "argv", ["bench"]))
    res["model"] = args.model
    print(format_report(res))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
        print(f"wrote {args.out}")
    return 0
