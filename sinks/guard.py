"""The schema guard: compares the declared schema with the database and applies additive DDL.

It runs at every processor start and from `weir schema apply`. It only creates tables, adds
columns, sets missing defaults, creates indexes and sets up the time layout: a hypertable with
its compression and retention policies on TimescaleDB, or daily partitions registered with
pg_partman where that extension is installed. It never drops, renames or retypes. What it cannot
fix additively is reported as drift with the statements an operator would run.
A PostgreSQL advisory lock makes replicas that start together take turns.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from sinks import layout, timescale
from sinks.catalog import ActualIndex, ActualTable, Catalog, read_catalog
from sinks.ddl import Change, Drift, Plan, create_index_sql, create_table_sql, set_fillfactor_sql
from sinks.schema import TABLES, Column, Index, Table, quote_ident

__all__ = ["Change", "Drift", "GUARD_LOCK_ID", "Plan", "apply_changes", "create_index_sql", "create_table_sql",
           "plan_changes", "run_guard", "schema_sql"]

logger = logging.getLogger(__name__)

GUARD_LOCK_ID = 0x5EE1_5C4E_0001
"""Advisory lock key held while the guard plans and applies; any constant shared by all replicas."""

GUARD_LOCK_POLL_S = 0.2
"""Seconds between two tries to take the guard's lock while another replica holds it."""

MIN_SERVER_VERSION_NUM = 150000
"""PostgreSQL 15 introduced NULLS NOT DISTINCT, which the rollup keys need."""


def schema_sql(use_timescaledb: bool = False, retention_days: int | None = None) -> list[str]:
    """Return every statement that creates the declared schema on an empty database, in order.

    Without TimescaleDB the daily partitions are not listed: the processor creates them as
    events arrive, or pg_partman does where the guard registers the table with it.
    """
    statements: list[str] = []
    if use_timescaledb:
        statements.append("CREATE EXTENSION IF NOT EXISTS timescaledb")
    for table in TABLES:
        statements.append(create_table_sql(table, use_timescaledb))
        statements.extend(create_index_sql(table, index) for index in table.indexes)
        if table.partition_column and use_timescaledb:
            statements.append(timescale.create_hypertable_sql(table))
            statements.extend(timescale.policies_sql(table, retention_days))
    return statements


def plan_changes(catalog: Catalog, timescaledb: str = "auto", retention_days: int | None = None) -> Plan:
    """Compare the declaration with `catalog` and list the changes to apply and the drift to report.

    `timescaledb` is "auto", "on" or "off". `retention_days` is RETENTION_DAYS; None leaves
    retention policies alone, neither adding nor comparing them.
    """
    plan = Plan()
    if catalog.server_version_num < MIN_SERVER_VERSION_NUM:
        plan.report("*", f"PostgreSQL {catalog.server_version_num} is older than 15, which NULLS NOT DISTINCT needs",
                    "-- upgrade the server to PostgreSQL 15 or later")
    layout.choose_layout(plan, catalog, timescaledb)

    for table in TABLES:
        actual = catalog.tables.get(table.name)
        if actual is None:
            _plan_new_table(plan, table, catalog, retention_days)
        else:
            _plan_existing_table(plan, table, actual, catalog, retention_days)
    return plan


def _plan_new_table(plan: Plan, table: Table, catalog: Catalog, retention_days: int | None) -> None:
    plan.change(table.name, f"create table {table.name}", create_table_sql(table, plan.use_timescaledb))
    for index in table.indexes:
        plan.change(table.name, f"create index {index.name}", create_index_sql(table, index))
    layout.plan_new_layout(plan, table, catalog, retention_days)


def _plan_existing_table(plan: Plan, table: Table, actual: ActualTable, catalog: Catalog,
                         retention_days: int | None) -> None:
    for column in table.columns:
        _plan_column(plan, table, column, actual)
    _plan_primary_key(plan, table, actual)
    if table.fillfactor is not None and actual.fillfactor != table.fillfactor and not actual.partitioned_by:
        plan.change(table.name, f"set fillfactor of {table.name} to {table.fillfactor}", set_fillfactor_sql(table))
    for index in table.indexes:
        _plan_index(plan, table, index, actual, catalog)
    _plan_retired_indexes(plan, table, actual)
    layout.plan_layout(plan, table, actual, catalog, retention_days)


# Columns


