"""Rollups after late, merging and changing sessions equal a rebuild and counts of the same raw events.

Sessions merge and move their start across a local month end, turn into bots, arrive twice
and out of order, while months close, replays run in chunks and processors die with SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from datetime import date, datetime, timezone

import asyncpg
import pytest

from ops.replay_events import replay_events
from sinks.months import close_month
from sinks.rebuild import rebuild_range
from sinks.sites import upsert_site
from streams.bots import BotDetector
from streams.sites import Site
from tests.conftest import service_env, wait_until_processed
from tests.sinks import test_processor_faults as faults
from tests.sinks.test_derived import feed, make_event, processor, shuffled_batches, snapshot  # noqa: F401

SITE = Site("r.example", "America/New_York", ("www.r.example",))
# 2026-01-31 23:00 in New York (04:00 UTC on 1 February): sessions cross a local month end.
BASE_MS = int(datetime(2026, 2, 1, 4, 0, tzinfo=timezone.utc).timestamp() * 1000)
ROLLUPS = ("hourly", "daily", "monthly")


def event(visitor: str, minute: int, path: str = "/", **kwargs):
    return make_event(SITE.domain, visitor, minute, path, base_ms=BASE_MS, **kwargs)


async def rollups(conn: asyncpg.Connection) -> dict:
    """Return the nonzero rows of the hourly, daily and monthly rollup tables."""
    tables = await snapshot(conn)
    return {name: tables[name] for name in ROLLUPS}


async def assert_equals_rebuild(conn: asyncpg.Connection, site: Site = SITE) -> dict:
    """Check that rebuilding every local day of raw_events leaves the rollup rows as they were."""
    live = await rollups(conn)
    first, last = await conn.fetchrow(
        'SELECT min(("timestamp" AT TIME ZONE $1)::date), max(("timestamp" AT TIME ZONE $1)::date) FROM raw_events',
        site.timezone)
    await rebuild_range(conn, site, BotDetector(), first, last)
    rebuilt = await rollups(conn)
    for name in ROLLUPS:
        assert live[name] == rebuilt[name], name
    return live


async def test_late_events_across_month_end(processor, db):
    await upsert_site(db, SITE)
    await feed(processor, [[event("v", 70, "/c"), event("v", 0, "/a")]])
    await close_month(db, SITE.domain, date(2026, 1, 1))
    await feed(processor, [[event("v", 40, "/b")], [event("v", -20, "/z")], [event("v", 90, "/d", bot=True)]])
    await assert_equals_rebuild(db)


def random_pool(rng: random.Random) -> list:
    """Return events of three visitors around the month end: pageviews, signups with props, some bots."""
    events = []
    for visitor in ("v1", "v2", "v3"):
        for _ in range(rng.randint(1, 7)):
            minute = rng.choice(range(-90, 200, 5))
            kind = rng.choice(["pageview", "pageview", "signup"])
            item = event(visitor, minute, rng.choice(["/a", "/b", "/c"]) if kind == "pageview" else "signup",
                      kind=kind, bot=rng.random() < 0.1,
                      referrer=rng.choice([None, "https://www.google.com/", "https://www.r.example/x"]))
            if kind == "signup":
                item.props = {"plan": rng.choice(["free", "pro"]), "n": rng.randint(1, 2)}
            events.append(item)
    return events


@pytest.mark.parametrize("seed", range(16))
async def test_random_batches_equal_rebuild(processor, db, seed):
    await upsert_site(db, SITE)
    rng = random.Random(seed)
    pool = random_pool(rng)
    batches = shuffled_batches(pool, rng, rng.randint(0, 3), rng.randint(1, min(6, len(pool) - 1)))
    close_after = {date(2026, 1, 1): rng.randint(0, len(batches)), date(2026, 2, 1): rng.randint(0, len(batches))}
    for number, batch in enumerate(batches):
        for month, after in close_after.items():
            if number == after:
                await close_month(db, SITE.domain, month)
        await feed(processor, [batch])
    await assert_equals_raw_counts(db)
    await assert_equals_rebuild(db)


_INDEPENDENT = {
    "pageviews": """SELECT (r."timestamp" AT TIME ZONE $1)::date, count(*) FROM raw_events r
                     WHERE r.event_type = 'pageview' AND NOT r.is_bot GROUP BY 1""",
    "sessions": """SELECT (started_at AT TIME ZONE $1)::date, count(*) FROM session_fingerprints
                    WHERE NOT is_bot GROUP BY 1""",
    "bounces": """SELECT (started_at AT TIME ZONE $1)::date, count(*) FROM session_fingerprints
                   WHERE NOT is_bot AND is_bounce GROUP BY 1""",
    "session_duration_s": """SELECT (started_at AT TIME ZONE $1)::date, sum(duration_s) FROM session_fingerprints
                              WHERE NOT is_bot AND duration_s <> 0 GROUP BY 1""",
    "visitors": """SELECT (r."timestamp" AT TIME ZONE $1)::date, count(DISTINCT visitor_id) FROM raw_events r
                    WHERE NOT r.is_bot GROUP BY 1""",
}


async def assert_equals_raw_counts(conn: asyncpg.Connection, site: Site = SITE) -> None:
    """Check the daily totals, exit pages and closed months against counts over raw_events and fingerprints."""
    for metric, sql in _INDEPENDENT.items():
        expected = {r[0]: r[1] for r in await conn.fetch(sql, site.timezone) if r[1]}
        stored = {r[0]: r[1] for r in await conn.fetch(
            "SELECT date, value FROM daily_metrics WHERE metric_name = $1 AND dimension_key IS NULL AND value <> 0",
            metric)}
        assert stored == expected, metric
    exits = {tuple(r) for r in await conn.fetch(
        "SELECT (started_at AT TIME ZONE $1)::date, coalesce(exit_page, ''), count(*) FROM session_fingerprints "
        "WHERE NOT is_bot GROUP BY 1, 2", site.timezone)}
    assert exits == {tuple(r) for r in await conn.fetch(
        "SELECT date, dimension_value, value FROM daily_metrics WHERE metric_name = 'sessions' "
        "AND dimension_key = 'exit_page' AND value <> 0")}
    per_session = await conn.fetch("""SELECT f.session_id, f.pageviews + f.events AS stored, count(r.id) AS raw
                                        FROM session_fingerprints f LEFT JOIN raw_events r USING (site, session_id)
                                       GROUP BY 1, 2 HAVING f.pageviews + f.events <> count(r.id)""")
    assert [tuple(r) for r in per_session] == []
    months = await conn.fetch("""SELECT m.month, m.metric_name, m.value,
                                        (SELECT coalesce(sum(d.value), 0) FROM daily_metrics d
                                          WHERE d.site = m.site AND d.metric_name = m.metric_name
                                            AND d.dimension_key IS NULL
                                            AND date_trunc('month', d.date) = m.month) AS days
                                   FROM monthly_metrics m
                                  WHERE m.dimension_key IS NULL AND m.metric_name NOT LIKE 'visitors%'""")
    assert [tuple(r) for r in months if r["value"] != r["days"]] == []


async def feed_random_pool(processor, db, seed: int) -> None:
    """Close January, then feed one random pool of events in shuffled, partly repeated batches."""
    await upsert_site(db, SITE)
    rng = random.Random(seed)
    pool = random_pool(rng)
    await close_month(db, SITE.domain, date(2026, 1, 1))
    for batch in shuffled_batches(pool, rng, 2, rng.randint(1, min(6, len(pool) - 1))):
        await feed(processor, [batch])


@pytest.mark.parametrize("seed", range(6))
async def test_chunked_replays_equal_raw_counts(processor, db, database_url, seed):
    await feed_random_pool(processor, db, seed)
    await assert_equals_raw_counts(db)
    # Chrome becomes a bot, then a human again, rebuilt in chunks of one day.
    for patterns, only in ((["Chrome/120"], {"sessions"}), ([], {"sessions"}), ([], {"rollups"})):
        await replay_events(database_url, SITE.domain, date(2026, 1, 30), date(2026, 2, 2), only=only,
                            chunk_days=1, bot_patterns=patterns, progress=None)
        await assert_equals_raw_counts(db)
    await assert_equals_rebuild(db)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("days", [(date(2026, 1, 31), date(2026, 1, 31)), (date(2026, 2, 1), date(2026, 2, 1)),
                                  (date(2026, 1, 28), date(2026, 1, 31))])
async def test_partial_replays_equal_raw_counts(processor, db, database_url, seed, days):
    await feed_random_pool(processor, db, seed)
    for patterns, only in ((["Chrome/120"], {"sessions"}), (["Chrome/120"], {"rollups"}), ([], {"sessions"})):
        await replay_events(database_url, SITE.domain, *days, only=only, bot_patterns=patterns, progress=None)
        await assert_equals_raw_counts(db)
    await feed(processor, [[event("v1", 30, "/late"), event("v4", 100, "/x")]])
    await assert_equals_raw_counts(db)




async def test_sigkill_then_two_replicas(database_url, redis_url, redis, db, tmp_path):
    env = service_env(database_url, redis_url, CONCURRENCY="2", BATCH_SIZE="7", RECLAIM_IDLE_MS="500",
                      METRICS_PORT="0")
    await faults.import_into_stream(redis)
    for attempt in range(3):
        first = faults.start_processor(env, tmp_path / "processor.log")
        try:
            await faults.wait_for_rows(db, 300 * (attempt + 1))
            await asyncio.sleep(0.05 * attempt)
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
    replicas = [faults.start_processor(env, tmp_path / f"processor-{i}.log") for i in range(2)]
    try:
        await wait_until_processed(redis, timeout_s=120)
    finally:
        for process in replicas:
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(30) for process in replicas]

    assert codes == [0, 0]
    assert await faults.truth(db) == {"rows": 4173, "human": 1777, "visitors": 1005, "sessions": 1126, "ids": 4173}
    await assert_equals_raw_counts(db, faults.SITE)
    await assert_equals_rebuild(db, faults.SITE)


@pytest.mark.parametrize("seed", range(4))
async def test_replay_beside_live_batches(processor, db, database_url, seed):
    await upsert_site(db, SITE)
    rng = random.Random(seed)
    pool = random_pool(rng) + random_pool(rng)
    batches = shuffled_batches(pool, rng, 3, min(8, len(pool) - 1))
    await close_month(db, SITE.domain, date(2026, 1, 1))
    await feed(processor, batches[:2])
    replay = asyncio.create_task(replay_events(database_url, SITE.domain, date(2026, 1, 30), date(2026, 2, 2),
                                               only={"sessions"}, chunk_days=1, progress=None))
    for batch in batches[2:]:
        await feed(processor, [batch])
        await asyncio.sleep(0)
    await replay
    await assert_equals_raw_counts(db)
    await assert_equals_rebuild(db)
