"""Load generated traffic and its derived tables into a database with COPY, fast enough for 10 million events.

The product's processor stored 4,900 to 8,600 events per second on this two-core machine
(bench/processor/RESULTS.md), so 10 million events would take 20 to 35 minutes. This
loader takes each UTC day of events and derives the same rows in-process with the product's
own functions:

- bot flags, location and network owner from `streams.enrich.Enricher`, as the processor does;
- sessions and fingerprints from `sinks.rebuild._rebuild_sessions` (sessionization with
  `streams.sessionize`, fingerprints with `streams.fingerprint`), which `weir replay` runs;
- rollup counts from `sinks.rebuild._rollup_counts` (`streams.rollup`) and daily visitors from
  `sinks.rebuild._visits`;

then COPYs raw_events, session_fingerprints, visitor_networks, daily_visitors and the rollup
rows. At the end it sums monthly_metrics from daily_metrics and marks every month closed, as the
processor's maintenance would once each month is over (`sinks.months`). A day is complete in one batch because a visitor id lives within one UTC day. A local
date's rollup rows are written once no later UTC day can add to them. `run.py --verify`
checks that the tables equal those the real processor writes from the same events.

Two things keep the load fast on two cores. The tables' secondary and unique indexes are
dropped before the load and rebuilt by the schema guard after it, which sorts once instead of
updating every index per row. COPY runs in a writer thread with its own connection, so
PostgreSQL stores one day while this thread derives the next. And separate processes can load
separate sites (`load_sites`), because no derived row mixes two sites.

A database loaded before custom event properties were rolled up gets those rows, as this loader
writes them, without the reload (23 minutes for 10 million events):

    .venv/bin/python -m bench.dashboard.load --fill-properties [--database URL]
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time as clock_time, timedelta, timezone

import asyncpg
import orjson

from sinks.fingerprints import ROW_COLUMNS
from sinks.freshness import record_write
from sinks.guard import run_guard
from sinks.partitions import PartitionManager
from sinks.raw_events import COLUMNS, StoredEvent, to_record
from sinks.coverage import record_complete
from sinks.months import closed_among, mark_closed
from sinks.rollups import refresh_months
from sinks.rebuild import _rebuild_sessions, _rollup_counts, _visits
from sinks.schema import TABLES
from sinks.sites import upsert_site
from streams.enrich import Enricher
from streams.event import Event
from streams.fingerprint import VisitorNetwork
from streams.rollup import (DAILY, HOURLY, PROPERTY, event_contributions, monthly_contributions, property_values,
                            visitor_change, visitor_days)
from streams.sites import Site

NETWORK_COLUMNS = ("site", "visitor_id", "country", "region", "city", "asn", "org", "orgType", "isGovernment",
                   "responseTier")
DAILY_COLUMNS = ("site", "date", "metric_name", "dimension_key", "dimension_value", "value")
HOURLY_COLUMNS = ("site", "bucket", "granularity", "metric_name", "dimension_key", "dimension_value", "value")


@dataclass
class LoadReport:
    events: int = 0
    sessions: int = 0
    daily_rows: int = 0
    hourly_rows: int = 0
    elapsed_s: float = 0.0
    days: int = 0


LOADED_TABLES = ("raw_events", "session_fingerprints", "visitor_networks", "daily_visitors", "daily_metrics",
                 "monthly_metrics", "aggregated_metrics")
WRITER_QUEUE_DAYS = 3
"""COPY jobs waiting for the writer thread, in days of traffic; bounds the memory they take."""


async def prepare_schema(conn: asyncpg.Connection, sites: Iterable[Site], first: date, last: date) -> None:
    """Create the tables as a processor does at start, the day partitions of first..last (UTC) and the sites.

    The declared indexes of the loaded tables are dropped, but not their primary keys.
    `finish_load` has the schema guard build them again.
    """
    await run_guard(conn, timescaledb="off", retention_days=None)
    for table in TABLES:
        if table.name in LOADED_TABLES:
            for index in table.indexes:
                await conn.execute(f"DROP INDEX IF EXISTS {index.name}")
    partitioned = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_partitioned_table p JOIN pg_class c "
                                      "ON c.oid = p.partrelid WHERE c.relname = 'raw_events')")
    if partitioned:
        days = {first + timedelta(days=n) for n in range((last - first).days + 1)}
        await PartitionManager("raw_events").ensure(conn, days)
    for site in sites:
        await upsert_site(conn, site)


def _row(event: Event) -> dict:
    """Return an event as the raw_events row that the rebuild reads."""
    return {"id": event.id, "timestamp": datetime.fromtimestamp(event.timestamp_ms / 1000, tz=timezone.utc),
            "event_type": event.type, "event_action": event.action, "url": event.url, "referrer": event.referrer,
            "user_agent": event.user_agent, "visitor_id": event.visitor_id, "session_id": "", "is_bot": False,
            "metadata": event.props}


def _network_record(site: str, visitor: str, n: VisitorNetwork) -> tuple:
    return (site, visitor, n.country, n.region, n.city, n.asn, n.org, n.org_type, n.is_government, n.response_tier)


class CopyWriter:
    """A thread with its own event loop and connection that runs the COPY jobs in order."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._jobs: queue.Queue = queue.Queue(maxsize=WRITER_QUEUE_DAYS * len(LOADED_TABLES))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="copy-writer", daemon=True)
        self._thread.start()

    def put(self, table: str, records: list[tuple], columns: tuple[str, ...]) -> None:
        if self._error is not None:
            raise RuntimeError(f"COPY failed in the writer thread: {self._error!r}") from self._error
        self._jobs.put((table, records, columns))

    def close(self) -> None:
        """Wait until every job is written; raise the writer's error if one failed."""
        self._jobs.put(None)
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"COPY failed in the writer thread: {self._error!r}") from self._error

    async def _run(self) -> None:
        conn = await asyncpg.connect(self._url)
        try:
            while (job := self._jobs.get()) is not None:
                if self._error is None:
                    table, records, columns = job
                    try:
                        await conn.copy_records_to_table(table, records=records, columns=list(columns))
                    except Exception as error:  # noqa: BLE001 - put() and close() raise it in the loading thread
                        self._error = error
        finally:
            await conn.close()