def _plan_column(plan: Plan, table: Table, column: Column, actual: ActualTable) -> None:
    present = actual.columns.get(column.name)
    name = f"{table.name}.{column.quoted}"
    alter = f"ALTER TABLE {quote_ident(table.name)}"
    if present is None:
        if column.nullable or column.default is not None or not actual.has_rows:
            plan.change(table.name, f"add column {name}", f"{alter} ADD COLUMN IF NOT EXISTS {column.definition()}")
        else:
            plan.report(table.name, f"column {name} is missing; it is NOT NULL without a default, "
                                    "so it cannot be added to a table that holds rows",
                        f"{alter} ADD COLUMN IF NOT EXISTS {column.quoted} {column.type};\n"
                        f"-- fill {column.quoted} in the existing rows, then:\n"
                        f"{alter} ALTER COLUMN {column.quoted} SET NOT NULL")
        return

    if present.type != column.type:
        plan.report(table.name, f"column {name} is {present.type}, the code expects {column.type}",
                    f"{alter} ALTER COLUMN {column.quoted} TYPE {column.type}")
    if column.default is not None and present.default is None:
        plan.change(table.name, f"set default of {name}", f"{alter} ALTER COLUMN {column.quoted} SET DEFAULT {column.default}")
    elif column.default is not None and present.default != column.default:
        plan.report(table.name, f"column {name} defaults to {present.default}, the code expects {column.default}",
                    f"{alter} ALTER COLUMN {column.quoted} SET DEFAULT {column.default}")

    if not column.nullable and present.nullable:
        fill = (f"UPDATE {quote_ident(table.name)} SET {column.quoted} = {column.default} WHERE {column.quoted} IS NULL;\n"
                if column.default is not None else f"-- SET NOT NULL fails while a row holds NULL in {column.quoted}\n")
        plan.report(table.name, f"column {name} allows NULL, the code expects NOT NULL",
                    f"{fill}{alter} ALTER COLUMN {column.quoted} SET NOT NULL")
    elif column.nullable and not present.nullable and column.name not in actual.primary_key:
        plan.report(table.name, f"column {name} is NOT NULL, but the code may write NULL into it, and such a write fails",
                    f"{alter} ALTER COLUMN {column.quoted} DROP NOT NULL")


def _plan_primary_key(plan: Plan, table: Table, actual: ActualTable) -> None:
    if not table.primary_key or tuple(actual.primary_key) == table.primary_key:
        return
    keys = ", ".join(actual.primary_key) or "none"
    plan.report(
        table.name, f"primary key is ({keys}); the current layout uses ({', '.join(table.primary_key)})",
        f"-- {table.name} keeps working with this key: its sink inserts with ON CONFLICT DO NOTHING and no "
        f"conflict target.\n-- On the current layout the table is:\n{create_table_sql(table, plan.use_timescaledb)}")


# Indexes


def _plan_index(plan: Plan, table: Table, index: Index, actual: ActualTable, catalog: Catalog) -> None:
    present = actual.indexes.get(index.name)
    owner = catalog.relation_owners.get(index.name)
    if present is None and owner is not None:
        # CREATE INDEX IF NOT EXISTS would skip the name silently and leave the table without it.
        other, is_index = owner
        kind = "INDEX" if is_index else "TABLE"
        holder = f"an index of {other}" if is_index else f"the relation {other}"
        plan.report(table.name, f"index {index.name} cannot be created: the name is taken by {holder}",
                    f"ALTER {kind} {quote_ident(index.name)} RENAME TO {quote_ident(index.name + '_' + other)};\n"
                    "-- then run `weir schema apply`")
        return
    if present is None:
        plan.change(table.name, f"create index {index.name}", *_index_build(table, index, actual))
        return

    if not present.valid:
        # A unique build fails on rows that repeat a key, and the same build fails again until they are merged.
        duplicates = _find_duplicates_sql(table, index) if index.unique else ""
        plan.report(table.name, f"index {index.name} is invalid: a CREATE INDEX CONCURRENTLY failed or was cancelled",
                    duplicates + _rebuild_index_sql(table, index, actual))
    elif index.unique and present.unique and index.nulls_not_distinct and not present.nulls_not_distinct:
        plan.report(table.name, f"unique index {index.name} lacks NULLS NOT DISTINCT, so a row whose dimension is "
                                "NULL is inserted again by every write instead of being updated",
                    _find_duplicates_sql(table, index) + _rebuild_index_sql(table, index, actual))
    elif _differs(index, present):
        plan.report(table.name, f"index {index.name} differs: {present.definition}",
                    _rebuild_index_sql(table, index, actual))


def _plan_retired_indexes(plan: Plan, table: Table, actual: ActualTable) -> None:
    """Report the retired indexes still present, once every declared index is there to replace them."""
    replaced = all(index.name in actual.indexes and actual.indexes[index.name].valid for index in table.indexes)
    if not replaced:
        return
    for name in table.retired_indexes:
        if name in actual.indexes:
            drop = ("DROP INDEX IF EXISTS" if actual.partitioned_by is not None or actual.hypertable
                    else "DROP INDEX CONCURRENTLY IF EXISTS")
            plan.report(table.name, f"index {name} is retired: a declared index replaces it, and it still costs every "
                                    "write an index entry", f"{drop} {quote_ident(name)};")


