"""The trained ``patches`` model: an EDM denoiser of ``3 x 16 x 16`` RGB patches of photographs.

Data: five colour photographs that ship inside the scikit-image wheel (astronaut, chelsea, coffee, rocket,
the left motorcycle view), each averaged down 2 x 2 and scaled to [-1, 1]. The right-most quarter of every
photograph is held out: the network never sees it, and 4096 patches cut from it (stored as ``uint8``) are
the reference set of the metrics, so scoring needs neither scikit-image nor the photographs.
``benchmarks/train_patches.py`` trains the network within a wall-clock budget and writes both files.

- :func:`patches_denoiser`: EDM-preconditioned :class:`PatchUNet` (``D(x, sigma)``, k-diffusion convention).
- :func:`reference_patches`: the held-out patches ``(4096, 3, 16, 16)`` in [-1, 1].

Its metrics (the ``patches`` testbed) are in :mod:`covkernels.eval.scorers` (``PatchesScorer``).
"""
from __future__ import annotations

from importlib import resources

import torch
from torch import nn

from .digits import DigitsDenoiser, DigitsUNet, weight_file

EVENT_SHAPE = (3, 16, 16)
WEIGHTS = {"denoiser": "patches_unet.pt", "reference": "patches_heldout.pt"}


class PatchUNet(DigitsUNet):
    """The digits UNet (16 -> 8 -> 4, no attention) with ``channels`` input and output channels:
    ``F(x_in (B, C, 16, 16), c_noise (B,)) -> (B, C, 16, 16)``."""

    def __init__(self, width: int = 32, emb: int = 128, channels: int = 3):
        super().__init__(width, emb)
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.out[-1] = nn.Conv2d(width, channels, 3, padding=1)


class PatchesDenoiser(DigitsDenoiser):
    """``D(x, sigma)`` of the trained patches model; ``event_shape = (3, 16, 16)``; data in [-1, 1]."""

    event_shape = EVENT_SHAPE

    def make_network(self, width: int) -> nn.Module:
        return PatchUNet(width, channels=EVENT_SHAPE[0])


def _weight_file(kind: str):
    return weight_file(WEIGHTS[kind], f"patches {kind} file", "benchmarks/train_patches.py")


def _load(kind: str) -> dict:
    with resources.as_file(_weight_file(kind)) as path:
        return torch.load(path, map_location="cpu", weights_only=True)


def patches_denoiser() -> PatchesDenoiser:
    """The shipped trained denoiser, in eval mode, on the CPU, float32."""
    state = _load("denoiser")
    model = PatchesDenoiser(float(state["sigma_data_buffer"]))
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def to_unit_range(patches_uint8: torch.Tensor) -> torch.Tensor:
    """``uint8`` pixels -> float32 in [-1, 1] (same shape)."""
    return patches_uint8.to(torch.float32) / 127.5 - 1.0


def reference_patches() -> torch.Tensor:
    """The held-out real patches ``(M, 3, 16, 16)``, float32 in [-1, 1] (the photographs' unseen quarter)."""
    return to_unit_range(_load("reference")["patches"])
