"""The automatic switch of ``ode_cov``: where along an ODE trajectory the posterior is Gaussian enough for one
covariance draw, judged per sample from quantities the sampler already has (no extra model evaluations).

Gaussian model (per coefficient of a basis F that diagonalises the data covariance, variance ``lam``): at
noise ``sigma`` the denoiser's Jacobian is ``c = lam / (lam + sigma^2)``, so a coefficient measured at one
sigma gives ``lam = sigma^2 c / (1 - c)`` and hence ``c`` at any other sigma (the spectrum transfer). Along the
exact probability-flow ODE of such data ``x_sigma - mu = sqrt(lam + sigma^2) z`` with ``z`` fixed, which gives,
without knowing ``mu``,

    D(x_s, s) - D(x_t, t) = (lam / t^2) (sqrt((lam + t^2) / (lam + s^2)) - 1) (x_t - D(x_t, t)).

The diagnostic: from the end point of the trajectory (``x_k``, ``D_k`` and the JVP's coefficients at
``sigma_k``) predict the denoised means the ODE actually computed at the earlier points and measure the
relative miss ``r_i = ||D_i^pred - D_i|| / ||D_i - D_k||``. Where the data are Gaussian (or the posterior is
already inside one Gaussian mode) the prediction holds up to the solver's error; where the trajectory was
still choosing between modes it fails. The draw is taken from the earliest point after which every
``r_j <= tolerance`` (the end point if none), with the spectrum transferred there.

Shapes: ``x``, ``D`` ``(B, C, H, W)``; coefficients ``c`` / ``lam`` ``(B, 1 or C, H, W)`` (channel-averaged
coefficients broadcast over channels).
"""
from __future__ import annotations

import torch

from ..ops.api import hutchinson_coefficients, work_dtype

# Relative miss of the Gaussian prediction accepted as "Gaussian enough" (switch_sigma="auto"). Set (not tuned)
# between the misses measured on the oracles (64 samples, Karras 80 -> 0.1/0.3, 4-6 steps of 2M): exact
# Gaussian data miss by 0.01-0.12 (median; 0.17-0.33 at the last point before a sigma_min = 0.1 end, where the
# transfer from c ~ 1 is noisy), the mixture by 0.7-0.9 above sigma 3 while it still chooses a component.
AUTO_TOLERANCE = 0.25
# c is clamped below this before the transfer: lam = sigma^2 c / (1 - c) is infinite at c = 1.
C_TRANSFER_MAX = 0.999


def spectrum(c: torch.Tensor, sigma: float) -> torch.Tensor:
    """Data variance per coefficient ``lam = sigma^2 c / (1 - c)`` implied by Jacobian coefficients ``c``
    measured at ``sigma`` (c clamped to ``[0, C_TRANSFER_MAX]``)."""
    c = c.clamp(0.0, C_TRANSFER_MAX)
    return sigma ** 2 * c / (1.0 - c)


def coefficients_at(lam: torch.Tensor, sigma) -> torch.Tensor:
    """Jacobian coefficients ``lam / (lam + sigma^2)`` of a Gaussian of variances ``lam`` at ``sigma``."""
    return lam / (lam + sigma ** 2)


def ode_gain(lam: torch.Tensor, sigma_t: float, sigma_s: float) -> torch.Tensor:
    """Per coefficient ``(D_s - D_t) / (x_t - D_t)`` along the exact PF-ODE of a Gaussian (module docstring)."""
    return (lam / sigma_t ** 2) * (torch.sqrt((lam + sigma_t ** 2) / (lam + sigma_s ** 2)) - 1.0)


def prediction_misses(history, x_end: torch.Tensor, d_end: torch.Tensor, lam: torch.Tensor, sigma_end: float,
                      analysis, synthesis) -> torch.Tensor:
    """``(len(history), B)`` relative misses ``r_i`` of the Gaussian prediction of each earlier denoised mean.

    ``history``: ``[(sigma_i, D_i), ...]`` of the trajectory's earlier points; ``analysis`` / ``synthesis``:
    the basis transform ``F`` and ``F^T`` (B, C, H, W) -> (B, C, H, W).
    """
    wd = lam.dtype
    d_end = d_end.to(wd)
    residual = analysis(x_end.to(wd) - d_end)
    out = []
    for sigma_i, d_i in history:
        pred = d_end + synthesis(ode_gain(lam, sigma_end, sigma_i) * residual)
        miss = (pred - d_i.to(wd)).flatten(1).norm(dim=1)
        scale = (d_i.to(wd) - d_end).flatten(1).norm(dim=1)
        out.append(miss / scale.clamp_min(torch.finfo(wd).tiny))
    return torch.stack(out) if out else torch.empty(0, x_end.shape[0], dtype=wd, device=x_end.device)


