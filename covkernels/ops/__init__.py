"""Fused operations of a covariance-aware step, one folder per op, each with a pure-PyTorch reference.

The sampler layer reaches them only through :func:`covkernels.ops.dispatch.resolve`.
"""
