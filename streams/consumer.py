"""One consumer of a consumer group: read batches, acknowledge, reclaim and dead-letter entries.

Delivery is at-least-once: an entry stays pending until `ack` after its batch was committed.
Entries pending on a consumer that died are taken over with XAUTOCLAIM once idle long enough.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from redis.exceptions import ResponseError

from weir.redis import RedisClient

logger = logging.getLogger(__name__)

# KEYS: the stream, its dead-letter stream. ARGV: group, entry id, then the dead letter's fields
# and values. A script rather than MULTI/EXEC, which redis-py's cluster pipelines reject; on
# Redis Cluster both keys must share a slot, as a partition's streams do (`streams.partitions`).
_DEAD_LETTER_SCRIPT = """
local dead_letter_id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return dead_letter_id
"""


@dataclass(slots=True)
class Entry:
    """One stream entry as read: its id, its fields and how often it has been delivered."""

    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int = 1


class StreamConsumer:
    """Reads `stream` as `consumer` in `group`; every call is one Redis round trip or a few."""

    def __init__(self, redis: RedisClient, stream: str, group: str, consumer: str, dead_letter_stream: str) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.dead_letter_stream = dead_letter_stream

    async def ensure_group(self) -> None:
        """Create the stream and the group (reading from the start) unless they exist."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            logger.info("consumer group created stream=%s group=%s", self.stream, self.group)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def read_new(self, count: int, block_ms: int) -> list[Entry]:
        """Read up to `count` entries never delivered to this group, waiting up to `block_ms`."""
        reply = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms)
        return _entries(reply)

    async def read_own_pending(self, count: int) -> list[Entry]:
        """Read entries already delivered to this consumer and not acknowledged (e.g. a failed batch).

        Reading them again counts as a delivery, which the dead-letter policy relies on.
        """
        reply = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=count)
        entries = _entries(reply)
        orphans = _trimmed_ids(reply)
        if orphans:
            # Trimmed while pending: nothing left to process, so acknowledging loses nothing more.
            await self.ack(orphans)
            logger.warning("pending entries were trimmed before processing stream=%s group=%s count=%d first_entry_id=%s",
                           self.stream, self.group, len(orphans), orphans[0])
        await self._fill_deliveries(entries)
        return entries

    async def reclaim(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries idle for `min_idle_ms` on any consumer of the group (XAUTOCLAIM)."""
        reply = await self.redis.xautoclaim(self.stream, self.group, self.consumer, min_idle_ms, "0-0", count=count)
        # Redis 7 drops entries trimmed while pending from the group itself and lists them third.
        claimed = [Entry(_text(entry_id), fields) for entry_id, fields in reply[1] if fields]
        if claimed:
            await self._fill_deliveries(claimed)
            logger.warning("pending entries reclaimed stream=%s group=%s consumer=%s count=%d first_entry_id=%s",
                           self.stream, self.group, self.consumer, len(claimed), claimed[0].entry_id)
        return claimed

    async def ack(self, entry_ids: list[str]) -> int:
        if not entry_ids:
            return 0
        return await self.redis.xack(self.stream, self.group, *entry_ids)

    async def remove_idle_consumers(self, idle_ms: int, keep: set[str]) -> list[str]:
        """Delete consumers (of processes gone) idle for `idle_ms` with no pending entry; return their names.

        A consumer with pending entries is kept: XAUTOCLAIM takes its entries over first.
        """
        removed = []
        for info in await self.redis.xinfo_consumers(self.stream, self.group):
            name = _text(info["name"])
            if name in keep or int(info["pending"]) > 0 or int(info["idle"]) < idle_ms:
                continue
            await self.redis.xgroup_delconsumer(self.stream, self.group, name)
            removed.append(name)
        if removed:
            logger.info("idle consumers removed stream=%s group=%s count=%d first=%s", self.stream, self.group,
                        len(removed), removed[0])
        return removed

    async def touch(self, entry_ids: list[str]) -> None:
        """Reset the idle time of this consumer's pending `entry_ids` without counting a delivery."""
        if entry_ids:
            await self.redis.xclaim(self.stream, self.group, self.consumer, 0, entry_ids, justid=True)

    async def give_back(self, entries: list[Entry], idle_ms: int) -> None:
        """Undo the delivery `entries` counted and make them reclaimable at once, for a batch that was cancelled.

        XCLAIM with RETRYCOUNT sets each entry's delivery count back to its value before this
        consumer read it. IDLE makes the entry look idle for `idle_ms`, so the next reclaim, by
        any consumer, takes it at once and counts no failed attempt.
        """
        by_count: dict[int, list[str]] = {}
        for entry in entries:
            by_count.setdefault(max(entry.deliveries - 1, 0), []).append(entry.entry_id)
        for count, entry_ids in by_count.items():
            await self.redis.xclaim(self.stream, self.group, self.consumer, 0, entry_ids, idle=idle_ms,
                                    retrycount=count, justid=True)

    async def dead_letter(self, entry: Entry, error: str) -> None:
        """Copy `entry` with its error into the dead-letter stream, then acknowledge it, atomically."""
        fields = dict(entry.fields)
        fields[b"dead_letter_error"] = error[:2000].encode()
        fields[b"dead_letter_entry_id"] = entry.entry_id.encode()
        fields[b"dead_letter_stream"] = self.stream.encode()
        fields[b"dead_letter_at_ms"] = str(int(time.time() * 1000)).encode()
        fields[b"dead_letter_deliveries"] = str(entry.deliveries).encode()
        move = self.redis.register_script(_DEAD_LETTER_SCRIPT)
        await move(keys=[self.stream, self.dead_letter_stream],
                   args=[self.group, entry.entry_id, *(item for pair in fields.items() for item in pair)])
        logger.error("entry dead-lettered stream=%s entry_id=%s deliveries=%d error=%s", self.stream, entry.entry_id,
                     entry.deliveries, error[:300], extra={"entry_id": entry.entry_id})

    async def pending_count(self) -> int:
        summary = await self.redis.xpending(self.stream, self.group)
        return int(summary["pending"])

    async def lag(self) -> int | None:
        """Entries of the stream not yet delivered to the group (Redis 7's `lag`), None when unknown."""
        for group in await self.redis.xinfo_groups(self.stream):
            if _text(group["name"]) == self.group:
                lag = group.get("lag")
                return int(lag) if lag is not None else None
        return None

    async def _fill_deliveries(self, entries: list[Entry]) -> None:
        if not entries:
            return
        details = await self.redis.xpending_range(self.stream, self.group, min=entries[0].entry_id,
                                                  max=entries[-1].entry_id, count=len(entries) * 2)
        counts = {_text(d["message_id"]): int(d["times_delivered"]) for d in details}
        for entry in entries:
            entry.deliveries = counts.get(entry.entry_id, entry.deliveries)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _trimmed_ids(reply) -> list[str]:
    return [_text(entry_id) for _stream, items in reply or [] for entry_id, fields in items if not fields]


def _entries(reply) -> list[Entry]:
    entries = []
    for _stream, items in reply or []:
        for entry_id, fields in items:
            if fields:
                entries.append(Entry(_text(entry_id), fields))
    return entries
