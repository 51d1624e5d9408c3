"""The realtime service: live counters of a site over Server-Sent Events and WebSocket.

| route                  | transport | resume                                        |
|------------------------|-----------|-----------------------------------------------|
| GET /live/{site}       | SSE       | `Last-Event-ID` header or `?last_event_id=N`  |
| GET /live/{site}/ws    | WebSocket | `?last_event_id=N`                            |

Both need an API key: `Authorization: Bearer KEY`, `X-API-Key: KEY` or `?key=KEY`. The key in
the query string is for EventSource, which cannot send headers. An update is one JSON object
(see `snapshot_payload`). A feed sends one at most once per LIVE_INTERVAL_MS, and only when it
differs from the previous one. The exception is a client's first update, sent when it
connects, which the next feed update may follow sooner. SSE carries an update as `data:`
with the counter version as `id:`. WebSocket sends it as a text message. Idle feeds get a
heartbeat every HEARTBEAT_S: an SSE comment line or a WebSocket ping.

Fan-out: one `SiteFeed` per site with viewers in this process. Each feed subscribes once
to the site's pub/sub channel, reads the counters with one script call per update (and once
per interval, so visitors who left drop out), and puts the encoded update into each client's
bounded queue. A client whose queue is full is disconnected, so a slow client never holds
up the others. More clients add no Redis command: a join takes the feed's latest update
from memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import orjson
from aiohttp import WSCloseCode, web
from prometheus_client import Counter, Gauge, Histogram
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError, ResponseError

from query.api import key_is_valid
from query.live_settings import RealtimeSettings
from streams.keys import EVENTS_STREAM, PROCESSOR_GROUP, live_channel
from streams.live import COUNT_WINDOW_S, VISITOR_WINDOW_S, LiveReader, LiveSnapshot, now_ms
from streams.partitions import StreamPartitions
from streams.sites import SiteDirectory, host_name_problem, normalize_host
from weir.health import HealthChecks, add_health_routes
from weir.redis import REDIS_ERRORS, RedisClient, connect_redis, pubsub_redis
from weir.tasks import cancel_all_and_wait, cancel_and_wait

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 5.0
"""How long a new client waits for the first read of a site's counters before it gets 503."""
RETRY_MS = 2000
"""Reconnection delay in ms, sent to EventSource clients in the `retry:` field."""
WARNING_INTERVAL_S = 10.0
"""Repeated warnings (slow clients, failed reads) are logged at most this often, with a count."""

SETTINGS_KEY = web.AppKey("settings", RealtimeSettings)
SITES_KEY = web.AppKey("sites", SiteDirectory)

LIVE_CLIENTS = Gauge("weir_live_clients", "Open live feeds in this process, by transport", ["transport"])
LIVE_SITES = Gauge("weir_live_sites", "Sites with a feed (viewers, or lingering after the last one) in this process")
LIVE_DROPPED = Counter("weir_live_clients_dropped", "Clients disconnected because CLIENT_QUEUE_SIZE updates waited for them")
LIVE_UPDATES = Counter("weir_live_updates", "Updates fanned out, counted once per site and not per client")
LIVE_READ_FAILURES = Counter("weir_live_read_failures", "Failed reads of a site's live counters")
LIVE_READ_SECONDS = Histogram("weir_live_read_seconds", "Time to read one site's live counters, seconds",
                              buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25))

HEARTBEAT = object()
"""Queue item: nothing changed for HEARTBEAT_S, so send a keep-alive."""
CLOSE = object()
"""Queue item: the server is stopping, so end the stream."""
SSE_HEARTBEAT = b": heartbeat\n\n"


class LiveUnavailable(Exception):
    """The feed cannot take a client now; the client gets 503 with this error's message as the reason."""


@dataclass(frozen=True, slots=True)
class Update:
    """One encoded update: the same bytes go to every client of the site."""

    version: int
    content: tuple
    """The update's values without its read time; an update with equal content is not sent again."""
    payload: dict
    sse: bytes
    text: str


