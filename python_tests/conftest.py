"""Shared helpers for the test suite (CPU; float64 is the oracle dtype)."""
from __future__ import annotations

import math
import os

import pytest
import torch

# Triton kernels run under the interpreter on a CPU-only machine; it must be set before Triton is
# imported (covkernels imports it lazily, on the first use of the triton backend).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# Covariance samplers take plain DDIM steps above sigma = cov_sigma_max (default 1.0); tests about the
# covariance step itself put it on every step.
EVERY_STEP = {"cov_sigma_max": math.inf}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def spd_matrix(d: int, seed: int, floor: float = 0.1) -> torch.Tensor:
    """A well-conditioned random SPD matrix (float64) with distinct eigenvalues in about [floor, 2]."""
    a = torch.randn(d, d, generator=gen(seed), dtype=torch.float64)
    q, _ = torch.linalg.qr(a)
    evals = torch.linspace(floor, 2.0, d, dtype=torch.float64)
    return (q * evals) @ q.T


def whitened_errors(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[float, float]:
    """(mean error, covariance error) of samples against N(mean, cov), both in whitened units.

    mean error: ``sqrt(N) |C^-1/2 (mu_hat - mu)|`` (chi with d dof for exact samples: ~sqrt(d));
    covariance error: ``|C^-1/2 C_hat C^-1/2 - I|_F`` (~sqrt(d (d+1) / N) for exact samples).
    """
    x = samples.to(torch.float64).flatten(1)
    n = x.shape[0]
    evals, evecs = torch.linalg.eigh(cov.to(torch.float64))
    w = evecs / evals.sqrt()  # x @ w whitens
    z = (x - mean.to(torch.float64).flatten()) @ w
    mu_err = math.sqrt(n) * float(z.mean(0).norm())
    zc = z - z.mean(0)
    c_hat = zc.T @ zc / (n - 1)
    cov_err = float((c_hat - torch.eye(z.shape[1], dtype=torch.float64)).norm())
    return mu_err, cov_err


def expected_cov_error(d: int, n: int) -> float:
    return math.sqrt(d * (d + 1) / n)


def sampler_normal(seed, shape, **kw):
    """The Gaussian stream the samplers draw on this machine (the ``auto`` backend's). Hand-computed
    expectations use it: a compiled backend computes float64 runs natively, and its float32 noise differs
    from the reference's by the 1-ulp differences of libm's and torch's float32 log/cos."""
    from covkernels.ops import dispatch

    return dispatch.resolve("auto", kw.get("device") or "cpu").normal(seed, shape, **kw)


@pytest.fixture
def generator():
    return gen(1234)


def tiny_unet(num_classes=None):
    """A seeded float64 diffusers UNet2DModel (16 x 16, 3 channels, one attention level) for the adapter
    and scheduler-equivalence tests (diffusers is in the test extra)."""
    import diffusers

    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                 attention_head_dim=8, num_class_embeds=num_classes).eval().double()
