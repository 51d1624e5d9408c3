"""The processor service: agents read the event stream, enrich, sessionize and write the sinks.

One process is CONCURRENCY consumers of the group on every partition of the stream
(`streams.partitions.assign_streams`); any number of processes may run. A batch is
acknowledged only after its transaction committed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Coroutine
from datetime import datetime, timezone
from typing import Any, NamedTuple

import asyncpg
from aiohttp import web

from sinks import metrics as sink_metrics
from sinks.archive import create_archive_runner
from sinks.coverage import record_older_rollups
from sinks.derive import NewEvent, SiteBatch, write_derived_sites
from sinks.errors import is_transient
from sinks.freshness import TableFreshness, assess, export_metrics, read_rows, record_write
from sinks.guard import run_guard
from sinks.months import close_finished_months
from sinks.partitions import PartitionManager
from sinks.raw_events import StoredEvent, write_raw_events
from sinks.sessions import assign_sessions
from sinks.settings import ProcessorSettings
from sinks.sites import SiteCache, load_sites, publish_sites
from sinks.visitor_networks import record_networks
from streams import metrics as stream_metrics
from streams.backlog import read_total_backlog
from streams.agent import AgentOptions, AgentRunner, AgentSpec, StreamCycleRunner
from streams.bots import BotDetector, read_bot_patterns
from streams.consumer import Entry, StreamConsumer
from streams.enrich import Enricher
from streams.geo import GeoLookup
from streams.network import NetworkLookup
from streams.event import decode_entry
from streams.keys import PROCESSOR_GROUP
from streams.live import LiveRecorder
from streams.partitions import StreamPartitions, assign_streams
from streams.sites import SiteDirectory
from streams.trim import trim_stream
from weir.health import HealthChecks, add_health_routes
from weir.pool import close_pool
from weir.redis import RedisClient, connect_redis
from weir.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 3600.0
DERIVED_WRITES = ("session_fingerprints", "aggregated_metrics", "daily_metrics", "monthly_metrics", "daily_visitors")
"""Derived tables written in every batch transaction; their freshness is recorded with raw_events'."""
GAUGE_INTERVAL_S = 5.0
TRIM_INTERVAL_S = 60.0
IDLE_CONSUMER_MS = 24 * 3600 * 1000
"""Consumers of earlier processes idle this long with nothing pending are removed from the group."""
START_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 120.0
"""Seconds a statement on a pooled connection may run before asyncpg cancels it."""
START_RETRY_S = 1.0
GC_THRESHOLDS = (50_000, 20, 10)
"""Python's collector thresholds in a processor process (the defaults are 700, 10, 10).

A batch keeps tens of thousands of objects alive while it is built, so at the defaults the
young generation is collected many times per batch, and full collections walk the geo and
network readers' cached blocks. At the defaults collection took about a quarter of the
processor's CPU, and these thresholds cut its CPU per event by 15 to 22% (bench/processor).
"""


