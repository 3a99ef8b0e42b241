"""The trained ``digits`` model: a small UNet denoiser and a feature classifier, shipped with the package.

Data: scikit-learn's 8 x 8 handwritten digits (1797 images, part of the scikit-learn package, so no
download), upsampled bilinearly to ``1 x 16 x 16`` and scaled to [-1, 1]. ``benchmarks/train_digits.py``
trains both networks in about 25 minutes on one CPU core and writes the weight files under ``covkernels/models/weights/``.

- :func:`digits_denoiser`: EDM-preconditioned :class:`DigitsUNet` (``D(x, sigma)``, k-diffusion convention).
- :func:`digits_classifier`: a small CNN (10 classes) whose 128-d penultimate activations are the feature
  space of the learned-model metrics; the file also carries the features of the 1797 training images
  (the reference set), so evaluation needs neither scikit-learn nor the data.
"""
from __future__ import annotations

import math
from importlib import resources

import torch
from torch import nn

from .unet import EDMDenoiser

EVENT_SHAPE = (1, 16, 16)
WEIGHTS = {"denoiser": "digits_unet.pt", "classifier": "digits_classifier.pt"}


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(8, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, e):
        h = self.conv1(nn.functional.silu(self.norm1(x))) + self.emb(e)[:, :, None, None]
        return self.skip(x) + self.conv2(nn.functional.silu(self.norm2(h)))


class DigitsUNet(nn.Module):
    """UNet ``F(x_in, c_noise)`` for ``(B, 1, 16, 16)`` inputs: 16 -> 8 -> 4 resolutions, no attention.

    ``c_noise`` ``(B,)`` (EDM's ``ln(sigma) / 4``) enters through fixed Fourier features and an MLP.
    """

    def __init__(self, width: int = 32, emb: int = 128):
        super().__init__()
        w1, w2 = width, 2 * width
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(-1, 7, dtype=torch.float32))
        self.embed = nn.Sequential(nn.Linear(16, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Conv2d(1, w1, 3, padding=1)
        self.enc16, self.down8 = _ResBlock(w1, w1, emb), nn.Conv2d(w1, w2, 3, stride=2, padding=1)
        self.enc8, self.down4 = _ResBlock(w2, w2, emb), nn.Conv2d(w2, w2, 3, stride=2, padding=1)
        self.mid1, self.mid2 = _ResBlock(w2, w2, emb), _ResBlock(w2, w2, emb)
        self.up8, self.dec8 = nn.Conv2d(w2, w2, 3, padding=1), _ResBlock(2 * w2, w2, emb)
        self.up16, self.dec16 = nn.Conv2d(w2, w1, 3, padding=1), _ResBlock(2 * w1, w1, emb)
        self.out = nn.Sequential(nn.GroupNorm(8, w1), nn.SiLU(), nn.Conv2d(w1, 1, 3, padding=1))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        f = c_noise.reshape(-1, 1).to(x.dtype) * self.freqs.to(x.dtype)
        e = self.embed(torch.cat([f.sin(), f.cos()], dim=1))
        h16 = self.enc16(self.inp(x), e)
        h8 = self.enc8(self.down8(h16), e)
        h = self.mid2(self.mid1(self.down4(h8), e), e)
        h = self.dec8(torch.cat([self.up8(nn.functional.interpolate(h, scale_factor=2.0)), h8], 1), e)
        h = self.dec16(torch.cat([self.up16(nn.functional.interpolate(h, scale_factor=2.0)), h16], 1), e)
        return self.out(h)


class DigitsClassifier(nn.Module):
    """CNN ``(B, 1, 16, 16) -> (B, 10)`` logits; :meth:`features` gives the ``(B, 128)`` feature vectors."""

    def __init__(self, n_reference: int = 0):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(), nn.Flatten(), nn.Linear(64 * 16, 128), nn.SiLU())
        self.head = nn.Linear(128, 10)
        # Features of the real data set (float16 is plenty for distances; 4x smaller than the images' float32)
        self.register_buffer("reference_features", torch.zeros(n_reference, 128, dtype=torch.float16))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DigitsDenoiser(EDMDenoiser):
    """``D(x, sigma)`` of the trained digits model; ``event_shape = (1, 16, 16)``; data in [-1, 1]."""

    event_shape = EVENT_SHAPE

    def __init__(self, sigma_data: float = 0.5, width: int = 32):
        super().__init__(self.make_network(width), sigma_data=sigma_data, noise_scale=1.0)
        self.register_buffer("sigma_data_buffer", torch.tensor(float(sigma_data)))

    def make_network(self, width: int) -> nn.Module:
        """The preconditioned network ``F``; subclasses of other image shapes override it."""
        return DigitsUNet(width)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        out = super().load_state_dict(state, strict=strict, assign=assign)
        self.sigma_data = float(self.sigma_data_buffer)
        return out


def weight_file(filename: str, what: str, trainer: str):
    """A file shipped under ``covkernels/models/weights/``; a clear error naming ``trainer`` if it is missing."""
    path = resources.files("covkernels.models") / "weights" / filename
    if not path.is_file():
        raise FileNotFoundError(f"the {what} {filename} is not in this installation of covkernels; "
                                f"reinstall it, or train it with {trainer}")
    return path


def _weight_file(kind: str):
    return weight_file(WEIGHTS[kind], f"{kind} weights", "benchmarks/train_digits.py")


def digits_denoiser() -> DigitsDenoiser:
    """The shipped trained denoiser, in eval mode, on the CPU, float32."""
    with resources.as_file(_weight_file("denoiser")) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model = DigitsDenoiser(float(state["sigma_data_buffer"]))
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def digits_classifier() -> DigitsClassifier:
    """The shipped classifier with the reference features of the data set, in eval mode, on the CPU."""
    with resources.as_file(_weight_file("classifier")) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model = DigitsClassifier(state["reference_features"].shape[0])
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)
