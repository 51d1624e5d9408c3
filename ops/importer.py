"""`weir import-logs`: web server access logs into the event stream, through the collector's checks.

Each pageview line becomes a pageview event with the line's client address and user agent, so
it gets a visitor id and bot flag exactly as a live request would. Its event id is derived from
the site, the line's text and how often that same text occurred before in the file, so
importing a file again writes the same ids and the sinks skip them. Lines that are not
pageviews (other methods, error statuses, static files) are counted and not written. Each event
goes to its visitor's partition of the stream (`streams.partitions`), in the order of the lines.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TextIO

from ingest.validate import MAX_USER_AGENT_CHARS, EventBuilder, InvalidEvent, RequestContext
from ops.logformat import MalformedLine, UnreadableLog, day_shift_to_today, is_pageview, parse_line, read_log_lines, request_path
from streams.event import Event, encode_entry
from streams.partitions import StreamPartitions
from streams.sites import Site, SiteDirectory
from streams.visitor import SaltStore
from weir.redis import RedisClient

logger = logging.getLogger(__name__)

EVENTS_PER_ENTRY = 100
ENTRIES_PER_PIPELINE = 20
PROGRESS_INTERVAL_S = 2.0
MAX_MALFORMED_SHOWN = 20
"""Malformed lines printed one by one; past this only the summary counts them."""


def _printable(text: str, limit: int = 300) -> str:
    """Escape control and binary characters, so a wrong file cannot garble the terminal."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


@dataclass
class ImportSummary:
    lines_read: int = 0
    events_sent: int = 0
    """Events written to the stream, including those a processor skips because their id is stored."""
    not_pageviews: int = 0
    malformed: int = 0
    rejected: int = 0
    malformed_lines: list[str] = field(default_factory=list)
    rejected_reasons: Counter = field(default_factory=Counter)

    def line(self) -> str:
        return (f"lines read {self.lines_read}, events sent {self.events_sent}, "
                f"skipped {self.not_pageviews} (not pageviews), malformed {self.malformed}, rejected {self.rejected}")


def newest_time(paths: list[Path], log_format: str) -> datetime | None:
    """Return the newest timestamp in `paths`, reading them once (for --shift-to-today)."""
    newest = None
    for path in paths:
        try:
            for number, text in read_log_lines(path):
                try:
                    moment = parse_line(text, number, log_format).time
                except MalformedLine:
                    continue
                if newest is None or moment > newest:
                    newest = moment
        except UnreadableLog:
            # The import stops at the same line and reports it, so the shift comes from the
            # lines that it imports.
            return newest
    return newest


class LogImporter:
    """Reads log files and writes their pageviews to the event stream in pipelined batches."""

    def __init__(self, redis: RedisClient, site: Site, *, log_format: str = "combined",
                 shift: timedelta = timedelta(0), progress: TextIO | None = sys.stderr,
                 partitions: StreamPartitions = StreamPartitions()) -> None:
        self.redis = redis
        self.site = site
        self.log_format = log_format
        self.shift = shift
        self.progress = progress
        self.partitions = partitions
        self.builder = EventBuilder(SiteDirectory(redis), SaltStore(redis))
        self.summary = ImportSummary()
        self._pending: dict[str, list[Event]] = {}
        """Events not yet in an entry, by stream."""
        self._entries: list[tuple[str, dict]] = []
        """Entries not yet written: stream and fields."""
        self._last_progress = time.monotonic()
        self._started = time.monotonic()

    async def import_files(self, paths: list[Path]) -> ImportSummary:
        """Import every line of `paths` in order, reporting and skipping malformed lines.

        A gzip file that ends early or is corrupt stops the import at the damage. The lines
        before it are written, and UnreadableLog is raised with the summary as `partial`.
        """
        for path in paths:
            occurrences: Counter = Counter()
            try:
                for number, text in read_log_lines(path):
                    self.summary.lines_read += 1
                    await self._import_line(path, number, text, occurrences)
                    self._report_progress(path)
            except UnreadableLog as error:
                await self._flush(final=True)
                error.partial = self.summary
                raise
        await self._flush(final=True)
        return self.summary

    async def _import_line(self, path: Path, number: int, text: str, occurrences: Counter) -> None:
        try:
            record = parse_line(text, number, self.log_format)
        except MalformedLine as error:
            self.summary.malformed += 1
            self.summary.malformed_lines.append(f"{path}:{error}")
            if self.progress and self.summary.malformed <= MAX_MALFORMED_SHOWN:
                print(f"malformed {path}:{_printable(str(error))}", file=self.progress)
            elif self.progress and self.summary.malformed == MAX_MALFORMED_SHOWN + 1:
                print("more malformed lines follow; only their count is shown", file=self.progress)
            return
        if not is_pageview(record):
            self.summary.not_pageviews += 1
            return

        digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        occurrences[digest] += 1
        path_and_query = request_path(record)
        item = {
            "site": self.site.domain,
            "type": "pageview",
            "url": f"https://{self.site.domain}{path_and_query}",
            "path": path_and_query,
            "referrer": record.referrer,
            "timestamp": int((record.time + self.shift).timestamp() * 1000),
            "id": f"log:{digest}:{occurrences[digest]}",
        }
        # A user agent over MAX_USER_AGENT_CHARS is cut rather than the line rejected, as the
        # collector cuts a User-Agent header.
        user_agent = (record.user_agent or "")[:MAX_USER_AGENT_CHARS]
        context = RequestContext(received_ms=int(time.time() * 1000), ip=record.remote_addr,
                                 user_agent=user_agent, source="import", trust_timestamps=True)
        try:
            event = await self.builder.build_one(item, context)
        except InvalidEvent as error:
            self.summary.rejected += 1
            self.summary.rejected_reasons[error.reason] += 1
            logger.warning("log line rejected path=%s line=%d reason=%s error=%s", path, number, error.reason, error)
            return
        stream = self.partitions.stream_of(event)
        pending = self._pending.setdefault(stream, [])
        pending.append(event)
        if len(pending) >= EVENTS_PER_ENTRY:
            self._add_entry(stream)
            await self._flush()

    def _add_entry(self, stream: str) -> None:
        events = self._pending.pop(stream)
        self._entries.append((stream, encode_entry(events)))
        self.summary.events_sent += len(events)

    async def _flush(self, final: bool = False) -> None:
        if final:
            for stream in list(self._pending):
                self._add_entry(stream)
        if self._entries and (final or len(self._entries) >= ENTRIES_PER_PIPELINE):
            # Not a transaction, because redis-py's cluster pipelines reject one. An import run
            # again after a failure writes the same event ids, and the sinks skip stored ones.
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream, fields in self._entries:
                    pipe.xadd(stream, fields)
                await pipe.execute()
            self._entries = []

    def _report_progress(self, path: Path) -> None:
        now = time.monotonic()
        if self.progress is None or now - self._last_progress < PROGRESS_INTERVAL_S:
            return
        self._last_progress = now
        rate = self.summary.lines_read / max(now - self._started, 1e-6)
        print(f"importing {path}: {self.summary.lines_read} lines read, {self.summary.events_sent} events, "
              f"{rate:,.0f} lines/s", file=self.progress)


def shift_for(newest: datetime | None, today: date | None = None) -> timedelta:
    if newest is None:
        return timedelta(0)
    return day_shift_to_today(newest, today or datetime.now(timezone.utc).date())
