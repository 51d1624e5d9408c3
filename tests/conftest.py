"""Fixtures shared by every layer's tests: a fresh PostgreSQL database, a clean Redis, a stack.

The machine's PostgreSQL (WEIR_TEST_PG) and Redis (WEIR_TEST_REDIS) are used as they run; each
test gets its own database and a flushed Redis database number, and closes what it opens.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from ingest.collector import create_collector_app
from ingest.settings import CollectorSettings
from ops.services import ServiceSet, run_services
from query.api import create_api_app
from query.settings import ApiSettings
from sinks.processor import Processor
from sinks.settings import ProcessorSettings
from streams.keys import EVENTS_STREAM, PROCESSOR_GROUP

PG_ADMIN_URL = os.environ.get("WEIR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_SERVER_URL = os.environ.get("WEIR_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_TEST_DB = int(os.environ.get("WEIR_TEST_REDIS_DB", "9"))
REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
API_KEY = "test-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url_for(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(autouse=True)
def unfreeze_after_test():
    """Unfreeze, after each test, the objects that a collector app froze at start-up.

    In production the collector freezes once, and what it freezes lives as long as the process.
    Here a test's collector also freezes the test's processor, whose enrichment cache forms a
    reference cycle with it, so without this each such test would keep about 200 MB for good.
    """
    yield
    gc.unfreeze()


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    """A new, empty database, dropped after the test."""
    name = f"weir_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    yield database_url_for(name)
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A Redis database number flushed before and after the test."""
    url = f"{REDIS_SERVER_URL}/{REDIS_TEST_DB}"
    client = Redis.from_url(url)
    await client.flushdb()
    yield url
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


def service_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a service process pointed at the test's database and Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "WEIR_"))}
    env.update(NODE_ENV="development", DATABASE_URL=database_url, REDIS_URL=redis_url, API_KEYS=API_KEY,
               LOG_LEVEL="info", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def weir_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ops.cli", *args]


def stop_service(process: subprocess.Popen, log_path: Path, timeout_s: float = 30) -> int:
    """SIGTERM `process` and return its exit code; kill it and fail with its log when it does not stop in time."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        command = " ".join(str(arg) for arg in process.args[1:])
        raise AssertionError(f"`{command}` did not stop within {timeout_s:g} s of SIGTERM:\n"
                             + log_path.read_text()[-3000:]) from None


@dataclass
class Stack:
    collector_url: str
    api_url: str
    database_url: str
    redis_url: str
    processor: Processor


async def wait_until_processed(redis: Redis, timeout_s: float = 60.0, stream: str = EVENTS_STREAM,
                               streams: list[str] | None = None) -> None:
    """Wait until the processors' group has read and acknowledged every entry of `stream`, or of all `streams`."""
    deadline = time.monotonic() + timeout_s
    waiting: dict[str, dict] = {}
    while time.monotonic() < deadline:
        waiting = {}
        for name in streams or [stream]:
            groups = {g["name"].decode(): g for g in await redis.xinfo_groups(name)} if await redis.exists(name) else {}
            group = groups.get(PROCESSOR_GROUP)
            if group is None or int(group["lag"] or 0) != 0 or int(group["pending"]) != 0:
                waiting[name] = groups
        if not waiting:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"streams were not processed within {timeout_s}s: {waiting}")


@pytest.fixture
async def stack(database_url: str, redis_url: str) -> AsyncIterator[Stack]:
    """Collector, one processor and the API in this process, on free ports."""
    base = dict(NODE_ENV="development", REDIS_URL=redis_url, LOG_LEVEL="info")
    collector_port, api_port = free_port(), free_port()
    processor = Processor(ProcessorSettings(**base, DATABASE_URL=database_url, CONCURRENCY=2, BATCH_SIZE=50,
                                            METRICS_PORT=0, RECLAIM_IDLE_MS=1000))
    services = ServiceSet()
    services.add_processor(processor, 0)
    services.add_app("collector", create_collector_app(CollectorSettings(**base, PORT=collector_port)),
                     "127.0.0.1", collector_port)
    services.add_app("api", create_api_app(ApiSettings(**base, DATABASE_URL=database_url, API_KEYS=API_KEY,
                                                       PORT=api_port)), "127.0.0.1", api_port)
    stopping, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_services(services, stopping, ready, handle_signals=False))
    await asyncio.wait([task, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    yield Stack(f"http://127.0.0.1:{collector_port}", f"http://127.0.0.1:{api_port}", database_url, redis_url,
                processor)
    stopping.set()
    await asyncio.wait_for(task, 30)
