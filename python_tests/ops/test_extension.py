"""The compiled extension covkernels._C: what the install built, and what the op suite cannot see.

The op-by-op and whole-sampler comparisons with the reference run against the ``cpp`` backend in
test_backends.py and test_properties.py (every available backend is parametrised there). Here: the
build itself, ``auto`` choosing the compiled kernels, thread-count independence, the C++ argument
checks, and the CUDA executor (tests marked ``cuda`` need a GPU and the extension's CUDA part).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import covkernels as ck
from helpers import gen
from covkernels import capture, executor
from covkernels import _extension
from covkernels._extension import build_info
from covkernels.ops import dispatch

COMPILER = shutil.which("c++") or shutil.which("g++")
needs_ext = pytest.mark.skipif(dispatch.extension_status()[0] is None, reason="covkernels._C is not built here")
needs_cuda_ext = pytest.mark.skipif(not torch.cuda.is_available() or executor.cuda_extension() is None,
                                    reason="needs a GPU and the CUDA executor covkernels._C_cuda")


@pytest.mark.skipif(COMPILER is None, reason="no C++ compiler: the install is pure Python by design")
def test_install_built_the_extension_where_a_compiler_exists():
    """The README install (CI runs it from a clean clone) must have built covkernels._C here."""
    ext, why = dispatch.extension_status()
    assert ext is not None, why
    info = build_info()
    # stable ABI: built with some torch >= 2.10 (CI: this one), loads with any torch >= 2.10
    assert info["abi"] == "stable" and info["min_torch"] == "2.10"
    if sys.platform.startswith("linux"):  # gcc/clang with libgomp; elsewhere OpenMP is optional (a note)
        assert info["openmp"]
    assert dispatch.resolve("auto", "cpu").name == "cpp"
    assert dispatch.backend_status()["cpp"][0]


def test_info_reports_the_extension(capsys):
    ck.info()
    out = capsys.readouterr().out
    assert "extension: covkernels._C" in out and "cpp " in out
    if dispatch.extension_status()[0] is None:
        assert "pip install --no-build-isolation" in out  # how to rebuild


@needs_ext
def test_results_do_not_depend_on_the_thread_count():
    cpp = dispatch.resolve("cpp", "cpu")
    shape = (3, 3, 32, 32)
    d, x, jv = (torch.randn(shape, generator=gen(i)) for i in range(3))
    basis = torch.nn.functional.normalize(torch.randn(3, 3, 3 * 32 * 32, generator=gen(4)), dim=2).contiguous()
    aq = torch.randn(3, 3 * 32 * 32, generator=gen(5))
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            b = basis.clone()
            step = cpp.structured_step(d, x, jv[None], 9, sample_offset=0, step=1, sigma_t=2.0, sigma_down=1.0,
                                       sigma_up=0.5, basis="convdct", block=8)
            h, beta = cpp.lanczos_update(aq, b, 1)
            runs.append((step, h, beta, b))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@needs_ext
def test_compiled_checks_reach_python_as_errors():
    ops = torch.ops.covkernels_cpu  # the stable-ABI operators that loading covkernels._C registers
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(RuntimeError, match="out must have shape"):
        ops.block_dct2(x, torch.zeros(1, 1, 8, 4), 8, False)
    with pytest.raises(NotImplementedError, match="covkernels_cpu::block_dct2.*Meta"):  # CPU kernels only
        ops.block_dct2(x.to("meta"), torch.zeros(1, 1, 8, 8), 8, False)
    with pytest.raises(ValueError, match="contiguous"):
        dispatch.resolve("cpp", "cpu").lanczos_update(torch.zeros(2, 4), torch.zeros(4, 3, 2).transpose(1, 2), 0)


def test_run_concurrently_on_cpu_is_sequential():
    order = []
    out = executor.run_concurrently(torch.device("cpu"), lambda: order.append("main") or (1, 2),
                                    lambda: order.append("side") or 3, ())
    assert out == ((1, 2), 3) and order == ["main", "side"]


@pytest.mark.skipif(executor.cuda_extension() is not None, reason="the extension has its CUDA part")
def test_graph_capture_without_the_cuda_part_says_why():
    with pytest.raises(RuntimeError, match="needs the compiled CUDA executor covkernels._C_cuda"):
        executor.CapturedStep(lambda x: x, torch.zeros(1))


def _guided_setup():
    from covkernels.guidance import Guidance, GuidedModel
    from covkernels.models.unet import random_diffusers_unet

    model = random_diffusers_unet(size=16, channels=(32, 64), num_classes=4).cuda()
    x = torch.randn(2, 3, 16, 16, generator=gen(1)).cuda()
    labels = torch.tensor([1, 2]).cuda()
    sigma = torch.full((2,), 2.0).cuda()
    v = torch.randn(2, 3, 16, 16, generator=gen(2)).cuda()
    pair = lambda concurrent: GuidedModel(model, {"class_labels": labels},  # noqa: E731
                                          Guidance(3.0, uncond_args={"class_labels": labels * 0}, concurrent=concurrent))
    return pair, x, sigma, v


@pytest.mark.cuda
@needs_cuda_ext
def test_guided_step_on_two_streams_equals_sequential():
    pair, x, sigma, v = _guided_setup()
    concurrent = pair(True).jvp(x, sigma, v, "forward_ad")
    sequential = pair(False).jvp(x, sigma, v, "forward_ad")
    torch.cuda.synchronize()
    for a, b in zip(concurrent, sequential):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@needs_cuda_ext
def test_graph_replay_equals_eager():
    from covkernels.models import get_model

    model = get_model("gaussian", size=16).cuda()
    x = torch.randn(4, 3, 16, 16, generator=gen(3)).cuda() * 5
    step_fn = capture.cov_ddim_step_fn(model, x, 5.0, 2.0, step=3, generator=gen(4))
    captured = executor.CapturedStep(step_fn, x)
    for seed in (5, 6):
        new_x = torch.randn(4, 3, 16, 16, generator=gen(seed)).cuda() * 5
        replayed = [t.clone() for t in captured(new_x)]
        eager = step_fn(new_x)
        for a, b in zip(replayed, eager):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@needs_ext
def test_mixed_input_dtypes_follow_the_reference():
    """The reference converts each input to the work dtype; the kernels read one storage dtype, so mixed
    dtypes take the reference composition instead of rounding float32 inputs to half precision."""
    cpp = dispatch.resolve("cpp", "cpu")
    shape = (2, 3, 16, 16)
    x = torch.randn(shape, generator=gen(1)).half()
    d, jv = torch.randn(shape, generator=gen(2)), torch.randn((1,) + shape, generator=gen(3))
    kw = dict(sample_offset=0, step=1, sigma_t=2.0, sigma_down=1.0, sigma_up=0.5, basis="convdct", block=8)
    ref = dispatch.REFERENCE
    torch.testing.assert_close(cpp.structured_step(d, x, jv, 3, **kw), ref.structured_step(d, x, jv, 3, **kw),
                               rtol=0, atol=0)
    basis = torch.nn.functional.normalize(torch.randn(2, 2, 768, generator=gen(4)), dim=2)
    args = (torch.randn(2, 768, generator=gen(5)), x.flatten(1), basis, torch.ones(2, 2), torch.ones(2))
    torch.testing.assert_close(cpp.lanczos_synthesis(*args, sigma_t=2.0, sigma_down=1.0),
                               ref.lanczos_synthesis(*args, sigma_t=2.0, sigma_down=1.0), rtol=0, atol=0)


# What loading the extension and the ops imports: covkernels modules in sys.modules of a fresh interpreter
_LOAD_OPS_ONLY = """
import sys
import covkernels._extension as ext
ext.extension_status()
from covkernels.ops import dispatch, library
for name, (ok, _) in dispatch.backend_status().items():
    if ok and name != "triton":
        dispatch.resolve(name, "cpu")
