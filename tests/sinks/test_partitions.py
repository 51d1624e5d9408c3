"""Daily partitions of raw_events: created on demand and ahead, by Weir itself or through pg_partman."""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta, timezone

import asyncpg
import pytest

from sinks import metrics, partman
from sinks.catalog import Extension, PartitionRange, parse_version, read_partitions
from sinks.guard import run_guard
from sinks.partitions import PartitionManager, covers, day_start

INSERT_AT = """INSERT INTO raw_events (id, session_id, event_type, event_action, "timestamp", created_at)
               VALUES (gen_random_uuid(), 's1', 'pageview', '/', $1, now())"""


def bounded(name: str, lower: str, upper: str) -> PartitionRange:
    return PartitionRange(name, datetime.fromisoformat(lower), datetime.fromisoformat(upper))


def test_covers_whole_day_cases():
    day = date(2024, 1, 15)
    halves = [bounded("a", "2024-01-15T00:00+00:00", "2024-01-15T12:00+00:00"),
              bounded("b", "2024-01-15T12:00+00:00", "2024-01-16T00:00+00:00")]
    shifted = [bounded("c", "2024-01-14T23:00+00:00", "2024-01-15T23:00+00:00")]

    assert covers(halves, day) is True
    assert covers(halves[:1], day) is False
    assert covers(shifted, day) is False
    assert covers([PartitionRange("raw_events_default", None, None)], day) is False
    assert covers(halves, date(2024, 1, 16)) is False


def test_parse_version_cases():
    assert parse_version("4.7.2") == (4, 7, 2)
    assert parse_version("5.1.0-beta") == (5, 1, 0)
    assert parse_version("2.14") == (2, 14)
    assert parse_version("dev") == ()


PARTMAN_4 = Extension("pg_partman", "partman", "4.7.2")
PARTMAN_5 = Extension("pg_partman", "partman", "5.2.4")


def test_create_parent_sql_by_version():
    start = datetime(2024, 1, 16, tzinfo=timezone.utc)

    assert partman.create_parent_sql(PARTMAN_4, "public.raw_events", "timestamp", 4) == (
        "SELECT \"partman\".create_parent(p_parent_table => 'public.raw_events', p_control => 'timestamp', "
        "p_type => 'native', p_interval => '1 day', p_premake => 4, p_automatic_maintenance => 'off', "
        "p_jobmon => false)")
    assert partman.create_parent_sql(PARTMAN_5, "public.raw_events", "timestamp", 4, start) == (
        "SELECT \"partman\".create_parent(p_parent_table => 'public.raw_events', p_control => 'timestamp', "
        "p_interval => '1 day', p_type => 'range', p_default_table => false, p_premake => 4, "
        "p_automatic_maintenance => 'off', p_jobmon => false, p_start_partition => '2024-01-16T00:00:00+00:00')")


def test_register_sql_sets_retention():
    sql = partman.register_sql(PARTMAN_5, "public.raw_events", "timestamp", 4, 30)

    assert sql.splitlines() == [
        "SET LOCAL TimeZone TO 'UTC';",
        partman.create_parent_sql(PARTMAN_5, "public.raw_events", "timestamp", 4) + ";",
        "UPDATE \"partman\".part_config SET retention = '30 days', retention_keep_table = false, "
        "retention_keep_index = false, infinite_time_partitions = true WHERE parent_table = 'public.raw_events'",
    ]
    assert partman.partition_data_sql(PARTMAN_5, "public.raw_events") == (
        "CALL \"partman\".partition_data_proc('public.raw_events')")


async def names(db) -> list[str]:
    return [p.name for p in await read_partitions(db, "raw_events")]


async def test_ensure_creates_missing_day_once(db):
    await run_guard(db, timescaledb="off")
    manager = PartitionManager()

    first = await manager.ensure(db, {date(2024, 1, 15), date(2024, 1, 16)})
    again = await manager.ensure(db, {date(2024, 1, 15)})
    fresh = await PartitionManager().ensure(db, {date(2024, 1, 16)})

    assert first == ["raw_events_p20240115", "raw_events_p20240116"]
    assert again == []
    assert fresh == []
    assert await names(db) == ["raw_events_p20240115", "raw_events_p20240116"]


