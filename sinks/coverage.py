"""Rollup coverage: from which local date a site's rollups hold every row this version writes.

Versions before unique visitors per value wrote daily_metrics without visitors per page,
source or audience value, without visitors_overlap and without bounce rates per audience
value. A processor that starts on such a database records, for each site with rollup rows and
no coverage row, the day after its start as the first complete date. Batches record sites they
write first as complete from the beginning. `weir replay events` moves the date back over the
days it rebuilt. The API warns when a report reads rollups before that date.
"""

from __future__ import annotations

from datetime import date

import asyncpg

EARLIEST = date(1, 1, 1)

_RECORD_OLDER = """
INSERT INTO rollup_coverage (site, first_date)
SELECT s.domain, (now() AT TIME ZONE s.timezone)::date + 1 FROM sites s
 WHERE EXISTS (SELECT 1 FROM daily_metrics d WHERE d.site = s.domain AND d.dimension_key IS NULL)
ON CONFLICT DO NOTHING
RETURNING site, first_date
"""


async def record_older_rollups(conn: asyncpg.Connection) -> list[tuple[str, date]]:
    """Mark the rollups of sites written by an earlier version as complete only from tomorrow on."""
    return [(row["site"], row["first_date"]) for row in await conn.fetch(_RECORD_OLDER)]


async def record_complete(conn: asyncpg.Connection, site: str) -> None:
    """Mark a site that this version writes first as complete from the beginning."""
    await conn.execute("INSERT INTO rollup_coverage (site, first_date) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                       site, EARLIEST)


async def extend_back(conn: asyncpg.Connection, site: str, first: date, last: date) -> None:
    """Move the first complete date back to `first` once dates first..last are rebuilt up to it."""
    await conn.execute("UPDATE rollup_coverage SET first_date = $2 WHERE site = $1 AND first_date > $2 "
                       "AND first_date <= $3::date + 1", site, first, last)


async def first_complete_date(conn: asyncpg.Connection, site: str) -> date:
    found = await conn.fetchval("SELECT first_date FROM rollup_coverage WHERE site = $1", site)
    return EARLIEST if found is None else found
