"""Progress of a long operator command: count, rate and time left, printed to stderr.

Each report is a line of its own (no carriage-return redraw), so it reads the same in a
terminal, a log file and CI output. Reports are printed at most every `interval_s`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

REPORT_INTERVAL_S = 2.0


class Progress:
    """Counts work done in `unit`s against `total` and prints the rate and the ETA.

    `total` may be None (no ETA is printed) or an estimate: once the count passes it, the
    total and the ETA are left out. A unit of "bytes" is printed in kB, MB or GB.
    """

    def __init__(self, total: int | None, unit: str, stream: TextIO | None = sys.stderr, *, label: str = "",
                 interval_s: float = REPORT_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.unit = unit
        self.stream = stream
        self.label = label
        self.done = 0
        self._interval_s = interval_s
        self._clock = clock
        self._started = clock()
        self._last_report = self._started

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self._started

    @property
    def rate(self) -> float:
        """Units per second since the start."""
        return self.done / max(self.elapsed_s, 1e-9)

    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None without a total, before any progress, or past the total."""
        if self.total is None or self.done == 0 or self.done >= self.total:
            return None
        return (self.total - self.done) / self.rate

    def advance(self, count: int = 1) -> None:
        """Add `count` units and print a report when the last one is older than the interval."""
        self.done += count
        now = self._clock()
        if self.stream is not None and now - self._last_report >= self._interval_s:
            self._last_report = now
            print(self.report(), file=self.stream, flush=True)

    def report(self) -> str:
        """Return the current line, e.g. `replay: 1,200/4,000 entries (30%), 600 entries/s, ETA 5.0s`."""
        if self.total is not None and self.done <= self.total:
            share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            amount = f"{self._count(self.done)}/{self._count(self.total)}{self._suffix()}{share}"
        else:
            amount = f"{self._count(self.done)}{self._suffix()}"
        text = f"{amount}, {self._count(round(self.rate))}{self._suffix()}/s"
        eta = self.eta_s()
        if eta is not None:
            text += f", ETA {format_duration(eta)}"
        return f"{self.label}: {text}" if self.label else text

    def finish(self) -> str:
        """Print and return the summary: the count, the time taken and the mean rate."""
        summary = (f"{self._count(self.done)}{self._suffix()} in {format_duration(self.elapsed_s)} "
                   f"({self._count(round(self.rate))}{self._suffix()}/s)")
        if self.label:
            summary = f"{self.label}: {summary}"
        if self.stream is not None:
            print(summary, file=self.stream, flush=True)
        return summary

    def _count(self, value: int) -> str:
        if self.unit != "bytes":
            return f"{value:,}"
        for size, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if value >= size:
                return f"{value / size:.1f} {suffix}"
        return f"{value} B"

    def _suffix(self) -> str:
        # Byte counts carry their own unit (B, kB, MB, GB).
        return "" if self.unit == "bytes" else f" {self.unit}"


def format_duration(seconds: float) -> str:
    """Return `seconds` as `0.4s`, `12s`, `3m05s` or `2h07m`."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
