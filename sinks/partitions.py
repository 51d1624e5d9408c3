"""Daily range partitions of `raw_events` on plain PostgreSQL, and retention by dropping them.

A partition is created on demand, before a batch that needs it is written, in its own short
transaction under an advisory lock (creating a partition locks the parent briefly, and two
processors creating the same one at once would otherwise collide). With no DEFAULT partition,
an event never lands somewhere retention cannot drop.

TODO: use pg_partman's maintenance where the extension is installed; today the guard's own
code creates and drops partitions on every server.
"""

from __future__ import annotations

import logging
import re
from datetime import date, datetime, timedelta, timezone

import asyncpg

logger = logging.getLogger(__name__)

PARTITION_LOCK_ID = 0x5EE1_5C4E_0002
_NAME = re.compile(r"^(?P<table>[a-z_]+)_p(?P<day>\d{8})$")


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def _bounds(day: date) -> tuple[str, str]:
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    return start.isoformat(), (start + timedelta(days=1)).isoformat()


class PartitionManager:
    """Creates missing daily partitions of one table and remembers the ones that exist."""

    def __init__(self, table: str = "raw_events") -> None:
        self.table = table
        self._known: set[date] = set()

    async def ensure(self, conn: asyncpg.Connection, days: set[date]) -> list[str]:
        """Create the partitions of `days` that do not exist yet; return the names created."""
        missing = days - self._known
        if not missing:
            return []

        existing = await self.existing_days(conn)
        self._known |= existing
        created = []
        for day in sorted(missing - existing):
            if await self._create(conn, day):
                created.append(partition_name(self.table, day))
            self._known.add(day)
        return created

    async def existing_days(self, conn: asyncpg.Connection) -> set[date]:
        rows = await conn.fetch(
            """SELECT c.relname FROM pg_inherits i
                 JOIN pg_class c ON c.oid = i.inhrelid
                 JOIN pg_class p ON p.oid = i.inhparent
                WHERE p.relname = $1 AND p.relnamespace = current_schema()::regnamespace""",
            self.table,
        )
        days = set()
        for row in rows:
            match = _NAME.match(row["relname"])
            if match and match["table"] == self.table:
                days.add(datetime.strptime(match["day"], "%Y%m%d").date())
        return days

    async def _create(self, conn: asyncpg.Connection, day: date) -> bool:
        name = partition_name(self.table, day)
        lower, upper = _bounds(day)
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_ID)
            exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)
            if exists:
                return False
            await conn.execute(
                f"CREATE TABLE {name} PARTITION OF {self.table} FOR VALUES FROM ('{lower}') TO ('{upper}')"
            )
        logger.info("partition created table=%s partition=%s", self.table, name, extra={"partition": name})
        return True

    async def drop_older_than(self, conn: asyncpg.Connection, retention_days: int, today: date | None = None) -> list[str]:
        """Drop every partition whose whole day lies before today minus `retention_days` (UTC)."""
        today = today or datetime.now(timezone.utc).date()
        cutoff = today - timedelta(days=retention_days)
        dropped = []
        for day in sorted(await self.existing_days(conn)):
            if day >= cutoff:
                continue
            name = partition_name(self.table, day)
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_ID)
                await conn.execute(f"DROP TABLE IF EXISTS {name}")
            self._known.discard(day)
            dropped.append(name)
            logger.info("partition dropped by retention table=%s partition=%s retention_days=%d",
                        self.table, name, retention_days, extra={"partition": name})
        return dropped