@dataclass(frozen=True, slots=True)
class IngestLag:
    """How far the processors are behind the event stream; None where Redis cannot tell."""

    lag_ms: int | None = None
    backlog: int | None = None


def encode_update(payload: dict, content: tuple) -> Update:
    data = orjson.dumps(payload)
    return Update(payload["id"], content, payload, b"id: %d\ndata: %s\n\n" % (payload["id"], data), data.decode())


def snapshot_payload(snapshot: LiveSnapshot, lag: IngestLag) -> dict:
    """Return the JSON object clients get for one snapshot.

    | field                 | meaning                                                          |
    |-----------------------|------------------------------------------------------------------|
    | `id`                  | counter version: the events counted for the site so far          |
    | `at`                  | read time, UTC                                                   |
    | `visitors`            | distinct visitors with an event in the last 300 s                |
    | `pageviews`, `events` | pageviews and other events in the last 60 s                      |
    | `top_pages`           | pageviews per path in the last 300 s, ten at most                |
    | `top_sources`         | arrivals per referrer host in the last 300 s; null is no referrer |
    | `ingest_lag_ms`       | age of the oldest stream entry not yet committed, 0 if caught up |
    | `backlog`             | stream entries not yet committed                                 |
    | `last_batch_delay_ms` | collector to counters, for the site's newest batch               |

    Windows are whole seconds up to and including the second of `at`.
    """
    return {
        "site": snapshot.site,
        "id": snapshot.version,
        "at": datetime.fromtimestamp(snapshot.at_ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "visitors": snapshot.visitors,
        "pageviews": snapshot.pageviews,
        "events": snapshot.events,
        "top_pages": [{"path": path, "pageviews": count} for path, count in snapshot.top_pages],
        "top_sources": [{"source": source or None, "pageviews": count} for source, count in snapshot.top_sources],
        "ingest_lag_ms": lag.lag_ms,
        "backlog": lag.backlog,
        "last_batch_delay_ms": snapshot.delay_ms,
        "window_s": {"visitors": VISITOR_WINDOW_S, "pageviews": COUNT_WINDOW_S, "events": COUNT_WINDOW_S,
                     "top": VISITOR_WINDOW_S},
    }


def resumed_update(update: Update, last_event_id: int) -> Update:
    """Return `update` for a client that reconnected after `last_event_id`, saying how many events it missed.

    `missed_events` is null when the counters restarted below the client's id (their Redis keys
    expired or were lost), so the client must not add it to anything.
    """
    payload = dict(update.payload)
    payload["resumed_from"] = last_event_id
    payload["missed_events"] = update.version - last_event_id if last_event_id <= update.version else None
    return encode_update(payload, update.content)


class Subscriber:
    """One open feed: a bounded queue of updates, and a way to cut the connection.

    The queue is a plain list with one future to wake the reader. An asyncio.Queue, with its
    three deques and an Event, takes about 3.4 KB (sys.getsizeof, CPython 3.11), where an
    idle client costs about 15 KB in all.
    """

    __slots__ = ("site", "transport", "abort", "_items", "_size", "_waiter")

    def __init__(self, site: str, transport: str, queue_size: int, abort: Callable[[], None]) -> None:
        self.site = site
        self.transport = transport
        self.abort = abort
        self._items: list[object] = []
        self._size = queue_size
        self._waiter: asyncio.Future | None = None

    def offer(self, item: object) -> bool:
        """Queue `item` without waiting; return False when the client is too far behind."""
        if len(self._items) >= self._size:
            return False
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        return True

    async def next_item(self) -> object:
        """Wait for and return the oldest queued item."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class RepeatedWarning:
    """Logs a repeated condition at most once per WARNING_INTERVAL_S, with the count since the last line."""

    def __init__(self, message: str) -> None:
        self._message = message
        self._count = 0
        self._logged_at = float("-inf")

    def add(self, site: str, error: BaseException | None = None, traceback: bool = False) -> None:
        self._count += 1
        if time.monotonic() - self._logged_at >= WARNING_INTERVAL_S:
            logger.warning("%s site=%s count=%d error=%r", self._message, site, self._count, error,
                           exc_info=error if traceback else None, extra={"site": site})
            self._count = 0
            self._logged_at = time.monotonic()


class SiteFeed:
    """Reads one site's counters for all of this process's clients of that site, and fans them out."""

    def __init__(self, site: str, hub: LiveHub) -> None:
        self.site = site
        self.channel = live_channel(site).encode()
        self.subscribers: set[Subscriber] = set()
        self.joining = 0
        """Clients waiting in LiveHub.join for this feed's first or next read."""
        self.latest: Update | None = None
        self.ready = asyncio.Event()
        self.wake = asyncio.Event()
        self._hub = hub
        self._subscribed = False
        self._task: asyncio.Task | None = None
        self._idle_close: asyncio.TimerHandle | None = None
        self._read_waiters: list[asyncio.Future] = []

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"live-feed-{self.site}")

    async def stop(self, unsubscribe: bool = True) -> None:
        """Stop reading; `unsubscribe` is False when the pub/sub connection closes next anyway."""
        self.cancel_idle_close()
        if self._task is not None:
            await cancel_and_wait(self._task)
        if self._subscribed and unsubscribe:
            try:
                await self._hub.pubsub.unsubscribe(self.channel)
            except RedisError as error:
                # NOTE: the channel stays subscribed, since redis-py 5.2 subscribes it again at the next
                # reconnect, but `_listen` ignores its messages because no feed claims the channel.
                logger.debug("unsubscribe failed site=%s error=%r", self.site, error)
            except Exception as error:  # noqa: BLE001 - an idle feed's stop usually ends before anything awaits it
                # redis-py 5.2 raises AttributeError or RuntimeError (uvloop) here when `_listen`'s failed
                # read has just disconnected the shared pub/sub connection.
                logger.warning("unsubscribe failed site=%s error=%r", self.site, error, extra={"site": self.site})

    async def run(self) -> None:
        """Read, compare and fan out until stopped.

        Step 1: subscribe to the site's channel (again after a failure).
        Step 2: read the counters; fan out when they differ from the latest update.
        Step 3: send a heartbeat when nothing went out for HEARTBEAT_S.
        Step 4: wait for a processor's announcement or the next interval.
        """
        loop = asyncio.get_running_loop()
        settings = self._hub.settings
        interval_s = settings.LIVE_INTERVAL_MS / 1000
        last_sent = last_activity = float("-inf")
        while True:
            # Step 1
            if not self._subscribed:
                self._subscribed = await self._hub.subscribe(self)

            # Step 2
            self.wake.clear()
            read_at = loop.time()
            update = await self._read_update()
            if update is not None:
                if self.latest is None or update.content != self.latest.content:
                    self.latest = update
                    self._fan_out(update)
                    LIVE_UPDATES.inc()
                    # Record the send time, not the read time, because reads take varying time
                    # and two sends must be at least an interval apart.
                    last_sent = last_activity = loop.time()
                self.ready.set()
            self._wake_read_waiters()

            # Step 3
            if loop.time() - last_activity >= settings.HEARTBEAT_S:
                self._fan_out(HEARTBEAT)
                last_activity = loop.time()

            # Step 4
            await self._wait_for_next_read(read_at, last_sent, interval_s)

    async def wait_until_current(self, timeout_s: float) -> None:
        """Wait for the first read, and also for the next one when a processor announced newer counters.

        Raises TimeoutError after `timeout_s`.
        """
        async with asyncio.timeout(timeout_s):
            await self.ready.wait()
            if self.wake.is_set():
                waiter = asyncio.get_running_loop().create_future()
                self._read_waiters.append(waiter)
                await waiter

    def _wake_read_waiters(self) -> None:
        waiters, self._read_waiters = self._read_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _read_update(self) -> Update | None:
        started = time.perf_counter()
        try:
            snapshot, lag = await asyncio.gather(self._hub.reader.read_snapshot(self.site, self._hub.clock_ms()),
                                                 self._hub.current_ingest_lag())
        except RedisError as error:
            LIVE_READ_FAILURES.inc()
            self._hub.read_failures.add(self.site, error)
            return None
        except Exception as error:  # noqa: BLE001 - a failed read must not end the feed; the next one retries
            LIVE_READ_FAILURES.inc()
            self._hub.read_failures.add(self.site, error, traceback=True)
            return None
        LIVE_READ_SECONDS.observe(time.perf_counter() - started)
        payload = snapshot_payload(snapshot, lag)
        content = (snapshot.version, snapshot.visitors, snapshot.pageviews, snapshot.events,
                   tuple(snapshot.top_pages), tuple(snapshot.top_sources), lag, snapshot.delay_ms)
        return encode_update(payload, content)

    async def _wait_for_next_read(self, read_at: float, last_sent: float, interval_s: float) -> None:
        """Return an interval after the later of `read_at` and the last send, or sooner after an announcement.

        Without clients there is no rate to respect, so an announcement is read at once and a
        client that joins next gets current counters.
        """
        loop = asyncio.get_running_loop()
        while True:
            target = max(read_at, last_sent) + interval_s
            if self.wake.is_set():
                target = min(target, last_sent + interval_s if self.subscribers else 0.0)
            delay = target - loop.time()
            if delay <= 0:
                return
            if self.wake.is_set():
                await asyncio.sleep(delay)
                return
            try:
                await asyncio.wait_for(self.wake.wait(), delay)
            except TimeoutError:
                return

    def _fan_out(self, item: object) -> None:
        # NOTE: every update wakes one handler task per client. With 2,000 clients the last one
        # got it 0.14 s (median) after the first on a busy 2-core machine (bench/live/RESULTS.md).
        behind = [subscriber for subscriber in self.subscribers if not subscriber.offer(item)]
        for subscriber in behind:
            self._hub.drop(subscriber)

    def schedule_idle_close(self, delay_s: float) -> None:
        self.cancel_idle_close()
        self._idle_close = asyncio.get_running_loop().call_later(delay_s, self._hub.close_if_idle, self)

    def cancel_idle_close(self) -> None:
        if self._idle_close is not None:
            self._idle_close.cancel()
            self._idle_close = None


