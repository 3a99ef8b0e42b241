"""The scorers of the testbeds: sample sets in, ``{metric: float}`` out, one interface for all of them.

A scorer is built per seed and sample count by its testbed (``make_scorer(model, num, seed)``, see
:mod:`covkernels.eval.testbeds`) and follows :class:`Scorer`: ``scorer(x)`` scores samples ``x (num,
*event_shape)``, ``scorer.floor()`` scores reference data the same way (the noise floor of a table). A
scorer whose reference is sampled draws it from a generator seeded ``seed + REFERENCE_SEED_OFFSET``, so
every seed gets its own reference. That offset was meant to give the reference a stream of its own; torch's
CPU generator keeps only the low 32 bits of a seed, so it is in fact the stream of ``seed`` itself, the one
the sampler draws its 63-bit Philox key from (on the CPU). So the key and the reference's first draws are
functions of the same Mersenne Twister bits; the samples' noise itself comes from Philox under that key,
another generator, so no noise value is reused. Every committed number was made this way, so the offset
stays (a test pins which stream the reference comes from).

Distances in a feature space (Frechet and kernel distance of features, :func:`feature_distances`) are the
shared building block: pooled pixels (the oracles), the shipped digits classifier (digits, digits_ideal)
and fixed random conv features (patches). A standard metric on a pretrained network (FID, FD-DINOv2) is
one more feature function behind the same two numbers and the same :class:`Scorer` interface.
"""
from __future__ import annotations

import functools
import math
from typing import Protocol, runtime_checkable

import torch

from ..models.image_statistics import radial_power, spectrum_error
from . import metrics

REFERENCE_SEED_OFFSET = 1 << 32  # reference draws of seed s: generator seed s + this (= s for torch: see above)


@runtime_checkable
class Scorer(Protocol):
    """What the evaluation and ``covkernels sample`` need of a scorer: the testbed's metrics (its
    ``metrics`` keys) of a sample set, and of reference data at the same N (the floor)."""

    def __call__(self, x: torch.Tensor) -> dict[str, float]: ...

    def floor(self) -> dict[str, float]: ...


def feature_distances(fake: torch.Tensor, real: torch.Tensor, space: str) -> dict[str, float]:
    """``{"fd_<space>", "kid_<space>"}``: Frechet distance and unbiased kernel distance (KID) between the
    feature sets ``fake (N, ...)`` and ``real (M, ...)`` of one feature space."""
    return {f"fd_{space}": metrics.frechet_distance(fake, real), f"kid_{space}": metrics.kernel_distance(fake, real)}


