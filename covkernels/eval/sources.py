"""What an evaluation runs on: a registered testbed (its model and its own metrics), or a model — built-in or
``package.module:factory`` (:mod:`covkernels.eval.user_model`) — compared with reference data from disk
(:mod:`covkernels.eval.reference`) in the metrics of :mod:`covkernels.eval.reference_scorer`.

:func:`resolve_source` gives both as one :class:`~covkernels.eval.testbeds.Testbed` (so the grid, tuning,
intervals, resume and sharding are the same code for either) and the ``record`` that the results file and
its reports keep of the model and the reference (empty for a testbed, so results files of testbeds keep
their format).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch

from .testbeds import Testbed, get_testbed
from .user_model import UserModel, as_user_model, is_factory_path, load_factory


class SamplingModel(torch.nn.Module):
    """A :class:`UserModel` as the evaluation samples it: ``event_shape``, guidance applied, ``.to(device)``
    moving the network, and ``batch_args(start, stop)`` for the conditioning of samples ``start .. stop - 1``
    (the samplers pass it as ``extra_args``; a call without any, as ``covkernels bench`` makes, conditions
    row i as sample i).

    ``.to(...)`` moves an ``nn.Module`` denoiser (a registered submodule) and any other denoiser that has a
    ``.to`` method (called with the same arguments; what it returns is used from then on). A denoiser
    without one, e.g. a plain function closing over a network, is called as it is: build its network on
    the ``--device`` you pass (it cannot be told apart from one that already is, so it is not refused)."""

    def __init__(self, user: UserModel):
        super().__init__()
        self.user, self.event_shape = user, user.event_shape
        if isinstance(user.denoiser, torch.nn.Module):
            self.net = user.denoiser  # registered: .to(device) moves it
        self._call = user.sampling_model()

    def to(self, *args, **kwargs):
        super().to(*args, **kwargs)
        denoiser = self.user.denoiser
        if not isinstance(denoiser, torch.nn.Module) and callable(getattr(denoiser, "to", None)):
            moved = denoiser.to(*args, **kwargs)
            if moved is not None and moved is not denoiser:  # a .to that returns a copy, as tensors' does
                self.user = replace(self.user, denoiser=moved)
                self._call = self.user.sampling_model()
        return self

    def forward(self, x, sigma, **extra):
        if not extra and self.user.extra_args is not None:
            extra = self.user.batch_args(0, x.shape[0])
        return self._call(x, sigma, **extra)

    def batch_args(self, start: int, stop: int) -> dict | None:
        return self.user.batch_args(start, stop)


@dataclass(frozen=True)
class Source:
    """The testbed an evaluation runs and what its results file records of the model and reference."""

    testbed: Testbed
    record: dict

    @property
    def name(self) -> str:
        return self.testbed.name


def file_stem(name: str) -> str:
    """``name`` safe as a file name (``quality_<stem>.json``): a testbed's name is unchanged."""
    return re.sub(r"[^\w.-]+", "_", name)


def resolve_source(model: str, reference: str | None = None, metrics=None, *, resize: str | None = None,
                   cache_dir: str | None = None, device="cpu", min_count: int = 0) -> Source:
    """The :class:`Source` of ``--model`` / ``--reference`` / ``--metrics``: without a reference, the testbed
    ``model`` (a factory then needs a reference: there is nothing else to compare it with)."""
    if reference is None:
        if is_factory_path(model):
            raise ValueError(f"--model {model!r} is a factory: --reference PATH is needed (the real images its "
                             f"samples are compared with)")
        if metrics is not None:
            raise ValueError(f"--metrics applies to a --reference; the testbed {model!r} has its own metrics")
        return Source(get_testbed(model), {})
    user = load_factory(model) if is_factory_path(model) else as_user_model(get_testbed(model).load(), model)
    return reference_source(model, user, reference, metrics, resize=resize, cache_dir=cache_dir, device=device,
                            min_count=min_count)


def reference_source(spec: str, user: UserModel, reference: str, metrics=None, *, resize=None, cache_dir=None,
                     device="cpu", min_count: int = 0) -> Source:
    """A testbed of ``user`` scored against ``reference`` (a path) in ``metrics`` (None: the weight-free
    defaults); ``spec``: the ``--model`` value it came from."""
    from .reference import load_reference
    from .reference_scorer import METRICS, ReferenceScorers, check_metrics

    if user.decode is not None:
        raise ValueError(f"--reference: scoring a latent model ({spec}, with a decode) against reference images is "
                         f"not supported; write decoded images with `covkernels sample --out-dir` and score those")
    metrics = check_metrics(metrics)  # a missing extra is found before the reference is read
    ref = load_reference(reference, user.event_shape, user.data_range, resize=resize, min_count=min_count)
    scorers = ReferenceScorers(ref, metrics, data_range=user.data_range, cache_dir=cache_dir,
                               device=torch.device(device) if torch.device(device).type == "cuda" else "cpu")
    table = {n: (METRICS[n].title, METRICS[n].lower_is_better) for n in scorers.names}
    floor = "N reference images vs the other M - N"
    testbed = Testbed(user.name or spec, lambda: SamplingModel(user), scorers, table, scorers.names[0], floor,
                      scores_model=False)
    record = {"model_name": testbed.name, "reference": {**ref.record(), "floor": floor},
              "metrics": {n: list(v) for n, v in table.items()}}
    if user.data_range != (-1.0, 1.0):
        record["data_range"] = list(user.data_range)
    return Source(testbed, record)
