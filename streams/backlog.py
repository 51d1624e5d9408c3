"""The backlog of a consumer group: entries not yet acknowledged, and how long the oldest has waited.

Entry ids start with the millisecond time of their XADD, so the age of the oldest entry that the
group has not acknowledged tells how far processing trails ingest, without any clock in the
processors.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from weir.redis import RedisClient


@dataclass(frozen=True, slots=True)
class Backlog:
    entries: int
    """Entries not delivered to the group plus entries delivered and not acknowledged."""
    oldest_age_s: float
    """Age of the oldest of those entries; 0 when there are none."""


def entry_ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def _successor(entry_id: bytes | str) -> str:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


async def read_backlog(redis: RedisClient, stream: str, group: str, now_ms: int | None = None) -> Backlog:
    """Return the group's backlog on `stream`; a stream or group that does not exist has none."""
    if not await redis.exists(stream):
        return Backlog(0, 0.0)
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    info = next((g for g in await redis.xinfo_groups(stream) if _name(g["name"]) == group), None)
    if info is None:
        length = await redis.xlen(stream)
        first = await redis.xrange(stream, count=1)
        return Backlog(length, max(0.0, (now_ms - entry_ms(first[0][0])) / 1000) if first else 0.0)

    oldest: list[int] = []
    pending = int(info["pending"])
    if pending:
        oldest.append(entry_ms((await redis.xpending(stream, group))["min"]))
    undelivered = await redis.xrange(stream, min=_successor(info["last-delivered-id"]), count=1)
    if undelivered:
        oldest.append(entry_ms(undelivered[0][0]))
    lag = info.get("lag")
    entries = pending + (int(lag) if lag is not None else (1 if undelivered else 0))
    age_s = max(0.0, (now_ms - min(oldest)) / 1000) if oldest else 0.0
    return Backlog(entries, age_s)


async def read_total_backlog(redis: RedisClient, streams: Sequence[str], group: str, now_ms: int | None = None) -> Backlog:
    """Return the group's backlog over all `streams` (the partitions): entries summed, the oldest age."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    backlogs = await asyncio.gather(*(read_backlog(redis, stream, group, now_ms) for stream in streams))
    return Backlog(sum(b.entries for b in backlogs), max((b.oldest_age_s for b in backlogs), default=0.0))


def _name(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
