"""The single place that chooses a backend for the fused ops, and says why the others were skipped.

``backend="auto"`` picks, in order, ``cuda`` (compiled extension, CUDA tensors) -> ``triton`` (CUDA
tensors; CPU tensors run Triton's interpreter only when ``backend="triton"`` is asked for explicitly under
``TRITON_INTERPRET=1``) -> ``cpp`` (compiled extension, CPU tensors) -> ``reference`` (pure PyTorch,
always there). A backend named explicitly that cannot run raises a
``RuntimeError`` carrying the reason. Nothing here touches a GPU at import time: availability is probed
lazily, on the first call, and cached.

Per call, a backend may still decline some arguments (float64 in the float32 Triton kernels, a block too
large for registers, the global DCT, a layout a compiled kernel does not walk): every backend module answers
``supports(op, **args) -> None | reason``, and this module asks it before each call. On a reason the
reference runs instead (the same computation the backend modules used to reroute to by themselves), the
fallback is logged once per ``(op, backend, reason)`` on the ``covkernels.ops.dispatch`` logger and counted;
:func:`fallbacks` lists them (``covkernels info`` prints them).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import threading
from typing import Callable

import torch

from .._extension import cuda_extension, extension_status
from .dct import reference as dct_ref
from .lanczos import reference as lanczos_ref
from .noise import reference as noise_ref
from .rng import reference as rng_ref

BACKENDS = ("auto", "reference", "triton", "cpp", "cuda")


@dataclasses.dataclass(frozen=True)
class Backend:
    """The fused ops of one backend; every backend offers the same signatures as the reference."""

    name: str
    normal: Callable  # rng: philox_normal(seed, shape, *, sample_offset, step, stream, dtype, device)
    analysis: Callable  # dct: F x
    synthesis: Callable  # dct: F^T c
    probe_tangent: Callable  # noise: F^T z from (seed, counters)
    structured_step: Callable  # noise: the whole cov_ddim / diag_hutchinson update
    lanczos_update: Callable  # lanczos: one iteration given J q_j
    krylov_sqrt_e1: Callable  # lanczos: sqrt(T_S) e_1, batched k x k
    lanczos_synthesis: Callable  # lanczos: m + ||xi|| Q g


# Backend field -> (the per-op folder, the function's name there: also the op name ``supports`` is asked about)
_FIELDS = {"normal": ("rng", "philox_normal"), "analysis": ("dct", "analysis"), "synthesis": ("dct", "synthesis"),
           "probe_tangent": ("noise", "probe_tangent"), "structured_step": ("noise", "structured_step"),
           "lanczos_update": ("lanczos", "lanczos_update"), "krylov_sqrt_e1": ("lanczos", "krylov_sqrt_e1"),
           "lanczos_synthesis": ("lanczos", "lanczos_synthesis")}
_REFERENCE_MODULES = {"rng": rng_ref, "dct": dct_ref, "noise": noise_ref, "lanczos": lanczos_ref}


@dataclasses.dataclass(frozen=True)
class Fallback:
    """Calls of ``op`` that ``backend`` declined for ``reason`` and the reference ran, in this process."""

    op: str
    backend: str
    reason: str
    calls: int


log = logging.getLogger(__name__)
_FALLBACKS: dict[tuple[str, str, str], int] = {}  # (op, backend, reason) -> calls
_FALLBACKS_LOCK = threading.Lock()


def _report_fallback(op: str, backend: str, reason: str) -> None:
    key = (op, backend, reason)
    with _FALLBACKS_LOCK:
        first = key not in _FALLBACKS
        _FALLBACKS[key] = _FALLBACKS.get(key, 0) + 1
    if first:
        log.warning("covkernels: the %s backend does not run %s on these arguments (%s); the reference runs it "
                    "instead (said once per process; covkernels.info() lists every fallback)", backend, op, reason)


def fallbacks() -> list[Fallback]:
    """Every backend fallback of this process so far, in the order they first happened."""
    with _FALLBACKS_LOCK:
        return [Fallback(op, backend, reason, calls) for (op, backend, reason), calls in _FALLBACKS.items()]


def _naming(reference: Callable) -> Callable:
    """``(args, kwargs) -> {name: value}`` as ``reference`` names its arguments, defaults filled in. A dict
    merge per call (``inspect.Signature.bind`` costs ~10 us, next to ~15 us for a whole fused op on the CPU);
    a call that does not fit the signature is bound properly, which raises the TypeError that names it."""
    signature = inspect.signature(reference)
    params = signature.parameters.values()
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    defaults = {p.name: p.default for p in params if p.default is not p.empty}
    names = set(signature.parameters)

    def name(args: tuple, kwargs: dict) -> dict:
        named = {**defaults, **dict(zip(positional, args)), **kwargs}
        if len(args) > len(positional) or named.keys() != names or len(named) < len(args) + len(kwargs):
            signature.bind(*args, **kwargs)  # raises
        return named

    return name


def _asking_support(backend: str, op: str, module, reference: Callable) -> Callable:
    """``module.<op>``, run only where ``module.supports`` accepts the arguments, else ``reference`` (reported).
    The arguments are named as the reference names them (its defaults filled in) for ``supports``."""
    impl, name = getattr(module, op), _naming(reference)

    @functools.wraps(impl)
    def run(*args, **kwargs):
        reason = module.supports(op, **name(args, kwargs))
        if reason is None:
            return impl(*args, **kwargs)
        out = reference(*args, **kwargs)
        _report_fallback(op, backend, reason)  # after the call: arguments that are simply invalid raise, unreported
        return out

    return run


def _from_modules(name: str, rng, dct, noise, lanczos) -> Backend:
    """A backend from its per-op modules: every backend's modules expose the reference's function names and
    ``supports``; outside the reference, each function asks ``supports`` first."""
    modules = {"rng": rng, "dct": dct, "noise": noise, "lanczos": lanczos}
    functions = {}
    for field, (folder, op) in _FIELDS.items():
        reference = getattr(_REFERENCE_MODULES[folder], op)
        module = modules[folder]
        functions[field] = reference if module is _REFERENCE_MODULES[folder] else _asking_support(
            name, op, module, reference)
    return Backend(name=name, **functions)


REFERENCE = _from_modules("reference", rng_ref, dct_ref, noise_ref, lanczos_ref)


@functools.lru_cache(maxsize=None)
def _probe(name: str) -> tuple[Backend | None, str]:
    """(backend or None, reason). Cached: import attempts and compiler checks run once per process."""
    if name == "reference":
        return REFERENCE, "pure PyTorch; always available (the oracle for every other backend)"
    if name == "triton":
        try:
            return _triton_backend(), (f"fused Triton kernels (triton {__import__('triton').__version__}); runs on "
                                       f"CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1")
        except ImportError as exc:
            return None, f"Triton is not importable ({exc}); `pip install triton` on a CUDA machine"
    if name == "cpp":
        return _cpp_backend()
    if name == "cuda":
        return None, _cuda_reason()
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def backend_status() -> dict[str, tuple[bool, str]]:
    """``{name: (available, reason)}`` for every concrete backend on this machine (what ``covkernels info``
    prints): a backend is available when it loads AND some device here can run it, so Triton without a
    CUDA device counts only under ``TRITON_INTERPRET=1``. Queries CUDA when called, never at import."""
    status = {name: (_probe(name)[0] is not None, _probe(name)[1]) for name in BACKENDS[1:]}
    if status["triton"][0] and os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        status["triton"] = (False, f"triton {__import__('triton').__version__} imports, but its kernels need CUDA "
                                   f"tensors and this machine has no usable CUDA device (TRITON_INTERPRET=1 set "
                                   f"before covkernels imports Triton runs them on CPU tensors: slow, for tests)")
    return status


def _triton_backend() -> Backend:
    from .dct import triton as dct_tr
    from .lanczos import triton as lanczos_tr
    from .noise import triton as noise_tr
    from .rng import triton as rng_tr

    return _from_modules("triton", rng_tr, dct_tr, noise_tr, lanczos_tr)


@functools.lru_cache(maxsize=None)
def _cpp_backend() -> tuple[Backend | None, str]:
    ext, why = extension_status()
    if ext is None:
        return None, why
    from .dct import cpp as dct_cpp
    from .lanczos import cpp as lanczos_cpp
    from .noise import cpp as noise_cpp
    from .rng import cpp as rng_cpp

    return _from_modules("cpp", rng_cpp, dct_cpp, noise_cpp, lanczos_cpp), f"fused C++ kernels on CPU tensors: {why}"


def _cuda_reason() -> str:
    # CUDA versions of the fused ops join only where a measurement shows them faster than the Triton
    # kernels; none has been measured yet, so Triton is the GPU path of every op.
    if cuda_extension() is not None:
        executor = "built"
    elif extension_status()[0] is None:
        executor = "not built"
    else:
        executor = "not built (torch or nvcc without CUDA at build time)"
    return ("no CUDA op kernels in this version: the Triton kernels are the GPU path of every op (a CUDA twin "
            f"joins only where measured faster). The extension's CUDA part is the guided-step executor: {executor}")


def _device_ok(name: str, device: torch.device, explicit: bool = True) -> tuple[bool, str]:
    if name == "triton" and device.type != "cuda":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return False, f"Triton kernels need CUDA tensors (or TRITON_INTERPRET=1), got a {device.type} tensor"
        if not explicit:
            return False, "CPU tensors under TRITON_INTERPRET=1 run Triton only when asked for (backend='triton')"
    if name == "cuda" and device.type != "cuda":
        return False, f"the cuda backend needs CUDA tensors, got a {device.type} tensor"
    if name == "cpp" and device.type != "cpu":
        return False, f"the cpp backend runs on CPU tensors, got a {device.type} tensor"
    return True, ""


def resolve(backend: str, device: torch.device | str) -> Backend:
    """The :class:`Backend` that ``backend`` ("auto" or a name) means for tensors on ``device``; an explicit
    backend that cannot run raises with the reason (``backend_status`` reports them all)."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend != "auto":
        impl, reason = _probe(backend)
        ok, why = _device_ok(backend, device)
        if impl is None or not ok:
            raise RuntimeError(f"backend={backend!r} cannot run: {reason if impl is None else why}")
        return impl
    for name in ("cuda", "triton", "cpp", "reference"):
        impl, _ = _probe(name)
        if impl is not None and _device_ok(name, device, explicit=False)[0]:
            return impl
    raise AssertionError("unreachable: the reference backend is always available")