class LiveHub:
    """This process's site feeds, its one pub/sub connection and its count of clients."""

    def __init__(self, redis: RedisClient, settings: RealtimeSettings, clock_ms: Callable[[], int] = now_ms,
                 pubsub_client: Redis | None = None) -> None:
        """`pubsub_client` carries the pub/sub connection; None means `redis`, which a RedisCluster cannot be."""
        self.redis = redis
        self.settings = settings
        self.clock_ms = clock_ms
        self.feeds: dict[str, SiteFeed] = {}
        self.reader = LiveReader(redis)
        self.pubsub: PubSub = (pubsub_client or redis).pubsub(ignore_subscribe_messages=True)
        self.streams = StreamPartitions.from_settings(settings).streams()
        self.read_failures = RepeatedWarning("live counter read failed")
        self.slow_clients = RepeatedWarning("slow live clients disconnected")
        self.clients = 0
        self._joining = 0
        self._by_channel: dict[bytes, SiteFeed] = {}
        self._has_channels = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._stopping_feeds: set[asyncio.Task] = set()
        """Stops of feeds closed for idleness, awaited by `stop` before the pub/sub connection closes."""
        self._closing = False
        self._lag_read: asyncio.Task | None = None
        self._lag_read_at = float("-inf")

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._listen(), name="live-listen")]

    async def join(self, site: str, transport: str, abort: Callable[[], None],
                   last_event_id: int | None) -> tuple[Subscriber, Update]:
        """Add a client of `site`; return it with the first update to send.

        The first update is the feed's latest, read at most LIVE_INTERVAL_MS ago. When a
        processor has announced newer counters since, the client waits for the feed's next
        read instead. Raises LiveUnavailable when MAX_CLIENTS are open, when the service is
        stopping, or when the site's counters cannot be read within READY_TIMEOUT_S.
        """
        if self._closing:
            raise LiveUnavailable("the server is stopping")
        if self.clients + self._joining >= self.settings.MAX_CLIENTS:
            raise LiveUnavailable(f"this process has its maximum of {self.settings.MAX_CLIENTS} clients")
        feed = self.feeds.get(site)
        if feed is None:
            feed = self.feeds[site] = SiteFeed(site, self)
            LIVE_SITES.set(len(self.feeds))
            feed.start()
            logger.info("site feed opened site=%s", site, extra={"site": site})
        feed.cancel_idle_close()

        feed.joining += 1
        self._joining += 1
        try:
            await feed.wait_until_current(READY_TIMEOUT_S + self.settings.LIVE_INTERVAL_MS / 1000)
        except TimeoutError:
            if not feed.subscribers and feed.joining == 1:
                feed.schedule_idle_close(self.settings.IDLE_SITE_S)
            raise LiveUnavailable(f"the live counters could not be read within {READY_TIMEOUT_S:g}s") from None
        finally:
            feed.joining -= 1
            self._joining -= 1
        # `close_clients` may have run during the wait. It did not see this client, so the client
        # would get no CLOSE and would hold the stop until aiohttp's shutdown timeout.
        if self._closing:
            raise LiveUnavailable("the server is stopping")

        # No await from here on, so the first update and the queued ones neither overlap nor leave a gap.
        subscriber = Subscriber(site, transport, self.settings.CLIENT_QUEUE_SIZE, abort)
        feed.subscribers.add(subscriber)
        self.clients += 1
        LIVE_CLIENTS.labels(transport).inc()
        first = feed.latest
        if last_event_id is not None:
            first = resumed_update(first, last_event_id)
        return subscriber, first

    def leave(self, subscriber: Subscriber) -> None:
        """Remove a client; the site's feed closes IDLE_SITE_S after its last client left."""
        feed = self.feeds.get(subscriber.site)
        if feed is None or subscriber not in feed.subscribers:
            return
        feed.subscribers.discard(subscriber)
        self.clients -= 1
        LIVE_CLIENTS.labels(subscriber.transport).dec()
        if not feed.subscribers and not self._closing:
            feed.schedule_idle_close(self.settings.IDLE_SITE_S)

    def drop(self, subscriber: Subscriber) -> None:
        """Disconnect a client that fell CLIENT_QUEUE_SIZE updates behind."""
        LIVE_DROPPED.inc()
        self.slow_clients.add(subscriber.site)
        self.leave(subscriber)
        subscriber.abort()

    def close_if_idle(self, feed: SiteFeed) -> None:
        if feed.subscribers or feed.joining or self.feeds.get(feed.site) is not feed:
            return
        del self.feeds[feed.site]
        self._by_channel.pop(feed.channel, None)
        LIVE_SITES.set(len(self.feeds))
        logger.info("site feed closed site=%s", feed.site, extra={"site": feed.site})
        # Kept, because the loop holds only a weak reference to a task, and awaited by `stop`, so its
        # unsubscribe never runs on a pub/sub connection that is closing.
        stopping = asyncio.get_running_loop().create_task(feed.stop(), name=f"live-feed-stop-{feed.site}")
        self._stopping_feeds.add(stopping)
        stopping.add_done_callback(self._stopping_feeds.discard)

    async def subscribe(self, feed: SiteFeed) -> bool:
        """Subscribe to the feed's channel; return False (the feed still reads every interval) on failure."""
        try:
            await self.pubsub.subscribe(feed.channel)
        except RedisError as error:
            self.read_failures.add(feed.site, error)
            return False
        except Exception as error:  # noqa: BLE001 - the feed subscribes again at its next read
            # redis-py 5.2 raises AttributeError or RuntimeError (uvloop) when `_listen`'s failed read
            # has just disconnected the shared pub/sub connection, as it does for `unsubscribe`.
            self.read_failures.add(feed.site, error, traceback=True)
            return False
        self._by_channel[feed.channel] = feed
        self._has_channels.set()
        return True

    def close_clients(self) -> None:
        """Tell every client the server is stopping; runs before aiohttp waits for the handlers."""
        self._closing = True
        for feed in self.feeds.values():
            for subscriber in list(feed.subscribers):
                if not subscriber.offer(CLOSE):
                    subscriber.abort()

    async def stop(self) -> None:
        """Stop the feeds and background tasks and close the pub/sub connection."""
        self._closing = True
        if self._lag_read is not None:
            self._tasks.append(self._lag_read)
        await cancel_all_and_wait(self._tasks)
        await asyncio.gather(*(feed.stop(unsubscribe=False) for feed in self.feeds.values()), *self._stopping_feeds,
                             return_exceptions=True)
        self.feeds.clear()
        LIVE_SITES.set(0)
        await self.pubsub.aclose()

    async def _listen(self) -> None:
        """Wake the feed of each site whose channel carries an announcement."""
        await self._has_channels.wait()
        while True:
            try:
                message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except (RedisError, OSError) as error:
                # Feeds keep reading every interval meanwhile; redis-py subscribes again on reconnect.
                self.read_failures.add("*", error)
                await asyncio.sleep(1.0)
                continue
            except Exception as error:  # noqa: BLE001 - without this loop feeds still read, but only every interval
                self.read_failures.add("*", error, traceback=True)
                await asyncio.sleep(1.0)
                continue
            if message is not None and message["type"] == "message":
                feed = self._by_channel.get(message["channel"])
                if feed is not None:
                    feed.wake.set()

    async def current_ingest_lag(self) -> IngestLag:
        """Return the ingest lag, read at most once per LIVE_INTERVAL_MS for all feeds of this process."""
        loop = asyncio.get_running_loop()
        stale = loop.time() - self._lag_read_at >= self.settings.LIVE_INTERVAL_MS / 1000
        if self._lag_read is None or (self._lag_read.done() and stale):
            self._lag_read_at = loop.time()
            self._lag_read = asyncio.create_task(self._read_ingest_lag())
        # Shielded: a feed that stops while waiting must not cancel the read other feeds wait for.
        return await asyncio.shield(self._lag_read)

    async def _read_ingest_lag(self) -> IngestLag:
        try:
            return await read_ingest_lag(self.redis, self.clock_ms(), self.streams)
        except REDIS_ERRORS as error:
            self.read_failures.add("*", error)
            return IngestLag()


