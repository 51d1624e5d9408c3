"""Derived tables of one batch: fingerprints, rollups and visitors, from the events newly stored.

Runs in the batch transaction right after raw_events, so the derived tables move exactly when
raw_events does: a redelivered event (not newly inserted) changes nothing, and a failure here
rolls the raw rows back too, leaving the batch pending for a retry.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import asyncpg
import orjson

from sinks.coverage import record_complete
from sinks.fingerprints import delete_fingerprints, load_fingerprints, save_fingerprints
from sinks.months import closed_among
from sinks.rollups import record_visitors, write_rollups
from streams.event import Event
from streams.fingerprint import EventFacts, Fingerprint, VisitorNetwork, describe, from_row, merge, merge_events
from streams.rollup import (ALL_SESSION_DIMENSIONS, DAILY, SessionFacts, SessionRollup, VisitorRollup, event_contributions,
                            local_date, monthly_contributions, property_values, visitor_days)
from streams.sites import Site


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which made building
# one per event about four times slower (0.66 against 0.15 µs on CPython 3.11).
@dataclass(slots=True)
class NewEvent:
    """An event this transaction inserted, with what the processor derived for it."""

    event: Event
    session_id: str
    is_bot: bool
    network: VisitorNetwork | None = None
    screen_size: str | None = None


@dataclass(slots=True)
class DeriveResult:
    sessions_written: int = 0
    sessions_merged: int = 0
    rollup_rows: int = 0
    new_visitors: int = 0


@dataclass(frozen=True, slots=True)
class SiteBatch:
    """The part of a batch that belongs to one site."""

    site: Site
    new_events: Sequence[NewEvent]
    renames: dict[str, str]
    """Stored session id to the id of the session it merged into."""


async def write_derived(conn: asyncpg.Connection, site: Site, new_events: Sequence[NewEvent],
                        renames: dict[str, str]) -> DeriveResult:
    """Update fingerprints, rollups and visitors of one site for the events of this batch."""
    return (await write_derived_sites(conn, [SiteBatch(site, new_events, renames)]))[0]


async def write_derived_sites(conn: asyncpg.Connection, batches: Sequence[SiteBatch]) -> list[DeriveResult]:
    """Update fingerprints, visitors and then rollups of every site of a batch; return a result per site.

    Every batch adds to the same rollup rows (the totals of the current hour and day), and an
    upserted row stays locked until commit. So the rollups of all sites come last, which keeps
    other batches waiting for those rows the shortest time.
    """
    for part in batches:
        await record_complete(conn, part.site.domain)
    derived = [await _derive_site(conn, part) for part in batches]
    for part, (result, counts) in zip(batches, derived):
        hourly, daily = await write_rollups(conn, part.site.domain, counts)
        result.rollup_rows = hourly + daily
    return [result for result, _counts in derived]


async def _derive_site(conn: asyncpg.Connection, part: SiteBatch) -> tuple[DeriveResult, Counter]:
    """Update one site's fingerprints and visitors; return the result and the rollup counts to add."""
    site, new_events = part.site, part.new_events
    result = DeriveResult()
    counts: Counter = Counter()

    # Step 1: event counts.
    for item in new_events:
        e = item.event
        event_contributions(counts, e.type, e.action, e.timestamp_ms, item.is_bot, site.timezone,
                            () if item.is_bot else property_values(e.type, e.action, e.props))

    # Step 2: fingerprints of the sessions that gained events or absorbed others. The facts of
    # their rows are read again for unique visitors, and the rows stay alive until then.
    facts: dict[int, SessionFacts] = {}
    sessions, stored = await _update_sessions(conn, site, new_events, part.renames, counts, result, facts)

    # Step 3: visitors newly seen on a local day, and the change of every visitor's unique counts.
    visits = {(local_date(i.event.timestamp_ms, site.timezone), i.event.visitor_id)
              for i in new_events if not i.is_bot}
    result.new_visitors = len(await record_visitors(conn, site.domain, visits))
    await _visitor_counts(conn, site, new_events, part.renames, sessions, stored, counts, facts)

    # Step 4: the same counts per local month, for the months already closed (sinks.months).
    # Nearly every batch falls in the month in progress, which is never closed, so the months
    # are looked up before the monthly sums are built.
    days = {key.bucket for key in counts if key.granularity == DAILY}
    closed = await closed_among(conn, site.domain, {day.replace(day=1) for day in days})
    if closed:
        counts.update(monthly_contributions(counts, only=closed))
    return result, counts


async def _update_sessions(conn: asyncpg.Connection, site: Site, new_events: Sequence[NewEvent],
                           renames: dict[str, str], counts: Counter, result: DeriveResult,
                           facts: dict[int, SessionFacts]) -> tuple[dict[str, dict], dict[str, asyncpg.Record]]:
    """Merge, describe and save the changed sessions; return their new rows and their stored rows.

    `facts` caches session_facts of the rows, which must outlive it.
    """
    by_session: dict[str, list[NewEvent]] = defaultdict(list)
    for item in new_events:
        by_session[item.session_id].append(item)
    absorbed: dict[str, list[str]] = defaultdict(list)
    for old, new in renames.items():
        absorbed[new].append(old)
    targets = set(by_session) | set(absorbed)

    stored = await load_fingerprints(conn, site.domain, [*targets, *renames])
    rows: dict[str, dict] = {}
    hosts = site.hosts()
    for session_id in sorted(targets):
        merged: Fingerprint | None = None
        for part in (from_row(stored[s]) for s in (session_id, *absorbed[session_id]) if s in stored):
            merged = part if merged is None else merge(merged, part, session_id)
        items = by_session[session_id]
        if items:
            first = items[0].event
            merged = merge_events(merged, session_id, first.site, first.visitor_id, [_facts(item) for item in items])
        rows[session_id] = describe(merged, hosts)

    changes = SessionRollup(site.timezone, facts)
    for session_id in {*targets, *renames}:
        changes.change(stored.get(session_id), rows.get(session_id))
    changes.flush(counts)

    await delete_fingerprints(conn, site.domain, sorted(s for s in renames if s in stored))
    await save_fingerprints(conn, list(rows.values()))
    result.sessions_written = len(rows)
    result.sessions_merged = len(renames)
    return rows, stored


