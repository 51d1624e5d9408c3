"""A processor killed with SIGKILL mid-import, or stopped with a batch blocked, loses nothing and counts nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time

import asyncpg
import pytest
from redis.asyncio import Redis

from ops.importer import LogImporter, newest_time, shift_for
from sinks.sessions import SITE_LOCK_CLASS
from streams.sites import Site, SiteDirectory
from tests.conftest import DATA, REPO, free_port, service_env, stop_service, wait_until_processed, weir_command

LOG = DATA / "access-logs" / "apache_combined.log"
SITE = Site("semicomplete.com", "UTC", ("www.semicomplete.com",))


def start_processor(env: dict, log_path) -> subprocess.Popen:
    log = open(log_path, "ab")
    return subprocess.Popen(weir_command("processor"), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


async def import_into_stream(redis: Redis) -> None:
    await SiteDirectory(redis).publish([SITE])
    importer = LogImporter(redis, SITE, shift=shift_for(newest_time([LOG], "combined")), progress=None)
    await importer.import_files([LOG])


async def truth(db) -> dict:
    row = await db.fetchrow("""
        SELECT count(*) AS rows,
               count(*) FILTER (WHERE NOT is_bot) AS human,
               count(DISTINCT visitor_id) FILTER (WHERE NOT is_bot) AS visitors,
               count(DISTINCT session_id) FILTER (WHERE NOT is_bot) AS sessions,
               count(DISTINCT id) AS ids
          FROM raw_events""")
    return dict(row)


async def wait_for_rows(db, minimum: int, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        exists = await db.fetchval("SELECT to_regclass('raw_events') IS NOT NULL")
        count = await db.fetchval("SELECT count(*) FROM raw_events") if exists else 0
        if count >= minimum:
            return count
        await asyncio.sleep(0.02)
    raise AssertionError(f"raw_events did not reach {minimum} rows in {timeout_s}s")


async def test_sigkill_mid_import_loses_and_doubles_nothing(database_url, redis_url, redis, db, tmp_path):
    env = service_env(database_url, redis_url, CONCURRENCY="2", BATCH_SIZE="1", RECLAIM_IDLE_MS="500",
                      METRICS_PORT="0")
    await import_into_stream(redis)

    first = start_processor(env, tmp_path / "processor.log")
    try:
        rows_at_kill = await wait_for_rows(db, 200)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    pending_after_kill = (await redis.xpending("weir:events", "weir:processors"))["pending"]
    assert rows_at_kill < 4173

    second = start_processor(env, tmp_path / "processor.log")
    try:
        await wait_until_processed(redis, timeout_s=90)
    finally:
        assert stop_service(second, tmp_path / "processor.log") == 0, (tmp_path / "processor.log").read_text()[-3000:]

    assert await truth(db) == {"rows": 4173, "human": 1777, "visitors": 1005, "sessions": 1126, "ids": 4173}
    log = (tmp_path / "processor.log").read_text()
    if pending_after_kill:
        assert "pending entries reclaimed" in log


@pytest.mark.parametrize("replicas", [2])
async def test_two_replicas_share_one_group(database_url, redis_url, redis, db, tmp_path, replicas):
    env = service_env(database_url, redis_url, CONCURRENCY="2", BATCH_SIZE="1", METRICS_PORT="0")
    await import_into_stream(redis)

    processes = [start_processor(env, tmp_path / f"processor-{i}.log") for i in range(replicas)]
    try:
        await wait_until_processed(redis, timeout_s=90)
    finally:
        codes = [stop_service(process, tmp_path / f"processor-{i}.log") for i, process in enumerate(processes)]

    assert codes == [0] * replicas
    assert await truth(db) == {"rows": 4173, "human": 1777, "visitors": 1005, "sessions": 1126, "ids": 4173}
    groups = await redis.xinfo_consumers("weir:events", "weir:processors")
    assert len(groups) == 2 * replicas


async def test_stop_timeout_cancels_blocked_batch(database_url, redis_url, redis, db, tmp_path):
    # The test holds the site's lock exclusively, as a rebuild does, so the first batch waits until the stop timeout.
    env = service_env(database_url, redis_url, CONCURRENCY="1", BATCH_SIZE="1", RECLAIM_IDLE_MS="500",
                      STOP_TIMEOUT_S="1", METRICS_PORT="0")
    log_path = tmp_path / "processor.log"
    await import_into_stream(redis)
    async with site_locked(database_url):
        first = start_processor(env, log_path)
        await wait_for_lock_waiters(db, waiting=True)
        assert stop_service(first, log_path) == 0
        stored_while_blocked = await db.fetchval("SELECT count(*) FROM raw_events")
        pending_after_stop = (await redis.xpending("weir:events", "weir:processors"))["pending"]

    assert stored_while_blocked == 0
    assert pending_after_stop == 1
    assert "batches still running 1 s after the stop request are cancelled" in log_path.read_text()

    second = start_processor(env, log_path)
    try:
        await wait_until_processed(redis, timeout_s=90)
    finally:
        assert stop_service(second, log_path) == 0
    assert await truth(db) == {"rows": 4173, "human": 1777, "visitors": 1005, "sessions": 1126, "ids": 4173}


async def wait_for_lock_waiters(db, waiting: bool, timeout_s: float = 30) -> None:
    """Wait until some statement waits for an advisory lock (`waiting`), or until none does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        count = await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                  "AND wait_event_type = 'Lock' AND wait_event = 'advisory'")
        if bool(count) == waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"advisory lock waiters were still {'absent' if waiting else 'present'} after {timeout_s}s")


