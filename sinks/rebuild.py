"""Rebuild one site's derived tables for a range of local days from what raw_events holds.

Used by `weir replay events` after an incident or when a better bot list arrives. In one
transaction, under the site's exclusive advisory lock (live batches of that site take it shared,
so they wait and then go on), it:

1. reads the site's raw events of every UTC day that touches the range (a visitor id lives one
   UTC day, so this holds every session that reaches into the range, whole);
2. re-runs bot detection and sessionization on them (when sessions are rebuilt);
3. rebuilds the fingerprints of those visitors, carrying location and network over from their
   stored fingerprints (the address itself is never stored);
4. replaces the rollup rows of the range outright, moves rows outside the range by the
   difference between the old and new contributions of the events read, and sums the monthly
   rows of the closed months it touched again.

Readers see the old range or the new one, never a mix. Running it twice changes nothing.
"""

from __future__ import annotations

import logging
import time as clock
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import asyncpg
import orjson

from sinks.coverage import extend_back
from sinks.fingerprints import ROW_COLUMNS, save_fingerprints
from sinks.freshness import record_write
from sinks.months import closed_among
from sinks.rollups import daily_rows_sql, refresh_months, write_rollups
from sinks.sessions import SITE_LOCK_CLASS
from sinks.visitor_networks import load_networks
from streams.bots import BotDetector
from streams.fingerprint import Fingerprint, VisitorNetwork, describe, fingerprint_of_event, from_row, merge
from streams.rollup import (event_contributions, local_date, property_values, session_contributions, visitor_change,
                            visitor_days)
from streams.sessionize import plan_sessions
from streams.sites import Site

logger = logging.getLogger(__name__)

_RAW = """
SELECT id, "timestamp", event_type, event_action, url, referrer, user_agent, visitor_id, session_id, is_bot,
       CASE WHEN event_type <> 'pageview' THEN metadata END AS metadata
  FROM raw_events
 WHERE site = $1 AND "timestamp" >= $2 AND "timestamp" < $3 AND visitor_id <> ''
"""

_UPDATE_RAW = """
UPDATE raw_events r SET is_bot = u.is_bot, session_id = u.session_id
  FROM unnest($2::uuid[], $3::timestamptz[], $4::boolean[], $5::text[]) AS u(id, ts, is_bot, session_id)
 WHERE r.site = $1 AND r.id = u.id AND r."timestamp" = u.ts
"""


_OLDEST_RAW = 'SELECT min("timestamp") FROM raw_events WHERE site = $1'

_DAY_TOTALS = """
SELECT coalesce(sum(value) FILTER (WHERE metric_name IN ('pageviews', 'bot_pageviews')), 0)::bigint AS pageviews,
       coalesce(sum(value) FILTER (WHERE metric_name = 'events'), 0)::bigint AS events
  FROM daily_metrics
 WHERE site = $1 AND dimension_key IS NULL AND metric_name IN ('pageviews', 'bot_pageviews', 'events') AND date = $2
"""

_DAY_RAW_COUNTS = """
SELECT count(*) FILTER (WHERE event_type = 'pageview') AS pageviews,
       count(*) FILTER (WHERE event_type <> 'pageview' AND NOT is_bot) AS events
  FROM raw_events
 WHERE site = $1 AND "timestamp" >= $2 AND "timestamp" < $3 AND visitor_id <> ''
"""

_FIRST_ROLLUP = daily_rows_sql("min(d.date) AS date", "d.date >= $2 AND d.date < $3") + "SELECT min(date) FROM ranged"

_DELETE_DAILY = (daily_rows_sql("d.ctid", "d.date >= $2 AND d.date <= $3")
                 + "DELETE FROM daily_metrics WHERE ctid = ANY (ARRAY(SELECT ctid FROM ranged))")


class RangeBeforeRawEvents(ValueError):
    """Raised when a range has rollup rows on days older than the site's oldest raw event.

    Rebuilding those days would delete rollups that nothing can rebuild, such as the days that
    retention dropped from raw_events.
    """


@dataclass
class RebuildReport:
    site: str
    first: date
    last: date
    events: int = 0
    bot_flags_changed: int = 0
    session_ids_changed: int = 0
    sessions_before: int = 0
    sessions_after: int = 0
    rollup_rows_written: int = 0
    elapsed_s: float = 0.0
    tables: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.site} {self.first}..{self.last}: {self.events} events read, {self.bot_flags_changed} bot flags "
                f"changed, {self.session_ids_changed} session ids changed, sessions {self.sessions_before} -> "
                f"{self.sessions_after}, {self.rollup_rows_written} rollup rows written in {self.elapsed_s:.1f}s")


