"""The fused ops as registered PyTorch custom ops: ``torch.ops.covkernels.<op>``.

Each op has a schema and a fake (meta) implementation, so ``torch.compile`` traces a whole step through it
without a graph break, and ``torch.library.opcheck`` checks it. The real implementation asks
:func:`covkernels.ops.dispatch.resolve` for the backend named in the op's ``backend`` argument and calls
that backend's function: dispatch stays the single place that picks a backend; this module only gives the
ops a schema. Callers resolve ``"auto"`` first (:func:`resolve`), so a graph records the concrete backend.

The scalars of a step that change from step to step (the random stream's seed, sample offset and step
index; the sigmas) travel as small CPU tensors (``key``: int64 ``[seed, sample_offset, step]``;
``sigmas``: float64): a compiled step then takes them as graph inputs and is compiled once per shape,
where Python numbers would be baked into the graph and recompile it at every step.
"""

# No `from __future__ import annotations` here: custom_op reads the annotations as types to infer the
# schema, and torch releases before string-annotation support (the GPU image's 2.11 included) need real ones.
from typing import Optional, Sequence

import torch

from . import dispatch

NAMESPACE = "covkernels"
_KEY = dict(dtype=torch.int64, device="cpu")
_SCALARS = dict(dtype=torch.float64, device="cpu")


def _impl(backend: str, device) -> dispatch.Backend:
    return dispatch.resolve(backend, device)


