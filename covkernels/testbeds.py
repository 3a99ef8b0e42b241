"""Moved: the testbed registry lives in :mod:`covkernels.eval.testbeds`, the scorers in
:mod:`covkernels.eval.scorers`. This module re-exports the old names for existing imports."""
from __future__ import annotations

from .eval.scorers import DigitsScorer, OracleScorer, radial_power, spectrum_error
from .eval.testbeds import (OPTIONAL, REFERENCE_SEED_OFFSET, Testbed, all_metrics, get_testbed,
                            register, testbed_names)

__all__ = ['DigitsScorer', 'OracleScorer', 'radial_power', 'spectrum_error', 'OPTIONAL', 'REFERENCE_SEED_OFFSET',
           'Testbed', 'all_metrics', 'get_testbed', 'register', 'testbed_names']
