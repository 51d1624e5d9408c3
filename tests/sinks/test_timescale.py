"""The TimescaleDB layout: exact statements, plans against catalogs with the extension, and a real server.

The plan tests build the catalog a TimescaleDB database would return, so they run everywhere.
The integration tests at the end need the extension on the server and skip without it.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from sinks import timescale
from sinks.catalog import (ActualColumn, ActualCompression, ActualIndex, ActualTable, Catalog, Extension,
                           PartitionRange, read_timescaledb)
from sinks.guard import plan_changes, run_guard, schema_sql
from sinks.schema import RAW_EVENTS, TABLES, Table

HYPERTABLE = ("SELECT create_hypertable('raw_events', 'timestamp', chunk_time_interval => INTERVAL '1 day', "
              "if_not_exists => TRUE, migrate_data => TRUE)")
COMPRESSION = ("ALTER TABLE raw_events SET (timescaledb.compress, timescaledb.compress_segmentby = 'site', "
               "timescaledb.compress_orderby = '\"timestamp\" DESC, id')")
COMPRESSION_POLICY = ("SELECT add_compression_policy('raw_events', compress_after => INTERVAL '7 days', "
                      "if_not_exists => true)")
RETENTION_POLICY = ("SELECT add_retention_policy('raw_events', drop_after => INTERVAL '90 days', "
                    "if_not_exists => true)")


def test_hypertable_sql_exact():
    assert timescale.create_hypertable_sql(RAW_EVENTS) == HYPERTABLE


def test_compression_sql_exact():
    assert timescale.enable_compression_sql(RAW_EVENTS) == COMPRESSION
    assert timescale.add_compression_policy_sql(RAW_EVENTS) == COMPRESSION_POLICY
    assert timescale.replace_compression_policy_sql(RAW_EVENTS) == (
        "SELECT remove_compression_policy('raw_events', if_exists => true);\n"
        "SELECT add_compression_policy('raw_events', compress_after => INTERVAL '7 days')")
    assert timescale.change_compression_sql(RAW_EVENTS) == (
        "-- compressed chunks keep their old settings; decompress them first (this needs disk space):\n"
        "SELECT decompress_chunk(c, if_compressed => true) FROM show_chunks('raw_events') c;\n" + COMPRESSION)


def test_retention_sql_exact():
    assert timescale.add_retention_policy_sql(RAW_EVENTS, 90) == RETENTION_POLICY
    assert timescale.replace_retention_policy_sql(RAW_EVENTS, 30) == (
        "SELECT remove_retention_policy('raw_events', if_exists => true);\n"
        "SELECT add_retention_policy('raw_events', drop_after => INTERVAL '30 days')")


def test_camel_case_name_quoted_in_literal():
    table = Table("Events", RAW_EVENTS.columns, partition_column="timestamp")

    assert timescale.create_hypertable_sql(table).startswith("SELECT create_hypertable('\"Events\"', 'timestamp',")


def test_schema_sql_lists_hypertable_and_policies():
    statements = schema_sql(use_timescaledb=True, retention_days=90)
    position = statements.index(HYPERTABLE)

    assert statements[0] == "CREATE EXTENSION IF NOT EXISTS timescaledb"
    assert statements[position:position + 4] == [HYPERTABLE, COMPRESSION, COMPRESSION_POLICY, RETENTION_POLICY]
    assert "PARTITION BY" not in "\n".join(statements)


def timescale_catalog(version: str = "2.14.2", **tables: ActualTable) -> Catalog:
    return Catalog(dict(tables), timescaledb_installed=True, timescaledb_available=True, server_version_num=150008,
                   timescaledb=Extension("timescaledb", "public", version), timescaledb_preloaded=True)


def as_created(table: Table, **layout) -> ActualTable:
    """The catalog's view of `table` exactly as the declaration creates it, plus `layout` fields."""
    actual = ActualTable(table.name, primary_key=table.primary_key, fillfactor=table.fillfactor, **layout)
    for column in table.columns:
        actual.columns[column.name] = ActualColumn(column.name, column.type, column.nullable, column.default)
    for index in table.indexes:
        actual.indexes[index.name] = ActualIndex(index.name, "", index.unique, index.nulls_not_distinct, True,
                                                 index.method, tuple(c.strip('"') for c in index.columns),
                                                 tuple(c.strip('"') for c in index.include), index.where)
    return actual