async def read_ingest_lag(redis: RedisClient, at_ms: int, streams: Sequence[str] = (EVENTS_STREAM,)) -> IngestLag:
    """Return the age of the oldest entry of `streams` the processors' group has not acknowledged, and their number.

    `streams` are every partition of the event stream. A partition without the group is left
    out, and the number is None when Redis cannot tell it for one of the others.
    """
    lags = [lag for lag in await asyncio.gather(*(_read_stream_lag(redis, stream, at_ms) for stream in streams))
            if lag.lag_ms is not None]
    if not lags:
        return IngestLag()
    backlogs = [lag.backlog for lag in lags]
    return IngestLag(max(lag.lag_ms for lag in lags), None if None in backlogs else sum(backlogs))


async def _read_stream_lag(redis: RedisClient, stream: str, at_ms: int) -> IngestLag:
    """Return the ingest lag of one stream.

    The oldest entry not acknowledged is the oldest pending one, or else the first never
    delivered. Stream entry ids start with their unix time in ms, which gives the age.
    """
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return IngestLag()
    group = next((g for g in groups if _text(g["name"]) == PROCESSOR_GROUP), None)
    if group is None:
        return IngestLag()

    candidates: list[str] = []
    pending = int(group["pending"])
    if pending:
        candidates.append(_text((await redis.xpending(stream, PROCESSOR_GROUP))["min"]))
    undelivered = group.get("lag")
    if undelivered is None or int(undelivered) > 0:
        first = await redis.xrange(stream, min="(" + _text(group["last-delivered-id"]), count=1)
        if first:
            candidates.append(_text(first[0][0]))
    # Redis leaves `lag` unknown after some deletions from the stream; then so is the backlog.
    backlog = pending + int(undelivered) if undelivered is not None else None
    if not candidates:
        return IngestLag(0, backlog)
    oldest_ms = min(int(entry_id.split("-", 1)[0]) for entry_id in candidates)
    return IngestLag(max(0, at_ms - oldest_ms), backlog)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