def _fresh(out: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """A custom op may not return (a view of) an input: some backends return their input for no-op paths."""
    return out.clone() if any(out.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()
                              for t in inputs if t.numel()) and out.numel() else out


def _key(key: torch.Tensor) -> tuple[int, int, int]:
    seed, offset, step = (int(v) for v in key.tolist())
    return seed, offset, step


# --- rng -------------------------------------------------------------------------------------------------

@torch.library.custom_op(f"{NAMESPACE}::philox_normal", mutates_args=())
def philox_normal(key: torch.Tensor, shape: Sequence[int], stream: int, dtype: torch.dtype, device: torch.device,
                  backend: str) -> torch.Tensor:
    """Standard normals of ``shape`` at counters ``(element, sample_offset + b, step, stream)``."""
    seed, offset, step = _key(key)
    return _impl(backend, device).normal(seed, tuple(shape), sample_offset=offset, step=step, stream=stream,
                                         dtype=dtype, device=device)


@philox_normal.register_fake
def _(key, shape, stream, dtype, device, backend):
    return torch.empty(tuple(shape), dtype=dtype, device=device)


# --- dct ---------------------------------------------------------------------------------------------------

@torch.library.custom_op(f"{NAMESPACE}::analysis", mutates_args=())
def analysis(x: torch.Tensor, basis: str, block: int, backend: str) -> torch.Tensor:
    """``F x`` for ``basis`` in ("dct", "convdct") (the identity is no op at all: see :class:`Registered`)."""
    return _fresh(_impl(backend, x.device).analysis(x, basis, block), x)


@torch.library.custom_op(f"{NAMESPACE}::synthesis", mutates_args=())
def synthesis(c: torch.Tensor, basis: str, block: int, backend: str) -> torch.Tensor:
    """``F^T c``, the inverse of :func:`analysis`."""
    return _fresh(_impl(backend, c.device).synthesis(c, basis, block), c)


@analysis.register_fake
def _(x, basis, block, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@synthesis.register_fake
def _(c, basis, block, backend):
    return torch.empty_like(c, memory_format=torch.contiguous_format)


# --- noise -------------------------------------------------------------------------------------------------

@torch.library.custom_op(f"{NAMESPACE}::probe_tangent", mutates_args=())
def probe_tangent(key: torch.Tensor, shape: Sequence[int], index: int, basis: str, block: int, dtype: torch.dtype,
                  device: torch.device, backend: str) -> torch.Tensor:
    """The JVP tangent ``F^T z`` of Hutchinson probe ``index``, regenerated from the counters in ``key``."""
    seed, offset, step = _key(key)
    return _impl(backend, device).probe_tangent(seed, tuple(shape), sample_offset=offset, step=step, index=index,
                                                basis=basis, block=block, dtype=dtype, device=device)


@probe_tangent.register_fake
def _(key, shape, index, basis, block, dtype, device, backend):
    return torch.empty(tuple(shape), dtype=dtype, device=device)


@torch.library.custom_op(f"{NAMESPACE}::structured_step", mutates_args=())
def structured_step(denoised: torch.Tensor, x_t: torch.Tensor, jvps: torch.Tensor, key: torch.Tensor,
                    sigmas: torch.Tensor, basis: str, block: int, channel_average: bool, c_max: Optional[float],
                    backend: str) -> torch.Tensor:
    """The whole ``cov_ddim`` / ``diag_hutchinson`` update; ``sigmas = [sigma_t, sigma_down, sigma_up]``."""
    seed, offset, step = _key(key)
    sigma_t, sigma_down, sigma_up = sigmas.tolist()
    out = _impl(backend, x_t.device).structured_step(
        denoised, x_t, jvps, seed, sample_offset=offset, step=step, sigma_t=sigma_t, sigma_down=sigma_down,
        sigma_up=sigma_up, basis=basis, block=block, channel_average=channel_average, c_max=c_max)
    return _fresh(out, denoised, x_t, jvps)


@structured_step.register_fake
def _(denoised, x_t, jvps, key, sigmas, basis, block, channel_average, c_max, backend):
    return torch.empty_like(x_t, memory_format=torch.contiguous_format)


# --- lanczos -----------------------------------------------------------------------------------------------

@torch.library.custom_op(f"{NAMESPACE}::lanczos_update", mutates_args=("basis",))
def lanczos_update(aq: torch.Tensor, basis: torch.Tensor, j: int, reorthogonalize: bool,
                   backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One Lanczos iteration; writes ``q_{j+1}`` into ``basis[j + 1]``. Returns ``(h (B, j+1), beta (B,))``."""
    return _impl(backend, aq.device).lanczos_update(aq, basis, j, reorthogonalize=reorthogonalize)


@lanczos_update.register_fake
def _(aq, basis, j, reorthogonalize, backend):
    b = basis.shape[1]
    return basis.new_empty((b, j + 1)), basis.new_empty((b,))


@torch.library.custom_op(f"{NAMESPACE}::krylov_sqrt_e1", mutates_args=())
def krylov_sqrt_e1(hs: list[torch.Tensor], betas: list[torch.Tensor], coefs: torch.Tensor, c_max: Optional[float],
                   backend: str) -> torch.Tensor:
    """``sqrt(shift I + scale^2 T) e_1`` per sample, ``coefs = [shift, scale]``; ``(B, len(hs))``."""
    shift, scale = coefs.tolist()
    impl = _impl(backend, hs[0].device)
    return _fresh(impl.krylov_sqrt_e1(hs, betas, shift=shift, scale=scale, c_max=c_max), *hs, *betas)


@krylov_sqrt_e1.register_fake
def _(hs, betas, coefs, c_max, backend):
    return hs[0].new_empty((hs[0].shape[0], len(hs)))


@torch.library.custom_op(f"{NAMESPACE}::lanczos_synthesis", mutates_args=())
def lanczos_synthesis(denoised: torch.Tensor, x_t: torch.Tensor, basis: torch.Tensor, g: torch.Tensor,
                      xi_norm: torch.Tensor, sigmas: torch.Tensor, backend: str) -> torch.Tensor:
    """``m + ||xi|| Q g`` with the DDIM mean; ``sigmas = [sigma_t, sigma_down]``."""
    sigma_t, sigma_down = sigmas.tolist()
    out = _impl(backend, x_t.device).lanczos_synthesis(denoised, x_t, basis, g, xi_norm, sigma_t=sigma_t,
                                                       sigma_down=sigma_down)
    return _fresh(out, denoised, x_t, basis)


@lanczos_synthesis.register_fake
def _(denoised, x_t, basis, g, xi_norm, sigmas, backend):
    return torch.empty_like(x_t, memory_format=torch.contiguous_format)


OPS = {name: getattr(torch.ops.covkernels, name) for name in (
    "philox_normal", "analysis", "synthesis", "probe_tangent", "structured_step", "lanczos_update",
    "krylov_sqrt_e1", "lanczos_synthesis")}


# --- the Backend interface over the registered ops ---------------------------------------------------------

def _as_tensor(values, like: dict) -> torch.Tensor:
    """Python numbers -> one small CPU tensor; 0-dim tensors (a compiled step's inputs) are stacked instead,
    so they stay graph inputs."""
    if any(isinstance(v, torch.Tensor) for v in values):
        return torch.stack([torch.as_tensor(v).to(**like).reshape(()) for v in values])
    return torch.tensor(values, **like)


def stream_key(seed, sample_offset, step) -> torch.Tensor:
    """The ``key`` argument of the random ops: int64 ``[seed, sample_offset, step]`` on the CPU."""
    return _as_tensor([seed, sample_offset, step], _KEY)


def scalars(*values) -> torch.Tensor:
    """A ``sigmas`` / ``coefs`` argument: float64 on the CPU."""
    return _as_tensor(list(values), _SCALARS)


def registered(name: str) -> dispatch.Backend:
    """A :class:`dispatch.Backend` with the reference's signatures whose every fused op runs as the
    registered ``torch.ops.covkernels`` op of backend ``name`` (a concrete name: see :func:`resolve`).
    Sigmas and counters may be Python numbers or 0-dim tensors."""
    ops = torch.ops.covkernels

    def normal(seed, shape, *, sample_offset=0, step=0, stream=1, dtype=torch.float32, device=None):
        return ops.philox_normal(stream_key(seed, sample_offset, step), list(shape), stream,
                                 dtype or torch.float32, torch.device(device or "cpu"), name)

    def analysis_(x, basis, block=8):
        return x if basis == "identity" else ops.analysis(x, basis, block, name)

    def synthesis_(c, basis, block=8):
        return c if basis == "identity" else ops.synthesis(c, basis, block, name)

    def probe_tangent_(seed, shape, *, sample_offset, step, index=0, basis, block=8, dtype=torch.float32,
                       device=None):
        return ops.probe_tangent(stream_key(seed, sample_offset, step), list(shape), index, basis, block, dtype,
                                 torch.device(device or "cpu"), name)

    def structured_step_(denoised, x_t, jvps, seed, *, sample_offset, step, sigma_t, sigma_down, sigma_up, basis,
                         block=8, channel_average=True, c_max=1.0):
        return ops.structured_step(denoised, x_t, jvps, stream_key(seed, sample_offset, step),
                                   scalars(sigma_t, sigma_down, sigma_up), basis, block, channel_average,
                                   None if c_max is None else float(c_max), name)

    def lanczos_update_(aq, basis, j, *, reorthogonalize=True):
        return ops.lanczos_update(aq, basis, j, reorthogonalize, name)

    def krylov_sqrt_e1_(hs, betas, *, shift, scale, c_max=None):
        return ops.krylov_sqrt_e1(list(hs), list(betas), scalars(shift, scale),
                                  None if c_max is None else float(c_max), name)

    def lanczos_synthesis_(denoised, x_t, basis, g, xi_norm, *, sigma_t, sigma_down):
        return ops.lanczos_synthesis(denoised, x_t, basis, g, xi_norm, scalars(sigma_t, sigma_down), name)

    return dispatch.Backend(name=name, normal=normal, analysis=analysis_, synthesis=synthesis_,
                            probe_tangent=probe_tangent_, structured_step=structured_step_,
                            lanczos_update=lanczos_update_, krylov_sqrt_e1=krylov_sqrt_e1_,
                            lanczos_synthesis=lanczos_synthesis_)


def resolve(backend: str, device) -> dispatch.Backend:
    """:func:`dispatch.resolve` (which picks, and raises with the reason for a backend that cannot run),
    then the registered ops of the backend it picked."""
    return registered(dispatch.resolve(backend, device).name)
