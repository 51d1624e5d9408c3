"""What the database holds: tables, columns, indexes and layout, read from the catalog."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg


@dataclass(frozen=True, slots=True)
class ActualColumn:
    name: str
    type: str
    nullable: bool
    default: str | None


@dataclass(frozen=True, slots=True)
class ActualIndex:
    name: str
    definition: str
    unique: bool
    nulls_not_distinct: bool
    valid: bool
    method: str


@dataclass(slots=True)
class ActualTable:
    name: str
    columns: dict[str, ActualColumn] = field(default_factory=dict)
    indexes: dict[str, ActualIndex] = field(default_factory=dict)
    primary_key: tuple[str, ...] = ()
    partitioned_by: str | None = None
    hypertable: bool = False


@dataclass(slots=True)
class Catalog:
    tables: dict[str, ActualTable]
    timescaledb_installed: bool
    timescaledb_available: bool
    server_version_num: int


_TABLES_SQL = """
SELECT c.relname, c.relkind,
       (SELECT a.attname FROM pg_partitioned_table p
          JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
         WHERE p.partrelid = c.oid) AS partitioned_by
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND c.relname = ANY($1::text[])
"""

_COLUMNS_SQL = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type, NOT a.attnotnull AS nullable,
       pg_get_expr(d.adbin, d.adrelid) AS default
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE n.nspname = current_schema() AND c.relname = ANY($1::text[]) AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY c.relname, a.attnum
"""

_INDEXES_SQL = """
SELECT t.relname AS table_name, i.relname AS index_name, pg_get_indexdef(x.indexrelid) AS definition,
       x.indisunique, x.indnullsnotdistinct, x.indisvalid, x.indisprimary, am.amname,
       ARRAY(SELECT a.attname FROM unnest(x.indkey) WITH ORDINALITY k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum ORDER BY k.ord) AS key_columns
  FROM pg_index x
  JOIN pg_class i ON i.oid = x.indexrelid
  JOIN pg_class t ON t.oid = x.indrelid
  JOIN pg_namespace n ON n.oid = t.relnamespace
  JOIN pg_am am ON am.oid = i.relam
 WHERE n.nspname = current_schema() AND t.relname = ANY($1::text[])
"""


async def read_catalog(conn: asyncpg.Connection, table_names: list[str]) -> Catalog:
    """Read the current schema of `table_names` (in the connection's current schema)."""
    tables: dict[str, ActualTable] = {}
    for row in await conn.fetch(_TABLES_SQL, table_names):
        tables[row["relname"]] = ActualTable(row["relname"], partitioned_by=row["partitioned_by"])

    for row in await conn.fetch(_COLUMNS_SQL, table_names):
        table = tables.get(row["relname"])
        if table is not None:
            table.columns[row["attname"]] = ActualColumn(row["attname"], row["type"], row["nullable"], row["default"])

    for row in await conn.fetch(_INDEXES_SQL, table_names):
        table = tables.get(row["table_name"])
        if table is None:
            continue
        if row["indisprimary"]:
            table.primary_key = tuple(row["key_columns"])
        table.indexes[row["index_name"]] = ActualIndex(
            row["index_name"], row["definition"], row["indisunique"], row["indnullsnotdistinct"],
            row["indisvalid"], row["amname"],
        )

    extensions = {r["name"]: r["installed_version"] for r in await conn.fetch(
        "SELECT name, installed_version FROM pg_available_extensions WHERE name = 'timescaledb'")}
    installed = extensions.get("timescaledb") is not None
    if installed:
        rows = await conn.fetch(
            "SELECT hypertable_name FROM timescaledb_information.hypertables WHERE hypertable_schema = current_schema()")
        for row in rows:
            if row["hypertable_name"] in tables:
                tables[row["hypertable_name"]].hypertable = True

    version = int(await conn.fetchval("SHOW server_version_num"))
    return Catalog(tables, installed, "timescaledb" in extensions, version)
