"""Ahead-of-time GPU builds without a GPU: every Triton kernel variant the dispatch launches, compiled for
sm_80 and sm_90, and the CUDA sources of ``covkernels._C`` for sm_90a, with their resource usage.

    python benchmarks/triton_aot.py [--grid ci|full] [--check] [--jobs N] [--timeout S] [--no-cuda-sources]

Registers, spills and static shared memory come from ptxas' verbose log of the very compile that made
the cubin (Triton's own ptxas call, logged through ``TRITON_DUMP_PTXAS_LOG``; ``nvcc -Xptxas -v`` for
the ``.cu`` files); Triton's dynamic shared memory is added from the kernel metadata. Each variant is
built in its own forked process (own process group, killed with its ptxas after ``--timeout`` s), in a
fresh Triton cache, so every build and its time are real.

Grids (``variants`` of :mod:`triton_aot_variants`): ``ci`` is each kernel as the samplers launch it with default options on a
3-channel image of width >= 64, in float32 and bfloat16; ``full`` varies one option at a time around
that (storage dtype, block 4/8/16, strip width of 28-32 px images, channels 1/3/4, probes 1/2/4, Lanczos
rows up to 16, the constexpr flags). ``--check`` exits 1 on a compile error, a timeout or a spill.
Writes ``results/triton_aot[_<grid>].json`` and ``.md`` (``ci`` writes ``triton_aot_ci``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from triton_aot_variants import Variant, arg_types, kernel_function, variants

ARCHS = (80, 90)


def parse_ptxas_log(text: str) -> list[dict]:
    """Per-function resource usage from ptxas' ``-v`` log (the prefix may be ``ptxas`` or ``ptxas-blackwell``).

    Returns ``[{"function", "registers", "spills" (spill store bytes), "spill_loads", "stack_bytes",
    "static_shared_bytes"}, ...]`` in log order."""
    out, current = [], None
    for line in text.splitlines():
        m = re.search(r"(?:Compiling entry function|Function properties for) '?([\w$.]+)'?", line)
        if m and "Compiling entry function" in line:
            current = {"function": m.group(1), "registers": None, "spills": 0, "spill_loads": 0,
                       "stack_bytes": 0, "static_shared_bytes": 0}
            out.append(current)
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["stack_bytes"], current["spills"], current["spill_loads"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
        m = re.search(r"(\d+) bytes smem", line)
        if m:
            current["static_shared_bytes"] = int(m.group(1))
    return out


def compile_variant(variant: Variant, arch: int) -> dict:
    """Build one variant for ``sm_<arch>``; the record of ``triton_aot.json`` (raises on a compile error)."""
    import contextlib
    import io
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if list(inspect.signature(ASTSource).parameters)[:4] != ["fn", "signature", "constexprs", "attrs"]:
        raise RuntimeError(f"triton {triton.__version__}: ASTSource(fn, signature, constexprs, attrs) is "
                           f"needed (Triton 3.3 or newer)")
    fn = kernel_function(variant.kernel)
    sig = arg_types(fn, variant)
    # torch allocations are 16-byte aligned; the JIT marks such pointers the same way
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if n.endswith("_ptr")}
    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):
        kernel = triton.compile(ASTSource(fn, sig, dict(variant.constexprs), attrs), target=GPUTarget("cuda", arch, 32))
    seconds = time.perf_counter() - start
    usage = [u for u in parse_ptxas_log(log.getvalue()) if u["function"] == kernel.metadata.name]
    if not usage:
        raise RuntimeError("no ptxas log captured: this Triton does not honour TRITON_DUMP_PTXAS_LOG=1 (Triton >= 3.4)")
    u = usage[-1]
    return {"name": variant.kernel.split(":")[1], "arch": f"sm_{arch}", "variant": variant.label,
            "registers": u["registers"], "shared_bytes": kernel.metadata.shared + u["static_shared_bytes"],
            "spills": u["spills"], "spill_loads": u["spill_loads"], "stack_bytes": u["stack_bytes"],
            "ptx_lines": len(kernel.asm["ptx"].splitlines()), "num_warps": kernel.metadata.num_warps,
            "compile_s": round(seconds, 2), "error": None}


def _failure(name: str, arch: str, label: str, error: str, seconds: float) -> dict:
    return {"name": name, "arch": arch, "variant": label, "registers": None, "shared_bytes": None, "spills": None,
            "spill_loads": None, "stack_bytes": None, "ptx_lines": None, "num_warps": None,
            "compile_s": round(seconds, 2), "error": error}


def _child(conn, variant: Variant, arch: int) -> None:
    os.setpgid(0, 0)  # own process group: a timeout kills ptxas with it
    try:
        conn.send(compile_variant(variant, arch))
    except Exception as exc:  # a compile error is a result, reported in the JSON
        root = exc
        while root.__cause__ is not None:  # Triton's CompilationErrors nest, one per call level
            root = root.__cause__
        lines = [ln for ln in str(root).splitlines() if ln.strip()] or [""]
        # a CompilationError reads "at L:C:", the source, a caret line, then the error itself
        msg = f"{type(root).__name__} {lines[0]} {lines[-1]}" if len(lines) > 2 else f"{type(root).__name__}: {root}"
        conn.send(_failure(variant.kernel.split(":")[1], f"sm_{arch}", variant.label, " ".join(msg.split())[:500],
                           0.0))
    conn.close()


def build_all(jobs: list[tuple[Variant, int]], parallel: int, timeout: float, extra=None) -> list[dict]:
    """Run every (variant, arch) build in forked workers, ``parallel`` at a time; ``extra``: the started
    :class:`CudaBuild`, which holds one slot until it finishes."""
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("fork")
    pending, running, results = list(jobs), {}, []
    slots = parallel - (1 if extra is not None else 0)
    while pending or running:
        while pending and len(running) < max(1, slots):
            variant, arch = pending.pop(0)
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(child, variant, arch))
            proc.start()
            child.close()
            running[parent] = (proc, variant, arch, time.perf_counter())
        for conn in wait(list(running), timeout=1.0):
            proc, variant, arch, start = running.pop(conn)
            try:
                rec = conn.recv()
            except EOFError:
                rec = _failure(variant.kernel.split(":")[1], f"sm_{arch}", variant.label,
                               f"worker died (exit code {proc.exitcode})", 0.0)
            rec["compile_s"] = round(time.perf_counter() - start, 2)
            proc.join()
            results.append(rec)
            print(f"  {rec['arch']} {rec['name']} {rec['variant']}: " + (
                f"{rec['registers']} regs, {rec['spills']} B spilled" if rec["error"] is None else "FAILED")
                + f" ({rec['compile_s']} s)", flush=True)
        now = time.perf_counter()
        for conn, (proc, variant, arch, start) in list(running.items()):
            if now - start > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.join()
                running.pop(conn)
                results.append(_failure(variant.kernel.split(":")[1], f"sm_{arch}", variant.label,
                                        f"timeout: not built in {timeout:.0f} s", now - start))
                print(f"  sm_{arch} {variant.kernel} {variant.label}: TIMEOUT", flush=True)
        if extra is not None and extra.process.poll() is not None:
            extra.end = time.perf_counter()
            slots, extra = parallel, None
    return results


@dataclasses.dataclass
class CudaBuild:
    """The running nvcc build of the ``cuda`` sources of csrc/sources.txt."""

    process: subprocess.Popen
    sources: list
    log_path: str
    nvcc_version: str | None
    start: float
    end: float | None = None  # set when the build is seen finished


def _nvcc() -> str:
    for candidate in (shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", ""), "bin", "nvcc")):
        if candidate and os.path.exists(candidate):
            return candidate
    raise SystemExit("nvcc not found on PATH or under $CUDA_HOME/bin (pass --no-cuda-sources to skip the .cu build)")


def start_cuda_build(workdir: str) -> CudaBuild:
    """Start ``nvcc -c`` of every ``cuda`` line of csrc/sources.txt for sm_90a, compile-only, as CMake does
    against a CPU build of torch (csrc/compile_check stands in for the header such a torch lacks)."""
    import sysconfig

    from torch.utils.cpp_extension import include_paths

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "csrc", "sources.txt")) as f:
        sources = [ln.split()[1] for ln in f if ln.strip() and not ln.startswith("#") and ln.split()[0] == "cuda"]
    nvcc = _nvcc()
    includes = ["csrc/include", "csrc/compile_check", *include_paths(), sysconfig.get_paths()["include"]]
    cmd = [nvcc, "-c", *sources, "-odir", workdir, "-gencode", "arch=compute_90a,code=sm_90a", "-Xptxas", "-v",
           "-std=c++20", "--expt-relaxed-constexpr", "-DCOVKERNELS_WITH_CUDA", "-DTORCH_EXTENSION_NAME=_C",
           *[f"-I{p}" for p in includes]]
    log_path = os.path.join(workdir, "nvcc.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return CudaBuild(proc, sources, log_path, _tool_version([nvcc, "--version"]), time.perf_counter())


def build_cuda_sources(build: CudaBuild, timeout: float) -> list[dict]:
    """Wait for the nvcc build; one record per device function (or one per source that has none)."""
    name, arch = "+".join(os.path.basename(s) for s in build.sources), "sm_90a"
    try:
        build.process.wait(timeout=max(1.0, timeout - (time.perf_counter() - build.start)))
    except subprocess.TimeoutExpired:
        os.killpg(build.process.pid, signal.SIGKILL)
        build.process.wait()
        return [_failure(name, arch, "nvcc -c", f"timeout: not built in {timeout:.0f} s", timeout)]
    seconds = (build.end or time.perf_counter()) - build.start
    with open(build.log_path) as f:
        log = f.read()
    if build.process.returncode:
        return [_failure(name, arch, "nvcc -c", f"nvcc exit {build.process.returncode}: {log[-600:]}", seconds)]
    usage = parse_ptxas_log(log)
    if not usage:  # host code only (streams, events, graphs): nothing for ptxas to allocate
        return [dict(_failure(name, arch, "nvcc -c (no __global__ functions: host code only)", None, seconds),
                     registers=0, shared_bytes=0, spills=0, spill_loads=0, stack_bytes=0)]
    return [{"name": u["function"], "arch": arch, "variant": f"{name} (nvcc -c)", "registers": u["registers"],
             "shared_bytes": u["static_shared_bytes"], "spills": u["spills"], "spill_loads": u["spill_loads"],
             "stack_bytes": u["stack_bytes"], "ptx_lines": None, "num_warps": None,
             "compile_s": round(seconds, 2), "error": None} for u in usage]


def summarize(records: list[dict]) -> list[dict]:
    """Records that fail ``--check``: a compile error / timeout, or a spill."""
    return [r for r in records if r["error"] is not None or r["spills"]]


def markdown(payload: dict) -> str:
    recs = payload["kernels"]
    bad = summarize(recs)
    lines = [f"# Ahead-of-time GPU builds ({payload['grid']} grid)", "",
             f"Triton {payload['triton']}, ptxas {payload['ptxas']}, nvcc {payload['nvcc']}; git "
             f"{payload['git_revision']}; {len(recs)} builds in {payload['wall_s']:.0f} s on {payload['host']} "
             f"({payload['jobs']} parallel builds, {payload['timeout_s']:.0f} s limit each).", "",
             f"Reproduce: `{payload['command']}`", "",
             f"**{len(bad)} of {len(recs)} builds fail the check** "
             f"({sum(r['error'] is not None for r in recs)} errors/timeouts, "
             f"{sum(bool(r['spills']) for r in recs if r['error'] is None)} with spills).", "",
             "| kernel | arch | variant | registers | spill stores (B) | shared (B) | PTX lines | build s | error |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(recs, key=lambda r: (r["name"], r["variant"], r["arch"])):
        err = (r["error"] or "")[:160].replace("|", "/")
        lines.append(f"| {r['name']} | {r['arch']} | {r['variant']} | {r['registers']} | {r['spills']} | "
                     f"{r['shared_bytes']} | {r['ptx_lines']} | {r['compile_s']} | {err} |")
    return "\n".join(lines) + "\n"


def _tool_version(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release ([\d.]+)", out)
    return m.group(1) if m else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", choices=("ci", "full"), default="ci")
    p.add_argument("--check", action="store_true", help="exit 1 on a compile error, timeout or spill")
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--timeout", type=float, default=180.0, help="seconds per build before it is killed")
    p.add_argument("--arch", type=int, nargs="+", default=list(ARCHS))
    p.add_argument("--only", nargs="+", default=None, help="build only these kernels (e.g. _structured_step_kernel)")
    p.add_argument("--no-cuda-sources", action="store_true", help="skip the nvcc build of csrc/*.cu for sm_90a")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args(argv)
    if args.jobs < 1 or args.timeout <= 0:
        raise SystemExit("--jobs must be >= 1 and --timeout > 0")
    # compile for real: no interpreter, a fresh cache, ptxas' log printed; keep the JIT's fp-fusion default
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    cache = tempfile.mkdtemp(prefix="covkernels-aot-")
    os.environ["TRITON_CACHE_DIR"] = cache
    import triton

    try:
        from triton.backends.nvidia.compiler import get_ptxas
        ptxas_version = _tool_version([get_ptxas(90).path, "--version"])
    except (ImportError, AttributeError, TypeError):
        ptxas_version = None
    start = time.perf_counter()
    cuda_build = None if args.no_cuda_sources else start_cuda_build(cache)
    jobs = [(v, a) for a in args.arch for v in variants(args.grid)
            if args.only is None or v.kernel.split(":")[1] in args.only]
    print(f"{len(jobs)} Triton builds, {args.jobs} at a time" + ("" if cuda_build is None else
                                                                 " (+ the .cu sources for sm_90a)"), flush=True)
    records = build_all(jobs, args.jobs, args.timeout, cuda_build)
    if cuda_build is not None:
        records += build_cuda_sources(cuda_build, args.timeout)
    wall = time.perf_counter() - start
    shutil.rmtree(cache, ignore_errors=True)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    name = "triton_aot" if args.grid == "full" else f"triton_aot_{args.grid}"
    payload = {"grid": args.grid, "triton": triton.__version__, "ptxas": ptxas_version,
               "nvcc": cuda_build.nvcc_version if cuda_build else None, "git_revision": rev,
               "host": f"{os.cpu_count()}-core CPU, no GPU", "jobs": args.jobs, "timeout_s": args.timeout,
               "wall_s": round(wall, 1),
               "command": "python benchmarks/triton_aot.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "kernels": records}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(payload, f, indent=1)
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(markdown(payload))
    bad = summarize(records)
    print(f"{len(records)} builds in {wall:.0f} s; {len(bad)} fail the check; wrote {args.out}/{name}.json")
    for r in bad:
        print(f"  FAIL {r['arch']} {r['name']} {r['variant']}: {r['error'] or str(r['spills']) + ' B spilled'}")
    return 1 if args.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
