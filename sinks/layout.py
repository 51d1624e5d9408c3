"""The time layout of partitioned tables, as the schema guard plans it.

On TimescaleDB a table with a `partition_column` is a hypertable with daily chunks, a
compression policy and a retention policy. On plain PostgreSQL it is range-partitioned by day.
Where pg_partman is installed in the database, the guard registers the table with it, and
pg_partman creates and drops the partitions (see sinks.partman). A table created on an older
layout keeps working, and the guard reports the statements that would move it.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from sinks import partman, timescale
from sinks.catalog import ActualTable, Catalog
from sinks.ddl import Plan
from sinks.partitions import PREMAKE_DAYS, day_start
from sinks.schema import TABLES, Table, quote_ident


def choose_layout(plan: Plan, catalog: Catalog, mode: str) -> None:
    """Decide between hypertables and native partitions, adding the extension if needed."""
    if mode == "off":
        return

    existing = [catalog.tables[t.name] for t in TABLES if t.partition_column and t.name in catalog.tables]
    if mode == "auto":
        # A table already laid out one way keeps that layout, because switching would copy every row.
        if any(a.hypertable for a in existing):
            plan.use_timescaledb = True
        elif any(a.partitioned_by for a in existing):
            return
        else:
            plan.use_timescaledb = catalog.timescaledb_installed or (
                catalog.timescaledb_available and catalog.timescaledb_preloaded is not False)
    elif not catalog.timescaledb_available:
        plan.report("*", "the timescaledb extension is not available on this server",
                    "-- install TimescaleDB on the server, or set TIMESCALEDB=off to use native partitions")
    elif not catalog.timescaledb_installed and catalog.timescaledb_preloaded is False:
        plan.report("*", "the timescaledb extension is installed on the server but not preloaded",
                    "-- add timescaledb to shared_preload_libraries in postgresql.conf, restart PostgreSQL, "
                    "then run `weir schema apply`")
    else:
        plan.use_timescaledb = True

    if plan.use_timescaledb and not catalog.timescaledb_installed:
        plan.change("*", "create extension timescaledb", "CREATE EXTENSION IF NOT EXISTS timescaledb")


def plan_new_layout(plan: Plan, table: Table, catalog: Catalog, retention_days: int | None) -> None:
    """Plan the time layout of `table`, just created: hypertable and policies, or pg_partman registration."""
    if not table.partition_column:
        return
    if plan.use_timescaledb:
        plan.change(table.name, f"make {table.name} a hypertable", timescale.create_hypertable_sql(table))
        _plan_compression(plan, table, None, catalog)
        _plan_hypertable_retention(plan, table, None, retention_days)
    elif catalog.partman is not None:
        _plan_partman_registration(plan, table, ActualTable(table.name), catalog, retention_days)


def plan_layout(plan: Plan, table: Table, actual: ActualTable, catalog: Catalog, retention_days: int | None) -> None:
    """Compare the time layout of an existing `table` with the declaration and the chosen layout."""
    if not table.partition_column:
        return
    if plan.use_timescaledb:
        _plan_hypertable(plan, table, actual, catalog, retention_days)
    else:
        _plan_partitions(plan, table, actual, catalog, retention_days)


def _plan_hypertable(plan: Plan, table: Table, actual: ActualTable, catalog: Catalog,
                     retention_days: int | None) -> None:
    if not actual.hypertable:
        if actual.partitioned_by is not None or tuple(actual.primary_key) != table.primary_key:
            fix = _move_to_current_layout_sql(table, actual, catalog, use_timescaledb=True)
        else:
            fix = ("-- migrate_data copies every row into chunks and locks the table meanwhile:\n"
                   + timescale.create_hypertable_sql(table))
        plan.report(table.name, f"{table.name} is not a hypertable", fix)
        return
    _plan_compression(plan, table, actual, catalog)
    _plan_hypertable_retention(plan, table, actual, retention_days)


def _plan_compression(plan: Plan, table: Table, actual: ActualTable | None, catalog: Catalog) -> None:
    compression = table.compression
    if compression is None:
        return
    present = actual.compression if actual is not None else None
    version = catalog.timescaledb.version_tuple if catalog.timescaledb is not None else None

    if present is None:
        if version is not None and version < timescale.MIN_COMPRESSION_VERSION:
            plan.report(table.name, f"TimescaleDB {catalog.timescaledb.version} cannot insert into compressed "
                                    f"chunks with ON CONFLICT DO NOTHING, so compression of {table.name} stays off",
                        "ALTER EXTENSION timescaledb UPDATE;\n-- with TimescaleDB 2.11 or later, run `weir schema apply`")
            return
        plan.change(table.name, f"enable compression of {table.name}", timescale.enable_compression_sql(table))
    elif (present.segment_by, present.order_by) != (compression.segment_by, compression.order_by):
        plan.report(table.name,
                    f"compression of {table.name} is segmented by ({', '.join(present.segment_by)}) and ordered by "
                    f"({', '.join(present.order_by)}); the code expects ({', '.join(compression.segment_by)}) and "
                    f"({', '.join(compression.order_by)})",
                    timescale.change_compression_sql(table))

    expected = timedelta(days=compression.after_days)
    policy = actual.compression_policy if actual is not None else None
    if policy is None:
        plan.change(table.name, f"add compression policy of {table.name} after {compression.after_days} days",
                    timescale.add_compression_policy_sql(table))
    elif policy != expected:
        plan.report(table.name, f"compression policy of {table.name} compresses after {_days(policy)}; "
                                f"the code expects {compression.after_days} days",
                    timescale.replace_compression_policy_sql(table))


def _plan_hypertable_retention(plan: Plan, table: Table, actual: ActualTable | None,
                               retention_days: int | None) -> None:
    if not table.retention or retention_days is None:
        return
    policy = actual.retention_policy if actual is not None else None
    if policy is None:
        plan.change(table.name, f"add retention policy of {table.name}: {retention_days} days",
                    timescale.add_retention_policy_sql(table, retention_days))
    elif policy != timedelta(days=retention_days):
        plan.report(table.name, f"retention policy of {table.name} drops chunks after {_days(policy)}; "
                                f"RETENTION_DAYS is {retention_days}",
                    timescale.replace_retention_policy_sql(table, retention_days))


def _days(interval: timedelta) -> str:
    return f"{interval.days} days" if interval == timedelta(days=interval.days) else str(interval)


# Time layout: native partitions


def _plan_partitions(plan: Plan, table: Table, actual: ActualTable, catalog: Catalog,
                     retention_days: int | None) -> None:
    if actual.partitioned_by != table.partition_column:
        plan.report(table.name, f"{table.name} is not partitioned by {table.partition_column}; "
                                "it keeps working, without partition retention",
                    _move_to_current_layout_sql(table, actual, catalog, use_timescaledb=False))
        return

    default = actual.default_partition
    if default is not None and actual.default_partition_has_rows:
        parent = f"{catalog.schema}.{table.name}"
        fix = (partman.partition_data_sql(catalog.partman, parent) if actual.partman is not None
               else _empty_default_partition_sql(table, default.name))
        plan.report(table.name, f"{default.name} holds rows outside the daily partitions; retention never drops them",
                    fix)

    if catalog.partman is None:
        return
    if actual.partman is None:
        _plan_partman_registration(plan, table, actual, catalog, retention_days)
    else:
        plan.use_partman = True
        _plan_partman_retention(plan, table, actual, catalog, retention_days)


def _plan_partman_registration(plan: Plan, table: Table, actual: ActualTable, catalog: Catalog,
                               retention_days: int | None) -> None:
    extension = catalog.partman
    if extension.version_tuple[0] < 5:
        weir_named = re.compile(rf"^{re.escape(table.name)}_p\d{{8}}$")
        own = [p.name for p in actual.partitions if weir_named.match(p.name)]
        if own:
            plan.report(table.name, f"{table.name} has {len(own)} partition(s) named {table.name}_pYYYYMMDD, which "
                                    f"pg_partman {extension.version} cannot read; Weir keeps maintaining them itself",
                        partman.rename_for_4x_sql(table.name)
                        + ";\n-- then run `weir schema apply` to register the table with pg_partman")
            return

    # pg_partman creates every day from its start through today plus PREMAKE_DAYS, and by default
    # it starts PREMAKE_DAYS before today. When the newest partition ends later, pg_partman must
    # start there, or the two would overlap.
    default_start = day_start(datetime.now(timezone.utc).date() - timedelta(days=PREMAKE_DAYS))
    newest = max((p.upper for p in actual.partitions if not p.is_default), default=None)
    start = newest if newest is not None and newest > default_start else None
    retention = retention_days if table.retention else None
    plan.use_partman = True
    plan.change(table.name, f"register {table.name} with pg_partman {extension.version}",
                partman.register_sql(extension, f"{catalog.schema}.{table.name}", table.partition_column,
                                     PREMAKE_DAYS, retention, start))


def _plan_partman_retention(plan: Plan, table: Table, actual: ActualTable, catalog: Catalog,
                            retention_days: int | None) -> None:
    if not table.retention or retention_days is None:
        return
    config = actual.partman
    fix = partman.retention_sql(catalog.partman, config.parent_table, retention_days)
    if config.retention is None:
        plan.change(table.name, f"set pg_partman retention of {table.name}: {retention_days} days", fix)
    elif config.retention != timedelta(days=retention_days):
        plan.report(table.name, f"pg_partman drops partitions of {table.name} after {_days(config.retention)}; "
                                f"RETENTION_DAYS is {retention_days}", fix)
    elif config.retention_keep_table:
        plan.report(table.name, f"pg_partman detaches expired partitions of {table.name} but keeps them as tables "
                                "(retention_keep_table)", fix)


def _empty_default_partition_sql(table: Table, default: str) -> str:
    columns = ", ".join(column.quoted for column in table.columns)
    return (f"ALTER TABLE {quote_ident(table.name)} DETACH PARTITION {quote_ident(default)};\n"
            f"{_create_day_partitions_sql(table, default)};\n"
            f"INSERT INTO {quote_ident(table.name)} ({columns}) SELECT {columns} FROM {quote_ident(default)} "
            "ON CONFLICT DO NOTHING;\n"
            f"-- after checking the copy: DROP TABLE {quote_ident(default)}")


def _create_day_partitions_sql(table: Table, source: str) -> str:
    """Return a DO block creating Weir's daily partitions for every UTC day that `source` holds rows of."""
    column = quote_ident(table.partition_column)
    return (
        "DO $$\nDECLARE day date;\nBEGIN\n"
        f"  FOR day IN SELECT DISTINCT ({column} AT TIME ZONE 'UTC')::date FROM {quote_ident(source)} LOOP\n"
        "    EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',\n"
        f"                   '{table.name}_p' || to_char(day, 'YYYYMMDD'), '{table.name}',\n"
        "                   day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');\n"
        "  END LOOP;\nEND $$"
    )


