"""The automatic switch of ``ode_cov`` moved to :mod:`covkernels.steps.switch`; its names stay importable here."""
from __future__ import annotations

from ..steps.switch import AUTO_TOLERANCE, C_TRANSFER_MAX, auto_switch_draw, coefficients_at, \
    earliest_consistent, measured_coefficients, ode_gain, prediction_misses, spectrum

__all__ = ["AUTO_TOLERANCE", "C_TRANSFER_MAX", "auto_switch_draw", "coefficients_at", "earliest_consistent",
           "measured_coefficients", "ode_gain", "prediction_misses", "spectrum"]
