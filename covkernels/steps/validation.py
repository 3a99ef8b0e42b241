"""The checks of user input shared by the samplers and the steps: one place, one wording.

Each check returns the value it accepts (converted where that is its job, e.g. ``float``) and raises a
ValueError (a TypeError for a value of the wrong kind where the callers always did) naming the argument.
"""
from __future__ import annotations

import math

import torch

from ..ops.api import BASES, check_block, check_stride


def check_inputs(x, sigmas) -> torch.Tensor:
    """Validate ``x`` and ``sigmas``; return ``sigmas`` as a 1-D tensor on ``x``'s device."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor, got {type(x).__name__}"
                        + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    if x.dim() < 2 or x.shape[0] < 1 or x.numel() == 0:
        raise ValueError(f"x must have shape (B, ...) with B >= 1 and at least one element, got {tuple(x.shape)}")
    if not isinstance(sigmas, torch.Tensor):
        sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    if sigmas.dim() != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D sequence of at least 2 values, got shape {tuple(sigmas.shape)}")
    s = sigmas.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite (it contains NaN or Inf)")
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError(f"sigmas must be finite and non-negative, got {s.tolist()}")
    if not bool((s[1:] < s[:-1]).all()):
        raise ValueError(f"sigmas must be strictly decreasing (e.g. sigma_max ... sigma_min, 0), got {s.tolist()}")
    return sigmas.to(x.device)


def _is_real(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def check_number(value, name: str, low: float = 0.0, high: float = math.inf, *, low_open: bool = False) -> float:
    """A finite real in ``[low, high]`` (``(low, high]`` with ``low_open``), else ValueError naming it."""
    ok = _is_real(value) and math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        if high == math.inf:
            rng = f"{'>' if low_open else '>='} {low:g}"
        else:
            rng = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValueError(f"{name} must be a finite number {rng}, got {value!r}")
    return float(value)


def check_count(value, name: str, upper: int) -> int:
    """An int in ``[1, upper]`` (probes, Lanczos steps, orders, ...)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upper:
        raise ValueError(f"{name} must be an int in [1, {upper}], got {value!r}")
    return value


def check_bool(value, name: str) -> bool:
    """A real bool: 0 / 1 are refused, so a misplaced positional number does not pass as a switch."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def check_eta(eta) -> float:
    if not _is_real(eta) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
    return float(eta)


def check_c_max(c_max, allow_none: bool) -> float | None:
    if c_max is None and allow_none:
        return None
    if not _is_real(c_max) or not c_max > 0 or not math.isfinite(c_max):
        raise ValueError(f"c_max must be a positive finite number{' or None' if allow_none else ''}, got {c_max!r}")
    return float(c_max)


def check_cov_sigma_max(value) -> float:
    if not _is_real(value) or not value > 0 or math.isnan(value):
        raise ValueError(f"cov_sigma_max must be a positive number (float('inf'): every step), got {value!r}")
    return float(value)


def check_sample_offset(sample_offset) -> int:
    if isinstance(sample_offset, bool) or not isinstance(sample_offset, int) or sample_offset < 0:
        raise ValueError(f"sample_offset must be a non-negative int, got {sample_offset!r}")
    return sample_offset


def check_basis_name(basis) -> str:
    if basis not in BASES:
        raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
    return basis


def check_basis(basis, block, x: torch.Tensor) -> None:
    """``basis`` is one of :data:`BASES` and fits ``x`` (images for a transform; ``block`` tiles them)."""
    check_basis_name(basis)
    if basis != "identity" and x.dim() != 4:
        raise ValueError(f"basis={basis!r} needs images x of shape (B, C, H, W), got shape {tuple(x.shape)}")
    if basis == "convdct":
        check_block(x.shape, block)


def check_block_and_stride(block, stride) -> None:
    """``block`` a positive int and ``stride`` (None or) a positive int dividing it, before any image is
    known: checked on one tile, which every block tiles."""
    check_block((block, block), block)
    if stride is not None:
        check_stride((block, block), block, stride)


def check_stride_option(stride, basis, block, x: torch.Tensor) -> int | None:
    """``stride`` of the overlapping ConvDCT: None (non-overlapping tiles) or a positive int dividing
    ``block``; it applies to ``basis="convdct"`` only. Returns None where it equals ``block`` (the same step)."""
    if stride is None:
        return None
    if basis != "convdct":
        raise ValueError(f"stride applies to basis='convdct' only (the overlapping ConvDCT), got basis={basis!r}")
    check_stride(x.shape, block, stride)
    return None if stride == block else stride


def check_spatial_average(spatial_average, basis: str, block: int, stride, x: torch.Tensor, compile) -> bool:
    """``spatial_average`` a bool; True needs images with more than one block position (so not the global
    ``dct``, nor a ``convdct`` block as large as the image without a smaller ``stride``), and is refused with
    ``compile=True`` (the compiled step is the fused op, which averages over channels only)."""
    if not check_bool(spatial_average, "spatial_average"):
        return False
    if x.dim() != 4:
        raise ValueError(f"spatial_average=True needs images x of shape (B, C, H, W), got shape {tuple(x.shape)}")
    if basis == "dct":
        raise ValueError("spatial_average=True does not apply to basis='dct': the global DCT is one block, with "
                         "no block positions to average over; use basis='convdct' or 'identity'")
    tile = 1 if basis == "identity" else block
    if (x.shape[-2] // tile) * (x.shape[-1] // tile) == 1 and stride is None:
        raise ValueError(f"spatial_average=True does not apply to {x.shape[-2]} x {x.shape[-1]} images with "
                         f"basis={basis!r}, block={block}: one block position, nothing to average over")
    if compile is True:
        raise ValueError("spatial_average=True is not available with compile=True (the compiled step runs the "
                         "fused op, which averages over channels only)")
    return True


def check_channel_average(channel_average, x: torch.Tensor) -> bool:
    """``channel_average`` a bool, and True only on images (it averages the diagonal over channels)."""
    check_bool(channel_average, "channel_average")
    if channel_average and x.dim() != 4:
        raise ValueError(f"channel_average=True needs images x of shape (B, C, H, W), got shape {tuple(x.shape)}; "
                         f"pass channel_average=False for other data")
    return channel_average
