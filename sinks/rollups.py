"""The rollup sinks: add signed counts to aggregated_metrics, daily_metrics and monthly_metrics.

Counts are added (`value = value + EXCLUDED.value`) in the transaction that inserted the events
they come from. Rows are written in key order, so concurrent batches lock them in the same
order and cannot deadlock on them. A zero net change writes nothing.
"""

from __future__ import annotations

from collections import Counter
from datetime import date

import asyncpg

from streams.rollup import DAILY, HOURLY, MONTHLY, VISITORS, VISITORS_OVERLAP, RollupKey

_UPSERT_HOURLY = """
INSERT INTO aggregated_metrics AS m (site, bucket, granularity, metric_name, dimension_key, dimension_value, value)
SELECT $1, u.bucket, $2, u.metric_name, u.dimension_key, u.dimension_value, u.value
  FROM unnest($3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::bigint[])
       WITH ORDINALITY AS u(bucket, metric_name, dimension_key, dimension_value, value, position)
 ORDER BY u.position
ON CONFLICT (site, bucket, granularity, metric_name, dimension_key, dimension_value)
DO UPDATE SET value = m.value + EXCLUDED.value, updated_at = now()
"""

_UPSERT_DAILY = """
INSERT INTO daily_metrics AS m (site, date, metric_name, dimension_key, dimension_value, value)
SELECT $1, u.day, u.metric_name, u.dimension_key, u.dimension_value, u.value
  FROM unnest($2::date[], $3::text[], $4::text[], $5::text[], $6::bigint[])
       WITH ORDINALITY AS u(day, metric_name, dimension_key, dimension_value, value, position)
 ORDER BY u.position
ON CONFLICT (site, date, metric_name, dimension_key, dimension_value)
DO UPDATE SET value = m.value + EXCLUDED.value, updated_at = now()
"""

_UPSERT_MONTHLY = """
INSERT INTO monthly_metrics AS m (site, month, metric_name, dimension_key, dimension_value, value)
SELECT $1, u.month, u.metric_name, u.dimension_key, u.dimension_value, u.value
  FROM unnest($2::date[], $3::text[], $4::text[], $5::text[], $6::bigint[])
       WITH ORDINALITY AS u(month, metric_name, dimension_key, dimension_value, value, position)
 ORDER BY u.position
ON CONFLICT (site, dimension_key, metric_name, month, dimension_value)
DO UPDATE SET value = m.value + EXCLUDED.value, updated_at = now()
"""

# The monthly rows of whole months, summed again from daily_metrics as monthly_contributions
# sums them: an overlap inside a month is taken off the month's visitors.
_DELETE_MONTHS = "DELETE FROM monthly_metrics WHERE site = $1 AND month >= $2 AND month <= $3"

def daily_rows_sql(columns: str, date_condition: str) -> str:
    """Return a WITH clause whose `ranged` contains `columns` of site $1's daily_metrics rows d where `date_condition`.

    The key of daily_metrics starts with (site, dimension_key, metric_name), the order reports
    read it in. So the rows of some dates across every dimension are not one range of it, and a
    plain `WHERE date ...` reads every row of the site. This lists the site's
    (dimension_key, metric_name) pairs instead, with one index lookup per pair (a skip scan), then
    reads the dates of each pair as one range. `OFFSET 0` keeps the
    planner from flattening that read into a join, which without statistics it would run as one
    scan of the site. The totals (a NULL dimension_key, a few dozen rows per day) are read whole.
    """
    return f"""
WITH RECURSIVE keyed(dimension_key, metric_name) AS (
    (SELECT dimension_key, metric_name FROM daily_metrics
      WHERE site = $1 AND dimension_key IS NOT NULL ORDER BY dimension_key, metric_name LIMIT 1)
    UNION ALL
    SELECT n.dimension_key, n.metric_name FROM keyed k CROSS JOIN LATERAL (
        SELECT d.dimension_key, d.metric_name FROM daily_metrics d
         WHERE d.site = $1 AND (d.dimension_key, d.metric_name) > (k.dimension_key, k.metric_name)
         ORDER BY d.dimension_key, d.metric_name LIMIT 1) AS n
), ranged AS (
    SELECT r.* FROM keyed k CROSS JOIN LATERAL (
        SELECT {columns} FROM daily_metrics d
         WHERE d.site = $1 AND d.dimension_key = k.dimension_key AND d.metric_name = k.metric_name
           AND {date_condition} OFFSET 0) AS r
    UNION ALL
    SELECT {columns} FROM daily_metrics d WHERE d.site = $1 AND d.dimension_key IS NULL AND {date_condition}
)
"""


