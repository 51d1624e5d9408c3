"""The `freshness` object every API answer carries, for the tables the answer read.

For each table: when it was last written, the newest event time it holds, how far that is
behind raw_events, and whether it is stale. A derived table is stale when it trails raw_events
by more than STALE_AFTER_S; raw_events itself is stale when the stream holds entries that no
processor has committed for that long. So an empty answer from a broken pipeline carries a
warning, while a quiet period does not.
"""

from __future__ import annotations

from datetime import datetime, timezone

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from streams.keys import EVENTS_STREAM, PROCESSOR_GROUP


async def stream_backlog(redis: Redis) -> int | None:
    """Entries of the event stream not yet acknowledged by the processors; None when unknown."""
    try:
        for group in await redis.xinfo_groups(EVENTS_STREAM):
            name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
            if name == PROCESSOR_GROUP:
                return int(group.get("lag") or 0) + int(group.get("pending") or 0)
    except RedisError:
        return None
    return 0


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


async def freshness_of(conn: asyncpg.Connection, redis: Redis, tables: list[str], stale_after_s: int) -> dict:
    """Return `{"tables": {...}, "stale": bool, "warnings": [...]}` for `tables`."""
    rows = await conn.fetch("SELECT table_name, last_write_at, last_event_at FROM table_freshness")
    known = {r["table_name"]: r for r in rows}
    raw = known.get("raw_events")
    now = datetime.now(timezone.utc)
    backlog = await stream_backlog(redis)

    result: dict = {"tables": {}, "stale": False, "warnings": [], "stream_backlog": backlog}
    for table in tables:
        row = known.get(table)
        last_write = row["last_write_at"] if row else None
        last_event = row["last_event_at"] if row else None
        if table == "raw_events":
            lag_s = 0.0
            idle_s = (now - last_write).total_seconds() if last_write else None
            stale = bool(backlog) and (idle_s is None or idle_s > stale_after_s)
            reason = f"{backlog} events wait in the stream and raw_events was last written {_iso(last_write) or 'never'}"
        else:
            raw_event = raw["last_event_at"] if raw else None
            lag_s = (raw_event - last_event).total_seconds() if raw_event and last_event else None
            stale = raw_event is not None and (last_event is None or lag_s > stale_after_s)
            reason = f"{table} trails raw_events by {lag_s if lag_s is not None else 'all'} s; last written {_iso(last_write) or 'never'}"
        result["tables"][table] = {
            "last_write_at": _iso(last_write),
            "last_event_at": _iso(last_event),
            "lag_s": lag_s,
            "stale": stale,
        }
        if stale:
            result["stale"] = True
            result["warnings"].append(f"{table} is stale: {reason}")
    return result
