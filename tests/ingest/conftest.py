"""Fixtures of the collector tests: a collector on a free port of 127.0.0.1, its Redis, and for
end-to-end checks an in-process processor writing to the fresh PostgreSQL database of
tests/conftest.py's `database_url`.

The tests run a redis-server of their own on a free port, flushed before and after each test.
The collector's keys (the stream, the site directory) have fixed names, so two runs of this
suite sharing one Redis database would delete each other's streams. Without the
redis-server binary they fall back to database 11 of WEIR_TEST_REDIS (default
127.0.0.1:6379).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from ingest.collector import create_collector_app
from ingest.settings import CollectorSettings
from sinks.processor import Processor
from sinks.settings import ProcessorSettings
from sinks.sites import publish_sites, upsert_site
from streams.event import Event, decode_entry
from streams.keys import EVENTS_STREAM
from streams.sites import Site, SiteDirectory

FALLBACK_REDIS_URL = f"{os.environ.get('WEIR_TEST_REDIS', 'redis://127.0.0.1:6379')}/11"
SITES = [
    Site("example.com", "Europe/Berlin", ("www.example.com",)),
    Site("shop.example.org", "UTC"),
]
WRITE_KEY = "test-write-key-1"


@pytest.fixture(autouse=True)
async def fail_on_loop_exceptions() -> AsyncIterator[list[dict]]:
    """Fail the test when the event loop reported an unhandled exception (a lost task's error)."""
    errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    assert errors == [], f"unhandled event-loop exceptions: {errors}"


@pytest.fixture(scope="session")
def ingest_redis_url() -> Iterator[str]:
    """Return the URL of this session's own redis-server, started on a free port."""
    if shutil.which("redis-server") is None:
        yield FALLBACK_REDIS_URL
        return
    server = RedisServer(free_port())
    server.start()
    try:
        yield server.url
    finally:
        server.kill()


@pytest.fixture
async def redis_client(ingest_redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(ingest_redis_url, socket_timeout=5)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.fixture
async def sites(redis_client: Redis) -> list[Site]:
    await SiteDirectory(redis_client).publish(SITES)
    return SITES


@dataclass
class RunningCollector:
    url: str
    app: web.Application
    runner: web.AppRunner

    def route(self, path: str) -> str:
        return self.url + path


@pytest.fixture
async def make_collector(ingest_redis_url: str) -> AsyncIterator[Callable[..., Awaitable[RunningCollector]]]:
    """Return a factory starting a collector on a free port; settings override the defaults."""
    runners: list[web.AppRunner] = []

    async def start(**overrides) -> RunningCollector:
        values = {"NODE_ENV": "development", "REDIS_URL": ingest_redis_url, "SEGMENT_WRITE_KEYS": f"{WRITE_KEY}=example.com",
                  **overrides}
        app = create_collector_app(CollectorSettings(**values))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return RunningCollector(f"http://{host}:{port}", app, runner)

    try:
        yield start
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


@pytest.fixture
async def collector(make_collector, sites) -> RunningCollector:
    return await make_collector()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def stream_events(redis: Redis, stream: str = EVENTS_STREAM) -> list[Event]:
    """Return every event in the stream, oldest first."""
    entries = await redis.xrange(stream)
    return [event for entry_id, fields in entries for event in decode_entry(entry_id.decode(), fields)]


def metric(name: str, **labels: str) -> float:
    """Return the current value of a sample in the default registry, 0 when it has none yet."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RedisServer:
    """A redis-server process of the test's own, on a free port, by default without persistence."""

    port: int
    process: subprocess.Popen | None = None
    options: tuple[str, ...] = ("--save", "", "--appendonly", "no")
    """redis-server options besides the port and address; the default keeps no data on disk."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", *self.options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not listen on port {self.port} within 10 s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """Start a private redis-server; the test may stop, pause or restart it."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGCONT)  # in case the test paused it
        server.kill()


@pytest.fixture
async def processor(database_url: str, ingest_redis_url: str, redis_client: Redis, sites) -> AsyncIterator[Processor]:
    """Run one processor in this event loop, writing to the test's database."""
    settings = ProcessorSettings(NODE_ENV="development", REDIS_URL=ingest_redis_url, DATABASE_URL=database_url,
                                 CONCURRENCY=1, METRICS_PORT=0, TIMESCALEDB="off",
                                 CONSUMER_NAME=f"ingest-test-{uuid.uuid4().hex[:6]}")
    running = Processor(settings)
    await running.start()
    async with running.pool.acquire() as conn:
        for site in SITES:
            await upsert_site(conn, site)
        # The start published the table while it had no rows, which emptied the directory that
        # the `sites` fixture had filled.
        await publish_sites(conn, SiteDirectory(redis_client))
    stopping = asyncio.Event()
    task = asyncio.create_task(running.run(stopping))
    try:
        yield running
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)
        await running.close()


async def wait_for_rows(processor: Processor, query: str, count: int, *args, timeout_s: float = 15.0) -> list:
    """Poll `query` until it returns at least `count` rows; return them, or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    rows: list = []
    while time.monotonic() < deadline:
        async with processor.pool.acquire() as conn:
            rows = await conn.fetch(query, *args)
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.1)
    pytest.fail(f"expected {count} rows from {query!r} within {timeout_s} s, found {len(rows)}: {rows}")


STATIC_DIR = Path(__file__).resolve().parents[2] / "ingest" / "static"
