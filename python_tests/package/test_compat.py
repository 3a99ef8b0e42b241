"""Old import paths keep working after the restructure (issue 25): each top-level shim re-exports, as the
same objects, the names that now live in covkernels.eval / covkernels.samplers. The package's own code and
tests import the new places; this is the one test of the old ones."""
from __future__ import annotations

import importlib

import pytest

SHIMS = ["evaluation", "grid", "intervals", "testbeds", "report", "metrics"]


@pytest.mark.parametrize("shim", SHIMS)
def test_each_shim_reexports_objects_defined_elsewhere(shim):
    old = importlib.import_module(f"covkernels.{shim}")
    assert old.__all__, shim
    for name in old.__all__:
        obj = getattr(old, name)
        home = getattr(obj, "__module__", None)
        if home is not None and home.startswith("covkernels."):  # functions and classes: defined elsewhere
            assert home != old.__name__, (shim, name)  # a shim defines nothing of its own
            assert getattr(importlib.import_module(home), obj.__name__) is obj, (shim, name, home)


def test_sampling_reexports_the_samplers():
    import covkernels.sampling as old
    import covkernels.samplers as new

    assert old.__all__ == new.__all__
    assert all(getattr(old, name) is getattr(new, name) for name in new.__all__)
