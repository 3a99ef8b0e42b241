"""The README and docs/*.md as a user meets them: every code block marked `<!-- runnable -->` runs as written,
every relative link points at a file (and heading) that exists, and the README starts with the user."""
from __future__ import annotations

import re
from collections import Counter

import pytest

from helpers import ROOT

DOCUMENTS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
RUNNABLE_MARKER = "<!-- runnable -->"
RUNNABLE = re.compile(re.escape(RUNNABLE_MARKER) + r"\n```python\n(.*?)```", re.S)
FENCED = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`]*`")  # a code span may wrap onto the next line
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# The Quickstart's promise (issue #25): the first command and the first Python example on the first screen.
FIRST_COMMAND_WITHIN = 40
FIRST_EXAMPLE_WITHIN = 60


def read(doc: str) -> str:
    return (ROOT / doc).read_text()


def runnable_blocks() -> list:
    """One pytest param per runnable block, with an id that says where it is (``docs/usage.md::block-2``)."""
    return [pytest.param(doc, code, id=f"{doc}::block-{i}")
            for doc in DOCUMENTS for i, code in enumerate(RUNNABLE.findall(read(doc)), start=1)]


BLOCKS = runnable_blocks()


def test_every_runnable_marker_opens_a_python_block():
    """A marker with anything between it and the ```python fence would be skipped silently."""
    for doc in DOCUMENTS:
        text = read(doc)
        markers = [line for line in text.splitlines() if line.strip() == RUNNABLE_MARKER]
        assert len(markers) == len(RUNNABLE.findall(text)), doc


def test_the_documents_have_runnable_snippets():
    per_document = Counter(param.values[0] for param in BLOCKS)
    assert per_document["README.md"] >= 2 and sum(per_document.values()) >= 4, per_document


@pytest.mark.parametrize("doc,code", BLOCKS)
def test_snippet_runs(doc, code):
    if "diffusers" in code:
        pytest.importorskip("diffusers")
    exec(compile(code, f"{doc} runnable block", "exec"), {"__name__": "__readme__"})


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set:
    return {github_anchor(line.lstrip("#")) for line in FENCED.sub("", text).splitlines() if line.startswith("#")}


@pytest.mark.parametrize("doc", DOCUMENTS)
def test_relative_links_resolve(doc):
    prose = INLINE_CODE.sub("", FENCED.sub("", read(doc)))
    targets = [t for t in LINK.findall(prose) if not t.startswith(("http://", "https://", "mailto:"))]
    for target in targets:
        path, _, anchor = target.partition("#")
        destination = (ROOT / doc).parent / path if path else ROOT / doc
        assert destination.exists(), f"{doc}: {target} points at no file"
        if anchor and destination.suffix == ".md":
            assert anchor in anchors(destination.read_text()), f"{doc}: {target} points at no heading"


def test_the_readme_starts_with_the_user():
    lines = read("README.md").splitlines()
    install = lines.index("<!-- ci:install -->")
    assert install + 2 < FIRST_COMMAND_WITHIN, "the install command moved off the first screen"
    assert lines.index(RUNNABLE_MARKER) + 2 < FIRST_EXAMPLE_WITHIN, "the first example moved off the first screen"
