"""Test-suite setup: the Triton interpreter on a CPU-only machine, shared fixtures. The tests live by area
(``ops/``, ``samplers/``, ``adapters/``, ``eval/``, ``models/``, ``cli/``, ``package/``); shared helper
functions are in ``helpers.py`` (``from helpers import gen``), importable because this folder is on the path."""
from __future__ import annotations

import os

import pytest
import torch

# Triton kernels run under the interpreter on a CPU-only machine; it must be set before Triton is
# imported (covkernels imports it lazily, on the first use of the triton backend).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


from helpers import gen  # noqa: E402  (after TRITON_INTERPRET: helpers imports torch only)


@pytest.fixture
def generator():
    return gen(1234)
