"""Additive DDL as the schema guard plans it: the statements it applies and the drift it reports."""

from __future__ import annotations

from dataclasses import dataclass, field

from sinks.schema import Index, Table, quote_ident


@dataclass(frozen=True, slots=True)
class Change:
    """One additive DDL statement the guard applies."""

    table: str
    description: str
    sql: str
    outside_transaction: bool = False
    """True for CREATE INDEX CONCURRENTLY and TimescaleDB's per-chunk index build, which both commit as they go."""


@dataclass(frozen=True, slots=True)
class Drift:
    """A difference the guard will not fix itself, with the statements that would."""

    table: str
    description: str
    fix_sql: str


@dataclass(slots=True)
class Plan:
    changes: list[Change] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)
    use_timescaledb: bool = False
    use_partman: bool = False

    @property
    def clean(self) -> bool:
        return not self.changes and not self.drift

    @property
    def layout(self) -> str:
        if self.use_timescaledb:
            return "timescaledb"
        return "pg_partman" if self.use_partman else "partitions"

    def change(self, table: str, description: str, sql: str, outside_transaction: bool = False) -> None:
        self.changes.append(Change(table, description, sql, outside_transaction))

    def report(self, table: str, description: str, fix_sql: str) -> None:
        self.drift.append(Drift(table, description, fix_sql))


def create_table_sql(table: Table, use_timescaledb: bool) -> str:
    """Return the CREATE TABLE statement of `table` on the current layout."""
    lines = [column.definition() for column in table.columns]
    if table.primary_key:
        lines.append("PRIMARY KEY (" + ", ".join(quote_ident(c) for c in table.primary_key) + ")")
    body = ",\n    ".join(lines)
    sql = f"CREATE TABLE IF NOT EXISTS {quote_ident(table.name)} (\n    {body}\n)"
    if table.partition_column and not use_timescaledb:
        sql += f" PARTITION BY RANGE ({quote_ident(table.partition_column)})"
    elif table.fillfactor is not None:
        sql += f" WITH (fillfactor = {table.fillfactor})"
    return sql


def set_fillfactor_sql(table: Table) -> str:
    """Return the ALTER TABLE that gives `table` its declared fillfactor; it applies to pages filled from then on."""
    return f"ALTER TABLE {quote_ident(table.name)} SET (fillfactor = {table.fillfactor})"


def create_index_sql(table: Table, index: Index, concurrently: bool = False, per_chunk: bool = False) -> str:
    """Return the CREATE INDEX of `index`. With `per_chunk`, TimescaleDB builds it one chunk per transaction."""
    unique = "UNIQUE " if index.unique else ""
    concurrent = "CONCURRENTLY " if concurrently else ""
    using = f" USING {index.method}" if index.method != "btree" else ""
    nulls = " NULLS NOT DISTINCT" if index.nulls_not_distinct else ""
    chunked = " WITH (timescaledb.transaction_per_chunk)" if per_chunk else ""
    columns = ", ".join(index.columns)
    include = f" INCLUDE ({', '.join(index.include)})" if index.include else ""
    where = f" WHERE {index.where}" if index.where else ""
    return (f"CREATE {unique}INDEX {concurrent}IF NOT EXISTS {index.name} ON {quote_ident(table.name)}{using} "
            f"({columns}){include}{nulls}{chunked}{where}")
