"""The `freshness` object every API answer carries, for the tables the answer read.

For each table: its last write, its newest event, its lag and whether it is stale (see
`sinks.freshness.assess`). When any is stale, `warnings` names the table and since when, so an
empty answer from a broken pipeline never reads as a quiet period.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import asyncpg

from query.breaker import RedisBreaker
from sinks.freshness import assess, read_rows
from streams.backlog import Backlog, read_total_backlog
from streams.keys import EVENTS_STREAM, PROCESSOR_GROUP
from weir.redis import REDIS_ERRORS, RedisClient

logger = logging.getLogger(__name__)


async def stream_backlog(redis: RedisClient, streams: Sequence[str] = (EVENTS_STREAM,),
                         breaker: RedisBreaker | None = None) -> Backlog | None:
    """Return the processors' backlog over the event `streams` (all partitions).

    Returns None when Redis cannot be read, or when `breaker` skips Redis after a recent failure.
    """
    if breaker is not None and not breaker.allows():
        return None
    try:
        backlog = await read_total_backlog(redis, streams, PROCESSOR_GROUP)
    except REDIS_ERRORS as error:
        if breaker is not None:
            breaker.record_failure()
        logger.warning("stream backlog unavailable for freshness error=%r", error)
        return None
    if breaker is not None:
        breaker.record_success()
    return backlog


async def freshness_of(conn: asyncpg.Connection, redis: RedisClient, tables: list[str], stale_after_s: float,
                       streams: Sequence[str] = (EVENTS_STREAM,), breaker: RedisBreaker | None = None) -> dict:
    """Return `{"tables": {...}, "stale", "warnings", "stream_backlog"}` for `tables`.

    `streams` are the event streams whose backlog counts, every partition of the deployment.
    """
    backlog = await stream_backlog(redis, streams, breaker)
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
