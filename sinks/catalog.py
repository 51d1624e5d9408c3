"""The schema the database holds, read from the catalog: tables, columns, indexes, layout and policies."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg

from sinks.schema import quote_ident


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
    columns: tuple[str | None, ...] = ()
    """Key column names in order, with None for an expression."""
    include: tuple[str, ...] = ()
    """Columns stored without being part of the key (INCLUDE)."""
    predicate: str | None = None
    """The WHERE of a partial index, as PostgreSQL prints it."""


@dataclass(frozen=True, slots=True)
class PartitionRange:
    """One partition of a table range-partitioned on a timestamptz column; a DEFAULT partition has no bounds."""

    name: str
    lower: datetime | None
    upper: datetime | None

    @property
    def is_default(self) -> bool:
        return self.lower is None


@dataclass(frozen=True, slots=True)
class ActualCompression:
    """TimescaleDB compression settings of a hypertable, in the declaration's spelling."""

    segment_by: tuple[str, ...]
    order_by: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PartmanConfig:
    """The table's row in pg_partman's `part_config`."""

    parent_table: str
    interval: str
    retention: timedelta | None
    retention_keep_table: bool


@dataclass(frozen=True, slots=True)
class Extension:
    name: str
    schema: str
    version: str

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return parse_version(self.version)


@dataclass(slots=True)
class ActualTable:
    name: str
    columns: dict[str, ActualColumn] = field(default_factory=dict)
    indexes: dict[str, ActualIndex] = field(default_factory=dict)
    primary_key: tuple[str, ...] = ()
    partitioned_by: str | None = None
    partitions: list[PartitionRange] = field(default_factory=list)
    default_partition_has_rows: bool = False
    has_rows: bool = False
    hypertable: bool = False
    compression: ActualCompression | None = None
    retention_policy: timedelta | None = None
    """TimescaleDB retention policy (`drop_after`), None when there is none."""
    compression_policy: timedelta | None = None
    """TimescaleDB compression policy (`compress_after`), None when there is none."""
    partman: PartmanConfig | None = None
    fillfactor: int | None = None
    """The fillfactor storage parameter, None when the table has none (PostgreSQL's 100)."""

    @property
    def default_partition(self) -> PartitionRange | None:
        return next((p for p in self.partitions if p.is_default), None)


@dataclass(slots=True)
class Catalog:
    tables: dict[str, ActualTable]
    timescaledb_installed: bool
    timescaledb_available: bool
    server_version_num: int
    timescaledb: Extension | None = None
    """The timescaledb extension when it is installed in this database."""
    timescaledb_preloaded: bool | None = None
    """Whether shared_preload_libraries names timescaledb; None when this role may not read it."""
    partman: Extension | None = None
    """The pg_partman extension when it is installed in this database."""
    schema: str = "public"
    relation_owners: dict[str, tuple[str, bool]] = field(default_factory=dict)
    """Owner of each looked-up index name that exists in the schema: the indexed table and True,
    or the relation itself and False when the name belongs to no index."""


def parse_version(version: str) -> tuple[int, ...]:
    """Turn an extension version such as "2.14.2" or "5.1.0-beta" into (2, 14, 2) or (5, 1, 0)."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


_TABLES_SQL = """
SELECT c.relname, c.relkind,
       (SELECT a.attname FROM pg_partitioned_table p
          JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
         WHERE p.partrelid = c.oid) AS partitioned_by,
       (SELECT split_part(o, '=', 2)::int FROM unnest(c.reloptions) AS o WHERE o LIKE 'fillfactor=%') AS fillfactor
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
               LEFT JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
              WHERE k.ord <= x.indnkeyatts ORDER BY k.ord) AS key_columns,
       ARRAY(SELECT a.attname FROM unnest(x.indkey) WITH ORDINALITY k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
              WHERE k.ord > x.indnkeyatts ORDER BY k.ord) AS include_columns,
       pg_get_expr(x.indpred, x.indrelid) AS predicate
  FROM pg_index x
  JOIN pg_class i ON i.oid = x.indexrelid
  JOIN pg_class t ON t.oid = x.indrelid
  JOIN pg_namespace n ON n.oid = t.relnamespace
  JOIN pg_am am ON am.oid = i.relam
 WHERE n.nspname = current_schema() AND t.relname = ANY($1::text[])
