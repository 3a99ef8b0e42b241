"""What this installation has and what this process did: versions, devices, the compiled extension, the
backends (and why some are unavailable), the backend fallbacks and the ``jvp=auto`` choices made so far.

``covkernels.info()`` prints it, and ``covkernels info`` (the CLI) calls :func:`print_info` / :func:`info_dict`;
this module does not depend on the CLI. Importing it imports nothing: torch and the rest load when asked.
"""
from __future__ import annotations

import os
import platform
import sys

from ._version import __version__


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _devices() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {"cpu_threads": torch.get_num_threads(),
            "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []}


def _jvp_auto_choices() -> list[dict]:
    from .jvp import auto_choices

    return [{"model": m, "signature": [list(c.signature[0]), str(c.signature[1]), c.signature[2]],
             "chosen": c.strategy, "agreement": c.agreement, "seconds": c.seconds, "probe_batch": c.probe_batch,
             "probe_seconds": c.probe_seconds, "skipped": c.skipped} for m, c in auto_choices()]


def info_dict() -> dict:
    """The whole report as plain data (what ``covkernels info --json`` prints)."""
    import torch

    from ._extension import cuda_extension, extension_status
    from .jvp import STRATEGIES
    from .ops.dispatch import backend_status, fallbacks
    from .samplers import SAMPLERS

    return {
        "covkernels": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _triton_version(),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
        **_devices(),
        "extension": extension_status()[1],
        "guided_step_executor": ("compiled (covkernels._C_cuda, CUDA streams + events)" if cuda_extension() is not None
                                 else "Python (torch.cuda streams + events; the compiled one needs the CUDA part)"),
        "backends": {name: {"available": ok, "why": why} for name, (ok, why) in backend_status().items()},
        "backend_fallbacks": [{"op": f.op, "backend": f.backend, "reason": f.reason, "calls": f.calls}
                              for f in fallbacks()],
        "jvp_strategies": list(STRATEGIES),
        "jvp_auto_choices": _jvp_auto_choices(),
        "samplers": list(SAMPLERS),
    }


def _print_fallbacks(rows: list[dict], out) -> None:
    if not rows:
        print("backend fallbacks: none in this process", file=out)
        return
    print("backend fallbacks in this process (the reference ran instead):", file=out)
    for row in rows:
        print(f"  {row['backend']:<10} {row['op']}: {row['reason']} ({row['calls']} call(s))", file=out)


def _print_jvp_choices(rows: list[dict], out) -> None:
    if not rows:
        print("jvp=auto choices: none made in this process yet (see `covkernels info --probe-jvp gmm`)", file=out)
    for row in rows:
        shape, dtype, dev = row["signature"]
        print(f"jvp=auto for {row['model']}, samples of shape {tuple(shape)} {dtype} {dev}: {row['chosen']} "
              f"({row['agreement']}; probe: {row['probe_batch']} sample(s), {row['probe_seconds']:.3g} s)", file=out)
        for name, why in row["skipped"].items():
            print(f"    {name}: {why}", file=out)


def print_info(info: dict | None = None, file=None) -> None:
    """Human-readable report of :func:`info_dict` (``info`` already gathered, or gathered now)."""
    info = info_dict() if info is None else info
    out = file or sys.stdout
    print(f"covkernels {info['covkernels']} | python {info['python']} | torch {info['torch']} "
          f"(CUDA build: {info['torch_cuda'] or 'no'}) | triton {info['triton'] or 'not installed'}", file=out)
    print(f"devices: cpu ({info['cpu_threads']} threads)"
          + "".join(f", cuda:{i} {n}" for i, n in enumerate(info["cuda_devices"])), file=out)
    print(f"extension: {info['extension']}", file=out)
    print(f"guided-step executor on CUDA: {info['guided_step_executor']}", file=out)
    print("backends (auto order: cuda -> triton -> cpp -> reference):", file=out)
    for name, b in info["backends"].items():
        print(f"  {name:<10} {'available' if b['available'] else 'unavailable':<12} {b['why']}", file=out)
    _print_fallbacks(info["backend_fallbacks"], out)
    print(f"jvp strategies: {', '.join(info['jvp_strategies'])}", file=out)
    _print_jvp_choices(info["jvp_auto_choices"], out)
    print(f"samplers: {', '.join(info['samplers'])}", file=out)


def info(file=None) -> None:
    """Print versions, devices, backends (and why some are unavailable), the backend fallbacks and the
    ``jvp=auto`` choices of this process (``covkernels.info()``)."""
    print_info(file=file)
