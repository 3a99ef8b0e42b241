"""Jacobian-vector products of a denoiser: ``(D(x), J v)`` with ``J = dD/dx``, on any model a user brings.

Strategies (``jvp=`` option of every covariance sampler):

* ``forward_ad`` - ``torch.func.jvp``. Exact; one forward pass with dual numbers. Fused attention kernels
  have no forward-mode rule, so the math attention backend is forced inside, and ``group_norm`` runs
  decomposed (its native forward-mode rule fails on the non-contiguous inputs attention blocks produce).
* ``double_vjp`` - reverse mode twice: ``J v = d/du <J^T u, v>`` at ``u = 0``. Exact; needs a model with
  double backward (math attention forced for the same reason).
* ``finite_difference`` - one-sided ``(D(x + h v) - D(x)) / h`` with ``h = sqrt(eps) (1 + |x|) / |v|``
  per sample (relative error ~ sqrt(eps): ~3e-4 in float32). When the primal is needed too,
  ``[x, x + h v]`` go through the model as ONE call of doubled batch: a JVP costs one extra batch row of
  model work and keeps every fused kernel of the model. Subsequent JVPs at the same x reuse the primal.
* ``central_difference`` - ``(D(x + h v) - D(x - h v)) / 2h``, ``h ~ eps^(1/3)``; one more batch row.
* ``auto`` - on the first call for a network and event signature (per-sample shape, dtype, device),
  runs forward_ad, double_vjp and finite_difference on the first :data:`PROBE_BATCH` samples only, keeps
  those that run and give a finite result, checks that each agrees with another within
  :data:`AGREEMENT_RTOL`, and picks the fastest agreeing one (timed on a second run). The choice is cached
  per *network*: wrappers (a diffusers or flow adapter, k-diffusion's ``inner_model`` wrappers, a counting
  wrapper) are looked through, so a new wrapper object around the same network (the one-call diffusers
  helper builds one per call) reuses it. The key is the network, the chain of wrapper types and the event
  signature, not a wrapper's settings: two wrappers of one class that run the same network differently (a
  cast to another dtype inside, a custom call hook) share a choice; pin ``jvp=`` for such a pair. The probe
  runs on the whole batch when ``extra_args`` hold containers (nested per-sample arguments). :func:`auto_choices` (and ``covkernels.info()``) report every
  decision of the process, also after its model is gone, with the probe's cost and every skipped
  strategy's reason; an INFO line goes to the ``covkernels.jvp`` logger. The probe's model calls are not
  the run's: :func:`probing` is True while they run, and evaluation-counting wrappers skip them. If
  nothing works, :class:`JVPError` lists every reason.

Tensor arguments: ``x``, ``v``: ``(B, ...)``; ``sigma``: ``(B,)``. Tensors in ``extra_args`` whose first
dim is ``B`` are per-sample (repeated when the batch is doubled); everything else is passed unchanged.
All strategies run without keeping an autograd graph beyond their own call.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import time
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

log = logging.getLogger("covkernels.jvp")

STRATEGIES = ("auto", "forward_ad", "double_vjp", "finite_difference", "central_difference")
_AUTO_ORDER = ("forward_ad", "double_vjp", "finite_difference")
EXACT = ("forward_ad", "double_vjp")

# Relative agreement ||Jv_a - Jv_b|| / ||Jv_b|| that `auto` demands between two strategies, by the
# storage dtype. Exact strategies differ only by rounding (and math vs fused attention in the primal);
# a one-sided difference carries its O(sqrt(eps)) truncation + rounding error on top.
AGREEMENT_RTOL = {
    "exact": {torch.float64: 1e-8, torch.float32: 1e-3, torch.float16: 3e-2, torch.bfloat16: 1e-1},
    "difference": {torch.float64: 1e-5, torch.float32: 2e-2, torch.float16: 3e-1, torch.bfloat16: 5e-1},
}


class JVPError(RuntimeError):
    """No JVP strategy could differentiate the model; the message lists every strategy's reason."""


