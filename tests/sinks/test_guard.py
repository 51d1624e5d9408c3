"""The schema guard creates what is missing, changes nothing the second time, and reports drift."""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import replace

import asyncpg

import sinks.processor as processor_module
from sinks.catalog import read_catalog
from sinks.guard import plan_changes, run_guard
from sinks.processor import Processor
from sinks.schema import TABLES
from sinks.settings import ProcessorSettings


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


async def test_timescaledb_on_without_extension_is_drift(db):
    available = await db.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
    if available:
        return  # the server has the extension; tests/sinks/test_timescale.py covers that case

    plan = await run_guard(db, timescaledb="on")

    assert [(d.table, d.description, d.fix_sql) for d in plan.drift] == [
        ("*", "the timescaledb extension is not available on this server",
         "-- install TimescaleDB on the server, or set TIMESCALEDB=off to use native partitions")]
    assert plan.layout == "partitions"
    assert await db.fetchval("SELECT count(*) FROM pg_partitioned_table") == 1


async def test_old_server_version_is_drift(db):
    catalog = await read_catalog(db, [t.name for t in TABLES])

    plan = plan_changes(replace(catalog, server_version_num=140011), "off")

    assert [(d.table, d.description) for d in plan.drift] == [
        ("*", "PostgreSQL 140011 is older than 15, which NULLS NOT DISTINCT needs")]


async def test_index_on_empty_table_is_plain(db):
    await run_guard(db, timescaledb="off")
    await db.execute("DROP INDEX idx_session_fingerprints_visitor")

    plan = await run_guard(db, timescaledb="off", apply=False)

    assert [(c.sql, c.outside_transaction) for c in plan.changes] == [
        ("CREATE INDEX IF NOT EXISTS idx_session_fingerprints_visitor ON session_fingerprints (visitor_id)", False)]


async def test_index_on_table_with_rows_is_concurrent(db, caplog):
    await run_guard(db, timescaledb="off")
    await db.execute("INSERT INTO session_fingerprints (session_id, started_at, ended_at) VALUES ('s1', now(), now())")
    await db.execute("DROP INDEX idx_session_fingerprints_visitor")
    caplog.clear()

    with caplog.at_level(logging.INFO, logger="sinks.guard"):
        plan = await run_guard(db, timescaledb="off")

    assert [(c.sql, c.outside_transaction) for c in plan.changes] == [
        ("CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_session_fingerprints_visitor ON session_fingerprints (visitor_id)",
         True)]
    applied = [r.getMessage() for r in caplog.records if r.getMessage().startswith("schema change applied")]
    assert len(applied) == 1
    assert applied[0].startswith("schema change applied table=session_fingerprints "
                                 "change='create index idx_session_fingerprints_visitor' elapsed_ms=")
    assert await db.fetchval("SELECT indisvalid FROM pg_index "
                             "WHERE indexrelid = 'idx_session_fingerprints_visitor'::regclass") is True


async def test_index_on_partitioned_table_is_plain(db):
    await run_guard(db, timescaledb="off")
    await db.execute("CREATE TABLE raw_events_p20240115 PARTITION OF raw_events "
                     "FOR VALUES FROM ('2024-01-15 00:00+00') TO ('2024-01-16 00:00+00')")
    await db.execute("INSERT INTO raw_events (id, session_id, event_type, event_action, \"timestamp\", created_at) "
                     "VALUES (gen_random_uuid(), 's1', 'pageview', '/', '2024-01-15 12:00+00', now())")
    await db.execute("DROP INDEX idx_raw_events_user_id")

    plan = await run_guard(db, timescaledb="off")

    assert [(c.sql, c.outside_transaction) for c in plan.changes] == [
        ("CREATE INDEX IF NOT EXISTS idx_raw_events_user_id ON raw_events (user_id)", False)]
    assert await db.fetchval("SELECT count(*) FROM pg_indexes WHERE tablename = 'raw_events_p20240115' "
                             "AND indexdef LIKE '%(user_id)'") == 1


