"""benchmarks/triton_aot.py: the variant grid tracks the kernels, ptxas logs parse, a real sm_80 build works."""
from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
triton_aot = importlib.import_module("triton_aot")

# ptxas -v output as Triton 3.9's ptxas 13 prints it (a real log of a spilling build, two functions)
PTXAS_LOG = """\
ptxas-blackwell info    : 52 bytes gmem
ptxas-blackwell info    : Compiling entry function '_structured_step_kernel' for 'sm_90a'
ptxas-blackwell info    : Function properties for _structured_step_kernel
    2264 bytes stack frame, 2912 bytes spill stores, 3048 bytes spill loads
ptxas-blackwell info    : Used 255 registers, used 1 barriers, 2264 bytes cumulative stack size
ptxas-blackwell info    : Compile time = 2092.559 ms
ptxas info    : Compiling entry function '_normal_kernel' for 'sm_80'
ptxas info    : Function properties for _normal_kernel
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 45 registers, 4096 bytes smem, 380 bytes cmem[0]
"""

OPS = ("rng", "dct", "noise", "lanczos")


def _jit_kernels():
    """Every ``@triton.jit`` launch kernel (``_..._kernel``) of the Triton backend, as ``op:name``."""
    import triton

    found = {}
    for op in OPS:
        mod = importlib.import_module(f"covkernels.ops.{op}.triton")
        for name, obj in vars(mod).items():
            # JIT or interpreted (TRITON_INTERPRET=1) kernels both wrap the Python function as .fn
            if name.endswith("_kernel") and isinstance(obj, triton.runtime.KernelInterface) \
                    and obj.fn.__module__ == mod.__name__:
                found[f"{op}:{name}"] = obj
    return found


def test_parse_ptxas_log_reads_registers_spills_and_shared_per_function():
    usage = triton_aot.parse_ptxas_log(PTXAS_LOG)
    assert [u["function"] for u in usage] == ["_structured_step_kernel", "_normal_kernel"]
    step, normal = usage
    assert (step["registers"], step["spills"], step["spill_loads"], step["stack_bytes"]) == (255, 2912, 3048, 2264)
    assert (normal["registers"], normal["spills"], normal["static_shared_bytes"]) == (45, 0, 4096)
    assert triton_aot.parse_ptxas_log("ptxas info    : 28 bytes gmem\n") == []  # host code only


def test_every_launch_kernel_is_in_the_ci_grid_with_its_own_constexprs():
    kernels = _jit_kernels()
    assert len(kernels) >= 8
    ci, full = triton_aot.variants("ci"), triton_aot.variants("full")
    assert {v.kernel for v in ci} == set(kernels)  # a new kernel must join the grid
    assert set(ci) <= set(full) and len(set(full)) == len(full)
    for v in full:
        fn = kernels[v.kernel]
        declared = {n for n, p in inspect.signature(fn.fn).parameters.items() if "constexpr" in str(p.annotation)}
        assert {k for k, _ in v.constexprs} == declared, v
        sig = triton_aot.arg_types(fn, v)
        assert list(sig) == fn.arg_names and all(t for t in sig.values())
    with pytest.raises(ValueError, match="grid"):
        triton_aot.variants("everything")


def test_check_fails_on_errors_and_spills_only():
    ok = {"error": None, "spills": 0}
    assert triton_aot.summarize([ok]) == []
    bad = [{"error": "CompilationError", "spills": None}, {"error": None, "spills": 16}]
    assert triton_aot.summarize([ok, *bad]) == bad


def test_a_real_sm80_build_reports_resource_usage(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the script compiles for real
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "triton_aot.py"), "--grid", "ci",
                           "--only", "_scale_kernel", "--arch", "80", "--no-cuda-sources", "--jobs", "1",
                           "--check", "--out", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads((tmp_path / "triton_aot_ci.json").read_text())
    (rec,) = res["kernels"]
    assert rec["name"] == "_scale_kernel" and rec["arch"] == "sm_80" and rec["error"] is None
    assert 0 < rec["registers"] <= 255 and rec["spills"] == 0 and rec["ptx_lines"] > 10
    assert isinstance(rec["shared_bytes"], int) and rec["shared_bytes"] >= 0
    assert res["triton"] and res["wall_s"] > 0
    assert (tmp_path / "triton_aot_ci.md").read_text().count("| _scale_kernel | sm_80 |") == 1
