"""Image statistics for the metrics of the image testbeds: fixed random conv features and a radial spectrum.

:class:`RandomFeatures` is a 3-stage conv net whose weights are drawn once from a fixed seed (never
trained). Each output is the spatial mean of one ReLU channel, i.e. (half) the mean absolute response of a
random filter bank at 3 scales (16, 8, 4 px): a texture-energy descriptor (the filters are zero-mean;
colour is left to a pooled-pixel metric). It needs no download and no training, and it responds to the
corruptions sampler errors produce: blur lowers the fine-scale energies, residual noise raises them, a
contrast change scales them all. The tests and the patches model's metric
check that it ranks blurred and noised held-out patches worse than clean ones.

:func:`radial_power` is the mean power per radial frequency of the orthonormal 2-D DCT (no periodic-edge
leakage, unlike the FFT of a non-periodic patch); :func:`spectrum_error` compares two sets on a log scale,
so every frequency band counts alike even though natural-image power falls roughly like ``1/f^2``.
"""
from __future__ import annotations

import math

import torch


class RandomFeatures(torch.nn.Module):
    """``(B, C, H, W) -> (B, sum(widths))`` features of fixed random filters drawn from ``seed``.

    Every 3 x 3 filter is made zero-mean over space (so it answers edges and texture, not the mean colour,
    which would otherwise dominate the features and hide blur and noise) and scaled to unit norm, no bias.
    The features are 10x the channel means (so Frechet distances read near 1e-2 .. 1 rather than 1e-4)."""

    def __init__(self, channels: int = 3, widths: tuple = (32, 64, 128), seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        c_in, weights = channels, []
        for w in widths:
            filt = torch.randn(w, c_in, 3, 3, generator=gen)
            filt = filt - filt.mean((2, 3), keepdim=True)
            weights.append(filt / filt.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
            c_in = w
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(w, requires_grad=False) for w in weights])

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, feats = x.float(), []
        for i, w in enumerate(self.weights):
            h = torch.relu(torch.nn.functional.conv2d(h, w, padding=1))
            feats.append(10.0 * h.mean((2, 3)))
            if i < len(self.weights) - 1:
                h = torch.nn.functional.avg_pool2d(h, 2)
        return torch.cat(feats, 1)


def dct_matrix(n: int, dtype=torch.float64) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``(n, n)``: row ``u`` is frequency ``u``."""
    k = torch.arange(n, dtype=dtype)
    m = torch.cos(math.pi * (k.view(1, -1) + 0.5) * k.view(-1, 1) / n) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


def radial_power(x: torch.Tensor) -> torch.Tensor:
    """Mean DCT power per radial frequency ``r = round(sqrt(u^2 + v^2))`` for ``r = 1 .. min(H, W) - 1``
    (the DC term and the corner frequencies beyond the axes' Nyquist are left out): ``(min(H, W) - 1,)``
    float64 from square or rectangular images ``x (N, C, H, W)``, averaged over samples and channels."""
    if x.dim() != 4:
        raise ValueError(f"x must be (N, C, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    xd = x.detach().to("cpu", torch.float64)
    coeff = dct_matrix(h) @ xd @ dct_matrix(w).T
    power = coeff.square().mean((0, 1))  # (H, W)
    r = torch.sqrt(torch.arange(h, dtype=torch.float64).view(-1, 1) ** 2
                   + torch.arange(w, dtype=torch.float64).view(1, -1) ** 2).round().long()
    bins = torch.arange(1, min(h, w))
    return torch.stack([power[r == b].mean() for b in bins])


def spectrum_error(x: torch.Tensor, reference_power: torch.Tensor) -> float:
    """Mean over radial frequencies of ``|ln P_x(r) - ln P_ref(r)|`` (0.1 is a ~10% power error per band)."""
    return float((radial_power(x).clamp_min(1e-30).log() - reference_power.clamp_min(1e-30).log()).abs().mean())
