"""The raw_events sink: COPY a batch into a staging table, then insert what is new.

`INSERT ... ON CONFLICT DO NOTHING` without a conflict target skips an event whose id is
already stored under any unique key: `(id, timestamp)` on the current layout, `id` alone on a
table adopted from the platform Weir replaces. `RETURNING` gives the rows this transaction
inserted, which is what the rollups count, so a redelivered or replayed event counts once.
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
    await conn.execute(_CREATE_STAGING)
    await conn.copy_records_to_table(STAGING_TABLE, records=[to_record(s) for s in batch], columns=list(COLUMNS))
    rows = await conn.fetch(_INSERT_NEW)
    # ON COMMIT DELETE ROWS empties the staging table at commit; a rolled-back batch leaves none either.
    return {row["id"] for row in rows}