HUB_KEY = web.AppKey("live_hub", LiveHub)


def presented_key(request: web.Request) -> str | None:
    """Return the API key from `Authorization: Bearer`, `X-API-Key` or `?key=`, in that order."""
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("X-API-Key") or request.query.get("key")


def last_event_id(request: web.Request) -> int | None:
    """Return the `Last-Event-ID` header or `last_event_id` parameter; an unreadable one counts as absent."""
    value = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def json_error(request: web.Request, status: int, message: str, headers: dict | None = None) -> web.Response:
    response = web.Response(body=orjson.dumps({"error": message}), status=status, content_type="application/json",
                            headers=headers)
    allow_origin(request, response)
    return response


def allow_origin(request: web.Request, response: web.StreamResponse) -> None:
    """Add the CORS header when the request's Origin may read the feed."""
    origins = request.app[SETTINGS_KEY].cors_origins()
    origin = request.headers.get("Origin")
    if origins is None:
        response.headers["Access-Control-Allow-Origin"] = "*"
    elif origin and origin.rstrip("/").lower() in origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"


async def authorize(request: web.Request) -> str | web.Response:
    """Return the site's domain, or the 401 or 404 response to send instead."""
    if not key_is_valid(presented_key(request), request.app[SETTINGS_KEY].api_keys()):
        return json_error(request, 401, "missing or invalid API key: send `Authorization: Bearer KEY`, "
                                        "`X-API-Key: KEY` or `?key=KEY`")
    host = request.match_info["site"]
    site = await request.app[SITES_KEY].lookup(host)
    if site is None:
        name = normalize_host(host)
        problem = host_name_problem(name)
        if problem is not None:
            return json_error(request, 404, f"site {host[:200]!r} is not a host name: {problem}. Give the site's "
                                            "domain, such as example.com")
        return json_error(request, 404, f"unknown site {name!r}: add it with `weir site add {name} --timezone Area/City`")
    return site.domain


