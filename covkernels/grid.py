"""Moved: the grid rules live in :mod:`covkernels.eval.plan`, sampling and NFE counting in
:mod:`covkernels.eval.runner`, the ``torchrun`` plumbing in :mod:`covkernels.eval.distributed`. This module
re-exports the old names for existing imports."""
from __future__ import annotations

from .eval.distributed import broadcast_from_rank0, finish_distributed
from .eval.plan import (NFES, TUNE_SCHEDULES, TUNE_SIGMA_MINS, VARIANTS, canonical_label, is_baseline,
                        schedule_for, variant_options)
from .eval.runner import CALIBRATE, CALIBRATION_SEED, CountingModel, calibrated_spectrum, generate

__all__ = ['broadcast_from_rank0', 'finish_distributed', 'NFES', 'TUNE_SCHEDULES', 'TUNE_SIGMA_MINS', 'VARIANTS',
           'canonical_label', 'is_baseline', 'schedule_for', 'variant_options', 'CALIBRATE', 'CALIBRATION_SEED',
           'CountingModel', 'calibrated_spectrum', 'generate']
