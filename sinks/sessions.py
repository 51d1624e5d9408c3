"""Apply session plans in the batch transaction: read nearby sessions, lock, rename, assign.

Each visitor of the batch is locked with a transaction-scoped advisory lock (in sorted order,
so agents never deadlock on them), which makes concurrent batches of one visitor take turns and
keeps stored session ids equal to the sessions of the stored events.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

import asyncpg

from streams.event import Event
from streams.sessionize import SESSION_GAP_MS, SessionSpan, plan_sessions

SITE_LOCK_CLASS = 0x5EE1
"""First key of the two-key advisory lock a site's writers share and its rebuild takes alone."""

_LOCK_SITES_SHARED = f"""
SELECT count(pg_advisory_xact_lock_shared({SITE_LOCK_CLASS}, hashtext(s)))
  FROM (SELECT s FROM unnest($1::text[]) AS u(s) ORDER BY 1) AS sites
"""

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

    # Step 1: take the sites' shared locks (a rebuild of a site takes it exclusively) and the
    # visitors' locks, then read their stored sessions near the new events.
    await conn.fetchval(_LOCK_SITES_SHARED, sorted({k[0] for k in keys}))
    await conn.fetchval(_LOCK_VISITORS, [k[0] for k in keys], [k[1] for k in keys])
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
