"""Progress lines off a terminal (CI, nohup, notebooks): tqdm alone would print nothing there."""
from __future__ import annotations

import io

from covkernels.progress import Progress, format_seconds


def test_plain_lines_off_a_terminal():
    out = io.StringIO()  # not a TTY
    with Progress(4, "sampling", file=out, min_interval=0) as p:
        for _ in range(4):
            p.update(1)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("sampling: 0/4 samples (0%)")
    assert "ETA" in lines[1] and lines[1].startswith("sampling: 1/4 samples (25%)")
    assert lines[-1].startswith("sampling: 4/4 samples (100%)") and "ETA" not in lines[-1]
    assert len(lines) == 5


def test_rate_limited_and_interrupted():
    out = io.StringIO()
    p = Progress(100, "x", file=out, min_interval=3600)
    for _ in range(10):
        p.update(1)
    p.close()  # stopped early: the last state is still reported
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("x: 10/100 samples (10%)")


def test_disabled_prints_nothing():
    out = io.StringIO()
    with Progress(3, "x", file=out, disable=True) as p:
        p.update(3)
        p.write("hidden")
    assert out.getvalue() == ""


def test_format_seconds():
    assert [format_seconds(s) for s in (3.2, 75.2, 4000)] == ["3s", "1m15s", "1h06m"]
