"""A dedicated asyncio connection to one Redis server for the collector's stream writes.

The caller encodes commands as RESP2 itself and sends several at once. hiredis parses the
replies, which come back in the order of the commands. Per awaited XADD,
bench/collector/xadd_client_cost.py measured 55 to 62 µs of client CPU through redis-py 5.2's
asyncio client and about 14 µs on this connection, on the machine of bench/collector/RESULTS.md.
redis-py adds a connection checkout, a `wait_for` and a timeout context to each command, which
this connection does without.

Only plain TCP connections are supported, with an optional AUTH and SELECT. `options_of`
returns None for a client that connects any other way (TLS, a Unix socket, a credential
provider, RESP3, Redis Cluster), and the collector then writes through redis-py.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

Reply = bytes | int | list | None | ResponseError
"""One parsed reply; an error reply is a ResponseError instance, returned rather than raised."""
ReplyCallback = Callable[[list[Reply] | RedisError], None]
"""Called with the replies of one send, or with the ConnectionError or TimeoutError that ended it."""


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """Address, credentials and database of a connection; timeouts in seconds, None for no limit."""

    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None
    connect_timeout_s: float | None = None
    timeout_s: float | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def options_of(redis: object) -> ConnectionOptions | None:
    """Return the connection options of a redis-py asyncio client, or None when this module cannot
    connect the way the client does."""
    if type(redis) is not Redis:
        return None
    pool = redis.connection_pool
    if pool.connection_class is not Connection:
        return None
    kwargs = pool.connection_kwargs
    if kwargs.get("credential_provider") is not None or str(kwargs.get("protocol") or 2) != "2":
        return None
    timeout_s = kwargs.get("socket_timeout")
    return ConnectionOptions(
        host=kwargs.get("host", "localhost"),
        port=int(kwargs.get("port", 6379)),
        db=int(kwargs.get("db") or 0),
        username=kwargs.get("username"),
        password=kwargs.get("password"),
        connect_timeout_s=kwargs.get("socket_connect_timeout") or timeout_s,
        timeout_s=timeout_s,
    )


def encode_command(*arguments: bytes | str | int) -> bytes:
    """Encode one command as a RESP2 array of bulk strings."""
    parts = [b"*%d\r\n" % len(arguments)]
    for argument in arguments:
        if isinstance(argument, str):
            argument = argument.encode()
        elif isinstance(argument, int):
            argument = b"%d" % argument
        parts.append(b"$%d\r\n%b\r\n" % (len(argument), argument))
    return b"".join(parts)


class _PendingReplies:
    __slots__ = ("expected", "replies", "callback", "timer")

    def __init__(self, expected: int, callback: ReplyCallback) -> None:
        self.expected = expected
        self.replies: list[Reply] = []
        self.callback = callback
        self.timer: asyncio.TimerHandle | None = None


class RespConnection(asyncio.Protocol):
    """One open connection; use `open_connection` to get one.

    Every `send` is settled exactly once through its callback: with the list of its replies,
    or with redis-py's ConnectionError, or its TimeoutError when a reply took longer than
    `timeout_s`. A timeout aborts the connection and fails every send still waiting,
    because their replies can no longer be told apart from late ones.
    """

    def __init__(self, options: ConnectionOptions) -> None:
        self.options = options
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)
        self._pending: collections.deque[_PendingReplies] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._lost: RedisError | None = None

    @property
    def is_open(self) -> bool:
        return self._lost is None and self._transport is not None

    def send(self, data: bytes, replies: int, callback: ReplyCallback) -> None:
        """Write `data`, which contains `replies` commands, and call `callback` once with the outcome."""
        if self._lost is not None:
            callback(self._lost)
            return
        pending = _PendingReplies(replies, callback)
        if self.options.timeout_s is not None:
            pending.timer = self._loop.call_at(self._loop.time() + self.options.timeout_s, self._time_out)
        self._pending.append(pending)
        self._transport.write(data)

    def close(self) -> None:
        """Close the connection; sends still waiting fail with ConnectionError."""
        self._fail(RedisConnectionError(f"the connection to Redis at {self.options.address} was closed"))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        pending = self._pending
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                if not pending:
                    raise InvalidResponse(f"unexpected reply {reply!r}")
                head = pending[0]
                head.replies.append(reply)
                if len(head.replies) == head.expected:
                    pending.popleft()
                    if head.timer is not None:
                        head.timer.cancel()
                    head.callback(head.replies)
        except InvalidResponse as error:
            logger.error("invalid reply from Redis address=%s error=%r", self.options.address, error)
            self._fail(RedisConnectionError(f"invalid reply from Redis at {self.options.address}: {error}"))

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc is not None else ""
        self._fail(RedisConnectionError(f"the connection to Redis at {self.options.address} was lost{reason}"))

    def _time_out(self) -> None:
        self._fail(RedisTimeoutError(f"no reply from Redis at {self.options.address} "
                                f"within {self.options.timeout_s} s"))

    def _fail(self, error: RedisError) -> None:
        if self._lost is None:
            self._lost = error
            if self._transport is not None:
                # abort, not close: nothing buffered for this connection is worth sending any more.
                self._transport.abort()
        pending, self._pending = self._pending, collections.deque()
        for waiting in pending:
            if waiting.timer is not None:
                waiting.timer.cancel()
            waiting.callback(error)


async def open_connection(options: ConnectionOptions) -> RespConnection:
    """Connect, authenticate and select the database; raise redis-py's ConnectionError when a
    step fails, or its TimeoutError when `connect_timeout_s` passes."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(options.connect_timeout_s):
            _transport, connection = await loop.create_connection(
                lambda: RespConnection(options), options.host, options.port)
    except TimeoutError:
        raise RedisTimeoutError(f"connecting to Redis at {options.address} timed out "
                                f"after {options.connect_timeout_s} s") from None
    except OSError as error:
        raise RedisConnectionError(f"connecting to Redis at {options.address} failed: {error}") from None

    handshake = []
    if options.password is not None:
        credentials = (options.username, options.password) if options.username else (options.password,)
        handshake.append(("AUTH", encode_command("AUTH", *credentials)))
    if options.db:
        handshake.append(("SELECT", encode_command("SELECT", options.db)))
    if not handshake:
        return connection

    outcome: asyncio.Future[list[Reply] | RedisError] = loop.create_future()

    def settle(replies: list[Reply] | RedisError) -> None:
        if not outcome.done():
            outcome.set_result(replies)

    connection.send(b"".join(command for _name, command in handshake), len(handshake), settle)
    try:
        replies = await outcome
    except BaseException:
        connection.close()
        raise
    if isinstance(replies, RedisError):
        raise replies
    for (name, _command), reply in zip(handshake, replies):
        if isinstance(reply, ResponseError):
            connection.close()
            raise RedisConnectionError(f"Redis at {options.address} rejected {name}: {reply}")
    return connection
