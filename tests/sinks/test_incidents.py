"""The two incidents the design exists for, replayed: a derived table's schema breaks on a live
database. Writes must fail loudly (log with entry ids, counters, /health degraded, freshness
warnings), park nothing silently, and a processor restart must repair the schema and catch up.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
from redis.asyncio import Redis

from query.api import create_api_app
from query.settings import ApiSettings
from sinks.sites import upsert_site
from streams.event import encode_entry
from streams.sites import Site
from tests.conftest import API_KEY, REPO, free_port, service_env, wait_until_processed, weir_command
from tests.sinks.test_derived import make_event

SITE = Site("incident.example", "UTC")
NETWORK_COLUMNS = ('"isGovernment"', '"orgType"', '"responseTier"', "org", "asn")


def events_for(prefix: str, count: int, base_ms: int) -> list:
    return [make_event(SITE.domain, f"{prefix}-{i % 7}", i, f"/page/{i % 5}", base_ms=base_ms) for i in range(count)]


async def push(redis: Redis, events: list) -> None:
    for start in range(0, len(events), 10):
        await redis.xadd("weir:events", encode_entry(events[start:start + 10]))


class ProcessorProcess:
    def __init__(self, env: dict, log_path, port: int) -> None:
        self.log_path = log_path
        self.port = port
        self.process = subprocess.Popen(weir_command("processor"), cwd=REPO, env=env,
                                        stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{self.port}{path}") as response:
                return response.status, await response.text()

    async def wait_ready(self) -> None:
        for _ in range(300):
            try:
                await self.get("/health")
                return
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        raise AssertionError(self.log_path.read_text()[-2000:])

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


async def wait_for(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError("condition not reached in time")


async def truth_and_derived(db) -> dict:
    row = await db.fetchrow("""
        SELECT (SELECT count(*) FROM raw_events) AS raw_rows,
               (SELECT count(DISTINCT session_id) FROM raw_events) AS raw_sessions,
               (SELECT count(*) FROM session_fingerprints) AS fingerprints,
               (SELECT coalesce(sum(pageviews), 0) FROM session_fingerprints) AS fingerprint_pageviews,
               (SELECT sum(value) FROM daily_metrics WHERE metric_name = 'pageviews' AND dimension_key IS NULL)
                   AS daily_pageviews,
               (SELECT sum(value) FROM aggregated_metrics WHERE metric_name = 'pageviews' AND dimension_key IS NULL)
                   AS hourly_pageviews,
               (SELECT sum(value) FROM daily_metrics WHERE metric_name = 'sessions' AND dimension_key IS NULL)
                   AS daily_sessions""")
    return dict(row)


async def api_answer(database_url: str, redis_url: str, path: str) -> tuple[int, dict]:
    port = free_port()
    settings = ApiSettings(NODE_ENV="development", DATABASE_URL=database_url, REDIS_URL=redis_url, API_KEYS=API_KEY,
                           PORT=port, STALE_AFTER_S=1)
    runner = aiohttp.web.AppRunner(create_api_app(settings))
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        day = datetime.now(timezone.utc).date()
        async with aiohttp.ClientSession(headers={"X-API-Key": API_KEY}) as http:
            async with http.get(f"http://127.0.0.1:{port}{path}",
                                params={"site": SITE.domain, "from": str(day - timedelta(days=2)), "to": str(day)}) as r:
                return r.status, await r.json()
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("breakage", "repair_log", "error_class"),
    [
        ("DROP INDEX uq_aggregated_metrics_key", "create index uq_aggregated_metrics_key", "InvalidColumnReferenceError"),
        ("ALTER TABLE session_fingerprints " + ", ".join(f"DROP COLUMN {c}" for c in NETWORK_COLUMNS),
         'add column session_fingerprints."orgType"', "UndefinedColumnError"),
    ],
    ids=["dedup-index-dropped", "network-columns-dropped"],
)
async def test_incident_is_loud_and_repaired_by_restart(database_url, redis_url, redis, db, tmp_path, breakage,
                                                         repair_log, error_class):
    await db.execute("SELECT 1")
    port = free_port()
    env = service_env(database_url, redis_url, CONCURRENCY="2", BATCH_SIZE="5", METRICS_PORT=str(port),
                      STALE_AFTER_S="1", RECLAIM_IDLE_MS="500")
    base_ms = int((datetime.now(timezone.utc) - timedelta(hours=3)).timestamp() * 1000)
    log = tmp_path / "processor.log"

    # Step 1: a healthy pipeline.
    first = ProcessorProcess(env, log, port)
    try:
        await first.wait_ready()
        await upsert_site(db, SITE)
        await push(redis, events_for("a", 60, base_ms))
        await wait_until_processed(redis)
        healthy = await truth_and_derived(db)
        assert healthy["raw_rows"] == healthy["daily_pageviews"] == 60

        # Step 2: break the schema under the running processor, then send more events.
        await db.execute(breakage)
        await push(redis, events_for("b", 40, base_ms + 90 * 60_000))

        async def degraded() -> bool:
            status, body = await first.get("/health")
            return status == 200 and '"status":"degraded"' in body and "batches failing since" in body
        await wait_for(degraded)

        # Step 3: loud everywhere, and nothing acknowledged or dropped.
        _, metrics_text = await first.get("/metrics")
        assert f'weir_batch_failures_total{{agent="raw-events",error="{error_class}"}}' in metrics_text
        assert f'weir_sink_write_failures_total{{error="{error_class}",table="raw_events"}}' in metrics_text
        assert (await redis.xpending("weir:events", "weir:processors"))["pending"] > 0
        assert await redis.xlen("weir:events:dead") == 0
        log_text = log.read_text()
        assert "batch failed agent=raw-events" in log_text
        assert "entry_ids=" in log_text
        async def answers_warn() -> bool:
            _, body = await api_answer(database_url, redis_url, "/api/overview")
            return body["freshness"]["stale"]
        await wait_for(answers_warn)
        for path in ("/api/overview", "/api/pages", "/api/traffic", "/api/audience", "/api/network"):
            status, body = await api_answer(database_url, redis_url, path)
            if status == 503:
                # A report whose query reads the broken column fails loudly instead of returning zeros.
                assert body["error"].startswith("the database schema does not match this version of Weir")
                continue
            assert status == 200
            assert body["freshness"]["stale"] is True
            assert any(" is stale: 4 stream entries have waited up to " in w for w in body["freshness"]["warnings"])
        _, health = await first.get("/health")
        assert "session_fingerprints was last written" in health
        assert "aggregated_metrics was last written" in health
        assert first.stop() == 0
    finally:
        if first.process.poll() is None:
            first.process.kill()

    # Step 4: a restart repairs the schema and catches up.
    second = ProcessorProcess(env, log, port)
    try:
        await second.wait_ready()
        await wait_until_processed(redis, timeout_s=60)

        async def healthy_again() -> bool:
            status, body = await second.get("/health")
            return status == 200 and '"status":"healthy"' in body
        await wait_for(healthy_again)
        assert second.stop() == 0
    finally:
        if second.process.poll() is None:
            second.process.kill()

    assert repair_log in log.read_text()
    totals = await truth_and_derived(db)
    assert totals["raw_rows"] == totals["daily_pageviews"] == totals["hourly_pageviews"] == 100
    assert totals["raw_sessions"] == totals["fingerprints"] == totals["daily_sessions"]
    assert totals["fingerprint_pageviews"] == 100
    assert await redis.xlen("weir:events:dead") == 0
