"""ODE-then-covariance samplers (beyond the two papers): a mean-only sampler of the registry down to a switch
sigma, then a few covariance-aware steps to 0, the last of them a Gaussian posterior draw.

Why: the Gaussian step is exact where the posterior ``p(x0 | x_t)`` is Gaussian. At high noise the posterior
of real data is a choice between modes, where a Gaussian draw averages them and a high-order ODE solver
spends evaluations best; once the mode is chosen (low sigma), one draw ``x0 ~ N(D, sigma_t^2 J)`` with J's
diagonal in a DCT basis (or a Lanczos square root) replaces the many small ODE steps that would otherwise
resolve the fine texture.
"""
from __future__ import annotations

import math

import torch

from .. import steps as step_lib
from ..guidance import cfg_denoiser
from ..schedules import karras_sigmas
from .calibrated import calibrated_step, check_spectrum
from .common import check_inputs, check_number, context, float_sigmas
from .gaussianity import AUTO_TOLERANCE, auto_switch_draw
from .registry import REGISTRY, register

COVARIANCES = ("identity", "dct", "convdct", "lanczos", "calibrated")
SWITCH_MODES = ("end", "auto")


def split_schedule(sigmas: list[float], switch_sigma, cov_steps: int,
                   cov_sigma_min: float) -> tuple[list[float], list[float]]:
    """``(ode_sigmas, cov_sigmas)``: the schedule's prefix down to its first entry ``<= switch_sigma``
    (none if ``sigmas[0] <= switch_sigma``; ``"end"`` / ``"auto"`` / None: every positive entry), then ``cov_steps``
    steps from there to 0 (Karras spacing down to ``cov_sigma_min``, then 0; one step is the jump straight to
    0). Entries of ``sigmas`` below the switch point are not used."""
    positive = [s for s in sigmas if s > 0]
    if switch_sigma is None or switch_sigma in SWITCH_MODES:
        j = len(positive) - 1
    else:
        j = next((k for k, s in enumerate(positive) if s <= switch_sigma), len(positive) - 1)
    ode = positive[:j + 1]
    start = ode[-1]
    if cov_steps == 1:
        cov = [start, 0.0]
    else:
        cov = [start] + [float(s) for s in karras_sigmas(cov_steps, min(cov_sigma_min, start / 2), start)[1:]]
    return ode, cov


def _nfe(sigmas, opts: dict) -> int:
    from .registry import nfe_per_sample

    if opts["covariance"] == "calibrated":
        cov_cost = 1  # the draw uses the stored spectrum: no JVP
    elif opts["covariance"] == "lanczos":
        cov_cost = 1 + (opts["lanczos_steps"] or 3)
    else:
        cov_cost = 1 + (opts["probes"] or 1)
    ode_options = opts["ode_options"] or {}
    if isinstance(sigmas, int):  # n steps: at most n - 1 of them are ODE steps, then the covariance part
        ode = [math.inf] * sigmas
    else:
        ode, _ = split_schedule(sigmas, opts["switch_sigma"], opts["cov_steps"], opts["cov_sigma_min"] or 0.1)
    ode_cost = nfe_per_sample(opts["ode"], ode, **ode_options) if len(ode) > 1 else 0
    return ode_cost + cov_cost * opts["cov_steps"]


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
                                              "spectrum": "calibrate"}})
