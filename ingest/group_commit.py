"""Group commit: write the events of all requests of one event-loop turn in one pipelined send.

Each request queues its events and awaits a future. The first request of a turn schedules a
flush for the next turn, so every request that runs in between joins it. The flush packs the
queued events into stream entries of at most MAX_EVENTS_PER_ENTRY events, never splitting a
request across two entries. A request of more events than that gets its own EVAL of the
writer's Lua script, which adds its entries whole or not at all. All of a flush's commands go
out in one write on a dedicated connection (`ingest.resp`), and each command's reply settles
exactly the requests whose events it carried. So a request's `write` returns only after Redis
acknowledged its entries, and an error reply for one entry fails only the requests in it.

When the flush's events go to more than one stream partition, its commands run in one
MULTI/EXEC, so the flush, and with it every request, is whole or nothing, as in StreamWriter.
A lost connection or a reply later than REDIS_TIMEOUT_S fails every request of the writes in
flight and the requests queued behind them (their entries may or may not be stored, so the
client's retry is what makes them safe, deduplicated when it sent event ids). The next flush
reconnects.

Up to MAX_WRITES_IN_FLIGHT flushes wait for replies at once, and requests that arrive
meanwhile queue for the next one, which bounds the commands in flight and lets a flush carry
more requests under load.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import RedisError

from ingest import metrics
from ingest.resp import ConnectionOptions, Reply, RespConnection, encode_command, open_connection, options_of
from ingest import writer as writer_module
from ingest.writer import _ADD_ENTRIES_SCRIPT, StreamWriter, WriterOverloaded, encode_events, stream_target
from streams.event import EVENTS_FIELD, VERSION_FIELD, WIRE_VERSION, Event
from streams.partitions import StreamPartitions
from weir.redis import RedisClient

logger = logging.getLogger(__name__)

_MULTI = encode_command("MULTI")
_EXEC = encode_command("EXEC")

Request = tuple[list[Event], asyncio.Future[None]]


class GroupCommitWriter:
    """Writes the events of the requests of one event-loop turn in one pipelined send.

    `streams` is one stream that takes every event, or the partitions the events are routed over.
    """

    def __init__(self, options: ConnectionOptions, streams: str | StreamPartitions) -> None:
        self._options = options
        self._stream, self._partitions = stream_target(streams)
        self._xadd_prefixes: dict[str, bytes] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connection: RespConnection | None = None
        self._connecting: asyncio.Task | None = None
        self._queued: list[Request] = []
        self._queued_events = 0
        self._flush_scheduled = False
        self._in_flight = 0
        self._drained: asyncio.Future[None] | None = None

    async def write(self, events: list[Event]) -> None:
        """Return once `events` are in the stream; raise RedisError when the write failed."""
        await self.enqueue(events)

    def enqueue(self, events: list[Event]) -> asyncio.Future[None]:
        """Queue `events` for the next flush; return a future that is done once they are in the stream.

        The future fails with a RedisError when the write failed. Raises WriterOverloaded at once
        when MAX_QUEUED_EVENTS events are already waiting. Awaiting the future directly saves the
        request path the coroutine of `write`.
        """
        if self._queued_events + len(events) > writer_module.MAX_QUEUED_EVENTS:
            raise WriterOverloaded(f"{self._queued_events} events are already waiting for a stream write")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queued.append((events, future))
        self._queued_events += len(events)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        # Cancelling the request that awaits the future cancels only that future: a flush leaves out
        # the requests whose futures are done, and a flush already sent settles the others as usual.
        return future

    async def close(self) -> None:
        """Wait for the writes in flight and close the connection; called when the app stops."""
        if self._in_flight or self._queued or self._connecting is not None:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained
        if self._connection is not None:
            self._connection.close()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._queued or self._in_flight >= writer_module.MAX_WRITES_IN_FLIGHT:
            return
        connection = self._connection
        if connection is None or not connection.is_open:
            if self._connecting is None:
                self._connecting = asyncio.create_task(self._connect(), name="stream-writer-connect")
            return

        batch = [request for request in self._queued if not request[1].done()]
        self._queued, self._queued_events = [], 0
        if not batch:
            return
        write = _Write(self, batch)
        try:
            if self._stream is not None:
                self._pack(write, self._stream, batch)
            else:
                self._pack_partitions(write, batch)
        except Exception as error:  # noqa: BLE001 - the batch left the queue, so it must be settled here or hang
            logger.exception("stream write failed: cannot encode the entries requests=%d", len(batch))
            metrics.STREAM_WRITE_FAILURES.inc()
            wrapped = RedisError(f"encoding the stream entries failed: {error!r}")
            _Write._fail(batch, wrapped)
            return
        self._in_flight += 1
        connection.send(write.data(), write.replies_expected(), write.settle)

    def _pack_partitions(self, write: _Write, batch: list[Request]) -> None:
        by_stream: dict[str, list[Request]] = {}
        for events, future in batch:
            for stream, stream_events in self._partitions.route(events).items():
                by_stream.setdefault(stream, []).append((stream_events, future))
        for stream, requests in by_stream.items():
            self._pack(write, stream, requests)
        write.transaction = len(by_stream) > 1

    def _pack(self, write: _Write, stream: str, requests: list[Request]) -> None:
        """Add the commands writing `requests` to `stream`, each request whole in one command."""
        max_events = writer_module.MAX_EVENTS_PER_ENTRY
        entry_events: list[Event] = []
        entry_futures: list[asyncio.Future[None]] = []
        for events, future in requests:
            if len(events) > max_events:
                write.add(self._add_entries_command(stream, events, max_events), [future])
                continue
            if len(entry_events) + len(events) > max_events:
                write.add(self._xadd_command(stream, entry_events), entry_futures)
                entry_events, entry_futures = [], []
            entry_events += events
            entry_futures.append(future)
        if entry_events:
            write.add(self._xadd_command(stream, entry_events), entry_futures)

    def _xadd_command(self, stream: str, events: list[Event]) -> bytes:
        prefix = self._xadd_prefixes.get(stream)
        if prefix is None:
            # Everything up to the events field's value is the same for every entry of a stream.
            whole = encode_command("XADD", stream, "*", VERSION_FIELD, WIRE_VERSION, EVENTS_FIELD, b"")
            prefix = self._xadd_prefixes[stream] = whole[:-len(b"$0\r\n\r\n")]
        payload = encode_events(events)[EVENTS_FIELD]
        return b"%b$%d\r\n%b\r\n" % (prefix, len(payload), payload)

    @staticmethod
    def _add_entries_command(stream: str, events: list[Event], max_events: int) -> bytes:
        arguments: list[bytes | int] = []
        for start in range(0, len(events), max_events):
            fields = encode_events(events[start:start + max_events])
            arguments += [2 * len(fields), *(item for pair in fields.items() for item in pair)]
        return encode_command("EVAL", _ADD_ENTRIES_SCRIPT, 1, stream, *arguments)

    async def _connect(self) -> None:
        try:
            self._connection = await open_connection(self._options)
        except RedisError as error:
            logger.error("stream write failed: cannot connect to Redis address=%s error=%r",
                         self._options.address, error)
            metrics.STREAM_WRITE_FAILURES.inc()
            self._fail_queued(error)
            return
        finally:
            self._connecting = None
            self._check_drained()
        self._flush()

    def _write_done(self, write: _Write, error: RedisError | None) -> None:
        """Account for a finished write; after a failure of the connection, fail the queued requests too."""
        self._in_flight -= 1
        if error is not None:
            # Requests queued behind a lost connection would most likely fail too, after another wait.
            self._fail_queued(error)
        if self._queued and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        self._check_drained()

    def _fail_queued(self, error: RedisError) -> None:
        queued, self._queued, self._queued_events = self._queued, [], 0
        for _events, future in queued:
            if not future.done():
                future.set_exception(error)

    def _check_drained(self) -> None:
        if self._drained is not None and not (self._in_flight or self._queued or self._connecting is not None):
            if not self._drained.done():
                self._drained.set_result(None)


class _Write:
    """One flush: its encoded commands, the requests each command carries, and their settlement."""

    __slots__ = ("writer", "batch", "commands", "carried", "transaction", "started")

    def __init__(self, writer: GroupCommitWriter, batch: list[Request]) -> None:
        self.writer = writer
        self.batch = batch
        self.commands: list[bytes] = []
        self.carried: list[list[asyncio.Future[None]]] = []
        self.transaction = False
        self.started = time.perf_counter()

    def add(self, command: bytes, futures: list[asyncio.Future[None]]) -> None:
        self.commands.append(command)
        self.carried.append(futures)

    def data(self) -> bytes:
        if self.transaction:
            return b"".join((_MULTI, *self.commands, _EXEC))
        return b"".join(self.commands)

    def replies_expected(self) -> int:
        return len(self.commands) + 2 if self.transaction else len(self.commands)

    def settle(self, outcome: list[Reply] | RedisError) -> None:
        """Settle every request of this write from its replies, or fail them all with `outcome`."""
        if isinstance(outcome, RedisError):
            self._log_failure(outcome)
            self._fail(self.batch, outcome)
            self.writer._write_done(self, outcome)
            return

        failures = [(futures, reply) for futures, reply in zip(self.carried, self._command_replies(outcome))
                    if isinstance(reply, RedisError)]
        if failures:
            failed_requests = {id(future) for futures, _reply in failures for future in futures}
            self._log_failure(failures[0][1], len(failed_requests))
            for futures, reply in failures:
                self._fail([(None, future) for future in futures], reply)
        else:
            metrics.STREAM_WRITE_SECONDS.observe(time.perf_counter() - self.started)
            metrics.REQUESTS_PER_WRITE.observe(len(self.batch))
        for _events, future in self.batch:
            if not future.done():
                future.set_result(None)
        self.writer._write_done(self, None)

    def _command_replies(self, replies: list[Reply]) -> list[Reply]:
        """Return one reply per command; in a transaction, an error anywhere fails every command."""
        if not self.transaction:
            return replies
        errors = [reply for reply in replies if isinstance(reply, RedisError)]
        result = replies[-1]
        if isinstance(result, list):
            errors += [reply for reply in result if isinstance(reply, RedisError)]
        if not errors and isinstance(result, list):
            return result
        # MULTI/EXEC stores all or none, except when a command fails as EXEC runs it. Either way
        # the whole write is reported failed, as StreamWriter's transaction does.
        error = errors[0] if errors else RedisError(f"EXEC returned {result!r}")
        return [error] * len(self.commands)

    def _log_failure(self, error: RedisError, requests: int | None = None) -> None:
        events = sum(len(events) for events, _future in self.batch)
        logger.error("stream write failed requests=%d events=%d commands=%d error=%r",
                     len(self.batch) if requests is None else requests, events, len(self.commands), error)
        metrics.STREAM_WRITE_FAILURES.inc()

    @staticmethod
    def _fail(requests: list, error: RedisError) -> None:
        for _events, future in requests:
            if not future.done():
                future.set_exception(error)


def create_stream_writer(redis: RedisClient, streams: str | StreamPartitions) -> GroupCommitWriter | StreamWriter:
    """Return a GroupCommitWriter with a connection of its own to the server `redis` connects to,
    or, when `ingest.resp` cannot connect that way (Redis Cluster, TLS, a Unix socket), a
    StreamWriter that writes through `redis`."""
    options = options_of(redis)
    if options is None:
        return StreamWriter(redis, streams)
    return GroupCommitWriter(options, streams)
