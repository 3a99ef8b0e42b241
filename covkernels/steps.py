"""One reverse step of each covariance-aware method, backend-agnostic (docs/design.md, section 2).

A :class:`StepContext` holds what one sampling call shares across steps: the validated model caller
(shape/dtype/finiteness checks, NFE count), the run seed drawn once from the caller's generator, the
sample offset that makes noise independent of batch layout, the JVP strategy and the resolved backend of
fused ops. Step functions take ``x_t`` ``(B, C, H, W)`` (``(B, ...)`` for the pixel-space samplers) and
return ``(x_s, denoised)``. The last step to sigma = 0 is handled by the sampler loop: it returns the
mean, with one plain model call and no JVP.
"""
from __future__ import annotations

import math
import warnings

import torch

from . import jvp as jvp_engine
from .guidance import GuidedModel, as_guidance
from .ops import library
from .ops.dct.reference import BASES, check_block, check_stride, frame_shifts, overlap_analysis, overlap_synthesis
from .ops.noise.reference import ddim_mean, hutchinson_coefficients, work_dtype
from .ops.rng.reference import STREAM_NOISE


class NonFiniteError(ValueError):
    """The model returned NaN or Inf; the message names the step and sigma."""


class NonFiniteFallbackWarning(UserWarning):
    """``check_finite="mean_only"``: a sample's JVP was NaN/Inf and it took the mean-only step."""