async def test_partition_bounds_are_utc_days(db):
    await run_guard(db, timescaledb="off")
    await db.execute("SET TimeZone TO 'America/New_York'")
    await PartitionManager().ensure(db, {date(2024, 1, 15)})

    partitions = await read_partitions(db, "raw_events")

    assert [(p.lower, p.upper) for p in partitions] == [
        (datetime(2024, 1, 15, tzinfo=timezone.utc), datetime(2024, 1, 16, tzinfo=timezone.utc))]


async def test_ensure_recognizes_other_names(db):
    await run_guard(db, timescaledb="off")
    await db.execute("CREATE TABLE raw_events_p2024_01_15 PARTITION OF raw_events "
                     "FOR VALUES FROM ('2024-01-15 00:00+00') TO ('2024-01-16 00:00+00')")

    created = await PartitionManager().ensure(db, {date(2024, 1, 15)})

    assert created == []
    assert await names(db) == ["raw_events_p2024_01_15"]


async def test_two_managers_create_day_once(database_url):
    first, second = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        await run_guard(first, timescaledb="off")
        results = await asyncio.gather(PartitionManager().ensure(first, {date(2024, 1, 15)}),
                                       PartitionManager().ensure(second, {date(2024, 1, 15)}))
        partitions = await names(first)
    finally:
        await first.close()
        await second.close()

    assert sorted(map(len, results)) == [0, 1]
    assert partitions == ["raw_events_p20240115"]


async def test_maintain_creates_days_ahead(db):
    await run_guard(db, timescaledb="off")
    counter = metrics.PARTITIONS_CREATED.labels("raw_events")
    before = counter._value.get()  # noqa: SLF001 - prometheus_client has no public read of one sample

    dropped = await PartitionManager().maintain(db, 90, today=date(2024, 1, 15))

    assert dropped == []
    assert await names(db) == [f"raw_events_p202401{day}" for day in range(15, 20)]
    assert counter._value.get() - before == 5  # noqa: SLF001


async def test_default_partition_rows_are_drift(db):
    await run_guard(db, timescaledb="off")
    await db.execute("CREATE TABLE raw_events_default PARTITION OF raw_events DEFAULT")
    await db.execute(INSERT_AT, datetime(2024, 1, 15, 10, tzinfo=timezone.utc))
    await db.execute(INSERT_AT, datetime(2024, 1, 16, 10, tzinfo=timezone.utc))

    plan = await run_guard(db, timescaledb="off")

    assert [d.description for d in plan.drift] == [
        "raw_events_default holds rows outside the daily partitions; retention never drops them"]
    fix = plan.drift[0].fix_sql
    assert fix.splitlines()[0] == "ALTER TABLE raw_events DETACH PARTITION raw_events_default;"
    assert fix.splitlines()[-1] == "-- after checking the copy: DROP TABLE raw_events_default"

    # The operator's statements move both rows into daily partitions.
    detach, rest = fix.split(";\n", 1)
    create_days, copy = rest.split("END $$;\n")
    await db.execute(detach)
    await db.execute(create_days + "END $$")
    await db.execute(copy.split(";\n")[0])
    assert await names(db) == ["raw_events_p20240115", "raw_events_p20240116"]
    assert await db.fetchval("SELECT count(*) FROM raw_events") == 2
    assert (await run_guard(db, timescaledb="off")).clean


# pg_partman, where the server has it.


@pytest.fixture
async def partman_db(db):
    available = await db.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_partman'")
    if not available:
        pytest.skip("pg_partman extension not available on this server")
    await db.execute("CREATE SCHEMA partman")
    await db.execute("CREATE EXTENSION pg_partman SCHEMA partman")
    return db


