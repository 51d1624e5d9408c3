"""The whole pipeline on a three-master Redis Cluster with four stream partitions.

The real access log goes through the log importer into the partitions, processors read every
partition, and PostgreSQL ends with the log's exact totals. Dead letters stay in their
partition's slot and come back with `weir dlq requeue`.
"""

from __future__ import annotations

import asyncio
import subprocess
import time

from redis.asyncio.cluster import RedisCluster

from sinks.processor import Processor
from sinks.settings import ProcessorSettings
from streams.event import decode_entry
from streams.keys import PROCESSOR_GROUP, SITES_HASH
from streams.partitions import StreamPartitions
from tests.cluster.conftest import TRUTH, import_log, start_processor, stop_processor, truth
from tests.conftest import REPO, service_env, wait_until_processed, weir_command

PARTITIONS = StreamPartitions(4, cluster=True)


def cluster_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    return service_env(database_url, redis_url, REDIS_CLUSTER="true", STREAM_PARTITIONS=str(PARTITIONS.count),
                       METRICS_PORT="0", **extra)


async def test_partitions_spread_over_shards(cluster, cluster_client: RedisCluster):
    await import_log(cluster_client, PARTITIONS)

    lengths = [await cluster_client.xlen(stream) for stream in PARTITIONS.streams()]
    events = [len(decode_entry(entry_id.decode(), fields))
              for stream in PARTITIONS.streams() for entry_id, fields in await cluster_client.xrange(stream)]
    assert all(length > 0 for length in lengths), lengths
    assert sum(events) == TRUTH["rows"]
    assert {cluster.node_of(stream) for stream in PARTITIONS.streams()} == set(cluster.ports)
    for stream, dead_letter_stream in zip(PARTITIONS.streams(), PARTITIONS.dead_letter_streams()):
        assert cluster.node_of(stream) == cluster.node_of(dead_letter_stream)


async def test_two_processors_land_every_event_once(cluster, cluster_client: RedisCluster, database_url, db,
                                                    tmp_path):
    await import_log(cluster_client, PARTITIONS)
    replicas = [("replica-a", tmp_path / "a.log"), ("replica-b", tmp_path / "b.log")]
    processes = [start_processor(cluster_env(database_url, cluster.url, CONCURRENCY="3", BATCH_SIZE="5",
                                             CONSUMER_NAME=name), log)
                 for name, log in replicas]
    try:
        await wait_until_processed(cluster_client, timeout_s=90, streams=PARTITIONS.streams())
    finally:
        for process, (_name, log) in zip(processes, replicas):
            stop_processor(process, log)

    assert await truth(db) == TRUTH
    for stream in PARTITIONS.streams():
        consumers = {c["name"].decode() for c in await cluster_client.xinfo_consumers(stream, PROCESSOR_GROUP)}
        assert {name.rsplit("-", 1)[0] for name in consumers} == {"replica-a", "replica-b"}, (stream, consumers)
        assert await cluster_client.xlen(PARTITIONS.dead_letter_stream(stream)) == 0


async def test_malformed_entry_dead_letters_and_requeues(cluster, cluster_client: RedisCluster, database_url,
                                                         tmp_path):
    stream = PARTITIONS.streams()[2]
    dead_letter_stream = PARTITIONS.dead_letter_stream(stream)
    await cluster_client.xadd(stream, {"v": "1", "events": "not json"})
    settings = ProcessorSettings(NODE_ENV="development", REDIS_URL=cluster.url, REDIS_CLUSTER=True,
                                 STREAM_PARTITIONS=PARTITIONS.count, DATABASE_URL=database_url, CONCURRENCY=2,
                                 BATCH_SIZE=10, METRICS_PORT=0)
    processor = Processor(settings)
    await processor.start()
    stopping = asyncio.Event()
    running = asyncio.create_task(processor.run(stopping))
    try:
        deadline = time.monotonic() + 30
        while await cluster_client.xlen(dead_letter_stream) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        stopping.set()
        await asyncio.wait_for(running, 30)
        await processor.close()

    env = cluster_env(database_url, cluster.url)
    listed = await asyncio.to_thread(subprocess.run, weir_command("dlq", "list"), cwd=REPO, env=env,
                                     capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert f"from {stream} " in listed.stdout
    assert listed.stdout.splitlines()[-1].startswith("1 dead-lettered entry in weir:events:dead:{0}, ")
    assert (await cluster_client.xpending(stream, PROCESSOR_GROUP))["pending"] == 0

    requeued = await asyncio.to_thread(subprocess.run, weir_command("dlq", "requeue", "--all"), cwd=REPO, env=env,
                                       capture_output=True, text=True, timeout=60)
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.strip() == "requeued 1 entry"
    assert await cluster_client.xlen(dead_letter_stream) == 0
    assert [fields for _id, fields in await cluster_client.xrange(stream)][-1] == {b"v": b"1", b"events": b"not json"}


async def test_site_remove_alias_updates_directory(cluster, cluster_client: RedisCluster, database_url):
    env = cluster_env(database_url, cluster.url)
    added = await asyncio.to_thread(subprocess.run, weir_command("site", "add", "a.example", "--timezone", "UTC",
                                                                 "--alias", "www.a.example"),
                                    cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    # A key that an older version wrote. The publish deletes it along with the alias.
    await cluster_client.hset(SITES_HASH, "https", b'{"domain": "a.example", "timezone": "UTC"}')

    removed = await asyncio.to_thread(subprocess.run, weir_command("site", "remove-alias", "a.example",
                                                                   "www.a.example"),
                                      cwd=REPO, env=env, capture_output=True, text=True, timeout=60)

    assert added.returncode == 0, added.stderr
    assert (removed.returncode, removed.stdout) == (0, "site a.example: alias www.a.example removed (aliases: -)\n")
    assert await cluster_client.hkeys(SITES_HASH) == [b"a.example"]