def utc_window(site: Site, first: date, last: date) -> tuple[datetime, datetime, datetime, datetime]:
    """Return the local range [start, end) and the whole UTC days [window_start, window_end) around it."""
    zone = ZoneInfo(site.timezone)
    start = datetime.combine(first, time(), zone)
    end = datetime.combine(last + timedelta(days=1), time(), zone)
    first_utc = start.astimezone(timezone.utc).date()
    last_utc = (end - timedelta(microseconds=1)).astimezone(timezone.utc).date()
    window_start = datetime.combine(first_utc, time(), timezone.utc)
    window_end = datetime.combine(last_utc + timedelta(days=1), time(), timezone.utc)
    return start, end, window_start, window_end


async def rebuild_range(conn: asyncpg.Connection, site: Site, bots: BotDetector, first: date, last: date, *,
                        sessions: bool = True, rollups: bool = True) -> RebuildReport:
    """Rebuild `site`'s derived rows for the local days first..last; see the module docstring.

    Rebuilding sessions rebuilds the rollups too: they count sessions, bounces and bot flags, so
    new sessions beside old rollups would count some visits twice and others not at all.
    """
    rollups = rollups or sessions
    started = clock.perf_counter()
    report = RebuildReport(site.domain, first, last)
    start, end, window_start, window_end = utc_window(site, first, last)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", SITE_LOCK_CLASS, site.domain)
        if rollups:
            await _check_raw_events_reach(conn, site, first, last)
        rows = await conn.fetch(_RAW, site.domain, window_start, window_end)
        visitors = sorted({r["visitor_id"] for r in rows})
        old_fingerprints = await conn.fetch(
            f"SELECT {', '.join(_quoted(c) for c in ROW_COLUMNS)} FROM session_fingerprints "
            "WHERE site = $1 AND visitor_id = ANY($2::text[]) ORDER BY session_id FOR UPDATE", site.domain, visitors)
        report.events, report.sessions_before = len(rows), len(old_fingerprints)

        networks = await load_networks(conn, site.domain, visitors)
        flags, session_ids, new_fingerprints = _rebuild_sessions(site, rows, old_fingerprints, networks, bots, sessions)
        report.bot_flags_changed = sum(1 for r, flag in zip(rows, flags) if r["is_bot"] != flag)
        report.session_ids_changed = sum(1 for r, sid in zip(rows, session_ids) if r["session_id"] != sid)
        report.sessions_after = len(new_fingerprints)

        if sessions:
            await _write_sessions(conn, site, rows, flags, session_ids, visitors, new_fingerprints)
            report.tables += ["raw_events", "session_fingerprints"]
        if rollups:
            counts = _rollup_counts(site, rows, flags, old_fingerprints, new_fingerprints, first, last)
            report.rollup_rows_written = await _replace_rollups(conn, site, visitors, rows, flags, new_fingerprints,
                                                                counts, first, last, start, end)
            await extend_back(conn, site.domain, first, last)
            report.tables += ["aggregated_metrics", "daily_metrics", "monthly_metrics", "daily_visitors"]
        newest = max((r["timestamp"] for r in rows), default=None)
        for table in report.tables:
            await record_write(conn, table, newest, 0)
    report.elapsed_s = clock.perf_counter() - started
    logger.info("range rebuilt %s", report.line(), extra={"site": site.domain})
    return report


async def _check_raw_events_reach(conn: asyncpg.Connection, site: Site, first: date, last: date) -> None:
    """Raise RangeBeforeRawEvents when first..last has rollup rows that raw_events no longer contains in full.

    Those are the days before the site's oldest raw event, and that event's own local day when its
    rollups count more events than raw_events contains of it. Retention drops whole UTC days, so a
    local day that starts in an earlier UTC day than the oldest raw event can have lost its first hours.
    """
    oldest = await conn.fetchval(_OLDEST_RAW, site.domain)
    kept_from = local_date(_ms(oldest), site.timezone) if oldest is not None else last + timedelta(days=1)
    if oldest is not None and first <= kept_from <= last:
        await _check_oldest_day_whole(conn, site, kept_from, oldest)
    if first >= kept_from:
        return
    orphaned = await conn.fetchval(_FIRST_ROLLUP, site.domain, first, min(kept_from, last + timedelta(days=1)))
    if orphaned is not None:
        raise RangeBeforeRawEvents(
            f"rollups of {site.domain} on {orphaned} are older than its oldest raw event ({kept_from}), so a rebuild "
            f"would delete them without replacing them; rebuild only days from {kept_from} on")


