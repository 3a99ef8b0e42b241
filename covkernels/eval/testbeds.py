"""The evaluation testbeds: one registry of models with their metrics, read by :mod:`covkernels.eval`.

A :class:`Testbed` has a ``name``, a loader ``load() -> model`` (a denoiser with ``event_shape``), a
``make_scorer(model, num, seed) -> scorer`` (a :class:`~covkernels.eval.scorers.Scorer`: ``scorer(x) ->
{metric: float}`` for samples ``x (num, *event_shape)`` and ``scorer.floor() -> {metric: float}``, the same
metrics of reference data: the noise floor of a table), ``metrics = {metric: (title, lower_is_better or
None)}`` (None: no direction, e.g. a signed gap whose ideal is 0; such metrics get intervals but no paired
verdict) and a ``main_metric`` (plots, schedule tuning, the headline tables).

The evaluation builds one scorer per seed: ``seed`` is the seed of that cell's samples, and a scorer whose
reference is sampled draws it from a generator seeded ``seed + REFERENCE_SEED_OFFSET`` (which torch reduces
to ``seed``; the samples' noise is Philox under a key drawn from that stream: :mod:`covkernels.eval.scorers`).

Built in: ``gmm`` and ``gaussian`` (the 3 x 16 x 16 analytic oracles: Frechet distance and unbiased kernel
distance to exact samples, the log-likelihood gap under the true density, and for the Gaussian the exact
W2^2), ``digits`` (the trained UNet: Frechet / kernel distance and k-NN precision / recall in the shipped
classifier's features against the 1797 real digits) and, where their model modules
``covkernels.models.<name>`` are present, ``digits_ideal``, ``patches``, ``patches_flow`` and
``patches_latent`` (a latent model: its samples are decoded before scoring) (scorers in
:mod:`covkernels.eval.scorers`; models from ``covkernels.models.get_model(name)``).
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch

from .scorers import REFERENCE_SEED_OFFSET, DigitsIdealScorer, DigitsScorer, LatentPatchesScorer, OracleScorer, \
    PatchesScorer

__all__ = ["REFERENCE_SEED_OFFSET", "OPTIONAL", "DIGITS_IDEAL_METRICS", "PATCHES_METRICS", "Testbed", "register",
           "testbed_names", "get_testbed", "all_metrics", "load_model", "make_scorer"]


@dataclass(frozen=True)
class Testbed:
    name: str
    load: Callable[[], torch.nn.Module]
    make_scorer: Callable
    metrics: dict
    main_metric: str
    floor_label: str = "reference vs reference"
    scores_model: bool = True  # the scorer reads the model (the evaluation keeps a CPU copy for it)

    def __post_init__(self):
        if self.main_metric not in self.metrics or self.metrics[self.main_metric][1] is None:
            raise ValueError(f"testbed {self.name!r}: main_metric {self.main_metric!r} must be one of its metrics "
                             f"with a direction, got metrics {list(self.metrics)}")


_REGISTRY: dict[str, Testbed] = {}


def register(testbed: Testbed) -> Testbed:
    """Add (or replace) a testbed under its name."""
    if not isinstance(testbed, Testbed):
        raise TypeError(f"testbed must be a Testbed, got {type(testbed).__name__}")
    _REGISTRY[testbed.name] = testbed
    return testbed


def testbed_names() -> tuple[str, ...]:
    """Registered testbeds plus the optional ones whose model module is present."""
    names = list(_REGISTRY)
    for name in OPTIONAL:
        if name not in _REGISTRY and importlib.util.find_spec(f"covkernels.models.{name}") is not None:
            names.append(name)
    return tuple(names)


def get_testbed(name: str) -> Testbed:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in OPTIONAL and name in testbed_names():
        from ..models import get_model

        scorer, metrics, main, floor_label = OPTIONAL[name]
        return register(Testbed(name, functools.partial(get_model, name), scorer, dict(metrics), main, floor_label))
    raise ValueError(f"model must be one of {testbed_names()}, got {name!r}")


def all_metrics() -> dict:
    """``{metric: (title, lower_is_better)}`` of every registered testbed (the first title wins)."""
    out: dict = {}
    for name in testbed_names():
        for metric, spec in get_testbed(name).metrics.items():
            out.setdefault(metric, spec)
    return out


def load_model(name: str) -> torch.nn.Module:
    """The model of a registered testbed."""
    return get_testbed(name).load()


def make_scorer(name: str, model, num: int, seed: int):
    """The scorer of testbed ``name`` for ``num`` samples of seed ``seed``."""
    return get_testbed(name).make_scorer(model, num, seed)


def _oracle_loader(name: str):
    def load():
        from ..models import get_model

        return get_model(name, size=16)
    return load


def _digits_loader():
    from ..models import get_model

    return get_model("digits")


_ORACLE_METRICS = {
    "fd_pooled": ("Frechet distance to exact samples, 4x4 average-pooled pixels", True),
    "kid_pooled": ("kernel distance (unbiased MMD^2, cubic kernel) to exact samples, 4x4 pooled pixels", True),
    "fd_pixels": ("Frechet distance to exact samples, pixel space", True),
    "loglik_gap": ("log-likelihood gap under the true density, nats/dim (0 is ideal; > 0: too spread)", None),
    # The pooled FD cannot see within-block texture (a blurred sampler loses none of it), and the pixel FD /
    # W2 at N ~ d reward under-dispersion (their bias grows with the samples' spread): this one compares the
    # per-frequency power on a log scale, so a collapsed fine-scale variance shows, at ~1/sqrt(N) noise.
    "spectrum_error": ("radial DCT power spectrum error vs exact samples, mean |ln P - ln P_ref| over "
                       "frequencies", True),
}
_DIGITS_FEATURE_METRICS = {
    "fd_features": ("Frechet distance to the real digits, classifier features", True),
    "kid_features": ("kernel distance (unbiased MMD^2, cubic kernel) to the real digits, classifier features", True),
}
DIGITS_IDEAL_METRICS = {
    **_DIGITS_FEATURE_METRICS,
    "fd_pixels": ("Frechet distance to exact samples, pixel space", True),
    "loglik_gap": ("exact log-likelihood gap, nats/dim (0 is ideal; > 0: off the data, < 0: too close to it)",
                   None),
}
PATCHES_METRICS = {
    "fd_features": ("Frechet distance to held-out photo patches, fixed random conv features", True),
    "kid_features": ("kernel distance (unbiased MMD^2, cubic kernel) to held-out patches, random conv features",
                     True),
    "spectrum_error": ("radial DCT power-spectrum error vs held-out patches, mean |log power ratio|", True),
    "fd_pooled": ("Frechet distance to held-out patches, 4x4 average-pooled pixels", True),
}
# Testbeds whose model module another part of the package provides: offered where that module is present.
# name -> (make_scorer, metrics, main metric, floor label)
OPTIONAL = {
    "digits_ideal": (DigitsIdealScorer, DIGITS_IDEAL_METRICS, "fd_features", "exact vs exact samples"),
    "patches": (PatchesScorer, PATCHES_METRICS, "fd_features", "held-out patches vs held-out patches"),
    # the same data, reference and metrics as patches: a rectified-flow x-prediction network through the flow
    # adapter, so the two testbeds' numbers compare directly
    "patches_flow": (PatchesScorer, PATCHES_METRICS, "fd_features", "held-out patches vs held-out patches"),
    # a latent diffusion model of the same photographs: samples are 4 x 8 x 8 latents, decoded by the model's
    # autoencoder and scored like patches (docs/claims.md, claim 5)
    "patches_latent": (LatentPatchesScorer, PATCHES_METRICS, "fd_features", "held-out patches vs held-out patches"),
}

register(Testbed("gmm", _oracle_loader("gmm"), OracleScorer, dict(_ORACLE_METRICS), "fd_pooled",
                 "exact vs exact samples"))
register(Testbed("gaussian", _oracle_loader("gaussian"), OracleScorer,
                 {**_ORACLE_METRICS, "w2": ("exact W2^2 of the samples' Gaussian fit to the true Gaussian", True)},
                 "fd_pooled", "exact vs exact samples"))
register(Testbed("digits", _digits_loader, DigitsScorer, {
    **_DIGITS_FEATURE_METRICS,
    "precision": ("precision (k-NN, classifier features)", False),
    "recall": ("recall (k-NN, classifier features)", False)}, "fd_features", "real data vs real data"))
