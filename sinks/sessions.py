"""Apply session plans in the batch transaction: read nearby sessions, lock, rename, assign.

Concurrent batches of one visitor take turns, which keeps stored session ids equal to the
sessions of the stored events. A batch takes transaction-scoped advisory locks in this order,
each kind in sorted order, so that no two batches can deadlock on them:

1. its sites, shared (a rebuild of a site takes that lock exclusively);
2. its visitor groups (VISITOR_GROUPS per site, by crc32 of `site:visitor_id`): shared when the
   batch then locks each visitor, exclusive when it has more than MAX_VISITOR_LOCKS visitors
   and locks no visitor;
3. its visitors, exclusive, unless it holds its groups exclusively.

A visitor's group is its stream partition modulo VISITOR_GROUPS, so with STREAM_PARTITIONS a
divisor of VISITOR_GROUPS, batches read from different partitions share no group and never wait
for each other.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

import asyncpg

from streams.event import Event
from streams.partitions import partition_of
from streams.sessionize import SESSION_GAP_MS, SessionSpan, plan_sessions

SITE_LOCK_CLASS = 0x5EE1
"""First key of the two-key advisory lock a site's writers share and its rebuild takes alone."""

_LOCK_SITES_SHARED = f"""
SELECT count(pg_advisory_xact_lock_shared({SITE_LOCK_CLASS}, hashtext(s)))
  FROM (SELECT s FROM unnest($1::text[]) AS u(s) ORDER BY 1) AS sites
"""

MAX_VISITOR_LOCKS = 500
"""Maximum number of visitors that a batch locks one by one; a batch with more locks its groups instead.

Advisory locks share PostgreSQL's lock table with every session of the server: about
max_locks_per_transaction (64) times max_connections (100) entries on a stock server, plus spare
shared memory. On PostgreSQL 15 with those settings a batch locking 30,000 visitors failed with
"out of shared memory", which the agent retries in place, so that batch would never commit. Of
five concurrent batches locking 6,000 visitors each, three failed.
"""

VISITOR_GROUPS = 64
GROUP_LOCK_CLASS = 0x5EE2
"""First key of the two-key advisory lock of one visitor group of a site."""

_LOCK_GROUPS = """
SELECT count(pg_advisory_xact_lock{mode}({lock_class}, k))
  FROM (SELECT DISTINCT hashtext(s || ':' || g) AS k FROM unnest($1::text[], $2::int[]) AS u(s, g) ORDER BY 1) AS keys
"""
_LOCK_GROUPS_SHARED = _LOCK_GROUPS.format(mode="_shared", lock_class=GROUP_LOCK_CLASS)
_LOCK_GROUPS_EXCLUSIVE = _LOCK_GROUPS.format(mode="", lock_class=GROUP_LOCK_CLASS)

_LOCK_VISITORS = """
SELECT count(pg_advisory_xact_lock(k))
  FROM (SELECT hashtextextended(s || ':' || v, 0) AS k FROM unnest($1::text[], $2::text[]) AS u(s, v) ORDER BY 1) AS keys
"""

# Sessions with an event within the gap of a new event, with their full extent. A visitor id
# changes at 00:00 UTC, so a session never reaches more than a day beyond the window.
_NEARBY_SESSIONS = """
WITH q AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[]) AS q(site, visitor_id, lo, hi)
), near AS (
    SELECT DISTINCT r.site, r.visitor_id, r.session_id, q.lo, q.hi
      FROM q JOIN raw_events r
        ON r.site = q.site AND r.visitor_id = q.visitor_id
       AND r."timestamp" >= q.lo - $5::interval AND r."timestamp" <= q.hi + $5::interval
)
SELECT n.site, n.visitor_id, n.session_id, min(r."timestamp") AS first_at, max(r."timestamp") AS last_at
  FROM near n JOIN raw_events r
    ON r.site = n.site AND r.visitor_id = n.visitor_id AND r.session_id = n.session_id
   AND r."timestamp" >= n.lo - interval '1 day' AND r."timestamp" <= n.hi + interval '1 day'
 GROUP BY n.site, n.visitor_id, n.session_id
"""

_RENAME = """
UPDATE raw_events r SET session_id = u.new_id
  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(site, visitor_id, old_id, new_id)
 WHERE r.site = u.site AND r.visitor_id = u.visitor_id AND r.session_id = u.old_id
"""


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _at(unix_ms: int) -> datetime:
    return datetime.fromtimestamp(unix_ms / 1000, tz=timezone.utc)


async def _lock_visitors(conn: asyncpg.Connection, keys: list[tuple[str, str]]) -> None:
    """Take the batch's locks on its sites, visitor groups and (site, visitor) `keys`."""
    await conn.fetchval(_LOCK_SITES_SHARED, sorted({site for site, _visitor in keys}))
    groups = {(site, partition_of(site, visitor, VISITOR_GROUPS)) for site, visitor in keys}
    sites, numbers = [g[0] for g in groups], [g[1] for g in groups]
    if len(keys) > MAX_VISITOR_LOCKS:
        await conn.fetchval(_LOCK_GROUPS_EXCLUSIVE, sites, numbers)
        return
    await conn.fetchval(_LOCK_GROUPS_SHARED, sites, numbers)
    await conn.fetchval(_LOCK_VISITORS, [k[0] for k in keys], [k[1] for k in keys])


async def assign_sessions(conn: asyncpg.Connection, events: Sequence[Event],
                          gap_ms: int = SESSION_GAP_MS) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Return each event's session id and the renames applied per site; run inside a transaction.

    Events already stored (redelivered) get the id of the session they are stored in, so
    inserting them again changes nothing.
    """
    by_visitor: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, event in enumerate(events):
        by_visitor[(event.site, event.visitor_id)].append(index)
    keys = sorted(by_visitor)

    # Step 1: lock the sites, the visitor groups and the visitors (see the module docstring), then
    # read the visitors' stored sessions near the new events.
    await _lock_visitors(conn, keys)
    lows = [_at(min(events[i].timestamp_ms for i in by_visitor[k])) for k in keys]
    highs = [_at(max(events[i].timestamp_ms for i in by_visitor[k])) for k in keys]
    rows = await conn.fetch(_NEARBY_SESSIONS, [k[0] for k in keys], [k[1] for k in keys], lows, highs,
                            timedelta(milliseconds=gap_ms))
    stored: dict[tuple[str, str], list[SessionSpan]] = defaultdict(list)
    for row in rows:
        stored[(row["site"], row["visitor_id"])].append(
            SessionSpan(row["session_id"], _ms(row["first_at"]), _ms(row["last_at"])))

    # Step 2: plan each visitor's sessions.
    session_ids = [""] * len(events)
    renames: list[tuple[str, str, str, str]] = []
    for key in keys:
        indexes = by_visitor[key]
        plan = plan_sessions(key[0], key[1], stored.get(key, []), [events[i].timestamp_ms for i in indexes], gap_ms)
        for index, session_id in zip(indexes, plan.event_sessions):
            session_ids[index] = session_id
        renames.extend((key[0], key[1], old, new) for old, new in plan.renames.items())

    # Step 3: rename stored events of sessions that merged or moved their start.
    if renames:
        await conn.execute(_RENAME, *[list(column) for column in zip(*renames)])
    renames_by_site: dict[str, dict[str, str]] = defaultdict(dict)
    for site, _visitor, old, new in renames:
        renames_by_site[site][old] = new
    return session_ids, dict(renames_by_site)
