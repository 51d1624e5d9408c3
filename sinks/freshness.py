"""Freshness of each table: when it was last written, and whether it has stopped moving.

Each sink calls `record_write` in the transaction that writes its table, so a table whose
writes fail stops moving here too. `assess` turns those rows and the stream backlog into a
verdict per table, so that an empty answer from a broken pipeline never reads as a quiet
period:
- any table is stale when entries have waited in the stream longer than `stale_after_s` and
  the table has not been written for that long (the pipeline is stuck);
- a derived table is also stale when its newest event trails raw_events' by more than
  `stale_after_s` (it stopped while raw events kept arriving, as after a rebuild that failed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import asyncpg

from sinks import metrics
from streams.backlog import Backlog

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
    lag_s: float
    stale: bool
    reason: str | None

    def as_dict(self) -> dict:
        return {
            "last_write_at": self.last_write_at.isoformat() if self.last_write_at else None,
            "last_event_at": self.last_event_at.isoformat() if self.last_event_at else None,
            "lag_s": round(self.lag_s, 3),
            "stale": self.stale,
        }


async def record_write(conn: asyncpg.Connection, table: str, newest_event: datetime | None, rows: int) -> None:
    """Mark `table` as written now, holding events up to `newest_event`."""
    await conn.execute(_UPSERT, table, newest_event, rows)


async def read_rows(conn: asyncpg.Connection) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch("SELECT table_name, last_write_at, last_event_at FROM table_freshness")
    return {r["table_name"]: r for r in rows}


def _iso(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "never"


def assess(rows: dict[str, asyncpg.Record], tables: list[str], backlog: Backlog | None, stale_after_s: float,
           now: datetime | None = None) -> dict[str, TableFreshness]:
    """Return the freshness of each of `tables`; `backlog` None means the stream could not be read."""
    now = now or datetime.now(timezone.utc)
    raw = rows.get("raw_events")
    raw_event = raw["last_event_at"] if raw else None
    stuck = backlog is not None and backlog.entries > 0 and backlog.oldest_age_s > stale_after_s
    result = {}
    for table in tables:
        row = rows.get(table)
        last_write = row["last_write_at"] if row else None
        last_event = row["last_event_at"] if row else None
        idle_s = (now - last_write).total_seconds() if last_write else float("inf")
        lag_s, stale, reason = 0.0, False, None
        if table != "raw_events" and raw_event is not None:
            lag_s = (raw_event - last_event).total_seconds() if last_event else (now - raw_event).total_seconds()
            lag_s = max(lag_s, 0.0)
            if last_event is None or lag_s > stale_after_s:
                stale = True
                reason = f"{table} trails raw_events by {lag_s:.0f} s (last written {_iso(last_write)})"
        if stuck and idle_s > stale_after_s:
            lag_s = max(lag_s, backlog.oldest_age_s)
            stale = True
            reason = (f"{backlog.entries} stream entries have waited up to {backlog.oldest_age_s:.0f} s and "
                      f"{table} was last written {_iso(last_write)}")
        result[table] = TableFreshness(table, last_write, last_event, lag_s, stale, reason)
    return result


def export_metrics(freshness: dict[str, TableFreshness]) -> None:
    """Set the per-table freshness gauges from an assessment."""
    for item in freshness.values():
        if item.last_write_at is not None:
            metrics.LAST_WRITE_SECONDS.labels(item.table).set(item.last_write_at.timestamp())
        metrics.LAG_SECONDS.labels(item.table).set(item.lag_s)
        metrics.TABLE_STALE.labels(item.table).set(1 if item.stale else 0)
