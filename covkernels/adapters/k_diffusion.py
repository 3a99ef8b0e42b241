"""covkernels samplers in the shape k-diffusion-based tools expect.

The ``sample_*`` functions already share k-diffusion's signature ``(model, x, sigmas, extra_args,
callback, disable, **options)`` and accept k-diffusion's ``Denoiser``/``VDenoiser`` wrappers as they are
(any callable ``model(x, sigma, **extra_args)`` works) and its sigma schedules (descending, ending in 0).
:data:`SAMPLERS` maps names to functions; the k-diffusion names of the baselines are aliases, so a tool
that looks up ``"euler"`` or ``"dpmpp_2m"`` finds the bit-compatible covkernels version. ``ddpm``
(``euler_ancestral``) also takes k-diffusion's ``noise_sampler(sigma, sigma_next)`` hook.
"""
from __future__ import annotations

from .. import sampling

SAMPLERS = {name: sampling.get_sampler(name) for name in sampling.SAMPLERS}
SAMPLERS.update({"euler": sampling.sample_ddim, "euler_ancestral": sampling.sample_ddpm})


def get_sampler(name: str):
    """``sample_<name>`` by covkernels or k-diffusion name (``"euler"`` = ``"ddim"``, ...)."""
    name = name[len("sample_"):] if name.startswith("sample_") else name
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name]
