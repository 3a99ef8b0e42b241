"""Build script. Metadata lives in pyproject.toml; this file only decides which compiled parts to build.

The pure-Python package installs everywhere. The compiled extensions (csrc/, sources listed once in
csrc/sources.txt) are optional:

* ``covkernels._C``, the CPU kernels, builds whenever torch is importable at build time (hence
  ``--no-build-isolation``) and a C++ compiler is present. It uses only the LibTorch stable ABI (target
  torch 2.10) and Python's limited API (3.10), so ``pip wheel --no-build-isolation --no-deps .`` makes one
  ``cp310-abi3`` wheel that installs, with no compiler, next to any torch >= 2.10;
* ``covkernels._C_cuda``, the CUDA guided-step executor, builds as well when torch is a CUDA build and nvcc
  is found (``CUDA_HOME``); it runs Python callables, which the stable ABI cannot carry, so it is
  version-bound (and a wheel that contains it is not abi3);
* when a part cannot be built the build prints a note saying why (pip shows it with ``-v``) and goes on:
  a failed CUDA part leaves the CPU part, a failed CPU part the pure-Python package, which runs on its
  Triton / pure-PyTorch backends (``covkernels info`` says the extension does not load and how to
  rebuild). In-place builds (``build_ext --inplace``) never swallow a compile error: a developer
  rebuilding after editing csrc/ must not keep testing a stale library.

Environment flags (read here, so they work with ``pip install --no-build-isolation .``):

``COVKERNELS_SKIP_EXTENSION=1``   build nothing compiled (pure-Python install)
``COVKERNELS_SKIP_CUDA_BUILD=1``  build the CPU part only
``COVKERNELS_FORCE_CUDA=1``       the CUDA part must build: anything that prevents it is an error
``TORCH_CUDA_ARCH_LIST``          GPU architectures (default below, includes sm_90 for H100/H200)
``MAX_JOBS``                      parallel compile jobs (ninja), read by torch's BuildExtension
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;8.6;8.9;9.0+PTX"
PARTS = ("cpu", "python", "cuda", "cuda_python")


def note(message):
    print(f"covkernels: {message}", file=sys.stderr)


def flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def give_up(reason, consequence):
    """A part cannot be built: a note, or an error under COVKERNELS_FORCE_CUDA."""
    if flag("COVKERNELS_FORCE_CUDA"):
        sys.exit(f"covkernels: COVKERNELS_FORCE_CUDA=1 but the CUDA part cannot be built: {reason}")
    note(f"{reason}: {consequence}")


def extension_sources():
    """``{part: [paths]}`` from csrc/sources.txt (CMakeLists.txt reads the same file)."""
    parts = {part: [] for part in PARTS}
    with open(os.path.join(HERE, "csrc", "sources.txt")) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                part, path = line.split()
                parts[part].append(path)
    return parts


def cuda_reason(torch):
    """None when the CUDA part can be built, else why not."""
    if flag("COVKERNELS_SKIP_CUDA_BUILD"):
        return "COVKERNELS_SKIP_CUDA_BUILD=1"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return "nvcc was not found (set CUDA_HOME)"
    return None


def cxx_command():
    """The C++ compiler the build will use: $CXX, else the one Python was built with, else c++."""
    return (os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++").split()[0]


def compiler_reason():
    cxx = cxx_command()
    return None if shutil.which(cxx) else f"no C++ compiler ({cxx!r} is not on PATH; set CXX)"


def openmp_flags():
    """Flags that make at::parallel_for multi-threaded, if this compiler takes them (else a note: the
    kernels then run on one thread)."""
    candidates = [["-fopenmp"]] if sys.platform != "darwin" else [["-Xpreprocessor", "-fopenmp", "-lomp"]]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp.cpp")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        for flags in candidates:
            cmd = [cxx_command(), src, *flags, "-o", os.path.join(tmp, "omp")]
            if subprocess.run(cmd, capture_output=True).returncode == 0:
                return flags
    note("the C++ compiler does not build OpenMP programs: the CPU kernels will run on one thread")
    return []


# The CPU extension targets the LibTorch stable ABI of torch 2.10 and Python's limited API (torch's
# cpp_extension defines Py_LIMITED_API for CPython 3.10 when py_limited_api=True, the oldest Python torch
# 2.10 supports), so one cp310-abi3 wheel serves every torch >= 2.10 on every CPython >= 3.10.
STABLE_ABI_MACROS = [("TORCH_TARGET_VERSION", "0x020a000000000000")]
LIMITED_API_TAG = "cp310"


def extensions():
    """``(ext_modules, cmdclass, options)``: ``covkernels._C`` (CPU kernels, stable ABI, abi3) and, on CUDA
    builds, the optional ``covkernels._C_cuda`` (the guided-step executor, version-bound C++ API)."""
    if flag("COVKERNELS_SKIP_EXTENSION"):
        note("COVKERNELS_SKIP_EXTENSION=1: installing the pure-Python package")
        return [], {}, {}
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError as exc:
        give_up(f"torch is not importable at build time ({exc})", "installing the pure-Python package. Install "
                "torch first and build with --no-build-isolation to get the compiled kernels.")
        return [], {}, {}
    why_not = compiler_reason()
    if why_not:
        give_up(why_not, "installing the pure-Python package (no compiled kernels)")
        return [], {}, {}
    sources = extension_sources()
    openmp = openmp_flags()
    cxx_flags = ["-O3", *[f for f in openmp if f != "-lomp"]]  # the C++ standard is the one torch asks for
    kwargs = dict(include_dirs=[os.path.join(HERE, "csrc", "include")],
                  extra_link_args=[f for f in openmp if f != "-Xpreprocessor"])
    cpu_ext = CppExtension("covkernels._C", sources["cpu"] + sources["python"], py_limited_api=True,
                           define_macros=STABLE_ABI_MACROS, extra_compile_args={"cxx": cxx_flags}, **kwargs)
    exts = [cpu_ext]
    cuda_why_not = cuda_reason(torch)
    if cuda_why_not is None:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        note(f"building the CPU part and the CUDA executor (TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})")
        exts.append(CUDAExtension("covkernels._C_cuda", sources["cuda"] + sources["cuda_python"],
                                  extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
                                  **kwargs))
    elif not flag("COVKERNELS_SKIP_CUDA_BUILD"):
        give_up(cuda_why_not, "building the CPU part only")

    class OptionalBuild(BuildExtension):
        """A failed CUDA executor leaves the CPU part, a failed CPU part the pure-Python package, each with a
        note; forced CUDA builds and in-place (developer) builds fail instead."""

        def run(self):
            try:
                super().run()
            except Exception as exc:  # any compiler or toolchain failure
                if flag("COVKERNELS_FORCE_CUDA") or self.inplace:
                    raise
                if len(self.extensions) > 1:
                    note(f"building the CUDA executor covkernels._C_cuda failed ({exc}); building the CPU part only")
                    self.extensions = [cpu_ext]
                    return self.run()
                note(f"building covkernels._C failed ({exc}); installing the pure-Python package. "
                     f"`covkernels info` shows the backends available; see the README to rebuild.")

    # The wheel is abi3 only when every compiled module in it is: the CUDA executor is version-bound.
    options = {"bdist_wheel": {"py_limited_api": LIMITED_API_TAG}} if len(exts) == 1 else {}
    return exts, {"build_ext": OptionalBuild}, options


ext_modules, cmdclass, options = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass, options=options)
