"""Fixtures of the Redis Cluster tests: a three-master cluster on free ports of 127.0.0.1, and helpers.

The cluster is started once per test module from `redis-server --cluster-enabled yes` in
temporary folders, created with `redis-cli --cluster create`, flushed before each test and
stopped at the end of the module. Each node keeps an append-only file, so a node restarted on
its port and folder comes back with its data and its place in the cluster.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
import redis as redis_sync
from redis.asyncio.cluster import RedisCluster

from ops.importer import LogImporter, newest_time, shift_for
from streams.partitions import StreamPartitions
from streams.sites import Site, SiteDirectory
from tests.conftest import DATA, REPO, free_port, weir_command

LOG = DATA / "access-logs" / "apache_combined.log"
SITE = Site("semicomplete.com", "UTC", ("www.semicomplete.com",))
TRUTH = {"rows": 4173, "human": 1777, "visitors": 1005, "sessions": 1126, "ids": 4173}
"""Totals of the real access log once processed (see tests/ops/test_import_logs.py)."""
NODE_TIMEOUT_MS = 3000
START_TIMEOUT_S = 20.0


@dataclass
class LocalCluster:
    """Three Redis Cluster masters on 127.0.0.1, each with its own folder and append-only file."""

    folder: Path
    ports: list[int]
    bus_ports: list[int]
    servers: dict[int, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def start_node(self, port: int) -> None:
        node_folder = self.folder / str(port)
        node_folder.mkdir(exist_ok=True)
        bus_port = self.bus_ports[self.ports.index(port)]
        self.servers[port] = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--cluster-enabled", "yes",
             "--cluster-port", str(bus_port), "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--appendonly", "yes", "--save", "",
             "--dir", str(node_folder), "--logfile", str(node_folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop_node(self, port: int, sig: int = signal.SIGTERM) -> None:
        """Stop one node; SIGTERM makes it write its append-only file before it exits."""
        server = self.servers.pop(port)
        server.send_signal(sig)
        server.wait(30)

    def wait_until_ok(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until every node responds and reports cluster_state:ok."""
        deadline = time.monotonic() + timeout_s
        states: dict[int, str] = {}
        while time.monotonic() < deadline:
            states = {port: self._state(port) for port in self.ports}
            if all(state == "ok" for state in states.values()):
                return
            time.sleep(0.1)
        raise AssertionError(f"the cluster did not reach cluster_state:ok in {timeout_s}s: {states}")

    def flush(self) -> None:
        for port in self.ports:
            with redis_sync.Redis(port=port) as client:
                client.flushall()

    def node_of(self, key: str) -> int:
        """Return the port of the master that owns `key`'s slot."""
        with redis_sync.Redis(port=self.ports[0]) as client:
            slot = client.execute_command("CLUSTER", "KEYSLOT", key)
            for start, end, master, *_replicas in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise AssertionError(f"no master owns the slot of {key}")

    def stop(self) -> None:
        for port in list(self.servers):
            server = self.servers.pop(port)
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    def _state(self, port: int) -> str:
        try:
            with redis_sync.Redis(port=port, socket_timeout=1) as client:
                info = client.execute_command("CLUSTER", "INFO")
        except redis_sync.RedisError:
            return "down"
        text = info.decode() if isinstance(info, bytes) else str(info)
        for line in text.splitlines():
            if line.startswith("cluster_state:"):
                return line.split(":", 1)[1].strip()
        return "unknown"


def _wait_for_ping(port: int, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with redis_sync.Redis(port=port, socket_timeout=1) as client:
                client.ping()
                return
        except redis_sync.RedisError:
            time.sleep(0.05)
    raise AssertionError(f"redis-server on port {port} did not start")


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    """A three-master Redis Cluster on free ports, for the whole module."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are needed for a local Redis Cluster")
    ports = [free_port() for _ in range(3)]
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"), ports, [free_port() for _ in range(3)])
    try:
        for port in ports:
            cluster.start_node(port)
        for port in ports:
            _wait_for_ping(port)
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        cluster.wait_until_ok()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(local_cluster: LocalCluster) -> LocalCluster:
    """The module's cluster, flushed, with every node running and the cluster state ok."""
    for port in local_cluster.ports:
        if port not in local_cluster.servers:
            local_cluster.start_node(port)
    local_cluster.wait_until_ok()
    local_cluster.flush()
    return local_cluster


@pytest.fixture
async def cluster_client(cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(cluster.url, socket_timeout=5, socket_connect_timeout=2)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(autouse=True)
async def fail_on_loop_exceptions() -> AsyncIterator[list[dict]]:
    """Fail the test when the event loop reported an unhandled exception (a lost task's error)."""
    errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    assert errors == [], f"unhandled event-loop exceptions: {errors}"


async def import_log(redis, partitions: StreamPartitions) -> None:
    """Publish the log's site and import the real access log into the partitions of the stream."""
    await SiteDirectory(redis).publish([SITE])
    importer = LogImporter(redis, SITE, shift=shift_for(newest_time([LOG], "combined")), progress=None,
                           partitions=partitions)
    summary = await importer.import_files([LOG])
    assert summary.events_sent == TRUTH["rows"]


async def truth(db: asyncpg.Connection) -> dict:
    row = await db.fetchrow("""
        SELECT count(*) AS rows,
               count(*) FILTER (WHERE NOT is_bot) AS human,
               count(DISTINCT visitor_id) FILTER (WHERE NOT is_bot) AS visitors,
               count(DISTINCT session_id) FILTER (WHERE NOT is_bot) AS sessions,
               count(DISTINCT id) AS ids
          FROM raw_events""")
    return dict(row)


async def wait_for_rows(db: asyncpg.Connection, minimum: int, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        exists = await db.fetchval("SELECT to_regclass('raw_events') IS NOT NULL")
        count = await db.fetchval("SELECT count(*) FROM raw_events") if exists else 0
        if count >= minimum:
            return count
        await asyncio.sleep(0.02)
    raise AssertionError(f"raw_events did not reach {minimum} rows in {timeout_s}s")


def start_processor(env: dict, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(weir_command("processor"), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop_processor(process: subprocess.Popen, log_path: Path) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0, log_path.read_text()[-3000:]
