"""Progress lines a person can read: done / total, rate, ETA — at most one every ``every_s`` seconds.

Printed to the process's own stdout (``sys.__stdout__``): Ray Train patches ``print`` in its
workers to write to stdout *and* its logger, and both reach the driver (every line twice).
"""
from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_progress(what: str, done: int, total: int | None, elapsed: float, unit: str = "steps",
                    rate_unit: str | None = None, rate: float | None = None, extra: str = "") -> str:
    """``what 120/480 steps (25%) · 210.0 examples/s · ETA 1:05 · extra``."""
    rate = rate if rate is not None else (done / elapsed if elapsed > 0 else 0.0)
    parts = [f"{what} {done:,}/{total:,} {unit} ({100 * done / total:.0f}%)" if total else f"{what} {done:,} {unit}"]
    parts.append(f"{rate:,.1f} {rate_unit or unit}/s")
    if total and done and elapsed > 0:
        per_unit = elapsed / done
        parts.append(f"ETA {_clock(per_unit * (total - done))}")
    if extra:
        parts.append(extra)
    return " · ".join(parts)


def emit(line: str) -> None:
    """One line to the process's own stdout (shown once in a Ray driver's output)."""
    print(line, file=sys.__stdout__ or sys.stdout, flush=True)


class Progress:
    """Rate-limited progress of one pass (an epoch, a split): call ``update(done)``; it prints when due."""

    def __init__(self, what: str, total: int | None, unit: str = "steps", every_s: float = 10.0,
                 examples_per_unit: float | None = None, enabled: bool = True) -> None:
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.examples_per_unit = examples_per_unit
        self.enabled = enabled
        self.started = self.last = time.monotonic()

    def update(self, done: int, extra: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < self.every_s):
            return
        self.last = now
        elapsed = now - self.started
        if self.examples_per_unit:
            rate = done * self.examples_per_unit / elapsed if elapsed > 0 else 0.0
            line = format_progress(self.what, done, self.total, elapsed, self.unit, "examples", rate, extra)
        else:
            line = format_progress(self.what, done, self.total, elapsed, self.unit, extra=extra)
        emit(line)
