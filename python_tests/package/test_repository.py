"""The repository itself: which generated files git keeps (every results plot) and ignores (demo output)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from helpers import ROOT


@pytest.mark.parametrize("path, ignored", [
    ("benchmarks/results/quality_gmm.png", False), ("benchmarks/results/best/quality_gmm.png", False),
    ("benchmarks/results/best_schedule/deeper/plot.png", False), ("grid.png", True), ("benchmarks/grid.png", True)])
def test_gitignore_keeps_every_results_png_and_ignores_other_pngs(path, ignored):
    root = ROOT
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("needs git and a checkout of the repository (CI runs from a clone)")
    run = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=root)
    assert run.returncode == (0 if ignored else 1), path
