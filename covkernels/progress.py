"""Progress of long jobs (the CLI's sampling, scoring and evaluation grids) that also shows off a terminal.

tqdm's ``disable=None`` hides the bar when stderr is not a TTY, so a run under nohup, in CI or in a log file
would show nothing for minutes. :class:`Progress` draws a tqdm bar on a terminal and otherwise prints plain
lines (``<desc>: 512/2048 samples (25%), elapsed 41s, ETA 2m03s``) at most every ``min_interval`` seconds,
plus one at the start and one at the end. Library sampler calls keep k-diffusion's ``disable`` semantics;
this is for the jobs the CLI and the evaluation run on the user's behalf.
"""
from __future__ import annotations

import os
import sys
import time

# Off a terminal: a line at most this often (seconds); COVKERNELS_PROGRESS_INTERVAL overrides it (tests use 0).
DEFAULT_INTERVAL = 15.0


def format_seconds(seconds: float) -> str:
    """``75.2 -> '1m15s'``, ``4000 -> '1h06m'``, ``3.2 -> '3s'``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _interval(min_interval: float | None) -> float:
    if min_interval is not None:
        return float(min_interval)
    env = os.environ.get("COVKERNELS_PROGRESS_INTERVAL")
    try:
        return float(env) if env else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


class Progress:
    """Progress of ``total`` units of work.

    ``disable``: True shows nothing; None (default) a tqdm bar when ``file`` (default stderr) is a terminal
    and plain lines otherwise; False plain lines even on a terminal. Use as a context manager or call
    :meth:`close`. :meth:`write` prints a message without breaking the bar.
    """

    def __init__(self, total: int, desc: str = "", unit: str = "samples", *, file=None, disable: bool | None = None,
                 min_interval: float | None = None):
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ValueError(f"total must be a non-negative int, got {total!r}")
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.file = file if file is not None else sys.stderr
        self.disabled = disable is True
        self.interval = _interval(min_interval)
        self.start = self._last = time.monotonic()
        self._bar = None
        self._closed = False
        if self.disabled:
            return
        tty = disable is None and hasattr(self.file, "isatty") and self.file.isatty()
        if tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc or None, unit=unit.rstrip("s") or "it", file=self.file)
        else:
            self._line(force=True)

    def line(self) -> str:
        """The plain progress line for the current state."""
        elapsed = time.monotonic() - self.start
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = ""
        if 0 < self.done < self.total:
            eta = f", ETA {format_seconds(elapsed * (self.total - self.done) / self.done)}"
        head = f"{self.desc}: " if self.desc else ""
        return f"{head}{self.done}/{self.total} {self.unit}{pct}, elapsed {format_seconds(elapsed)}{eta}"

    def _line(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            print(self.line(), file=self.file, flush=True)

    def update(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n) if self.total else self.done + n
        if self.disabled:
            return
        if self._bar is not None:
            self._bar.update(n)
        else:
            self._line(force=self.done >= self.total)

    def write(self, message: str) -> None:
        if self.disabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.file)
        else:
            print(message, file=self.file, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif not self.disabled and self.done < self.total:
            self._line(force=True)  # an interrupted job still says how far it got

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
