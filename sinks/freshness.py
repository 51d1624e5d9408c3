"""Freshness of each table: when it was last written and the newest event time it holds.

Each sink calls `record_write` in the transaction that writes its table, so a table whose
writes fail stops moving here too, while raw_events keeps moving. Readers compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from sinks import metrics

_UPSERT = """
INSERT INTO table_freshness (table_name, last_write_at, last_event_at, rows_written)
VALUES ($1, now(), $2, $3)
ON CONFLICT (table_name) DO UPDATE
   SET last_write_at = now(),
       last_event_at = GREATEST(table_freshness.last_event_at, EXCLUDED.last_event_at),
       rows_written = table_freshness.rows_written + EXCLUDED.rows_written
"""


@dataclass(frozen=True, slots=True)
class TableFreshness:
    table: str
    last_write_at: datetime | None
    last_event_at: datetime | None


async def record_write(conn: asyncpg.Connection, table: str, newest_event: datetime | None, rows: int) -> None:
    """Mark `table` as written now, holding events up to `newest_event`."""
    await conn.execute(_UPSERT, table, newest_event, rows)


async def read_freshness(conn: asyncpg.Connection) -> dict[str, TableFreshness]:
    rows = await conn.fetch("SELECT table_name, last_write_at, last_event_at FROM table_freshness")
    result = {r["table_name"]: TableFreshness(r["table_name"], r["last_write_at"], r["last_event_at"]) for r in rows}
    for item in result.values():
        if item.last_write_at is not None:
            metrics.LAST_WRITE_SECONDS.labels(item.table).set(item.last_write_at.timestamp())
    return result
