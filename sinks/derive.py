"""Derived tables of one batch: fingerprints, rollups and visitors, from the events newly stored.

Runs in the batch transaction right after raw_events, so the derived tables move exactly when
raw_events does: a redelivered event (not newly inserted) changes nothing, and a failure here
rolls the raw rows back too, leaving the batch pending for a retry.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from sinks.fingerprints import delete_fingerprints, load_fingerprints, save_fingerprints
from sinks.rollups import record_visitors, write_rollups
from streams.event import Event
from streams.fingerprint import EventFacts, Fingerprint, VisitorNetwork, describe, from_row, merge, merge_events
from streams.rollup import event_contributions, local_date, session_contributions, visitor_contributions
from streams.sites import Site


@dataclass(frozen=True, slots=True)
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
        event_contributions(counts, e.type, e.action, e.timestamp_ms, item.is_bot, site.timezone)

    # Step 2: fingerprints of the sessions that gained events or absorbed others.
    sessions = await _update_sessions(conn, site, new_events, part.renames, counts, result)

    # Step 3: visitors newly seen on a local day, with the dimensions of their session.
    visits = {(local_date(i.event.timestamp_ms, site.timezone), i.event.visitor_id): i.session_id
              for i in new_events if not i.is_bot}
    fresh = await record_visitors(conn, site.domain, set(visits))
    for day, visitor in fresh:
        visitor_contributions(counts, sessions[visits[(day, visitor)]], day)
    result.new_visitors = len(fresh)
    return result, counts


async def _update_sessions(conn: asyncpg.Connection, site: Site, new_events: Sequence[NewEvent],
                           renames: dict[str, str], counts: Counter, result: DeriveResult) -> dict[str, dict]:
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

    for session_id in {*targets, *renames}:
        if session_id in stored:
            session_contributions(counts, stored[session_id], site.timezone, -1)
    for row in rows.values():
        session_contributions(counts, row, site.timezone, +1)

    await delete_fingerprints(conn, site.domain, sorted(s for s in renames if s in stored))
    await save_fingerprints(conn, list(rows.values()))
    result.sessions_written = len(rows)
    result.sessions_merged = len(renames)
    return rows


def _facts(item: NewEvent) -> EventFacts:
    e = item.event
    return (e.type, e.action, e.timestamp_ms, e.url, e.referrer, e.user_agent, item.is_bot, item.network,
            item.screen_size)
