"""Public sampler names, kept importable from here (``covkernels.sampling.sample_ddim`` etc.).

The samplers live in :mod:`covkernels.samplers`, one module per family, registered once in
:mod:`covkernels.samplers.registry`; this module re-exports them so existing user code keeps working.
"""
from __future__ import annotations

from .samplers import *  # noqa: F401,F403
from .samplers import __all__  # noqa: F401
