"""Backpressure, Redis going away and coming back, and many requests sharing one stream write."""

from __future__ import annotations

import asyncio
import signal
import time

import orjson
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from ingest import group_commit
from ingest import writer as writer_module
from ingest.collector import REDIS_KEY
from ingest.intake import INTAKE_KEY
from streams.event import Event, encode_entry
from streams.keys import EVENTS_STREAM, PROCESSOR_GROUP
from streams.sites import SiteDirectory
from tests.ingest.conftest import SITES, metric, stream_events

EVENT = {"site": "example.com", "url": "https://example.com/"}


async def post_event(http, collector, payload=EVENT):
    async with http.post(collector.route("/collect"), json=payload) as response:
        return response.status, await response.json(), response.headers


async def test_backlog_over_limit_returns_503(http, make_collector, sites, redis_client):
    collector = await make_collector(STREAM_MAX_LENGTH=3)
    backlog = collector.app[INTAKE_KEY].backlog
    for _ in range(4):
        await redis_client.xadd(EVENTS_STREAM, {"v": "1", "events": "[]"})
    before = metric("weir_collect_rejected_events_total", reason="backpressure")

    assert await backlog.refresh() == 4
    status, body, headers = await post_event(http, collector)

    assert status == 503
    assert body["reason"] == "backpressure"
    assert "4 unprocessed entries" in body["error"]
    assert headers["Retry-After"] == "5"
    assert metric("weir_collect_rejected_events_total", reason="backpressure") == before + 1
    assert metric("weir_collect_stream_backlog_entries") == 4
    assert await redis_client.xlen(EVENTS_STREAM) == 4


async def test_backlog_counts_group_lag_and_pending(http, make_collector, sites, redis_client):
    collector = await make_collector(STREAM_MAX_LENGTH=3)
    backlog = collector.app[INTAKE_KEY].backlog
    for _ in range(6):
        await redis_client.xadd(EVENTS_STREAM, {"v": "1", "events": "[]"})
    await redis_client.xgroup_create(EVENTS_STREAM, PROCESSOR_GROUP, id="0")

    # Step 1: two delivered and unacknowledged, four never delivered: 6 unprocessed.
    delivered = await redis_client.xreadgroup(PROCESSOR_GROUP, "c1", {EVENTS_STREAM: ">"}, count=2)
    assert await backlog.refresh() == 6
    assert (await post_event(http, collector))[0] == 503

    # Step 2: the two are acknowledged and two more delivered: 2 pending plus 2 lag.
    await redis_client.xack(EVENTS_STREAM, PROCESSOR_GROUP, *[entry_id for entry_id, _ in delivered[0][1]])
    await redis_client.xreadgroup(PROCESSOR_GROUP, "c1", {EVENTS_STREAM: ">"}, count=2)
    assert await backlog.refresh() == 4
    assert backlog.over_limit

    # Step 3: everything delivered and acknowledged: the stream length no longer matters.
    rest = await redis_client.xreadgroup(PROCESSOR_GROUP, "c1", {EVENTS_STREAM: "0"})
    rest_new = await redis_client.xreadgroup(PROCESSOR_GROUP, "c1", {EVENTS_STREAM: ">"})
    ids = [entry_id for reply in (rest, rest_new) for _stream, items in reply for entry_id, _ in items]
    await redis_client.xack(EVENTS_STREAM, PROCESSOR_GROUP, *ids)
    assert await backlog.refresh() == 0
    assert (await post_event(http, collector))[0] == 202


async def test_backlog_monitor_refreshes_by_itself(http, make_collector, sites, redis_client):
    collector = await make_collector(STREAM_MAX_LENGTH=1)
    backlog = collector.app[INTAKE_KEY].backlog
    backlog.interval_s = 0.05
    await post_event(http, collector)
    await post_event(http, collector)

    deadline = time.monotonic() + 5
    while not backlog.over_limit and time.monotonic() < deadline:
        await asyncio.sleep(0.05)

    assert backlog.over_limit
    assert (await post_event(http, collector))[0] == 503


async def test_missing_stream_is_empty_backlog(make_collector, sites):
    collector = await make_collector()

    assert await collector.app[INTAKE_KEY].backlog.refresh() == 0


async def test_redis_down_503_then_recovers(http, make_collector, redis_server):
    redis = Redis.from_url(redis_server.url)
    await SiteDirectory(redis).publish(SITES)
    await redis.aclose()
    collector = await make_collector(REDIS_URL=redis_server.url, REDIS_TIMEOUT_S=0.5)
    assert (await post_event(http, collector))[0] == 202

    # Step 1: Redis is gone, so requests get quick 503s and /health is unhealthy.
    redis_server.kill()
    started = time.monotonic()
    status, body, headers = await post_event(http, collector)
    elapsed_s = time.monotonic() - started
    assert status == 503
    assert body["reason"] == "redis_unavailable"
    assert headers["Retry-After"] == "5"
    assert elapsed_s < 1.5
    async with http.get(collector.route("/health")) as response:
        health = await response.json()
    assert response.status == 503
    assert health["status"] == "unhealthy"
    assert health["checks"]["redis"] != "ok"

    # Step 2: Redis is back on the same port, empty; the collector reconnects by itself.
    redis_server.start()
    redis = Redis.from_url(redis_server.url)
    await SiteDirectory(redis).publish(SITES)
    status, _, _ = await post_event(http, collector)
    assert status == 202
    assert len(await stream_events(redis)) == 1
    await redis.aclose()
    async with http.get(collector.route("/health")) as response:
        assert response.status == 200
        assert (await response.json())["status"] == "healthy"


