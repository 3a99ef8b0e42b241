"""Shared helpers of the benchmark scripts: environment record, timing, result files."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time

import torch


def environment(device: torch.device) -> dict:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except OSError:
        rev = None
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_version,
            "python": platform.python_version(), "git_revision": rev}


def median_seconds(fn, device: torch.device, warmup: int = 2, repeats: int = 7) -> float:
    """Median wall time of ``fn()`` with the device synchronised around every run."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_results(name: str, payload: dict, table: str, command: str) -> str:
    """Write ``results/<name>.json`` and ``results/<name>.md``; return the Markdown path."""
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    payload = dict(payload, command=command)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(payload, f, indent=2)
    env = payload["environment"]
    md = (f"# {name}\n\nDevice: {env['device']}; torch {env['torch']}, CUDA {env['cuda']}, triton {env['triton']}, "
          f"git {env['git_revision']}.\n\nReproduce: `{command}`\n\n{table}\n")
    path = os.path.join(out_dir, f"{name}.md")
    with open(path, "w") as f:
        f.write(md)
    return path
