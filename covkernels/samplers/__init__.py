"""k-diffusion-compatible samplers, one module per family, all in ONE registry (:mod:`.registry`).

Every sampler is ``sample_<name>(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)``:
``model(x, sigma, **extra_args)`` returns the denoised ``x0`` estimate (sigma a ``(B,)`` tensor); ``x`` is the
initial noise already scaled by ``sigmas[0]``; ``sigmas`` is strictly decreasing and normally ends in 0.
``callback`` gets k-diffusion's dict ``{x, i, sigma, sigma_hat, denoised}`` each step; ``disable`` turns off
the tqdm bar (None: on when attached to a terminal). Unknown options raise ``TypeError``. Every sampler also
takes ``generator``, ``sample_offset`` (counter-based noise: a sample does not depend on the batch layout)
and ``check_finite``. What a sampler takes is the registry's answer (``spec(name).takes(option)``).
``ode_cov``'s options are objects (:class:`Diagonal`, :class:`Lanczos`, :class:`Calibrated`; :class:`Auto`,
:class:`End`, :class:`At`; :class:`CovSteps`; :mod:`.hybrid_options`) or their string / flat spellings.
"""
from __future__ import annotations

from . import single_step, ancestral, multistep, covariance, hybrid  # noqa: F401  (registration order = table order)
from .ancestral import sample_ddpm, sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_noisy_ddim
from .api import StepSpacingWarning, sample
from .calibrated import PosteriorSpectrum, calibrate_spectrum
from ..steps.validation import check_inputs
from .common import COV_SIGMA_MAX
from .covariance import sample_cov_ddim, sample_diag_hutchinson, sample_lanczos
from .hybrid import sample_ode_cov
from .hybrid_options import At, Auto, Calibrated, CovSteps, Diagonal, End, Lanczos, OdeCovOptions
from .multistep import sample_dpmpp_2m, sample_ipndm, sample_ipndm_v, sample_unipc
from .registry import FAMILIES, REGISTRY, SamplerSpec, get_sampler, nfe_per_sample, register, spec
from .single_step import PosteriorVariance, addim_variance, calibrate_addim_variance, sample_addim, sample_ddim, \
    sample_heun

SAMPLERS = tuple(REGISTRY)  # names of the registered samplers, in registration order

__all__ = ["SAMPLERS", "StepSpacingWarning", "REGISTRY", "FAMILIES", "SamplerSpec", "register", "spec",
           "get_sampler", "nfe_per_sample", "sample", "COV_SIGMA_MAX", "check_inputs", "PosteriorVariance", "addim_variance",
           "calibrate_addim_variance", "PosteriorSpectrum", "calibrate_spectrum", "Diagonal", "Lanczos",
           "Calibrated", "End", "Auto", "At", "CovSteps", "OdeCovOptions"] + [f"sample_{n}" for n in SAMPLERS]