def _pooled(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.avg_pool2d(x.float(), 4)  # 16 x 16 -> 4 x 4: 48 dims, far less biased at N ~ 1e3


@functools.lru_cache(maxsize=1)
def _digits_classifier():
    from ..models.digits import digits_classifier

    return digits_classifier()


class OracleScorer:
    """Metrics of the analytic oracles (``gmm``, ``gaussian``) against ``num`` exact samples drawn for this
    seed (a second exact draw of the same size is the floor); ``w2`` where the model has ``sqrt_cov``."""

    def __init__(self, model, num: int, seed: int):
        self.model = model
        gen = torch.Generator().manual_seed(seed + REFERENCE_SEED_OFFSET)
        self.exact, self.exact2 = model.sample(num, generator=gen), model.sample(num, generator=gen)
        self.exact_pooled = _pooled(self.exact)
        self.exact_power = radial_power(self.exact)
        self.logp_data = float(model.log_prob(self.exact).mean())

    def __call__(self, x: torch.Tensor) -> dict:
        d = math.prod(self.model.event_shape)
        out = {**feature_distances(_pooled(x), self.exact_pooled, "pooled"),
               "fd_pixels": metrics.frechet_distance(x, self.exact),
               "loglik_gap": (self.logp_data - float(self.model.log_prob(x).mean())) / d,
               "spectrum_error": spectrum_error(x, self.exact_power)}
        if hasattr(self.model, "sqrt_cov"):
            out["w2"] = metrics.gaussian_w2(x, self.model.mean, self.model.sqrt_cov)
        return out

    def floor(self) -> dict:
        return self(self.exact2)


class DigitsScorer:
    """Metrics of the trained digits model in the shipped classifier's features against the 1797 real digits
    (a fixed reference: every seed scores against the same set)."""

    def __init__(self, model=None, num: int = 0, seed: int = 0):
        self.classifier = _digits_classifier()
        self.real = self.classifier.reference_features.float()

    @staticmethod
    def _metrics(fake_features, real_features) -> dict:
        precision, recall = metrics.precision_recall(real_features, fake_features)
        return {**feature_distances(fake_features, real_features, "features"), "precision": precision,
                "recall": recall}

    def __call__(self, x: torch.Tensor) -> dict:
        return self._metrics(self.classifier.features(x.clamp(-1, 1)), self.real)

    def floor(self) -> dict:
        """One half of the real digits against the other (a fixed split; ~900 samples, not the cells' N)."""
        idx = torch.randperm(self.real.shape[0], generator=torch.Generator().manual_seed(7))
        half = self.real.shape[0] // 2
        return self._metrics(self.real[idx[:half]], self.real[idx[half:]])


class DigitsIdealScorer:
    """Metrics of samples ``x (num, 1, 16, 16)`` of the ``digits_ideal`` oracle ``model``.

    - ``fd_features`` / ``kid_features``: the ``digits`` testbed's metrics (the shipped classifier's
      128-d features against the 1797 real digits), so the two testbeds read on one scale.
    - ``fd_pixels``: Frechet distance to ``num`` exact samples drawn for this seed (pixel space).
    - ``loglik_gap``: ``(mean log p(exact) - mean log p(x)) / 256`` under the exact density. With a small
      ``tau`` it is very sensitive: a sample off its digit by 0.01 per pixel costs ``0.01^2 / (2 tau^2)``
      nats/dim (0.056 at tau = 0.03); samples collapsed onto the digits themselves score below 0.
    The floor is a second exact draw of ``num`` samples scored the same way.
    """

    def __init__(self, model, num: int, seed: int):
        from ..models.digits_ideal import DigitsIdeal

        if not isinstance(model, DigitsIdeal):
            raise TypeError(f"model must be a DigitsIdeal, got {type(model).__name__}")
        if isinstance(num, bool) or not isinstance(num, int) or num < 2:
            raise ValueError(f"num must be an int >= 2, got {num!r}")
        self.model, self.classifier = model, _digits_classifier()
        gen = torch.Generator().manual_seed(seed + REFERENCE_SEED_OFFSET)
        self.exact, self.exact2 = model.sample(num, gen), model.sample(num, gen)
        self.real = self.classifier.reference_features.float()
        self.logp_exact = float(model.log_prob(self.exact).mean())

    def __call__(self, x: torch.Tensor) -> dict:
        x = x.detach().cpu()
        f = self.classifier.features(x.clamp(-1, 1))
        return {**feature_distances(f, self.real, "features"),
                "fd_pixels": metrics.frechet_distance(x, self.exact),
                "loglik_gap": (self.logp_exact - float(self.model.log_prob(x).mean())) / x[0].numel()}

    def floor(self) -> dict:
        return self(self.exact2)


class PatchesScorer:
    """Metrics of samples ``x (num, 3, 16, 16)`` of the ``patches`` model against ``num`` held-out real patches
    chosen for this seed.

    The photographs' held-out quarter is unseen in training, so the reference is the data distribution, not
    the network's memory. Metrics (why these):

    - ``fd_features`` / ``kid_features``: Frechet and unbiased kernel distance in the 224 features of a
      fixed, seeded random conv net (:class:`~covkernels.models.image_statistics.RandomFeatures`): the
      texture energy of random filters at 3 scales. No pretrained network ships with the package, and the
      random net is defensible because it ranks known-bad samples worse (blurred and noised held-out
      patches; see the tests and the numbers in docs/testbeds.md).
    - ``spectrum_error``: per-frequency power error (radially averaged DCT spectrum, log scale), the
      direct measure of what the covariance samplers claim to fix: missing fine detail (power too low at
      high frequency) or leftover noise (too high).
    - ``fd_pooled``: Frechet distance of 4x4-pooled pixels (48 dims, little bias): colour and layout.
    The floor is a second, disjoint set of ``num`` held-out patches; ``2 num`` may not exceed the 4096 shipped.
    ``model`` is not needed (the reference is real data).
    """

    def __init__(self, model=None, num: int = 1024, seed: int = 0):
        from ..models.image_statistics import RandomFeatures
        from ..models.patches import EVENT_SHAPE, reference_patches

        pool = reference_patches()
        if isinstance(num, bool) or not isinstance(num, int) or not 2 <= num <= pool.shape[0] // 2:
            raise ValueError(f"num must be an int in [2, {pool.shape[0] // 2}] (two disjoint sets of the "
                             f"{pool.shape[0]} held-out patches), got {num!r}")
        gen = torch.Generator().manual_seed(seed + REFERENCE_SEED_OFFSET)
        perm = torch.randperm(pool.shape[0], generator=gen)
        self.indices, self.indices2 = perm[:num], perm[num:2 * num]  # into the shipped pool; disjoint
        self.reference, self.reference2 = pool[self.indices], pool[self.indices2]
        self.event_shape, self.features = EVENT_SHAPE, RandomFeatures(EVENT_SHAPE[0])
        self.ref_features = self.features(self.reference)
        self.ref_pooled = torch.nn.functional.avg_pool2d(self.reference, 4)
        self.ref_power = radial_power(self.reference)

    def __call__(self, x: torch.Tensor) -> dict:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x must be (N, 3, 16, 16), got {tuple(x.shape)}")
        x = x.detach().cpu().float().clamp(-1, 1)  # images: what leaves the range is clipped when saved
        return {**feature_distances(self.features(x), self.ref_features, "features"),
                "spectrum_error": spectrum_error(x, self.ref_power),
                "fd_pooled": metrics.frechet_distance(torch.nn.functional.avg_pool2d(x, 4), self.ref_pooled)}

    def floor(self) -> dict:
        return self(self.reference2)


class LatentPatchesScorer:
    """The ``patches`` metrics of latent samples ``z (num, 4, 8, 8)`` of the ``patches_latent`` model: the
    model's autoencoder decodes them to ``3 x 16 x 16`` images, scored by :class:`PatchesScorer` against the
    same held-out patches (so the numbers compare with the pixel-space ``patches`` testbed's). The floor is
    real against real; what the autoencoder alone costs (decoded latents of real patches) is in
    ``benchmarks/results/train_patches_latent.json`` and docs/testbeds.md."""

    def __init__(self, model, num: int = 1024, seed: int = 0):
        if not callable(getattr(model, "decode", None)):
            raise TypeError(f"the patches_latent scorer needs the model's decoder (model.decode), got "
                            f"{type(model).__name__}")
        self.model, self.patches = model, PatchesScorer(None, num, seed)
        self.event_shape = tuple(model.event_shape)

    def __call__(self, z: torch.Tensor) -> dict:
        if z.dim() != 4 or tuple(z.shape[1:]) != self.event_shape:
            raise ValueError(f"z must be latents (N, {', '.join(map(str, self.event_shape))}), got {tuple(z.shape)}")
        return self.patches(self.model.decode(z.detach().cpu().float()))

    def floor(self) -> dict:
        return self.patches.floor()
