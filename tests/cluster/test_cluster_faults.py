"""Faults on a three-master Redis Cluster with four stream partitions: nothing acknowledged is lost.

A processor killed with SIGKILL in the middle of its batches leaves them pending, and a new
processor reclaims them. A shard's primary stopped with SIGTERM and started again on its port
and folder (append-only file on) under collector load keeps every event that the collector
acknowledged with 202.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import aiohttp
from aiohttp import web
from redis.asyncio.cluster import RedisCluster

from ingest.collector import create_collector_app
from ingest.settings import CollectorSettings
from streams.keys import PROCESSOR_GROUP
from streams.partitions import StreamPartitions
from streams.sites import Site, SiteDirectory
from tests.cluster.conftest import TRUTH, import_log, start_processor, stop_processor, truth, wait_for_rows
from tests.conftest import service_env, wait_until_processed

PARTITIONS = StreamPartitions(4, cluster=True)
LOAD_SITE = Site("load.example", "UTC")
LOAD_WORKERS = 8
VISITORS_PER_WORKER = 13


def cluster_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    return service_env(database_url, redis_url, REDIS_CLUSTER="true", STREAM_PARTITIONS=str(PARTITIONS.count),
                       METRICS_PORT="0", **extra)


async def test_processor_killed_mid_batch_loses_nothing(cluster, cluster_client: RedisCluster, database_url, db,
                                                        tmp_path):
    await import_log(cluster_client, PARTITIONS)
    env = cluster_env(database_url, cluster.url, CONCURRENCY="2", BATCH_SIZE="1", RECLAIM_IDLE_MS="500")
    log = tmp_path / "processor.log"

    first = start_processor(env, log)
    try:
        rows_at_kill = await wait_for_rows(db, 200)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    pending_after_kill = sum([(await cluster_client.xpending(stream, PROCESSOR_GROUP))["pending"]
                              for stream in PARTITIONS.streams()])
    assert rows_at_kill < TRUTH["rows"]

    second = start_processor(env, log)
    try:
        await wait_until_processed(cluster_client, timeout_s=90, streams=PARTITIONS.streams())
    finally:
        stop_processor(second, log)

    assert await truth(db) == TRUTH
    if pending_after_kill:
        assert "pending entries reclaimed" in log.read_text()


class Load:
    """Workers posting one event each per request, with event ids, to the collector until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acknowledged: list[tuple[float, str]] = []
        """Monotonic time and stored event id of each event acknowledged with 202."""
        self.statuses: Counter = Counter()
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._send(worker)) for worker in range(LOAD_WORKERS)]

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.gather(*self._tasks)

    async def _send(self, worker: int) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            number = 0
            while not self.stopping.is_set():
                number += 1
                payload = {"site": LOAD_SITE.domain, "url": f"https://{LOAD_SITE.domain}/page/{number % 7}",
                           "id": f"load-{worker}-{number}"}
                # The user agent picks the visitor, and so the partition.
                headers = {"User-Agent": f"Mozilla/5.0 (X11; Linux x86_64) visitor/{worker}.{number % VISITORS_PER_WORKER}"}
                try:
                    async with http.post(f"{self.url}/collect", json=payload, headers=headers) as response:
                        body = await response.json()
                        self.statuses[response.status] += 1
                        if response.status == 202:
                            self.acknowledged.append((time.monotonic(), body["ids"][0]))
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    self.statuses["client error"] += 1
                    await asyncio.sleep(0.05)


async def test_primary_restart_keeps_acknowledged_events(cluster, cluster_client: RedisCluster, database_url, db,
                                                         tmp_path):
    await SiteDirectory(cluster_client).publish([LOAD_SITE])
    log = tmp_path / "processor.log"
    processor = start_processor(cluster_env(database_url, cluster.url, CONCURRENCY="2", BATCH_SIZE="20",
                                            RECLAIM_IDLE_MS="1000"), log)
    settings = CollectorSettings(NODE_ENV="development", REDIS_URL=cluster.url, REDIS_CLUSTER=True,
                                 STREAM_PARTITIONS=PARTITIONS.count, REDIS_TIMEOUT_S=1.0)
    runner = web.AppRunner(create_collector_app(settings), access_log=None)
    await runner.setup()
    load = None
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        load = Load(f"http://{host}:{port}")
        load.start()
        await wait_for_rows(db, 100)

        # SIGTERM makes the primary write its append-only file; it comes back with the same node id.
        shard = cluster.node_of(PARTITIONS.streams()[0])
        cluster.stop_node(shard)
        stopped_at = time.monotonic()
        await asyncio.sleep(1.0)
        cluster.start_node(shard)
        await asyncio.to_thread(cluster.wait_until_ok)
        restarted_at = time.monotonic()
        await asyncio.sleep(2.0)
        await load.stop()

        await wait_until_processed(cluster_client, timeout_s=90, streams=PARTITIONS.streams())
    finally:
        if load is not None and not load.stopping.is_set():
            await load.stop()
        await runner.cleanup()
        stop_processor(processor, log)

    acknowledged = {event_id for _at, event_id in load.acknowledged}
    stored = {str(row["id"]) for row in await db.fetch("SELECT id FROM raw_events")}
    assert acknowledged - stored == set()
    assert await db.fetchval("SELECT count(*) - count(DISTINCT id) FROM raw_events") == 0
    assert any(at < stopped_at for at, _ in load.acknowledged)
    assert any(at > restarted_at for at, _ in load.acknowledged)
    assert load.statuses[503] > 0, load.statuses
