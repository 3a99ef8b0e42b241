"""The trained ``patches_latent`` model: a latent diffusion model of the ``patches`` photographs, in miniature.

Stable Diffusion's recipe at the scale of this package: an autoencoder maps the ``3 x 16 x 16`` photo patches
to ``4 x 8 x 8`` latents (a 3x compression; Stable Diffusion's is 48x at 512 px), the latents are scaled by
one fixed factor (std 0.86 over the training latents), and an EDM denoiser is trained in that latent space. Samplers run on latents; the
``patches_latent`` testbed decodes the samples and scores them with the ``patches`` metrics against the same
held-out patches (:class:`~covkernels.eval.scorers.LatentPatchesScorer`). It exists to test the claim that
structured (covariance) noise helps pixel-space models but not latent ones (docs/claims.md, claim 5).

``benchmarks/train_patches_latent.py`` trains the autoencoder, then the denoiser, on the ``patches``
training quarter, and writes ``patches_latent.pt`` (one state dict: the denoiser with its autoencoder).

- :func:`patches_latent_denoiser`: ``D(z, sigma)`` on latents ``(B, 4, 8, 8)``, with ``decode(z)`` and
  ``encode(x)`` to and from ``(B, 3, 16, 16)`` images in [-1, 1].
"""
from __future__ import annotations

from importlib import resources

import torch
from torch import nn

from .digits import DigitsDenoiser, weight_file
from .patches import PatchUNet

IMAGE_SHAPE = (3, 16, 16)
EVENT_SHAPE = (4, 8, 8)
WEIGHT_FILE = "patches_latent.pt"


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1)


class PatchAutoencoder(nn.Module):
    """A plain convolutional autoencoder ``(B, 3, 16, 16) <-> (B, 4, 8, 8)``; ``latent_scale`` (set after
    training, one fixed factor like Stable Diffusion's) makes the latents of the first 8192 training patches
    unit-variance."""

    def __init__(self, width: int = 32, latent: int = EVENT_SHAPE[0]):
        super().__init__()
        act = nn.SiLU
        self.encoder = nn.Sequential(_conv(IMAGE_SHAPE[0], width), act(), _conv(width, width), act(),
                                     nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), act(),
                                     _conv(2 * width, 2 * width), act(), _conv(2 * width, latent))
        self.decoder = nn.Sequential(_conv(latent, 2 * width), act(), _conv(2 * width, 2 * width), act(),
                                     nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), act(),
                                     _conv(width, width), act(), _conv(width, IMAGE_SHAPE[0]))
        self.register_buffer("latent_scale", torch.tensor(1.0))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x) * self.latent_scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z / self.latent_scale)


class PatchesLatentDenoiser(DigitsDenoiser):
    """``D(z, sigma)`` of the latent model (the patches UNet with 4 channels, on 8 x 8 latents);
    ``event_shape = (4, 8, 8)``. Carries its autoencoder: :meth:`decode` / :meth:`encode`."""

    event_shape = EVENT_SHAPE

    def __init__(self, sigma_data: float = 1.0, width: int = 32, autoencoder: PatchAutoencoder | None = None):
        super().__init__(sigma_data, width)
        self.autoencoder = PatchAutoencoder() if autoencoder is None else autoencoder

    def make_network(self, width: int) -> nn.Module:
        return PatchUNet(width, channels=EVENT_SHAPE[0])

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch: int = 1024) -> torch.Tensor:
        """Images ``(B, 3, 16, 16)`` of latents ``z (B, 4, 8, 8)``, in chunks of ``batch``."""
        device, z = z.device, z.to(self.autoencoder.latent_scale)  # the model's device and dtype
        if not len(z):
            return z.new_zeros(0, *IMAGE_SHAPE, device=device)
        return torch.cat([self.autoencoder.decode(c) for c in z.split(batch)]).to(device)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
        """Latents ``(B, 4, 8, 8)`` of images ``x (B, 3, 16, 16)`` in [-1, 1], in chunks of ``batch``."""
        device, x = x.device, x.to(self.autoencoder.latent_scale)
        return torch.cat([self.autoencoder.encode(c) for c in x.split(batch)]).to(device)


def patches_latent_denoiser() -> PatchesLatentDenoiser:
    """The shipped latent model (denoiser and autoencoder), in eval mode, on the CPU, float32."""
    path = weight_file(WEIGHT_FILE, "patches_latent weights", "benchmarks/train_patches_latent.py")
    with resources.as_file(path) as p:
        state = torch.load(p, map_location="cpu", weights_only=True)
    model = PatchesLatentDenoiser(float(state["sigma_data_buffer"]))
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)