DAILY_KEY = '(site, dimension_key, metric_name, "date", dimension_value) INCLUDE (value)'
DAILY_DUPLICATES_SQL = (
    "-- rows the new index would reject; merge them into one row per key first:\n"
    'SELECT site, dimension_key, metric_name, "date", dimension_value, count(*) FROM daily_metrics '
    'GROUP BY site, dimension_key, metric_name, "date", dimension_value HAVING count(*) > 1;\n')


async def test_invalid_index_is_drift(db):
    await run_guard(db, timescaledb="off")
    await db.execute("DROP INDEX uq_daily_metrics_dimension")
    await db.execute("""INSERT INTO daily_metrics (date, metric_name, value) VALUES
                        ('2024-01-15', 'pageviews', 1), ('2024-01-15', 'pageviews', 2)""")
    # A concurrent build that fails on duplicates leaves an invalid index behind, as in production.
    try:
        await db.execute(f"CREATE UNIQUE INDEX CONCURRENTLY uq_daily_metrics_dimension ON daily_metrics {DAILY_KEY} "
                         "NULLS NOT DISTINCT")
    except asyncpg.UniqueViolationError:
        pass

    plan = await run_guard(db, timescaledb="off")

    assert plan.changes == []
    assert [(d.description, d.fix_sql) for d in plan.drift] == [(
        "index uq_daily_metrics_dimension is invalid: a CREATE INDEX CONCURRENTLY failed or was cancelled",
        DAILY_DUPLICATES_SQL + "DROP INDEX CONCURRENTLY IF EXISTS uq_daily_metrics_dimension;\n"
        f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS uq_daily_metrics_dimension ON daily_metrics {DAILY_KEY} "
        "NULLS NOT DISTINCT")]


OLD_DAILY_INDEXES = (
    'CREATE UNIQUE INDEX uq_daily_metrics_key ON daily_metrics (site, "date", metric_name, dimension_key, '
    "dimension_value) NULLS NOT DISTINCT",
    'CREATE INDEX idx_daily_metrics_dimension ON daily_metrics (site, dimension_key, metric_name, "date") '
    "INCLUDE (dimension_value, value)",
)


async def make_old_daily_layout(conn) -> None:
    """Give daily_metrics the two indexes of the version before uq_daily_metrics_dimension, and only those."""
    await run_guard(conn, timescaledb="off")
    await conn.execute("DROP INDEX uq_daily_metrics_dimension")
    for statement in OLD_DAILY_INDEXES:
        await conn.execute(statement)


async def test_retired_indexes_are_reported_once_replaced(db):
    # A deployment of the version before uq_daily_metrics_dimension: its daily_metrics has two indexes and rows.
    await make_old_daily_layout(db)
    await db.execute("INSERT INTO daily_metrics (site, date, metric_name, value) VALUES ('a.example', '2024-01-15', "
                     "'pageviews', 3)")

    plan = await run_guard(db, timescaledb="off")

    # The first run builds the replacement (concurrently, since the table has rows) and reports nothing yet.
    assert [(c.description, c.outside_transaction) for c in plan.changes] == [
        ("create index uq_daily_metrics_dimension", True)]
    assert plan.drift == []

    plan = await run_guard(db, timescaledb="off")

    assert plan.changes == []
    assert [(d.description, d.fix_sql) for d in plan.drift] == [
        ("index uq_daily_metrics_key is retired: a declared index replaces it, and it still costs every write an "
         "index entry", "DROP INDEX CONCURRENTLY IF EXISTS uq_daily_metrics_key;"),
        ("index idx_daily_metrics_dimension is retired: a declared index replaces it, and it still costs every "
         "write an index entry", "DROP INDEX CONCURRENTLY IF EXISTS idx_daily_metrics_dimension;"),
    ]

    # With both old unique indexes present the upsert still adds to the one row, and after the drops too.
    for fix in [d.fix_sql for d in plan.drift]:
        await db.execute(fix)
    await db.execute("INSERT INTO daily_metrics AS m (site, date, metric_name, value) VALUES ('a.example', "
                     "'2024-01-15', 'pageviews', 4) ON CONFLICT (site, date, metric_name, dimension_key, "
                     "dimension_value) DO UPDATE SET value = m.value + EXCLUDED.value")
    assert await db.fetch("SELECT site, metric_name, value FROM daily_metrics") == [("a.example", "pageviews", 7)]
    assert (await run_guard(db, timescaledb="off")).clean


