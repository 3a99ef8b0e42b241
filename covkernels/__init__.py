"""covkernels: covariance-aware diffusion samplers (covariance-aware DDIM, Lanczos Gaussian Sampler) and
the standard baselines, k-diffusion-compatible, with fused kernels under them.

Importing covkernels never queries a GPU and needs no compiler.
"""
from __future__ import annotations

from ._version import __version__  # noqa: E402,F401

from .samplers import (  # noqa: E402
    SAMPLERS,
    calibrate_addim_variance,
    calibrate_spectrum,
    PosteriorSpectrum,
    get_sampler,
    nfe_per_sample,
    sample,
)
from .samplers import *  # noqa: E402,F401,F403  (every sample_<name> of the registry)
from . import sampling  # noqa: E402,F401  (the old public module, kept importable)
from .schedules import (  # noqa: E402
    alphas_cumprod_to_sigmas,
    exponential_sigmas,
    get_sigmas,
    karras_sigmas,
    linear_beta_sigmas,
    vp_sigmas,
)
from .guidance import Guidance, cfg_denoiser  # noqa: E402
from .steps import NonFiniteError, NonFiniteFallbackWarning  # noqa: E402


def info(file=None) -> None:
    """Print versions, devices, backends (and why some are unavailable) and this process's jvp=auto choices."""
    from .cli import print_info

    print_info(file=file)

__all__ = [
    "SAMPLERS", "get_sampler", "sample", "nfe_per_sample", "calibrate_addim_variance", "calibrate_spectrum",
    "PosteriorSpectrum", "alphas_cumprod_to_sigmas",
    "exponential_sigmas", "get_sigmas", "karras_sigmas", "linear_beta_sigmas", "vp_sigmas", "NonFiniteError",
    "NonFiniteFallbackWarning", "Guidance", "cfg_denoiser", "info", "__version__",
] + [f"sample_{name}" for name in SAMPLERS]
