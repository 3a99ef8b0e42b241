"""Moved: the evaluation lives in :mod:`covkernels.eval` (``evaluate`` in :mod:`covkernels.eval.api`, its
configuration in :mod:`covkernels.eval.config`). This module re-exports the old names for existing imports."""
from __future__ import annotations

from .eval.api import evaluate, run_evaluation
from .eval.config import TABLES, TUNING_SEED_OFFSET, EvalConfig
from .eval.distributed import broadcast_from_rank0, finish_distributed
from .eval.plan import (NFES, TUNE_SCHEDULES, TUNE_SIGMA_MINS, VARIANTS, canonical_label, is_baseline,
                        schedule_for, variant_options)
from .eval.runner import CountingModel, generate
from .eval.testbeds import get_testbed, load_model, make_scorer as Scorer, testbed_names

EVAL_MODELS = testbed_names()

__all__ = ['evaluate', 'run_evaluation', 'TABLES', 'TUNING_SEED_OFFSET', 'EvalConfig', 'broadcast_from_rank0',
           'finish_distributed', 'NFES', 'TUNE_SCHEDULES', 'TUNE_SIGMA_MINS', 'VARIANTS', 'canonical_label',
           'is_baseline', 'schedule_for', 'variant_options', 'CountingModel', 'generate', 'get_testbed', 'load_model',
           'Scorer', 'testbed_names', 'EVAL_MODELS']