AGGREGATED_KEY = "(site, bucket, granularity, metric_name, dimension_key, dimension_value)"


async def test_unique_index_without_nulls_not_distinct_is_drift(db):
    await run_guard(db, timescaledb="off")
    await db.execute("DROP INDEX uq_aggregated_metrics_key")
    await db.execute(f"CREATE UNIQUE INDEX uq_aggregated_metrics_key ON aggregated_metrics {AGGREGATED_KEY}")
    await db.execute("""INSERT INTO aggregated_metrics (bucket, granularity, metric_name, value) VALUES
                        ('2024-01-15 10:00+00', 'hour', 'pageviews', 1), ('2024-01-15 10:00+00', 'hour', 'pageviews', 2)""")

    plan = await run_guard(db, timescaledb="off")

    assert [d.description for d in plan.drift] == [
        "unique index uq_aggregated_metrics_key lacks NULLS NOT DISTINCT, so a row whose dimension is NULL is "
        "inserted again by every write instead of being updated"]
    assert plan.drift[0].fix_sql == (
        "-- rows the new index would reject; merge them into one row per key first:\n"
        "SELECT site, bucket, granularity, metric_name, dimension_key, dimension_value, count(*) "
        "FROM aggregated_metrics GROUP BY site, bucket, granularity, metric_name, dimension_key, dimension_value "
        "HAVING count(*) > 1;\n"
        "DROP INDEX CONCURRENTLY IF EXISTS uq_aggregated_metrics_key;\n"
        f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS uq_aggregated_metrics_key ON aggregated_metrics {AGGREGATED_KEY} "
        "NULLS NOT DISTINCT")


async def test_nulls_not_distinct_fix_runs(db):
    await run_guard(db, timescaledb="off")
    await db.execute("DROP INDEX uq_aggregated_metrics_key")
    await db.execute(f"CREATE UNIQUE INDEX uq_aggregated_metrics_key ON aggregated_metrics {AGGREGATED_KEY}")
    await db.execute("""INSERT INTO aggregated_metrics (bucket, granularity, metric_name, value) VALUES
                        ('2024-01-15 10:00+00', 'hour', 'pageviews', 1), ('2024-01-15 10:00+00', 'hour', 'pageviews', 2)""")
    plan = await run_guard(db, timescaledb="off")
    find, drop, create = plan.drift[0].fix_sql.splitlines()[1:]

    duplicates = await db.fetch(find.rstrip(";"))
    await db.execute("DELETE FROM aggregated_metrics WHERE value = 1")
    await db.execute("UPDATE aggregated_metrics SET value = 3")
    await db.execute(drop.rstrip(";"))
    await db.execute(create)

    assert [r["count"] for r in duplicates] == [2]
    assert (await run_guard(db, timescaledb="off")).clean


async def test_index_with_other_columns_is_drift(db):
    await run_guard(db, timescaledb="off")
    await db.execute("DROP INDEX idx_session_fingerprints_site_started")
    await db.execute("CREATE INDEX idx_session_fingerprints_site_started ON session_fingerprints (site)")

    plan = await run_guard(db, timescaledb="off")

    assert [d.description for d in plan.drift] == [
        "index idx_session_fingerprints_site_started differs: CREATE INDEX idx_session_fingerprints_site_started "
        "ON public.session_fingerprints USING btree (site)"]


