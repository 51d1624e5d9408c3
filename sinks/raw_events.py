"""The raw_events sink: COPY a batch straight into raw_events, or through a staging table when some rows exist.

The rows this transaction inserted are what the rollups count, so a redelivered or replayed
event counts once. A batch is first COPY'd into raw_events inside a savepoint. When that COPY
hits a unique key, because an event is stored already (redelivered, replayed, or stored
meanwhile by another visitor's batch with the same id) or because a table adopted from the
platform Weir replaces is unique on `id` alone, the savepoint is rolled back. The batch then
goes through a staging table and `INSERT ... ON CONFLICT DO NOTHING RETURNING id`, which skips
an event already stored under any unique key. A COPY that succeeds inserted every row.

The direct COPY saves PostgreSQL the staging table's insert and scan. Checking the ids first
with one query is not done, because without statistics PostgreSQL 15 planned it as a scan of the
whole day partition: 32 ms for 10,000 ids against a partition of 400,000 rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import asyncpg
import orjson

from streams.event import Event

STAGING_TABLE = "raw_events_staging"
COLUMNS = (
    "id", "session_id", "user_id", "event_type", "event_action", "metadata", "timestamp", "created_at",
    "site", "visitor_id", "is_bot", "url", "referrer", "user_agent",
)
_COLUMN_LIST = ", ".join(f'"{c}"' if c == "timestamp" else c for c in COLUMNS)

_CREATE_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGING_TABLE} (LIKE raw_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS
"""
_INSERT_NEW = f"""
INSERT INTO raw_events ({_COLUMN_LIST})
SELECT {_COLUMN_LIST} FROM {STAGING_TABLE}
ON CONFLICT DO NOTHING
RETURNING id
"""


@dataclass(slots=True)
class StoredEvent:
    """An event as the sink stores it: the stream event plus what the processor added."""

    event: Event
    session_id: str
    is_bot: bool
    event_id: uuid.UUID | None = None
    """`event.id` parsed, when the caller parsed it already; write_raw_events parses it otherwise."""


def to_record(stored: StoredEvent) -> tuple:
    event = stored.event
    return (
        event.id,  # asyncpg encodes a uuid column from its text form, and raises ValueError on a bad one
        stored.session_id,
        event.user_id,
        event.type,
        event.action,
        orjson.dumps(event.props).decode(),
        datetime.fromtimestamp(event.timestamp_ms / 1000, tz=timezone.utc),
        datetime.fromtimestamp(event.received_ms / 1000, tz=timezone.utc),
        event.site,
        event.visitor_id,
        stored.is_bot,
        event.url,
        event.referrer,
        event.user_agent,
    )


async def write_raw_events(conn: asyncpg.Connection, batch: Sequence[StoredEvent]) -> set[uuid.UUID]:
    """Insert the events of `batch` that are not stored yet; return the ids newly inserted.

    Runs inside the caller's transaction, so the rows and whatever the caller derives from
    them commit together or not at all.
    """
    if not batch:
        return set()
    records = [to_record(s) for s in batch]
    # An event twice in one batch is COPY'd once, so only stored rows make the COPY fail.
    unique_records = []
    inserted: set[uuid.UUID] = set()
    seen: set[tuple] = set()
    for stored, record in zip(batch, records):
        event_id = stored.event_id if stored.event_id is not None else uuid.UUID(stored.event.id)
        key = (event_id, record[6])
        if key in seen:
            continue
        seen.add(key)
        unique_records.append(record)
        inserted.add(event_id)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table("raw_events", records=unique_records, columns=list(COLUMNS))
    except asyncpg.UniqueViolationError:
        return await _insert_through_staging(conn, records)
    return inserted


async def _insert_through_staging(conn: asyncpg.Connection, records: list[tuple]) -> set[uuid.UUID]:
    await conn.execute(_CREATE_STAGING)
    await conn.copy_records_to_table(STAGING_TABLE, records=records, columns=list(COLUMNS))
    rows = await conn.fetch(_INSERT_NEW)
    # ON COMMIT DELETE ROWS empties the staging table at commit; a rolled-back batch leaves none either.
    return {row["id"] for row in rows}
