"""Backpressure: how many stream entries the processors have not finished, checked every second.

The backlog is the consumer group's lag (entries never delivered) plus its pending entries
(delivered, not acknowledged). Before any processor created the group, every entry of the
stream counts. When the group's lag is unknown (Redis before 7.0, or after entries were
deleted from the middle of the stream), the whole stream length is used, which can only
overstate the backlog. With several stream partitions the backlog is the sum over all of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from redis.exceptions import ResponseError

from ingest import metrics
from weir.redis import REDIS_ERRORS, RedisClient

logger = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0


class BacklogMonitor:
    """Tracker of the stream's unprocessed length and of whether it is over `max_entries`."""

    def __init__(self, redis: RedisClient, streams: str | Sequence[str], group: str, max_entries: int,
                 interval_s: float = CHECK_INTERVAL_S) -> None:
        self._redis = redis
        self._streams = [streams] if isinstance(streams, str) else list(streams)
        self._stream_names = ",".join(self._streams)
        self._group = group
        self.max_entries = max_entries
        self.interval_s = interval_s
        self.backlog_entries = 0
        self.over_limit = False

    async def refresh(self) -> int:
        """Read the backlog from Redis, update `over_limit`, and return the backlog in entries."""
        backlog = await self._read_backlog()
        self.backlog_entries = backlog
        metrics.STREAM_BACKLOG.set(backlog)
        over = backlog > self.max_entries
        if over != self.over_limit:
            if over:
                logger.warning("backpressure on: stream backlog over the limit stream=%s backlog_entries=%d "
                               "max_entries=%d", self._stream_names, backlog, self.max_entries)
            else:
                logger.info("backpressure off stream=%s backlog_entries=%d max_entries=%d",
                            self._stream_names, backlog, self.max_entries)
        self.over_limit = over
        return backlog

    async def run(self) -> None:
        """Refresh every `interval_s` until cancelled; a failed read keeps the last value."""
        while True:
            try:
                await self.refresh()
            except REDIS_ERRORS as error:
                # Writes fail on their own while Redis is away; this only keeps the last reading.
                logger.debug("stream backlog check failed stream=%s error=%r", self._stream_names, error)
            except (KeyError, TypeError, ValueError) as error:
                # An XINFO reply of an unexpected shape: log it and keep checking.
                logger.warning("stream backlog check failed stream=%s error=%r; retrying in %.0f s",
                               self._stream_names, error, self.interval_s)
            await asyncio.sleep(self.interval_s)

    async def _read_backlog(self) -> int:
        if len(self._streams) == 1:
            return await self._read_stream_backlog(self._streams[0])
        return sum(await asyncio.gather(*(self._read_stream_backlog(stream) for stream in self._streams)))

    async def _read_stream_backlog(self, stream: str) -> int:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xlen(stream)
            pipe.xinfo_groups(stream)
            try:
                length, groups = await pipe.execute()
            except ResponseError:
                # XINFO GROUPS fails with "no such key" until the first event creates the stream.
                return 0
        for group in groups:
            name = group["name"]
            if (name.decode() if isinstance(name, bytes) else name) != self._group:
                continue
            lag = group.get("lag")
            if lag is None:
                return int(length)
            return int(lag) + int(group["pending"])
        return int(length)