"""

# Bounds are printed in the session's TimeZone and DateStyle and parsed back in the same session,
# so the round trip is exact. Only tables partitioned on a timestamptz column are read.
_PARTITIONS_SQL = r"""
SELECT child.relname AS name,
       pg_get_expr(child.relpartbound, child.oid) = 'DEFAULT' AS is_default,
       bounds[1]::timestamptz AS lower, bounds[2]::timestamptz AS upper
  FROM pg_inherits i
  JOIN pg_class child ON child.oid = i.inhrelid
  JOIN pg_class parent ON parent.oid = i.inhparent
  JOIN pg_partitioned_table p ON p.partrelid = parent.oid
  JOIN pg_attribute a ON a.attrelid = parent.oid AND a.attnum = p.partattrs[0]
  LEFT JOIN LATERAL regexp_match(pg_get_expr(child.relpartbound, child.oid),
                                 'FROM \(''([^'']+)''\) TO \(''([^'']+)''\)') AS bounds ON true
 WHERE parent.relnamespace = current_schema()::regnamespace AND parent.relname = $1
   AND a.atttypid = 'timestamptz'::regtype
 ORDER BY lower NULLS FIRST
"""

_EXTENSIONS_SQL = """
SELECT a.name, a.installed_version, n.nspname AS schema
  FROM pg_available_extensions a
  LEFT JOIN pg_extension e ON e.extname = a.name
  LEFT JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE a.name IN ('timescaledb', 'pg_partman')
"""


_RELATIONS_SQL = """
SELECT c.relname, COALESCE(t.relname, c.relname) AS owner, x.indexrelid IS NOT NULL AS is_index
  FROM pg_class c
  LEFT JOIN pg_index x ON x.indexrelid = c.oid
  LEFT JOIN pg_class t ON t.oid = x.indrelid
 WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY($1::text[])
"""


_HYPERTABLES_SQL = """
SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables
 WHERE hypertable_schema = current_schema()
"""

# Recent TimescaleDB documentation keeps compression_settings for backward compatibility only,
# but the view exists from 2.0 on, so it works on every 2.x release.
_COMPRESSION_SETTINGS_SQL = """
SELECT hypertable_name, attname, segmentby_column_index, orderby_column_index, orderby_asc, orderby_nullsfirst
  FROM timescaledb_information.compression_settings
 WHERE hypertable_schema = current_schema()
"""

# Intervals are stored as JSON strings. An integer time column stores a number, read as None.
_POLICIES_SQL = """
SELECT hypertable_name, proc_name,
       CASE WHEN jsonb_typeof(config->'drop_after') = 'string' THEN (config->>'drop_after')::interval END
           AS drop_after,
       CASE WHEN jsonb_typeof(config->'compress_after') = 'string' THEN (config->>'compress_after')::interval END
           AS compress_after
  FROM timescaledb_information.jobs
 WHERE hypertable_schema = current_schema() AND proc_name IN ('policy_retention', 'policy_compression')