async def join_or_reject(request: web.Request, transport: str, abort: Callable[[], None]):
    """Return (subscriber, first update), or the error response to send instead."""
    site = await authorize(request)
    if isinstance(site, web.Response):
        return site
    try:
        return await request.app[HUB_KEY].join(site, transport, abort, last_event_id(request))
    except LiveUnavailable as error:
        return json_error(request, 503, f"live feed unavailable: {error}; retry later", {"Retry-After": "5"})


def abort_connection(request: web.Request) -> Callable[[], None]:
    def abort() -> None:
        if request.transport is not None:
            request.transport.abort()
    return abort


async def stream_sse(request: web.Request) -> web.StreamResponse:
    """GET /live/{site}: Server-Sent Events until the client leaves, falls behind or the server stops."""
    joined = await join_or_reject(request, "sse", abort_connection(request))
    if isinstance(joined, web.Response):
        return joined
    subscriber, first = joined

    hub = request.app[HUB_KEY]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    allow_origin(request, response)
    try:
        await response.prepare(request)
        await response.write(b"retry: %d\n\n" % RETRY_MS + first.sse)
        while True:
            item = await subscriber.next_item()
            if item is CLOSE:
                break
            await response.write(SSE_HEARTBEAT if item is HEARTBEAT else item.sse)
    except ConnectionResetError:
        logger.debug("live client gone site=%s transport=sse", subscriber.site)
    finally:
        hub.leave(subscriber)
    return response


