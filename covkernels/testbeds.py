"""The evaluation testbeds: one registry of models with their metrics, read by :mod:`covkernels.evaluation`.

A :class:`Testbed` has a ``name``, a loader ``load() -> model`` (a denoiser with ``event_shape``), a
``make_scorer(model, num, seed) -> scorer`` with ``scorer(x) -> {metric: float}`` for samples ``x (num,
*event_shape)`` and ``scorer.floor() -> {metric: float}`` (the same metrics of reference data: the noise floor
of a table), ``metrics = {metric: (title, lower_is_better or None)}`` (None: no direction, e.g. a signed gap
whose ideal is 0; such metrics get intervals but no paired verdict) and a ``main_metric`` (plots, schedule
tuning, the headline tables).

The evaluation builds one scorer per seed: ``seed`` is the seed of that cell's samples, and a scorer whose
reference is sampled draws it from its own stream (``seed + REFERENCE_SEED_OFFSET``), so every seed gets an
independent reference and the reference never shares noise with the samples.

Built in: ``gmm`` and ``gaussian`` (the 3 x 16 x 16 analytic oracles: Frechet distance and unbiased kernel
distance to exact samples, the log-likelihood gap under the true density, and for the Gaussian the exact
W2^2) and ``digits`` (the trained UNet: Frechet / kernel distance and k-NN precision / recall in the shipped
classifier's features against the 1797 real digits). Modules ``covkernels.models.<name>`` exposing
``make_scorer``, ``METRICS`` and ``MAIN_METRIC`` (optionally ``FLOOR_LABEL``) join the registry when they
exist: ``digits_ideal`` and ``patches``; their model comes from ``covkernels.models.get_model(name)``.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import math
from dataclasses import dataclass
from typing import Callable

import torch

REFERENCE_SEED_OFFSET = 1 << 32  # reference draws of seed s use generator seed s + this: never a sample seed
OPTIONAL = ("digits_ideal", "patches")  # testbeds whose modules another part of the package provides


@dataclass(frozen=True)
class Testbed:
    name: str
    load: Callable[[], torch.nn.Module]
    make_scorer: Callable
    metrics: dict
    main_metric: str
    floor_label: str = "reference vs reference"

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
    """Registered testbeds plus the optional ones whose module is present."""
    names = list(_REGISTRY)
    for name in OPTIONAL:
        if name not in _REGISTRY and importlib.util.find_spec(f"covkernels.models.{name}") is not None:
            names.append(name)
    return tuple(names)


def get_testbed(name: str) -> Testbed:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in OPTIONAL and name in testbed_names():
        from .models import get_model

        module = importlib.import_module(f"covkernels.models.{name}")
        return register(Testbed(name, functools.partial(get_model, name), module.make_scorer, dict(module.METRICS),
                                module.MAIN_METRIC, getattr(module, "FLOOR_LABEL", "reference vs reference")))
    raise ValueError(f"model must be one of {testbed_names()}, got {name!r}")


def all_metrics() -> dict:
    """``{metric: (title, lower_is_better)}`` of every registered testbed (the first title wins)."""
    out: dict = {}
    for name in testbed_names():
        for metric, spec in get_testbed(name).metrics.items():
            out.setdefault(metric, spec)
    return out


def _pooled(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.avg_pool2d(x.float(), 4)  # 16 x 16 -> 4 x 4: 48 dims, far less biased at N ~ 1e3


def radial_power(x):
    from .models.image_statistics import radial_power as power

    return power(x)


def spectrum_error(x, reference_power) -> float:
    from .models.image_statistics import spectrum_error as error

    return error(x, reference_power)


class OracleScorer:
    """Metrics of the analytic oracles against ``num`` exact samples drawn for this seed (a second exact draw
    of the same size is the floor)."""

    def __init__(self, model, num: int, seed: int):
        from . import metrics

        self.model, self.m = model, metrics
        gen = torch.Generator().manual_seed(seed + REFERENCE_SEED_OFFSET)
        self.exact, self.exact2 = model.sample(num, generator=gen), model.sample(num, generator=gen)
        self.exact_pooled = _pooled(self.exact)
        self.exact_power = radial_power(self.exact)
        self.logp_data = float(model.log_prob(self.exact).mean())

    def __call__(self, x: torch.Tensor) -> dict:
        d = math.prod(self.model.event_shape)
        pooled = _pooled(x)
        out = {"fd_pooled": self.m.frechet_distance(pooled, self.exact_pooled),
               "kid_pooled": self.m.kernel_distance(pooled, self.exact_pooled),
               "fd_pixels": self.m.frechet_distance(x, self.exact),
               "loglik_gap": (self.logp_data - float(self.model.log_prob(x).mean())) / d,
               "spectrum_error": spectrum_error(x, self.exact_power)}
        if hasattr(self.model, "sqrt_cov"):
            out["w2"] = self.m.gaussian_w2(x, self.model.mean, self.model.sqrt_cov)
        return out

    def floor(self) -> dict:
        return self(self.exact2)


@functools.lru_cache(maxsize=1)
def _digits_classifier():
    from .models.digits import digits_classifier

    return digits_classifier()


class DigitsScorer:
    """Metrics of the trained digits model in the shipped classifier's features against the 1797 real digits
    (a fixed reference: every seed scores against the same set)."""

    def __init__(self, model=None, num: int = 0, seed: int = 0):
        from . import metrics

        self.m, self.classifier = metrics, _digits_classifier()
        self.real = self.classifier.reference_features.float()

    def _metrics(self, fake_features, real_features) -> dict:
        precision, recall = self.m.precision_recall(real_features, fake_features)
        return {"fd_features": self.m.frechet_distance(fake_features, real_features),
                "kid_features": self.m.kernel_distance(fake_features, real_features),
                "precision": precision, "recall": recall}

    def __call__(self, x: torch.Tensor) -> dict:
        return self._metrics(self.classifier.features(x.clamp(-1, 1)), self.real)

    def floor(self) -> dict:
        """One half of the real digits against the other (a fixed split; ~900 samples, not the cells' N)."""
        idx = torch.randperm(self.real.shape[0], generator=torch.Generator().manual_seed(7))
        half = self.real.shape[0] // 2
        return self._metrics(self.real[idx[:half]], self.real[idx[half:]])


def _oracle_loader(name: str):
    def load():
        from .models import get_model

        return get_model(name, size=16)
    return load


def _digits_loader():
    from .models import get_model

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
register(Testbed("gmm", _oracle_loader("gmm"), OracleScorer, dict(_ORACLE_METRICS), "fd_pooled",
                 "exact vs exact samples"))
register(Testbed("gaussian", _oracle_loader("gaussian"), OracleScorer,
                 {**_ORACLE_METRICS, "w2": ("exact W2^2 of the samples' Gaussian fit to the true Gaussian", True)},
                 "fd_pooled", "exact vs exact samples"))
register(Testbed("digits", _digits_loader, DigitsScorer, {
    "fd_features": ("Frechet distance to the real digits, classifier features", True),
    "kid_features": ("kernel distance (unbiased MMD^2, cubic kernel) to the real digits, classifier features", True),
    "precision": ("precision (k-NN, classifier features)", False),
    "recall": ("recall (k-NN, classifier features)", False)}, "fd_features", "real data vs real data"))