async def _check_oldest_day_whole(conn: asyncpg.Connection, site: Site, day: date, oldest: datetime) -> None:
    """Raise RangeBeforeRawEvents when the rollups of `day`, the local day of the oldest raw event,
    count more events than raw_events contains of it.

    Only a day that starts before the UTC day of the oldest raw event can have lost events to
    retention. Pageviews are compared with bots included, and custom events without them, as
    `events` counts them. The processor and a rebuild change raw bot flags and rollups in one
    transaction, so the two agree on which custom events are bots.
    """
    start, end, _, _ = utc_window(site, day, day)
    if start >= datetime.combine(oldest.astimezone(timezone.utc).date(), time(), timezone.utc):
        return
    counted = await conn.fetchrow(_DAY_TOTALS, site.domain, day)
    stored = await conn.fetchrow(_DAY_RAW_COUNTS, site.domain, start, end)
    if counted["pageviews"] <= stored["pageviews"] and counted["events"] <= stored["events"]:
        return
    raise RangeBeforeRawEvents(
        f"rollups of {site.domain} on {day} count more events than raw_events contains of that day (pageviews "
        f"{counted['pageviews']} against {stored['pageviews']}, custom events {counted['events']} against "
        f"{stored['events']}), because retention dropped the raw events before "
        f"{oldest.astimezone(timezone.utc).date()} UTC; a rebuild would lower its counts, so rebuild only days from "
        f"{day + timedelta(days=1)} on")


def _quoted(column: str) -> str:
    return f'"{column}"' if column != column.lower() else column


def _rebuild_sessions(site: Site, rows, old_fingerprints, stored_networks: dict[str, VisitorNetwork],
                      bots: BotDetector, rebuild: bool):
    """Return the new bot flags, session ids and fingerprint rows of the events read.

    Each event keeps the location, network and screen of its old session, because a visitor
    keyed by an SDK's anonymous id can have several. Events of a session stored without a
    network take the visitor's from visitor_networks, or from its old fingerprints for visitors
    stored before that table existed.
    """
    if not rebuild:
        return [r["is_bot"] for r in rows], [r["session_id"] for r in rows], [dict(f) for f in old_fingerprints]

    networks: dict[str, tuple[VisitorNetwork, str | None]] = {}
    old_sessions: dict[str, Fingerprint] = {}
    for row in old_fingerprints:
        old = old_sessions[row["session_id"]] = from_row(row)
        if old.network != VisitorNetwork() or row["visitor_id"] not in networks:
            networks[row["visitor_id"]] = (old.network, old.screen_size)
    for visitor, network in stored_networks.items():
        screen = networks.get(visitor, (None, None))[1]
        networks[visitor] = (network, screen)

    flags = [bots.is_bot(r["user_agent"]) for r in rows]
    by_visitor: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        by_visitor[row["visitor_id"]].append(index)

    session_ids = [""] * len(rows)
    merged: dict[str, Fingerprint] = {}
    for visitor, indexes in by_visitor.items():
        times = [_ms(rows[i]["timestamp"]) for i in indexes]
        plan = plan_sessions(site.domain, visitor, [], times)
        visitor_network, visitor_screen = networks.get(visitor, (VisitorNetwork(), None))
        for index, session_id in zip(indexes, plan.event_sessions):
            session_ids[index] = session_id
            row = rows[index]
            network, screen = visitor_network, visitor_screen
            old = old_sessions.get(row["session_id"])
            if old is not None and old.network != VisitorNetwork():
                network, screen = old.network, old.screen_size
            part = fingerprint_of_event(session_id, site.domain, visitor, row["event_type"], row["event_action"],
                                        _ms(row["timestamp"]), row["url"], row["referrer"], row["user_agent"],
                                        flags[index], network, screen)
            merged[session_id] = merge(merged[session_id], part, session_id) if session_id in merged else part
    return flags, session_ids, [describe(fp, site.hosts()) for fp in merged.values()]


def _ms(moment: datetime) -> int:
    return int(round(moment.timestamp() * 1000))


async def _write_sessions(conn, site: Site, rows, flags, session_ids, visitors, new_fingerprints) -> None:
    changed = [(r["id"], r["timestamp"], flag, sid) for r, flag, sid in zip(rows, flags, session_ids)
               if r["is_bot"] != flag or r["session_id"] != sid]
    if changed:
        await conn.execute(_UPDATE_RAW, site.domain, *[list(column) for column in zip(*changed)])
    await conn.execute("DELETE FROM session_fingerprints WHERE site = $1 AND visitor_id = ANY($2::text[])",
                       site.domain, visitors)
    await save_fingerprints(conn, new_fingerprints)