def complete_hypertable(**changes) -> ActualTable:
    fields = dict(hypertable=True, compression=ActualCompression(("site",), ('"timestamp" DESC', "id")),
                  compression_policy=timedelta(days=7), retention_policy=timedelta(days=90))
    fields.update(changes)
    return as_created(RAW_EVENTS, **fields)


def every_table(raw_events: ActualTable) -> dict[str, ActualTable]:
    tables = {t.name: as_created(t) for t in TABLES}
    tables["raw_events"] = raw_events
    return tables


def test_empty_database_plan():
    plan = plan_changes(timescale_catalog(), "auto", retention_days=90)
    raw = [(c.description, c.sql) for c in plan.changes if c.table == "raw_events"]

    assert plan.layout == "timescaledb"
    assert plan.drift == []
    assert [d for d, _ in raw] == [
        "create table raw_events",
        *[f"create index {index.name}" for index in RAW_EVENTS.indexes],
        "make raw_events a hypertable",
        "enable compression of raw_events",
        "add compression policy of raw_events after 7 days",
        "add retention policy of raw_events: 90 days",
    ]
    assert [sql for _, sql in raw[-4:]] == [HYPERTABLE, COMPRESSION, COMPRESSION_POLICY, RETENTION_POLICY]
    assert "PARTITION BY" not in raw[0][1]


def test_complete_hypertable_is_clean():
    plan = plan_changes(timescale_catalog(**every_table(complete_hypertable())), "auto", retention_days=90)

    assert plan.clean


def test_missing_policies_are_added():
    raw_events = complete_hypertable(compression=None, compression_policy=None, retention_policy=None)

    plan = plan_changes(timescale_catalog(**every_table(raw_events)), "on", retention_days=90)

    assert [(c.description, c.sql) for c in plan.changes] == [
        ("enable compression of raw_events", COMPRESSION),
        ("add compression policy of raw_events after 7 days", COMPRESSION_POLICY),
        ("add retention policy of raw_events: 90 days", RETENTION_POLICY),
    ]
    assert plan.drift == []


def test_unknown_retention_leaves_policy_alone():
    raw_events = complete_hypertable(retention_policy=None)

    plan = plan_changes(timescale_catalog(**every_table(raw_events)), "on", retention_days=None)

    assert plan.clean


def test_other_retention_is_drift():
    raw_events = complete_hypertable(retention_policy=timedelta(days=30))

    plan = plan_changes(timescale_catalog(**every_table(raw_events)), "on", retention_days=90)

    assert plan.changes == []
    assert [(d.description, d.fix_sql) for d in plan.drift] == [(
        "retention policy of raw_events drops chunks after 30 days; RETENTION_DAYS is 90",
        "SELECT remove_retention_policy('raw_events', if_exists => true);\n"
        "SELECT add_retention_policy('raw_events', drop_after => INTERVAL '90 days')")]


def test_other_compression_policy_is_drift():
    raw_events = complete_hypertable(compression_policy=timedelta(days=1, hours=12))

    plan = plan_changes(timescale_catalog(**every_table(raw_events)), "on", retention_days=90)

    assert [d.description for d in plan.drift] == [
        "compression policy of raw_events compresses after 1 day, 12:00:00; the code expects 7 days"]


def test_other_compression_settings_is_drift():
    raw_events = complete_hypertable(compression=ActualCompression((), ('"timestamp" DESC',)))

    plan = plan_changes(timescale_catalog(**every_table(raw_events)), "on", retention_days=90)

    assert [(d.description, d.fix_sql) for d in plan.drift] == [(
        'compression of raw_events is segmented by () and ordered by ("timestamp" DESC); '
        'the code expects (site) and ("timestamp" DESC, id)',
        timescale.change_compression_sql(RAW_EVENTS))]