"""


async def read_catalog(conn: asyncpg.Connection, table_names: list[str], index_names: Sequence[str] = ()) -> Catalog:
    """Read the current schema of `table_names` (in the connection's current schema).

    `index_names` are looked up among every relation of the schema, which distinguishes a
    missing index from a name already taken by another table's index.
    """
    tables: dict[str, ActualTable] = {}
    for row in await conn.fetch(_TABLES_SQL, table_names):
        tables[row["relname"]] = ActualTable(row["relname"], partitioned_by=row["partitioned_by"],
                                             fillfactor=row["fillfactor"])

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
            row["indisvalid"], row["amname"], tuple(row["key_columns"]), tuple(row["include_columns"]),
            row["predicate"],
        )

    for table in tables.values():
        await _read_contents(conn, table)

    catalog = Catalog(tables, False, False, int(await conn.fetchval("SHOW server_version_num")),
                      schema=await conn.fetchval("SELECT current_schema()"))
    catalog.relation_owners = {r["relname"]: (r["owner"], r["is_index"])
                               for r in await conn.fetch(_RELATIONS_SQL, list(index_names))}
    await _read_extensions(conn, catalog)
    if catalog.timescaledb is not None:
        await read_timescaledb(conn, catalog)
    if catalog.partman is not None:
        await _read_partman(conn, catalog)
    return catalog


async def read_partitions(conn: asyncpg.Connection, table: str) -> list[PartitionRange]:
    """Return the partitions of `table` with their bounds, DEFAULT first, then by lower bound."""
    return [PartitionRange(r["name"], None if r["is_default"] else r["lower"], None if r["is_default"] else r["upper"])
            for r in await conn.fetch(_PARTITIONS_SQL, table)]


async def _read_contents(conn: asyncpg.Connection, table: ActualTable) -> None:
    # EXISTS reads at most one row, so this stays cheap on a table of any size.
    table.has_rows = await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {quote_ident(table.name)})")
    if table.partitioned_by is None:
        return
    table.partitions = await read_partitions(conn, table.name)
    default = table.default_partition
    if default is not None:
        table.default_partition_has_rows = await conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM ONLY {quote_ident(default.name)})")


async def _read_extensions(conn: asyncpg.Connection, catalog: Catalog) -> None:
    for row in await conn.fetch(_EXTENSIONS_SQL):
        installed = None
        if row["installed_version"] is not None:
            installed = Extension(row["name"], row["schema"], row["installed_version"])
        if row["name"] == "timescaledb":
            catalog.timescaledb_available = True
            catalog.timescaledb_installed = installed is not None
            catalog.timescaledb = installed
        else:
            catalog.partman = installed

    # pg_settings hides shared_preload_libraries from roles without pg_read_all_settings.
    preload = await conn.fetchval("SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries'")
    if preload is not None:
        catalog.timescaledb_preloaded = "timescaledb" in [p.strip().strip('"') for p in preload.split(",")]


async def read_timescaledb(conn: asyncpg.Connection, catalog: Catalog) -> None:
    """Read which tables of `catalog` are hypertables, with their compression and policies."""
    compressed = set()
    for row in await conn.fetch(_HYPERTABLES_SQL):
        table = catalog.tables.get(row["hypertable_name"])
        if table is not None:
            table.hypertable = True
            if row["compression_enabled"]:
                compressed.add(table.name)

    settings: dict[str, tuple[list, list]] = {name: ([], []) for name in compressed}
    for row in await conn.fetch(_COMPRESSION_SETTINGS_SQL):
        if row["hypertable_name"] not in settings:
            continue
        segment_by, order_by = settings[row["hypertable_name"]]
        if row["segmentby_column_index"] is not None:
            segment_by.append((row["segmentby_column_index"], quote_ident(row["attname"])))
        if row["orderby_column_index"] is not None:
            order_by.append((row["orderby_column_index"],
                             _order_by_item(row["attname"], row["orderby_asc"], row["orderby_nullsfirst"])))
    for name, (segment_by, order_by) in settings.items():
        catalog.tables[name].compression = ActualCompression(
            tuple(item for _, item in sorted(segment_by)), tuple(item for _, item in sorted(order_by)))

    for row in await conn.fetch(_POLICIES_SQL):
        table = catalog.tables.get(row["hypertable_name"])
        if table is None:
            continue
        if row["proc_name"] == "policy_retention":
            table.retention_policy = row["drop_after"]
        else:
            table.compression_policy = row["compress_after"]


def _order_by_item(column: str, ascending: bool, nulls_first: bool) -> str:
    item = quote_ident(column) + ("" if ascending else " DESC")
    # The defaults are NULLS LAST for ASC and NULLS FIRST for DESC, so only the other case is spelled out.
    if ascending and nulls_first:
        item += " NULLS FIRST"
    elif not ascending and not nulls_first:
        item += " NULLS LAST"
    return item


async def _read_partman(conn: asyncpg.Connection, catalog: Catalog) -> None:
    parents = {f"{catalog.schema}.{name}": name for name in catalog.tables}
    rows = await conn.fetch(
        f"SELECT parent_table, partition_interval, retention_keep_table, "
        # A time-based set stores retention as interval text, and an id-based one as a plain number.
        f"CASE WHEN retention ~ '^\\s*\\d+\\s*$' THEN NULL ELSE retention::interval END AS retention "
        f"FROM {quote_ident(catalog.partman.schema)}.part_config WHERE parent_table = ANY($1::text[])",
        list(parents))
    for row in rows:
        catalog.tables[parents[row["parent_table"]]].partman = PartmanConfig(
            row["parent_table"], row["partition_interval"], row["retention"], row["retention_keep_table"])
