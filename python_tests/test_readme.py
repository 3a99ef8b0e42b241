"""Every README code block marked `<!-- runnable -->` runs as written."""
from __future__ import annotations

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
BLOCKS = re.findall(r"<!-- runnable -->\n```python\n(.*?)```", open(README).read(), flags=re.S)


def test_readme_has_runnable_snippets():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_snippet_runs(index):
    if "diffusers" in BLOCKS[index]:
        pytest.importorskip("diffusers")
    exec(compile(BLOCKS[index], f"README snippet {index}", "exec"), {"__name__": "__readme__"})
