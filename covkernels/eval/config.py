"""The configuration of one evaluation grid: a frozen value object that checks itself when it is made.

``EvalConfig(model="gmm", samplers=["ddim", "cov_ddim"], nfes=[4, 8], seeds=5, ...)`` normalises what it is
given (sampler names to grid rows, repeats dropped, defaults filled in) and raises ValueError (TypeError
for ``options`` of the wrong type) naming the argument that is wrong, so nothing is sampled before a bad
argument is found. ``covkernels eval`` builds one per ``--model``; :func:`covkernels.eval.evaluate` builds
one from its keywords.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..schedules import SCHEDULES
from .plan import NFES, TUNE_SCHEDULES, TUNE_SIGMA_MINS, VARIANTS, canonical_label, variant_options
from .sources import resolve_source

TUNING_SEED_OFFSET = 1_000_000  # the held-out tuning seed is seed + this; reported seeds stay below it
TABLES = ("default", "best")
# Only finite differences cost exactly the counted evaluations: forward AD recomputes the primal on every
# Lanczos JVP, central differences take 2 evaluations, double VJP 1 forward + 2 backwards, and "auto" probes
# all of them.
EVAL_JVP = "finite_difference"


def _int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _unique(values) -> tuple:
    return tuple(dict.fromkeys(values))  # repeats run once, first occurrence first


@dataclass(frozen=True)
class EvalConfig:
    """One grid: ``samplers`` (labels of :data:`~covkernels.eval.plan.VARIANTS` or bare sampler names;
    None: every row) x ``nfes`` (budgets; None: :data:`~covkernels.eval.plan.NFES`) on testbed ``model``,
    ``seeds`` reported seeds (``seed, seed + 1, ...``) of ``num_samples`` samples per cell, in ``tables``
    (``"default"``: the common schedule ``schedule`` / ``sigma_min`` / ``sigma_max`` / ``rho``; ``"best"``:
    each sampler's best of ``tune_schedules`` (None: those of ``TUNE_SCHEDULES`` that exist) x
    ``tune_sigma_mins``, chosen by ``tune_metric`` (None: the testbed's main metric) at
    ``tune_num_samples`` (None: ``num_samples``) on the held-out seed ``seed + TUNING_SEED_OFFSET``).
    ``options``: extra options for the covariance samplers (e.g. ``{"cov_sigma_max": inf}``), each passed
    to the selected rows that take it. ``out_dir``: where the results file and reports go (None: nowhere);
    ``resume``: reuse the finished cells of a results file of the same configuration; ``command``: the
    command line quoted in the Markdown report.

    Your model: ``model`` may also be ``package.module:factory`` (:mod:`covkernels.eval.user_model`) with
    ``reference``, a folder of images or an ``.npy`` / ``.npz`` (:mod:`covkernels.eval.reference`; a
    different image size is refused unless ``reference_resize`` names a mode), scored in ``metrics``
    (None: the weight-free ones of :mod:`covkernels.eval.reference_scorer`); a testbed's model with a
    ``reference`` is scored against it the same way. ``feature_cache``: the folder of cached reference
    features (None: :func:`covkernels.eval.features.default_cache_dir`); it changes no number."""

    model: str = "gmm"
    samplers: tuple | None = None
    nfes: tuple | None = None
    num_samples: int = 1024
    seed: int = 0
    seeds: int = 5
    batch_size: int = 256
    schedule: str = "karras"
    sigma_min: float = 0.1
    sigma_max: float = 80.0
    rho: float = 7.0
    tables: tuple = TABLES
    tune_schedules: tuple | None = None
    tune_sigma_mins: tuple = TUNE_SIGMA_MINS
    tune_metric: str | None = None
    tune_num_samples: int | None = None
    jvp: str = EVAL_JVP
    device: str | torch.device = "cpu"
    options: dict | None = None
    out_dir: str | None = None
    resume: bool = True
    command: str | None = None
    reference: str | None = None
    reference_resize: str | None = None
    metrics: tuple | None = None
    feature_cache: str | None = None

    def __post_init__(self):
        if self.metrics is not None:
            self._set(metrics=_unique(self.metrics))
        self._set(samplers=_unique(VARIANTS if self.samplers is None else map(canonical_label, self.samplers)),
                  nfes=_unique(NFES if self.nfes is None else self.nfes), tables=_unique(self.tables),
                  tune_schedules=_unique([s for s in TUNE_SCHEDULES if s in SCHEDULES] if self.tune_schedules is None
                                         else self.tune_schedules),
                  tune_sigma_mins=_unique(self.tune_sigma_mins))
        # the cheap checks first: a bad jvp, budget or batch size is refused before a factory is imported and
        # a reference read and hashed (seconds to minutes)
        self._check_run()
        self._check_tuning()
        self._check_schedules()
        self._check_options()
        counts = [n for n in (self.num_samples, self.tune_num_samples) if isinstance(n, int)]
        # an unknown model: ValueError naming the registered ones; a bad factory or reference: naming the option
        source = resolve_source(self.model, self.reference, self.metrics, resize=self.reference_resize,
                                cache_dir=self.feature_cache, device=self.device, min_count=max(counts, default=0))
        self._set(_source=source)
        self._check_tune_metric(source.testbed)
        if self.options is not None:
            self._set(options=dict(self.options))  # a copy: the caller's dict may change later

    def _set(self, **values) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def _check_tuning(self) -> None:
        best = "best" in self.tables
        if self.tune_metric is not None and not best:
            raise ValueError(f"tune_metric applies to the best table only (tables={list(self.tables)})")
        if self.tune_num_samples is not None:
            if not best:
                raise ValueError(f"tune_num_samples applies to the best table only (tables={list(self.tables)})")
            _int("tune_num_samples", self.tune_num_samples, 4)

    def _check_tune_metric(self, testbed) -> None:
        metric = self.tuning_metric
        if metric not in testbed.metrics or testbed.metrics[metric][1] is None:
            raise ValueError(f"tune_metric must be a metric of {self.model!r} with a direction, one of "
                             f"{[m for m, (_, d) in testbed.metrics.items() if d is not None]}, got {metric!r}")

    def _check_run(self) -> None:
        if self.jvp != EVAL_JVP:
            raise ValueError(f"jvp must be {EVAL_JVP!r} for the evaluation (its NFE count is exact), got {self.jvp!r}")
        _int("batch_size", self.batch_size, 1)
        _int("num_samples", self.num_samples, 4)
        if _int("seeds", self.seeds, 2) >= TUNING_SEED_OFFSET:
            raise ValueError(f"seeds must be below {TUNING_SEED_OFFSET} (the tuning seed's offset), got {self.seeds}")
        if not self.nfes or any(isinstance(n, bool) or not isinstance(n, int) or n < 2 for n in self.nfes):
            raise ValueError(f"nfes must be int budgets >= 2, got {list(self.nfes)}")
        if not self.tables or any(t not in TABLES for t in self.tables):
            raise ValueError(f"tables must be a non-empty subset of {TABLES}, got {list(self.tables)}")

    def _check_schedules(self) -> None:
        for name in self.tune_schedules:
            if name not in SCHEDULES or name in ("vp", "linear_beta"):  # those two ignore sigma_min / sigma_max
                raise ValueError(f"tune_schedules: {name!r} is not a tunable schedule of {SCHEDULES}")
        for value in self.tune_sigma_mins:
            if not (isinstance(value, (int, float)) and 0 < value < self.sigma_max):
                raise ValueError(f"tune_sigma_mins must lie in (0, sigma_max={self.sigma_max}), got {value!r}")

    def _check_options(self) -> None:
        """Refuse ``options`` keys that no selected covariance sampler takes: they would change no cell. A key
        that some rows take goes to those rows only (and a row's own options win over it)."""
        from ..samplers.registry import spec

        if self.options is not None and not isinstance(self.options, dict):
            raise TypeError(f"options must be a dict or None, got {type(self.options).__name__}")
        taken = set().union(*(variant_options(label, self.options)[1] for label in self.samplers
                              if spec(VARIANTS[label][0]).uses_covariance))
        unused = sorted(set(self.options or {}) - taken)
        if unused:
            raise ValueError(f"options {unused} are taken by no selected covariance sampler of {list(self.samplers)} "
                             f"(an option goes to the covariance samplers whose function has that keyword)")

    # ---- derived values -------------------------------------------------------------------------------
    @property
    def default_schedule(self) -> dict:
        """The common schedule of the ``default`` table (and the first tuning candidate)."""
        return {"schedule": self.schedule, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "rho": self.rho}

    @property
    def seed_list(self) -> list[int]:
        """The reported seeds, shared by every cell."""
        return [self.seed + i for i in range(self.seeds)]

    @property
    def tuning_seed(self) -> int:
        return self.seed + TUNING_SEED_OFFSET

    @property
    def tuning_metric(self) -> str:
        return self.testbed.main_metric if self.tune_metric is None else self.tune_metric

    @property
    def testbed(self):
        """The :class:`~covkernels.eval.testbeds.Testbed` the grid runs: registered, or of a reference."""
        return self._source.testbed

    @property
    def source_record(self) -> dict:
        """What the results file records of the model and the reference (empty for a registered testbed)."""
        return self._source.record

    @property
    def name(self) -> str:
        """The model's name in reports and file names (a testbed's name, or the factory's)."""
        return self._source.name

    @property
    def tuning_num_samples(self) -> int:
        return self.num_samples if self.tune_num_samples is None else self.tune_num_samples
