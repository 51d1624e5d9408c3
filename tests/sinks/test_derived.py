"""Derived tables equal what the stored events say, whatever the order, duplication or batching."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timezone

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sinks import sessions
from sinks.processor import Processor
from sinks.settings import ProcessorSettings
from sinks.sites import upsert_site
from streams.consumer import Entry
from streams.event import Event, encode_entry
from streams.ids import stable_event_id
from streams.partitions import partition_of
from streams.sites import Site

MINUTE_MS = 60_000
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
DERIVED_SNAPSHOT = {
    "raw": "SELECT id::text, session_id FROM raw_events ORDER BY 1",
    "fingerprints": "SELECT session_id, started_at, ended_at, entry_page, exit_page, pageviews, events, duration_s, "
                    "is_bounce, is_bot, source, medium, browser FROM session_fingerprints ORDER BY 1",
    "hourly": "SELECT bucket, metric_name, dimension_key, dimension_value, value FROM aggregated_metrics "
              "WHERE value <> 0 ORDER BY 1, 2, 3 NULLS FIRST, 4 NULLS FIRST",
    "daily": "SELECT date, metric_name, dimension_key, dimension_value, value FROM daily_metrics "
             "WHERE value <> 0 ORDER BY 1, 2, 3 NULLS FIRST, 4 NULLS FIRST",
    "monthly": "SELECT month, metric_name, dimension_key, dimension_value, value FROM monthly_metrics "
               "WHERE value <> 0 ORDER BY 1, 2, 3 NULLS FIRST, 4 NULLS FIRST",
    "visitors": "SELECT date, visitor_id FROM daily_visitors ORDER BY 1, 2",
}


def make_event(site: str, visitor: str, minute: int, path: str, *, kind: str = "pageview", bot: bool = False,
               referrer: str | None = None, base_ms: int = 1_772_000_000_000) -> Event:
    timestamp_ms = base_ms + minute * MINUTE_MS
    client_id = f"{visitor}:{minute}:{path}:{kind}"
    return Event(id=str(stable_event_id(site, client_id, timestamp_ms)), site=site, type=kind, action=path,
                 timestamp_ms=timestamp_ms, received_ms=timestamp_ms, visitor_id=visitor,
                 url=f"https://{site}{path}", referrer=referrer, user_agent=BOT if bot else CHROME, ip="192.0.2.1")


async def snapshot(conn: asyncpg.Connection) -> dict:
    return {name: [tuple(r) for r in await conn.fetch(sql)] for name, sql in DERIVED_SNAPSHOT.items()}


@pytest.fixture
async def processor(database_url: str, redis_url: str):
    settings_ = ProcessorSettings(NODE_ENV="development", REDIS_URL=redis_url, DATABASE_URL=database_url,
                                  METRICS_PORT=0)
    proc = Processor(settings_)
    await proc.start()
    yield proc
    await proc.close()


async def feed(proc: Processor, batches: list[list[Event]]) -> None:
    for number, events in enumerate(batches):
        await proc.handle_batch([Entry(f"{number}-0", encode_entry(events))])


def shuffled_batches(events: list, rng: random.Random, duplicates: int, cuts: int) -> list[list]:
    """Return `events` plus `duplicates` of them drawn again, shuffled and cut into `cuts` + 1 batches."""
    shuffled = events + rng.sample(events, duplicates)
    rng.shuffle(shuffled)
    ends = sorted(rng.sample(range(1, len(shuffled)), cuts))
    return [shuffled[a:b] for a, b in zip([0, *ends], [*ends, len(shuffled)])]


async def truncate_all(conn: asyncpg.Connection) -> None:
    await conn.execute("TRUNCATE raw_events, session_fingerprints, aggregated_metrics, daily_metrics, monthly_metrics, "
                       "daily_visitors")


EVENT_POOL_SITE = Site("k.example", "Asia/Kathmandu", ("www.k.example",))


def event_pool() -> list[Event]:
    """Two visitors with sessions that late events can bridge, a bot, and a custom event."""
    events = []
    for minute in (0, 10, 45, 70, 75, 140, 200, 215):
        events.append(make_event("k.example", "v1", minute, f"/p{minute % 3}", referrer="https://www.google.com/"))
    for minute in (5, 50, 52, 300):
        events.append(make_event("k.example", "v2", minute, "/", referrer="https://news.ycombinator.com/item"))
    events.append(make_event("k.example", "v2", 51, "signup", kind="signup"))
    events.append(make_event("k.example", "bot", 20, "/robots", bot=True))
    return events


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000))
async def test_any_order_duplication_gives_identical_tables(processor, db, seed):
    await upsert_site(db, EVENT_POOL_SITE)
    pool = event_pool()
    await truncate_all(db)
    await feed(processor, [pool])
    expected = await snapshot(db)

    rng = random.Random(seed)
    duplicates = rng.randint(0, len(pool))
    batches = shuffled_batches(pool, rng, duplicates, rng.randint(0, 6))
    await truncate_all(db)
    await feed(processor, batches)

    assert await snapshot(db) == expected


async def test_bridging_event_merges_sessions_and_rollups(processor, db):
    site = Site("m.example", "UTC")
    await upsert_site(db, site)
    await feed(processor, [[make_event("m.example", "v", 0, "/a"), make_event("m.example", "v", 50, "/c")]])
    before = await db.fetchval("SELECT value FROM daily_metrics WHERE metric_name = 'sessions' AND dimension_key IS NULL")

    await feed(processor, [[make_event("m.example", "v", 25, "/b")]])

    fingerprints = await db.fetch("SELECT entry_page, exit_page, pageviews, duration_s, is_bounce FROM session_fingerprints")
    assert before == 2
    assert [tuple(r) for r in fingerprints] == [("/a", "/c", 3, 3000, False)]
    assert await db.fetchval("SELECT value FROM daily_metrics WHERE metric_name = 'sessions' AND dimension_key IS NULL") == 1
    assert await db.fetchval("SELECT value FROM daily_metrics WHERE metric_name = 'bounces' AND dimension_key IS NULL") == 0
    assert await db.fetchval("SELECT count(DISTINCT session_id) FROM raw_events") == 1


async def test_daylight_saving_day_adds_up(processor, db):
    # 25 October 2026: Berlin goes from UTC+2 to UTC+1 at 03:00 local, so the day has 25 hours.
    site = Site("b.example", "Europe/Berlin")
    await upsert_site(db, site)
    start = int(datetime(2026, 10, 24, 21, 30, tzinfo=timezone.utc).timestamp() * 1000)
    events = [make_event("b.example", f"v{i}", i * 40, "/", base_ms=start) for i in range(40)]
    await feed(processor, [events])

    day_total = await db.fetchval("SELECT value FROM daily_metrics WHERE date = '2026-10-25' "
                                  "AND metric_name = 'pageviews' AND dimension_key IS NULL")
    raw_total = await db.fetchval("""SELECT count(*) FROM raw_events WHERE "timestamp" >= '2026-10-25 00:00+02'
                                     AND "timestamp" < '2026-10-26 00:00+01'""")
    hours = await db.fetch("""SELECT bucket, value FROM aggregated_metrics WHERE metric_name = 'pageviews'
                               AND bucket >= '2026-10-25 00:00+02' AND bucket < '2026-10-26 00:00+01' ORDER BY 1""")
    assert day_total == raw_total == 38
    assert sum(r["value"] for r in hours) == 38
    assert len({r["bucket"] for r in hours}) == len(hours)


async def test_half_hour_zone_buckets_start_on_local_hours(processor, db):
    site = Site("i.example", "Asia/Kolkata")
    await upsert_site(db, site)
    start = int(datetime(2026, 3, 1, 18, 0, tzinfo=timezone.utc).timestamp() * 1000)  # 23:30 local
    await feed(processor, [[make_event("i.example", "v", m, "/", base_ms=start) for m in (0, 20, 40)]])

    days = await db.fetch("SELECT date, value FROM daily_metrics WHERE metric_name = 'pageviews' "
                          "AND dimension_key IS NULL ORDER BY 1")
    buckets = await db.fetch("SELECT bucket, value FROM aggregated_metrics WHERE metric_name = 'pageviews' ORDER BY 1")
    assert [(str(r["date"]), r["value"]) for r in days] == [("2026-03-01", 2), ("2026-03-02", 1)]
    assert [(r["bucket"].isoformat(), r["value"]) for r in buckets] == [
        ("2026-03-01T17:30:00+00:00", 2), ("2026-03-01T18:30:00+00:00", 1)]


async def test_batch_over_visitor_lock_limit_gives_same_tables(processor, db, monkeypatch):
    await upsert_site(db, EVENT_POOL_SITE)
    pool = event_pool()
    await feed(processor, [pool])
    expected = await snapshot(db)
    await truncate_all(db)

    monkeypatch.setattr(sessions, "MAX_VISITOR_LOCKS", 1)
    await feed(processor, [pool])

    assert await snapshot(db) == expected


async def hold_group_lock(conn: asyncpg.Connection, visitor: str, *, exclusive: bool) -> None:
    """Take, in `conn`'s transaction, the lock of the visitor group of `visitor` on the event pool's site."""
    group = partition_of(EVENT_POOL_SITE.domain, visitor, sessions.VISITOR_GROUPS)
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    await conn.fetchval(f"SELECT {function}($1, hashtext($2 || ':' || $3::int))", sessions.GROUP_LOCK_CLASS,
                        EVENT_POOL_SITE.domain, group)


async def feed_while_group_locked(processor, database_url: str, events, visitor: str, exclusive: bool) -> bool:
    """Feed `events` while another connection holds `visitor`'s group lock; return whether the batch waited."""
    writer = await asyncpg.connect(database_url)
    try:
        async with writer.transaction():
            await hold_group_lock(writer, visitor, exclusive=exclusive)
            batch = asyncio.create_task(feed(processor, [events]))
            await asyncio.sleep(0.5)
            waited = not batch.done()
        await asyncio.wait_for(batch, 30)
    finally:
        await writer.close()
    return waited