async def partman_major(db) -> int:
    return parse_version(await db.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'"))[0]


def partman_name(major: int, day: date) -> str:
    return f"raw_events_p{day:%Y_%m_%d}" if major < 5 else f"raw_events_p{day:%Y%m%d}"


async def test_guard_registers_with_partman(partman_db):
    db = partman_db
    major = await partman_major(db)
    today = await db.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")

    plan = await run_guard(db, timescaledb="off", retention_days=30)
    again = await run_guard(db, timescaledb="off", retention_days=30)

    assert plan.layout == "pg_partman"
    assert again.clean
    config = await db.fetchrow("SELECT partition_interval, retention, retention_keep_table, automatic_maintenance "
                               "FROM partman.part_config WHERE parent_table = 'public.raw_events'")
    assert dict(config) == {"partition_interval": "1 day", "retention": "30 days", "retention_keep_table": False,
                            "automatic_maintenance": "off"}
    expected = [partman_name(major, today + timedelta(days=offset)) for offset in range(-4, 5)]
    assert await names(db) == (["raw_events_default"] if major < 5 else []) + expected


async def test_ensure_creates_through_partman(partman_db):
    db = partman_db
    major = await partman_major(db)
    await run_guard(db, timescaledb="off", retention_days=90)
    old_day = await db.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date - 40")

    created = await PartitionManager().ensure(db, {old_day})
    await db.execute(INSERT_AT, day_start(old_day) + timedelta(hours=23, minutes=59))

    assert created == [partman_name(major, old_day)]
    assert await db.fetchval(f"SELECT count(*) FROM {partman_name(major, old_day)}") == 1


async def test_weir_named_partitions_adopted_by_partman(partman_db):
    db = partman_db
    major = await partman_major(db)
    soon = await db.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date + 2")
    await db.execute("DROP EXTENSION pg_partman")
    await run_guard(db, timescaledb="off")
    await PartitionManager().ensure(db, {date(2024, 1, 15), soon})
    await db.execute("CREATE EXTENSION pg_partman SCHEMA partman")

    plan = await run_guard(db, timescaledb="off", retention_days=90)

    if major < 5:
        version = await db.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'")
        assert [d.description for d in plan.drift] == [
            f"raw_events has 2 partition(s) named raw_events_pYYYYMMDD, which pg_partman {version} "
            "cannot read; Weir keeps maintaining them itself"]
        rename = plan.drift[0].fix_sql.split(";\n-- then run")[0]
        await db.execute(rename)
        plan = await run_guard(db, timescaledb="off", retention_days=90)
    assert plan.drift == []
    register = plan.changes[0]
    assert register.description.startswith("register raw_events with pg_partman")
    # pg_partman starts after the newest partition, so the two never overlap.
    assert f"p_start_partition => '{day_start(soon + timedelta(days=1)).isoformat()}'" in register.sql
    partitions = await names(db)
    assert partman_name(major, date(2024, 1, 15)) in partitions
    assert partman_name(major, soon + timedelta(days=1)) in partitions
    assert (await run_guard(db, timescaledb="off", retention_days=90)).clean


async def test_partman_default_rows_are_drift(partman_db):
    db = partman_db
    if await partman_major(db) >= 5:
        pytest.skip("pg_partman 5.x is set up without a DEFAULT partition")
    await run_guard(db, timescaledb="off", retention_days=90)
    await db.execute(INSERT_AT, datetime(2020, 1, 15, 10, tzinfo=timezone.utc))

    plan = await run_guard(db, timescaledb="off", retention_days=90)

    assert [(d.description, d.fix_sql) for d in plan.drift] == [(
        "raw_events_default holds rows outside the daily partitions; retention never drops them",
        "CALL \"partman\".partition_data_proc('public.raw_events')")]
    await db.execute(plan.drift[0].fix_sql)
    assert await db.fetchval("SELECT count(*) FROM ONLY raw_events_default") == 0
    assert await db.fetchval("SELECT count(*) FROM raw_events_p2020_01_15") == 1
