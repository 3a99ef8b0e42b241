"""Sample-quality metrics that need no network or feature extractor."""
from __future__ import annotations

import torch


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Frechet distance between Gaussian fits of two sample sets ``(N, ...)`` and ``(M, ...)`` (pixel space).

    ``|mu_x - mu_y|^2 + tr C_x + tr C_y - 2 tr (C_x^1/2 C_y C_x^1/2)^1/2``. The trace of the matrix square
    root is computed exactly through the ``N x M`` cross-Gram matrix (the nuclear norm of ``A^T B`` with
    ``C_x = A A^T``, ``C_y = B B^T``), so it is cheap and exact even when ``N, M`` are below the dimension.
    """
    if x.dim() < 2 or y.dim() < 2 or x.shape[1:] != y.shape[1:]:
        raise ValueError(f"x and y must be (N, ...) with the same event shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("need at least 2 samples in each set")
    a = x.detach().to("cpu", torch.float64).flatten(1)
    b = y.detach().to("cpu", torch.float64).flatten(1)
    mu_a, mu_b = a.mean(0), b.mean(0)
    a = (a - mu_a) / (a.shape[0] - 1) ** 0.5
    b = (b - mu_b) / (b.shape[0] - 1) ** 0.5
    cross = torch.linalg.svdvals(a @ b.T).sum()
    fd = (mu_a - mu_b).square().sum() + a.square().sum() + b.square().sum() - 2.0 * cross
    return float(fd.clamp_min(0.0))