class Loader:
    """Derivation and COPY of one UTC day at a time. Rollup rows wait until their date or hour is complete."""

    def __init__(self, writer: CopyWriter, sites: Iterable[Site]) -> None:
        self.writer = writer
        self.sites = {site.domain: site for site in sites}
        self.enricher = Enricher()
        self.counts: dict[str, Counter] = {domain: Counter() for domain in self.sites}
        self.report = LoadReport()

    async def add_day(self, day: date, events: list[Event]) -> None:
        """Derive and store one UTC day's events; every event of a visitor id of that day must be here."""
        by_site: dict[str, list[Event]] = {}
        for event in events:
            by_site.setdefault(event.site, []).append(event)
        raw_records: list[tuple] = []
        fingerprints: list[tuple] = []
        networks: list[tuple] = []
        visits: list[tuple] = []
        for domain, site_events in by_site.items():
            site = self.sites[domain]
            rows = [_row(e) for e in site_events]
            visitor_networks: dict[str, VisitorNetwork] = {}
            for event in site_events:
                if event.visitor_id not in visitor_networks and event.ip:
                    visitor_networks[event.visitor_id] = self.enricher.enrich(event).network
            flags, session_ids, new_fingerprints = _rebuild_sessions(
                site, rows, [], visitor_networks, self.enricher.bots, True)
            self.counts[domain].update(_rollup_counts(site, rows, flags, [], new_fingerprints, date.min, date.max))

            raw_records += [to_record(StoredEvent(e, sid, flag)) for e, sid, flag in zip(site_events, session_ids, flags)]
            fingerprints += [tuple(fp[c] for c in ROW_COLUMNS) for fp in new_fingerprints]
            networks += [_network_record(domain, visitor, n) for visitor, n in sorted(visitor_networks.items())]
            visits += [(domain, d, visitor) for d, visitor in sorted(_visits(site, rows, flags))]
            self.report.sessions += len(new_fingerprints)

        await self._copy("raw_events", raw_records, COLUMNS)
        await self._copy("session_fingerprints", fingerprints, ROW_COLUMNS)
        await self._copy("visitor_networks", networks, NETWORK_COLUMNS)
        await self._copy("daily_visitors", visits, ("site", "date", "visitor_id"))
        # A local date ends at most 12 hours after the UTC date of the same number ends (UTC-12),
        # so after UTC day D no later batch adds to local dates before D or to hours before D.
        await self._flush(lambda key: key.bucket < day if key.granularity == DAILY
                          else key.bucket < datetime.combine(day, clock_time(), timezone.utc))
        self.report.events += len(events)
        self.report.days += 1

    async def finish(self) -> LoadReport:
        """Write the remaining rollup rows and wait until the writer has stored everything."""
        await self._flush(lambda key: True)
        self.writer.close()
        return self.report

    async def _flush(self, complete) -> None:
        daily: list[tuple] = []
        hourly: list[tuple] = []
        for domain, counts in self.counts.items():
            done = [key for key in counts if complete(key)]
            for key in done:
                value = counts.pop(key)
                if not value:
                    continue
                if key.granularity == DAILY:
                    daily.append((domain, key.bucket, key.metric, key.dimension_key, key.dimension_value, value))
                elif key.granularity == HOURLY:
                    hourly.append((domain, key.bucket, HOURLY, key.metric, key.dimension_key, key.dimension_value,
                                   value))
        await self._copy("daily_metrics", daily, DAILY_COLUMNS)
        await self._copy("aggregated_metrics", hourly, HOURLY_COLUMNS)
        self.report.daily_rows += len(daily)
        self.report.hourly_rows += len(hourly)

    async def _copy(self, table: str, records: list[tuple], columns: tuple[str, ...]) -> None:
        if records:
            self.writer.put(table, records, columns)


