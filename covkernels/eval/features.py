"""Feature spaces of the reference metrics, and the on-disk cache of a reference's features.

A :class:`FeatureSpace` turns images in the model's range into ``(N, F)`` features. Two kinds of input:

- ``uint8``: RGB pixels in [0, 255] (grey images repeated to 3 channels), converted from the model's range
  exactly as PNG export converts them (``round(255 (x - lo) / (hi - lo))``), so a metric here and an
  external tool on the exported PNGs see the same pixels. The pretrained networks take this input.
- ``unit``: floats in [-1, 1] (the model's range mapped linearly), clipped: the weight-free spaces.

Spaces: ``inception`` (Inception-v3 pool3, 2048-d, the network and weights of the field's FID as
torchmetrics ships them through torch-fidelity: the TensorFlow FID network ported, images resized to
299 x 299 inside it with TensorFlow 1's bilinear resize), ``dinov2`` (DINOv2 ViT-L/14 class token, 1024-d, from ``torch.hub``
``facebookresearch/dinov2``; images resized to 224 x 224, bicubic, ImageNet-normalised, as in Stein et al.
2023, "Exposing flaws of generative model evaluation metrics"), and the weight-free ``pooled`` (4 x 4
average-pooled pixels), ``random`` (the fixed random filter bank of the patches testbed,
:class:`~covkernels.models.image_statistics.RandomFeatures`) and ``spectrum`` (per-image radial DCT power).

The pretrained spaces need the optional extra ``covkernels[metrics]``; their weights download on first use
to torch's hub cache (``TORCH_HOME``). A missing dependency raises :class:`MissingExtraError` naming the
extra. A reference's features are cached per (reference, space): in memory for the process, and on disk
under ``<cache>/<space id>/<sha256 of the converted reference>.pt`` (cache: ``--feature-cache``, else
``$COVKERNELS_CACHE/features``, else ``~/.cache/covkernels/features``), so a grid computes them once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

EXTRA = "covkernels[metrics]"
_MEMORY: dict = {}


class MissingExtraError(ImportError, RuntimeError):
    """An optional dependency of a metric is not installed (a RuntimeError too: the CLI's one-line errors)."""


def missing_extra(what: str, exc: Exception) -> MissingExtraError:
    return MissingExtraError(f"{what} needs the optional dependencies of {EXTRA} (torchmetrics, torch-fidelity): "
                             f"pip install '{EXTRA}' ({type(exc).__name__}: {exc})")


@dataclass(frozen=True)
class FeatureSpace:
    """``build(channels) -> extract``: ``extract(images) -> (N, F)`` features of ``input`` images (``"uint8"``
    or ``"unit"``, see the module docstring); ``id`` names everything the features depend on (the cache
    key); ``pretrained``: needs the extra and a download; ``batch_size``: images per extractor call."""

    name: str
    id: str
    build: Callable
    input: str
    pretrained: bool = False
    batch_size: int = 256


def _inception(channels: int):
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3

        # antialias=False: torch-fidelity's resize that reproduces TensorFlow 1's bilinear resize, as the
        # TensorFlow FID code resizes (torchmetrics' default antialiases, which moves FID on large images)
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"], antialias=False)
    except ImportError as exc:  # torchmetrics, or its torch-fidelity (a ModuleNotFoundError inside)
        raise missing_extra("the Inception-v3 features (fid, kid, precision, recall)", exc) from exc
    return net


class DinoV2Features(torch.nn.Module):
    """uint8 RGB images -> DINOv2 class-token features: [0, 1], resized to 224 x 224 (bicubic, antialiased),
    ImageNet-normalised, then ``net``. A module (the statistics are buffers), so that ``.to(device)`` moves
    the network with them."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.mean.dtype) / 255.0
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False, antialias=True)
        return self.net((x - self.mean) / self.std)


def _dinov2(channels: int):
    try:
        model = torch.hub.load("facebookresearch/dinov2", "dinov2_vitl14")
    except Exception as exc:  # offline, or the hub repository's own imports
        raise RuntimeError(f"the DINOv2 features (fd_dinov2, kid_dinov2) load facebookresearch/dinov2 "
                           f"dinov2_vitl14 through torch.hub on first use, which failed: {type(exc).__name__}: "
                           f"{exc}") from exc
    return DinoV2Features(model).eval().requires_grad_(False)


def _pooled(channels: int):
    return lambda x: torch.nn.functional.adaptive_avg_pool2d(x.float(), 4).flatten(1)


def _random(channels: int):
    from ..models.image_statistics import RandomFeatures

    return RandomFeatures(channels)


def _spectrum(channels: int):
    from ..models.image_statistics import radial_power

    # radial_power is linear in the per-image powers: the mean of these rows is the set's power spectrum
    return lambda x: torch.stack([radial_power(x[i:i + 1]) for i in range(x.shape[0])])


SPACES = {s.name: s for s in (
    FeatureSpace("inception", "inception-v3-compat-pool3-tf1resize-uint8", _inception, "uint8", pretrained=True, batch_size=64),
    FeatureSpace("dinov2", "dinov2-vitl14-cls-224-bicubic-uint8", _dinov2, "uint8", pretrained=True, batch_size=32),
    FeatureSpace("pooled", "pooled-4x4-unit", _pooled, "unit"),
    FeatureSpace("random", "random-filters-seed0-32-64-128-unit", _random, "unit"),
    FeatureSpace("spectrum", "radial-dct-power-unit", _spectrum, "unit"),
)}


def register_space(space: FeatureSpace) -> FeatureSpace:
    """Add (or replace) a feature space: any network ``build(channels)`` returns, e.g. your own encoder,
    then a :class:`~covkernels.eval.reference_scorer.ReferenceMetric` on it
    (:func:`~covkernels.eval.reference_scorer.register_metric`)."""
    if not isinstance(space, FeatureSpace):
        raise TypeError(f"space must be a FeatureSpace, got {type(space).__name__}")
    if space.input not in ("uint8", "unit"):
        raise ValueError(f"FeatureSpace.input must be 'uint8' or 'unit', got {space.input!r}")
    SPACES[space.name] = space
    return space


def to_uint8(x: torch.Tensor, data_range=(-1.0, 1.0)) -> torch.Tensor:
    """Images in ``data_range`` -> uint8 [0, 255] (the PNG export's conversion)."""
    lo, hi = (float(v) for v in data_range)
    return ((x.detach().float() - lo) * (255.0 / (hi - lo))).clamp(0, 255).round().to(torch.uint8)


def to_unit(x: torch.Tensor, data_range=(-1.0, 1.0)) -> torch.Tensor:
    """Images in ``data_range`` -> float32 in [-1, 1], clipped (what leaves the range is clipped when saved)."""
    lo, hi = (float(v) for v in data_range)
    x = x.detach().float()
    if (lo, hi) != (-1.0, 1.0):  # the identity map would still round: (x + 1) - 1 != x in float32
        x = (x - lo) * (2.0 / (hi - lo)) - 1.0
    return x.clamp(-1, 1)


class Extractor:
    """The features of one space for images in the model's ``data_range``, on ``device``; the network is
    built on first use (a pretrained one downloads its weights then)."""

    def __init__(self, space: FeatureSpace, data_range=(-1.0, 1.0), device="cpu"):
        self.space, self.data_range, self.device = space, data_range, torch.device(device)
        self._fn = None

    def fn(self, channels: int):
        if self._fn is None:
            fn = self.space.build(channels)
            self._fn = fn.to(self.device) if isinstance(fn, torch.nn.Module) else fn
        return self._fn

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"features need images (N, C, H, W), got {tuple(images.shape)}")
        if self.space.input == "uint8":
            x = to_uint8(images, self.data_range)
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        else:
            x = to_unit(images, self.data_range)
        fn, out = self.fn(x.shape[1]), []
        for i in range(0, x.shape[0], self.space.batch_size):
            out.append(fn(x[i:i + self.space.batch_size].to(self.device)).detach().cpu())
        return torch.cat(out) if out else torch.empty(0)


def default_cache_dir() -> str:
    base = os.environ.get("COVKERNELS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "covkernels")
    return os.path.join(base, "features")


def reference_features(extractor: Extractor, reference, cache_dir: str | None = None) -> torch.Tensor:
    """The features of ``reference`` (a :class:`~covkernels.eval.reference.Reference`) in ``extractor``'s
    space: from memory, else from the disk cache, else computed and written there (atomically)."""
    lo, hi = (float(v) for v in extractor.data_range)
    name = f"{reference.digest}-range{lo:g},{hi:g}"  # uint8 / unit conversions depend on the range
    key = (extractor.space.id, name)
    if key in _MEMORY:
        return _MEMORY[key]
    path = os.path.join(cache_dir or default_cache_dir(), extractor.space.id, name + ".pt")
    if os.path.exists(path):
        features = torch.load(path, map_location="cpu", weights_only=True)
    else:
        features = extractor(reference.images)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(features, path + ".tmp")
        os.replace(path + ".tmp", path)
    _MEMORY[key] = features
    return features
