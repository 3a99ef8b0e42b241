"""covkernels: covariance-aware diffusion samplers (covariance-aware DDIM, Lanczos Gaussian Sampler) and
the standard baselines, k-diffusion-compatible, with fused kernels under them.

Importing covkernels never queries a GPU and needs no compiler. It imports nothing else either: the public
names below are loaded on first use (PEP 562), so ``covkernels --help``, ``covkernels --version`` and a
module that only needs ``covkernels._C`` or ``covkernels.ops`` do not pay for torch and the sampler stack.
"""
from __future__ import annotations

import importlib as _importlib
import importlib.util as _importlib_util

from ._version import __version__  # noqa: F401

# public name -> the submodule that defines it
_PUBLIC = {
    **dict.fromkeys(("SAMPLERS", "calibrate_addim_variance", "calibrate_spectrum", "PosteriorSpectrum",
                     "get_sampler", "nfe_per_sample", "sample", "StepSpacingWarning"), ".samplers"),
    **dict.fromkeys(("alphas_cumprod_to_sigmas", "exponential_sigmas", "get_sigmas", "karras_sigmas",
                     "linear_beta_sigmas", "vp_sigmas"), ".schedules"),
    "Guidance": ".guidance", "cfg_denoiser": ".guidance",
    "NonFiniteError": ".steps", "NonFiniteFallbackWarning": ".steps",
}
# submodules reachable as attributes without an import statement, as before (``covkernels.sampling.X``)
_SUBMODULES = ("sampling", "samplers", "schedules", "guidance", "steps", "jvp", "ops", "adapters", "models")


def info(file=None) -> None:
    """Print versions, devices, backends (and why some are unavailable), this process's backend fallbacks and
    its jvp=auto choices (:mod:`covkernels.system_info`; the ``covkernels info`` command prints the same)."""
    from .system_info import info as print_report

    print_report(file=file)


def _sampler_functions() -> list[str]:
    from .samplers import SAMPLERS

    return [f"sample_{name}" for name in SAMPLERS]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(_importlib.import_module(_PUBLIC[name], __name__), name)
    elif name.startswith("sample_") and name in _sampler_functions():
        value = getattr(_importlib.import_module(".samplers", __name__), name)
    elif name in _SUBMODULES or (not name.startswith("__") and _importlib_util.find_spec(f"{__name__}.{name}")):
        value = _importlib.import_module(f".{name}", __name__)  # any submodule, as an eager root made them
    elif name == "__all__":
        value = ["info", "__version__", *_PUBLIC, *_sampler_functions()]
    else:
        raise AttributeError(f"module 'covkernels' has no attribute {name!r}")
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    public = {n for n in globals() if not n.startswith("_") or n in ("__version__", "__all__")}
    return sorted(public | set(_PUBLIC) | set(_SUBMODULES) | set(_sampler_functions()))
