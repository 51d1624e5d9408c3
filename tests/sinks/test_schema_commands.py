"""`weir schema check`, `apply` and `sql` as an operator runs them: exact output and exit codes."""

from __future__ import annotations

import os
import subprocess

import pytest

from sinks.guard import run_guard, schema_sql
from tests.conftest import REPO, weir_command

CLEAN = "schema is up to date (layout: partitions)\n"
FOOTER = "\nrun `weir schema apply` to apply the missing changes; drift needs an operator to run the statements shown\n"


def weir(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "VIRTUAL_ENV"}}
    return subprocess.run(weir_command(*args), cwd=REPO, env={**base, **env}, capture_output=True, text=True,
                          timeout=60)


def test_sql_prints_every_statement():
    # schema sql never connects, so an unreachable DATABASE_URL is fine.
    result = weir("schema", "sql", "--timescaledb", "off", DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(statement + ";\n\n" for statement in schema_sql(False, 90))
    assert "PARTITION BY RANGE (\"timestamp\");\n" in result.stdout


def test_sql_on_timescaledb_has_policies():
    result = weir("schema", "sql", "--timescaledb", "on", DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
                  RETENTION_DAYS="30")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(statement + ";\n\n" for statement in schema_sql(True, 30))
    lines = result.stdout.splitlines()
    assert lines[0] == "CREATE EXTENSION IF NOT EXISTS timescaledb;"
    assert ("SELECT add_retention_policy('raw_events', drop_after => INTERVAL '30 days', if_not_exists => true);"
            in lines)
    assert ("SELECT add_compression_policy('raw_events', compress_after => INTERVAL '7 days', if_not_exists => true);"
            in lines)


async def test_check_up_to_date_exits_zero(database_url, db):
    await run_guard(db, timescaledb="off", retention_days=90)

    result = weir("schema", "check", "--timescaledb", "off", DATABASE_URL=database_url)

    assert (result.returncode, result.stdout, result.stderr) == (0, CLEAN, "")


async def test_check_empty_database_lists_everything(database_url, db):
    plan = await run_guard(db, timescaledb="off", retention_days=90, apply=False)

    result = weir("schema", "check", "--timescaledb", "off", DATABASE_URL=database_url)

    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        f"schema differs from the code: {len(plan.changes)} missing change(s), 0 drift item(s) (layout: partitions)")
    assert result.stdout.count("\nmissing  ") == len(plan.changes)
    assert "\nmissing  raw_events: create table raw_events\n    CREATE TABLE IF NOT EXISTS raw_events (\n" in result.stdout
    assert result.stdout.endswith(FOOTER)


async def break_two_things(db) -> None:
    await run_guard(db, timescaledb="off", retention_days=90)
    await db.execute("ALTER TABLE session_fingerprints DROP COLUMN asn")
    await db.execute("ALTER TABLE daily_metrics ALTER COLUMN value TYPE integer")


TYPE_DRIFT = ('drift    daily_metrics: column daily_metrics."value" is integer, the code expects bigint\n'
              '    ALTER TABLE daily_metrics ALTER COLUMN "value" TYPE bigint;\n')


async def test_check_prints_diff_and_exits_one(database_url, db):
    await break_two_things(db)

    result = weir("schema", "check", "--timescaledb", "off", DATABASE_URL=database_url)

    assert result.returncode == 1
    assert result.stderr == ""
    assert result.stdout == (
        "schema differs from the code: 1 missing change(s), 1 drift item(s) (layout: partitions)\n"
        "\n"
        "missing  session_fingerprints: add column session_fingerprints.asn\n"
        "    ALTER TABLE session_fingerprints ADD COLUMN IF NOT EXISTS asn integer;\n"
        "\n" + TYPE_DRIFT + FOOTER)


async def test_apply_adds_column_and_reports_drift(database_url, db):
    await break_two_things(db)

    applied = weir("schema", "apply", "--timescaledb", "off", DATABASE_URL=database_url)
    checked = weir("schema", "check", "--timescaledb", "off", DATABASE_URL=database_url)

    assert applied.returncode == 0
    assert applied.stdout == (
        "applied  session_fingerprints: add column session_fingerprints.asn\n"
        "applied 1 change(s) (layout: partitions)\n"
        "\n" + TYPE_DRIFT
        + "1 drift item(s) need an operator to run the statements shown\n")
    assert ("INFO sinks.guard schema change applied table=session_fingerprints "
            "change='add column session_fingerprints.asn' elapsed_ms=") in applied.stderr
    assert "WARNING sinks.guard schema drift table=daily_metrics" in applied.stderr
    assert checked.returncode == 1
    assert checked.stdout == (
        "schema differs from the code: 0 missing change(s), 1 drift item(s) (layout: partitions)\n"
        "\n" + TYPE_DRIFT + FOOTER)


async def test_apply_then_check_is_clean(database_url):
    applied = weir("schema", "apply", "--timescaledb", "off", DATABASE_URL=database_url)
    checked = weir("schema", "check", "--timescaledb", "off", DATABASE_URL=database_url)

    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.endswith(" change(s) (layout: partitions)\n")
    assert (checked.returncode, checked.stdout) == (0, CLEAN)


def test_check_unreachable_database_is_one_line():
    result = weir("schema", "check", DATABASE_URL="postgresql://postgres@127.0.0.1:1/none")

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: cannot connect to DATABASE_URL: ")
    assert len(result.stderr.strip().splitlines()) == 1


async def test_retention_days_compared_with_partman(database_url, db):
    if not await db.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_partman'"):
        pytest.skip("pg_partman extension not available on this server")
    await db.execute("CREATE SCHEMA partman")
    await db.execute("CREATE EXTENSION pg_partman SCHEMA partman")

    applied = weir("schema", "apply", "--timescaledb", "off", "--retention-days", "30", DATABASE_URL=database_url)
    same = weir("schema", "check", "--timescaledb", "off", DATABASE_URL=database_url, RETENTION_DAYS="30")
    other = weir("schema", "check", "--timescaledb", "off", DATABASE_URL=database_url, RETENTION_DAYS="20")

    assert applied.returncode == 0, applied.stderr
    assert (same.returncode, same.stdout) == (0, "schema is up to date (layout: pg_partman)\n")
    assert other.returncode == 1
    assert other.stdout == (
        "schema differs from the code: 0 missing change(s), 1 drift item(s) (layout: pg_partman)\n"
        "\n"
        "drift    raw_events: pg_partman drops partitions of raw_events after 30 days; RETENTION_DAYS is 20\n"
        "    UPDATE \"partman\".part_config SET retention = '20 days', retention_keep_table = false, "
        "retention_keep_index = false, infinite_time_partitions = true WHERE parent_table = 'public.raw_events';\n"
        + FOOTER)