class _ForwardADFriendly(TorchFunctionMode):
    """Routes ``group_norm`` through a decomposition with working forward-mode derivatives."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.group_norm:
            return _group_norm(*args, **kwargs)
        return func(*args, **kwargs)


def _group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    n, c = input.shape[:2]
    grouped = input.reshape(n, num_groups, -1)
    mean = grouped.mean(-1, keepdim=True)
    var = grouped.var(-1, unbiased=False, keepdim=True)
    out = ((grouped - mean) * torch.rsqrt(var + eps)).reshape(input.shape)
    shape = (1, c) + (1,) * (input.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


def _math_attention():
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch without the attention context manager: nothing to force
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.detach().flatten(1).to(torch.float64 if t.dtype == torch.float64 else torch.float32).norm(dim=1)


def _per_sample(val, batch: int) -> bool:
    """An ``extra_args`` value with one row per sample (sliced and repeated with the batch)."""
    return isinstance(val, torch.Tensor) and val.dim() > 0 and val.shape[0] == batch


def repeat_extra(extra: dict, batch: int, times: int) -> dict:
    """``extra_args`` for a batch repeated ``times`` times (per-sample tensors concatenated)."""
    out = {}
    for key, val in extra.items():
        if _per_sample(val, batch):
            out[key] = torch.cat([val] * times)
        else:
            out[key] = val
    return out


def _forward_ad(model, x, sigma, v, extra, primal):
    with torch.no_grad(), _math_attention(), _ForwardADFriendly():  # forward AD needs no reverse graph
        # torch scripts its forward-AD decompositions on the first dual tensor of a process, warning 18 times
        # that torch.jit.script is deprecated: torch's own business, not the user's.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated",
                                    category=DeprecationWarning)
            d, jv = torch.func.jvp(lambda inp: model(inp, sigma, **extra), (x,), (v,))
    return d, jv


def _double_vjp(model, x, sigma, v, extra, primal):
    with torch.enable_grad(), _math_attention():
        xg = x.detach().requires_grad_(True)
        d = model(xg, sigma, **extra)
        if not d.requires_grad:  # D does not depend on x at all
            return d.detach(), torch.zeros_like(x)
        u = torch.zeros_like(d, requires_grad=True)
        (vjp_u,) = torch.autograd.grad(d, xg, u, create_graph=True, allow_unused=True)
        if vjp_u is None:
            return d.detach(), torch.zeros_like(x)
        if not vjp_u.requires_grad:
            raise RuntimeError("the model's backward is not differentiable (no double backward)")
        (jv,) = torch.autograd.grad(vjp_u, u, v)
    return d.detach(), jv.detach()


def fd_step(x: torch.Tensor, v: torch.Tensor, power: float = 0.5) -> torch.Tensor:
    """Per-sample step ``h (B,)``: ``eps^power (1 + |x|) / |v|`` (0 where v = 0, so no inf/NaN)."""
    eps = torch.finfo(x.dtype).eps
    vn = _per_sample_norm(v)
    h = eps ** power * (1.0 + _per_sample_norm(x)) / torch.where(vn > 0, vn, torch.ones_like(vn))
    return torch.where(vn > 0, h, torch.zeros_like(h))


def bcast(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` in ``like``'s dtype."""
    return s.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def fd_quotient(d_plus: torch.Tensor, d_minus: torch.Tensor, h: torch.Tensor, denom: float = 1.0) -> torch.Tensor:
    """``(d_plus - d_minus) / (denom h)`` per sample, exactly 0 where ``h = 0`` (zero tangent)."""
    safe = torch.where(h > 0, h, torch.ones_like(h))
    return (d_plus - d_minus) / bcast(denom * safe, d_plus) * bcast((h > 0).to(d_plus.dtype), d_plus)


@torch.no_grad()
def _finite_difference(model, x, sigma, v, extra, primal):
    b = x.shape[0]
    h = fd_step(x, v)
    xh = x + bcast(h, x) * v
    if primal is None:
        out = model(torch.cat([x, xh]), torch.cat([sigma, sigma]), **repeat_extra(extra, b, 2))
        primal, dh = out[:b], out[b:]
    else:
        dh = model(xh, sigma, **extra)
    return primal, fd_quotient(dh, primal, h)


@torch.no_grad()
def _central_difference(model, x, sigma, v, extra, primal):
    b = x.shape[0]
    h = fd_step(x, v, 1.0 / 3.0)
    hv = bcast(h, x) * v
    need = [x, x + hv, x - hv] if primal is None else [x + hv, x - hv]
    out = model(torch.cat(need), torch.cat([sigma] * len(need)), **repeat_extra(extra, b, len(need)))
    parts = out.split(b)
    return (parts[0] if primal is None else primal), fd_quotient(parts[-2], parts[-1], h, 2.0)


