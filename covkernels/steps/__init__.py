"""One reverse step of each method, backend-agnostic (docs/design.md, section 2), one job per module:

- :mod:`.context`: :class:`StepContext`, the per-call state (checked model calls, NFE count, run seed, fused
  ops of the resolved backend) and the errors of its checks;
- :mod:`.plain`: the ancestral split, the plain mean-only step, noisy DDIM;
- :mod:`.diagonal`: the Hutchinson diagonal steps (a basis, or the overlapping ConvDCT frame);
- :mod:`.lanczos`: the Lanczos Gaussian Sampler's step;
- :mod:`.calibrated`: the step with a calibrated :class:`PosteriorSpectrum` (no JVP);
- :mod:`.switch`: ``ode_cov``'s automatic switch (the Gaussian-consistency diagnostic and its draw);
- :mod:`.validation`: the checks of user input shared by the steps and the samplers.

Step functions take ``x_t`` ``(B, C, H, W)`` (``(B, ...)`` for the pixel-space steps) and return
``(x_s, denoised)``. The last step to sigma = 0 is handled by the sampler loop: it returns the mean, with one
plain model call and no JVP. The steps import nothing of the samplers (the samplers import them).
"""
from __future__ import annotations

from .calibrated import PosteriorSpectrum, calibrated_step, check_spectrum
from .context import NonFiniteError, NonFiniteFallbackWarning, StepContext, draw_seed
from .diagonal import overlap_step, structured_step
from .lanczos import lanczos_step
from .plain import ancestral_split, noisy_ddim_step, plain_step
from .switch import AUTO_TOLERANCE, auto_switch_draw
from .validation import check_basis, check_c_max, check_count, check_cov_sigma_max, check_eta, check_number, \
    check_sample_offset, check_stride_option

__all__ = ["StepContext", "NonFiniteError", "NonFiniteFallbackWarning", "draw_seed", "ancestral_split",
           "plain_step", "noisy_ddim_step", "structured_step", "overlap_step", "lanczos_step", "calibrated_step",
           "PosteriorSpectrum", "check_spectrum", "auto_switch_draw", "AUTO_TOLERANCE", "check_eta", "check_c_max",
           "check_basis", "check_stride_option", "check_cov_sigma_max", "check_sample_offset", "check_count",
           "check_number"]
