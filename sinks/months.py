"""Closed months: the months whose monthly_metrics rows are complete and kept up to date.

Batches write daily rows for every date, but monthly rows only for closed months, so the month
in progress costs no second upsert per row. Once a site's month is over, the processor's
maintenance closes it: under the site's exclusive lock (batches take it shared, so none is
half written), it sums the month's monthly rows from daily_metrics and records the month as
closed. Batches after that add to its monthly rows as well, and reports read the month from
there. Whether a month is closed changes how fast a report is, never its numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import asyncpg

from sinks.rollups import refresh_months
from sinks.sessions import SITE_LOCK_CLASS

logger = logging.getLogger(__name__)

_CLOSED = "SELECT month FROM closed_months WHERE site = $1 AND month = ANY($2::date[])"

_OPEN_MONTHS = """
SELECT DISTINCT date_trunc('month', date)::date AS month FROM daily_metrics
 WHERE site = $1 AND dimension_key IS NULL AND date < $2
EXCEPT
SELECT month FROM closed_months WHERE site = $1
ORDER BY 1
"""


async def closed_among(conn: asyncpg.Connection, site: str, months: Iterable[date]) -> set[date]:
    """Return which of `months` (first dates) are closed for `site`."""
    requested = sorted(set(months))
    if not requested:
        return set()
    return {row["month"] for row in await conn.fetch(_CLOSED, site, requested)}


async def close_month(conn: asyncpg.Connection, site: str, month: date) -> bool:
    """Sum `month`'s monthly rows and mark it closed; return False when it already was."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", SITE_LOCK_CLASS, site)
        if await closed_among(conn, site, [month]):
            return False
        await refresh_months(conn, site, month, month)
        await mark_closed(conn, site, [month])
    return True


async def mark_closed(conn: asyncpg.Connection, site: str, months: Iterable[date]) -> None:
    """Record `months` as closed; the caller has summed their monthly rows under the site's exclusive lock."""
    await conn.execute("INSERT INTO closed_months (site, month) SELECT $1, m FROM unnest($2::date[]) AS u(m) "
                       "ON CONFLICT DO NOTHING", site, sorted(set(months)))


async def close_finished_months(conn: asyncpg.Connection, sites: Iterable[tuple[str, str]],
                                now: datetime | None = None) -> list[tuple[str, date]]:
    """Close every month before the current local month of each (domain, time zone); return those closed."""
    now = now or datetime.now(timezone.utc)
    closed = []
    for domain, timezone_name in sites:
        current = now.astimezone(ZoneInfo(timezone_name)).date().replace(day=1)
        for row in await conn.fetch(_OPEN_MONTHS, domain, current):
            if await close_month(conn, domain, row["month"]):
                logger.info("month closed site=%s month=%s", domain, row["month"])
                closed.append((domain, row["month"]))
    return closed
