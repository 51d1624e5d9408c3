"""The `freshness` object every API answer carries, for the tables the answer read.

For each table: its last write, its newest event, its lag and whether it is stale (see
`sinks.freshness.assess`). When any is stale, `warnings` names the table and since when, so an
empty answer from a broken pipeline never reads as a quiet period.
"""

from __future__ import annotations

import logging

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from sinks.freshness import assess, read_rows
from streams.backlog import Backlog, read_backlog
from streams.keys import EVENTS_STREAM, PROCESSOR_GROUP

logger = logging.getLogger(__name__)


async def stream_backlog(redis: Redis) -> Backlog | None:
    """The processors' backlog on the event stream; None when Redis cannot be read."""
    try:
        return await read_backlog(redis, EVENTS_STREAM, PROCESSOR_GROUP)
    except RedisError as error:
        logger.warning("stream backlog unavailable for freshness error=%r", error)
        return None


async def freshness_of(conn: asyncpg.Connection, redis: Redis, tables: list[str], stale_after_s: float) -> dict:
    """Return `{"tables": {...}, "stale", "warnings", "stream_backlog"}` for `tables`."""
    backlog = await stream_backlog(redis)
    verdicts = assess(await read_rows(conn), tables, backlog, stale_after_s)
    warnings = [f"{v.table} is stale: {v.reason}" for v in verdicts.values() if v.stale]
    if backlog is None:
        warnings.append("the event stream could not be read, so a stuck pipeline would not show here")
    return {
        "tables": {name: verdict.as_dict() for name, verdict in verdicts.items()},
        "stale": any(v.stale for v in verdicts.values()),
        "warnings": warnings,
        "stream_backlog": None if backlog is None else {"entries": backlog.entries,
                                                         "oldest_age_s": round(backlog.oldest_age_s, 3)},
    }