async def test_nullability_is_drift_both_ways(db):
    await run_guard(db, timescaledb="off")
    await db.execute("ALTER TABLE session_fingerprints ALTER COLUMN pageviews DROP NOT NULL, "
                     "ALTER COLUMN browser SET NOT NULL")

    plan = await run_guard(db, timescaledb="off")

    assert [(d.description, d.fix_sql) for d in plan.drift] == [
        ("column session_fingerprints.pageviews allows NULL, the code expects NOT NULL",
         "UPDATE session_fingerprints SET pageviews = 0 WHERE pageviews IS NULL;\n"
         "ALTER TABLE session_fingerprints ALTER COLUMN pageviews SET NOT NULL"),
        ("column session_fingerprints.browser is NOT NULL, but the code may write NULL into it, and such a write fails",
         "ALTER TABLE session_fingerprints ALTER COLUMN browser DROP NOT NULL"),
    ]


async def test_other_default_is_drift(db):
    await run_guard(db, timescaledb="off")
    await db.execute("ALTER TABLE session_fingerprints ALTER COLUMN pageviews SET DEFAULT 1")

    plan = await run_guard(db, timescaledb="off")

    assert [(d.description, d.fix_sql) for d in plan.drift] == [
        ("column session_fingerprints.pageviews defaults to 1, the code expects 0",
         "ALTER TABLE session_fingerprints ALTER COLUMN pageviews SET DEFAULT 0")]


async def test_required_column_on_rows_is_drift(db):
    await run_guard(db, timescaledb="off")
    await db.execute("INSERT INTO session_fingerprints (session_id, started_at, ended_at) VALUES ('s1', now(), now())")
    await db.execute("ALTER TABLE session_fingerprints DROP COLUMN ended_at")

    plan = await run_guard(db, timescaledb="off")

    assert plan.changes == []
    assert [(d.description, d.fix_sql) for d in plan.drift] == [(
        "column session_fingerprints.ended_at is missing; it is NOT NULL without a default, "
        "so it cannot be added to a table that holds rows",
        "ALTER TABLE session_fingerprints ADD COLUMN IF NOT EXISTS ended_at timestamp with time zone;\n"
        "-- fill ended_at in the existing rows, then:\n"
        "ALTER TABLE session_fingerprints ALTER COLUMN ended_at SET NOT NULL")]


async def test_index_name_taken_elsewhere_is_drift(db):
    await run_guard(db, timescaledb="off")
    await db.execute("DROP INDEX idx_session_fingerprints_visitor")
    await db.execute("CREATE TABLE visitors_archive (visitor_id text)")
    await db.execute("CREATE INDEX idx_session_fingerprints_visitor ON visitors_archive (visitor_id)")

    plan = await run_guard(db, timescaledb="off")

    assert plan.changes == []
    assert [(d.description, d.fix_sql) for d in plan.drift] == [(
        "index idx_session_fingerprints_visitor cannot be created: the name is taken by an index of visitors_archive",
        "ALTER INDEX idx_session_fingerprints_visitor RENAME TO idx_session_fingerprints_visitor_visitors_archive;\n"
        "-- then run `weir schema apply`")]


async def _fillfactors(db) -> dict[str, list[str] | None]:
    rows = await db.fetch("SELECT relname, reloptions FROM pg_class WHERE relname = ANY($1::text[])",
                          ["aggregated_metrics", "session_fingerprints", "daily_metrics"])
    return {r["relname"]: r["reloptions"] for r in rows}


async def test_new_tables_get_their_fillfactor(db):
    await run_guard(db, timescaledb="off")

    assert await _fillfactors(db) == {"aggregated_metrics": ["fillfactor=50"],
                                      "session_fingerprints": ["fillfactor=70"], "daily_metrics": None}


async def test_table_without_its_fillfactor_gets_it_once(db):
    await run_guard(db, timescaledb="off")
    await db.execute("ALTER TABLE session_fingerprints RESET (fillfactor)")
    await db.execute("ALTER TABLE aggregated_metrics SET (fillfactor = 90)")

    plan = await run_guard(db, timescaledb="off")
    again = await run_guard(db, timescaledb="off")

    assert sorted(c.description for c in plan.changes) == ["set fillfactor of aggregated_metrics to 50",
                                                          "set fillfactor of session_fingerprints to 70"]
    assert again.changes == []
    assert (await _fillfactors(db))["session_fingerprints"] == ["fillfactor=70"]


