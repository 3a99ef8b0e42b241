"""The trained ``patches`` model: an EDM denoiser of ``3 x 16 x 16`` RGB patches of photographs.

Data: five colour photographs that ship inside the scikit-image wheel (astronaut, chelsea, coffee, rocket,
the left motorcycle view), each averaged down 2 x 2 and scaled to [-1, 1]. The right-most quarter of every
photograph is held out: the network never sees it, and 4096 patches cut from it (stored as ``uint8``) are
the reference set of the metrics, so scoring needs neither scikit-image nor the photographs.
``benchmarks/train_patches.py`` trains the network within a wall-clock budget and writes both files.

- :func:`patches_denoiser`: EDM-preconditioned :class:`PatchUNet` (``D(x, sigma)``, k-diffusion convention).
- :func:`reference_patches`: the held-out patches ``(4096, 3, 16, 16)`` in [-1, 1].
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


# ---- metrics (the evaluation's testbed registry reads make_scorer, METRICS, MAIN_METRIC, FLOOR_LABEL) ----

# The reference stream of seed s is s + this: covkernels.testbeds.REFERENCE_SEED_OFFSET (a test checks they
# agree; not imported, so the models never import the evaluation layer).
REFERENCE_SEED_OFFSET = 1 << 32
METRICS = {
    "fd_features": ("Frechet distance to held-out photo patches, fixed random conv features", True),
    "kid_features": ("kernel distance (unbiased MMD^2, cubic kernel) to held-out patches, random conv features",
                     True),
    "spectrum_error": ("radial DCT power-spectrum error vs held-out patches, mean |log power ratio|", True),
    "fd_pooled": ("Frechet distance to held-out patches, 4x4 average-pooled pixels", True),
}
MAIN_METRIC = "fd_features"
FLOOR_LABEL = "held-out patches vs held-out patches"


class PatchesScorer:
    """Metrics of samples ``x (num, 3, 16, 16)`` against ``num`` held-out real patches chosen for this seed.

    The photographs' held-out quarter is unseen in training, so the reference is the data distribution, not
    the network's memory. Metrics (why these):

    - ``fd_features`` / ``kid_features``: Frechet and unbiased kernel distance in the 224 features of a
      fixed, seeded random conv net (:class:`~covkernels.models.image_statistics.RandomFeatures`): the
      texture energy of random filters at 3 scales. No pretrained network ships with the package, and the
      random net is defensible because it ranks known-bad samples worse (blurred and noised held-out
      patches; see the tests and the README numbers).
    - ``spectrum_error``: per-frequency power error (radially averaged DCT spectrum, log scale), the
      direct measure of what the covariance samplers claim to fix: missing fine detail (power too low at
      high frequency) or leftover noise (too high).
    - ``fd_pooled``: Frechet distance of 4x4-pooled pixels (48 dims, little bias): colour and layout.
    The floor is a second, disjoint set of ``num`` held-out patches; ``2 num`` may not exceed the 4096 shipped.
    """

    def __init__(self, model=None, num: int = 1024, seed: int = 0):
        from .. import metrics
        from .image_statistics import RandomFeatures, radial_power

        pool = reference_patches()
        if isinstance(num, bool) or not isinstance(num, int) or not 2 <= num <= pool.shape[0] // 2:
            raise ValueError(f"num must be an int in [2, {pool.shape[0] // 2}] (two disjoint sets of the "
                             f"{pool.shape[0]} held-out patches), got {num!r}")
        gen = torch.Generator().manual_seed(seed + REFERENCE_SEED_OFFSET)
        perm = torch.randperm(pool.shape[0], generator=gen)
        self.indices, self.indices2 = perm[:num], perm[num:2 * num]  # into the shipped pool; disjoint
        self.reference, self.reference2 = pool[self.indices], pool[self.indices2]
        self.m, self.features = metrics, RandomFeatures(EVENT_SHAPE[0])
        self.ref_features = self.features(self.reference)
        self.ref_pooled = torch.nn.functional.avg_pool2d(self.reference, 4)
        self.ref_power = radial_power(self.reference)

    def __call__(self, x: torch.Tensor) -> dict:
        from .image_statistics import spectrum_error

        if x.dim() != 4 or tuple(x.shape[1:]) != EVENT_SHAPE:
            raise ValueError(f"x must be (N, 3, 16, 16), got {tuple(x.shape)}")
        x = x.detach().cpu().float().clamp(-1, 1)  # images: what leaves the range is clipped when saved
        f = self.features(x)
        return {"fd_features": self.m.frechet_distance(f, self.ref_features),
                "kid_features": self.m.kernel_distance(f, self.ref_features),
                "spectrum_error": spectrum_error(x, self.ref_power),
                "fd_pooled": self.m.frechet_distance(torch.nn.functional.avg_pool2d(x, 4), self.ref_pooled)}

    def floor(self) -> dict:
        return self(self.reference2)


def make_scorer(model, num: int, seed: int) -> PatchesScorer:
    """The scorer of ``num`` samples of seed ``seed`` (``model`` is not needed: the reference is real data)."""
    return PatchesScorer(model, num, seed)
