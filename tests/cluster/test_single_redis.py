"""Stream partitions on a single Redis (no cluster), and sessions of a visitor whose events several consumers take.

With STREAM_PARTITIONS=4 on one Redis the same code runs as on a cluster: the streams get
hash-tagged names, the collector sends each visitor to one partition in one MULTI/EXEC, and
processors read every partition. Sessions need no partition affinity: they are computed in
PostgreSQL under a lock per visitor, so batches of one visitor may go to any consumer, in any
order, at the same time.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
from aiohttp import web
from redis.asyncio import Redis

from ingest.collector import create_collector_app
from ingest.settings import CollectorSettings
from sinks.processor import Processor
from sinks.settings import ProcessorSettings
from streams.consumer import Entry
from streams.event import Event, decode_entry, encode_entry
from streams.ids import new_event_id
from streams.keys import EVENTS_STREAM
from streams.partitions import StreamPartitions, partition_of
from streams.sites import Site, SiteDirectory
from tests.cluster.conftest import TRUTH, import_log, start_processor, stop_processor, truth
from tests.conftest import service_env, wait_until_processed

PARTITIONS = StreamPartitions(4)
SITE = Site("example.com", "UTC")
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
MINUTE_MS = 60_000


async def test_four_partitions_store_events_once(redis_url, redis: Redis, database_url, db, tmp_path):
    await import_log(redis, PARTITIONS)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    env = service_env(database_url, redis_url, STREAM_PARTITIONS="4", CONCURRENCY="3", BATCH_SIZE="5",
                      METRICS_PORT="0")
    processes = [start_processor(env, log) for log in logs]
    try:
        await wait_until_processed(redis, timeout_s=90, streams=PARTITIONS.streams())
    finally:
        for process, log in zip(processes, logs):
            stop_processor(process, log)

    assert await truth(db) == TRUTH
    assert not await redis.exists(EVENTS_STREAM)
    assert all([await redis.xlen(stream) > 0 for stream in PARTITIONS.streams()])


async def test_collector_keeps_visitor_in_partition(redis_url, redis: Redis):
    await SiteDirectory(redis).publish([SITE])
    settings = CollectorSettings(NODE_ENV="development", REDIS_URL=redis_url, STREAM_PARTITIONS=PARTITIONS.count)
    runner = web.AppRunner(create_collector_app(settings), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        batch = [{"site": SITE.domain, "url": f"https://{SITE.domain}/{n}", "anonymous_id": f"visitor-{n % 10}",
                  "props": {"n": n}} for n in range(40)]
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://{host}:{port}/collect", data=orjson.dumps(batch),
                                 headers={"User-Agent": BROWSER}) as response:
                assert response.status == 202, await response.text()
    finally:
        await runner.cleanup()

    numbers_by_visitor: dict[str, list[int]] = {}
    for partition, stream in enumerate(PARTITIONS.streams()):
        entries = await redis.xrange(stream)
        assert len(entries) <= 1, f"{stream} got {len(entries)} entries from one write"
        for entry_id, fields in entries:
            for event in decode_entry(entry_id.decode(), fields):
                assert partition_of(event.site, event.visitor_id, PARTITIONS.count) == partition
                numbers_by_visitor.setdefault(event.visitor_id, []).append(event.props["n"])
    assert len(numbers_by_visitor) == 10
    assert sorted(n for numbers in numbers_by_visitor.values() for n in numbers) == list(range(40))
    assert all(numbers == sorted(numbers) for numbers in numbers_by_visitor.values())


def visit_event(visitor_id: str, timestamp_ms: int) -> Event:
    return Event(id=str(new_event_id(timestamp_ms)), site=SITE.domain, type="pageview", action="/",
                 timestamp_ms=timestamp_ms, received_ms=timestamp_ms, visitor_id=visitor_id,
                 url=f"https://{SITE.domain}/", user_agent=BROWSER, ip="203.0.113.7")


async def test_sessions_survive_any_consumer_order(redis_url, database_url, db):
    settings = dict(NODE_ENV="development", REDIS_URL=redis_url, DATABASE_URL=database_url, METRICS_PORT=0)
    replicas = [Processor(ProcessorSettings(**settings, CONSUMER_NAME="a")),
                Processor(ProcessorSettings(**settings, CONSUMER_NAME="b"))]
    for replica in replicas:
        await replica.start()
    start_ms = int(time.time() * 1000) - 3 * 60 * MINUTE_MS
    # Minutes after the start: the first four are one session, the last two another (a gap over 30 minutes).
    minutes = [0, 5, 10, 20, 70, 75]
    entries = {minute: Entry(f"{start_ms + minute * MINUTE_MS}-0",
                             encode_entry([visit_event("v" * 32, start_ms + minute * MINUTE_MS)]))
               for minute in minutes}
    try:
        # Later events first and concurrently, each batch on the other replica than its neighbour.
        await asyncio.gather(replicas[0].handle_batch([entries[10]]), replicas[1].handle_batch([entries[70]]))
        await asyncio.gather(replicas[1].handle_batch([entries[20]]), replicas[0].handle_batch([entries[75]]),
                             replicas[0].handle_batch([entries[0]]), replicas[1].handle_batch([entries[5]]))
    finally:
        for replica in replicas:
            await replica.close()

    rows = await db.fetch('SELECT session_id FROM raw_events ORDER BY "timestamp"')
    sessions = [row["session_id"] for row in rows]
    assert len(sessions) == len(minutes)
    assert len(set(sessions[:4])) == 1
    assert len(set(sessions[4:])) == 1
    assert sessions[0] != sessions[4]
    assert await db.fetchval("SELECT count(*) FROM session_fingerprints") == 2
