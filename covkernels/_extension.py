"""Loads the compiled extension ``covkernels._C`` once and says what was built or why it does not load.

The one module that imports ``covkernels._C``: :mod:`covkernels.ops.dispatch` and the ``cpp`` backend modules
(:func:`cpu_operators`), :mod:`covkernels.executor` (the CUDA guided-step executor) and ``covkernels info``
all ask here, so the dependency arrows run one way (this module imports nothing else of covkernels). The
libraries are imported by their full module name (:func:`importlib.import_module`), not as ``from . import
_C``: that form asks the package root for an attribute first, so loading the extension never runs the
root's lazy ``__getattr__`` and cannot pull in anything else.

A common false diagnosis this module avoids: ``python -m covkernels`` or ``python -c ...`` started from the
root of a clone puts the clone first on ``sys.path``, so its ``covkernels/`` (no compiled library after a
regular ``pip install .``) shadows the installed package that has one. Rebuilding does not help there;
running from another directory, using the ``covkernels`` console script, or an editable install does.
"""
from __future__ import annotations

import functools
import importlib
import importlib.machinery
import os
import sys

PACKAGE = __name__.rpartition(".")[0]  # "covkernels"


def _has_library(package_dir: str) -> bool:
    return any(os.path.isfile(os.path.join(package_dir, "_C" + suffix))
               for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def _source_tree_root(package_dir: str) -> str | None:
    """The clone root when ``package_dir`` is the package directory of a source checkout, else None."""
    root = os.path.dirname(os.path.abspath(package_dir))
    if os.path.isfile(os.path.join(root, "setup.py")) and os.path.isdir(os.path.join(root, "csrc")):
        return root
    return None


def _other_copies(package_dir: str) -> list[str]:
    """Package directories of covkernels that other import paths would give (installed or editable)."""
    here = os.path.realpath(package_dir)
    found = []
    finders = [f for f in sys.meta_path if hasattr(f, "find_spec")]
    path_without_here = [p for p in sys.path if os.path.realpath(os.path.join(p or os.curdir, "covkernels")) != here]
    for finder in finders:
        try:
            if finder is importlib.machinery.PathFinder:
                spec = finder.find_spec("covkernels", path_without_here)
            else:
                spec = finder.find_spec("covkernels", None)
        except (ImportError, ValueError, TypeError):  # a third-party finder that cannot answer
            continue
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            if os.path.realpath(location) != here and location not in found:
                found.append(location)
    return found


def diagnose_missing(package_dir: str, error: BaseException) -> str:
    """Why ``covkernels._C`` did not load from ``package_dir`` and what to do about it."""
    root = _source_tree_root(package_dir)
    if root is not None and not _has_library(package_dir):
        built = [d for d in _other_copies(package_dir) if _has_library(d)]
        where = (f"the installed copy in {built[0]} has it" if built
                 else "no other copy of covkernels with a compiled library was found either")
        return (f"covkernels is imported from the source tree {root} (the current directory comes first on "
                f"sys.path with `python -m` / `python -c`), which has no compiled covkernels._C; {where}. "
                f"Rebuilding does not change this: run from another directory or use the `covkernels` "
                f"command, or build into the source tree with an editable install "
                f"(`pip install --no-build-isolation -e .`)")
    return (f"covkernels._C is not built or does not load ({error}). Rebuild from the source tree with "
            f"`pip install --no-build-isolation .` (torch installed first, a C++ compiler on PATH); "
            f"the build prints why it skipped a part")


def parse_build_info(text: str) -> dict:
    """``covkernels_cpu::build_info()`` ("openmp=1;torch=2.13.0;abi=stable;min_torch=2.10") as a dict."""
    info = dict(item.split("=", 1) for item in text.split(";") if "=" in item)
    return {"openmp": info.get("openmp") == "1", "torch": info.get("torch", "?"), "abi": info.get("abi", "?"),
            "min_torch": info.get("min_torch", "?")}


def build_info() -> dict:
    """What ``covkernels._C`` contains: ``openmp``, ``torch`` (the torch it was compiled with), ``abi``
    ("stable": any torch >= ``min_torch``), ``cuda`` (whether the CUDA executor ``covkernels._C_cuda`` loads)."""
    import torch  # the operators live in torch's dispatcher: torch.ops.covkernels_cpu

    info = parse_build_info(torch.ops.covkernels_cpu.build_info())
    info["cuda"] = cuda_extension() is not None
    return info


@functools.lru_cache(maxsize=None)
def extension_status() -> tuple[object | None, str]:
    """``(covkernels._C or None, what was built / why it cannot be loaded)``; cached per process. Importing
    ``covkernels._C`` registers the CPU kernels as ``torch.ops.covkernels_cpu.*`` (LibTorch stable ABI)."""
    importlib.import_module("torch")  # the library links against libtorch: torch loads it first

    try:
        _C = importlib.import_module(f"{PACKAGE}._C")
    except ImportError as exc:
        return None, diagnose_missing(os.path.dirname(os.path.abspath(__file__)), exc)
    except OSError as exc:  # a library that does not link against this torch (e.g. one older than 2.10)
        return None, f"covkernels._C does not load with this torch ({exc}); it needs torch >= 2.10"
    info = build_info()
    parts = "CPU kernels" + (" with OpenMP" if info["openmp"] else " (single-threaded: built without OpenMP)")
    parts += ", CUDA guided-step executor" if info["cuda"] else ", no CUDA part"
    return _C, (f"covkernels._C loaded ({parts}; LibTorch stable ABI: built with torch {info['torch']}, runs "
                f"with torch >= {info['min_torch']})")


@functools.lru_cache(maxsize=None)
def cuda_extension():
    """``covkernels._C_cuda`` (the guided-step executor; built only with a CUDA build of torch and nvcc, on
    the version-bound C++ API) when it loads, else None."""
    importlib.import_module("torch")  # as for covkernels._C: libtorch loads first

    try:
        return importlib.import_module(f"{PACKAGE}._C_cuda")
    except ImportError:
        return None


def cpu_operators():
    """``torch.ops.covkernels_cpu``, the CPU kernels that loading ``covkernels._C`` registers (what the ``cpp``
    backend modules call). Raises ImportError with :func:`extension_status`'s reason when it does not load."""
    ext, why = extension_status()
    if ext is None:
        raise ImportError(why)
    import torch

    return torch.ops.covkernels_cpu
