"""Write accepted events to the Redis stream, many requests per XADD, through redis-py.

The collector uses this writer only where `ingest.group_commit`'s own connection cannot go:
Redis Cluster, TLS and Unix sockets. There, an error reply fails the whole write, where group
commit fails only the requests of the entry that got it.

Up to MAX_WRITES_IN_FLIGHT writes run at once. Requests that arrive while they are in flight
wait for the next write, which carries all of their events. At low load every request gets
its own XADD at once, and under load one round trip serves tens of requests. This matters
because redis-py's client-side cost of an awaited XADD (about 130 µs on uvloop on the machine
of bench/collector/RESULTS.md), not Redis, limits a Python process that writes once per request.

A request's `write` returns only after Redis acknowledged the entries holding its events, so
a 2xx response means the events are in the stream. A failed write fails every request it
carried, and the requests that queued behind it, with the same RedisError.

With several stream partitions, one write is one XADD per partition it touches. On a single
Redis they go in one MULTI/EXEC, so a write is still whole or nothing. On Redis Cluster no
transaction spans slots: the partitions are written in parallel, and when only some fail,
only the requests with an event in a failed partition fail (PartialWrite).
NOTE: such a request's events in the other partitions are stored, so its retry stores them
again unless the client sent event ids, which make the retry's copies duplicates the sinks skip.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from ingest import metrics
from streams.event import EVENTS_FIELD, VERSION_FIELD, WIRE_VERSION, Event
from streams.partitions import StreamPartitions
from weir.redis import REDIS_ERRORS, RedisClient

logger = logging.getLogger(__name__)

MAX_EVENTS_PER_ENTRY = 500
"""Keeps one stream entry, and so the processor's batch of BATCH_SIZE entries, bounded."""
MAX_WRITES_IN_FLIGHT = 2
"""Two writes in flight served single events 13-30% faster than one in two trials of the
bench/collector load; four did not help further."""
MAX_QUEUED_EVENTS = 200_000
"""Events waiting for a write before new requests are turned away instead of queued."""


# KEYS: one stream. ARGV: the fields and values of each entry, each entry preceded by its number
# of arguments. Adds several entries to one stream whole or not at all, as MULTI/EXEC would,
# because redis-py's cluster pipelines reject MULTI/EXEC.
_ADD_ENTRIES_SCRIPT = """
local ids = {}
local i = 1
while i <= #ARGV do
  local count = tonumber(ARGV[i])
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + count))
  i = i + count + 1
end
return ids
"""


class WriterOverloaded(RedisError):
    """Too many events are waiting for a stream write; the request should be retried later."""


class PartialWrite(RedisError):
    """The entries of some partitions were written and those of others were not (Redis Cluster only)."""

    def __init__(self, failures: dict[str, RedisError]) -> None:
        streams = ", ".join(failures)
        super().__init__(f"stream write failed on {streams}: {next(iter(failures.values()))!r}")
        self.failures = failures
        """The streams whose entries were not written, with their errors."""