def _rollup_counts(site: Site, rows, flags, old_fingerprints, new_fingerprints, first: date, last: date) -> Counter:
    """New counts of the range's rows, plus old-to-new differences for rows outside the range."""
    tz = site.timezone
    counts: Counter = Counter()

    def in_range(moment_ms: int) -> bool:
        return first <= local_date(moment_ms, tz) <= last

    properties = _properties(rows)
    for row, flag, values in zip(rows, flags, properties):
        ts = _ms(row["timestamp"])
        event_contributions(counts, row["event_type"], row["event_action"], ts, flag, tz, values)
        if not in_range(ts):
            negative: Counter = Counter()
            event_contributions(negative, row["event_type"], row["event_action"], ts, row["is_bot"], tz, values)
            counts.subtract(negative)

    for fingerprint in new_fingerprints:
        session_contributions(counts, fingerprint, tz, +1)
    for fingerprint in old_fingerprints:
        if not in_range(_ms(fingerprint["started_at"])):
            session_contributions(counts, dict(fingerprint), tz, -1)

    for old, new in _visitor_states(site, rows, flags, properties, old_fingerprints, new_fingerprints):
        whole: Counter = Counter()
        visitor_change(whole, {}, new)
        change: Counter = Counter()
        visitor_change(change, old, new)
        for key, value in whole.items():
            if first <= key.bucket <= last:
                counts[key] += value
        for key, value in change.items():
            if not first <= key.bucket <= last:
                counts[key] += value
    return counts


def _properties(rows) -> list[tuple[str, ...]]:
    """Return each row's property_values; `metadata` is the stored JSON text, or a dict in the dashboard loader."""
    found = []
    for row in rows:
        metadata = row["metadata"]
        if isinstance(metadata, str):
            metadata = orjson.loads(metadata)
        found.append(property_values(row["event_type"], row["event_action"], metadata))
    return found


def _visitor_states(site: Site, rows, flags, properties, old_fingerprints, new_fingerprints):
    """Yield each visitor's visitor_days before and after the rebuild."""
    old_events, new_events = defaultdict(list), defaultdict(list)
    for row, flag, values in zip(rows, flags, properties):
        fact = (row["event_type"], row["event_action"], _ms(row["timestamp"]), values)
        if not row["is_bot"]:
            old_events[row["visitor_id"]].append(fact)
        if not flag:
            new_events[row["visitor_id"]].append(fact)
    old_sessions, new_sessions = defaultdict(list), defaultdict(list)
    for fingerprint in old_fingerprints:
        old_sessions[fingerprint["visitor_id"]].append(fingerprint)
    for fingerprint in new_fingerprints:
        new_sessions[fingerprint["visitor_id"]].append(fingerprint)
    tz = site.timezone
    for visitor in sorted({row["visitor_id"] for row in rows} | old_sessions.keys() | new_sessions.keys()):
        yield (visitor_days(old_events[visitor], old_sessions[visitor], tz),
               visitor_days(new_events[visitor], new_sessions[visitor], tz))


def _visits(site: Site, rows, flags) -> set[tuple[date, str]]:
    return {(local_date(_ms(r["timestamp"]), site.timezone), r["visitor_id"]) for r, flag in zip(rows, flags) if not flag}


async def _replace_rollups(conn, site: Site, visitors, rows, flags, new_fingerprints, counts: Counter, first: date,
                           last: date, start: datetime, end: datetime) -> int:
    """Delete the range's rollup rows and the visitors' daily rows, then write the new counts."""
    await conn.execute(_DELETE_DAILY, site.domain, first, last)
    await conn.execute("DELETE FROM aggregated_metrics WHERE site = $1 AND bucket >= $2 AND bucket < $3",
                       site.domain, start, end)
    await conn.execute("DELETE FROM daily_visitors WHERE site = $1 AND visitor_id = ANY($2::text[])",
                       site.domain, visitors)
    visits = sorted(_visits(site, rows, flags))
    if visits:
        await conn.execute("INSERT INTO daily_visitors (site, date, visitor_id) "
                           "SELECT $1, d, v FROM unnest($2::date[], $3::text[]) AS u(d, v)",
                           site.domain, [v[0] for v in visits], [v[1] for v in visits])
    hourly, daily = await write_rollups(conn, site.domain, counts)
    # The rows changed outside the range lie within two days of it.
    month = (first - timedelta(days=2)).replace(day=1)
    months = []
    while month <= last + timedelta(days=2):
        months.append(month)
        month = (month + timedelta(days=32)).replace(day=1)
    for closed in sorted(await closed_among(conn, site.domain, months)):
        await refresh_months(conn, site.domain, closed, closed)
    return hourly + daily