def _move_to_current_layout_sql(table: Table, actual: ActualTable, catalog: Catalog, use_timescaledb: bool) -> str:
    """Return the statements that move a table on an older layout onto the current one, keeping its rows."""
    legacy = f"{table.name}_legacy"
    columns = ", ".join(column.quoted for column in table.columns)
    lines = [f"-- {table.name} keeps working as it is. To move its rows onto the current layout, after "
             "`weir schema apply` and with the processors stopped:",
             f"ALTER TABLE {quote_ident(table.name)} RENAME TO {quote_ident(legacy)};"]
    # Index names are unique per schema, so the old ones must move out of the way of the new table's.
    names = set(actual.indexes) | {index.name for index in table.indexes} | {f"{table.name}_pkey"}
    for name in sorted(names):
        renamed = name.replace(table.name, legacy, 1) if table.name in name else f"{name}_legacy"
        lines.append(f"ALTER INDEX IF EXISTS {quote_ident(name)} RENAME TO {quote_ident(renamed)};")
    lines.append(f"-- run `weir schema apply`: it creates {table.name} on the current layout. Then:")

    four_x_partman = catalog.partman is not None and catalog.partman.version_tuple[0] < 5
    if not use_timescaledb and not four_x_partman:
        lines.append(_create_day_partitions_sql(table, legacy) + ";")
    lines.append(f"INSERT INTO {quote_ident(table.name)} ({columns}) SELECT {columns} FROM {quote_ident(legacy)} "
                 "ON CONFLICT DO NOTHING;")
    if not use_timescaledb and four_x_partman:
        # pg_partman 4.x keeps a DEFAULT partition: the copy lands there and is moved into days.
        lines.append(partman.partition_data_sql(catalog.partman, f"{catalog.schema}.{table.name}") + ";")
    lines.append(f"-- after checking the copy: DROP TABLE {quote_ident(legacy)}")
    return "\n".join(lines)
