"""Microbenchmarks of the fused ops (pytest-benchmark): every backend that runs here vs a device copy.

    python -m pytest benchmarks/bench_ops.py --benchmark-json=benchmarks/results/ops_<device>.json
    python benchmarks/bench_ops.py --summarize benchmarks/results/ops_<device>.json   # Markdown table

Shapes: B x 3 x S x S with S in {64, 128, 256, 512} (COVKERNELS_BENCH_SIZES to change), float32 and
bfloat16 storage, batch COVKERNELS_BENCH_BATCH (default 8). Each case times one launch plus a device
synchronisation; ``extra_info`` carries the bytes the op must move, the achieved GB/s, the device and the
versions, and the ``copy`` case measures a device-to-device copy of the same bytes, so every figure can be
read as a fraction of copy bandwidth measured in the same run. Triton runs on CUDA only (the CPU
interpreter is a correctness tool, not a speed one); the compiled kernels (cpp) on CPU tensors.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

from covkernels.bench import environment
from covkernels.ops import dispatch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SIZES = [int(s) for s in os.environ.get("COVKERNELS_BENCH_SIZES", "64,128,256,512").split(",")]
BATCH = int(os.environ.get("COVKERNELS_BENCH_BATCH", "8"))
DTYPES = ["float32", "bfloat16"]  # names: pytest-benchmark serialises params as JSON
BACKENDS = ["reference"] + (["triton"] if DEVICE.type == "cuda" else [])
if DEVICE.type == "cpu" and dispatch.backend_status()["cpp"][0]:
    BACKENDS.append("cpp")  # the compiled CPU kernels
ENV = environment(DEVICE)


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _run(benchmark, fn, nbytes, group, **info):
    def target():
        fn()
        _sync()

    benchmark.group = group
    benchmark.pedantic(target, setup=_sync, rounds=20 if DEVICE.type == "cuda" else 7, warmup_rounds=2)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(ENV, bytes=nbytes, gbps=nbytes / seconds / 1e9, **info)


def _images(size, dtype, n=1):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    return [torch.randn(BATCH, 3, size, size, generator=g, device=DEVICE).to(getattr(torch, dtype))
            for _ in range(n)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_copy(benchmark, size, dtype):
    (x,) = _images(size, dtype)
    y = torch.empty_like(x)
    _run(benchmark, lambda: y.copy_(x), 2 * x.numel() * x.element_size(), f"copy-{size}", op="copy")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_block_dct(benchmark, backend, size, dtype):
    ops = dispatch.resolve(backend, DEVICE)
    (x,) = _images(size, dtype)
    _run(benchmark, lambda: ops.analysis(x, "convdct", 8), 2 * x.numel() * x.element_size(), f"dct-{size}",
         op="block_dct8", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_structured_step(benchmark, backend, size, dtype):
    """The whole non-model part of a cov_ddim step: probe synthesis + the fused noise step."""
    ops = dispatch.resolve(backend, DEVICE)
    d, x, jv = _images(size, dtype, 3)

    def step():
        ops.probe_tangent(1, x.shape, sample_offset=0, step=0, basis="convdct", block=8, dtype=x.dtype,
                          device=DEVICE)
        ops.structured_step(d, x, jv[None], 1, sample_offset=0, step=0, sigma_t=2.0, sigma_down=1.0, sigma_up=0.5,
                            basis="convdct", block=8)

    nbytes = 5 * x.numel() * x.element_size()  # write v; read D, x_t, Jv; write x_s
    _run(benchmark, step, nbytes, f"cov_ddim_step-{size}", op="cov_ddim_non_model", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", SIZES)
def test_lanczos_iteration(benchmark, backend, size):
    """One Lanczos iteration (j = 2 of k = 4, reorthogonalised) on a float32 basis."""
    ops = dispatch.resolve(backend, DEVICE)
    (aq,) = _images(size, "float32")
    basis = torch.nn.functional.normalize(torch.randn((4,) + tuple(aq.shape), device=DEVICE).flatten(2), dim=2)
    basis = basis.view((4,) + tuple(aq.shape))
    n = aq.numel() * 4
    nbytes = n * (2 * (1 + 3) + 2 + 2)  # two sweeps reading J q and 3 rows, writes of w, the normalisation
    _run(benchmark, lambda: ops.lanczos_update(aq, basis, 2), nbytes, f"lanczos_iter-{size}",
         op="lanczos_iteration", backend=backend)


def summarize(path: str) -> str:
    """Markdown table from a --benchmark-json file: median time, GB/s, fraction of copy bandwidth."""
    import json

    data = json.load(open(path))
    rows = data["benchmarks"]
    copy = {(r["params"]["size"], r["params"]["dtype"]): r["extra_info"]["gbps"] for r in rows
            if r["name"].startswith("test_copy")}
    env = rows[0]["extra_info"]
    out = [f"Device: {env['device']}; torch {env['torch']}, triton {env['triton']}, git {env['git_revision']}.", "",
           "| op | backend | size | dtype | median | GB/s | of copy |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        p, info = r["params"], r["extra_info"]
        dtype = p.get("dtype", "float32")
        ref_copy = copy.get((p["size"], dtype))
        frac = f"{info['gbps'] / ref_copy:.0%}" if ref_copy else "-"
        out.append(f"| {info['op']} | {p.get('backend', '-')} | {p['size']} | {dtype} | "
                   f"{r['stats']['median'] * 1e3:.3f} ms | {info['gbps']:.1f} | {frac} |")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--summarize":
        print(summarize(sys.argv[2]))
    else:
        print(__doc__)
