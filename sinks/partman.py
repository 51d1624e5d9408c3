"""pg_partman, where it is installed in the database: it creates the daily partitions and drops expired ones.

The schema guard registers a partitioned table with `create_parent`. The processor then creates
partitions through `create_partition_time` and runs `run_maintenance` for that table hourly.
pg_partman 4.x and 5.x differ in three ways that matter here:
- the partition type is "native" in 4.x and "range" in 5.x;
- 4.x always creates a DEFAULT partition, while on 5.x Weir turns it off;
- 4.x names a child `raw_events_p2024_01_15`, 5.x `raw_events_p20240115`, as Weir does.

Every call runs with `TimeZone` set to UTC, because pg_partman aligns partitions to midnight in the
session's time zone. For the same reason automatic maintenance is turned off for the table: a
background worker or cron job in another time zone would create misaligned partitions.

NOTE: the tests run against pg_partman 4.7 (Debian bookworm's package). The 5.x arguments follow
pg_partman's 5.x source and have not run here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from sinks.catalog import Extension

logger = logging.getLogger(__name__)

PARTITION_INTERVAL = "1 day"


@dataclass(frozen=True, slots=True)
class ManagedTable:
    """A table registered in pg_partman's `part_config`."""

    extension: Extension
    parent_table: str
    """Schema-qualified name as pg_partman stores it, e.g. public.raw_events."""

    @property
    def major_version(self) -> int:
        return self.extension.version_tuple[0]


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _qualified(extension: Extension, name: str) -> str:
    return '"' + extension.schema.replace('"', '""') + '".' + name


def create_parent_sql(extension: Extension, parent_table: str, control: str, premake_days: int,
                      start: datetime | None = None) -> str:
    """Return the `create_parent` call that registers `parent_table` for daily partitions.

    `start` is the lower bound of the first partition pg_partman creates; by default it starts
    `premake_days` before today.
    """
    args = [f"p_parent_table => {literal(parent_table)}", f"p_control => {literal(control)}"]
    if extension.version_tuple[0] >= 5:
        # 5.x rejects "native". Without a DEFAULT partition, no event lands where retention cannot drop it.
        args += [f"p_interval => {literal(PARTITION_INTERVAL)}", "p_type => 'range'", "p_default_table => false"]
    else:
        args += ["p_type => 'native'", f"p_interval => {literal(PARTITION_INTERVAL)}"]
    args += [f"p_premake => {premake_days}", "p_automatic_maintenance => 'off'", "p_jobmon => false"]
    if start is not None:
        args.append(f"p_start_partition => {literal(start.isoformat())}")
    return f"SELECT {_qualified(extension, 'create_parent')}({', '.join(args)})"


def retention_sql(extension: Extension, parent_table: str, retention_days: int) -> str:
    """Return the `part_config` update that drops partitions older than `retention_days` at maintenance."""
    return (f"UPDATE {_qualified(extension, 'part_config')} SET retention = {literal(f'{retention_days} days')}, "
            "retention_keep_table = false, retention_keep_index = false, infinite_time_partitions = true "
            f"WHERE parent_table = {literal(parent_table)}")


def register_sql(extension: Extension, parent_table: str, control: str, premake_days: int,
                 retention_days: int | None, start: datetime | None = None) -> str:
    """Return the statements, run in one transaction, that hand `parent_table` over to pg_partman."""
    statements = ["SET LOCAL TimeZone TO 'UTC'",
                  create_parent_sql(extension, parent_table, control, premake_days, start)]
    if retention_days is not None:
        statements.append(retention_sql(extension, parent_table, retention_days))
    return ";\n".join(statements)


def partition_data_sql(extension: Extension, parent_table: str) -> str:
    """Return the call that moves rows from the DEFAULT partition into daily partitions (4.x and 5.x)."""
    return f"CALL {_qualified(extension, 'partition_data_proc')}({literal(parent_table)})"


def rename_for_4x_sql(table: str) -> str:
    """Return a DO block renaming Weir's `<table>_pYYYYMMDD` partitions to pg_partman 4.x's `<table>_pYYYY_MM_DD`."""
    return (
        "DO $$\nDECLARE child text;\nBEGIN\n"
        "  FOR child IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid\n"
        f"               WHERE i.inhparent = {literal(table)}::regclass AND c.relname ~ {literal('_p[0-9]{8}$')} LOOP\n"
        "    EXECUTE format('ALTER TABLE %I RENAME TO %I', child,\n"
        "                   regexp_replace(child, '_p([0-9]{4})([0-9]{2})([0-9]{2})$', '_p\\1_\\2_\\3'));\n"
        "  END LOOP;\nEND $$"
    )


async def find_managed(conn: asyncpg.Connection, table: str) -> ManagedTable | None:
    """Return how pg_partman manages `table` (in the current schema), or None when it does not."""
    row = await conn.fetchrow(
        "SELECT n.nspname AS schema, e.extversion AS version FROM pg_extension e "
        "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_partman'")
    if row is None:
        return None
    extension = Extension("pg_partman", row["schema"], row["version"])
    parent_table = f"{await conn.fetchval('SELECT current_schema()')}.{table}"
    registered = await conn.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM {_qualified(extension, 'part_config')} WHERE parent_table = $1)", parent_table)
    return ManagedTable(extension, parent_table) if registered else None


async def create_partitions(conn: asyncpg.Connection, managed: ManagedTable, starts: list[datetime]) -> None:
    """Create the partitions starting at `starts` (UTC midnights) through pg_partman, which names them."""
    # 4.x analyzes the whole set after creating a child unless p_analyze is false, and 5.x lacks the argument.
    analyze = ", p_analyze => false" if managed.major_version < 5 else ""
    async with conn.transaction():
        await conn.execute("SET LOCAL TimeZone TO 'UTC'")
        await conn.execute(
            f"SELECT {_qualified(managed.extension, 'create_partition_time')}"
            f"(p_parent_table => $1, p_partition_times => $2::timestamptz[]{analyze})",
            managed.parent_table, starts)


async def run_maintenance(conn: asyncpg.Connection, managed: ManagedTable) -> None:
    """Run pg_partman's maintenance of this one table: create partitions ahead, drop expired ones."""
    async with conn.transaction():
        await conn.execute("SET LOCAL TimeZone TO 'UTC'")
        await conn.execute(
            f"SELECT {_qualified(managed.extension, 'run_maintenance')}"
            "(p_parent_table => $1, p_analyze => false, p_jobmon => false)",
            managed.parent_table)