class StreamWriter:
    """Coalesces the events of concurrent requests into few XADDs, one per stream partition touched.

    `streams` is one stream that takes every event, or the partitions the events are routed over.
    """

    def __init__(self, redis: RedisClient, streams: str | StreamPartitions) -> None:
        self._redis = redis
        self._stream, self._partitions = stream_target(streams)
        self._add_entries = redis.register_script(_ADD_ENTRIES_SCRIPT)
        self._queued: list[tuple[list[Event], asyncio.Future[None]]] = []
        self._queued_events = 0
        self._flushing: set[asyncio.Task] = set()

    async def write(self, events: list[Event]) -> None:
        """Return once `events` are in the stream; raise RedisError when the write failed."""
        await self.enqueue(events)

    def enqueue(self, events: list[Event]) -> asyncio.Future[None]:
        """Queue `events` for a write; return a future that is done once they are in the stream.

        The future fails with a RedisError when the write failed. Raises WriterOverloaded at once
        when MAX_QUEUED_EVENTS events are already waiting.
        """
        if self._queued_events + len(events) > MAX_QUEUED_EVENTS:
            raise WriterOverloaded(f"{self._queued_events} events are already waiting for a stream write")
        future = asyncio.get_running_loop().create_future()
        self._queued.append((events, future))
        self._queued_events += len(events)
        if len(self._flushing) < MAX_WRITES_IN_FLIGHT and self._queued_events == len(events):
            self._flushing.add(asyncio.create_task(self._flush_until_empty()))
        # Cancelling the request that awaits the future cancels only that future. The write runs in
        # its own task and still carries the events, so other requests in the same write are unaffected.
        return future

    async def close(self) -> None:
        """Wait for the writes in flight; called when the app stops."""
        if self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)

    async def _flush_until_empty(self) -> None:
        try:
            while self._queued:
                batch, self._queued, self._queued_events = self._queued, [], 0
                await self._flush(batch)
        finally:
            # Synchronously, so a request queued right after the loop ends starts a new flush.
            self._flushing.discard(asyncio.current_task())

    async def _flush(self, batch: list[tuple[list[Event], asyncio.Future[None]]]) -> None:
        """Write the events of `batch` in one round trip and settle each request's future."""
        events = [event for request_events, _ in batch for event in request_events]
        started = time.perf_counter()
        try:
            await self._xadd(events)
        except asyncio.CancelledError:
            _settle(batch, RedisError("the stream write was cancelled because the collector is stopping"))
            raise
        except PartialWrite as error:
            logger.error("stream write failed on some partitions streams=%s requests=%d events=%d error=%r",
                         ",".join(error.failures), len(batch), len(events), error)
            metrics.STREAM_WRITE_FAILURES.inc()
            # Only those partitions failed, so the requests queued meanwhile are left to the next write.
            for request_events, future in batch:
                failed = next((error.failures[s] for s in self._streams_of(request_events) if s in error.failures),
                              None)
                _settle([(request_events, future)], failed)
            return
        except Exception as error:  # noqa: BLE001 - every failure must settle the requests, or they hang
            # Besides Redis errors, redis-py 5.2's cluster client can raise e.g. AttributeError when
            # it closes a connection that another command is using; the write failed all the same.
            unexpected = not isinstance(error, REDIS_ERRORS)
            error = _as_redis_error(error)
            logger.error("stream write failed streams=%s requests=%d events=%d error=%r",
                         ",".join(sorted(self._streams_of(events))), len(batch), len(events), error,
                         exc_info=unexpected)
            metrics.STREAM_WRITE_FAILURES.inc()
            # Requests queued behind a failed write would most likely fail too, after another wait.
            queued, self._queued, self._queued_events = self._queued, [], 0
            _settle(batch + queued, error)
            return
        metrics.STREAM_WRITE_SECONDS.observe(time.perf_counter() - started)
        metrics.REQUESTS_PER_WRITE.observe(len(batch))
        _settle(batch, None)

    def _streams_of(self, events: list[Event]) -> set[str]:
        if self._stream is not None:
            return {self._stream}
        return {self._partitions.stream_of(event) for event in events}

    async def _xadd(self, events: list[Event]) -> None:
        """Add `events` to their streams; raise PartialWrite when only some partitions were written."""
        by_stream = {self._stream: events} if self._stream is not None else self._partitions.route(events)
        if len(by_stream) == 1:
            [(stream, stream_events)] = by_stream.items()
            await self._xadd_stream(stream, stream_events)
            return
        if not isinstance(self._redis, RedisCluster):
            # MULTI/EXEC, so on one server a write is whole or nothing across the partitions too.
            async with self._redis.pipeline(transaction=True) as pipe:
                for stream, stream_events in by_stream.items():
                    for fields in _entries(stream_events):
                        pipe.xadd(stream, fields)
                await pipe.execute()
            return

        results = await asyncio.gather(*(self._xadd_stream(stream, stream_events)
                                         for stream, stream_events in by_stream.items()), return_exceptions=True)
        failures = {}
        for stream, result in zip(by_stream, results):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, Exception):
                failures[stream] = _as_redis_error(result)
        if len(failures) == len(by_stream):
            raise next(iter(failures.values()))
        if failures:
            raise PartialWrite(failures)

    async def _xadd_stream(self, stream: str, events: list[Event]) -> None:
        entries = _entries(events)
        if len(entries) == 1:
            await self._redis.xadd(stream, entries[0])
            return
        # A request whose events fill several entries is written whole or not at all.
        arguments: list[bytes | int] = []
        for fields in entries:
            arguments += [2 * len(fields), *(item for pair in fields.items() for item in pair)]
        await self._add_entries(keys=[stream], args=arguments)


def stream_target(streams: str | StreamPartitions) -> tuple[str | None, StreamPartitions | None]:
    """Return the one stream that takes every event, or else the partitions to route events over."""
    if isinstance(streams, StreamPartitions) and len(streams.streams()) == 1:
        # Every event goes to the one partition, so routing each event would only cost CPU.
        streams = streams.streams()[0]
    if isinstance(streams, str):
        return streams, None
    return None, streams


def _entries(events: list[Event]) -> list[dict[bytes, bytes]]:
    return [encode_events(events[start:start + MAX_EVENTS_PER_ENTRY])
            for start in range(0, len(events), MAX_EVENTS_PER_ENTRY)]


def _as_redis_error(error: BaseException) -> RedisError:
    """Return `error` as a RedisError, for which the event routes respond with 503."""
    if isinstance(error, RedisError):
        return error
    wrapped = RedisError(f"{error.__class__.__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped


def _settle(batch: list[tuple[list[Event], asyncio.Future[None]]], error: BaseException | None) -> None:
    for _events, future in batch:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def encode_events(events: list[Event]) -> dict[bytes, bytes]:
    """Return the fields of one stream entry carrying `events`, byte for byte as `streams.event.encode_entry` does.

    orjson 3.13 takes about 1.7 times as long to serialize a slotted dataclass as to build and
    serialize a dict of the same fields (52 µs against 30 µs for 50 events), so it gets dicts.
    A test checks the bytes against encode_entry's.
    """
    return {VERSION_FIELD: WIRE_VERSION, EVENTS_FIELD: orjson.dumps([_event_fields(event) for event in events])}


def _event_fields(event: Event) -> dict:
    # Every field of streams.event.Event in declaration order, as orjson writes a dataclass.
    return {
        "id": event.id, "site": event.site, "type": event.type, "action": event.action,
        "timestamp_ms": event.timestamp_ms, "received_ms": event.received_ms, "visitor_id": event.visitor_id,
        "url": event.url, "referrer": event.referrer, "user_agent": event.user_agent, "ip": event.ip,
        "user_id": event.user_id, "props": event.props, "source": event.source,
    }
