"""Metrics against reference data from disk (``--reference``, ``--metrics``): the :class:`Scorer` of a model
that has no testbed of its own, and of a testbed's model compared with data you bring.

Every metric is a statistic of two feature sets in one :mod:`feature space <covkernels.eval.features>`,
the samples' and the reference's (:data:`METRICS`):

- the field's numbers, through torchmetrics (the ``metrics`` extra): ``fid`` and ``kid`` on Inception-v3
  pool3 features, ``fd_dinov2`` and ``kid_dinov2`` on DINOv2 features. The features are computed here
  (so a reference's are cached) and handed to torchmetrics' own ``FrechetInceptionDistance`` /
  ``KernelInceptionDistance`` through an identity feature module, so the number is torchmetrics' on those
  features, whatever the network (a test checks it against torchmetrics called directly). KID: 100 random
  subsets of ``min(1000, N, M)``, drawn from a fixed seed, so every sampler and seed meets the same subsets.
  ``precision`` / ``recall``: k-NN (k = 3) coverage of Inception features (Kynkaanniemi et al. 2019 use
  VGG-16 features; these are the FID network's), against N reference images drawn per seed.
- weight-free, no extra, in CI: ``fd_random`` / ``kid_random`` (the patches testbed's random filter bank),
  ``fd_pooled`` / ``kid_pooled`` (4 x 4 pooled pixels), ``spectrum_error`` (radial DCT power, log scale).

The samples are compared with the whole reference (M >= N images, as FID is computed against a reference
set's statistics). The floor, where M >= 2N: N reference images drawn per seed against the other M - N
(the same metric of real data at the same N; a slightly smaller reference than the samples meet).
"""
from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from . import metrics as distances
from .features import SPACES, Extractor, missing_extra, reference_features
from .scorers import REFERENCE_SEED_OFFSET

KID_SUBSETS, KID_SUBSET_SIZE, KID_SEED = 100, 1000, 0
DEFAULT_METRICS = ("fd_random", "kid_random", "fd_pooled", "spectrum_error")