async def test_two_guards_build_index_concurrently(database_url):
    # Two processors that start together on a deployment of the version before uq_daily_metrics_dimension.
    setup = await asyncpg.connect(database_url)
    try:
        await make_old_daily_layout(setup)
        await setup.execute("INSERT INTO daily_metrics (site, date, metric_name, dimension_key, dimension_value, value) "
                            "SELECT 'a.example', DATE '2024-01-01' + i % 60, 'pageviews', 'path', '/' || i, i "
                            "FROM generate_series(1, 20000) AS i")
    finally:
        await setup.close()
    first, second = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        plans = await asyncio.gather(run_guard(first, timescaledb="off"), run_guard(second, timescaledb="off"),
                                     return_exceptions=True)
        valid = await first.fetchval(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'uq_daily_metrics_dimension'::regclass")
    finally:
        await first.close()
        await second.close()

    assert [type(p).__name__ for p in plans] == ["Plan", "Plan"]

    assert sorted([c.description for c in p.changes] for p in plans) == [
        [], ["create index uq_daily_metrics_dimension"]]
    assert valid is True


async def test_processor_start_outlasts_command_timeout(database_url, redis_url, monkeypatch):
    # A deployment of the version before uq_daily_metrics_dimension, with a batch transaction
    # open on daily_metrics that the concurrent build of the new index must wait for.
    setup = await asyncpg.connect(database_url)
    await make_old_daily_layout(setup)
    await setup.execute("INSERT INTO daily_metrics (site, date, metric_name, value) VALUES ('a.example', "
                        "'2024-01-15', 'pageviews', 3)")
    batch = setup.transaction()
    await batch.start()
    await setup.execute("UPDATE daily_metrics SET value = value + 1")
    monkeypatch.setattr(processor_module, "COMMAND_TIMEOUT_S", 0.5)
    proc = Processor(ProcessorSettings(NODE_ENV="development", REDIS_URL=redis_url, DATABASE_URL=database_url,
                                       METRICS_PORT=0, TIMESCALEDB="off"))

    async def end_batch():
        await asyncio.sleep(2)
        await batch.commit()

    try:
        await asyncio.gather(proc.start(), end_batch())
        valid = await setup.fetchval(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'uq_daily_metrics_dimension'::regclass")
    finally:
        await proc.close()
        await setup.close()

    assert valid is True


async def test_upgrade_with_duplicate_null_rows(db):
    # A deployment whose key lacks NULLS NOT DISTINCT contains a totals row for each write.
    await run_guard(db, timescaledb="off")
    await db.execute("DROP INDEX uq_daily_metrics_dimension")
    await db.execute('CREATE UNIQUE INDEX uq_daily_metrics_key ON daily_metrics (site, "date", metric_name, '
                     "dimension_key, dimension_value)")
    await db.execute(OLD_DAILY_INDEXES[1])
    await db.execute("INSERT INTO daily_metrics (site, date, metric_name, value) VALUES "
                     "('a.example', '2024-01-15', 'pageviews', 1), ('a.example', '2024-01-15', 'pageviews', 2)")

    # The first start fails on the duplicates, and the next ones report them with the invalid index.
    try:
        await run_guard(db, timescaledb="off")
        failure = None
    except asyncpg.UniqueViolationError as error:
        failure = str(error).splitlines()[0]
    plan = await run_guard(db, timescaledb="off")

    assert failure == 'could not create unique index "uq_daily_metrics_dimension"'
    assert plan.changes == []
    assert [(d.description, d.fix_sql) for d in plan.drift] == [(
        "index uq_daily_metrics_dimension is invalid: a CREATE INDEX CONCURRENTLY failed or was cancelled",
        DAILY_DUPLICATES_SQL + "DROP INDEX CONCURRENTLY IF EXISTS uq_daily_metrics_dimension;\n"
        f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS uq_daily_metrics_dimension ON daily_metrics {DAILY_KEY} "
        "NULLS NOT DISTINCT")]
    assert await db.fetch(DAILY_DUPLICATES_SQL.split("\n")[1]) == [
        ("a.example", None, "pageviews", datetime.date(2024, 1, 15), None, 2)]
