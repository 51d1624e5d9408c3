"""The live feed: SSE and WebSocket clients against the running stack, and the counters in Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web
from redis.asyncio import Redis
from redis.crc import key_slot

from ingest.validate import EventBuilder, RequestContext
from query.live import HUB_KEY, LIVE_DROPPED, LiveHub, LiveUnavailable, SiteFeed, create_realtime_app
from query.live_settings import RealtimeSettings
from sinks.sites import upsert_site
from streams.event import Event
from streams.ids import new_event_id
from streams.keys import EVENTS_STREAM
from streams.live import (
    LiveReader,
    LiveRecorder,
    build_hit,
    midnight_days,
    now_ms,
    read_arguments,
    source_of,
    window_start_ms,
    write_arguments,
)
from streams.sites import Site, SiteDirectory
from streams.visitor import SaltStore
from tests.conftest import API_KEY, REDIS_SERVER_URL, REDIS_TEST_DB, REPO, free_port, wait_until_processed, weir_command

SITE = "live.example"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
BOT = "Googlebot/2.1 (+http://www.google.com/bot.html)"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


# --- helpers -------------------------------------------------------------------------------------

@dataclass
class Realtime:
    url: str
    app: web.Application
    runner: web.AppRunner


@asynccontextmanager
async def running_realtime(redis_url: str, clock_ms: Callable[[], int] = now_ms,
                           **overrides) -> AsyncIterator[Realtime]:
    """The realtime app on a free port of 127.0.0.1, stopped on exit unless the test stopped it."""
    port = free_port()
    settings = RealtimeSettings(NODE_ENV="development", REDIS_URL=redis_url, API_KEYS=API_KEY, PORT=port, **overrides)
    app = create_realtime_app(settings, clock_ms)
    runner = web.AppRunner(app, shutdown_timeout=30.0, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Realtime(f"http://127.0.0.1:{port}", app, runner)
    finally:
        if runner.server is not None:
            await runner.cleanup()


async def add_site(db: asyncpg.Connection, redis: Redis, domain: str = SITE) -> None:
    await upsert_site(db, Site(domain, "UTC"))
    await SiteDirectory(redis).publish([Site(domain, "UTC")])


async def post_events(collector_url: str, events: list[dict], user_agent: str = BROWSER) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{collector_url}/collect", json={"events": events},
                             headers={"User-Agent": user_agent}) as response:
            assert response.status == 202, await response.text()
            return await response.json()


def pageview(path: str, referrer: str | None = None, **extra) -> dict:
    item = {"site": SITE, "url": f"https://{SITE}{path}", **extra}
    if referrer:
        item["referrer"] = referrer
    return item


class SseStream:
    """Reads an open text/event-stream response block by block."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []

    async def read_block(self) -> list[str]:
        lines: list[str] = []
        while True:
            raw = await self.response.content.readline()
            if raw == b"":
                raise EOFError("the server ended the stream")
            line = raw.decode().rstrip("\n")
            if line == "":
                if lines:
                    return lines
                continue
            lines.append(line)

    async def next_update(self, timeout_s: float = 5.0) -> dict:
        """Return the next update as its JSON payload plus `sse_id`; comments are collected on the side."""
        async with asyncio.timeout(timeout_s):
            while True:
                block = await self.read_block()
                self.comments += [line for line in block if line.startswith(":")]
                data = [line[len("data: "):] for line in block if line.startswith("data: ")]
                if not data:
                    continue
                ids = [line[len("id: "):] for line in block if line.startswith("id: ")]
                update = orjson.loads("\n".join(data))
                update["sse_id"] = ids[0] if ids else None
                return update

    async def wait_for(self, condition: Callable[[dict], bool], timeout_s: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            update = await self.next_update(max(0.01, deadline - time.monotonic()))
            if condition(update):
                return update


@asynccontextmanager
async def open_sse(url: str, headers: dict | None = None, params: dict | None = None) -> AsyncIterator[SseStream]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=headers or {}, params=params or {}) as response:
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"] == "text/event-stream"
            yield SseStream(response)


def at_ms(update: dict) -> int:
    return round(datetime.fromisoformat(update["at"].replace("Z", "+00:00")).timestamp() * 1000)


def utc_datetime(unix_ms: int) -> datetime:
    return datetime.fromtimestamp(unix_ms / 1000, tz=timezone.utc)


