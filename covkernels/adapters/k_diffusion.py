"""covkernels samplers in the shape k-diffusion-based tools expect, under the names their users type.

The ``sample_*`` functions already share k-diffusion's signature ``(model, x, sigmas, extra_args,
callback, disable, **options)`` and accept k-diffusion's ``Denoiser``/``VDenoiser`` wrappers as they are
(any callable ``model(x, sigma, **extra_args)`` works) and its sigma schedules (descending, ending in 0).

:func:`get_sampler` takes the names of k-diffusion and ComfyUI (its ``KSAMPLER_NAMES``):

* a name covkernels implements (:data:`SAMPLERS`: every registry name, plus the aliases of the same
  method under the other tools' names, e.g. ``"euler"`` = ``ddim``, ``"uni_pc_bh2"`` = ``unipc``) gives the
  covkernels function, bit-compatible where docs/usage.md says so;
* a name of :data:`FOREIGN` (k-diffusion / ComfyUI samplers with no covkernels implementation: ``dpm_2``,
  ``lms``, ``dpmpp_sde``, ...) gives that tool's own function when its package is importable
  (``k_diffusion.sampling``, then ComfyUI's ``comfy.k_diffusion.sampling``), and otherwise a ValueError
  saying which package provides it and how to install it beside covkernels;
* a name of :data:`NOT_DROP_IN` (ComfyUI's ``uni_pc``, k-diffusion's ``dpm_fast`` / ``dpm_adaptive``: not
  functions of a sigma schedule) is a ValueError saying why and what to use;
* any other name is a ValueError listing both sets.

Only aliases of the same update rule are listed: ComfyUI's ``ddim`` / ``ddpm`` samplers use their own
schedules and formulas and are not aliased to ours.
"""
from __future__ import annotations

import importlib

from .. import samplers as _samplers

SAMPLERS = {name: _samplers.get_sampler(name) for name in _samplers.SAMPLERS}
# Other tools' names for the same update rules (k-diffusion's Euler family; ComfyUI's UniPC bh2).
ALIASES = {"euler": "ddim", "euler_ancestral": "ddpm", "uni_pc_bh2": "unipc"}
SAMPLERS.update({alias: SAMPLERS[name] for alias, name in ALIASES.items()})

# Samplers of k-diffusion (and ComfyUI's copy of it) that covkernels does not implement, with k-diffusion's
# signature (model, x, sigmas, extra_args, callback, disable, ...).
FOREIGN = ("dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral", "dpmpp_sde",
           "dpmpp_2m_sde_gpu", "dpmpp_3m_sde_gpu", "dpmpp_sde_gpu", "heunpp2", "lcm", "deis",
           "res_multistep", "euler_cfg_pp", "euler_ancestral_cfg_pp", "dpmpp_2s_ancestral_cfg_pp",
           "dpmpp_2m_cfg_pp", "gradient_estimation", "er_sde", "seeds_2", "seeds_3", "sa_solver")
# Names users type that are not drop-in sampler functions of either tool: why, and what to use instead.
NOT_DROP_IN = {
    "uni_pc": "ComfyUI's uni_pc is UniPC's bh1 variant, in comfy.extra_samplers.uni_pc behind ComfyUI's own "
              "wrapper, not a k-diffusion-signature function; covkernels' unipc is the bh2 variant (ComfyUI's "
              "uni_pc_bh2)",
    "dpm_fast": "k-diffusion's sample_dpm_fast takes (model, x, sigma_min, sigma_max, n), not a sigma schedule; "
                "call k_diffusion.sampling.sample_dpm_fast directly",
    "dpm_adaptive": "k-diffusion's sample_dpm_adaptive takes (model, x, sigma_min, sigma_max), not a sigma "
                    "schedule; call k_diffusion.sampling.sample_dpm_adaptive directly",
}
# Where each tool keeps its sampler functions, in the order they are tried.
FOREIGN_MODULES = ("k_diffusion.sampling", "comfy.k_diffusion.sampling")

INSTALL_HINT = ("k-diffusion imports torchvision, CLIP and clean-fid; install it beside covkernels without "
                "replacing torch by pinning the torch you have: `pip freeze | grep -E '^torch==' > torch.txt && "
                "pip install k-diffusion -c torch.txt` (docs/usage.md, 'Use with k-diffusion')")


def _foreign(name: str):
    """The sampler function of the first tool of :data:`FOREIGN_MODULES` that is importable and has it."""
    reasons = []
    for module_name in FOREIGN_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            reasons.append(f"{module_name}: {type(exc).__name__}: {exc}")
            continue
        fn = getattr(module, f"sample_{name}", None)
        if fn is not None:
            return fn
        reasons.append(f"{module_name} has no sample_{name}")
    raise ValueError(f"sampler {name!r} is a k-diffusion / ComfyUI sampler that covkernels does not implement, and "
                     f"neither tool provides it here ({'; '.join(reasons)}). {INSTALL_HINT}")


def get_sampler(name: str):
    """``sample_<name>`` by covkernels, k-diffusion or ComfyUI name (``"euler"`` = ``"ddim"``, ...); a
    k-diffusion-only name gives k-diffusion's own function when it is installed."""
    name = name[len("sample_"):] if name.startswith("sample_") else name
    if name in SAMPLERS:
        return SAMPLERS[name]
    if name in FOREIGN:
        return _foreign(name)
    if name in NOT_DROP_IN:
        raise ValueError(f"sampler {name!r} is not available as a k-diffusion-style function: {NOT_DROP_IN[name]}")
    raise ValueError(f"sampler must be one of {sorted(SAMPLERS)} (covkernels) or {sorted(FOREIGN)} (k-diffusion / "
                     f"ComfyUI, when installed), got {name!r}")
