"""What the layers above ``ops`` may use of the ops besides the fused kernels: names, constants, shape checks
and the small torch arithmetic that every backend's step shares.

The fused kernels themselves are reached only through :mod:`covkernels.ops.dispatch` (``resolve`` and the
sampler-side entry points at its end), so a backend can replace them; nothing above ``ops`` imports a
backend module (``ops/<op>/reference.py``, ``triton.py``, ``cpp.py``). The names below live in the reference
modules because the kernels there define them; none of them is a kernel a backend would fuse.
"""
from __future__ import annotations

from .dct.reference import BASES, check_block, check_stride, frame_shifts, overlap_analysis, overlap_synthesis
from .noise.reference import ddim_mean, hutchinson_coefficients, work_dtype
from .rng.reference import STREAM_CHURN, STREAM_INIT, STREAM_NOISE, STREAM_PROBE

__all__ = [
    # bases of the covariance diagonal and their shape checks
    "BASES", "check_block", "check_stride", "frame_shifts",
    # the overlapping ConvDCT frame, composed from a backend's blockwise transform passed in as an argument
    "overlap_analysis", "overlap_synthesis",
    # arithmetic of a step in the accumulation dtype (plain torch, the same on every backend)
    "ddim_mean", "hutchinson_coefficients", "work_dtype",
    # ids of the counter-based random streams
    "STREAM_CHURN", "STREAM_INIT", "STREAM_NOISE", "STREAM_PROBE",
]