async def test_batch_over_visitor_lock_limit_waits_for_group(processor, db, database_url, monkeypatch):
    monkeypatch.setattr(sessions, "MAX_VISITOR_LOCKS", 1)
    await upsert_site(db, EVENT_POOL_SITE)

    # A shared lock, as a batch of few visitors holds it.
    waited = await feed_while_group_locked(processor, database_url, event_pool(), "v1", exclusive=False)

    assert waited
    assert await db.fetchval("SELECT count(*) FROM raw_events") == len(event_pool())


async def test_batch_waits_for_its_group_held_exclusively(processor, db, database_url):
    await upsert_site(db, EVENT_POOL_SITE)
    pool = [e for e in event_pool() if e.visitor_id == "v1"]

    # An exclusive lock, as a large batch of the same group holds it.
    waited = await feed_while_group_locked(processor, database_url, pool, "v1", exclusive=True)

    assert waited
    assert await db.fetchval("SELECT count(*) FROM raw_events") == len(pool)


async def test_batch_ignores_other_visitor_groups(processor, db, database_url):
    await upsert_site(db, EVENT_POOL_SITE)
    pool = [e for e in event_pool() if e.visitor_id == "v1"]
    own_group = partition_of(EVENT_POOL_SITE.domain, "v1", sessions.VISITOR_GROUPS)
    other = next(f"w{n}" for n in range(1000)
                 if partition_of(EVENT_POOL_SITE.domain, f"w{n}", sessions.VISITOR_GROUPS) != own_group)
    writer = await asyncpg.connect(database_url)
    try:
        async with writer.transaction():
            await hold_group_lock(writer, other, exclusive=True)  # as a large batch of other visitors does
            await asyncio.wait_for(feed(processor, [pool]), 10)
    finally:
        await writer.close()

    assert await db.fetchval("SELECT count(*) FROM raw_events") == len(pool)


async def test_session_of_two_agents_is_order_free(processor, db):
    # A visitor keyed by an SDK's anonymous id can send one session from two browsers and networks.
    await upsert_site(db, EVENT_POOL_SITE)
    firefox = make_event("k.example", "anon", 0, "/")
    firefox.user_agent, firefox.ip = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0", "8.8.8.8"
    chrome = make_event("k.example", "anon", 5, "/b")
    chrome.ip = "81.2.69.160"
    query = "SELECT browser, country, org FROM session_fingerprints"

    await feed(processor, [[firefox], [chrome]])
    firefox_first = [tuple(r) for r in await db.fetch(query)]
    daily = (await snapshot(db))["daily"]
    await truncate_all(db)
    await feed(processor, [[chrome], [firefox]])

    assert firefox_first == [("Chrome", "GB", "Andrews & Arnold Ltd")]
    assert [tuple(r) for r in await db.fetch(query)] == firefox_first
    assert (await snapshot(db))["daily"] == daily