print(ext.extension_status()[0] is not None)
print(" ".join(sorted(m for m in sys.modules if m.startswith("covkernels"))))
"""


def test_loading_the_extension_and_the_ops_imports_nothing_above_them(tmp_path):
    """The package root is lazy and the extension is imported by its full name: neither the samplers, the
    steps nor the CLI load when a program only needs covkernels._C and covkernels.ops. The child runs in an
    empty folder, so it imports the covkernels this process imported (a source tree in the working directory
    would shadow an installed package and its built extension)."""
    root = str(Path(ck.__file__).parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _LOAD_OPS_ONLY], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded_ext, modules = proc.stdout.split("\n")[:2]
    modules = set(modules.split())
    assert {"covkernels.ops.dispatch", "covkernels.ops.library"} <= modules
    assert loaded_ext == str(dispatch.extension_status()[0] is not None)
    if loaded_ext == "True":
        assert {"covkernels._C", "covkernels.ops.dct.cpp"} <= modules
    above = sorted(m for m in modules if m.split(".")[1:2] and m.split(".")[1] not in ("_C", "_extension",
                                                                                       "_version", "ops"))
    assert above == [], f"loading the extension and the ops imported {above}"


def test_cpu_operators_says_why_the_extension_does_not_load(monkeypatch):
    monkeypatch.setattr(_extension, "extension_status", lambda: (None, "covkernels._C is not built (test)"))
    with pytest.raises(ImportError, match=r"covkernels._C is not built \(test\)"):
        _extension.cpu_operators()