@contextlib.asynccontextmanager
async def site_locked(database_url: str):
    """Hold the site's lock exclusively in an open transaction, as a rebuild does, until the block ends."""
    blocker = await asyncpg.connect(database_url)
    try:
        async with blocker.transaction():
            await blocker.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", SITE_LOCK_CLASS, SITE.domain)
            yield
    finally:
        await blocker.close()


async def wait_for_log_line(log_path, text: str, process: subprocess.Popen, timeout_s: float = 60) -> None:
    """Wait until `text` is in the log at `log_path`; fail when `process` exits first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log_path.exists() and text in log_path.read_text():
            return
        if process.poll() is not None:
            raise AssertionError(f"processor exited with {process.returncode}:\n" + log_path.read_text()[-3000:])
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} did not appear in the log within {timeout_s}s")


async def test_sigterm_during_start_retry(redis_url, tmp_path):
    # Nothing listens on this port, so start() retries for START_TIMEOUT_S (60 s) as with PostgreSQL down.
    # The SIGTERM handler only sets the stop event, so start() must read it between attempts.
    database_url = f"postgresql://postgres@127.0.0.1:{free_port()}/weir"
    env = service_env(database_url, redis_url, METRICS_PORT="0")
    log_path = tmp_path / "processor.log"
    process = start_processor(env, log_path)
    try:
        await wait_for_log_line(log_path, "processor start failed attempt=1", process)
        code = stop_service(process, log_path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    assert code == 0, log_path.read_text()[-3000:]
    assert "Traceback" not in log_path.read_text()


async def test_stopped_blocked_batch_not_dead_lettered(database_url, redis_url, redis, db, tmp_path):
    # A rebuild can hold the site's lock through several restarts. A batch cancelled at each stop did not
    # fail, so MAX_DELIVERIES stops must not park it in the dead-letter stream.
    env = service_env(database_url, redis_url, CONCURRENCY="1", BATCH_SIZE="1", RECLAIM_IDLE_MS="500",
                      STOP_TIMEOUT_S="1", METRICS_PORT="0", MAX_DELIVERIES="2")
    log_path = tmp_path / "processor.log"
    await import_into_stream(redis)
    async with site_locked(database_url):
        for _ in range(2):
            process = start_processor(env, log_path)
            await wait_for_lock_waiters(db, waiting=True)
            assert stop_service(process, log_path) == 0
            await wait_for_lock_waiters(db, waiting=False)

    last = start_processor(env, log_path)
    try:
        await wait_until_processed(redis, timeout_s=90)
    finally:
        assert stop_service(last, log_path) == 0
    assert await redis.xlen("weir:events:dead") == 0
    assert await truth(db) == {"rows": 4173, "human": 1777, "visitors": 1005, "sessions": 1126, "ids": 4173}