async def stream_websocket(request: web.Request) -> web.StreamResponse:
    """GET /live/{site}/ws: the same updates as text messages; messages from the client are ignored."""
    ws = web.WebSocketResponse(autoping=True, max_msg_size=4096)
    if not ws.can_prepare(request).ok:
        return json_error(request, 400, "expected a WebSocket upgrade request; use GET /live/{site} for SSE")
    joined = await join_or_reject(request, "websocket", abort_connection(request))
    if isinstance(joined, web.Response):
        return joined
    subscriber, first = joined

    try:
        await ws.prepare(request)
        sender = asyncio.create_task(_send_updates(ws, subscriber, first))
        try:
            async for _message in ws:
                pass  # Reading is what processes the client's close and pong frames.
        finally:
            await cancel_and_wait(sender)
    finally:
        request.app[HUB_KEY].leave(subscriber)
    return ws


async def _send_updates(ws: web.WebSocketResponse, subscriber: Subscriber, first: Update) -> None:
    try:
        await ws.send_str(first.text)
        while True:
            item = await subscriber.next_item()
            if item is CLOSE:
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping")
                return
            if item is HEARTBEAT:
                await ws.ping()
            else:
                await ws.send_str(item.text)
    except ConnectionResetError:
        logger.debug("live client gone site=%s transport=websocket", subscriber.site)