class _Identity(torch.nn.Module):
    """The feature module handed to torchmetrics: the features were computed already."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _torchmetrics(name: str):
    try:
        from torchmetrics.image import fid, kid
    except ImportError as exc:
        raise missing_extra("this metric", exc) from exc
    return {"fid": fid.FrechetInceptionDistance, "kid": kid.KernelInceptionDistance}[name]


def torchmetrics_fd(fake: torch.Tensor, real: torch.Tensor) -> float:
    """torchmetrics' Frechet distance (its FID computation) between two feature sets."""
    metric = _torchmetrics("fid")(feature=_Identity(fake.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def torchmetrics_kid(fake: torch.Tensor, real: torch.Tensor) -> float:
    """torchmetrics' KID (mean over :data:`KID_SUBSETS` subsets) between two feature sets, subsets seeded."""
    size = min(KID_SUBSET_SIZE, fake.shape[0], real.shape[0])
    with warnings.catch_warnings():  # its note that KID keeps every feature in memory: these are in memory
        warnings.simplefilter("ignore", UserWarning)
        metric = _torchmetrics("kid")(feature=_Identity(fake.shape[1]), subsets=KID_SUBSETS, subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(KID_SEED)
        return float(metric.compute()[0])


def _spectrum_error(fake: torch.Tensor, real: torch.Tensor) -> float:
    log_fake, log_real = (f.double().mean(0).clamp_min(1e-30).log() for f in (fake, real))
    return float((log_fake - log_real).abs().mean())


def _precision(fake, real) -> float:
    return distances.precision_recall(real, fake)[0]


def _recall(fake, real) -> float:
    return distances.precision_recall(real, fake)[1]


@dataclass(frozen=True)
class ReferenceMetric:
    """``statistic(fake features, real features) -> float`` in feature space ``space``; ``subset``: compared with
    N reference images (drawn per seed) rather than all M; ``torchmetrics``: computed by torchmetrics."""

    title: str
    lower_is_better: bool | None
    space: str
    statistic: Callable
    subset: bool = False
    torchmetrics: bool = False


METRICS = {
    "fid": ReferenceMetric("FID: Frechet distance of Inception-v3 pool3 features (torchmetrics)", True, "inception",
                           torchmetrics_fd, torchmetrics=True),
    "kid": ReferenceMetric("KID: kernel distance of Inception-v3 pool3 features (torchmetrics, 100 subsets)", True,
                           "inception", torchmetrics_kid, torchmetrics=True),
    "precision": ReferenceMetric("precision (k-NN, k = 3, Inception-v3 features)", False, "inception", _precision,
                                 subset=True),
    "recall": ReferenceMetric("recall (k-NN, k = 3, Inception-v3 features)", False, "inception", _recall, subset=True),
    "fd_dinov2": ReferenceMetric("FD-DINOv2: Frechet distance of DINOv2 ViT-L/14 features (torchmetrics)", True,
                                 "dinov2", torchmetrics_fd, torchmetrics=True),
    "kid_dinov2": ReferenceMetric("KID of DINOv2 ViT-L/14 features (torchmetrics, 100 subsets)", True, "dinov2",
                                  torchmetrics_kid, torchmetrics=True),
    "fd_random": ReferenceMetric("Frechet distance of fixed random conv features (weight-free)", True, "random",
                                 distances.frechet_distance),
    "kid_random": ReferenceMetric("kernel distance (unbiased MMD^2, cubic kernel) of fixed random conv features",
                                  True, "random", distances.kernel_distance),
    "fd_pooled": ReferenceMetric("Frechet distance of 4x4 average-pooled pixels", True, "pooled",
                                 distances.frechet_distance),
    "kid_pooled": ReferenceMetric("kernel distance (unbiased MMD^2, cubic kernel) of 4x4 average-pooled pixels", True,
                                  "pooled", distances.kernel_distance),
    "spectrum_error": ReferenceMetric("radial DCT power-spectrum error vs the reference, mean |log power ratio|",
                                      True, "spectrum", _spectrum_error),
}


def register_metric(name: str, metric: ReferenceMetric) -> ReferenceMetric:
    """Add (or replace) a metric ``name`` for ``--metrics`` (its feature space registered first)."""
    if not isinstance(metric, ReferenceMetric):
        raise TypeError(f"metric must be a ReferenceMetric, got {type(metric).__name__}")
    if metric.space not in SPACES:
        raise ValueError(f"metric {name!r}: no feature space {metric.space!r}; registered: {list(SPACES)}")
    METRICS[name] = metric
    return metric


def check_metrics(names) -> tuple[str, ...]:
    """``names`` as a tuple of known metrics, their optional dependencies importable; ValueError naming
    ``--metrics`` for an unknown one, :class:`~covkernels.eval.features.MissingExtraError` for a missing extra."""
    names = tuple(dict.fromkeys(DEFAULT_METRICS if names is None else names))
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ValueError(f"--metrics: unknown {unknown}; choose from {list(METRICS)}")
    for n in names:
        m = METRICS[n]
        try:
            for needed in ("torchmetrics",) * m.torchmetrics + ("torch_fidelity",) * (m.space == "inception"):
                importlib.import_module(needed)
        except ImportError as exc:
            raise missing_extra(f"metric {n!r}", exc) from exc
    return names


class ReferenceScorers:
    """A testbed's ``make_scorer`` for a reference: ``(model, num, seed) -> ReferenceScorer``. Holds the
    feature extractors (a network is built once) and the reference's features (cached, see
    :func:`~covkernels.eval.features.reference_features`)."""

    def __init__(self, reference, metric_names, *, data_range=(-1.0, 1.0), cache_dir=None, device="cpu"):
        self.reference, self.names = reference, check_metrics(metric_names)
        spaces = dict.fromkeys(METRICS[n].space for n in self.names)
        self.extractors = {s: Extractor(SPACES[s], data_range, device) for s in spaces}
        self.cache_dir, self._real = cache_dir, {}

    def real(self, space: str) -> torch.Tensor:
        if space not in self._real:
            self._real[space] = reference_features(self.extractors[space], self.reference, self.cache_dir)
        return self._real[space]

    def __call__(self, model, num: int, seed: int) -> "ReferenceScorer":
        return ReferenceScorer(self, num, seed)


class ReferenceScorer:
    """Scores ``num`` samples of one seed against the reference (a :class:`~covkernels.eval.scorers.Scorer`)."""

    def __init__(self, scorers: ReferenceScorers, num: int, seed: int):
        count = scorers.reference.count
        if isinstance(num, bool) or not isinstance(num, int) or num < 2:
            raise ValueError(f"num must be an int >= 2, got {num!r}")
        if count < num:
            raise ValueError(f"--reference {scorers.reference.path} holds {count} images, fewer than the {num} "
                             f"samples they are compared with")
        self.scorers, self.num = scorers, num
        gen = torch.Generator().manual_seed(seed + REFERENCE_SEED_OFFSET)
        perm = torch.randperm(count, generator=gen)
        self.all, self.subset = torch.arange(count), perm[:num]
        self.held_out, self.rest = (perm[:num], perm[num:]) if count >= 2 * num else (None, None)

    def _score(self, fake: dict, reals: torch.Tensor, subset: torch.Tensor) -> dict:
        out = {}
        for name in self.scorers.names:
            m = METRICS[name]
            real = self.scorers.real(m.space)[subset if m.subset else reals]
            out[name] = float(m.statistic(fake[m.space], real))
        return out

    def __call__(self, x: torch.Tensor) -> dict:
        shape = tuple(self.scorers.reference.images.shape[1:])
        if x.dim() != 4 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"x must be (N, {', '.join(map(str, shape))}), got {tuple(x.shape)}")
        fake = {s: e(x.detach().cpu()) for s, e in self.scorers.extractors.items()}
        return self._score(fake, self.all, self.subset)

    def floor(self) -> dict:
        """N held-out reference images against the other M - N; ``{}`` where M < 2N (no floor)."""
        if self.held_out is None:
            return {}
        fake = {s: self.scorers.real(s)[self.held_out] for s in self.scorers.extractors}
        return self._score(fake, self.rest, self.rest[:self.num])
