"""Daily range partitions of `raw_events` on plain PostgreSQL, and retention by dropping them.

A partition is created on demand, before a batch that needs it is written, in its own short
transaction under an advisory lock (creating a partition locks the parent briefly, and two
processors creating the same one at once would otherwise collide). Maintenance, hourly, creates
the next PREMAKE_DAYS partitions ahead and drops those whose whole day is older than the
retention. Without a DEFAULT partition, an event never lands somewhere retention cannot drop.

Where pg_partman manages the table (see sinks.partman), it creates and drops the partitions and
this module only asks it to. Days are UTC days; existing partitions are found by their bounds,
not their names, so partitions named by pg_partman 4.x or 5.x are recognised as well.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta, timezone

import asyncpg

from sinks import metrics, partman
from sinks.catalog import PartitionRange, read_partitions
from sinks.schema import quote_ident

logger = logging.getLogger(__name__)

PARTITION_LOCK_ID = 0x5EE1_5C4E_0002
PREMAKE_DAYS = 4
"""Days after today whose partitions maintenance creates ahead, so writes at midnight need no DDL."""

_DAY = timedelta(days=1)


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def day_start(day: date) -> datetime:
    """Return the UTC midnight that starts `day`."""
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def covers(partitions: list[PartitionRange], day: date) -> bool:
    """Return True when the bounded partitions together cover the whole UTC `day`."""
    position, end = day_start(day), day_start(day) + _DAY
    for partition in sorted((p for p in partitions if not p.is_default), key=lambda p: p.lower):
        if partition.lower <= position < partition.upper:
            position = partition.upper
        if position >= end:
            return True
    return False


class PartitionManager:
    """Creates the daily partitions of one table and drops expired ones, itself or through pg_partman."""

    def __init__(self, table: str = "raw_events", premake_days: int = PREMAKE_DAYS) -> None:
        self.table = table
        self.premake_days = premake_days
        self._covered: set[date] = set()

    async def ensure(self, conn: asyncpg.Connection, days: set[date]) -> list[str]:
        """Create the partitions of `days` that do not exist yet; return the names created.

        Each partition is created in its own short transaction, before and outside the batch's,
        so the parent is locked only briefly and a batch that rolls back keeps the partition.
        """
        missing = days - self._covered
        if not missing:
            return []

        partitions = await read_partitions(conn, self.table)
        self._covered |= {day for day in missing if covers(partitions, day)}
        missing -= self._covered
        if not missing:
            return []

        managed = await partman.find_managed(conn, self.table)
        if managed is not None:
            created = await self._create_with_partman(conn, managed, partitions, sorted(missing))
        else:
            created = [partition_name(self.table, day) for day in sorted(missing) if await self._create(conn, day)]
        self._covered |= missing
        return created

    async def maintain(self, conn: asyncpg.Connection, retention_days: int, today: date | None = None) -> list[str]:
        """Create the partitions of today and the next `premake_days` days and apply retention.

        Returns the names of the partitions dropped; partitions it creates are counted in
        weir_partitions_created. With pg_partman the extension does both, by the server's clock,
        and `today` is ignored.
        """
        managed = await partman.find_managed(conn, self.table)
        if managed is not None:
            return await self._maintain_with_partman(conn, managed)

        today = today or datetime.now(timezone.utc).date()
        created = await self.ensure(conn, {today + timedelta(days=i) for i in range(self.premake_days + 1)})
        metrics.PARTITIONS_CREATED.labels(self.table).inc(len(created))
        return await self.drop_older_than(conn, retention_days, today)

    async def drop_older_than(self, conn: asyncpg.Connection, retention_days: int, today: date | None = None) -> list[str]:
        """Drop every partition whose whole range lies before today minus `retention_days` (UTC)."""
        today = today or datetime.now(timezone.utc).date()
        cutoff = day_start(today - timedelta(days=retention_days))
        dropped = []
        for partition in await read_partitions(conn, self.table):
            if partition.is_default or partition.upper > cutoff:
                continue
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_ID)
                await conn.execute(f"DROP TABLE IF EXISTS {quote_ident(partition.name)}")
            dropped.append(partition.name)
            logger.info("partition dropped by retention table=%s partition=%s retention_days=%d",
                        self.table, partition.name, retention_days, extra={"partition": partition.name})
        self._covered = {day for day in self._covered if day_start(day) >= cutoff}
        return dropped

    async def _create(self, conn: asyncpg.Connection, day: date) -> bool:
        name = partition_name(self.table, day)
        lower, upper = day_start(day), day_start(day) + _DAY
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_ID)
            # Another processor may have created it (under any name) since this one read the bounds.
            if covers(await read_partitions(conn, self.table), day):
                return False
            await conn.execute(
                f"CREATE TABLE {quote_ident(name)} PARTITION OF {quote_ident(self.table)} "
                f"FOR VALUES FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')"
            )
        logger.info("partition created table=%s partition=%s", self.table, name, extra={"partition": name})
        return True

    async def _create_with_partman(self, conn: asyncpg.Connection, managed: partman.ManagedTable,
                                   before: list[PartitionRange], days: list[date]) -> list[str]:
        await partman.create_partitions(conn, managed, [day_start(day) for day in days])
        known = {p.name for p in before}
        created = [p.name for p in await read_partitions(conn, self.table) if p.name not in known]
        for name in created:
            logger.info("partition created by pg_partman table=%s partition=%s", self.table, name,
                        extra={"partition": name})
        return created

    async def _maintain_with_partman(self, conn: asyncpg.Connection, managed: partman.ManagedTable) -> list[str]:
        before = {p.name for p in await read_partitions(conn, self.table)}
        await partman.run_maintenance(conn, managed)
        after = {p.name for p in await read_partitions(conn, self.table)}

        created, dropped = sorted(after - before), sorted(before - after)
        for name in created:
            logger.info("partition created by pg_partman table=%s partition=%s", self.table, name,
                        extra={"partition": name})
        for name in dropped:
            logger.info("partition dropped by pg_partman retention table=%s partition=%s", self.table, name,
                        extra={"partition": name})
        metrics.PARTITIONS_CREATED.labels(self.table).inc(len(created))
        # Forget what was known: retention may have dropped days this process had seen.
        self._covered = set()
        return dropped