def tune_garbage_collection() -> None:
    """Freeze what start-up loaded (patterns, readers) and raise the collection thresholds.

    Call it once, in a processor process, after the Processor is built. Frozen objects are never
    collected, which suits data that lives as long as the process. Other reference cycles are
    still collected, less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class BatchCounts(NamedTuple):
    """Events in a handled batch, and how many of them were newly stored (the rest were stored already)."""

    events: int
    inserted: int


class Processor:
    """Holds the connections of one processor process and handles its batches."""

    def __init__(self, settings: ProcessorSettings, *, stream: str | None = None, group: str = PROCESSOR_GROUP) -> None:
        """Prepare a processor of every partition stream of `settings`, or of `stream` alone when given."""
        self.settings = settings
        self.stream_partitions = StreamPartitions.from_settings(settings)
        self.streams = [stream] if stream is not None else self.stream_partitions.streams()
        self.group = group
        self.redis: RedisClient | None = None
        self.pool: asyncpg.Pool | None = None
        self.enricher = Enricher(
            BotDetector(read_bot_patterns(settings.BOT_PATTERNS_FILE)),
            GeoLookup(settings.GEO_MMDB_PATH or None),
            NetworkLookup(settings.ASN_MMDB_PATH or None),
        )
        self.partitions = PartitionManager("raw_events")
        self.sites = SiteCache()
        self._failing_since: float | None = None
        self.last_failure = ""
        self.partitioned = True
        prefix = settings.CONSUMER_NAME or f"{socket.gethostname()}-{os.getpid()}"
        self.consumer_names = [f"{prefix}-{i}" for i in range(settings.CONCURRENCY)]

    async def start(self, stopping: asyncio.Event | None = None) -> bool:
        """Open connections, run the schema guard, publish the sites and create the group; return True.

        Retries for up to START_TIMEOUT_S while Redis or PostgreSQL is not reachable yet, which
        happens when every service of a deployment starts at once. Then it raises the last error.
        Returns False, with nothing open, when `stopping` is set during an attempt or while it
        waits to retry.
        """
        stopping = stopping or asyncio.Event()
        deadline = time.monotonic() + START_TIMEOUT_S
        attempt = 0
        while True:
            attempt += 1
            try:
                # An attempt can wait on a server that does not reply (asyncpg's connect timeout is
                # 60 s, and the schema guard has none), so a stop request cancels it.
                if not await _unless_stopped(self._start_once(), stopping):
                    break
                return True
            except Exception as error:
                await self.close()
                if not is_transient(error) or time.monotonic() > deadline:
                    raise
                logger.warning("processor start failed attempt=%d error=%r; retrying in %.0fs", attempt, error,
                               START_RETRY_S)
            if not await _unless_stopped(asyncio.sleep(START_RETRY_S), stopping):
                break
        await self.close()
        logger.info("processor start cancelled by a stop request attempt=%d", attempt)
        return False

    async def _start_once(self) -> None:
        self.redis = connect_redis(self.settings.REDIS_URL, cluster=self.settings.REDIS_CLUSTER, socket_timeout=30,
                                   socket_connect_timeout=5)
        self.live = LiveRecorder(self.redis)
        self.pool = await asyncpg.create_pool(self.settings.DATABASE_URL, min_size=1,
                                              max_size=self.settings.CONCURRENCY + 2,
                                              command_timeout=COMMAND_TIMEOUT_S)
        # The guard runs on its own connection without COMMAND_TIMEOUT_S, because an index built
        # concurrently on a large table can take longer. A cancelled build leaves an invalid index.
        guard_conn = await asyncpg.connect(self.settings.DATABASE_URL)
        try:
            plan = await run_guard(guard_conn, timescaledb=self.settings.TIMESCALEDB,
                                   retention_days=self.settings.RETENTION_DAYS)
        finally:
            await guard_conn.close()
        async with self.pool.acquire() as conn:
            self.partitioned = not plan.use_timescaledb and await _is_partitioned(conn, "raw_events")
            for site, first_date in await record_older_rollups(conn):
                logger.warning("rollups of site=%s before %s were written by an earlier version; run `weir replay "
                               "events --site %s --from DAY --to DAY` to rebuild the days reports should show",
                               site, first_date, site)
            await publish_sites(conn, SiteDirectory(self.redis))
        for stream in self.streams:
            await self._consumer(self.consumer_names[0], stream).ensure_group()

    async def close(self) -> None:
        if self.pool is not None:
            await close_pool(self.pool)
            self.pool = None
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None

    def _consumer(self, name: str, stream: str) -> StreamConsumer:
        return StreamConsumer(self.redis, stream, self.group, name, self.stream_partitions.dead_letter_stream(stream))

    async def handle_batch(self, entries: list[Entry]) -> BatchCounts:
        """Decode, enrich, sessionize and commit one batch, and return its counts; raise to leave it pending."""
        # Step 1: decode; a malformed entry raises MalformedEntry and is dead-lettered alone.
        events = [event for entry in entries for event in decode_entry(entry.entry_id, entry.fields)]
        if not events:
            return BatchCounts(0, 0)

        # Step 2: enrich; pure and per event.
        enrichments = [self.enricher.enrich(e) for e in events]

        # Step 3: in one transaction, assign sessions, write raw events and what derives from them.
        started = time.perf_counter()
        try:
            async with self.pool.acquire() as conn:
                if self.partitioned:
                    await self._ensure_partitions(conn, events)
                async with conn.transaction():
                    # Plan every statement for this batch's own arrays, because a generic plan cached while the
                    # tables were small or had no statistics yet (autovacuum off) stays in use as they grow.
                    await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
                    session_ids, renames = await assign_sessions(conn, events)
                    # Each id is parsed once here, for the COPY's duplicates and for the derived tables.
                    batch = [StoredEvent(e, sid, x.is_bot, uuid.UUID(e.id))
                             for e, sid, x in zip(events, session_ids, enrichments)]
                    inserted = await write_raw_events(conn, batch)
                    await record_networks(conn, ((e.site, e.visitor_id, x.network)
                                                 for e, x in zip(events, enrichments) if x.network is not None))
                    derived = await self._write_derived(conn, batch, enrichments, inserted, renames)
                    newest = _utc(max(e.timestamp_ms for e in events))
                    for table in ("raw_events", *DERIVED_WRITES):
                        await record_write(conn, table, newest, len(inserted) if table == "raw_events" else derived)
        except Exception as error:
            sink_metrics.WRITE_FAILURES.labels("raw_events", error.__class__.__name__).inc()
            if self._failing_since is None:
                self._failing_since = time.time()
            self.last_failure = f"{error.__class__.__name__}: {error}"[:500]
            raise
        self._failing_since = None

        # Step 4: count; the agent acknowledges after this returns.
        sink_metrics.ROWS_WRITTEN.labels("raw_events").inc(len(inserted))
        sink_metrics.DUPLICATES_SKIPPED.labels("raw_events").inc(len(events) - len(inserted))
        stream_metrics.EVENTS_PROCESSED.inc(len(events))
        logger.debug("batch committed entries=%d events=%d inserted=%d first_entry_id=%s elapsed_ms=%.1f",
                     len(entries), len(events), len(inserted), entries[0].entry_id,
                     (time.perf_counter() - started) * 1000)
        # Only the newly inserted events reach the live counters, so a replayed event never counts twice.
        await self.live.record(events, [x.is_bot for x in enrichments], inserted)
        return BatchCounts(len(events), len(inserted))

    async def _write_derived(self, conn: asyncpg.Connection, batch: list[StoredEvent], enrichments,
                             inserted: set, renames: dict[str, dict[str, str]]) -> int:
        """Write fingerprints, rollups and visitors for the events this transaction inserted."""
        new_by_site: dict[str, list[NewEvent]] = defaultdict(list)
        seen: set = set()
        for stored, enrichment in zip(batch, enrichments):
            event_id = stored.event_id
            if event_id in inserted and event_id not in seen:
                seen.add(event_id)
                new_by_site[stored.event.site].append(
                    NewEvent(stored.event, stored.session_id, stored.is_bot, enrichment.network))
        parts = [SiteBatch(await self.sites.get(conn, domain), new_by_site.get(domain, []), renames.get(domain, {}))
                 for domain in sorted(set(new_by_site) | set(renames))]
        results = await write_derived_sites(conn, parts)
        return sum(r.sessions_written + r.rollup_rows + r.new_visitors for r in results)

    async def _ensure_partitions(self, conn: asyncpg.Connection, events) -> None:
        days = {_utc(e.timestamp_ms).date() for e in events}
        created = await self.partitions.ensure(conn, days)
        if created:
            sink_metrics.PARTITIONS_CREATED.labels("raw_events").inc(len(created))

    async def run(self, stopping: asyncio.Event) -> None:
        """Run the agents and the maintenance loop until `stopping` is set and batches finish."""
        options = AgentOptions(
            batch_size=self.settings.BATCH_SIZE,
            reclaim_idle_ms=self.settings.RECLAIM_IDLE_MS,
            max_deliveries=self.settings.MAX_DELIVERIES,
            is_transient=is_transient,
        )
        spec = AgentSpec("raw-events", self.handle_batch)
        assignment = assign_streams(self.streams, len(self.consumer_names))
        runners: list[AgentRunner | StreamCycleRunner] = [
            _one_runner([AgentRunner(spec, self._consumer(name, stream), options) for stream in streams])
            for name, streams in zip(self.consumer_names, assignment)]
        if self.settings.ARCHIVE_URL:
            archive = [await create_archive_runner(self.redis, stream, self.settings.ARCHIVE_URL, self.consumer_names[0],
                                                   options, self.stream_partitions.dead_letter_stream(stream))
                       for stream in self.streams]
            runners.append(_one_runner(archive))
        maintenance = asyncio.create_task(self._maintain(stopping))
        try:
            await asyncio.gather(*(runner.run(stopping) for runner in runners))
        finally:
            await cancel_and_wait(maintenance)

    async def _maintain(self, stopping: asyncio.Event) -> None:
        next_retention = next_trim = next_months = 0.0
        while not stopping.is_set():
            try:
                await self._update_gauges()
                if time.monotonic() >= next_months:
                    next_months = time.monotonic() + MAINTENANCE_INTERVAL_S
                    async with self.pool.acquire() as conn:
                        sites = [(site.domain, site.timezone) for site in await load_sites(conn)]
                        await close_finished_months(conn, sites)
                if time.monotonic() >= next_trim:
                    next_trim = time.monotonic() + TRIM_INTERVAL_S
                    for stream in self.streams:
                        await trim_stream(self.redis, stream, self.settings.STREAM_KEEP_S)
                        await self._consumer(self.consumer_names[0], stream).remove_idle_consumers(
                            IDLE_CONSUMER_MS, keep=set(self.consumer_names))
                if self.partitioned and time.monotonic() >= next_retention:
                    next_retention = time.monotonic() + MAINTENANCE_INTERVAL_S
                    async with self.pool.acquire() as conn:
                        dropped = await self.partitions.maintain(conn, self.settings.RETENTION_DAYS)
                    sink_metrics.PARTITIONS_DROPPED.labels("raw_events").inc(len(dropped))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - gauges and retention retry on the next round
                logger.warning("processor maintenance failed error=%r; retrying in %.0fs", error, GAUGE_INTERVAL_S)
            try:
                await asyncio.wait_for(stopping.wait(), GAUGE_INTERVAL_S)
            except asyncio.TimeoutError:
                pass

    async def _update_gauges(self) -> None:
        depth = 0
        for stream in self.streams:
            consumer = self._consumer(self.consumer_names[0], stream)
            lag = await consumer.lag() or 0
            pending = await consumer.pending_count()
            stream_metrics.STREAM_LAG.labels(stream, self.group).set(lag)
            stream_metrics.STREAM_PENDING.labels(stream, self.group).set(pending)
            depth += lag + pending
        stream_metrics.QUEUE_DEPTH.set(depth)
        freshness = await self.assess_freshness()
        export_metrics(freshness)

    async def assess_freshness(self) -> dict[str, TableFreshness]:
        """Freshness of raw_events and every derived table, with the backlog over every partition."""
        backlog = await read_total_backlog(self.redis, self.streams, self.group)
        sink_metrics.STREAM_BACKLOG_AGE.set(backlog.oldest_age_s)
        async with self.pool.acquire() as conn:
            rows = await read_rows(conn)
        return assess(rows, ["raw_events", *DERIVED_WRITES], backlog, self.settings.STALE_AFTER_S)

    def health_checks(self) -> HealthChecks:
        checks = HealthChecks()

        async def redis_ok() -> str:
            await self.redis.ping()
            return "ok"

        async def database_ok() -> str:
            await self.pool.fetchval("SELECT 1")
            return "ok"

        async def freshness_ok() -> str:
            stale = [v.reason for v in (await self.assess_freshness()).values() if v.stale]
            return "ok" if not stale else "stale: " + "; ".join(stale)

        async def batches_ok() -> str:
            failing = self.failing_since()
            if failing is None:
                return "ok"
            return f"batches failing since {failing}: {self.last_failure}"

        checks.hard["redis"] = redis_ok
        checks.hard["database"] = database_ok
        checks.soft["freshness"] = freshness_ok
        checks.soft["batches"] = batches_ok
        return checks

    def failing_since(self) -> str | None:
        """When the current run of failed batches began (ISO time), or None after a success."""
        if self._failing_since is None:
            return None
        return datetime.fromtimestamp(self._failing_since, tz=timezone.utc).isoformat(timespec="seconds")


async def _unless_stopped(work: Coroutine[Any, Any, Any], stopping: asyncio.Event) -> bool:
    """Run `work` and return True, or cancel it and return False when `stopping` is set first.

    Raises what `work` raises.
    """
    task = asyncio.create_task(work)
    stop = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not task.done():
            await cancel_and_wait(task)
    if task.cancelled():
        return False
    task.result()
    return True


def _one_runner(runners: list[AgentRunner]) -> AgentRunner | StreamCycleRunner:
    return runners[0] if len(runners) == 1 else StreamCycleRunner(runners)


async def _is_partitioned(conn: asyncpg.Connection, table: str) -> bool:
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
        "WHERE c.relname = $1 AND c.relnamespace = current_schema()::regnamespace)", table))


def _utc(unix_ms: int) -> datetime:
    return datetime.fromtimestamp(unix_ms / 1000, tz=timezone.utc)


def create_processor_health_app(processor: Processor) -> web.Application:
    """Build the processor's side-port app, with /health and /metrics only."""
    app = web.Application()
    add_health_routes(app, processor.health_checks())
    return app
