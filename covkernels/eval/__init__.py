"""The quality evaluation of covkernels' samplers (``covkernels eval``), one module per concern:

- :mod:`.config`: :class:`EvalConfig`, the checked configuration of one grid;
- :mod:`.plan`: the grid rules (rows and variants, NFE budgets, schedules that fit, baselines);
- :mod:`.runner`: sampling a cell with counted model evaluations, scoring its seeds;
- :mod:`.tuning`: the ``best`` table's schedule choice on a held-out seed;
- :mod:`.store`: the results file (atomic writes, resume);
- :mod:`.distributed`: ``torchrun`` sharding;
- :mod:`.testbeds` and :mod:`.scorers`: the models and their metrics (:class:`Scorer` is the interface);
- :mod:`.metrics` and :mod:`.intervals`: distances between sample sets, seed statistics;
- :mod:`.report`: CSV, Markdown and PNG reports;
- your model: :mod:`.user_model` (``--model package.module:factory``, :class:`UserModel`), :mod:`.reference`
  (``--reference``), :mod:`.features` and :mod:`.reference_scorer` (metrics against it), :mod:`.sources`
  (either as a testbed), :mod:`.export` (``covkernels sample --out-dir``);
- :mod:`.api`: :func:`evaluate` / :func:`run_evaluation`, the composition of the above.

The names below load on first use, so ``covkernels.eval.metrics`` alone does not import the sampler stack.
"""
from __future__ import annotations

import importlib as _importlib

_PUBLIC = {
    "evaluate": ".api", "run_evaluation": ".api", "EvalConfig": ".config", "Scorer": ".scorers",
    "Testbed": ".testbeds", "register": ".testbeds", "get_testbed": ".testbeds", "testbed_names": ".testbeds",
    "UserModel": ".user_model", "load_factory": ".user_model", "load_reference": ".reference",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'covkernels.eval' has no attribute {name!r}")
    value = getattr(_importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
