"""covkernels: covariance-aware diffusion samplers (covariance-aware DDIM, Lanczos Gaussian Sampler) and
the standard baselines, k-diffusion-compatible, with fused kernels under them.

Importing covkernels never queries a GPU and needs no compiler.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .sampling import (  # noqa: E402
    SAMPLERS,
    get_sampler,
    sample,
    sample_addim,
    sample_cov_ddim,
    sample_ddim,
    sample_ddpm,
    sample_diag_hutchinson,
    sample_dpmpp_2m,
    sample_heun,
    sample_lanczos,
)
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
    "SAMPLERS", "get_sampler", "sample", "sample_addim", "sample_cov_ddim", "sample_ddim", "sample_ddpm",
    "sample_diag_hutchinson", "sample_dpmpp_2m", "sample_heun", "sample_lanczos", "alphas_cumprod_to_sigmas",
    "exponential_sigmas", "get_sigmas", "karras_sigmas", "linear_beta_sigmas", "vp_sigmas", "NonFiniteError",
    "NonFiniteFallbackWarning", "Guidance", "cfg_denoiser", "info",
    "__version__",
]
