"""Moved: the evaluation reports live in :mod:`covkernels.eval.report`. This module re-exports the old names
for existing imports."""
from __future__ import annotations

from .eval.report import (MIN_SEEDS, TABLE_TITLES, cell_text, few_seeds_note, main_metric, markdown,
                          metrics_of, plot, table, winners, write_reports)

__all__ = ['MIN_SEEDS', 'TABLE_TITLES', 'cell_text', 'few_seeds_note', 'main_metric', 'markdown', 'metrics_of', 'plot',
           'table', 'winners', 'write_reports']