def ancestral_split(sigma_t: float, sigma_s: float, eta: float) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` of k-diffusion's ancestral step (eta = 0: DDIM, eta = 1: DDPM)."""
    if not eta:
        return sigma_s, 0.0
    sigma_up = min(sigma_s, eta * math.sqrt(sigma_s ** 2 * (sigma_t ** 2 - sigma_s ** 2) / sigma_t ** 2))
    return math.sqrt(sigma_s ** 2 - sigma_up ** 2), sigma_up


def draw_seed(generator: torch.Generator | None) -> int:
    """The 63-bit run seed: the only draw a sampler makes from the caller's generator (or, with None,
    from torch's default generator, so ``torch.manual_seed`` works as in k-diffusion)."""
    if generator is None:
        return int(torch.randint(0, 2 ** 63 - 1, ()))
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return int(torch.randint(0, 2 ** 63 - 1, (), generator=generator, device=generator.device))


def check_eta(eta) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
    return float(eta)


def check_c_max(c_max, allow_none: bool) -> float | None:
    if c_max is None and allow_none:
        return None
    if isinstance(c_max, bool) or not isinstance(c_max, (int, float)) or not c_max > 0 or not math.isfinite(c_max):
        raise ValueError(f"c_max must be a positive finite number{' or None' if allow_none else ''}, got {c_max!r}")
    return float(c_max)


def check_basis(basis, block, x: torch.Tensor) -> None:
    if basis not in BASES:
        raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
    if basis != "identity" and x.dim() != 4:
        raise ValueError(f"basis={basis!r} needs images x of shape (B, C, H, W), got shape {tuple(x.shape)}")
    if basis == "convdct":
        check_block(x.shape, block)


def check_stride_option(stride, basis, block, x: torch.Tensor) -> int | None:
    """``stride`` of the overlapping ConvDCT: None (non-overlapping tiles) or a positive int dividing
    ``block``; it applies to ``basis="convdct"`` only. Returns None where it equals ``block`` (the same step)."""
    if stride is None:
        return None
    if basis != "convdct":
        raise ValueError(f"stride applies to basis='convdct' only (the overlapping ConvDCT), got basis={basis!r}")
    check_stride(x.shape, block, stride)
    return None if stride == block else stride


def check_cov_sigma_max(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isnan(value):
        raise ValueError(f"cov_sigma_max must be a positive number (float('inf'): every step), got {value!r}")
    return float(value)


def check_sample_offset(sample_offset) -> int:
    if isinstance(sample_offset, bool) or not isinstance(sample_offset, int) or sample_offset < 0:
        raise ValueError(f"sample_offset must be a non-negative int, got {sample_offset!r}")
    return sample_offset


def check_count(value, name: str, upper: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upper:
        raise ValueError(f"{name} must be an int in [1, {upper}], got {value!r}")
    return value


class StepContext:
    """Per-call state shared by the steps of one sampling run."""

    def __init__(self, model, x: torch.Tensor, extra_args: dict | None, *, generator=None, sample_offset: int = 0,
                 backend: str = "auto", jvp: str = "auto", check_finite: bool = True, guidance=None):
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, sigma, **extra_args), got {type(model).__name__}")
        if jvp not in jvp_engine.STRATEGIES:
            raise ValueError(f"jvp must be one of {jvp_engine.STRATEGIES}, got {jvp!r}")
        check_sample_offset(sample_offset)
        if extra_args is not None and not isinstance(extra_args, dict):
            raise TypeError(f"extra_args must be a dict or None, got {type(extra_args).__name__}")
        self.model, self.extra = model, ({} if extra_args is None else extra_args)
        g = as_guidance(guidance)
        self.guided = None if g is None else GuidedModel(model, self.extra, g)
        self.ops = library.resolve(backend, x.device)  # the registered torch.ops.covkernels ops
        if check_finite not in (True, False, "mean_only"):
            raise ValueError(f"check_finite must be True, False or 'mean_only', got {check_finite!r}")
        self.jvp_strategy, self.check_finite = jvp, bool(check_finite)
        self.mean_only_fallback = check_finite == "mean_only"
        self._fallback = (-1, None)  # (step, (B,) bool mask of the samples falling back in that step)
        self.seed, self.sample_offset = draw_seed(generator), sample_offset
        self.s_in = x.new_ones([x.shape[0]])
        self.nfe = 0
        self._primal = None  # conditional-branch D(x) of the last fresh JVP, reused by the next ones

    def _checked(self, out, x: torch.Tensor, step: int, sigma: float, what: str) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"model must return a tensor, got {type(out).__name__} ({what} at step {step})")
        if out.shape != x.shape:
            raise ValueError(f"model returned shape {tuple(out.shape)} for x of shape {tuple(x.shape)} "
                             f"({what} at step {step}, sigma={sigma:.6g})")
        if out.device != x.device:
            raise ValueError(f"model returned a tensor on {out.device} for x on {x.device} ({what} at step {step})")
        if out.dtype != x.dtype:
            raise TypeError(f"model returned dtype {out.dtype} for x of dtype {x.dtype} ({what} at step {step}); "
                            f"cast inside the model or run x in the model's dtype")
        if self.check_finite and not bool(torch.isfinite(out).all()):
            raise NonFiniteError(f"model returned NaN/Inf ({what}) at step {step}, sigma={sigma:.6g}")
        return out

    def _checked_jvp(self, jv, x: torch.Tensor, step: int, sigma: float) -> torch.Tensor:
        """With ``check_finite="mean_only"`` the JVP rows of a sample with a non-finite JVP are zeroed for the
        rest of the step (J v = 0: no covariance term, so the sample takes the mean-only step; for Lanczos a
        later failure truncates that sample's Krylov space at its last finite iteration). Warns once per
        step and sample; see :meth:`fallback_mask`."""
        if self.mean_only_fallback and isinstance(jv, torch.Tensor) and jv.shape == x.shape:
            bad = ~torch.isfinite(jv.flatten(1)).all(dim=1)
            before = self.fallback_mask(step, x)
            new = bad & ~before
            if bool(new.any()):
                rows = [self.sample_offset + int(b) for b in new.nonzero().flatten()]
                warnings.warn(f"non-finite JVP at step {step}, sigma={sigma:.6g} for samples {rows}: they take "
                              f"the mean-only step there", NonFiniteFallbackWarning, stacklevel=4)
            mask = bad | before
            self._fallback = (step, mask)
            if bool(mask.any()):
                jv = torch.where(mask.view(-1, *([1] * (x.dim() - 1))), torch.zeros_like(jv), jv)
        return self._checked(jv, x, step, sigma, "JVP")

    def fallback_mask(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """``(B,)`` bool: samples whose JVP went non-finite in ``step`` (``check_finite="mean_only"``)."""
        last, mask = self._fallback
        return mask if last == step and mask is not None else torch.zeros(x.shape[0], dtype=torch.bool,
                                                                            device=x.device)

    def denoise(self, x: torch.Tensor, sigma, step: int) -> torch.Tensor:
        """``D(x, sigma)`` (guided if the run has guidance). ``sigma`` a float or 0-dim tensor.
        NFE: 1, or 2 with guidance."""
        s = sigma * self.s_in
        if self.guided is None:
            self.nfe += 1
            return self._checked(self.model(x, s, **self.extra), x, step, float(sigma), "denoised")
        self.nfe += 2
        d_cond, d_uncond = self.guided.forward(x, s)
        d_cond = self._checked(d_cond, x, step, float(sigma), "conditional denoised")
        return self.guided.combine(d_cond, self._checked(d_uncond, x, step, float(sigma), "unconditional denoised"))

    def jvp(self, x: torch.Tensor, sigma, v: torch.Tensor, step: int, fresh: bool = True):
        """``(D(x), J v)``; with guidance ``D`` is the guided mean and ``J`` the conditional branch's.

        ``fresh=False`` reuses the (conditional) primal of the last fresh call at the same ``x``.
        NFE: 1 per JVP, plus 1 for a fresh primal, plus 1 for the unconditional branch.
        """
        s = sigma * self.s_in
        if not fresh:
            self.nfe += 1
            _, jv = jvp_engine.jvp(self.model, x, s, v, self.extra, strategy=self.jvp_strategy, primal=self._primal)
            return None, self._checked_jvp(jv, x, step, float(sigma))
        if self.guided is None:
            self.nfe += 2
            d, jv = jvp_engine.jvp(self.model, x, s, v, self.extra, strategy=self.jvp_strategy)
            mean = self._primal = self._checked(d, x, step, float(sigma), "denoised")
        else:
            self.nfe += 3
            d_cond, d_uncond, jv = self.guided.jvp(x, s, v, self.jvp_strategy)
            self._primal = self._checked(d_cond, x, step, float(sigma), "conditional denoised")
            mean = self.guided.combine(self._primal, self._checked(d_uncond, x, step, float(sigma),
                                                                   "unconditional denoised"))
        return mean, self._checked_jvp(jv, x, step, float(sigma))

    def normal(self, shape, step: int, stream: int = STREAM_NOISE, dtype=None, device=None) -> torch.Tensor:
        return self.ops.normal(self.seed, shape, sample_offset=self.sample_offset, step=step, stream=stream,
                               dtype=dtype, device=device)


def structured_step(ctx: StepContext, x: torch.Tensor, step: int, sigma_t: float, sigma_s: float, *, eta: float,
                    basis: str, block: int, channel_average: bool, c_max: float | None, probes: int = 1,
                    stride: int | None = None):
    """``cov_ddim`` / ``diag_hutchinson``: Hutchinson diagonal of J in ``basis`` from ``probes`` JVPs, then
    structured noise; ``stride`` (convdct, < block): the overlapping frame (:func:`overlap_step`).
    Returns ``(x_s, denoised)``."""
    if stride is not None and stride != block:
        return overlap_step(ctx, x, step, sigma_t, sigma_s, eta=eta, block=block, stride=stride,
                            channel_average=channel_average, c_max=c_max, probes=probes)
    sigma_down, sigma_up = ancestral_split(sigma_t, sigma_s, eta)
    denoised, jvps = None, []
    for p in range(probes):
        v = ctx.ops.probe_tangent(ctx.seed, x.shape, sample_offset=ctx.sample_offset, step=step, index=p,
                                  basis=basis, block=block, dtype=x.dtype, device=x.device)
        mean, jv = ctx.jvp(x, sigma_t, v, step, fresh=p == 0)  # later probes reuse the first one's primal
        if p == 0:
            denoised = mean
        jvps.append(jv)
    jvps = torch.stack(jvps)
    if ctx.mean_only_fallback:  # (no device sync otherwise: a step without it can be graph-captured)
        bad = ctx.fallback_mask(step, x)
        if bool(bad.any()):  # a sample that failed on a later probe drops its earlier probes too: mean-only
            jvps[:, bad] = 0
    x_s = ctx.ops.structured_step(denoised, x, jvps, ctx.seed, sample_offset=ctx.sample_offset,
                                  step=step, sigma_t=sigma_t, sigma_down=sigma_down, sigma_up=sigma_up,
                                  basis=basis, block=block, channel_average=channel_average, c_max=c_max)
    return x_s, denoised


def overlap_step(ctx: StepContext, x: torch.Tensor, step: int, sigma_t: float, sigma_s: float, *, eta: float,
                 block: int, stride: int, channel_average: bool, c_max: float | None, probes: int = 1):
    """The ``convdct`` step on the overlapping frame ``A_p`` (Parseval, ``R = (block/stride)^2`` shifts; see
    ``ops/dct/reference.py``), composed from the backend's fused block DCT and random streams.

    ``J ~= A_p^T diag(c) A_p`` with ``c_k = a_k^T J a_k`` along each unit-norm atom ``a_k`` (``= R`` times the
    diagonal of ``A_p J A_p^T``), so that ``J = c0 I`` gives ``c = c0`` and ``c = 1`` injects identity
    covariance. Probe: ``z`` Rademacher in frame coefficients ``(B, C, R, H, W)``, ``v = A_p^T z``, estimate
    ``R z * (A_p J v)``; unlike a basis, the frame's overlaps leave this estimate noisy even where ``J`` is
    diagonal in every shift. Noise ``xi (B, C, R, H, W)``: ``x_s = m + A_p^T(sqrt(sigma_up^2 + s^2 c) xi)``.
    Returns ``(x_s, denoised)``."""
    sigma_down, sigma_up = ancestral_split(sigma_t, sigma_s, eta)
    b, ch, h, w = x.shape
    r2 = len(frame_shifts(block, stride))
    wd = work_dtype(x.dtype)

    def analysis(t):  # A_p t through the backend's fused block DCT
        return overlap_analysis(t, block, stride, lambda u, k: ctx.ops.analysis(u, "convdct", k))

    def synthesis(c):  # A_p^T c
        return overlap_synthesis(c, block, stride, lambda u, k: ctx.ops.synthesis(u, "convdct", k))

    denoised, zs, fjvs = None, [], []
    for p in range(probes):
        # The frame probe is the identity basis' probe of a (B, C*R, H, W) draw: same counters on every backend.
        z = ctx.ops.probe_tangent(ctx.seed, (b, ch * r2, h, w), sample_offset=ctx.sample_offset, step=step,
                                  index=p, basis="identity", dtype=wd, device=x.device).view(b, ch, r2, h, w)
        mean, jv = ctx.jvp(x, sigma_t, synthesis(z).to(x.dtype), step, fresh=p == 0)
        if p == 0:
            denoised = mean
        zs.append(z)
        fjvs.append(analysis(jv.to(wd)) * r2)
    fjv = torch.stack(fjvs)
    if ctx.mean_only_fallback:  # a sample that failed on a later probe drops its earlier probes too
        fjv[:, ctx.fallback_mask(step, x)] = 0
    c = hutchinson_coefficients(torch.stack(zs), fjv, channel_average=channel_average, c_max=c_max)
    xi = ctx.normal((b, ch * r2, h, w), step, dtype=wd, device=x.device).view(b, ch, r2, h, w)
    std = torch.sqrt(sigma_up ** 2 + (sigma_t - sigma_down) ** 2 * c)
    x_s = ddim_mean(denoised, x, sigma_t, sigma_down) + synthesis(std * xi)
    return x_s.to(x.dtype), denoised


def lanczos_step(ctx: StepContext, x: torch.Tensor, step: int, sigma_t: float, sigma_s: float, *, eta: float,
                 lanczos_steps: int, reorthogonalize: bool, c_max: float | None):
    """LGS: k Lanczos iterations of J started at the step's Gaussian noise xi, then
    ``x_s = m + ||xi|| Q_k sqrt(T_S) e_1`` with ``T_S`` built from the symmetric part of ``Q^T J Q``.
    Stops early when every sample's Krylov space is invariant. Returns ``(x_s, denoised)``."""
    sigma_down, sigma_up = ancestral_split(sigma_t, sigma_s, eta)
    wd = work_dtype(x.dtype)
    xi = ctx.normal(x.shape, step, dtype=wd, device=x.device)
    xi_norm = xi.flatten(1).norm(dim=1)
    # The Krylov basis stays in float32 (float64 for float64 runs) whatever the model's dtype.
    basis = torch.empty((lanczos_steps,) + tuple(x.shape), dtype=wd, device=x.device)
    basis[0] = xi / xi_norm.view(-1, *([1] * (x.dim() - 1)))
    denoised, aq = ctx.jvp(x, sigma_t, basis[0].to(x.dtype), step)
    hs, betas = [], []
    for j in range(lanczos_steps):
        h, beta = ctx.ops.lanczos_update(aq, basis, j, reorthogonalize=reorthogonalize)
        hs.append(h)
        if j == lanczos_steps - 1 or not bool((beta > 0).any()):
            break
        betas.append(beta)
        _, aq = ctx.jvp(x, sigma_t, basis[j + 1].to(x.dtype), step, fresh=False)
    g = ctx.ops.krylov_sqrt_e1(hs, betas, shift=sigma_up ** 2, scale=sigma_t - sigma_down, c_max=c_max)
    x_s = ctx.ops.lanczos_synthesis(denoised, x, basis, g, xi_norm, sigma_t=sigma_t, sigma_down=sigma_down)
    return x_s, denoised


def plain_step(ctx: StepContext, x: torch.Tensor, denoised: torch.Tensor, step: int, sigma_t: float,
               sigma_s: float, eta: float) -> torch.Tensor:
    """The mean-only ancestral step ``m + sigma_up xi`` (DDIM for eta = 0) of the covariance samplers above
    their ``cov_sigma_max``; ``xi`` from the step's noise stream."""
    sigma_down, sigma_up = ancestral_split(sigma_t, sigma_s, eta)
    x_s = ddim_mean(denoised, x, sigma_t, sigma_down)
    if sigma_up > 0:
        x_s = x_s + sigma_up * ctx.normal(x.shape, step, dtype=x_s.dtype, device=x.device)
    return x_s.to(x.dtype)


def noisy_ddim_step(ctx: StepContext, x: torch.Tensor, step: int, sigma_t: float, sigma_s: float, *, eta: float,
                    sigma_data: float):
    """Noisy DDIM: DDIM plus isotropic noise for the x0 uncertainty, with the posterior variance of
    isotropic data of std ``sigma_data``, i.e. ``J ~= sigma_data^2 / (sigma_t^2 + sigma_data^2) I``.
    One model evaluation. Returns ``(x_s, denoised)``."""
    sigma_down, sigma_up = ancestral_split(sigma_t, sigma_s, eta)
    denoised = ctx.denoise(x, sigma_t, step)
    c = sigma_data ** 2 / (sigma_t ** 2 + sigma_data ** 2)
    std = math.sqrt(sigma_up ** 2 + (sigma_t - sigma_down) ** 2 * c)
    xi = ctx.normal(x.shape, step, dtype=work_dtype(x.dtype), device=x.device)
    x_s = ddim_mean(denoised, x, sigma_t, sigma_down) + std * xi
    return x_s.to(x.dtype), denoised
