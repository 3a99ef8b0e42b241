"""The per-call state of a sampling run: :class:`StepContext`, and the errors of the model checks it runs.

A :class:`StepContext` holds what one sampling call shares across steps: the validated model caller
(shape/dtype/finiteness checks, NFE count), the run seed drawn once from the caller's generator, the
sample offset that makes noise independent of batch layout, the JVP strategy and the resolved backend of
fused ops. The step functions of this package take it as their first argument.
"""
from __future__ import annotations

import warnings

import torch

from .. import jvp as jvp_engine
from ..guidance import GuidedModel, as_guidance
from ..ops import library
from ..ops.api import STREAM_NOISE
from .validation import check_sample_offset


class NonFiniteError(ValueError):
    """The model returned NaN or Inf; the message names the step and sigma."""


class NonFiniteFallbackWarning(UserWarning):
    """``check_finite="mean_only"``: a sample's JVP was NaN/Inf and it took the mean-only step."""


def draw_seed(generator: torch.Generator | None) -> int:
    """The 63-bit run seed: the only draw a sampler makes from the caller's generator (or, with None,
    from torch's default generator, so ``torch.manual_seed`` works as in k-diffusion)."""
    if generator is None:
        return int(torch.randint(0, 2 ** 63 - 1, ()))
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return int(torch.randint(0, 2 ** 63 - 1, (), generator=generator, device=generator.device))


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
