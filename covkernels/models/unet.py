"""EDM-preconditioned denoisers around UNet backbones, and a seeded random diffusers UNet for tests.

``EDMDenoiser(net)`` turns a network ``net(x, c_noise, **extra) -> F`` into the sigma-space denoiser
``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`` of Karras et al. (2022) with ``sigma_data``
(``c_in = 1/sqrt(s^2 + sd^2)``, ``c_skip = sd^2/(s^2 + sd^2)``, ``c_out = s sd/sqrt(s^2 + sd^2)``,
``c_noise = ln(s)/4``, scaled by ``noise_scale`` for backbones with a timestep embedding).
"""
from __future__ import annotations

import torch


class EDMDenoiser(torch.nn.Module):
    def __init__(self, net: torch.nn.Module, sigma_data: float = 0.5, noise_scale: float = 250.0,
                 output_attr: str | None = None):
        super().__init__()
        self.net, self.sigma_data, self.noise_scale, self.output_attr = net, sigma_data, noise_scale, output_attr

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args) -> torch.Tensor:
        s = sigma.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        sd2 = self.sigma_data ** 2
        c_in = 1 / (s ** 2 + sd2).sqrt()
        c_skip = sd2 / (s ** 2 + sd2)
        c_out = s * self.sigma_data / (s ** 2 + sd2).sqrt()
        c_noise = sigma.to(x.dtype).log() / 4 * self.noise_scale
        out = self.net(x * c_in, c_noise, **extra_args)
        if self.output_attr is not None:
            out = getattr(out, self.output_attr)
        return c_skip * x + c_out * out


def random_diffusers_unet(size: int = 32, channels: tuple = (16, 32), num_classes: int | None = None,
                          seed: int = 0, attention: bool = True) -> EDMDenoiser:
    """A randomly initialised (seeded, no download) diffusers ``UNet2DModel`` with attention blocks, as an
    EDM denoiser: a real architecture for JVP tests and benchmarks. Needs ``diffusers``."""
    try:
        from diffusers import UNet2DModel
    except ImportError as exc:  # pragma: no cover - exercised only without the test extra
        raise ImportError("random_diffusers_unet needs diffusers (pip install diffusers)") from exc
    n = len(channels)
    down = tuple("AttnDownBlock2D" if attention and i == n - 1 else "DownBlock2D" for i in range(n))
    up = tuple("AttnUpBlock2D" if attention and i == 0 else "UpBlock2D" for i in range(n))
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # diffusers initialises from the global RNG; restored right after
    try:
        unet = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, block_out_channels=tuple(channels),
                           layers_per_block=1, down_block_types=down, up_block_types=up,
                           norm_num_groups=min(8, channels[0]), attention_head_dim=8,
                           num_class_embeds=num_classes).eval()
    finally:
        torch.random.set_rng_state(state)
    return EDMDenoiser(_ClassLabelUNet(unet), output_attr="sample")


class _ClassLabelUNet(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, class_labels=None):
        return self.unet(x, t, class_labels=class_labels)
