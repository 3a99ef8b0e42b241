"""Multistep ODE solvers that reuse past model outputs: DPM-Solver++(2M), iPNDM (fixed and variable step),
UniPC (bh1/bh2, data prediction, with the UniC corrector). One model evaluation per step each."""
from __future__ import annotations

import math

import torch
from tqdm.auto import trange

from ..steps import StepContext
from ..steps.validation import check_bool, check_count, check_inputs
from .common import float_sigmas, to_d
from .registry import register

# Adams-Bashforth weights on (d_i, d_{i-1}, d_{i-2}, d_{i-3}) for equal steps, by order.
_AB_WEIGHTS = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
               4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


@register("dpmpp_2m", family="ode_multistep", summary="DPM-Solver++(2M) (= sample_dpmpp_2m)")
@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None, *, generator=None,
                    sample_offset=0, check_finite=True):
    """DPM-Solver++(2M) (k-diffusion ``sample_dpmpp_2m``), in ``t = -log sigma``. 1 NFE per step."""
    sigmas = check_inputs(x, sigmas)
    ctx = StepContext(model, x, extra_args, generator=generator, sample_offset=sample_offset,
                      check_finite=check_finite)
    old_denoised = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = ctx.denoise(x, sigmas[i], i)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            target = denoised
        else:
            r = (t - sigmas[i - 1].log().neg()) / h
            target = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * target
        old_denoised = denoised
    return x


def adams_bashforth_weights(times: list[float], t_next: float) -> list[float]:
    """Weights ``w_j`` with ``int_{times[0]}^{t_next} p(t) dt = sum_j w_j d_j`` for the polynomial ``p``
    through ``(times[j], d_j)`` (``times[0]`` the current point, then older ones): variable-step
    Adams-Bashforth. Exact Gauss-Legendre quadrature of the Lagrange basis (degree < 4 needs 2 nodes; 4 used)."""
    nodes = (-0.8611363115940526, -0.3399810435848563, 0.3399810435848563, 0.8611363115940526)
    gw = (0.3478548451374538, 0.6521451548625461, 0.6521451548625461, 0.3478548451374538)
    a, b = times[0], t_next
    out = []
    for j, tj in enumerate(times):
        acc = 0.0
        for z, w in zip(nodes, gw):
            t = 0.5 * (b - a) * z + 0.5 * (a + b)
            basis = 1.0
            for m, tm in enumerate(times):
                if m != j:
                    basis *= (t - tm) / (tj - tm)
            acc += w * basis
        out.append(0.5 * (b - a) * acc)
    return out


def _ipndm(model, x, sigmas, extra_args, callback, disable, max_order, variable, generator, sample_offset,
           check_finite):
    sigmas = check_inputs(x, sigmas)
    max_order = check_count(max_order, "max_order", 4)
    ctx = StepContext(model, x, extra_args, generator=generator, sample_offset=sample_offset,
                      check_finite=check_finite)
    s = float_sigmas(sigmas)
    history: list[torch.Tensor] = []  # d of the previous steps, newest last
    for i in trange(len(s) - 1, disable=disable):
        denoised = ctx.denoise(x, sigmas[i], i)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        d = to_d(x, sigmas[i], denoised)
        order = min(max_order, i + 1)
        if s[i + 1] == 0:
            x = denoised
        else:
            ds = [d] + history[::-1][:order - 1]
            if variable:
                w = adams_bashforth_weights(s[i - order + 1:i + 1][::-1], s[i + 1])
                x = x + sum(wj * dj for wj, dj in zip(w, ds))
            else:
                x = x + (sigmas[i + 1] - sigmas[i]) * sum(wj * dj for wj, dj in zip(_AB_WEIGHTS[order], ds))
        history = (history + [d])[-(max_order - 1):] if max_order > 1 else []
    return x


@register("ipndm", family="ode_multistep", schedule_defaults={"schedule": "exponential", "sigma_min": 0.1},
          summary="improved PNDM: Adams-Bashforth on d = (x - D)/sigma with equal-step weights, order ramping "
                  "up to max_order (= ComfyUI sample_ipndm)")
@torch.no_grad()
def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None, *, max_order=4, generator=None,
                 sample_offset=0, check_finite=True):
    """iPNDM (Zhang & Chen's DEIS paper; the diff-solvers / ComfyUI ``sample_ipndm`` conventions): the order
    is ``min(max_order, i + 1)`` at step ``i``, the fixed Adams-Bashforth weights of equal steps are applied to
    ``d = (x - D) / sigma`` whatever the actual step sizes, and the step to sigma = 0 returns the denoised.
    1 NFE per step."""
    return _ipndm(model, x, sigmas, extra_args, callback, disable, max_order, False, generator, sample_offset,
                  check_finite)


@register("ipndm_v", family="ode_multistep",
          summary="iPNDM with variable-step Adams-Bashforth weights (= ComfyUI sample_ipndm_v)")
@torch.no_grad()
def sample_ipndm_v(model, x, sigmas, extra_args=None, callback=None, disable=None, *, max_order=4, generator=None,
                   sample_offset=0, check_finite=True):
    """iPNDM with the Adams-Bashforth weights of the actual (unequal) sigma steps: the integral over
    ``[sigma_i, sigma_{i+1}]`` of the polynomial through the last ``order`` derivatives. Equal steps give
    :func:`sample_ipndm`. 1 NFE per step."""
    return _ipndm(model, x, sigmas, extra_args, callback, disable, max_order, True, generator, sample_offset,
                  check_finite)