_REFRESH_MONTHS = daily_rows_sql(
    "d.date, d.metric_name, d.dimension_key, d.dimension_value, d.value",
    "d.date >= $2 AND d.date < ($3::date + interval '1 month')") + f"""
INSERT INTO monthly_metrics (site, month, metric_name, dimension_key, dimension_value, value)
SELECT $1, month, metric, dimension_key, dimension_value, sum(signed)
  FROM (SELECT date_trunc('month', date)::date AS month, dimension_key, dimension_value,
               CASE WHEN metric_name = '{VISITORS_OVERLAP}' AND extract(day FROM date) <> 1
                    THEN '{VISITORS}' ELSE metric_name END AS metric,
               CASE WHEN metric_name = '{VISITORS_OVERLAP}' AND extract(day FROM date) <> 1
                    THEN -value ELSE value END AS signed
          FROM ranged) AS d
 GROUP BY month, metric, dimension_key, dimension_value
HAVING sum(signed) <> 0
 ORDER BY dimension_key, metric, month, dimension_value
"""

_NEW_VISITORS = """
INSERT INTO daily_visitors (site, date, visitor_id)
SELECT $1, u.day, u.visitor_id FROM unnest($2::date[], $3::text[]) AS u(day, visitor_id)
 ORDER BY u.day, u.visitor_id
ON CONFLICT DO NOTHING
RETURNING date, visitor_id
"""


def _sort_key(key: RollupKey) -> tuple:
    return (key.bucket, key.metric, key.dimension_key or "", key.dimension_value or "", key.dimension_key is None)


async def write_rollups(conn: asyncpg.Connection, site: str, counts: Counter) -> tuple[int, int]:
    """Add `counts` to the site's rollup rows; return the (hourly, daily and monthly) rows written."""
    hourly = sorted((k for k, v in counts.items() if v and k.granularity == HOURLY), key=_sort_key)
    daily = sorted((k for k, v in counts.items() if v and k.granularity == DAILY), key=_sort_key)
    # The unique key of monthly_metrics starts with the dimension, so rows are locked in that order.
    monthly = sorted((k for k, v in counts.items() if v and k.granularity == MONTHLY),
                     key=lambda k: (k.dimension_key or "", k.dimension_key is None, k.metric, k.bucket,
                                    k.dimension_value or ""))
    if hourly:
        await conn.execute(_UPSERT_HOURLY, site, HOURLY, [k.bucket for k in hourly], [k.metric for k in hourly],
                           [k.dimension_key for k in hourly], [k.dimension_value for k in hourly],
                           [counts[k] for k in hourly])
    if daily:
        await conn.execute(_UPSERT_DAILY, site, [k.bucket for k in daily], [k.metric for k in daily],
                           [k.dimension_key for k in daily], [k.dimension_value for k in daily],
                           [counts[k] for k in daily])
    if monthly:
        await conn.execute(_UPSERT_MONTHLY, site, [k.bucket for k in monthly], [k.metric for k in monthly],
                           [k.dimension_key for k in monthly], [k.dimension_value for k in monthly],
                           [counts[k] for k in monthly])
    return len(hourly), len(daily) + len(monthly)


async def refresh_months(conn: asyncpg.Connection, site: str, first: date, last: date) -> None:
    """Sum the monthly rows of the months from `first` to `last` (first dates of months) from daily_metrics."""
    await conn.execute(_DELETE_MONTHS, site, first.replace(day=1), last.replace(day=1))
    await conn.execute(_REFRESH_MONTHS, site, first.replace(day=1), last.replace(day=1))


async def record_visitors(conn: asyncpg.Connection, site: str, visits: set[tuple[date, str]]) -> set[tuple[date, str]]:
    """Store (local date, visitor id) pairs; return the pairs not stored before."""
    if not visits:
        return set()
    ordered = sorted(visits)
    rows = await conn.fetch(_NEW_VISITORS, site, [v[0] for v in ordered], [v[1] for v in ordered])
    return {(row["date"], row["visitor_id"]) for row in rows}