# Each visitor's window comes with its unnest row, as in sinks.sessions. With one range on
# "timestamp", a planner without statistics may read every event of the site in that range
# through (site, timestamp) instead of each visitor's rows through (site, visitor_id, timestamp).
_VISITOR_EVENTS = """
SELECT r.visitor_id, r.event_type, r.event_action, r."timestamp",
       CASE WHEN r.event_type <> 'pageview' THEN r.metadata END AS metadata
  FROM unnest($2::text[], $3::timestamptz[], $4::timestamptz[]) AS q(visitor_id, lo, hi)
  JOIN raw_events r ON r.site = $1 AND r.visitor_id = q.visitor_id AND r."timestamp" >= q.lo AND r."timestamp" < q.hi
 WHERE NOT r.is_bot
"""

_VISITOR_SESSIONS = f"""
SELECT s.session_id, s.visitor_id, s.started_at, s.is_bot, {", ".join(f's."{d}"' for d in ALL_SESSION_DIMENSIONS)}
  FROM unnest($2::text[], $3::timestamptz[], $4::timestamptz[]) AS q(visitor_id, lo, hi)
  JOIN session_fingerprints s ON s.visitor_id = q.visitor_id AND s.site = $1
   AND s.started_at >= q.lo AND s.started_at < q.hi
"""

# A visitor's counts on a local date depend on that date and the one before. Local dates lie
# within 14 hours of UTC dates, so two days on each side contain every row those counts read.
_WINDOW = timedelta(days=2)


async def _visitor_counts(conn: asyncpg.Connection, site: Site, new_events: Sequence[NewEvent],
                          renames: dict[str, str], sessions: dict[str, dict], stored: dict[str, asyncpg.Record],
                          counts: Counter, facts: dict[int, SessionFacts]) -> None:
    """Add the change of the unique-visitor rows of every visitor this batch touched.

    Reads the visitors' human events and sessions near the batch (raw_events already contains the
    batch's events, session_fingerprints its sessions), and takes the batch's part out again
    to get the state before it. Runs under the visitors' session locks, so a concurrent batch
    of the same visitor waits and then reads this one's rows.
    """
    spans: dict[str, list[int]] = {}
    moments = [(item.event.visitor_id, item.event.timestamp_ms) for item in new_events]
    moments += [(row["visitor_id"], int(row["started_at"].timestamp() * 1000))
                for row in (*sessions.values(), *stored.values())]
    for visitor, moment in moments:
        span = spans.get(visitor)
        if span is None:
            spans[visitor] = [moment, moment]
        elif moment < span[0]:
            span[0] = moment
        elif moment > span[1]:
            span[1] = moment
    visitors = sorted(spans)
    window = (site.domain, visitors, [_at(spans[v][0]) - _WINDOW for v in visitors],
              [_at(spans[v][1]) + _WINDOW for v in visitors])

    events_after: dict[str, Counter] = defaultdict(Counter)
    for row in await conn.fetch(_VISITOR_EVENTS, *window):
        metadata = row["metadata"]
        properties = property_values(row["event_type"], row["event_action"], metadata and orjson.loads(metadata))
        events_after[row["visitor_id"]][(row["event_type"], row["event_action"], _ms(row["timestamp"]),
                                         properties)] += 1
    events_new: dict[str, Counter] = defaultdict(Counter)
    for item in new_events:
        if not item.is_bot:
            e = item.event
            events_new[e.visitor_id][(e.type, e.action, e.timestamp_ms, property_values(e.type, e.action, e.props))] += 1

    touched = sessions.keys() | renames.keys()
    sessions_after: dict[str, list] = defaultdict(list)
    sessions_before: dict[str, list] = defaultdict(list)
    for row in await conn.fetch(_VISITOR_SESSIONS, *window):
        if row["session_id"] not in touched:
            sessions_after[row["visitor_id"]].append(row)
            sessions_before[row["visitor_id"]].append(row)
    for row in sessions.values():
        sessions_after[row["visitor_id"]].append(row)
    for session_id in touched:
        if session_id in stored:
            row = stored[session_id]
            sessions_before[row["visitor_id"]].append(row)

    tz = site.timezone
    # Untouched sessions are the same row objects before and after, so their facts are built once.
    # The fetched rows stay alive in sessions_after until the cache is dropped.
    changes = VisitorRollup()
    empty: Counter = Counter()
    for visitor in visitors:
        after = events_after.get(visitor, empty)
        new = events_new.get(visitor, empty)
        # A visitor first seen in this batch has only new events. dict.__eq__ compares in C, unlike Counter.__eq__.
        before = empty if dict.__eq__(after, new) else after - new
        changes.change(visitor_days(before, sessions_before.get(visitor, ()), tz, facts),
                       visitor_days(after, sessions_after.get(visitor, ()), tz, facts))
    changes.flush(counts)


def _at(unix_ms: int) -> datetime:
    return datetime.fromtimestamp(unix_ms / 1000, timezone.utc)


def _ms(moment: datetime) -> int:
    return int(round(moment.timestamp() * 1000))


def _facts(item: NewEvent) -> EventFacts:
    e = item.event
    return (e.type, e.action, e.timestamp_ms, e.url, e.referrer, e.user_agent, item.is_bot, item.network,
            item.screen_size)
