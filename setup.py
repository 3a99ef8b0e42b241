"""Build script. Metadata lives in pyproject.toml; this file only decides which compiled parts to build.

The pure-Python package installs everywhere (no compiler, no CUDA). The compiled extension
``covkernels._C`` (csrc/) joins through :func:`extensions` once it has sources; until then, and on any
machine where it cannot be built, the build prints a note and installs the pure-Python package.
Environment flags (read here, so they work with `pip install --no-build-isolation .`):
``COVKERNELS_SKIP_CUDA_BUILD=1`` skips the CUDA part; ``COVKERNELS_SKIP_EXTENSION=1`` skips all of it.
"""
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def extension_sources():
    """C++/CUDA sources of covkernels._C (relative paths; CMakeLists.txt reads the same list file)."""
    listing = os.path.join(HERE, "csrc", "sources.txt")
    if not os.path.exists(listing):
        return []
    with open(listing) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def extensions():
    if os.environ.get("COVKERNELS_SKIP_EXTENSION") == "1":
        print("covkernels: COVKERNELS_SKIP_EXTENSION=1, installing the pure-Python package", file=sys.stderr)
        return [], {}
    sources = extension_sources()
    if not sources:
        print("covkernels: no compiled sources in this version, installing the pure-Python package",
              file=sys.stderr)
        return [], {}
    try:  # needs torch in the build environment: hence --no-build-isolation
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError as exc:
        print(f"covkernels: torch is not importable at build time ({exc}); installing the pure-Python "
              f"package. Install torch first and build with --no-build-isolation.", file=sys.stderr)
        return [], {}
    cpp = [s for s in sources if s.endswith(".cpp")]
    return [CppExtension("covkernels._C", cpp)], {"build_ext": BuildExtension}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
