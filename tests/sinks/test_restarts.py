"""Restarting Redis (append-only file on) or PostgreSQL under load loses and doubles nothing.

Each test starts its own server on a free port and restarts only that one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ops.embedded import _postgres_pids_in, ensure_servers, stop_embedded
from ops.importer import LogImporter, newest_time, shift_for
from streams.sites import Site, SiteDirectory
from tests.conftest import (API_KEY, DATA, REPO, free_port, service_env, stop_service, wait_until_processed,
                            weir_command)

LOG = DATA / "access-logs" / "apache_combined.log"
SITE = Site("semicomplete.com", "UTC", ("www.semicomplete.com",))
TRUTH = {"rows": 4173, "human": 1777, "visitors": 1005, "sessions": 1126, "fingerprints": 1126, "daily_pageviews": 1777}


async def totals(conn: asyncpg.Connection) -> dict:
    row = await conn.fetchrow("""
        SELECT (SELECT count(*) FROM raw_events) AS rows,
               (SELECT count(*) FROM raw_events WHERE NOT is_bot) AS human,
               (SELECT count(DISTINCT visitor_id) FROM raw_events WHERE NOT is_bot) AS visitors,
               (SELECT count(DISTINCT session_id) FROM raw_events WHERE NOT is_bot) AS sessions,
               (SELECT count(*) FROM session_fingerprints WHERE NOT is_bot) AS fingerprints,
               (SELECT sum(value) FROM daily_metrics WHERE metric_name = 'pageviews' AND dimension_key IS NULL)
                   AS daily_pageviews""")
    return dict(row)


async def import_with_retries(redis_url: str, attempts: int = 60) -> None:
    """Import the log, starting over after a Redis failure; ids make the repeats harmless."""
    for attempt in range(attempts):
        redis = Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=1)
        try:
            await SiteDirectory(redis).publish([SITE])
            importer = LogImporter(redis, SITE, shift=shift_for(newest_time([LOG], "combined")), progress=None)
            await importer.import_files([LOG])
            return
        except (RedisError, OSError):
            await asyncio.sleep(0.5)
        finally:
            await redis.aclose()
    raise AssertionError("the import never completed")


def start_processor(env: dict, log_path) -> subprocess.Popen:
    return subprocess.Popen(weir_command("processor"), cwd=REPO, env=env, stdout=open(log_path, "ab"),
                            stderr=subprocess.STDOUT)


def stop_processor(process: subprocess.Popen, log_path) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0, log_path.read_text()[-3000:]


def start_redis(port: int, data_dir) -> subprocess.Popen:
    return subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir),
                             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_for_redis(url: str) -> None:
    client = Redis.from_url(url)
    try:
        for _ in range(100):
            try:
                await client.ping()
                return
            except RedisError:
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    raise AssertionError(f"Redis at {url} did not start")


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
async def test_redis_restart_under_load_loses_nothing(database_url, db, tmp_path):
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    server = start_redis(port, tmp_path)
    processor = None
    try:
        await wait_for_redis(redis_url)
        env = service_env(database_url, redis_url, CONCURRENCY="2", BATCH_SIZE="1", METRICS_PORT="0",
                          RECLAIM_IDLE_MS="1000")
        processor = start_processor(env, tmp_path / "processor.log")
        await _wait_for_group(redis_url)
        load = asyncio.create_task(import_with_retries(redis_url))
        await _wait_for_some_rows(database_url)

        # A clean restart: SHUTDOWN writes the append-only file, and the server reloads it.
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        await asyncio.sleep(0.5)
        server = start_redis(port, tmp_path)
        await wait_for_redis(redis_url)
        await asyncio.wait_for(load, 120)

        client = Redis.from_url(redis_url)
        try:
            await wait_until_processed(client, timeout_s=120)
        finally:
            await client.aclose()
        stop_processor(processor, tmp_path / "processor.log")
        processor = None
    finally:
        if processor is not None and processor.poll() is None:
            processor.kill()
        server.terminate()
        server.wait(30)

    assert await totals(db) == TRUTH


async def test_postgres_restart_under_load_loses_nothing(redis_url, redis, tmp_path):
    data_dir = tmp_path / "pg"
    servers = await asyncio.to_thread(ensure_servers, redis_url, None, data_dir, pg_port=free_port())
    database_url = servers.database_url
    processor = None
    try:
        env = service_env(database_url, redis_url, CONCURRENCY="2", BATCH_SIZE="1", METRICS_PORT="0")
        processor = start_processor(env, tmp_path / "processor.log")
        await import_with_retries(redis_url)
        await _wait_for_some_rows(database_url)

        port = int(database_url.rsplit(":", 1)[1].split("/")[0])
        await asyncio.to_thread(stop_embedded, data_dir)
        await asyncio.sleep(1.0)
        servers = await asyncio.to_thread(ensure_servers, redis_url, None, data_dir, pg_port=port)
        assert servers.database_url == database_url

        await wait_until_processed(redis, timeout_s=120)
        stop_processor(processor, tmp_path / "processor.log")
        processor = None

        conn = await asyncpg.connect(database_url)
        try:
            assert await totals(conn) == TRUTH
        finally:
            await conn.close()
        log = (tmp_path / "processor.log").read_text()
        assert "retrying in place" in log
    finally:
        if processor is not None and processor.poll() is None:
            processor.kill()
        await asyncio.to_thread(stop_embedded, data_dir)


async def _wait_for_group(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        for _ in range(300):
            if await client.exists("weir:events") and await client.xinfo_groups("weir:events"):
                return
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    raise AssertionError("the processor did not create its consumer group")


async def _wait_for_some_rows(database_url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = await asyncpg.connect(database_url)
            try:
                if await conn.fetchval("SELECT to_regclass('raw_events') IS NOT NULL") and \
                        await conn.fetchval("SELECT count(*) FROM raw_events") > 300:
                    return
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError):
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("no rows arrived before the restart")


@contextlib.contextmanager
def embedded_postgres_frozen(data_dir):
    """Stop every process of the embedded PostgreSQL in `data_dir` with SIGSTOP, and resume them after the block.

    A stopped PostgreSQL hangs as an unreachable host does: connections stay open and get no reply.
    """
    pids = _postgres_pids_in(data_dir / "postgres")
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def kill_if_running(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(10)


async def test_sigterm_while_postgres_hangs(redis_url, tmp_path):
    data_dir = tmp_path / "pg"
    servers = await asyncio.to_thread(ensure_servers, redis_url, None, data_dir, pg_port=free_port())
    log_path = tmp_path / "processor.log"
    processor = start_processor(service_env(servers.database_url, redis_url, METRICS_PORT="0"), log_path)
    try:
        await _wait_for_group(redis_url)
        with embedded_postgres_frozen(data_dir):
            code = stop_service(processor, log_path)
    finally:
        kill_if_running(processor)
        await asyncio.to_thread(stop_embedded, data_dir)

    assert code == 0, log_path.read_text()[-3000:]


def _connected_to(port: int) -> bool:
    """Return whether a TCP connection to `port` is established, per this machine's /proc/net/tcp."""
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
            return True
    return False


