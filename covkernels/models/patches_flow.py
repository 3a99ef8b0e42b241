"""The trained ``patches_flow`` model: the ``patches`` testbed's data retrained as a rectified flow.

Same photographs, same held-out quarter, same ``PatchUNet`` backbone as :mod:`covkernels.models.patches`, but
trained the way 2026's pixel-space flow models are (JiT's recipe): the network predicts the clean image
``x0`` from ``z = t x0 + (1 - t) eps`` with ``t = 0`` pure noise, under the velocity loss, with logit-normal
``t``. ``benchmarks/train_patches_flow.py`` trains it and writes ``patches_flow_net.pt`` (its config: the
adapter's arguments, and the state dict).

In covkernels it runs through the flow adapter, ``FlowDenoiser(net, "x0", noise_at=0)``: that is the point
of the testbed, a model of the kind users bring, sampled and scored exactly like the EDM ``patches`` model
(same reference patches, same metrics).
"""
from __future__ import annotations

from importlib import resources

import torch
from torch import nn

from ..adapters.flow import FlowDenoiser
from .digits import weight_file
from .patches import EVENT_SHAPE, PatchUNet

WEIGHT_FILE = "patches_flow_net.pt"


class PatchesFlowNet(nn.Module):
    """``net(z, t) -> x0`` for ``z = t x0 + (1 - t) eps`` (t = 0 is noise); ``t`` (B,) in [0, 1]."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.width = width
        self.unet = PatchUNet(width, channels=EVENT_SHAPE[0])

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(z, t.to(z.dtype))


def _load() -> dict:
    path = weight_file(WEIGHT_FILE, "patches_flow network file", "benchmarks/train_patches_flow.py")
    with resources.as_file(path) as p:
        return torch.load(p, map_location="cpu", weights_only=True)


def _network(saved: dict) -> PatchesFlowNet:
    net = PatchesFlowNet(int(saved["config"]["width"]))
    net.load_state_dict(saved["state_dict"])
    return net.eval().requires_grad_(False)


def patches_flow_net() -> PatchesFlowNet:
    """The shipped network (``net(z, t)``, its own convention), in eval mode, on the CPU, float32."""
    return _network(_load())


def patches_flow_denoiser() -> FlowDenoiser:
    """The shipped network as the package's denoiser ``D(x, sigma)`` (``FlowDenoiser(net, "x0",
    noise_at=0)``: the adapter arguments stored with the weights); ``event_shape = (3, 16, 16)``; data in
    [-1, 1]."""
    saved = _load()
    c = saved["config"]
    model = FlowDenoiser(_network(saved), c["prediction"], noise_at=c["noise_at"], noise_scale=c["noise_scale"],
                         time_scale=c["time_scale"])
    model.event_shape = EVENT_SHAPE
    return model.eval().requires_grad_(False)
