"""The schema guard creates what is missing, changes nothing the second time, and reports drift."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from sinks.guard import run_guard
from sinks.schema import TABLES


async def test_first_run_creates_every_table(db):
    plan = await run_guard(db, timescaledb="off")

    names = {r["relname"] for r in await db.fetch(
        "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND relnamespace = 'public'::regnamespace")}
    assert {t.name for t in TABLES} <= names
    assert plan.drift == []
    assert await db.fetchval(
        "SELECT indnullsnotdistinct FROM pg_index WHERE indexrelid = 'uq_aggregated_metrics_key'::regclass") is True


async def test_second_run_changes_nothing(db, caplog):
    await run_guard(db, timescaledb="off")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sinks.guard"):
        plan = await run_guard(db, timescaledb="off")

    assert plan.changes == []
    assert plan.drift == []
    messages = [r.getMessage() for r in caplog.records if r.name == "sinks.guard"]
    assert len(messages) == 1
    assert messages[0].startswith("schema guard done changes=0 drift=0 layout=partitions")


async def test_two_guards_at_once_both_succeed(database_url):
    first, second = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        plans = await asyncio.gather(run_guard(first, timescaledb="off"), run_guard(second, timescaledb="off"))
    finally:
        await first.close()
        await second.close()

    assert sorted(len(p.changes) for p in plans)[0] == 0
    assert all(p.drift == [] for p in plans)


async def test_missing_column_is_added_back(db):
    await run_guard(db, timescaledb="off")
    await db.execute('ALTER TABLE session_fingerprints DROP COLUMN "orgType", DROP COLUMN asn')

    plan = await run_guard(db, timescaledb="off")

    assert sorted(c.description for c in plan.changes) == [
        'add column session_fingerprints."orgType"', "add column session_fingerprints.asn"]
    columns = {r["attname"] for r in await db.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'session_fingerprints'::regclass AND NOT attisdropped")}
    assert {"orgType", "asn"} <= columns


async def test_wrong_type_is_reported_not_changed(db):
    await run_guard(db, timescaledb="off")
    await db.execute("ALTER TABLE daily_metrics ALTER COLUMN value TYPE integer")

    plan = await run_guard(db, timescaledb="off")

    assert [d.description for d in plan.drift] == ['column daily_metrics."value" is integer, the code expects bigint']
    assert plan.drift[0].fix_sql == 'ALTER TABLE daily_metrics ALTER COLUMN "value" TYPE bigint'
    assert await db.fetchval("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                             "WHERE attrelid = 'daily_metrics'::regclass AND attname = 'value'") == "integer"


LEGACY_RAW_EVENTS = """
CREATE TABLE raw_events (
    id uuid PRIMARY KEY,
    session_id varchar(64) NOT NULL,
    user_id varchar(255),
    event_type varchar(100) NOT NULL,
    event_action varchar(255) NOT NULL,
    metadata jsonb DEFAULT '{}',
    timestamp timestamptz NOT NULL,
    created_at timestamptz NOT NULL
)
"""


async def test_legacy_raw_events_is_adopted(db):
    await db.execute(LEGACY_RAW_EVENTS)
    await db.execute("INSERT INTO raw_events VALUES (gen_random_uuid(), 's1', NULL, 'pageview', '/', '{}', now(), now())")

    plan = await run_guard(db, timescaledb="off")

    problems = [d.description for d in plan.drift if d.table == "raw_events"]
    assert problems == [
        "primary key is (id); the current layout uses (id, timestamp)",
        "raw_events is not partitioned by timestamp; it keeps working, without partition retention",
    ]
    assert await db.fetchval("SELECT count(*) FROM raw_events WHERE site = '' AND is_bot = false") == 1