async def test_hanging_redis_503_within_timeout(http, make_collector, redis_server):
    redis = Redis.from_url(redis_server.url)
    await SiteDirectory(redis).publish(SITES)
    collector = await make_collector(REDIS_URL=redis_server.url, REDIS_TIMEOUT_S=0.5)
    assert (await post_event(http, collector))[0] == 202
    failures_before = metric("weir_collect_stream_write_failures_total")

    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        results = await asyncio.gather(*(post_event(http, collector) for _ in range(5)))
        elapsed_s = time.monotonic() - started
        async with http.get(collector.route("/health")) as response:
            health_status = response.status
    finally:
        redis_server.process.send_signal(signal.SIGCONT)

    assert [status for status, _, _ in results] == [503] * 5
    # One write times out after 0.5 s and fails every request queued behind it as well.
    assert elapsed_s < 1.5
    assert health_status == 503
    assert metric("weir_collect_stream_write_failures_total") >= failures_before + 1

    assert (await post_event(http, collector))[0] == 202
    await redis.aclose()


async def test_concurrent_requests_share_writes(http, collector, redis_client):
    requests = [{**EVENT, "props": {"n": n}} for n in range(60)]
    writes_before = metric("weir_collect_requests_per_write_count")

    results = await asyncio.gather(*(post_event(http, collector, item) for item in requests))

    assert [status for status, _, _ in results] == [202] * 60
    events = await stream_events(redis_client)
    assert sorted(e.props["n"] for e in events) == list(range(60))
    ids_answered = {body["ids"][0] for _, body, _ in results}
    assert ids_answered == {e.id for e in events}
    writes = metric("weir_collect_requests_per_write_count") - writes_before
    assert writes == await redis_client.xlen(EVENTS_STREAM)
    assert writes < 60


async def test_large_request_split_into_entries(http, collector, redis_client, monkeypatch):
    monkeypatch.setattr(writer_module, "MAX_EVENTS_PER_ENTRY", 40)

    async with http.post(collector.route("/collect"), data=orjson.dumps([EVENT] * 100)) as response:
        assert response.status == 202

    assert await redis_client.xlen(EVENTS_STREAM) == 3
    assert len(await stream_events(redis_client)) == 100


async def test_queue_limit_turns_requests_away(http, collector, redis_client, monkeypatch):
    monkeypatch.setattr(writer_module, "MAX_QUEUED_EVENTS", 2)

    status, body, headers = await post_event(http, collector, [EVENT] * 3)

    assert status == 503
    assert body["reason"] == "redis_unavailable"
    assert headers["Retry-After"] == "5"


async def test_redis_py_writer_failure_fails_its_requests(http, make_collector, sites, redis_client, monkeypatch):
    # The redis-py writer is what Redis Cluster, TLS and Unix-socket deployments get.
    monkeypatch.setattr(group_commit, "options_of", lambda _redis: None)
    collector = await make_collector()
    assert isinstance(collector.app[INTAKE_KEY].writer, writer_module.StreamWriter)
    original = writer_module.StreamWriter._xadd
    calls = 0

    async def fail_first(self, events):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RedisConnectionError("injected failure")
        await original(self, events)

    monkeypatch.setattr(writer_module.StreamWriter, "_xadd", fail_first)

    first = await post_event(http, collector)
    second = await post_event(http, collector)

    assert first[0] == 503
    assert second[0] == 202
    assert len(await stream_events(redis_client)) == 1


async def test_evicted_salt_503_then_recovers(http, collector, redis_client, monkeypatch):
    # A Redis with an evicting maxmemory-policy can drop the day's salt between SET NX and GET.
    # The eviction is played by a real DEL of the salt key just before the collector's GET.
    redis = collector.app[REDIS_KEY]
    original_get = redis.get
    evictions = 0

    async def evict_then_get(key, *args, **kwargs):
        nonlocal evictions
        if str(key).startswith("weir:salt:") and evictions == 0:
            evictions += 1
            await redis_client.delete(key)
        return await original_get(key, *args, **kwargs)

    monkeypatch.setattr(redis, "get", evict_then_get)
    before = metric("weir_collect_rejected_events_total", reason="redis_unavailable")

    first = await post_event(http, collector)
    second = await post_event(http, collector)

    assert first[0] == 503
    assert first[1]["reason"] == "redis_unavailable"
    assert first[2]["Retry-After"] == "5"
    assert metric("weir_collect_rejected_events_total", reason="redis_unavailable") == before + 1
    assert second[0] == 202
    assert [e.id for e in await stream_events(redis_client)] == second[1]["ids"]


def test_encoded_entry_matches_stream_wire_format():
    events = [
        Event(id="0190a0a0-0000-7000-8000-000000000001", site="example.com", type="pageview", action="/",
              timestamp_ms=1, received_ms=2, visitor_id="v" * 32, props={"nested": [1, {"k": None}], "ü": "✓"}),
        Event(id="0190a0a0-0000-7000-8000-000000000002", site="example.com", type="event", action="Signup",
              timestamp_ms=3, received_ms=4, visitor_id="w" * 32, url="https://example.com/", referrer="r",
              user_agent="ua", ip="2001:db8::1", user_id="u", source="segment"),
    ]

    assert writer_module.encode_events(events) == encode_entry(events)