async def test_sigterm_while_postgres_hangs_at_start(redis_url, tmp_path):
    # The processor's first connection waits up to asyncpg's 60 s connect timeout for a reply.
    # When start() read the stop event only between attempts, SIGTERM went unread for about 58 s.
    data_dir = tmp_path / "pg"
    pg_port = free_port()
    servers = await asyncio.to_thread(ensure_servers, redis_url, None, data_dir, pg_port=pg_port)
    log_path = tmp_path / "processor.log"
    try:
        with embedded_postgres_frozen(data_dir):
            processor = start_processor(service_env(servers.database_url, redis_url, METRICS_PORT="0"), log_path)
            try:
                for _ in range(600):
                    if _connected_to(pg_port) or processor.poll() is not None:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the processor did not connect to PostgreSQL:\n" + log_path.read_text()[-3000:])
                code = stop_service(processor, log_path)
            finally:
                kill_if_running(processor)
    finally:
        await asyncio.to_thread(stop_embedded, data_dir)

    assert code == 0, log_path.read_text()[-3000:]
    assert "Traceback" not in log_path.read_text()


async def test_api_sigterm_during_hung_request(redis_url, tmp_path):
    # close_pool bounds the pool's close, but a request waiting on PostgreSQL when SIGTERM comes must
    # also end within the API's 40 s grace (terminationGracePeriodSeconds in ops/deploy/k8s/api.yaml).
    data_dir = tmp_path / "pg"
    servers = await asyncio.to_thread(ensure_servers, redis_url, None, data_dir, pg_port=free_port())
    env = service_env(servers.database_url, redis_url)
    assert subprocess.run(weir_command("schema", "apply"), cwd=REPO, env=env, capture_output=True).returncode == 0
    port = free_port()
    log_path = tmp_path / "api.log"
    api = subprocess.Popen(weir_command("api", "--port", str(port), "--host", "127.0.0.1"), cwd=REPO, env=env,
                           stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession(headers={"X-API-Key": API_KEY}) as http:
            await _wait_for_answer(http, f"http://127.0.0.1:{port}/api/sites")
            with embedded_postgres_frozen(data_dir):
                in_flight = asyncio.create_task(http.get(f"http://127.0.0.1:{port}/api/overview?site=a.example"))
                await asyncio.sleep(1)
                code = await asyncio.to_thread(stop_service, api, log_path, 40)
                in_flight.cancel()
                await asyncio.gather(in_flight, return_exceptions=True)
    finally:
        kill_if_running(api)
        await asyncio.to_thread(stop_embedded, data_dir)

    assert code == 0, log_path.read_text()[-3000:]


async def _wait_for_answer(http: aiohttp.ClientSession, url: str) -> None:
    for _ in range(300):
        try:
            async with http.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} did not answer 200")