IMPLS = {
    "forward_ad": _forward_ad,
    "double_vjp": _double_vjp,
    "finite_difference": _finite_difference,
    "central_difference": _central_difference,
}


@dataclasses.dataclass
class AutoChoice:
    """What ``auto`` decided for one network and event signature."""

    strategy: str
    signature: tuple  # (per-sample shape, dtype, device type)
    skipped: dict  # strategy -> reason it was not chosen (failed, non-finite, disagreed)
    seconds: dict  # strategy -> time of one probe JVP with primal (second run)
    agreement: str  # "forward_ad vs double_vjp: rel. diff 3.1e-07", or why it is unverified
    model: str = ""  # the wrapper chain, e.g. "DiffusersDenoiser(UNet2DModel)"
    probe_batch: int = 0  # samples the probe ran on
    probe_seconds: float = 0.0  # wall time of the whole probe (every strategy, both runs)


# Samples the `auto` probe runs on: two, not one, so that a model whose answer depends on the batch (the
# doubled batch of a finite difference) still disagrees with the exact strategies and is caught.
PROBE_BATCH = 2
# Attributes through which a wrapper exposes the network it wraps (k-diffusion's wrappers, our adapters and
# counting wrapper): the choice is the network's, whatever wrapper object is around it.
WRAPPED_ATTRIBUTES = ("inner_model", "unet", "transformer", "net", "model")

_auto_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_auto_cache_by_id: dict = {}
_history: list = []  # every decision of the process, in order (no model references)
_probing = contextvars.ContextVar("covkernels_jvp_probing", default=False)


def probing() -> bool:
    """True while ``jvp="auto"`` probes strategies: model calls made now are not part of a run (a wrapper
    that counts a run's evaluations skips them)."""
    return _probing.get()


def _network(model) -> tuple[object, str]:
    """``(network, description)``: ``model`` with its wrappers looked through, and the wrapper chain."""
    names, inner = [], model
    for _ in range(8):
        names.append(type(inner).__name__)
        nxt = next((getattr(inner, a) for a in WRAPPED_ATTRIBUTES
                    if isinstance(getattr(inner, a, None), torch.nn.Module)), None)
        if nxt is None or nxt is inner:
            break
        inner = nxt
    return inner, "(".join(names) + ")" * (len(names) - 1)


def _cache_for(network) -> dict:
    try:
        return _auto_cache.setdefault(network, {})
    except TypeError:  # not weak-referenceable (e.g. a bound method): key by id for this process
        return _auto_cache_by_id.setdefault(id(network), {})


def _signature(x: torch.Tensor) -> tuple:
    return (tuple(x.shape[1:]), x.dtype, x.device.type)


def auto_choices() -> list[tuple[str, AutoChoice]]:
    """``[(model description, AutoChoice)]`` of every ``auto`` decision made in this process, oldest first."""
    return [(c.model, c) for c in _history]


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(torch.finfo(torch.float64).tiny))


def _run_candidates(model, x, sigma, v, extra, primal):
    """``(results, seconds, skipped)`` of every strategy of the probe, or ``(None, result)`` when the model's
    own output is not finite."""
    results, seconds, skipped = {}, {}, {}
    for name in _AUTO_ORDER:
        try:
            result = IMPLS[name](model, x, sigma, v, extra, primal)
            if not bool(torch.isfinite(result[0]).all()):
                return None, result  # the model itself returns NaN/Inf: let the caller report it
            if not bool(torch.isfinite(result[1]).all()):
                raise FloatingPointError("the JVP is not finite")
            _sync(x)
            start = time.perf_counter()  # the second run is timed: the first pays one-time set-up costs
            IMPLS[name](model, x, sigma, v, extra, primal)
            _sync(x)
            seconds[name] = time.perf_counter() - start
            results[name] = result
        except Exception as exc:  # noqa: BLE001 - every failure is reported
            skipped[name] = f"{type(exc).__name__}: {exc}".strip()[:400]
    return (results, seconds, skipped), None


