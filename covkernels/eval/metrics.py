"""Sample-quality metrics that need no network or feature extractor."""
from __future__ import annotations

import torch


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Frechet distance between Gaussian fits of two sample sets ``(N, ...)`` and ``(M, ...)`` (pixel space).

    ``|mu_x - mu_y|^2 + tr C_x + tr C_y - 2 tr (C_x^1/2 C_y C_x^1/2)^1/2``. The trace of the matrix square
    root is computed exactly as the nuclear norm of the ``N x M`` cross-Gram matrix ``A B^T`` (``C_x = A^T A``,
    ``C_y = B^T B`` with centred, scaled rows), so it is cheap and exact even when ``N, M`` are below the
    dimension; when the dimension is below ``N, M`` the same singular values come from a ``d x d`` product of
    the two QR factors.
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
    if a.shape[1] < min(a.shape[0], b.shape[0]):
        # fewer dimensions than samples (pooled pixels, features): with A = Q_a R_a, B = Q_b R_b, A B^T and the
        # d x d matrix R_a R_b^T have the same singular values, so the SVD shrinks from N x M to d x d
        cross = torch.linalg.svdvals(torch.linalg.qr(a, mode="r").R @ torch.linalg.qr(b, mode="r").R.T).sum()
    else:
        cross = torch.linalg.svdvals(a @ b.T).sum()
    fd = (mu_a - mu_b).square().sum() + a.square().sum() + b.square().sum() - 2.0 * cross
    return float(fd.clamp_min(0.0))


def gaussian_w2(samples: torch.Tensor, mean: torch.Tensor, sqrt_cov) -> float:
    """Squared 2-Wasserstein distance between the Gaussian fit of ``samples (N, ...)`` and the exact
    ``N(mean, C)``, with ``sqrt_cov(v)`` applying ``C^1/2`` to a batch ``(M, ...)`` (e.g. a spectral model's).

    ``|mu - m|^2 + tr C + tr S - 2 tr (C^1/2 S C^1/2)^1/2``; with ``S = A A^T`` the last trace is the
    nuclear norm of ``C^1/2 A``, so only ``N`` products with ``C^1/2`` are needed.
    """
    if samples.dim() < 2 or samples.shape[0] < 2 or tuple(samples.shape[1:]) != tuple(mean.shape):
        raise ValueError(f"samples must be (N >= 2, {tuple(mean.shape)}), got {tuple(samples.shape)}")
    x = samples.detach().to("cpu", torch.float64)
    mu = x.mean(0)
    a = (x - mu) / (x.shape[0] - 1) ** 0.5
    root_a = sqrt_cov(a).to("cpu", torch.float64).flatten(1)
    eye = torch.eye(mean.numel(), dtype=torch.float64).view(-1, *mean.shape)
    trace_c = float(sqrt_cov(eye).to("cpu", torch.float64).square().sum())
    w2 = (mu - mean.to("cpu", torch.float64)).square().sum() + trace_c + a.square().sum() \
        - 2.0 * torch.linalg.svdvals(root_a).sum()
    return float(w2.clamp_min(0.0))


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Coverage-style precision and recall of feature sets ``(N, F)``, ``(M, F)`` with k-NN balls
    (Kynkaanniemi et al., 2019): precision = share of ``fake`` inside some real point's ball (radius: its
    distance to its k-th nearest real neighbour); recall = the same with the roles swapped."""
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake must be (N, F) feature sets, got {tuple(real.shape)}, {tuple(fake.shape)}")
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"need more than k={k} points in each set")
    r, f = real.detach().double(), fake.detach().double()

    def share_inside(support, query):
        radius = torch.cdist(support, support).kthvalue(k + 1, dim=1).values  # +1: the point itself
        return float((torch.cdist(query, support) <= radius.unsqueeze(0)).any(1).double().mean())

    return share_inside(r, f), share_inside(f, r)


_GRAM_BLOCK = 2048  # rows of the kernel matrix held at once (2048 x 4096 float64: 64 MiB)
KID_FULL_MAX = 4096  # larger sample sets: the mean over chunks of at most this many


def kernel_distance(x: torch.Tensor, y: torch.Tensor, degree: int = 3) -> float:
    """Unbiased squared MMD between sample sets ``(N, ...)`` and ``(M, ...)`` under the polynomial kernel
    ``k(a, b) = (a . b / d + 1) ** degree`` (``d``: the flattened dimension) — the KID of Binkowski et al.
    (2018) when ``x, y`` are network features.

    Unlike the Frechet distance, whose bias falls like ``1/N`` and dominates small-``N`` comparisons, its
    expectation is the population MMD^2 at every ``N`` (0 for equal distributions), so single estimates
    can be negative; means over seeds are what to compare. Above :data:`KID_FULL_MAX` samples both sets are
    cut into the same number of contiguous chunks of at most that many and the estimate is the mean over
    the chunk pairs (the subset KID: the same expectation, cost linear instead of quadratic in N); the
    smaller set then needs at least 2 samples per chunk (ValueError otherwise), and the rows of each set must
    be in random order (i.i.d. samples are).
    """
    if x.dim() < 2 or y.dim() < 2 or x.shape[1:] != y.shape[1:]:
        raise ValueError(f"x and y must be (N, ...) with the same event shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("need at least 2 samples in each set")
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise ValueError(f"degree must be a positive int, got {degree!r}")
    a = x.detach().to("cpu", torch.float64).flatten(1)
    b = y.detach().to("cpu", torch.float64).flatten(1)
    chunks = -(-max(len(a), len(b)) // KID_FULL_MAX)
    if chunks > 1:  # the mean of unbiased estimates on disjoint chunks: still unbiased, O(N * KID_FULL_MAX) time
        if min(len(a), len(b)) < 2 * chunks:
            raise ValueError(f"need at least 2 samples per chunk of {KID_FULL_MAX}: {len(a)} and {len(b)}")
        # contiguous chunks: unbiased for exchangeable rows (i.i.d. samples, a drawn reference); a fixed
        # reference stored in some order would need shuffling first (every such reference today has < 4096)
        pairs = zip(a.tensor_split(chunks), b.tensor_split(chunks))
        return sum(_kernel_distance(u, v, degree) for u, v in pairs) / chunks
    return _kernel_distance(a, b, degree)


def _kernel_distance(a: torch.Tensor, b: torch.Tensor, degree: int) -> float:
    d, m, n = a.shape[1], a.shape[0], b.shape[0]

    def gram_sum(u, v):  # sum of the kernel matrix, in row blocks: O(block * N) memory instead of O(N^2)
        return sum(((u[i:i + _GRAM_BLOCK] @ v.T / d + 1.0) ** degree).sum() for i in range(0, len(u), _GRAM_BLOCK))

    def diagonal_sum(u):
        return (((u * u).sum(1) / d + 1.0) ** degree).sum()

    within_x = (gram_sum(a, a) - diagonal_sum(a)) / (m * (m - 1))  # i != j only: the unbiased U-statistic
    within_y = (gram_sum(b, b) - diagonal_sum(b)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * gram_sum(a, b) / (m * n))
