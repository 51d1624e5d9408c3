"""The statements of the TimescaleDB layout: hypertable, compression, and retention and compression policies.

Written against the TimescaleDB 2.x API (`create_hypertable` with named arguments,
`add_retention_policy`, `add_compression_policy`, `ALTER TABLE ... SET (timescaledb.compress, ...)`),
which 2.18 renamed to columnstore terms but still accepts. Each statement is idempotent on its
own: `if_not_exists => true` makes a second call a no-op, and the guard issues
`ALTER TABLE ... SET (timescaledb.compress ...)` only while compression is off.

NOTE: unit tests check these statements and the plans built from them. The integration tests
run only where the extension is installed, and the development machine lacks it, so this path
has not run against a real TimescaleDB yet.
"""

from __future__ import annotations

from sinks.schema import Table, quote_ident

MIN_COMPRESSION_VERSION = (2, 11)
"""First release where INSERT ... ON CONFLICT DO NOTHING works on compressed chunks. Earlier 2.x
releases reject it, so a late event for a compressed day would fail its whole batch."""

CHUNK_INTERVAL = "1 day"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _relation(table: Table) -> str:
    """Return the table as a regclass literal, quoted inside when its name needs it."""
    return _literal(quote_ident(table.name))


def _days(days: int) -> str:
    return f"INTERVAL {_literal(f'{days} days')}"


def create_hypertable_sql(table: Table) -> str:
    """Return the call that turns `table` into a hypertable with one chunk per day."""
    return (f"SELECT create_hypertable({_relation(table)}, {_literal(table.partition_column)}, "
            f"chunk_time_interval => INTERVAL {_literal(CHUNK_INTERVAL)}, if_not_exists => TRUE, migrate_data => TRUE)")


def enable_compression_sql(table: Table) -> str:
    """Return the ALTER TABLE that turns compression on with the declared segmentby and orderby."""
    compression = table.compression
    return (f"ALTER TABLE {quote_ident(table.name)} SET (timescaledb.compress, "
            f"timescaledb.compress_segmentby = {_literal(', '.join(compression.segment_by))}, "
            f"timescaledb.compress_orderby = {_literal(', '.join(compression.order_by))})")


def change_compression_sql(table: Table) -> str:
    """Return the statements an operator runs to move existing compression to the declared settings."""
    return ("-- compressed chunks keep their old settings; decompress them first (this needs disk space):\n"
            f"SELECT decompress_chunk(c, if_compressed => true) FROM show_chunks({_relation(table)}) c;\n"
            f"{enable_compression_sql(table)}")


def add_compression_policy_sql(table: Table) -> str:
    return (f"SELECT add_compression_policy({_relation(table)}, compress_after => {_days(table.compression.after_days)}, "
            "if_not_exists => true)")


def replace_compression_policy_sql(table: Table) -> str:
    return (f"SELECT remove_compression_policy({_relation(table)}, if_exists => true);\n"
            f"SELECT add_compression_policy({_relation(table)}, compress_after => {_days(table.compression.after_days)})")


def add_retention_policy_sql(table: Table, retention_days: int) -> str:
    return (f"SELECT add_retention_policy({_relation(table)}, drop_after => {_days(retention_days)}, "
            "if_not_exists => true)")


def replace_retention_policy_sql(table: Table, retention_days: int) -> str:
    return (f"SELECT remove_retention_policy({_relation(table)}, if_exists => true);\n"
            f"SELECT add_retention_policy({_relation(table)}, drop_after => {_days(retention_days)})")


def policies_sql(table: Table, retention_days: int | None) -> list[str]:
    """Return the statements that follow the indexes of a new hypertable: compression, then policies."""
    statements = []
    if table.compression is not None:
        statements += [enable_compression_sql(table), add_compression_policy_sql(table)]
    if table.retention and retention_days is not None:
        statements.append(add_retention_policy_sql(table, retention_days))
    return statements
