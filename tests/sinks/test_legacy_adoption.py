"""A database created by the platform Weir replaces is adopted as it is, and its move is scripted.

Its `raw_events` has a primary key on `id` alone and no partitioning. Weir keeps writing into
it (the sink's ON CONFLICT DO NOTHING has no conflict target for this reason), and the guard
reports the difference from the current layout with the statements that would move it.
"""

from __future__ import annotations

import os
import subprocess

import aiohttp
import asyncpg
import pytest

from sinks.guard import run_guard
from sinks.sites import publish_sites, upsert_site
from streams.sites import Site, SiteDirectory
from tests.conftest import REPO, wait_until_processed, weir_command

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
LEGACY_INDEXES = """
CREATE INDEX idx_raw_events_session_id ON raw_events (session_id);
CREATE INDEX idx_raw_events_user_id ON raw_events (user_id);
CREATE INDEX idx_raw_events_event_type ON raw_events (event_type);
CREATE INDEX idx_raw_events_metadata ON raw_events USING gin (metadata)
"""
LEGACY_DAILY_METRICS = """
CREATE TABLE daily_metrics (
    date date NOT NULL,
    metric_name varchar(100) NOT NULL,
    dimension_key varchar(100),
    dimension_value varchar(1024),
    value bigint NOT NULL DEFAULT 0
)
"""
LEGACY_ROWS = """
INSERT INTO raw_events VALUES
    ('00000000-0000-4000-8000-000000000001', 'old-session', NULL, 'pageview', '/old', '{}',
     '2024-01-15 10:00+00', '2024-01-15 10:00+00'),
    ('00000000-0000-4000-8000-000000000002', 'old-session', NULL, 'pageview', '/older', '{}',
     '2024-01-14 09:00+00', '2024-01-14 09:00+00');
INSERT INTO daily_metrics VALUES ('2024-01-15', 'pageviews', NULL, NULL, 1)
"""
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
LAYOUT_DRIFT = [
    "primary key is (id); the current layout uses (id, timestamp)",
    "raw_events is not partitioned by timestamp; it keeps working, without partition retention",
]


async def create_legacy_tables(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in (LEGACY_RAW_EVENTS, LEGACY_INDEXES, LEGACY_DAILY_METRICS, LEGACY_ROWS):
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
async def legacy_database(database_url):
    """The test database with the replaced platform's tables and rows, made before the stack starts."""
    await create_legacy_tables(database_url)
    return database_url


async def test_legacy_database_keeps_working(legacy_database, stack, db, redis):
    # Step 1: add the site the way `weir site add` does.
    await upsert_site(db, Site("example.com", "UTC"))
    await publish_sites(db, SiteDirectory(redis))

    # Step 2: post three pageviews through the collector.
    async with aiohttp.ClientSession(headers={"User-Agent": BROWSER}) as http:
        for page in ("/a", "/b", "/c"):
            async with http.post(f"{stack.collector_url}/collect",
                                 json={"site": "example.com", "url": f"https://example.com{page}"}) as response:
                assert response.status == 202, await response.text()
    await wait_until_processed(redis)

    # Step 3: the events landed next to the old rows, on the old key.
    rows = await db.fetch('SELECT event_action, site FROM raw_events ORDER BY "timestamp"')
    assert [(r["event_action"], r["site"]) for r in rows] == [
        ("/older", ""), ("/old", ""), ("/a", "example.com"), ("/b", "example.com"), ("/c", "example.com")]
    assert await db.fetchval("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                             "WHERE conrelid = 'raw_events'::regclass AND contype = 'p'") == "PRIMARY KEY (id)"
    assert await db.fetchval("SELECT sum(value) FROM daily_metrics WHERE site = 'example.com' "
                             "AND metric_name = 'pageviews' AND dimension_key IS NULL") == 3
    assert await db.fetchval("SELECT count(*) FROM daily_metrics WHERE site = ''") == 1

    # Step 4: `weir schema check` reports the layout difference and exits 1.
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "VIRTUAL_ENV"}}
    result = subprocess.run(weir_command("schema", "check", "--timescaledb", "off"), cwd=REPO,
                            env={**env, "DATABASE_URL": legacy_database}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        "schema differs from the code: 0 missing change(s), 2 drift item(s) (layout: partitions)")
    assert [line.removeprefix("drift    raw_events: ") for line in result.stdout.splitlines()
            if line.startswith("drift    ")] == LAYOUT_DRIFT
    assert "    ALTER TABLE raw_events RENAME TO raw_events_legacy;\n" in result.stdout


async def test_move_statements_reach_current_layout(database_url, db):
    await create_legacy_tables(database_url)
    plan = await run_guard(db, timescaledb="off")
    assert [d.description for d in plan.drift if d.table == "raw_events"] == LAYOUT_DRIFT
    move = plan.drift[1].fix_sql
    before, after = move.split("-- run `weir schema apply`: it creates raw_events on the current layout. Then:\n")

    await db.execute(before)
    await run_guard(db, timescaledb="off")
    await db.execute(after)

    assert (await run_guard(db, timescaledb="off")).clean
    assert await db.fetchval("SELECT count(*) FROM raw_events") == 2
    assert await db.fetchval("SELECT count(*) FROM raw_events_legacy") == 2
    partitions = await db.fetch("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                "WHERE i.inhparent = 'raw_events'::regclass ORDER BY 1")
    assert [r["relname"] for r in partitions] == ["raw_events_p20240114", "raw_events_p20240115"]
