"""The raw_events sink stores each (id, timestamp) once and returns only the ids it inserted."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import asyncpg
import pytest

from sinks.guard import run_guard
from sinks.partitions import PartitionManager
from sinks.raw_events import StoredEvent, write_raw_events
from streams.event import Event
from tests.sinks.test_legacy_adoption import LEGACY_RAW_EVENTS

BASE_MS = 1_772_000_000_000


def make_stored(number: int, *, minute: int = 0) -> StoredEvent:
    event = Event(id=str(uuid.UUID(int=number)), site="r.example", type="pageview", action="/",
                  timestamp_ms=BASE_MS + minute * 60_000, received_ms=BASE_MS, visitor_id="v")
    return StoredEvent(event, "session", False)


async def write(conn: asyncpg.Connection, batch: list[StoredEvent]) -> set[uuid.UUID]:
    async with conn.transaction():
        return await write_raw_events(conn, batch)


@pytest.fixture
async def raw_events_db(db):
    await run_guard(db, timescaledb="off", retention_days=None)
    await PartitionManager("raw_events").ensure(db, {datetime.fromtimestamp(BASE_MS / 1000, tz=timezone.utc).date()})
    return db


async def test_redelivered_events_are_skipped(raw_events_db):
    first = await write(raw_events_db, [make_stored(1), make_stored(2)])
    again = await write(raw_events_db, [make_stored(2), make_stored(3)])

    assert first == {uuid.UUID(int=1), uuid.UUID(int=2)}
    assert again == {uuid.UUID(int=3)}
    assert await raw_events_db.fetchval("SELECT count(*) FROM raw_events") == 3


async def test_duplicate_in_one_batch_stored_once(raw_events_db):
    inserted = await write(raw_events_db, [make_stored(1), make_stored(1)])

    assert inserted == {uuid.UUID(int=1)}
    assert await raw_events_db.fetchval("SELECT count(*) FROM raw_events") == 1


async def test_id_only_key_skips_other_timestamp(db):
    # A table of the replaced platform is unique on id alone: the COPY fails on the stored id and
    # the staging path skips the event.
    await db.execute(LEGACY_RAW_EVENTS)
    await run_guard(db, timescaledb="off", retention_days=None)
    await write(db, [make_stored(1)])

    inserted = await write(db, [make_stored(1, minute=5), make_stored(2)])

    assert inserted == {uuid.UUID(int=2)}
    assert await db.fetchval("SELECT count(*) FROM raw_events") == 2


async def test_concurrent_insert_of_same_id_stored_once(raw_events_db, database_url):
    other = await asyncpg.connect(database_url)
    try:
        async with other.transaction():
            # Another batch stores the same id but has not committed when this one writes.
            assert await write_raw_events(other, [make_stored(1)]) == {uuid.UUID(int=1)}
            writing = asyncio.create_task(write(raw_events_db, [make_stored(1), make_stored(2)]))
            await asyncio.sleep(0.5)
            assert not writing.done()
        inserted = await asyncio.wait_for(writing, 30)
    finally:
        await other.close()

    assert inserted == {uuid.UUID(int=2)}
    assert await raw_events_db.fetchval("SELECT count(*) FROM raw_events") == 2