def _differs(index: Index, present: ActualIndex) -> bool:
    """Return whether the index in the database differs from the one the code declares.

    NOTE: a predicate is compared by its presence only, because PostgreSQL prints it in its own
    form (casts and parentheses added), not as the code wrote it.
    """
    columns = tuple(c.strip('"') for c in index.columns)
    include = tuple(c.strip('"') for c in index.include)
    return (index.unique != present.unique or index.nulls_not_distinct != present.nulls_not_distinct
            or index.method != present.method or (bool(present.columns) and columns != present.columns)
            or include != present.include or bool(index.where) != bool(present.predicate))


def _index_build(table: Table, index: Index, actual: ActualTable) -> tuple[str, bool]:
    """Return the CREATE INDEX for an existing table and whether it must run outside a transaction."""
    if not actual.has_rows:
        return create_index_sql(table, index), False
    if actual.hypertable:
        # TimescaleDB rejects CONCURRENTLY, so each chunk's index is built in its own short transaction.
        return create_index_sql(table, index, per_chunk=True), True
    if actual.partitioned_by is not None:
        # NOTE: PostgreSQL cannot build a partitioned table's index CONCURRENTLY, so this build
        # blocks writes to the table until every partition's index is built.
        return create_index_sql(table, index), False
    return create_index_sql(table, index, concurrently=True), True


def _rebuild_index_sql(table: Table, index: Index, actual: ActualTable) -> str:
    if actual.partitioned_by is not None or actual.hypertable:
        return f"DROP INDEX IF EXISTS {index.name};\n{create_index_sql(table, index, per_chunk=actual.hypertable)}"
    return f"DROP INDEX CONCURRENTLY IF EXISTS {index.name};\n{create_index_sql(table, index, concurrently=True)}"


def _find_duplicates_sql(table: Table, index: Index) -> str:
    columns = ", ".join(index.columns)
    return (f"-- rows the new index would reject; merge them into one row per key first:\n"
            f"SELECT {columns}, count(*) FROM {quote_ident(table.name)} GROUP BY {columns} HAVING count(*) > 1;\n")


# Applying


async def apply_changes(conn: asyncpg.Connection, plan: Plan) -> list[Change]:
    """Apply `plan.changes` in order, each in its own transaction or outside one; return them."""
    applied = []
    for change in plan.changes:
        started = time.perf_counter()
        if change.outside_transaction:
            await conn.execute(change.sql)
        else:
            async with conn.transaction():
                await conn.execute(change.sql)
        elapsed_ms = (time.perf_counter() - started) * 1000
        logger.info("schema change applied table=%s change=%r elapsed_ms=%.0f", change.table, change.description,
                    elapsed_ms, extra={"table": change.table})
        applied.append(change)
    return applied


async def _take_guard_lock(conn: asyncpg.Connection) -> None:
    """Take the guard's advisory lock, trying again until the replica that holds it releases it.

    A statement waiting in pg_advisory_lock keeps a snapshot. CREATE INDEX CONCURRENTLY in the
    replica that has the lock waits until every older snapshot is gone, so the two would wait for
    each other until PostgreSQL aborts one as a deadlock. Each pg_try_advisory_lock keeps its
    snapshot only while that statement runs.
    """
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", GUARD_LOCK_ID):
        await asyncio.sleep(GUARD_LOCK_POLL_S)


async def run_guard(conn: asyncpg.Connection, *, timescaledb: str = "auto", apply: bool = True,
                    retention_days: int | None = None) -> Plan:
    """Plan (and unless `apply` is False, apply) the additive changes under the advisory lock.

    `retention_days` is RETENTION_DAYS; None leaves retention policies alone. Returns the plan
    as it stood before applying; drift is logged as a warning per item. A failed statement
    raises and leaves the ones before it applied, which the next run then skips.
    """
    started = time.perf_counter()
    await _take_guard_lock(conn)
    try:
        catalog = await read_catalog(conn, [t.name for t in TABLES], [i.name for t in TABLES for i in t.indexes])
        plan = plan_changes(catalog, timescaledb, retention_days)
        if apply:
            await apply_changes(conn, plan)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", GUARD_LOCK_ID)

    for drift in plan.drift:
        logger.warning("schema drift table=%s problem=%r fix=%r", drift.table, drift.description, drift.fix_sql,
                       extra={"table": drift.table})
    logger.info("schema guard done changes=%d drift=%d layout=%s elapsed_ms=%.0f", len(plan.changes), len(plan.drift),
                plan.layout, (time.perf_counter() - started) * 1000)
    return plan