def earliest_consistent(misses: torch.Tensor, tolerance: float) -> torch.Tensor:
    """``(B,)`` index into ``history + [end]``: the earliest point after which every miss is ``<= tolerance``
    (``len(history)``, the end point, where the last miss already exceeds it)."""
    ok = misses <= tolerance
    # the run of consecutive ok points that ends at the last one: its length is how far back the draw goes
    trailing = torch.cumprod(torch.flip(ok, [0]).to(torch.int64), dim=0).sum(dim=0)
    return misses.shape[0] - trailing


def measured_coefficients(ctx, x: torch.Tensor, step: int, sigma: float, *, basis: str, block: int,
                          channel_average: bool, probes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D(x, sigma), c)``: the denoised mean and the Hutchinson diagonal ``c`` of J in ``basis`` from
    ``probes`` JVPs, unclamped above (``1 + probes`` evaluations). With ``check_finite="mean_only"`` a sample
    whose JVP went non-finite on any probe gets ``c = 0`` (as in ``structured_step``: the mean only)."""
    wd = work_dtype(x.dtype)
    zs, fjvs, d = [], [], None
    for p in range(probes):
        v = ctx.ops.probe_tangent(ctx.seed, x.shape, sample_offset=ctx.sample_offset, step=step, index=p,
                                  basis=basis, block=block, dtype=x.dtype, device=x.device)
        mean, jv = ctx.jvp(x, sigma, v, step, fresh=p == 0)
        d = mean if p == 0 else d
        zs.append(ctx.ops.analysis(v.to(wd), basis, block))
        fjvs.append(ctx.ops.analysis(jv.to(wd), basis, block))
    c = hutchinson_coefficients(torch.stack(zs), torch.stack(fjvs), channel_average=channel_average, c_max=None)
    if ctx.mean_only_fallback:
        bad = ctx.fallback_mask(step, x)
        if bool(bad.any()):
            c = torch.where(bad.view((-1,) + (1,) * (x.dim() - 1)), torch.zeros_like(c), c)
    return d, c


def auto_switch_draw(ctx, x: torch.Tensor, step: int, sigma_end: float, history, *, basis: str, block: int,
                     channel_average: bool, c_max, probes: int, tolerance: float, callback=None,
                     sigma_dtype=torch.float32) -> torch.Tensor:
    """The draw of ``ode_cov(switch="auto")`` at the end ``x`` ``(B, C, H, W)`` of the ODE trajectory
    ``history = [(sigma_i, D_i), ...]``: ``probes`` Hutchinson JVPs at ``sigma_end`` give the diagonal
    ``c`` in ``basis``, the misses choose per sample the earliest Gaussian-consistent point ``i*``, and the
    sample is ``D_i* + F^T(sigma_i* sqrt(c_i*) xi)`` with ``c`` transferred to ``sigma_i*`` (measured ``c``,
    clamped to ``c_max``, at the end point). Cost: ``1 + probes`` evaluations, as the plain draw."""
    wd = work_dtype(x.dtype)
    d_end, c = measured_coefficients(ctx, x, step, sigma_end, basis=basis, block=block,
                                     channel_average=channel_average, probes=probes)
    lam = spectrum(c, sigma_end)  # the diagnostic and the transfer use c itself; c_max caps the draw only

    def analysis(t):
        return ctx.ops.analysis(t, basis, block)

    def synthesis(t):
        return ctx.ops.synthesis(t, basis, block)

    misses = prediction_misses(history, x, d_end, lam, sigma_end, analysis, synthesis)
    choice = earliest_consistent(misses, tolerance)  # (B,) index into history + [end]
    sig = torch.tensor([s for s, _ in history] + [sigma_end], dtype=wd, device=x.device)
    means = torch.stack([d.to(wd) for _, d in history] + [d_end.to(wd)])
    rows = torch.arange(x.shape[0], device=x.device)
    chosen_sigma = sig[choice]
    view = (-1,) + (1,) * (x.dim() - 1)
    c_sel = torch.where((choice == len(history)).view(view), c.clamp(min=0.0, max=c_max),
                        coefficients_at(lam, chosen_sigma.view(view)).clamp(max=c_max))
    xi = ctx.normal(x.shape, step, dtype=wd, device=x.device)
    out = means[choice, rows] + synthesis(chosen_sigma.view(view) * torch.sqrt(c_sel) * xi)
    if callback is not None:
        callback({"x": x, "i": step, "sigma": torch.tensor(sigma_end, dtype=sigma_dtype, device=x.device),
                  "sigma_hat": torch.tensor(sigma_end, dtype=sigma_dtype, device=x.device), "denoised": d_end,
                  "switch_sigma": chosen_sigma.to(sigma_dtype), "misses": misses})
    return out.to(x.dtype)
