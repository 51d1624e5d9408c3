"""Group commit: the requests of one event-loop turn share one pipelined send to a real Redis."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ingest import writer as writer_module
from ingest.group_commit import GroupCommitWriter
from ingest.writer import WriterOverloaded
from ingest.intake import INTAKE_KEY
from ingest.resp import ConnectionOptions, options_of
from streams.event import Event, decode_entry
from streams.keys import EVENTS_STREAM
from streams.partitions import StreamPartitions
from streams.sites import SiteDirectory
from tests.ingest.conftest import SITES, RedisServer, free_port, metric, stream_events

EVENT = {"site": "example.com", "url": "https://example.com/"}


def make_events(request: int, count: int) -> list[Event]:
    # Visitors differ by event, so with several partitions a request's events spread over them.
    return [Event(id=f"0190a0a0-0000-7000-8000-{request:06d}{index:06d}", site="example.com", type="pageview",
                  action="/", timestamp_ms=1, received_ms=2, visitor_id=f"{request:016d}{index:016d}")
            for index in range(count)]


async def post(http, collector, payload) -> tuple[int, dict]:
    async with http.post(collector.route("/collect"), data=orjson.dumps(payload)) as response:
        return response.status, await response.json()


async def entries_by_request(redis: Redis) -> list[list[int]]:
    """Return, per stream entry, the `request` property of each of its events."""
    entries = await redis.xrange(EVENTS_STREAM)
    return [[event.props["request"] for event in decode_entry(entry_id.decode(), fields)]
            for entry_id, fields in entries]


def writer_options(server: RedisServer, **changes) -> ConnectionOptions:
    return ConnectionOptions(**{"host": "127.0.0.1", "port": server.port, "connect_timeout_s": 2.0, "timeout_s": 2.0,
                                **changes})


async def wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_collector_uses_group_commit(collector):
    assert isinstance(collector.app[INTAKE_KEY].writer, GroupCommitWriter)


def test_options_read_from_redis_py_client():
    client = Redis.from_url("redis://writer:secret@127.0.0.1:6400/3", socket_timeout=0.5)
    options = options_of(client)

    assert options == ConnectionOptions(host="127.0.0.1", port=6400, db=3, username="writer", password="secret",
                                        connect_timeout_s=0.5, timeout_s=0.5)
    assert options_of(Redis.from_url("rediss://127.0.0.1:6400/0")) is None
    assert options_of(Redis.from_url("unix:///tmp/redis.sock")) is None


async def test_concurrent_requests_land_once(http, collector, redis_client):
    payloads = []
    for request in range(300):
        size = 1 if request % 3 else request % 7 + 2
        events = [{**EVENT, "props": {"request": request, "index": index}} for index in range(size)]
        payloads.append(events[0] if size == 1 else events)
    writes_before = metric("weir_collect_requests_per_write_count")

    results = await asyncio.gather(*(post(http, collector, payload) for payload in payloads))

    assert [status for status, _ in results] == [202] * len(payloads)
    events = await stream_events(redis_client)
    assert Counter(event.id for event in events).most_common(1)[0][1] == 1
    ids_by_request: dict[int, list[str]] = {}
    for event in events:
        ids_by_request.setdefault(event.props["request"], []).append(event.id)
    for request, (_, body) in enumerate(results):
        assert body["ids"] == ids_by_request[request], f"request {request}"
    entries = await entries_by_request(redis_client)
    assert all(len(entry) <= writer_module.MAX_EVENTS_PER_ENTRY for entry in entries)
    entries_of_request = Counter(request for entry in entries for request in set(entry))
    assert set(entries_of_request.values()) == {1}, "a request's events were split over entries"
    writes = metric("weir_collect_requests_per_write_count") - writes_before
    assert writes < len(payloads)


async def test_batches_split_at_entry_limit(http, collector, redis_client, monkeypatch):
    monkeypatch.setattr(writer_module, "MAX_EVENTS_PER_ENTRY", 5)
    sizes = [1, 3, 12, 2, 1, 5, 11, 4, 1, 1]
    payloads = [[{**EVENT, "props": {"request": request}}] * size for request, size in enumerate(sizes)]

    results = await asyncio.gather(*(post(http, collector, payload) for payload in payloads))

    assert [status for status, _ in results] == [202] * len(sizes)
    entries = await entries_by_request(redis_client)
    assert all(len(entry) <= 5 for entry in entries)
    requests_in_entries = [request for entry in entries for request in entry]
    assert Counter(requests_in_entries) == Counter({request: size for request, size in enumerate(sizes)})
    for request, size in enumerate(sizes):
        holding = [number for number, entry in enumerate(entries) if request in entry]
        if size <= 5:
            assert len(holding) == 1, f"request {request} was split over entries {holding}"
        else:
            # A request over the limit fills consecutive entries of its own.
            assert holding == list(range(holding[0], holding[0] + -(-size // 5)))
            assert all(set(entries[number]) == {request} for number in holding)
    answered = [event_id for _, body in results for event_id in body["ids"]]
    assert sorted(answered) == sorted(event.id for event in await stream_events(redis_client))


async def test_error_reply_fails_only_its_request(redis_server, monkeypatch):
    # A user without EVAL: the request over the entry limit fails, the XADDs beside it succeed.
    admin = Redis.from_url(redis_server.url)
    await admin.execute_command("ACL", "SETUSER", "collector", "on", ">secret", "~*", "&*", "+@all", "-eval",
                                "-evalsha")
    monkeypatch.setattr(writer_module, "MAX_EVENTS_PER_ENTRY", 5)
    writer = GroupCommitWriter(writer_options(redis_server, username="collector", password="secret"), EVENTS_STREAM)
    failures_before = metric("weir_collect_stream_write_failures_total")

    try:
        outcomes = await asyncio.gather(writer.write(make_events(0, 1)), writer.write(make_events(1, 12)),
                                        writer.write(make_events(2, 3)), return_exceptions=True)
    finally:
        await writer.close()

    assert outcomes[0] is None
    assert isinstance(outcomes[1], RedisError)
    assert "NOPERM" in str(outcomes[1])
    assert outcomes[2] is None
    stored = await stream_events(admin)
    assert sorted(event.id for event in stored) == sorted(e.id for e in make_events(0, 1) + make_events(2, 3))
    assert metric("weir_collect_stream_write_failures_total") == failures_before + 1
    await admin.aclose()


async def test_enqueue_future_done_once_stored(redis_server, monkeypatch):
    writer = GroupCommitWriter(writer_options(redis_server), EVENTS_STREAM)
    client = Redis.from_url(redis_server.url)
    try:
        future = writer.enqueue(make_events(0, 2))
        assert not future.done()
        await future
        assert [event.id for event in await stream_events(client)] == [e.id for e in make_events(0, 2)]

        # Over the queue limit, enqueue raises at once and queues nothing.
        monkeypatch.setattr(writer_module, "MAX_QUEUED_EVENTS", 3)
        queued = writer.enqueue(make_events(1, 2))
        with pytest.raises(WriterOverloaded):
            writer.enqueue(make_events(2, 2))
        assert writer._queued_events == 2
        await queued
    finally:
        await writer.close()

    stored = [event.id for event in await stream_events(client)]
    assert stored == [e.id for e in make_events(0, 2) + make_events(1, 2)]
    await client.aclose()


async def test_partitions_written_in_transaction(redis_server):
    partitions = StreamPartitions(count=3)
    writer = GroupCommitWriter(writer_options(redis_server), partitions)
    requests = [make_events(request, request % 4 + 1) for request in range(30)]

    outcomes = await asyncio.gather(*(writer.write(events) for events in requests))
    await writer.close()

    assert outcomes == [None] * len(requests)
    client = Redis.from_url(redis_server.url)
    stored_ids: Counter[str] = Counter()
    for stream in partitions.streams():
        stored = await stream_events(client, stream)
        assert stored, f"no events in {stream}"
        assert all(partitions.stream_of(event) == stream for event in stored)
        stored_ids.update(event.id for event in stored)
    assert stored_ids == Counter(event.id for events in requests for event in events)
    await client.aclose()


async def test_failed_transaction_stores_nothing(redis_server, monkeypatch):
    # Without EVAL, the request over the entry limit aborts the MULTI/EXEC that spans the partitions.
    admin = Redis.from_url(redis_server.url)
    await admin.execute_command("ACL", "SETUSER", "collector", "on", ">secret", "~*", "&*", "+@all", "-eval",
                                "-evalsha")
    monkeypatch.setattr(writer_module, "MAX_EVENTS_PER_ENTRY", 5)
    partitions = StreamPartitions(count=2)
    writer = GroupCommitWriter(writer_options(redis_server, username="collector", password="secret"), partitions)

    outcomes = await asyncio.gather(writer.write(make_events(0, 1)), writer.write(make_events(1, 30)),
                                    writer.write(make_events(2, 3)), return_exceptions=True)
    await writer.close()

    assert all(isinstance(outcome, RedisError) for outcome in outcomes), outcomes
    assert "NOPERM" in str(outcomes[0])
    for stream in partitions.streams():
        assert await admin.exists(stream) == 0
    await admin.aclose()


async def test_unencodable_event_fails_its_flush(redis_server):
    writer = GroupCommitWriter(writer_options(redis_server), EVENTS_STREAM)
    unencodable = make_events(0, 1)
    unencodable[0].props = {"value": object()}

    outcomes = await asyncio.gather(writer.write(unencodable), writer.write(make_events(1, 1)),
                                    return_exceptions=True)
    await writer.write(make_events(2, 1))
    await writer.close()

    assert all(isinstance(outcome, RedisError) for outcome in outcomes), outcomes
    client = Redis.from_url(redis_server.url)
    assert [event.id for event in await stream_events(client)] == [e.id for e in make_events(2, 1)]
    await client.aclose()


async def test_wrong_password_fails_writes(redis_server):
    admin = Redis.from_url(redis_server.url)
    await admin.execute_command("ACL", "SETUSER", "collector", "on", ">secret", "~*", "+@all")
    writer = GroupCommitWriter(writer_options(redis_server, username="collector", password="wrong"), EVENTS_STREAM)

    with pytest.raises(RedisError, match="rejected AUTH"):
        await writer.write(make_events(0, 1))

    await writer.close()
    assert await admin.exists(EVENTS_STREAM) == 0
    await admin.aclose()


async def test_selected_database_receives_entries(redis_server):
    writer = GroupCommitWriter(writer_options(redis_server, db=4), EVENTS_STREAM)
    await writer.write(make_events(0, 2))
    await writer.close()

    database_4 = Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/4")
    assert await database_4.xlen(EVENTS_STREAM) == 1
    assert await Redis.from_url(redis_server.url).exists(EVENTS_STREAM) == 0
    await database_4.aclose()


async def test_redis_killed_mid_flush_fails_all(redis_server):
    writer = GroupCommitWriter(writer_options(redis_server), EVENTS_STREAM)
    await writer.write(make_events(0, 1))

    # Step 1: Redis is paused, so two flushes are sent and wait for replies, and a third group of
    # requests queues behind them. Then Redis dies.
    assert writer_module.MAX_WRITES_IN_FLIGHT == 2
    redis_server.process.send_signal(signal.SIGSTOP)
    writes = []
    for group in range(3):
        writes += [asyncio.create_task(writer.write(make_events(request, request % 3 + 1)))
                   for request in range(group * 20 + 1, group * 20 + 21)]
        await wait_until(lambda group=group: writer._in_flight == min(group + 1, 2)
                         and len(writer._queued) == (20 if group == 2 else 0))
    started = time.monotonic()
    redis_server.kill()
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    elapsed_s = time.monotonic() - started

    assert all(isinstance(outcome, RedisError) for outcome in outcomes), outcomes
    # The lost connection ended them, not the 2-second reply timeout.
    assert elapsed_s < 1.0

    # Step 2: a new, empty Redis on the same port; the next write reconnects.
    redis_server.start()
    await writer.write(make_events(99, 2))
    await writer.close()
    client = Redis.from_url(redis_server.url)
    assert [event.id for event in await stream_events(client)] == [e.id for e in make_events(99, 2)]
    await client.aclose()


async def test_hanging_redis_leaves_no_connections(redis_server):
    writer = GroupCommitWriter(writer_options(redis_server, connect_timeout_s=0.3, timeout_s=0.3), EVENTS_STREAM)
    await writer.write(make_events(0, 1))

    # Step 1: each write times out; the writer drops that connection and opens a new one next time.
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        for request in range(1, 4):
            started = time.monotonic()
            with pytest.raises(RedisError):
                await writer.write(make_events(request, 1))
            assert time.monotonic() - started < 1.0
    finally:
        redis_server.process.send_signal(signal.SIGCONT)

    # Step 2: Redis resumes; the aborted connections are gone, only the writer's new one stays.
    await writer.write(make_events(9, 1))
    admin = Redis.from_url(redis_server.url)
    await admin.client_setname("admin")
    clients: list = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        clients = [client for client in await admin.client_list() if client["name"] != "admin"]
        if len(clients) == 1:
            break
        await asyncio.sleep(0.05)
    assert len(clients) == 1, clients
    await writer.close()
    await admin.aclose()


async def test_redis_killed_under_load_keeps_accepted(http, make_collector, tmp_path):
    # Every write is on disk before Redis replies, so a restart shows what Redis acknowledged.
    server = RedisServer(free_port(), options=("--dir", str(tmp_path), "--save", "", "--appendonly", "yes",
                                               "--appendfsync", "always"))
    server.start()
    try:
        admin = Redis.from_url(server.url)
        await SiteDirectory(admin).publish(SITES)
        await admin.aclose()
        collector = await make_collector(REDIS_URL=server.url, REDIS_TIMEOUT_S=2)
        outcomes: list[tuple[int, dict]] = []
        killed = asyncio.Event()

        async def send(sender: int) -> None:
            for number in range(10_000):
                size = 1 if number % 4 else 3
                payload = [{**EVENT, "props": {"sender": sender, "number": number}}] * size
                outcomes.append(await post(http, collector, payload))
                if killed.is_set() and outcomes[-1][0] == 503:
                    return

        senders = [asyncio.create_task(send(sender)) for sender in range(16)]
        await asyncio.sleep(0.5)
        server.kill()
        killed.set()
        await asyncio.wait_for(asyncio.gather(*senders), 20)
        server.start()

        statuses = Counter(status for status, _ in outcomes)
        assert set(statuses) == {202, 503}
        accepted = [event_id for status, body in outcomes if status == 202 for event_id in body["ids"]]
        admin = Redis.from_url(server.url)
        stored = Counter(event.id for event in await stream_events(admin))
        await admin.aclose()
        assert not [event_id for event_id in accepted if stored[event_id] != 1]
    finally:
        server.kill()