# --- Sampler-side entry points -------------------------------------------------------------------------------
# Ops the sampler layer calls outside a step context (which holds a resolved backend). Added here, after the
# backend selection above, so the layers above ``ops`` never import a backend module.

# The initial noise stays on the reference stream unless a backend is asked for: the fused backends' integer
# words are bit-identical to the reference's, but their normals agree only up to the rounding of log/cos
# (ops/rng/triton.py, cpp.py), and x_T seeds the whole trajectory, so one seed must give one x_T on every
# machine and backend (``covkernels.sample``'s samples compare across backends from the same start).
INITIAL_NOISE_BACKEND = "reference"


def initial_noise(seed: int, shape, *, sample_offset: int = 0, dtype: torch.dtype = torch.float32, device=None,
                  backend: str = INITIAL_NOISE_BACKEND) -> torch.Tensor:
    """Standard normals of the initial-noise stream (``STREAM_INIT``, step 0) of ``shape = (B, ...)``, sample
    ``b`` at counter ``sample_offset + b``, from ``backend``'s generator (see :data:`INITIAL_NOISE_BACKEND`)."""
    impl = resolve(backend, torch.device("cpu") if device is None else device)
    return impl.normal(seed, shape, sample_offset=sample_offset, step=0, stream=rng_ref.STREAM_INIT, dtype=dtype,
                       device=device)