def _unipc_coefficients(rks: list[float], hh: float, b_h: float, predictor: bool) -> list[float]:
    """UniPC's ``rho`` weights for the differences ``D1s`` (and, for the corrector, the new output last).

    ``rks``: ratios ``(lambda_k - lambda_0) / h`` of the past points, then 1. The conditions are
    ``sum_k rho_k r_k^(j-1) = j! phi_{j+1}(h) / B(h)``, ``j = 1..p``, with ``phi`` built by the recursion
    ``phi_{k+1} = phi_k / hh - 1/k!`` (``hh = -h``: data prediction). The predictor uses the first ``p-1``
    conditions (rho = 1/2 when p = 2), the corrector all ``p`` (rho = 1/2 when p = 1).
    """
    p = len(rks)
    h_phi_k = math.expm1(hh) / hh - 1.0
    factorial = 1.0
    rows, rhs = [], []
    for j in range(1, p + 1):
        rows.append([r ** (j - 1) for r in rks])
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= j + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    if predictor:
        if p == 1:
            return []
        if p == 2:
            return [0.5]
        a, b = torch.tensor(rows, dtype=torch.float64)[:-1, :-1], torch.tensor(rhs, dtype=torch.float64)[:-1]
    else:
        if p == 1:
            return [0.5]
        a, b = torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64)
    return torch.linalg.solve(a, b).tolist()


def _unipc_update(x, lams, outputs, i_from, i_to, order, variant, s, new_output=None):
    """One UniP (``new_output`` None) or UniC update from point ``i_from`` to ``i_to`` in the sigma convention:
    ``x_to = (sigma_to / sigma_from) x - phi_1 m_0 - B(h) sum_k rho_k D1_k`` (``phi_1 = expm1(-h)``).
    ``outputs[k]`` is the data prediction at point ``k``; the last ``order`` points up to ``i_from`` are used."""
    h = lams[i_to] - lams[i_from]
    hh = -h
    phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else phi_1
    m0 = outputs[i_from]
    rks, d1s = [], []
    for k in range(1, order):
        rk = (lams[i_from - k] - lams[i_from]) / h
        rks.append(rk)
        d1s.append((outputs[i_from - k] - m0) / rk)
    rks.append(1.0)
    rhos = _unipc_coefficients(rks, hh, b_h, predictor=new_output is None)
    x_to = (s[i_to] / s[i_from]) * x - phi_1 * m0
    res = sum(r * d for r, d in zip(rhos, d1s)) if d1s else 0
    if new_output is not None:
        res = res + rhos[-1] * (new_output - m0)
    return x_to - b_h * res


@register("unipc", family="ode_multistep",
          summary="UniPC (bh2, data prediction): UniP predictor + UniC corrector reusing the next evaluation "
                  "(= diffusers UniPCMultistepScheduler)", guided_defaults={"order": 2},
          variants={"unipc/order2": {"order": 2}})
@torch.no_grad()
def sample_unipc(model, x, sigmas, extra_args=None, callback=None, disable=None, *, order=3, variant="bh2",
                 corrector=True, lower_order_final=True, generator=None, sample_offset=0, check_finite=True):
    """UniPC (Zhao et al. 2023) with data prediction in ``lambda = -log sigma``, as diffusers'
    ``UniPCMultistepScheduler`` runs it: order ``min(order, i + 1)`` (warm-up), with ``lower_order_final`` also
    ``<= n - i`` on the last steps; the UniC corrector refines ``x_i`` with the evaluation ``D(x_i)`` that the
    next predictor uses anyway (no extra NFE; the output of that evaluation is not recomputed at the
    corrected point), so there is no corrector after the last evaluation. The step to sigma = 0 returns the
    denoised. ``order`` 3 for unconditional sampling, 2 recommended with guidance. 1 NFE per step."""
    sigmas = check_inputs(x, sigmas)
    order = check_count(order, "order", 4)
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    check_bool(corrector, "corrector")
    check_bool(lower_order_final, "lower_order_final")
    ctx = StepContext(model, x, extra_args, generator=generator, sample_offset=sample_offset,
                      check_finite=check_finite)
    s = float_sigmas(sigmas)
    n = len(s) - 1
    lams = [-math.log(v) if v > 0 else math.inf for v in s]
    outputs: dict[int, torch.Tensor] = {}
    last_x, last_order = None, 0
    for i in trange(n, disable=disable):
        denoised = ctx.denoise(x, sigmas[i], i)
        if corrector and last_x is not None:
            x = _unipc_update(last_x, lams, outputs, i - 1, i, last_order, variant, s, new_output=denoised)
        outputs[i] = denoised
        outputs.pop(i - order, None)  # only the last `order` outputs are ever used
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if s[i + 1] == 0:
            x, last_x = denoised, None
            continue
        this_order = min(order, i + 1, n - i if lower_order_final else order)
        last_x, last_order = x, this_order
        x = _unipc_update(x, lams, outputs, i, i + 1, this_order, variant, s)
    return x
