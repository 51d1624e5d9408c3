"""Retention drops raw_events older than RETENTION_DAYS, as whole UTC days, and nothing newer.

With RETENTION_DAYS=N and today D, the day D-N is the oldest kept: a row at D-N 00:00:00 stays,
a row at D-N-1 23:59:59.999999 goes.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from sinks.catalog import read_partitions
from sinks.guard import run_guard
from sinks.partitions import PartitionManager, day_start

TODAY = date(2024, 3, 20)
RETENTION_DAYS = 3
LAST_INSTANT = timedelta(days=1, microseconds=-1)


async def insert_day_edges(db, days: list[date]) -> None:
    """Insert two rows per day: at its first and at its last microsecond (UTC)."""
    rows = [(day_start(day) + offset,) for day in days for offset in (timedelta(0), LAST_INSTANT)]
    await db.executemany("""INSERT INTO raw_events (id, session_id, event_type, event_action, "timestamp", created_at)
                            VALUES (gen_random_uuid(), 's1', 'pageview', '/', $1, now())""", rows)


async def count_between(db, start: datetime, end: datetime) -> int:
    return await db.fetchval("""SELECT count(*) FROM raw_events WHERE "timestamp" >= $1 AND "timestamp" < $2""",
                             start, end)


async def test_retention_drops_only_older_days(db):
    await run_guard(db, timescaledb="off", retention_days=RETENTION_DAYS)
    manager = PartitionManager()
    days = [TODAY - timedelta(days=n) for n in range(6, -1, -1)]  # 03-14 .. 03-20
    await manager.ensure(db, set(days))
    await insert_day_edges(db, days)
    cutoff = day_start(TODAY - timedelta(days=RETENTION_DAYS))  # 2024-03-17 00:00 UTC

    dropped = await manager.maintain(db, RETENTION_DAYS, today=TODAY)

    assert dropped == ["raw_events_p20240314", "raw_events_p20240315", "raw_events_p20240316"]
    assert await count_between(db, datetime.min.replace(tzinfo=timezone.utc), cutoff) == 0
    assert await count_between(db, cutoff, day_start(TODAY + timedelta(days=1))) == 8
    oldest = await db.fetchval('SELECT min("timestamp") FROM raw_events')
    assert oldest == cutoff
    assert [p.name for p in await read_partitions(db, "raw_events")] == [
        f"raw_events_p202403{day}" for day in range(17, 25)]


async def test_retention_keeps_rows_inside_window(db):
    await run_guard(db, timescaledb="off", retention_days=90)
    manager = PartitionManager()
    days = [TODAY - timedelta(days=n) for n in (90, 30, 0)]
    await manager.ensure(db, set(days))
    await insert_day_edges(db, days)

    dropped = await manager.maintain(db, 90, today=TODAY)

    assert dropped == []
    assert await db.fetchval("SELECT count(*) FROM raw_events") == 6


async def test_retention_forgets_dropped_days(db):
    await run_guard(db, timescaledb="off")
    manager = PartitionManager()
    old_day = TODAY - timedelta(days=10)
    await manager.ensure(db, {old_day})
    await manager.drop_older_than(db, RETENTION_DAYS, today=TODAY)

    # A late event for the dropped day gets a new partition instead of failing its batch.
    created = await manager.ensure(db, {old_day})

    assert created == ["raw_events_p20240310"]


@pytest.fixture
async def partman_db(db):
    available = await db.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_partman'")
    if not available:
        pytest.skip("pg_partman extension not available on this server")
    await db.execute("CREATE SCHEMA partman")
    await db.execute("CREATE EXTENSION pg_partman SCHEMA partman")
    return db


async def test_partman_retention_drops_only_older_days(partman_db):
    db = partman_db
    await run_guard(db, timescaledb="off", retention_days=RETENTION_DAYS)
    # pg_partman compares with the server's clock, so the days are relative to its today.
    today = await db.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    days = [today - timedelta(days=n) for n in range(7, -1, -1)]
    manager = PartitionManager()
    await manager.ensure(db, set(days))
    await insert_day_edges(db, days)
    cutoff = day_start(today - timedelta(days=RETENTION_DAYS))
    expired = [p.name for p in await read_partitions(db, "raw_events") if not p.is_default and p.upper <= cutoff]

    dropped = await manager.maintain(db, RETENTION_DAYS)

    assert len(expired) == 4
    assert dropped == expired
    assert await count_between(db, datetime.min.replace(tzinfo=timezone.utc), cutoff) == 0
    assert await count_between(db, cutoff, day_start(today + timedelta(days=1))) == 8
    assert await db.fetchval('SELECT min("timestamp") FROM raw_events') == cutoff
