"""Jacobian-vector products of a denoiser: ``(D(x), J v)`` with ``J = dD/dx``.

Strategies (``jvp=`` option of every covariance sampler):

* ``forward_ad`` - ``torch.func.jvp`` with the math attention backend forced (fused attention kernels
  have no forward-mode derivative). Exact; one forward pass with dual numbers.
* ``double_vjp`` - reverse mode twice: ``J v = d/du <J^T u, v>``. Exact; works where forward AD is not
  implemented; about 2-3x a forward pass.
* ``finite_difference`` - one-sided ``(D(x + h v) - D(x)) / h`` with ``h = sqrt(eps) (1 + |x|) / |v|``
  per sample; when the primal is needed too, ``[x, x + h v]`` go through the model as ONE call of
  doubled batch, so every fused kernel of the model is kept. Approximate (relative error ~ sqrt(eps)).
* ``central_difference`` - ``(D(x + h v) - D(x - h v)) / 2h`` with ``h ~ eps^(1/3)``; one more batch row.
* ``auto`` - the first of forward_ad, double_vjp, finite_difference that runs on this model, chosen on
  the first call and cached per model object; :func:`auto_choices` reports the choice and the reasons
  the others failed.

Tensor arguments: ``x``, ``v``: ``(B, ...)``; ``sigma``: ``(B,)``. Tensors in ``extra_args`` whose first
dim is ``B`` are treated as per-sample (repeated when the batch is doubled); everything else is passed
through unchanged.
"""
from __future__ import annotations

import contextlib
import logging
import weakref

import torch

log = logging.getLogger("covkernels.jvp")

STRATEGIES = ("auto", "forward_ad", "double_vjp", "finite_difference", "central_difference")
_AUTO_ORDER = ("forward_ad", "double_vjp", "finite_difference")


class JVPError(RuntimeError):
    """No JVP strategy could differentiate the model; the message lists every strategy's reason."""


def _math_attention():
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch without the attention context manager: nothing to force
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.detach().flatten(1).to(torch.float32 if t.dtype != torch.float64 else t.dtype).norm(dim=1)


def _repeat_extra(extra: dict, batch: int, times: int) -> dict:
    out = {}
    for key, val in extra.items():
        if isinstance(val, torch.Tensor) and val.dim() > 0 and val.shape[0] == batch:
            out[key] = torch.cat([val] * times)
        else:
            out[key] = val
    return out


def _forward_ad(model, x, sigma, v, extra, primal):
    with _math_attention():
        d, jv = torch.func.jvp(lambda inp: model(inp, sigma, **extra), (x,), (v,))
    return d, jv


def _double_vjp(model, x, sigma, v, extra, primal):
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        d = model(xg, sigma, **extra)
        u = torch.zeros_like(d, requires_grad=True)
        (vjp_u,) = torch.autograd.grad(d, xg, u, create_graph=True)
        (jv,) = torch.autograd.grad(vjp_u, u, v, allow_unused=True)
    if jv is None:  # D does not depend on x
        jv = torch.zeros_like(x)
    return d.detach(), jv.detach()


def _fd_step(x: torch.Tensor, v: torch.Tensor, power: float) -> torch.Tensor:
    """Per-sample step ``h (B,)``: ``eps^power (1 + |x|) / |v|`` (0 where v = 0, so no inf/NaN)."""
    eps = torch.finfo(x.dtype).eps
    vn = _per_sample_norm(v)
    h = eps ** power * (1.0 + _per_sample_norm(x)) / torch.where(vn > 0, vn, torch.ones_like(vn))
    return torch.where(vn > 0, h, torch.zeros_like(h))


def _bcast(s, like):
    return s.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def _finite_difference(model, x, sigma, v, extra, primal):
    b = x.shape[0]
    h = _fd_step(x, v, 0.5)
    xh = x + _bcast(h, x) * v
    if primal is None:
        out = model(torch.cat([x, xh]), torch.cat([sigma, sigma]), **_repeat_extra(extra, b, 2))
        primal, dh = out[:b], out[b:]
    else:
        dh = model(xh, sigma, **extra)
    safe = torch.where(h > 0, h, torch.ones_like(h))
    jv = (dh - primal) / _bcast(safe, x) * _bcast((h > 0).to(x.dtype), x)
    return primal, jv


def _central_difference(model, x, sigma, v, extra, primal):
    b = x.shape[0]
    h = _fd_step(x, v, 1.0 / 3.0)
    hv = _bcast(h, x) * v
    need = [x, x + hv, x - hv] if primal is None else [x + hv, x - hv]
    n = len(need)
    out = model(torch.cat(need), torch.cat([sigma] * n), **_repeat_extra(extra, b, n))
    parts = out.split(b)
    if primal is None:
        primal = parts[0]
    safe = torch.where(h > 0, h, torch.ones_like(h))
    jv = (parts[-2] - parts[-1]) / _bcast(2.0 * safe, x) * _bcast((h > 0).to(x.dtype), x)
    return primal, jv


_IMPLS = {
    "forward_ad": _forward_ad,
    "double_vjp": _double_vjp,
    "finite_difference": _finite_difference,
    "central_difference": _central_difference,
}

# model -> (chosen strategy, {strategy: reason it was skipped})
_auto_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_auto_cache_by_id: dict = {}


def _cache_get(model):
    try:
        return _auto_cache.get(model)
    except TypeError:  # not weak-referenceable (e.g. a bound method): fall back to id
        return _auto_cache_by_id.get(id(model))


def _cache_put(model, value):
    try:
        _auto_cache[model] = value
    except TypeError:
        _auto_cache_by_id[id(model)] = value


def auto_choices() -> list[tuple[str, str, dict]]:
    """``[(model description, chosen strategy, {skipped strategy: reason})]`` for ``covkernels info``."""
    rows = [(type(m).__name__, c, r) for m, (c, r) in list(_auto_cache.items())]
    rows += [(f"object id {k}", c, r) for k, (c, r) in _auto_cache_by_id.items()]
    return rows


def jvp(model, x: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor, extra_args: dict | None = None, *,
        strategy: str = "auto", primal: torch.Tensor | None = None):
    """``(D(x), J v)`` of ``D = model(x, sigma, **extra_args)``.

    ``primal``: ``D(x)`` if already known (finite differences then skip recomputing it; exact strategies
    return their own). Raises :class:`JVPError` when ``strategy="auto"`` and nothing works.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"jvp must be one of {STRATEGIES}, got {strategy!r}")
    extra = {} if extra_args is None else extra_args
    v = v.to(dtype=x.dtype)
    if strategy != "auto":
        return _IMPLS[strategy](model, x, sigma, v, extra, primal)
    cached = _cache_get(model)
    if cached is not None:
        return _IMPLS[cached[0]](model, x, sigma, v, extra, primal)
    reasons = {}
    for name in _AUTO_ORDER:
        try:
            result = _IMPLS[name](model, x, sigma, v, extra, primal)
        except Exception as exc:  # noqa: BLE001 - every failure is reported below
            reasons[name] = f"{type(exc).__name__}: {exc}".strip()[:500]
            continue
        _cache_put(model, (name, reasons))
        log.debug("jvp=auto chose %s for %s (skipped: %s)", name, type(model).__name__, reasons or "none")
        return result
    lines = "\n".join(f"  {k}: {r}" for k, r in reasons.items())
    raise JVPError(f"no JVP strategy works on this model:\n{lines}")
