"""The SQL behind each report; every function reads through one connection and returns plain data."""

from __future__ import annotations

import asyncpg

from query.params import DateRange

_OVERVIEW = """
SELECT count(*) FILTER (WHERE event_type = 'pageview' AND NOT is_bot)          AS pageviews,
       count(*) FILTER (WHERE event_type = 'pageview' AND is_bot)              AS bot_pageviews,
       count(*) FILTER (WHERE event_type <> 'pageview' AND NOT is_bot)         AS events,
       count(DISTINCT visitor_id) FILTER (WHERE NOT is_bot)                    AS visitors,
       count(DISTINCT session_id) FILTER (WHERE NOT is_bot)                    AS sessions
  FROM raw_events
 WHERE site = $1 AND "timestamp" >= $2 AND "timestamp" < $3
"""

# A session bounces when it has one pageview; duration is last minus first event time.
_SESSION_SHAPE = """
SELECT count(*) FILTER (WHERE pageviews = 1) AS bounces,
       coalesce(avg(duration_s), 0)          AS avg_duration_s
  FROM (SELECT session_id,
               count(*) FILTER (WHERE event_type = 'pageview') AS pageviews,
               extract(epoch FROM max("timestamp") - min("timestamp")) AS duration_s
          FROM raw_events
         WHERE site = $1 AND "timestamp" >= $2 AND "timestamp" < $3 AND NOT is_bot
         GROUP BY session_id) AS sessions
"""

_PAGES = """
SELECT event_action AS path,
       count(*) AS pageviews,
       count(DISTINCT visitor_id) AS visitors
  FROM raw_events
 WHERE site = $1 AND "timestamp" >= $2 AND "timestamp" < $3 AND event_type = 'pageview' AND NOT is_bot
 GROUP BY event_action
 ORDER BY pageviews DESC, path
 LIMIT $4 OFFSET $5
"""


async def overview(conn: asyncpg.Connection, site: str, period: DateRange) -> dict:
    row = await conn.fetchrow(_OVERVIEW, site, period.start, period.end)
    shape = await conn.fetchrow(_SESSION_SHAPE, site, period.start, period.end)
    sessions = row["sessions"]
    return {
        "pageviews": row["pageviews"],
        "visitors": row["visitors"],
        "sessions": sessions,
        "bot_pageviews": row["bot_pageviews"],
        "events": row["events"],
        "bounce_rate": round(shape["bounces"] / sessions, 4) if sessions else None,
        "avg_session_duration_s": round(float(shape["avg_duration_s"]), 1) if sessions else None,
        "pageviews_per_session": round(row["pageviews"] / sessions, 2) if sessions else None,
    }


async def top_pages(conn: asyncpg.Connection, site: str, period: DateRange, limit: int, offset: int) -> list[dict]:
    rows = await conn.fetch(_PAGES, site, period.start, period.end, limit, offset)
    return [dict(row) for row in rows]
