"""ODE-then-covariance samplers (beyond the two papers): a mean-only sampler of the registry down to a switch
sigma, then a few covariance-aware steps to 0, the last of them a Gaussian posterior draw.

Why: the Gaussian step is exact where the posterior ``p(x0 | x_t)`` is Gaussian. At high noise the posterior
of real data is a choice between modes, where a Gaussian draw averages them and a high-order ODE solver
spends evaluations best; once the mode is chosen (low sigma), one draw ``x0 ~ N(D, sigma_t^2 J)`` with J's
diagonal in a DCT basis (or a Lanczos square root) replaces the many small ODE steps that would otherwise
resolve the fine texture.
"""
from __future__ import annotations

import torch

from ..guidance import cfg_denoiser
from ..steps import StepContext, auto_switch_draw
from ..steps.validation import check_inputs
from .common import float_sigmas
from .hybrid_options import COVARIANCES, SPELLINGS, SWITCH_MODES, OdeCovOptions, split_schedule
from .registry import REGISTRY, register

__all__ = ["sample_ode_cov", "split_schedule", "COVARIANCES", "SWITCH_MODES"]


def _nfe(sigmas, opts: dict) -> int:
    """The registry's count: the same options object as the run, so count and run cannot disagree."""
    return _options(opts).nfe(sigmas)


def _options(opts: dict) -> OdeCovOptions:
    return OdeCovOptions.resolve(ode=opts["ode"], ode_options=opts["ode_options"], covariance=opts["covariance"],
                                 switch=opts["switch"], cov_steps=opts["cov_steps"], c_max=opts["c_max"],
                                 **{k: opts.get(k) for k in SPELLINGS})


@register("ode_cov", family="covariance", needs_jvp=True, stochastic=True, nfe_fn=_nfe, needs_final_zero=True,
          schedule_defaults={"schedule": "exponential", "sigma_min": 0.1},
          summary="a mean-only ODE sampler down to switch_sigma, then covariance steps to 0 ending in a "
                  "Gaussian posterior draw (beyond the papers)",
          # the rows measured with the switch at sigma 1 pin it (the default is now the automatic switch)
          variants={"ode_cov/dct": {"covariance": "dct", "switch_sigma": 1.0},
                    "ode_cov/convdct": {"covariance": "convdct", "switch_sigma": 1.0},
                    "ode_cov/convdct-overlap": {"covariance": "convdct", "block": 8, "stride": 4,
                                                "switch_sigma": 1.0},
                    "ode_cov/lanczos": {"covariance": "lanczos", "switch_sigma": 1.0},
                    "ode_cov/dct-switch0.5": {"covariance": "dct", "switch_sigma": 0.5},
                    "ode_cov/dct-switch2": {"covariance": "dct", "switch_sigma": 2.0},
                    "ode_cov/ipndm-dct": {"ode": "ipndm", "covariance": "dct", "switch_sigma": 1.0},
                    "ode_cov/end-dct": {"covariance": "dct", "switch_sigma": "end"},
                    "ode_cov/end-ipndm-dct": {"ode": "ipndm", "covariance": "dct", "switch_sigma": "end"},
                    "ode_cov/auto-dct": {"covariance": "dct", "switch_sigma": "auto"},
                    "ode_cov/auto-ipndm-dct": {"ode": "ipndm", "covariance": "dct", "switch_sigma": "auto"},
                    "ode_cov/end-cal": {"covariance": "calibrated", "switch_sigma": "end", "spectrum": "calibrate"},
                    "ode_cov/end-ipndm-cal": {"ode": "ipndm", "covariance": "calibrated", "switch_sigma": "end",
                                              "spectrum": "calibrate"}},
          spellings=tuple(SPELLINGS))