def test_old_timescaledb_leaves_compression_off():
    raw_events = complete_hypertable(compression=None, compression_policy=None, retention_policy=None)

    plan = plan_changes(timescale_catalog("2.10.1", **every_table(raw_events)), "on", retention_days=90)

    assert [c.description for c in plan.changes] == ["add retention policy of raw_events: 90 days"]
    assert [(d.description, d.fix_sql) for d in plan.drift] == [(
        "TimescaleDB 2.10.1 cannot insert into compressed chunks with ON CONFLICT DO NOTHING, "
        "so compression of raw_events stays off",
        "ALTER EXTENSION timescaledb UPDATE;\n-- with TimescaleDB 2.11 or later, run `weir schema apply`")]


def test_plain_table_is_drift_with_hypertable_call():
    plan = plan_changes(timescale_catalog(**every_table(as_created(RAW_EVENTS))), "on", retention_days=90)

    assert [(d.description, d.fix_sql) for d in plan.drift] == [(
        "raw_events is not a hypertable",
        "-- migrate_data copies every row into chunks and locks the table meanwhile:\n" + HYPERTABLE)]


def test_index_on_hypertable_with_rows_per_chunk():
    raw_events = complete_hypertable(has_rows=True)
    del raw_events.indexes["idx_raw_events_user_id"]

    plan = plan_changes(timescale_catalog(**every_table(raw_events)), "on", retention_days=90)

    assert [(c.sql, c.outside_transaction) for c in plan.changes] == [
        ("CREATE INDEX IF NOT EXISTS idx_raw_events_user_id ON raw_events (user_id) "
         "WITH (timescaledb.transaction_per_chunk)", True)]


def test_auto_keeps_partitioned_table():
    partitioned = as_created(RAW_EVENTS, partitioned_by="timestamp")

    plan = plan_changes(timescale_catalog(**every_table(partitioned)), "auto", retention_days=90)

    assert plan.layout == "partitions"
    assert plan.clean


def test_auto_creates_extension_when_preloaded():
    catalog = replace(timescale_catalog(), timescaledb_installed=False, timescaledb=None)

    plan = plan_changes(catalog, "auto", retention_days=90)

    assert plan.layout == "timescaledb"
    assert (plan.changes[0].description, plan.changes[0].sql) == (
        "create extension timescaledb", "CREATE EXTENSION IF NOT EXISTS timescaledb")


def test_auto_skips_extension_not_preloaded():
    catalog = replace(timescale_catalog(), timescaledb_installed=False, timescaledb=None, timescaledb_preloaded=False)

    plan = plan_changes(catalog, "auto", retention_days=90)

    assert plan.layout == "partitions"
    assert plan.drift == []
    assert "timescaledb" not in "\n".join(c.sql for c in plan.changes)


def test_on_not_preloaded_is_drift():
    catalog = replace(timescale_catalog(), timescaledb_installed=False, timescaledb=None, timescaledb_preloaded=False)

    plan = plan_changes(catalog, "on", retention_days=90)

    assert plan.layout == "partitions"
    assert [(d.table, d.description, d.fix_sql) for d in plan.drift] == [(
        "*", "the timescaledb extension is installed on the server but not preloaded",
        "-- add timescaledb to shared_preload_libraries in postgresql.conf, restart PostgreSQL, "
        "then run `weir schema apply`")]


def test_partitioned_table_under_on_is_drift():
    partitioned = as_created(RAW_EVENTS, partitioned_by="timestamp",
                             partitions=[PartitionRange("raw_events_p20240115", None, None)])

    plan = plan_changes(timescale_catalog(**every_table(partitioned)), "on", retention_days=90)

    assert [d.description for d in plan.drift] == ["raw_events is not a hypertable"]
    assert plan.drift[0].fix_sql.startswith("-- raw_events keeps working as it is.")


