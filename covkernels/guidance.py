"""Classifier-free guidance for the covariance-aware samplers.

The guided denoiser is ``D_g = D_u + scale (D_c - D_u)``; the step's mean uses ``D_g`` and its covariance
comes from the JVP of the conditional branch only (docs/design.md, "Guidance"; our reading), so a guided
``cov_ddim`` step costs three evaluations: unconditional forward, conditional forward, conditional JVP.

How the two branches reach the model: the conditional one gets the sampler's ``extra_args``; the
unconditional one gets ``Guidance.uncond_args`` (e.g. null class labels or empty-prompt embeddings),
through the same model or through ``Guidance.uncond_model`` when it is a separate callable. A guidance
whose unconditional branch would be the conditional one (same model, same arguments: e.g. a bare scale
with no ``extra_args``) is refused when it is bound to a model: it would silently sample unguided.

Guidance interval: ``Guidance(interval=(sigma_lo, sigma_hi))`` guides only where ``sigma_lo <= sigma <=
sigma_hi``; elsewhere the unconditional branch is not evaluated and the conditional prediction is used.

Scale range: any finite number. 1 samples the conditional model, 0 the unconditional one, values in
(0, 1) interpolate, > 1 extrapolates away from the unconditional prediction (the usual classifier-free
guidance, typically 1.5-10), < 0 steers away from the condition (negative guidance).

Execution, fastest first:

* finite-difference JVPs with one model whose cond/uncond ``extra_args`` can be batched together: ONE
  model call on ``[x, x + h v, x]`` (cond, cond, uncond) - tripled batch, every fused kernel kept;
* otherwise on CUDA the unconditional forward runs on a side stream, concurrently with the conditional
  JVP on the current stream (events both ways, and ``record_stream`` on every tensor handed across so the
  caching allocator never recycles memory still in use on the other stream): the compiled executor of
  ``covkernels._C`` when built with CUDA, else the same protocol in Python (:mod:`covkernels.executor`);
* otherwise (CPU) one after the other.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from . import jvp as jvp_engine
from .executor import run_concurrently


@dataclasses.dataclass(frozen=True)
class Guidance:
    """``scale``: guidance weight, any finite number (1 = conditional only, 0 = unconditional only, < 0
    steers away from the condition). ``uncond_args``: ``extra_args`` of the
    unconditional branch (default: none). ``uncond_model``: a separate unconditional denoiser (default: the
    sampler's model). ``concurrent``: on CUDA, overlap the unconditional forward with the JVP.
    ``interval``: ``(sigma_lo, sigma_hi)``, guide only where ``sigma_lo <= sigma <= sigma_hi`` and take the
    plain conditional prediction elsewhere, with no unconditional evaluation there (the guidance interval of
    Kynkaanniemi et al. 2024, and JiT's recipe; for a flow model convert its time interval with
    ``covkernels.adapters.flow.flow_times_to_sigmas``). ``sigma_hi`` may be ``inf``. Default: every sigma.
    ``nfe_per_sample(..., guided=True)`` still counts the guided cost on every step: an upper bound with an
    interval."""

    scale: float
    uncond_args: dict | None = None
    uncond_model: Callable | None = None
    concurrent: bool = True
    interval: tuple | None = None

    def __post_init__(self):
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise ValueError(f"guidance scale must be a finite number, got {self.scale!r}")
        if self.uncond_args is not None and not isinstance(self.uncond_args, dict):
            raise TypeError(f"guidance uncond_args must be a dict, got {type(self.uncond_args).__name__}")
        if self.uncond_model is not None and not callable(self.uncond_model):
            raise TypeError("guidance uncond_model must be callable")
        if self.interval is not None:
            object.__setattr__(self, "interval", _check_interval(self.interval))

    def active(self, sigma) -> torch.Tensor:
        """``(B,)`` bool: where guidance applies (inside ``interval``, or everywhere without one)."""
        sig = torch.as_tensor(sigma).reshape(-1)
        if self.interval is None:
            return torch.ones(sig.shape, dtype=torch.bool, device=sig.device)
        lo, hi = self.interval
        return (sig >= lo) & (sig <= hi)


def _check_interval(interval) -> tuple[float, float]:
    ok = isinstance(interval, (tuple, list)) and len(interval) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v) for v in interval)
    if not ok or not (0 <= interval[0] < interval[1]) or math.isinf(interval[0]):
        raise ValueError(f"guidance interval must be (sigma_lo, sigma_hi) with 0 <= sigma_lo < sigma_hi "
                         f"(sigma_hi may be inf), got {interval!r}")
    return float(interval[0]), float(interval[1])


def as_guidance(value) -> Guidance | None:
    """Accept ``None``, a :class:`Guidance`, a dict of its fields, or a bare number (the scale)."""
    if value is None or isinstance(value, Guidance):
        return value
    if isinstance(value, dict):
        unknown = set(value) - {f.name for f in dataclasses.fields(Guidance)}
        if unknown:
            raise TypeError(f"guidance got unknown keys {sorted(unknown)}")
        return Guidance(**value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Guidance(float(value))
    raise TypeError(f"guidance must be None, a number, a dict or covkernels.Guidance, got {type(value).__name__}")


def _per_sample(val, batch: int) -> bool:
    return isinstance(val, torch.Tensor) and val.dim() > 0 and val.shape[0] == batch


def pairable(cond: dict, uncond: dict, batch: int) -> bool:
    """Whether cond/uncond ``extra_args`` can share one batched call: same keys; per-sample tensors of the
    same trailing shape and dtype; every other value identical."""
    if set(cond) != set(uncond):
        return False
    for key, a in cond.items():
        b = uncond[key]
        if _per_sample(a, batch) and _per_sample(b, batch):
            if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype or a.device != b.device:
                return False
        elif _per_sample(a, batch) or _per_sample(b, batch):
            return False
        elif a is not b and not (not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor) and a == b):
            return False
    return True


def _same_args(a: dict, b: dict) -> bool:
    if a is b:
        return True
    if set(a) != set(b):
        return False
    for key, x in a.items():
        y = b[key]
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            same = (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape
                    and x.dtype == y.dtype and x.device == y.device and bool(torch.equal(x, y)))
        else:
            try:
                same = bool(x == y)
            except Exception:  # noqa: BLE001 - values without a plain truth value count as different
                same = x is y
        if not same:
            return False
    return True


def paired_extra(cond: dict, uncond: dict, batch: int, cond_copies: int) -> dict:
    """``extra_args`` for a batch of ``cond_copies`` conditional blocks followed by one unconditional block."""
    return {k: torch.cat([a] * cond_copies + [uncond[k]]) if _per_sample(a, batch) else a for k, a in cond.items()}


class GuidedModel:
    """The cond/uncond pair of one sampling run: guided forwards and conditional-branch JVPs."""

    def __init__(self, model, cond_args: dict, guidance: Guidance):
        self.model, self.cond, self.g = model, cond_args, guidance
        self.uncond_args = guidance.uncond_args or {}
        self.uncond_model = guidance.uncond_model or model
        if guidance.uncond_model is None and _same_args(cond_args, self.uncond_args):
            given = "no uncond_args" if guidance.uncond_args is None else "uncond_args equal to the extra_args"
            raise ValueError(
                f"guidance (scale {guidance.scale:g}) has no unconditional branch: with {given} and no "
                f"uncond_model, the unconditional call would be the conditional one (same model, same "
                f"arguments), so every scale samples the conditional model. Give Guidance.uncond_args (the "
                f"model's null condition, e.g. null class labels or empty-prompt embeddings) or "
                f"Guidance.uncond_model (a separate unconditional denoiser), or drop guidance")

    def _batchable(self, x) -> bool:
        return self.g.uncond_model is None and pairable(self.cond, self.uncond_args, x.shape[0])

    def combine(self, d_cond: torch.Tensor, d_uncond: torch.Tensor) -> torch.Tensor:
        return d_uncond + self.g.scale * (d_cond - d_uncond)

    def uncond(self, x, sigma):
        return self.uncond_model(x, sigma, **self.uncond_args)

    def _outside(self, sigma, d_cond, d_uncond):
        """Outside the guidance interval the unconditional branch is replaced by the conditional one, so
        :meth:`combine` returns the conditional prediction there whatever the scale."""
        if self.g.interval is None:
            return d_uncond
        inside = self.g.active(sigma).to(d_cond.device).view(-1, *([1] * (d_cond.dim() - 1)))
        return torch.where(inside, d_uncond, d_cond)

    def _skips_uncond(self, sigma) -> bool:
        return self.g.interval is not None and not bool(self.g.active(sigma).any())

    @torch.no_grad()
    def forward(self, x, sigma):
        """``(D_cond, D_uncond)``: one doubled-batch call when the branches pair up, else two calls; outside
        the guidance interval one conditional call (returned as both)."""
        if self._skips_uncond(sigma):
            d_cond = self.model(x, sigma, **self.cond)
            return d_cond, d_cond
        d_cond, d_uncond = self._both(x, sigma)
        return d_cond, self._outside(sigma, d_cond, d_uncond)

    def _both(self, x, sigma):
        if self._batchable(x):
            b = x.shape[0]
            pair = paired_extra(self.cond, self.uncond_args, b, 1)
            out = self.model(torch.cat([x, x]), torch.cat([sigma, sigma]), **pair)
            return out[:b], out[b:]
        return self.model(x, sigma, **self.cond), self.uncond(x, sigma)

    @torch.no_grad()  # the exact strategies re-enable what they need inside
    def jvp(self, x, sigma, v, strategy):
        """Fresh guided JVP: ``(D_cond, D_uncond, J_cond v)``."""
        v = v.to(dtype=x.dtype)
        if self._skips_uncond(sigma):
            d_cond, jv = jvp_engine.jvp(self.model, x, sigma, v, self.cond, strategy=strategy)
            return d_cond, d_cond, jv
        d_cond, d_uncond, jv = self._fresh_jvp(x, sigma, v, strategy)
        return d_cond, self._outside(sigma, d_cond, d_uncond), jv

    def _fresh_jvp(self, x, sigma, v, strategy):
        name, result = jvp_engine.resolve(self.model, x, sigma, v, self.cond, None, strategy)
        if result is not None:  # `auto` just probed the conditional branch (or found NaN): add the uncond
            return result[0], self.uncond(x, sigma), result[1]
        if name == "finite_difference" and self._batchable(x):
            b = x.shape[0]
            h = jvp_engine.fd_step(x, v)
            batch = torch.cat([x, x + jvp_engine.bcast(h, x) * v, x])
            out = self.model(batch, torch.cat([sigma] * 3), **paired_extra(self.cond, self.uncond_args, b, 2))
            d_cond, d_plus, d_uncond = out.split(b)
            return d_cond, d_uncond, jvp_engine.fd_quotient(d_plus, d_cond, h)
        (d_cond, jv), d_uncond = run_concurrently(
            x.device, lambda: jvp_engine.IMPLS[name](self.model, x, sigma, v, self.cond, None),
            lambda: self.uncond(x, sigma), (x, sigma, self.uncond_args), self.g.concurrent)
        return d_cond, d_uncond, jv


def cfg_denoiser(model, guidance) -> Callable:
    """A plain guided denoiser ``model_g(x, sigma, **extra_args)`` for samplers without a ``guidance``
    option (ddim, heun, dpmpp_2m, ...): the conditional branch gets ``extra_args``."""
    g = as_guidance(guidance)
    if g is None:
        raise ValueError("cfg_denoiser needs a guidance scale or Guidance")

    def guided(x, sigma, **extra_args):
        pair = GuidedModel(model, extra_args, g)
        return pair.combine(*pair.forward(x, sigma))

    return guided
