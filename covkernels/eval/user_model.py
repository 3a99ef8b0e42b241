"""Your model on the command line: ``--model package.module:factory`` for ``covkernels sample``, ``eval`` and
``bench`` (the one place the factory contract lives; the three commands load models through here).

The contract. ``--model`` names either a built-in (a testbed of :mod:`covkernels.eval.testbeds`; ``bench``
also has its random UNets) or a factory:

- ``package.module:factory`` (``package.module.factory`` also works), imported with the current directory
  on the import path, as ``python -m`` would; or ``path/to/file.py:factory``, a file loaded as a module with
  its folder on the import path, as ``python path/to/file.py`` would. The folder stays there for the rest
  of the process (see :func:`import_path`: a factory or denoiser that imports its own modules later still
  finds them).
- ``factory`` is called with no arguments and returns one of
  - a :class:`UserModel` (the full form: denoiser, sample shape, conditioning, guidance, data range);
  - a denoiser with an ``event_shape`` attribute (the sample shape without the batch, e.g. ``(3, 64, 64)``),
    e.g. an ``nn.Module``: it is taken with the defaults of :class:`UserModel`;
  - a diffusers pipeline (``.unet`` or ``.transformer`` and ``.scheduler``): wrapped by
    :class:`~covkernels.adapters.diffusers.DiffusersDenoiser`, its shape read from the network's config.
  The attribute may also be such an object itself rather than a function returning it.
- A denoiser follows the package convention ``D(x, sigma, **extra_args) -> x0 estimate`` (sigma: the VE /
  EDM noise level, ``x = x0 + sigma * eps``); a model trained otherwise is wrapped by the adapters first
  (``DiffusersDenoiser``, ``FlowDenoiser``; README, "Your model").

Every failure is a ValueError or TypeError that names ``--model`` and says what was expected.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch

CONTRACT = ("a UserModel, a denoiser D(x, sigma, **extra_args) with an event_shape attribute, or a diffusers "
            "pipeline (covkernels.eval.user_model)")


@dataclass(frozen=True)
class UserModel:
    """A model as the commands need it.

    ``denoiser``: ``D(x, sigma, **extra_args)`` in the package convention; ``event_shape``: one sample's
    shape, e.g. ``(3, 64, 64)``; ``extra_args``: conditioning passed to every call, either a dict (the same
    for every sample) or a callable ``extra_args(indices) -> dict`` given the LongTensor of the batch's
    sample indices (class labels per sample: sample i gets the same label however the run is batched or
    sharded); ``guidance``: a :class:`~covkernels.Guidance` or a scale, applied with
    :func:`~covkernels.guidance.cfg_denoiser` so every sampler runs guided (one guided evaluation counts
    as one NFE); ``data_range``: ``(lo, hi)`` of the model's data (images are converted to and from
    [0, 255] linearly through it); ``name``: what reports and file names call it; ``decode``: for a latent
    model, ``decode(samples) -> images (B, C, H, W)`` in ``data_range``, applied before images are written
    (``covkernels sample`` grids and ``--out-dir``); None: the samples are the images."""

    denoiser: Callable
    event_shape: tuple
    extra_args: Any = None
    guidance: Any = None
    data_range: tuple = (-1.0, 1.0)
    name: str | None = None
    decode: Callable | None = None

    def __post_init__(self):
        if not callable(self.denoiser):
            raise TypeError(f"UserModel.denoiser must be callable D(x, sigma, **extra_args), got "
                            f"{type(self.denoiser).__name__}")
        shape = tuple(self.event_shape) if isinstance(self.event_shape, (tuple, list, torch.Size)) else None
        if not shape or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape):
            raise ValueError(f"UserModel.event_shape must be a tuple of positive ints (one sample's shape, e.g. "
                             f"(3, 64, 64)), got {self.event_shape!r}")
        object.__setattr__(self, "event_shape", shape)
        if self.extra_args is not None and not (isinstance(self.extra_args, dict) or callable(self.extra_args)):
            raise TypeError(f"UserModel.extra_args must be a dict, a callable indices -> dict or None, got "
                            f"{type(self.extra_args).__name__}")
        if self.decode is not None and not callable(self.decode):
            raise TypeError(f"UserModel.decode must be callable samples -> images or None, got "
                            f"{type(self.decode).__name__}")
        lo, hi = _data_range(self.data_range)
        object.__setattr__(self, "data_range", (lo, hi))
        if self.guidance is not None:
            from ..guidance import as_guidance

            object.__setattr__(self, "guidance", as_guidance(self.guidance))

    def batch_args(self, start: int, stop: int) -> dict | None:
        """The ``extra_args`` of samples ``start .. stop - 1``."""
        if callable(self.extra_args):
            args = self.extra_args(torch.arange(start, stop))
            if not isinstance(args, dict):
                raise TypeError(f"UserModel.extra_args(indices) must return a dict, got {type(args).__name__}")
            return args
        return self.extra_args

    def images(self, samples: torch.Tensor) -> torch.Tensor:
        """The images of ``samples``: ``decode(samples)`` for a latent model, else the samples."""
        if self.decode is None:
            return samples
        with torch.no_grad():
            images = self.decode(samples)
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3) \
                or images.shape[0] != samples.shape[0]:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"UserModel.decode must return images (B, 1 or 3, H, W) for {samples.shape[0]} "
                             f"samples, got {got}")
        return images

    def sampling_model(self):
        """The denoiser the samplers call: guided where ``guidance`` is set."""
        if self.guidance is None:
            return self.denoiser
        from ..guidance import cfg_denoiser

        return cfg_denoiser(self.denoiser, self.guidance)


def _data_range(value) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"UserModel.data_range must be (lo, hi), got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"UserModel.data_range must be finite with lo < hi, got {value!r}")
    return lo, hi


def is_factory_path(name: str) -> bool:
    """Whether ``--model`` names a factory rather than a built-in (built-in names have no ``:`` or ``.``)."""
    return isinstance(name, str) and (":" in name or "." in name)


def split_path(spec: str) -> tuple[str, str]:
    """``(module or file, attribute)`` of ``package.module:factory``, ``file.py:factory`` or
    ``package.module.factory``; ValueError naming ``--model`` otherwise."""
    where, sep, attr = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
    if not sep or not where or not attr or not attr.isidentifier():
        raise ValueError(f"--model must be a built-in name or package.module:factory (or path/to/file.py:factory), "
                         f"got {spec!r}")
    return where, attr


def _import(where: str, spec: str):
    """The module of ``where`` (a dotted module path, or a ``.py`` file), with import errors named."""
    try:
        if where.endswith(".py"):
            if not os.path.isfile(where):
                raise ValueError(f"--model {spec!r}: no file {where!r}")
            import_path(os.path.dirname(os.path.abspath(where)))  # as `python file.py`: its siblings import
            name = "covkernels_user_" + "".join(c if c.isalnum() else "_" for c in os.path.abspath(where))
            module_spec = importlib.util.spec_from_file_location(name, where)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module  # dataclasses and pickling look the module up by name
            module_spec.loader.exec_module(module)
            return module
        import_path(os.getcwd())  # as `python -m`: a module beside the caller is found
        return importlib.import_module(where)
    except ValueError:
        raise
    except Exception as exc:  # the user's module may raise anything while it is imported
        raise ValueError(f"--model {spec!r}: importing {where!r} failed: {type(exc).__name__}: {exc}") from exc


def import_path(folder: str) -> None:
    """Put ``folder`` first on the import path, for the rest of the process, as Python does for a script's
    folder and ``python -m`` for the current directory. Not undone after the import: the factory and the
    denoiser it returns may import their own local modules later (inside the factory, or lazily at the
    first call during sampling), and those imports would fail once the folder left the path."""
    if folder not in sys.path:
        sys.path.insert(0, folder)


def load_factory(spec: str) -> UserModel:
    """The :class:`UserModel` a ``--model`` factory path gives (see the module docstring for the contract)."""
    return as_user_model(factory_output(spec), spec)


def factory_output(spec: str):
    """What the factory of ``spec`` returns (or the attribute itself where it is a model), unchecked;
    import and factory failures raise ValueError naming ``--model``."""
    where, attr = split_path(spec)
    module = _import(where, spec)
    if not hasattr(module, attr):
        raise ValueError(f"--model {spec!r}: module {where!r} has no attribute {attr!r}")
    target = getattr(module, attr)
    if is_model(target):
        return target  # the attribute is the model itself
    if not callable(target):
        raise TypeError(f"--model {spec!r}: {attr!r} is a {type(target).__name__}, neither a factory nor {CONTRACT}")
    try:
        return target()
    except Exception as exc:
        raise ValueError(f"--model {spec!r}: the factory raised {type(exc).__name__}: {exc}") from exc


def is_model(obj) -> bool:
    return isinstance(obj, UserModel) or getattr(obj, "event_shape", None) is not None or _is_pipeline(obj)


def _is_pipeline(obj) -> bool:
    return getattr(obj, "scheduler", None) is not None and any(
        getattr(obj, n, None) is not None for n in ("unet", "transformer"))


def default_name(spec: str) -> str:
    """``my_model.factory`` of ``pkg/my_model.py:factory`` or ``pkg.my_model:factory``: the module's last
    part and the attribute."""
    where, attr = split_path(spec)
    module = os.path.splitext(os.path.basename(where))[0] if where.endswith(".py") else where.rpartition(".")[2]
    return f"{module}.{attr}"


def as_user_model(obj, spec: str = "model") -> UserModel:
    """``obj`` (what a factory returned) as a :class:`UserModel`; TypeError naming ``--model`` otherwise."""
    name = default_name(spec) if is_factory_path(spec) else spec
    if isinstance(obj, UserModel):
        return obj if obj.name else UserModel(**{**obj.__dict__, "name": name})
    if _is_pipeline(obj):
        from ..adapters.diffusers import DiffusersDenoiser, _network, _sample_shape

        net = _network(obj)
        return UserModel(DiffusersDenoiser(net, obj.scheduler), _sample_shape(net, 1)[1:], name=name)
    shape = getattr(obj, "event_shape", None)
    if callable(obj) and shape is not None:
        decode = getattr(obj, "decode", None)  # a latent model brings its decoder (patches_latent does)
        try:
            return UserModel(obj, tuple(shape), name=name, decode=decode if callable(decode) else None)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"--model {spec!r}: {exc}") from exc
    raise TypeError(f"--model {spec!r}: the factory returned a {type(obj).__name__}; it must return {CONTRACT}"
                    + ("" if not callable(obj) else " (this one has no event_shape: set it, or return "
                       "UserModel(denoiser, event_shape))"))
