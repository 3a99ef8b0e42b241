"""Moved: the sample-set distances live in :mod:`covkernels.eval.metrics`. This module re-exports the old
names for existing imports."""
from __future__ import annotations

from .eval.metrics import (KID_FULL_MAX, frechet_distance, gaussian_w2, kernel_distance,
                           precision_recall)

__all__ = ['KID_FULL_MAX', 'frechet_distance', 'gaussian_w2', 'kernel_distance', 'precision_recall']
