"""Moved: the seed statistics live in :mod:`covkernels.eval.intervals`. This module re-exports the old names
for existing imports."""
from __future__ import annotations

from .eval.intervals import (annotate_paired, check_orderings, find_cell, half_width, mean_ci95,
                             paired, summarize_seeds, t_cdf, t_quantile)

__all__ = ['annotate_paired', 'check_orderings', 'find_cell', 'half_width', 'mean_ci95', 'paired', 'summarize_seeds',
           't_cdf', 't_quantile']