def utc_ms(text: str) -> int:
    return round(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A Redis database of their own (three above the suite's), flushed before and after the test.

    The other layers' suites share the suite's database and flush it around each test. These tests
    time deliveries to the second, so a flush from a suite run at the same moment must not reach them.
    """
    url = f"{REDIS_SERVER_URL}/{(REDIS_TEST_DB + 3) % 16}"
    client = Redis.from_url(url)
    await client.flushdb()
    yield url
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def live(stack, db, redis) -> AsyncIterator[Realtime]:
    """The realtime app beside the stack, with the site SITE known to all of it."""
    await add_site(db, redis)
    async with running_realtime(stack.redis_url) as realtime:
        yield realtime


# --- the feed against the running stack ----------------------------------------------------------

async def test_sse_update_arrives_within_one_second(stack, live):
    async with open_sse(f"{live.url}/live/{SITE}", AUTH) as stream:
        first = await stream.next_update()
        # Updates go out at most once per LIVE_INTERVAL_MS, so the post waits until the first is older than that.
        await asyncio.sleep(1.0)

        posted = time.monotonic()
        await post_events(stack.collector_url, [pageview("/launch")])
        update = await stream.wait_for(lambda u: u["pageviews"] == 1, timeout_s=5.0)
        delay_s = time.monotonic() - posted

    assert first["pageviews"] == 0
    assert first["visitors"] == 0
    assert update["visitors"] == 1
    assert update["top_pages"] == [{"path": "/launch", "pageviews": 1}]
    assert delay_s < 1.0


async def test_sse_numbers_match_database(stack, live, db):
    sent_at = datetime.fromtimestamp(time.time() - 2, tz=timezone.utc).isoformat()
    retried = pageview("/", id="client-message-1", timestamp=sent_at)
    await post_events(stack.collector_url, [
        pageview("/", "https://news.example.org/item?id=1"),
        pageview("/pricing", f"https://{SITE}/"),
        pageview("/pricing", "https://www.search.example/?q=weir"),
        {"site": SITE, "type": "signup", "name": "signup"},
        retried,
    ])
    await post_events(stack.collector_url, [retried])
    await post_events(stack.collector_url, [pageview("/docs")], user_agent=BROWSER.replace("120.0", "121.0"))
    await post_events(stack.collector_url, [pageview("/"), pageview("/robots")], user_agent=BOT)
    await wait_until_processed(Redis.from_url(stack.redis_url))
    stored = await db.fetchval("SELECT count(*) FROM raw_events WHERE site = $1 AND NOT is_bot", SITE)

    async with open_sse(f"{live.url}/live/{SITE}", params={"key": API_KEY}) as stream:
        update = await stream.wait_for(lambda u: u["id"] == stored)

    moment = at_ms(update)
    top_from = utc_datetime(window_start_ms(moment, 300))
    minute_from = utc_datetime(window_start_ms(moment, 60))
    until = utc_datetime((moment // 1000 + 1) * 1000)
    row = await db.fetchrow(
        """SELECT count(DISTINCT visitor_id) FILTER (WHERE "timestamp" >= $2)                         AS visitors,
                  count(*) FILTER (WHERE event_type = 'pageview' AND "timestamp" >= $3)             AS pageviews,
                  count(*) FILTER (WHERE event_type <> 'pageview' AND "timestamp" >= $3)            AS events
             FROM raw_events WHERE site = $1 AND NOT is_bot AND "timestamp" < $4""",
        SITE, top_from, minute_from, until)
    pages = await db.fetch(
        """SELECT event_action AS path, count(*) AS pageviews FROM raw_events
            WHERE site = $1 AND NOT is_bot AND event_type = 'pageview' AND "timestamp" >= $2 AND "timestamp" < $3
            GROUP BY event_action ORDER BY pageviews DESC, path LIMIT 10""", SITE, top_from, until)
    referrers = await db.fetch(
        """SELECT url, referrer FROM raw_events
            WHERE site = $1 AND NOT is_bot AND event_type = 'pageview' AND "timestamp" >= $2 AND "timestamp" < $3""",
        SITE, top_from, until)
    sources: dict[str | None, int] = {}
    for item in referrers:
        source = source_of(Event("0", SITE, "pageview", "/", 0, 0, "v", url=item["url"], referrer=item["referrer"]))
        if source is not None:
            sources[source or None] = sources.get(source or None, 0) + 1

    assert stored == 6
    assert update["sse_id"] == str(update["id"])
    assert update["visitors"] == row["visitors"] == 2
    assert update["pageviews"] == row["pageviews"] == 5
    assert update["events"] == row["events"] == 1
    assert update["top_pages"] == [dict(p) for p in pages]
    assert {s["source"]: s["pageviews"] for s in update["top_sources"]} == sources
    assert sources == {"news.example.org": 1, "search.example": 1, None: 2}


async def test_sse_resumes_after_last_event_id(stack, live):
    redis = Redis.from_url(stack.redis_url)
    await post_events(stack.collector_url, [pageview("/first")])
    await wait_until_processed(redis)
    async with open_sse(f"{live.url}/live/{SITE}", AUTH) as stream:
        before = await stream.wait_for(lambda u: u["pageviews"] == 1)

    await post_events(stack.collector_url, [pageview("/a"), pageview("/b"), pageview("/c")])
    await wait_until_processed(redis)
    async with open_sse(f"{live.url}/live/{SITE}", {**AUTH, "Last-Event-ID": before["sse_id"]}) as stream:
        resumed = await stream.next_update()
    await redis.aclose()

    assert before["sse_id"] == "1"
    assert resumed["sse_id"] == "4"
    assert resumed["resumed_from"] == 1
    assert resumed["missed_events"] == 3
    assert resumed["pageviews"] == 4


async def test_first_update_is_not_repeated(live):
    async with open_sse(f"{live.url}/live/{SITE}", AUTH) as stream:
        first = await stream.next_update()
        with pytest.raises(TimeoutError):
            await stream.next_update(timeout_s=2.5)

    assert first["id"] == 0


async def test_resume_past_current_id_reports_reset(stack, live):
    async with open_sse(f"{live.url}/live/{SITE}", {**AUTH, "Last-Event-ID": "99"}) as stream:
        update = await stream.next_update()

    assert update["id"] == 0
    assert update["resumed_from"] == 99
    assert update["missed_events"] is None


async def test_websocket_receives_updates(stack, live):
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{live.url}/live/{SITE}/ws", headers={"X-API-Key": API_KEY}) as ws:
            first = orjson.loads((await ws.receive(timeout=5)).data)
            await asyncio.sleep(1.0)

            posted = time.monotonic()
            await post_events(stack.collector_url, [pageview("/ws"), {"site": SITE, "type": "click", "name": "buy"}])
            while True:
                update = orjson.loads((await ws.receive(timeout=5)).data)
                if update["events"] == 1 and update["pageviews"] == 1:
                    break
            delay_s = time.monotonic() - posted

    assert first["id"] == 0
    assert update["id"] == 2
    assert update["visitors"] == 1
    assert delay_s < 1.0


async def test_websocket_resumes_with_query_parameter(stack, live):
    await post_events(stack.collector_url, [pageview("/a"), pageview("/b")])
    await wait_until_processed(Redis.from_url(stack.redis_url))
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{live.url}/live/{SITE}/ws?key={API_KEY}&last_event_id=1") as ws:
            update = orjson.loads((await ws.receive(timeout=5)).data)

    assert update["id"] == 2
    assert update["missed_events"] == 1


@pytest.mark.parametrize(
    ("path", "headers", "params"),
    [
        (f"/live/{SITE}", {}, {}),
        (f"/live/{SITE}", {"Authorization": "Bearer nope"}, {}),
        (f"/live/{SITE}", {"X-API-Key": "nope"}, {}),
        (f"/live/{SITE}", {}, {"key": "nope"}),
        (f"/live/{SITE}/ws", {}, {}),
        (f"/live/{SITE}/ws", {}, {"key": "nope"}),
    ],
    ids=["sse-no-key", "sse-wrong-bearer", "sse-wrong-header", "sse-wrong-query", "ws-no-key", "ws-wrong-query"],
)
async def test_invalid_key_is_401(live, path, headers, params):
    ws_headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                  "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="} if path.endswith("/ws") else {}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{live.url}{path}", headers={**headers, **ws_headers}, params=params) as response:
            body = await response.json()

    assert response.status == 401
    assert "invalid API key" in body["error"]
    assert live.app[HUB_KEY].clients == 0


async def test_unknown_site_is_404(live):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{live.url}/live/nosuch.example", headers=AUTH) as response:
            body = await response.json()

    assert response.status == 404
    assert "unknown site 'nosuch.example'" in body["error"]


async def test_invalid_site_404_names_problem(live):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{live.url}/live/mailto:x@example.com", headers=AUTH) as response:
            invalid_status, invalid = response.status, await response.json()
        async with http.get(f"{live.url}/live/NoSuch.Example.", headers=AUTH) as response:
            unknown_status, unknown = response.status, await response.json()

    assert invalid_status == 404
    assert unknown_status == 404
    assert invalid["error"] == ("site 'mailto:x@example.com' is not a host name: it contains ':' '@', but a host "
                                "name has only ASCII letters, digits, hyphens and dots. Give the site's domain, "
                                "such as example.com")
    assert unknown["error"] == ("unknown site 'nosuch.example': add it with `weir site add nosuch.example "
                                "--timezone Area/City`")


async def test_replayed_entry_does_not_bump_counters(stack, live, db):
    redis = Redis.from_url(stack.redis_url)
    await post_events(stack.collector_url, [pageview("/once"), pageview("/twice")])
    await wait_until_processed(redis)
    reader = LiveReader(redis)
    before = await reader.read_snapshot(SITE, now_ms())

    entries = await redis.xrange(EVENTS_STREAM)
    for _entry_id, fields in entries:
        await redis.xadd(EVENTS_STREAM, fields)
    await wait_until_processed(redis)
    after = await reader.read_snapshot(SITE, now_ms())
    stored = await db.fetchval("SELECT count(*) FROM raw_events WHERE site = $1", SITE)
    await redis.aclose()

    assert len(entries) == 1
    assert stored == 2
    assert before.version == after.version == 2
    assert after.pageviews == 2


async def test_slow_client_dropped_others_continue(stack, db, redis):
    await add_site(db, redis)
    async with running_realtime(stack.redis_url, LIVE_INTERVAL_MS=100, CLIENT_QUEUE_SIZE=2) as live:
        hub = live.app[HUB_KEY]
        aborted = asyncio.Event()
        # A client that never reads: its handler would block on a full socket and stop taking updates.
        stuck, _first = await hub.join(SITE, "sse", aborted.set, None)
        dropped_before = LIVE_DROPPED._value.get()  # noqa: SLF001 - prometheus_client has no public read

        async with open_sse(f"{live.url}/live/{SITE}", AUTH) as stream:
            for number in range(1, 5):
                await post_events(stack.collector_url, [pageview(f"/p{number}")])
                await stream.wait_for(lambda u, n=number: u["pageviews"] == n, timeout_s=3.0)
            await asyncio.wait_for(aborted.wait(), 1.0)
            clients_left = hub.clients

        assert stuck not in hub.feeds[SITE].subscribers
        assert LIVE_DROPPED._value.get() - dropped_before == 1  # noqa: SLF001
        assert clients_left == 1


async def test_heartbeat_comment_on_idle_stream(stack, db, redis):
    await add_site(db, redis)
    async with running_realtime(stack.redis_url, HEARTBEAT_S=0.3) as live:
        async with open_sse(f"{live.url}/live/{SITE}", AUTH) as stream:
            await stream.next_update()
            async with asyncio.timeout(3.0):
                while ": heartbeat" not in await stream.read_block():
                    pass


async def test_shutdown_ends_open_streams(stack, db, redis):
    await add_site(db, redis)
    async with running_realtime(stack.redis_url) as live:
        async with aiohttp.ClientSession() as http:
            sse = await http.get(f"{live.url}/live/{SITE}", headers=AUTH)
            ws = await http.ws_connect(f"{live.url}/live/{SITE}/ws", headers=AUTH)
            await SseStream(sse).next_update()
            await ws.receive(timeout=5)

            started = time.monotonic()
            await live.runner.cleanup()
            stop_s = time.monotonic() - started
            await asyncio.wait_for(sse.content.read(), 5)
            closing = await ws.receive(timeout=5)
            sse.release()

    assert stop_s < 3.0
    assert sse.content.at_eof()
    assert closing.type == aiohttp.WSMsgType.CLOSE
    assert closing.data == aiohttp.WSCloseCode.GOING_AWAY


async def test_client_limit_returns_503(stack, db, redis):
    await add_site(db, redis)
    async with running_realtime(stack.redis_url, MAX_CLIENTS=1) as live:
        async with open_sse(f"{live.url}/live/{SITE}", AUTH) as stream:
            await stream.next_update()
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{live.url}/live/{SITE}", headers=AUTH) as response:
                    body = await response.json()

    assert response.status == 503
    assert response.headers["Retry-After"] == "5"
    assert "maximum of 1 clients" in body["error"]


async def test_preflight_allows_key_headers(live):
    async with aiohttp.ClientSession() as http:
        async with http.options(f"{live.url}/live/{SITE}", headers={"Origin": "https://dash.example",
                                                                    "Access-Control-Request-Method": "GET"}) as response:
            headers = response.headers

    assert response.status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "Last-Event-ID" in headers["Access-Control-Allow-Headers"]


async def test_health_checks_redis(live):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{live.url}/health") as response:
            body = await response.json()

    assert response.status == 200
    assert body["status"] == "healthy"
    assert body["checks"] == {"redis": "ok"}


# --- the counters in Redis -----------------------------------------------------------------------

def make_event(site: str = SITE, timestamp_ms: int | None = None, visitor: str = "v1", **fields) -> Event:
    moment = timestamp_ms if timestamp_ms is not None else now_ms()
    return Event(id=str(new_event_id(moment)), site=site, type=fields.pop("type", "pageview"),
                 action=fields.pop("action", "/"), timestamp_ms=moment, received_ms=moment, visitor_id=visitor,
                 **fields)


def new_hub(redis_url: str, **overrides: object) -> tuple[Redis, LiveHub]:
    """Return a Redis client and a live hub on it, not started."""
    client = Redis.from_url(redis_url)
    settings = RealtimeSettings(NODE_ENV="development", REDIS_URL=redis_url, API_KEYS=API_KEY, **overrides)
    return client, LiveHub(client, settings)


async def idle_feed(hub: LiveHub) -> SiteFeed:
    """Start `hub` and return SITE's feed after its only client joined and left."""
    hub.start()
    subscriber, _first = await hub.join(SITE, "sse", lambda: None, None)
    hub.leave(subscriber)
    return hub.feeds[SITE]


async def test_idle_feed_stops_before_hub_closes(redis_url):
    """A feed closed for idleness finishes its stop (cancel, unsubscribe) before the hub's stop returns."""
    client, hub = new_hub(redis_url)
    feed = await idle_feed(hub)
    unsubscribe = hub.pubsub.unsubscribe

    async def slow_unsubscribe(*channels: object) -> None:
        # Without the wait, the feed's stop happened to finish before the hub's, hiding the race.
        await asyncio.sleep(0.3)
        await unsubscribe(*channels)

    hub.pubsub.unsubscribe = slow_unsubscribe
    hub.close_if_idle(feed)
    await hub.stop()
    left_running = [task.get_name() for task in asyncio.all_tasks()
                    if task is not asyncio.current_task() and not task.done()]
    await client.aclose()

    assert hub.feeds == {}
    assert left_running == []


async def test_idle_feed_stop_survives_broken_unsubscribe(redis_url):
    """An unsubscribe that fails outside RedisError, as redis-py's does on a connection disconnected meanwhile, is logged."""
    client, hub = new_hub(redis_url)
    feed = await idle_feed(hub)

    async def broken_unsubscribe(*channels: object) -> None:
        # What redis-py 5.2 raised when the listen task's failed read had just disconnected the connection.
        raise AttributeError("'NoneType' object has no attribute 'writelines'")

    hub.pubsub.unsubscribe = broken_unsubscribe
    hub.close_if_idle(feed)
    [stopping] = hub._stopping_feeds
    await asyncio.wait([stopping])
    error = stopping.exception()
    await hub.stop()
    await client.aclose()

    assert error is None


async def test_feed_survives_broken_subscribe(redis_url):
    """A subscribe that fails outside RedisError leaves the feed reading, and the feed subscribes again."""
    client, hub = new_hub(redis_url, LIVE_INTERVAL_MS=100)
    subscribe = hub.pubsub.subscribe
    failures: list[tuple] = []

    async def broken_once(*channels: object) -> None:
        if not failures:
            failures.append(channels)
            # What redis-py 5.2 raised when the listen task's failed read had just disconnected the connection.
            raise AttributeError("'NoneType' object has no attribute 'writelines'")
        await subscribe(*channels)

    hub.pubsub.subscribe = broken_once
    hub.start()
    subscriber, _first = await hub.join(SITE, "sse", lambda: None, None)
    feed = hub.feeds[SITE]
    for _ in range(40):
        if feed.channel in hub._by_channel:
            break
        await asyncio.sleep(0.05)
    subscribed = feed.channel in hub._by_channel
    hub.leave(subscriber)
    await hub.stop()
    await client.aclose()

    assert len(failures) == 1
    assert subscribed


async def test_join_during_shutdown_rejected(redis_url):
    """A join still waiting for its feed's first read when the server stops raises LiveUnavailable (HTTP 503)."""
    client, hub = new_hub(redis_url)
    hub.start()
    joining = asyncio.create_task(hub.join(SITE, "sse", lambda: None, None))
    await asyncio.sleep(0)  # The join now waits for the new feed's first read.

    hub.close_clients()
    with pytest.raises(LiveUnavailable, match="stopping"):
        await joining
    clients = hub.clients
    await hub.stop()
    await client.aclose()

    assert clients == 0


async def test_record_twice_counts_once(redis):
    recorder = LiveRecorder(redis)
    events = [make_event(visitor="v1"), make_event(visitor="v2", type="click", action="buy")]
    inserted = {uuid.UUID(e.id) for e in events}

    first = await recorder.record(events, [False, False], inserted)
    second = await recorder.record(events, [False, False], inserted)
    snapshot = await LiveReader(redis).read_snapshot(SITE, now_ms())

    assert first == 2
    assert second == 0
    assert snapshot.version == 2
    assert (snapshot.pageviews, snapshot.events, snapshot.visitors) == (1, 1, 2)


async def test_record_skips_bots_stale_and_replayed(redis):
    recorder = LiveRecorder(redis)
    events = [make_event(visitor="bot"), make_event(visitor="old", timestamp_ms=now_ms() - 301_000),
              make_event(visitor="replayed"), make_event(visitor="new")]
    inserted = {uuid.UUID(e.id) for e in events if e.visitor_id != "replayed"}

    counted = await recorder.record(events, [True, False, False, False], inserted)
    snapshot = await LiveReader(redis).read_snapshot(SITE, now_ms())

    assert counted == 1
    assert snapshot.visitors == 1
    assert snapshot.pageviews == 1


def at(text: str) -> Callable[[], int]:
    return lambda: utc_ms(text)


async def build_at(builder: EventBuilder, text: str, received: str, user_agent: str = BROWSER) -> Event:
    context = RequestContext(received_ms=utc_ms(received), ip="203.0.113.7", user_agent=user_agent)
    return await builder.build_one({"site": SITE, "url": f"https://{SITE}/", "timestamp": text + "Z"}, context)


@pytest.fixture
async def builder(redis) -> EventBuilder:
    """The collector's event builder on the test Redis, so visitor ids and salts are the collector's."""
    await SiteDirectory(redis).publish([Site(SITE, "UTC")])
    return EventBuilder(SiteDirectory(redis), SaltStore(redis))


@pytest.mark.parametrize("order", ["in-order", "late-old-event"])
async def test_visitor_across_midnight_counts_once(redis, builder, order):
    before = await build_at(builder, "2026-03-01T23:59:30", "2026-03-01T23:59:30")
    after = await build_at(builder, "2026-03-02T00:00:30", "2026-03-02T00:00:30")
    recorder = LiveRecorder(redis, clock_ms=at("2026-03-02T00:00:31"))
    events = [before, after] if order == "in-order" else [after, before]

    for event in events:
        await recorder.record([event], [False], {uuid.UUID(event.id)})
    snapshot = await LiveReader(redis).read_snapshot(SITE, utc_ms("2026-03-02T00:00:31"))

    assert before.visitor_id != after.visitor_id
    assert snapshot.visitors == 1
    assert snapshot.top_pages == [("/", 2)]


async def test_two_visitors_across_midnight_count_twice(redis, builder):
    first = await build_at(builder, "2026-03-01T23:59:30", "2026-03-01T23:59:30")
    second = await build_at(builder, "2026-03-02T00:00:30", "2026-03-02T00:00:30", user_agent=BROWSER.replace("120.0", "122.0"))
    recorder = LiveRecorder(redis, clock_ms=at("2026-03-02T00:00:31"))

    await recorder.record([first, second], [False, False], {uuid.UUID(first.id), uuid.UUID(second.id)})
    snapshot = await LiveReader(redis).read_snapshot(SITE, utc_ms("2026-03-02T00:00:31"))

    assert snapshot.visitors == 2


async def test_visitor_before_midnight_without_next_salt(redis, builder):
    event = await build_at(builder, "2026-03-01T23:59:30", "2026-03-01T23:59:30")
    recorder = LiveRecorder(redis, clock_ms=at("2026-03-01T23:59:31"))

    counted = await recorder.record([event], [False], {uuid.UUID(event.id)})
    snapshot = await LiveReader(redis).read_snapshot(SITE, utc_ms("2026-03-01T23:59:31"))

    assert await redis.exists("weir:salt:{2026-03-02}") == 0
    assert counted == 1
    assert snapshot.visitors == 1


async def test_visitor_leaves_window_after_five_minutes(redis):
    start = utc_ms("2026-03-01T12:00:00")
    recorder = LiveRecorder(redis, clock_ms=lambda: start)
    event = make_event(timestamp_ms=start)
    await recorder.record([event], [False], {uuid.UUID(event.id)})
    reader = LiveReader(redis)

    inside = await reader.read_snapshot(SITE, start + 299_999)
    outside = await reader.read_snapshot(SITE, start + 300_000)
    minute_later = await reader.read_snapshot(SITE, start + 60_000)

    assert (inside.visitors, inside.top_pages) == (1, [("/", 1)])
    assert (outside.visitors, outside.top_pages) == (0, [])
    assert minute_later.pageviews == 0


async def test_top_pages_order_by_count_then_path(redis):
    recorder = LiveRecorder(redis)
    events = [make_event(action=path) for path in ["/b", "/a", "/c", "/c"]]
    await recorder.record(events, [False] * 4, {uuid.UUID(e.id) for e in events})

    snapshot = await LiveReader(redis).read_snapshot(SITE, now_ms())

    assert snapshot.top_pages == [("/c", 2), ("/a", 1), ("/b", 1)]


@pytest.mark.parametrize(
    ("referrer", "url", "expected"),
    [
        (None, f"https://{SITE}/", ""),
        ("", f"https://{SITE}/", ""),
        ("https://www.news.example.org/a", f"https://{SITE}/", "news.example.org"),
        (f"https://{SITE}/pricing", f"https://{SITE}/", None),
        (f"https://www.{SITE}/", f"https://{SITE}/", None),
        ("https://alias.example/", "https://alias.example/x", None),
        ("not a url", f"https://{SITE}/", ""),
        ("https://[::1", f"https://{SITE}/", ""),
    ],
    ids=["none", "empty", "external-www", "same-site", "same-site-www", "page-host", "no-host", "unparsable"],
)
def test_source_of_cases(referrer, url, expected):
    event = make_event(url=url, referrer=referrer)

    assert source_of(event) == expected


def test_every_script_key_is_in_one_slot():
    hits_at = now_ms()
    event = make_event(timestamp_ms=hits_at)
    write_keys, _ = write_arguments(SITE, [build_hit(event, None, None)], hits_at, 0)
    read_keys, _ = read_arguments(SITE, hits_at)

    assert len({key_slot(key.encode()) for key in write_keys + read_keys}) == 1
    assert len(read_keys) == 3 + 60 + 300 + 300


def test_realtime_command_requires_api_keys():
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "VIRTUAL_ENV"}}
    env.update(NODE_ENV="production", REDIS_URL="redis://127.0.0.1:6379/9")

    result = subprocess.run(weir_command("realtime"), cwd=REPO, env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: weir realtime: missing required environment variable API_KEYS (set it in the environment or an env file)"
    ]


def test_midnight_days_cover_five_minutes():
    assert midnight_days(utc_ms("2026-03-02T00:04:59")) == ("2026-03-01", None)
    assert midnight_days(utc_ms("2026-03-02T00:05:00")) == (None, None)
    assert midnight_days(utc_ms("2026-03-01T23:55:00")) == (None, "2026-03-02")
    assert midnight_days(utc_ms("2026-03-01T23:54:59")) == (None, None)