async def load_sites(url: str, sites: Iterable[Site], batches: Iterable[tuple[date, list[Event]]],
                     progress=None) -> LoadReport:
    """Load every (UTC day, events) batch of `sites`, in day order, into the schema at `url`.

    Several processes may load disjoint sets of sites into one database at the same time;
    `finish_load` runs once after all of them.
    """
    started = time.perf_counter()
    loader = Loader(CopyWriter(url), sites)
    for day, events in batches:
        await loader.add_day(day, events)
        if progress is not None:
            progress(day, loader.report, time.perf_counter() - started)
    report = await loader.finish()
    report.elapsed_s = time.perf_counter() - started
    return report


async def finish_load(conn: asyncpg.Connection) -> dict[str, int]:
    """Build the dropped indexes, sum the monthly rows, mark the tables written, VACUUM; return row counts.

    VACUUM sets the visibility map that index-only scans of the rollups need; autovacuum would
    do it on a server that runs it.
    """
    await run_guard(conn, timescaledb="off", retention_days=None)
    for row in await conn.fetch("SELECT site, min(date) AS first, max(date) AS last FROM daily_metrics GROUP BY site"):
        await refresh_months(conn, row["site"], row["first"], row["last"])
        months = await conn.fetch("SELECT DISTINCT month FROM monthly_metrics WHERE site = $1", row["site"])
        await mark_closed(conn, row["site"], [m["month"] for m in months])
        await record_complete(conn, row["site"])
    newest = await conn.fetchval('SELECT max("timestamp") FROM raw_events')
    for table in ("raw_events", "session_fingerprints", "aggregated_metrics", "daily_metrics", "monthly_metrics",
                  "daily_visitors"):
        await record_write(conn, table, newest, 0)
    await conn.execute("VACUUM (ANALYZE)")
    return {table: await conn.fetchval(f"SELECT count(*) FROM {table}") for table in LOADED_TABLES}


_CUSTOM_EVENTS = """
SELECT visitor_id, event_type, event_action, "timestamp", metadata FROM raw_events
 WHERE site = $1 AND event_type <> 'pageview' AND NOT is_bot
"""


async def fill_properties(conn: asyncpg.Connection) -> dict[str, int]:
    """Replace every site's "event_property" rows with those the loader writes; return the rows per site.

    Counts come from each site's human custom events with the product's functions, as
    `sinks.rebuild._rollup_counts` counts them, and monthly rows are written for closed months
    only. A property's visitor pairs do not depend on a visitor's other events, so its custom
    events alone give them.
    """
    written = {}
    for domain, zone in await conn.fetch("SELECT domain, timezone FROM sites ORDER BY domain"):
        counts: Counter = Counter()
        by_visitor: dict[str, list] = defaultdict(list)
        for row in await conn.fetch(_CUSTOM_EVENTS, domain):
            moment = int(round(row["timestamp"].timestamp() * 1000))
            values = property_values(row["event_type"], row["event_action"], orjson.loads(row["metadata"] or "{}"))
            event_contributions(counts, row["event_type"], row["event_action"], moment, False, zone, values)
            by_visitor[row["visitor_id"]].append((row["event_type"], row["event_action"], moment, values))
        for events in by_visitor.values():
            visitor_change(counts, {}, visitor_days(events, [], zone))
        daily = Counter({key: value for key, value in counts.items()
                         if key.granularity == DAILY and key.dimension_key == PROPERTY and value})
        monthly = monthly_contributions(daily)
        closed = await closed_among(conn, domain, {key.bucket for key in monthly})
        daily_rows = [(domain, k.bucket, k.metric, k.dimension_key, k.dimension_value, v) for k, v in daily.items()]
        monthly_rows = [(domain, k.bucket, k.metric, k.dimension_key, k.dimension_value, v)
                        for k, v in monthly.items() if v and k.bucket in closed]
        async with conn.transaction():
            await conn.execute("DELETE FROM daily_metrics WHERE site = $1 AND dimension_key = $2", domain, PROPERTY)
            await conn.execute("DELETE FROM monthly_metrics WHERE site = $1 AND dimension_key = $2", domain, PROPERTY)
            await conn.copy_records_to_table("daily_metrics", records=daily_rows, columns=list(DAILY_COLUMNS))
            month_columns = ("site", "month", *DAILY_COLUMNS[2:])
            await conn.copy_records_to_table("monthly_metrics", records=monthly_rows, columns=list(month_columns))
        written[domain] = len(daily_rows) + len(monthly_rows)
    await conn.execute("VACUUM (ANALYZE) daily_metrics, monthly_metrics")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description="Maintain a loaded dashboard benchmark database.")
    parser.add_argument("--fill-properties", action="store_true", required=True,
                        help="write the custom event property rollup rows from raw_events")
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/weir_bench_dashboard",
                        help="URL of the loaded database (default: weir_bench_dashboard on 127.0.0.1:5432)")
    args = parser.parse_args()

    async def run() -> None:
        conn = await asyncpg.connect(args.database)
        try:
            started = time.perf_counter()
            written = await fill_properties(conn)
            print(f"event_property rows written in {time.perf_counter() - started:.1f} s: {written}")
        finally:
            await conn.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