@torch.no_grad()
def sample_ode_cov(model, x, sigmas, extra_args=None, callback=None, disable=None, *, ode="dpmpp_2m",
                   ode_options=None, switch_sigma=None, covariance="dct", cov_steps=1, cov_sigma_min=None, eta=None,
                   probes=None, lanczos_steps=None, block=None, c_max=1.0, channel_average=None, auto_tolerance=None,
                   spectrum=None, stride=None, guidance=None,
                   jvp="auto", backend="auto", generator=None, sample_offset=0, check_finite=True):
    """``ode`` (any mean-only registered sampler, with ``ode_options``) on the schedule's entries down to the
    first one ``<= switch_sigma``, then ``cov_steps`` covariance steps from there to 0 (see
    :func:`split_schedule`); the last is the posterior draw ``x0 = D + F^T(sigma_t sqrt(c) xi)`` (diagonal
    ``covariance`` in the identity / dct / convdct basis from ``probes`` Hutchinson JVPs) or its Lanczos form
    with ``lanczos_steps`` JVPs. ``eta`` (default 0) and ``cov_sigma_min`` (default 0.1) apply to the
    intermediate covariance steps (``cov_steps > 1``); ``probes`` (1), ``block`` (8) and ``channel_average``
    (True) to the diagonal estimators, ``stride`` (None = ``block``; smaller: the overlapping frame of
    ``steps.overlap_step``) to convdct, ``lanczos_steps`` (3) to Lanczos: an option given where it does not
    apply raises. With ``guidance`` the ODE part runs on the guided denoiser and the covariance part takes
    the conditional JVP (as ``cov_ddim``). NFE: the ODE part's count plus ``(1 + probes)`` (or
    ``1 + lanczos_steps``) per covariance step.

    ``switch_sigma``: None (the default: ``"auto"`` for one diagonal draw, else ``"end"``), a number,
    ``"end"`` (the ODE runs the whole schedule; the draw replaces its last step, so the schedule's smallest
    sigma is the switch: tune it like sigma_min) or ``"auto"`` (as ``"end"``, then per sample the draw is
    taken from the earliest trajectory point whose Gaussian prediction misses by at most ``auto_tolerance``
    (default :data:`~covkernels.samplers.gaussianity.AUTO_TOLERANCE`), with the spectrum transferred there;
    same NFE as ``"end"``; see :mod:`covkernels.samplers.gaussianity`; its last callback also carries
    ``switch_sigma`` ``(B,)``, the sigma each sample drew from, and ``misses``).
    ``covariance="calibrated"`` takes a :class:`~covkernels.PosteriorSpectrum` ``spectrum``
    (:func:`~covkernels.calibrate_spectrum`) instead of JVPs: each covariance step then costs 1 evaluation, so
    with ``switch_sigma="end"`` the sampler costs exactly what ``ode`` alone costs on the same schedule."""
    sigmas = check_inputs(x, sigmas)
    if ode not in REGISTRY or REGISTRY[ode].needs_jvp:
        raise ValueError(f"ode must be a mean-only sampler of the registry, one of "
                         f"{[n for n, s in REGISTRY.items() if not s.needs_jvp]}, got {ode!r}")
    if ode_options is not None and not isinstance(ode_options, dict):
        raise TypeError(f"ode_options must be a dict or None, got {type(ode_options).__name__}")
    if covariance not in COVARIANCES:
        raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
    cov_steps = step_lib.check_count(cov_steps, "cov_steps", 64)
    # The automatic switch predicts the probability-flow ODE's trajectory: a stochastic ODE part or churn
    # (fresh noise along the way) breaks that prediction.
    deterministic = not REGISTRY[ode].stochastic and not (ode_options or {}).get("s_churn")
    one_diagonal_draw = covariance in ("identity", "dct", "convdct") and cov_steps == 1
    if switch_sigma is None:  # the automatic switch where it applies, else the end
        switch_sigma = "auto" if one_diagonal_draw and stride is None and deterministic else "end"
    elif switch_sigma not in SWITCH_MODES:
        switch_sigma = check_number(switch_sigma, "switch_sigma", 0.0, low_open=True)
    lanczos, auto, calibrated = covariance == "lanczos", switch_sigma == "auto", covariance == "calibrated"
    if auto and not deterministic:
        raise ValueError(f"switch_sigma='auto' needs a deterministic ODE part (no stochastic sampler, no s_churn), "
                         f"got ode={ode!r} with ode_options={ode_options!r}")
    if auto and not one_diagonal_draw:
        raise ValueError(f"switch_sigma='auto' needs a diagonal covariance (identity/dct/convdct) and cov_steps=1, "
                         f"got covariance={covariance!r}, cov_steps={cov_steps}")
    given = {"cov_sigma_min": cov_sigma_min, "eta": eta, "probes": probes, "lanczos_steps": lanczos_steps,
             "block": block, "channel_average": channel_average, "auto_tolerance": auto_tolerance, "stride": stride,
             "spectrum": spectrum}
    applies = {"cov_sigma_min": cov_steps > 1, "eta": cov_steps > 1, "probes": not (lanczos or calibrated),
               "lanczos_steps": lanczos, "block": covariance == "convdct",
               "channel_average": not (lanczos or calibrated), "auto_tolerance": auto, "spectrum": calibrated,
               "stride": covariance == "convdct" and not auto}
    wrong = [k for k, v in given.items() if v is not None and not applies[k]]
    if wrong:
        raise ValueError(f"ode_cov: option(s) {wrong} do not apply with covariance={covariance!r}, "
                         f"cov_steps={cov_steps}, switch_sigma={switch_sigma!r}")
    auto_tolerance = check_number(AUTO_TOLERANCE if auto_tolerance is None else auto_tolerance, "auto_tolerance",
                                  0.0)
    cov_sigma_min = check_number(0.1 if cov_sigma_min is None else cov_sigma_min, "cov_sigma_min", 0.0,
                                 low_open=True)
    eta = step_lib.check_eta(0.0 if eta is None else eta)
    probes = step_lib.check_count(1 if probes is None else probes, "probes", 64)
    k = step_lib.check_count(3 if lanczos_steps is None else lanczos_steps, "lanczos_steps", 64)
    block = 8 if block is None else block
    channel_average = True if channel_average is None else channel_average
    if not isinstance(channel_average, bool):
        raise TypeError(f"channel_average must be a bool, got {channel_average!r}")
    c_max = step_lib.check_c_max(c_max, allow_none=True)
    if calibrated:
        check_spectrum(spectrum, x)
    elif not lanczos:
        step_lib.check_basis(covariance, block, x)
        stride = step_lib.check_stride_option(stride, covariance, block, x)
        if channel_average and x.dim() != 4:
            raise ValueError(f"channel_average=True needs images x of shape (B, C, H, W), got {tuple(x.shape)}")
    s = float_sigmas(sigmas)
    if s[-1] != 0:
        raise ValueError(f"sigmas must end in 0 for ode_cov (its last step is a posterior draw), got {s}")
    ode_sigmas, cov_sigmas = split_schedule(s, switch_sigma, cov_steps, cov_sigma_min)
    offset, history = 0, []
    if len(ode_sigmas) > 1:
        ode_model = model if guidance is None else cfg_denoiser(model, guidance)

        def record(info):  # the trajectory's (sigma_i, D(x_i, sigma_i)) for the automatic switch
            if auto:
                history.append((float(info["sigma_hat"]), info["denoised"]))  # D was evaluated at sigma_hat
            if callback is not None:
                callback(info)

        x = REGISTRY[ode].fn(ode_model, x, torch.tensor(ode_sigmas, dtype=sigmas.dtype, device=sigmas.device),
                             extra_args=extra_args, callback=record if (auto or callback) else None,
                             disable=disable, generator=generator, sample_offset=sample_offset,
                             check_finite=check_finite, **(ode_options or {}))
        offset = len(ode_sigmas) - 1
    ctx = context(model, x, extra_args, generator, sample_offset, backend, jvp, check_finite, guidance)
    if auto:
        return auto_switch_draw(ctx, x, offset, cov_sigmas[0], history, basis=covariance, block=block,
                                channel_average=channel_average, c_max=c_max, probes=probes,
                                tolerance=auto_tolerance, callback=callback, sigma_dtype=sigmas.dtype)
    for j, (st, ss) in enumerate(zip(cov_sigmas[:-1], cov_sigmas[1:])):
        i = offset + j
        if calibrated:
            x_next, denoised = calibrated_step(ctx, x, i, st, ss, eta=eta, spectrum=spectrum, c_max=c_max)
        elif covariance == "lanczos":
            x_next, denoised = step_lib.lanczos_step(ctx, x, i, st, ss, eta=eta, lanczos_steps=k,
                                                     reorthogonalize=True, c_max=c_max)
        else:
            x_next, denoised = step_lib.structured_step(ctx, x, i, st, ss, eta=eta, basis=covariance, block=block,
                                                        channel_average=channel_average, c_max=c_max,
                                                        probes=probes, stride=stride)
        if callback is not None:
            sig = torch.tensor(st, dtype=sigmas.dtype, device=sigmas.device)
            callback({"x": x, "i": i, "sigma": sig, "sigma_hat": sig, "denoised": denoised})
        x = x_next
    return x