async def preflight(request: web.Request) -> web.Response:
    """Return the CORS preflight response, for a page that sends the key or Last-Event-ID as a header."""
    response = web.Response(status=204, headers={
        "Access-Control-Allow-Methods": "GET",
        "Access-Control-Allow-Headers": "Authorization, X-API-Key, Last-Event-ID, Cache-Control",
        "Access-Control-Max-Age": "600",
    })
    allow_origin(request, response)
    return response


def create_realtime_app(settings: RealtimeSettings, clock_ms: Callable[[], int] = now_ms) -> web.Application:
    """Build the realtime service's aiohttp application; Redis and the feeds start and stop with it.

    `clock_ms` returns the current unix time in ms; tests replace it.
    """
    app = web.Application()
    app[SETTINGS_KEY] = settings
    checks = HealthChecks()

    async def hub_context(app: web.Application) -> AsyncIterator[None]:
        redis = connect_redis(settings.REDIS_URL, cluster=settings.REDIS_CLUSTER, socket_timeout=5,
                              socket_connect_timeout=2)
        pubsub_client = pubsub_redis(settings.REDIS_URL, redis, socket_timeout=5, socket_connect_timeout=2)
        hub = LiveHub(redis, settings, clock_ms, pubsub_client)
        app[HUB_KEY] = hub
        app[SITES_KEY] = SiteDirectory(redis)
        hub.start()
        try:
            yield
        finally:
            await hub.stop()
            if pubsub_client is not redis:
                await pubsub_client.aclose()
            await redis.aclose()

    async def close_clients(app: web.Application) -> None:
        app[HUB_KEY].close_clients()

    async def redis_ok() -> str:
        await app[HUB_KEY].redis.ping()
        return "ok"

    checks.hard["redis"] = redis_ok
    app.cleanup_ctx.append(hub_context)
    app.on_shutdown.append(close_clients)
    app.router.add_get("/live/{site}", stream_sse)
    app.router.add_get("/live/{site}/ws", stream_websocket)
    app.router.add_route("OPTIONS", "/live/{site}", preflight)
    add_health_routes(app, checks)
    return app
