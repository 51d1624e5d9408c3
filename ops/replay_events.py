"""`weir replay events`: rebuild a site's sessions and rollups for a range of days from raw_events.

The range is cut into chunks of whole days, each rebuilt and committed on its own (one
transaction per chunk; the default chunk is the whole range, so readers see it switch at once).
A stop request keeps the chunks committed before it and rolls back the chunk in flight, and the
run prints the day to resume from.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Coroutine
from datetime import date, timedelta
from typing import Any, TextIO

import asyncpg

from sinks.coverage import extend_back
from sinks.rebuild import RebuildReport, rebuild_range
from sinks.sites import get_site
from streams.bots import BotDetector

ONLY_CHOICES = ("sessions", "rollups")
EARLIEST_DAY = date(1999, 12, 31)
"""First day a replay accepts. The collector stores no event before 2000-01-01 UTC, which is
still 1999-12-31 in time zones behind UTC."""
LATEST_DAY = date(9999, 10, 31)
"""Last day a replay accepts, four weeks before the last day that works (9999-11-28) as a margin.
The rebuild computes dates up to a month past the range's last day, and Python dates end at 9999-12-31."""


def chunks(first: date, last: date, chunk_days: int | None) -> list[tuple[date, date]]:
    if not chunk_days:
        return [(first, last)]
    result, current = [], first
    while current <= last:
        end = min(current + timedelta(days=chunk_days - 1), last)
        result.append((current, end))
        current = end + timedelta(days=1)
    return result


async def replay_events(database_url: str, domain: str, first: date, last: date, *, only: set[str],
                        chunk_days: int | None = None, bot_patterns: list[str] | None = None,
                        stopping: asyncio.Event | None = None, progress: TextIO | None = sys.stderr) -> list[RebuildReport]:
    """Rebuild `domain` for local days first..last; raise LookupError for an unknown site."""
    conn = await asyncpg.connect(database_url)
    try:
        site = await get_site(conn, domain)
        if site is None:
            raise LookupError(f"unknown site {domain!r}: list sites with `weir site list`")
        bots = BotDetector(bot_patterns or ())
        parts = chunks(first, last, chunk_days)
        reports: list[RebuildReport] = []
        started = time.monotonic()
        for number, (chunk_first, chunk_last) in enumerate(parts, start=1):
            if stopping is not None and stopping.is_set():
                _say(progress, f"stopped before {chunk_first}; resume with --from {chunk_first} --to {last}")
                break
            rebuild = rebuild_range(conn, site, bots, chunk_first, chunk_last,
                                    sessions="sessions" in only, rollups="rollups" in only)
            report = await _unless_stopped(rebuild, stopping)
            if report is None:
                _say(progress, f"stopped during {chunk_first}..{chunk_last}, which was rolled back; resume with "
                               f"--from {chunk_first} --to {last}")
                break
            reports.append(report)
            _report_progress(progress, number, len(parts), reports, started)
        if reports and any("daily_metrics" in report.tables for report in reports):
            # Each chunk moves the first complete date back only when it reaches that date, and chunks
            # run oldest first, so only the last one did. The chunks together rebuilt first..last.
            await extend_back(conn, site.domain, first, reports[-1].last)
        return reports
    finally:
        await conn.close()


async def _unless_stopped(rebuild: Coroutine[Any, Any, RebuildReport],
                          stopping: asyncio.Event | None) -> RebuildReport | None:
    """Return the chunk's report, or None when a stop request came first and the chunk was cancelled.

    A chunk can wait minutes for the site's lock or run for minutes, so a stop does not wait
    for it. Cancelling the task cancels the statement in flight and rolls the transaction back.
    """
    task = asyncio.ensure_future(rebuild)
    if stopping is None:
        return await task
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait((task, stop), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.wait((task,))
    # The chunk may have committed between the stop request and the cancel.
    return None if task.cancelled() else task.result()


def _report_progress(progress: TextIO | None, done: int, total: int, reports: list[RebuildReport],
                     started: float) -> None:
    if progress is None:
        return
    elapsed = time.monotonic() - started
    events = sum(r.events for r in reports)
    rate = events / elapsed if elapsed > 0 else 0.0
    eta = elapsed / done * (total - done)
    _say(progress, f"chunk {done}/{total} {reports[-1].line()}; {rate:,.0f} events/s, ETA {eta:.0f}s")


def _say(progress: TextIO | None, text: str) -> None:
    if progress is not None:
        print(text, file=progress, flush=True)