@torch.no_grad()
def sample_ode_cov(model, x, sigmas, extra_args=None, callback=None, disable=None, *, ode="dpmpp_2m",
                   ode_options=None, covariance="dct", switch=None, cov_steps=1, c_max=1.0, guidance=None,
                   jvp="auto", backend="auto", generator=None, sample_offset=0, check_finite=True, **spellings):
    """``ode`` (any mean-only registered sampler, with ``ode_options``) on the schedule's entries down to the
    switch, then ``cov_steps`` covariance steps from there to 0 (:func:`split_schedule`); the last is the
    posterior draw ``x0 = D + F^T(sigma_t sqrt(c) xi)``. With ``guidance`` the ODE part runs on the guided
    denoiser and the covariance part takes the conditional JVP (as ``cov_ddim``). NFE: the ODE part's count
    plus the covariance's cost per covariance step. The options are objects of
    :mod:`covkernels.samplers.hybrid_options`, each with its short spelling:

    - ``covariance``: :class:`~.hybrid_options.Diagonal` (``"identity"`` / ``"dct"`` / ``"convdct"``:
      ``probes`` Hutchinson JVPs, default 1; ``block`` 8 and ``stride`` for convdct; ``channel_average``),
      :class:`~.hybrid_options.Lanczos` (``"lanczos"``: ``lanczos_steps`` JVPs, default 3) or
      :class:`~.hybrid_options.Calibrated` (``"calibrated"``: a :class:`~covkernels.PosteriorSpectrum`
      ``spectrum`` from :func:`~covkernels.calibrate_spectrum` instead of JVPs, 1 evaluation per step, so with
      the switch at the end the sampler costs exactly what ``ode`` alone costs on the same schedule);
    - ``switch`` (or its older spelling ``switch_sigma``): None (the default: ``"auto"`` for one diagonal
      draw without stride after a deterministic ODE part, else ``"end"``), a sigma (the ODE stops at the
      first entry ``<= switch``), ``"end"`` (the ODE runs the whole schedule; the draw replaces its last
      step: tune it like sigma_min) or ``"auto"`` / :class:`~.hybrid_options.Auto` (as ``"end"``, then per
      sample the draw is taken from the earliest trajectory point whose Gaussian prediction misses by at most
      ``auto_tolerance``, default :data:`~covkernels.steps.switch.AUTO_TOLERANCE`, with the spectrum
      transferred there; same NFE as ``"end"``; see :mod:`covkernels.steps.switch`; its last callback also
      carries ``switch_sigma`` ``(B,)``, the sigma each sample drew from, and ``misses``);
    - ``cov_steps``: an int or :class:`~.hybrid_options.CovSteps` (``cov_sigma_min`` 0.1 and ``eta`` 0
      shape the intermediate steps of ``cov_steps > 1``);
    - ``c_max``: the clamp of every covariance coefficient (None: none).

    ``spellings``: the flat keywords (``probes``, ``block``, ``stride``, ``channel_average``,
    ``lanczos_steps``, ``spectrum``, ``cov_sigma_min``, ``eta``, ``switch_sigma``, ``auto_tolerance``) of
    the options given as strings; one given where it does not apply raises."""
    sigmas = check_inputs(x, sigmas)
    opts = OdeCovOptions.resolve(ode=ode, ode_options=ode_options, covariance=covariance, switch=switch,
                                 cov_steps=cov_steps, c_max=c_max, **spellings)
    opts.covariance.check_fits(x)
    s = float_sigmas(sigmas)
    if s[-1] != 0:
        raise ValueError(f"sigmas must end in 0 for ode_cov (its last step is a posterior draw), got {s}")
    ode_sigmas, cov_sigmas = opts.split(s)
    x, history = _ode_part(model, x, sigmas, ode_sigmas, opts, extra_args=extra_args, callback=callback,
                           disable=disable, guidance=guidance, generator=generator, sample_offset=sample_offset,
                           check_finite=check_finite)
    ctx = StepContext(model, x, extra_args, generator=generator, sample_offset=sample_offset, backend=backend,
                      jvp=jvp, check_finite=check_finite, guidance=guidance)
    offset = len(ode_sigmas) - 1
    if opts.auto:
        d = opts.covariance
        return auto_switch_draw(ctx, x, offset, cov_sigmas[0], history, basis=d.basis, block=d.tile,
                                channel_average=d.channel_average, c_max=opts.c_max, probes=d.probes,
                                tolerance=opts.switch.tolerance, callback=callback, sigma_dtype=sigmas.dtype)
    return _covariance_part(ctx, x, sigmas, cov_sigmas, offset, opts, callback)


def _ode_part(model, x, sigmas, ode_sigmas: list[float], opts: OdeCovOptions, *, extra_args, callback, disable,
              guidance, generator, sample_offset, check_finite):
    """``(x at the switch, history)``: ``opts.ode`` down to the switch (no step if the schedule starts there);
    ``history``: the trajectory's ``(sigma_i, D(x_i, sigma_i))``, recorded for the automatic switch only."""
    history = []
    if len(ode_sigmas) < 2:
        return x, history

    def record(info):
        if opts.auto:
            history.append((float(info["sigma_hat"]), info["denoised"]))  # D was evaluated at sigma_hat
        if callback is not None:
            callback(info)

    ode_model = model if guidance is None else cfg_denoiser(model, guidance)
    x = REGISTRY[opts.ode].fn(ode_model, x, torch.tensor(ode_sigmas, dtype=sigmas.dtype, device=sigmas.device),
                              extra_args=extra_args, callback=record if (opts.auto or callback) else None,
                              disable=disable, generator=generator, sample_offset=sample_offset,
                              check_finite=check_finite, **opts.ode_options)
    return x, history


def _covariance_part(ctx, x, sigmas, cov_sigmas: list[float], offset: int, opts: OdeCovOptions, callback):
    """The covariance steps from the switch to 0, numbered on from the ODE part's ``offset``."""
    for j, (st, ss) in enumerate(zip(cov_sigmas[:-1], cov_sigmas[1:])):
        i = offset + j
        x_next, denoised = opts.covariance.step(ctx, x, i, st, ss, eta=opts.steps.eta, c_max=opts.c_max)
        if callback is not None:
            sig = torch.tensor(st, dtype=sigmas.dtype, device=sigmas.device)
            callback({"x": x, "i": i, "sigma": sig, "sigma_hat": sig, "denoised": denoised})
        x = x_next
    return x