def _agreeing(results: dict, dtype) -> tuple[dict, list]:
    """``({strategy: agreement note}, [disagreement notes])``."""
    agreeing, notes = {}, []
    for a in results:
        for b in results:
            if a == b:
                continue
            kind = "exact" if a in EXACT and b in EXACT else "difference"
            diff, tol = _rel_diff(results[a][1], results[b][1]), AGREEMENT_RTOL[kind][dtype]
            if diff <= tol:
                agreeing[a] = f"{a} vs {b}: rel. diff {diff:.2g} (tolerance {tol:g})"
            elif a < b:
                notes.append(f"{a} vs {b}: rel. diff {diff:.2g} > tolerance {tol:g}")
    if len(results) == 1:
        (name,) = results
        agreeing[name] = "unverified: no second strategy runs on this model"
    return agreeing, notes


def _select(model, network, description, x, sigma, v, extra, primal):
    """Probe the candidates on the first :data:`PROBE_BATCH` samples, keep the agreeing ones, cache and
    return ``(AutoChoice or None, the probe's result when it covered the whole batch, else None)``."""
    # Per-sample arguments nested in containers (e.g. SDXL's added_cond_kwargs) cannot be cut reliably:
    # then the probe runs on the whole batch, as it did before the small probe.
    nested = any(isinstance(val, (dict, list, tuple)) for val in extra.values())
    b = x.shape[0] if nested else min(x.shape[0], PROBE_BATCH)
    whole = b == x.shape[0]
    if not whole:
        extra = {k: val[:b] if _per_sample(val, x.shape[0]) else val for k, val in extra.items()}
        x, sigma, v = x[:b], sigma[:b], v[:b]
        primal = None if primal is None else primal[:b]
    token = _probing.set(True)
    start = time.perf_counter()
    try:
        probe, nonfinite = _run_candidates(model, x, sigma, v, extra, primal)
    finally:
        _probing.reset(token)
    if probe is None:
        return None, nonfinite if whole else None
    results, seconds, skipped = probe
    if not results:
        raise JVPError("no JVP strategy works on this model:\n" + "\n".join(f"  {k}: {r}" for k, r in skipped.items()))
    agreeing, notes = _agreeing(results, x.dtype)
    if not agreeing:
        raise JVPError("JVP strategies disagree on this model: " + "; ".join(notes))
    for name in results:
        if name not in agreeing:
            skipped[name] = "disagrees with the others: " + "; ".join(notes)
    chosen = min(agreeing, key=lambda n: seconds[n])
    for name in agreeing:
        if name != chosen:
            skipped[name] = f"slower ({seconds[name]:.3g} s vs {seconds[chosen]:.3g} s)"
    choice = AutoChoice(chosen, _signature(x), skipped, seconds, agreeing[chosen], description, b,
                        time.perf_counter() - start)
    _cache_for(network)[(description, choice.signature)] = choice
    _history.append(choice)
    log.info("jvp=auto chose %s for %s %s after a %.3g s probe on %d sample(s) (%s; skipped: %s)", chosen,
             description, choice.signature, choice.probe_seconds, b, choice.agreement, skipped or "none")
    return choice, results[chosen] if whole else None


def resolve(model, x, sigma, v, extra, primal, strategy):
    """``(strategy name, result or None)``: the concrete strategy ``strategy`` means for this call. For a
    fresh ``auto`` decision whose probe covered the whole batch the probe's result is returned too (no work
    is wasted); a model whose primal is non-finite gives ``(None, result)`` so the caller can report the NaN
    with its context (``(None, None)`` when the probe saw it on part of the batch: the caller's own call
    then reports it)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"jvp must be one of {STRATEGIES}, got {strategy!r}")
    if strategy != "auto":
        return strategy, None
    network, description = _network(model)
    cached = _cache_for(network).get((description, _signature(x)))
    if cached is not None:
        return cached.strategy, None
    choice, result = _select(model, network, description, x, sigma, v, extra, primal)
    if choice is None and result is None:
        return "finite_difference", None  # the primal is NaN/Inf: any strategy's call reports it
    return (choice.strategy if choice is not None else None), result


def jvp(model, x: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor, extra_args: dict | None = None, *,
        strategy: str = "auto", primal: torch.Tensor | None = None):
    """``(D(x), J v)`` of ``D = model(x, sigma, **extra_args)``.

    ``primal``: ``D(x)`` if already known (difference strategies then skip recomputing it; exact ones
    return their own). Raises :class:`JVPError` when ``strategy="auto"`` and nothing works.
    """
    extra = {} if extra_args is None else extra_args
    v = v.to(dtype=x.dtype)
    name, result = resolve(model, x, sigma, v, extra, primal, strategy)
    return result if result is not None else IMPLS[name](model, x, sigma, v, extra, primal)
