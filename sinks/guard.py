"""The schema guard: compares the declared schema with the database and applies additive DDL.

It runs at every processor start and from `weir schema apply`. It only creates tables, adds
columns, sets missing defaults and creates indexes; it never drops, renames or retypes. What it
cannot fix additively is reported as drift with the statement an operator would run.
A PostgreSQL advisory lock makes replicas that start together take turns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import asyncpg

from sinks.catalog import ActualTable, Catalog, read_catalog
from sinks.schema import TABLES, Column, Index, Table, quote_ident

logger = logging.getLogger(__name__)

GUARD_LOCK_ID = 0x5EE1_5C4E_0001
"""Advisory lock key held while the guard plans and applies; any constant shared by all replicas."""


@dataclass(frozen=True, slots=True)
class Change:
    """One additive DDL statement the guard applies."""

    table: str
    description: str
    sql: str
    outside_transaction: bool = False
    """True for CREATE INDEX CONCURRENTLY, which PostgreSQL refuses inside a transaction."""


@dataclass(frozen=True, slots=True)
class Drift:
    """A difference the guard will not fix itself, with the statement that would."""

    table: str
    description: str
    fix_sql: str


@dataclass(slots=True)
class Plan:
    changes: list[Change] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)
    use_timescaledb: bool = False

    @property
    def clean(self) -> bool:
        return not self.changes and not self.drift


def create_table_sql(table: Table, use_timescaledb: bool) -> str:
    """Return the CREATE TABLE statement of `table` on the current layout."""
    lines = [column.definition() for column in table.columns]
    if table.primary_key:
        lines.append("PRIMARY KEY (" + ", ".join(quote_ident(c) for c in table.primary_key) + ")")
    body = ",\n    ".join(lines)
    sql = f"CREATE TABLE IF NOT EXISTS {quote_ident(table.name)} (\n    {body}\n)"
    if table.partition_column and not use_timescaledb:
        sql += f" PARTITION BY RANGE ({quote_ident(table.partition_column)})"
    return sql


def create_index_sql(table: Table, index: Index, concurrently: bool = False) -> str:
    unique = "UNIQUE " if index.unique else ""
    how = "CONCURRENTLY " if concurrently else ""
    using = f" USING {index.method}" if index.method != "btree" else ""
    nulls = " NULLS NOT DISTINCT" if index.nulls_not_distinct else ""
    columns = ", ".join(index.columns)
    return f"CREATE {unique}INDEX {how}IF NOT EXISTS {index.name} ON {quote_ident(table.name)}{using} ({columns}){nulls}"


def hypertable_sql(table: Table) -> str:
    return (f"SELECT create_hypertable('{table.name}', '{table.partition_column}', "
            "chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE, migrate_data => TRUE)")


def schema_sql(use_timescaledb: bool = False) -> list[str]:
    """Return every statement that creates the declared schema on an empty database, in order."""
    statements: list[str] = []
    if use_timescaledb:
        statements.append("CREATE EXTENSION IF NOT EXISTS timescaledb")
    for table in TABLES:
        statements.append(create_table_sql(table, use_timescaledb))
        if table.partition_column and use_timescaledb:
            statements.append(hypertable_sql(table))
        statements.extend(create_index_sql(table, index) for index in table.indexes)
    return statements


def plan_changes(catalog: Catalog, timescaledb: str = "auto") -> Plan:
    """Compare the declaration with `catalog`; `timescaledb` is "auto", "on" or "off"."""
    use_timescaledb = timescaledb == "on" or (timescaledb == "auto" and catalog.timescaledb_available)
    plan = Plan(use_timescaledb=use_timescaledb)
    if use_timescaledb and not catalog.timescaledb_available:
        plan.drift.append(Drift("*", "the timescaledb extension is not available on this server",
                                "install TimescaleDB, or set TIMESCALEDB=off to use native partitions"))
        plan.use_timescaledb = use_timescaledb = False
    if use_timescaledb and not catalog.timescaledb_installed:
        plan.changes.append(Change("*", "create extension timescaledb", "CREATE EXTENSION IF NOT EXISTS timescaledb"))

    for table in TABLES:
        actual = catalog.tables.get(table.name)
        if actual is None:
            _plan_new_table(plan, table, use_timescaledb)
        else:
            _plan_existing_table(plan, table, actual, use_timescaledb)
    return plan


def _plan_new_table(plan: Plan, table: Table, use_timescaledb: bool) -> None:
    plan.changes.append(Change(table.name, f"create table {table.name}", create_table_sql(table, use_timescaledb)))
    if table.partition_column and use_timescaledb:
        plan.changes.append(Change(table.name, f"make {table.name} a hypertable", hypertable_sql(table)))
    for index in table.indexes:
        plan.changes.append(Change(table.name, f"create index {index.name}", create_index_sql(table, index)))


def _plan_existing_table(plan: Plan, table: Table, actual: ActualTable, use_timescaledb: bool) -> None:
    for column in table.columns:
        _plan_column(plan, table, column, actual)
    _plan_layout(plan, table, actual, use_timescaledb)

    # Indexes of a partitioned table cannot be built CONCURRENTLY; PostgreSQL builds each partition's.
    concurrently = actual.partitioned_by is None
    for index in table.indexes:
        present = actual.indexes.get(index.name)
        if present is None:
            plan.changes.append(Change(table.name, f"create index {index.name}",
                                       create_index_sql(table, index, concurrently), outside_transaction=concurrently))
        elif not present.valid:
            plan.drift.append(Drift(table.name, f"index {index.name} is invalid (a concurrent build failed)",
                                    f"DROP INDEX CONCURRENTLY {index.name}; then run `weir schema apply`"))
        elif index.unique != present.unique or index.nulls_not_distinct != present.nulls_not_distinct:
            plan.drift.append(Drift(
                table.name, f"index {index.name} differs: {present.definition}",
                f"DROP INDEX CONCURRENTLY {index.name}; {create_index_sql(table, index, True)}"))


def _plan_column(plan: Plan, table: Table, column: Column, actual: ActualTable) -> None:
    present = actual.columns.get(column.name)
    name = f"{table.name}.{column.quoted}"
    if present is None:
        plan.changes.append(Change(table.name, f"add column {name}",
                                   f"ALTER TABLE {quote_ident(table.name)} ADD COLUMN IF NOT EXISTS {column.definition()}"))
        return
    if present.type != column.type:
        plan.drift.append(Drift(table.name, f"column {name} is {present.type}, the code expects {column.type}",
                                f"ALTER TABLE {quote_ident(table.name)} ALTER COLUMN {column.quoted} TYPE {column.type}"))
    if column.default is not None and present.default is None:
        plan.changes.append(Change(table.name, f"set default of {name}",
                                   f"ALTER TABLE {quote_ident(table.name)} ALTER COLUMN {column.quoted} SET DEFAULT {column.default}"))
    if not column.nullable and present.nullable:
        plan.drift.append(Drift(table.name, f"column {name} allows NULL, the code expects NOT NULL",
                                f"ALTER TABLE {quote_ident(table.name)} ALTER COLUMN {column.quoted} SET NOT NULL"))


def _plan_layout(plan: Plan, table: Table, actual: ActualTable, use_timescaledb: bool) -> None:
    if table.primary_key and tuple(actual.primary_key) != table.primary_key:
        keys = ", ".join(actual.primary_key) or "none"
        plan.drift.append(Drift(
            table.name, f"primary key is ({keys}); the current layout uses ({', '.join(table.primary_key)})",
            f"-- the table keeps working as it is; to move to the current layout:\n{create_table_sql(table, use_timescaledb)}"))
    if table.partition_column is None:
        return

    if use_timescaledb and not actual.hypertable:
        plan.drift.append(Drift(table.name, f"{table.name} is not a hypertable", hypertable_sql(table)))
    elif not use_timescaledb and actual.partitioned_by != table.partition_column:
        plan.drift.append(Drift(
            table.name,
            f"{table.name} is not partitioned by {table.partition_column}; it keeps working, without partition retention",
            f"-- copy into a table created as:\n{create_table_sql(table, False)}"))


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


async def run_guard(conn: asyncpg.Connection, *, timescaledb: str = "auto", apply: bool = True) -> Plan:
    """Plan (and unless `apply` is False, apply) the additive changes under the advisory lock.

    Returns the plan as it stood before applying; drift is logged as a warning per item.
    """
    started = time.perf_counter()
    await conn.execute("SELECT pg_advisory_lock($1)", GUARD_LOCK_ID)
    try:
        catalog = await read_catalog(conn, [t.name for t in TABLES])
        plan = plan_changes(catalog, timescaledb)
        if apply:
            await apply_changes(conn, plan)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", GUARD_LOCK_ID)

    for drift in plan.drift:
        logger.warning("schema drift table=%s problem=%r fix=%r", drift.table, drift.description, drift.fix_sql,
                       extra={"table": drift.table})
    logger.info("schema guard done changes=%d drift=%d layout=%s elapsed_ms=%.0f", len(plan.changes), len(plan.drift),
                "timescaledb" if plan.use_timescaledb else "partitions", (time.perf_counter() - started) * 1000)
    return plan