# The columns of TimescaleDB 2.x's information views that the catalog reads, as documented.
INFORMATION_VIEWS = """
CREATE SCHEMA timescaledb_information;
CREATE TABLE timescaledb_information.hypertables (
    hypertable_schema name, hypertable_name name, compression_enabled boolean);
CREATE TABLE timescaledb_information.compression_settings (
    hypertable_schema name, hypertable_name name, attname name, segmentby_column_index smallint,
    orderby_column_index smallint, orderby_asc boolean, orderby_nullsfirst boolean);
CREATE TABLE timescaledb_information.jobs (
    job_id integer, proc_name name, config jsonb, hypertable_schema name, hypertable_name name);
INSERT INTO timescaledb_information.hypertables VALUES ('public', 'raw_events', true);
INSERT INTO timescaledb_information.compression_settings VALUES
    ('public', 'raw_events', 'site', 1, NULL, NULL, NULL),
    ('public', 'raw_events', 'timestamp', NULL, 1, false, true),
    ('public', 'raw_events', 'id', NULL, 2, true, false);
INSERT INTO timescaledb_information.jobs VALUES
    (1000, 'policy_retention', '{"drop_after": "90 days", "hypertable_id": 1}', 'public', 'raw_events'),
    (1001, 'policy_compression', '{"compress_after": "7 days", "hypertable_id": 1}', 'public', 'raw_events'),
    (1002, 'policy_reorder', '{"index_name": "x", "hypertable_id": 1}', 'public', 'raw_events')
"""


async def test_catalog_reads_information_views(db):
    # Tables shaped like the views stand in for the extension, which this server may lack.
    await db.execute(INFORMATION_VIEWS)
    catalog = timescale_catalog(raw_events=ActualTable("raw_events"))

    await read_timescaledb(db, catalog)

    raw_events = catalog.tables["raw_events"]
    assert raw_events.hypertable is True
    assert raw_events.compression == ActualCompression(("site",), ('"timestamp" DESC', "id"))
    assert raw_events.retention_policy == timedelta(days=90)
    assert raw_events.compression_policy == timedelta(days=7)


# Integration: a real server with the extension.


@pytest.fixture
async def timescale_db(db):
    available = await db.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
    if not available:
        pytest.skip("timescaledb extension not available on this server")
    return db


async def test_guard_creates_hypertable_and_policies(timescale_db):
    db = timescale_db

    first = await run_guard(db, timescaledb="on", retention_days=90)
    second = await run_guard(db, timescaledb="on", retention_days=90)

    assert first.drift == []
    assert second.clean
    assert await db.fetchval("SELECT compression_enabled FROM timescaledb_information.hypertables "
                             "WHERE hypertable_name = 'raw_events'") is True
    policies = {r["proc_name"]: r["config"] for r in await db.fetch(
        "SELECT proc_name, config FROM timescaledb_information.jobs WHERE hypertable_name = 'raw_events'")}
    assert set(policies) == {"policy_retention", "policy_compression"}


async def test_changed_retention_policy_is_drift(timescale_db):
    db = timescale_db
    await run_guard(db, timescaledb="on", retention_days=90)
    await db.execute("SELECT remove_retention_policy('raw_events')")
    await db.execute("SELECT add_retention_policy('raw_events', drop_after => INTERVAL '30 days')")

    plan = await run_guard(db, timescaledb="on", retention_days=90)

    assert [d.description for d in plan.drift] == [
        "retention policy of raw_events drops chunks after 30 days; RETENTION_DAYS is 90"]


async def test_retention_job_drops_only_old_chunks(timescale_db):
    db = timescale_db
    await run_guard(db, timescaledb="on", retention_days=3)
    # One row per day, 0 to 10 days old. Chunks are whole UTC days.
    await db.execute("""INSERT INTO raw_events (id, session_id, event_type, event_action, "timestamp", created_at)
                        SELECT gen_random_uuid(), 's', 'pageview', '/', now() - make_interval(days => d), now()
                          FROM generate_series(0, 10) d""")
    job_id = await db.fetchval("SELECT job_id FROM timescaledb_information.jobs "
                               "WHERE hypertable_name = 'raw_events' AND proc_name = 'policy_retention'")

    await db.execute(f"CALL run_job({job_id})")

    # The chunk of the row 3 days old ends after now() - 3 days, so it stays, and older chunks go.
    assert await db.fetchval("SELECT count(*) FROM raw_events") == 4
    assert await db.fetchval("""SELECT count(*) FROM raw_events WHERE "timestamp" < now() - INTERVAL '4 days'""") == 0
