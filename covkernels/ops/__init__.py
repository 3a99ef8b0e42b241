"""Fused operations of a covariance-aware step, one folder per op, each with a pure-PyTorch reference.

The layers above reach them only through :mod:`covkernels.ops.dispatch` (which picks a backend, asks the
backend module's ``supports`` before each call and reports a fallback to the reference) or the registered
ops of :mod:`covkernels.ops.library`.
"""
