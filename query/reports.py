"""The SQL behind each report. Each function takes a connection and a Scope and returns plain data.

Unfiltered reports over whole days of the site's time zone read the rollup tables
(daily_metrics and monthly_metrics, through query.rollup_reports); tests check that both paths
give the same numbers. Filtered reports, periods that are not whole days, a `tz` other than the
site's, a property breakdown of all custom events together and one of an event with events
that lack the property read raw_events and session_fingerprints.
"""

from __future__ import annotations

import asyncpg

from query import rollup_reports
from query.dimensions import DIMENSIONS
from query.scope import Scope

# Reports run the same statements with date and value arrays of very different sizes. After five
# runs PostgreSQL may give a prepared statement a generic plan, which on the dashboard benchmark
# took a year's city breakdown from 40 to 320 ms, so report connections plan every run for its values.
SERVER_SETTINGS = {"plan_cache_mode": "force_custom_plan"}


def _ratio(numerator, denominator, digits: int = 4):
    return round(numerator / denominator, digits) if denominator else None


def _totals(pageviews, bot_pageviews, events, visitors, sessions, bounces, duration_s) -> dict:
    return {
        "pageviews": pageviews,
        "visitors": visitors,
        "sessions": sessions,
        "bot_pageviews": bot_pageviews,
        "events": events,
        "bounce_rate": _ratio(bounces, sessions),
        "avg_session_duration_s": round(duration_s / sessions, 1) if sessions else None,
        "pageviews_per_session": _ratio(pageviews, sessions, 2),
    }


async def overview(conn: asyncpg.Connection, scope: Scope) -> dict:
    if scope.uses_rollups:
        return await _overview_from_rollups(conn, scope)

    params = scope.params()
    events = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE e.event_type = 'pageview') AS pageviews, "
        "count(*) FILTER (WHERE e.event_type <> 'pageview') AS events, "
        f"count(DISTINCT e.visitor_id) AS visitors {scope.events_from(params)}", *params)
    params = scope.params()
    bots = await conn.fetchval(
        f"SELECT count(*) {scope.events_from(params, bots=True)} AND e.event_type = 'pageview'", *params)
    params = scope.params()
    sessions = await conn.fetchrow(
        "SELECT count(*) AS sessions, count(*) FILTER (WHERE s.is_bounce) AS bounces, "
        f"coalesce(sum(s.duration_s), 0) AS duration_s {scope.sessions_from(params)}", *params)
    return _totals(events["pageviews"], bots, events["events"], events["visitors"], sessions["sessions"],
                   sessions["bounces"], sessions["duration_s"])


async def _overview_from_rollups(conn: asyncpg.Connection, scope: Scope) -> dict:
    totals = await rollup_reports.totals(conn, scope)
    return _totals(totals.get("pageviews", 0), totals.get("bot_pageviews", 0), totals.get("events", 0),
                   totals.get("visitors", 0), totals.get("sessions", 0), totals.get("bounces", 0),
                   totals.get("session_duration_s", 0))


async def top_pages(conn: asyncpg.Connection, scope: Scope, limit: int, offset: int) -> list[dict]:
    if scope.uses_rollups:
        return await rollup_reports.top_pages(conn, scope, limit, offset)
    params = scope.params()
    params += [limit, offset]
    where = scope.events_from(params)
    rows = await conn.fetch(
        "SELECT e.event_action AS path, count(*) AS pageviews, count(DISTINCT e.visitor_id) AS visitors "
        f"{where} AND e.event_type = 'pageview' GROUP BY 1 ORDER BY pageviews DESC, path LIMIT $4 OFFSET $5", *params)
    return [dict(r) for r in rows]


async def session_pages(conn: asyncpg.Connection, scope: Scope, kind: str, limit: int, offset: int) -> list[dict]:
    """Entry or exit pages: sessions, visitors and bounce rate per page."""
    if scope.uses_rollups:
        return await rollup_reports.session_pages(conn, scope, kind, limit, offset)
    column = "s.entry_page" if kind == "entry" else "s.exit_page"
    params = scope.params()
    params += [limit, offset]
    where = scope.sessions_from(params)
    rows = await conn.fetch(
        f"SELECT {column} AS path, count(*) AS sessions, count(DISTINCT s.visitor_id) AS visitors, "
        "round(avg(s.is_bounce::int), 4)::float AS bounce_rate "
        f"{where} AND {column} IS NOT NULL GROUP BY 1 ORDER BY sessions DESC, path LIMIT $4 OFFSET $5", *params)
    return [dict(r) for r in rows]


async def custom_events(conn: asyncpg.Connection, scope: Scope, event: str | None, breakdown: str | None,
                        limit: int, offset: int) -> list[dict]:
    if scope.uses_rollups and breakdown is None:
        return await rollup_reports.custom_events(conn, scope, event, limit, offset)
    if scope.uses_rollups and event is not None:
        found = await rollup_reports.property_breakdown(conn, scope, event, breakdown, limit, offset)
        if found is not None:
            return found
    params = scope.params()
    where = scope.events_from(params) + " AND e.event_type <> 'pageview'"
    if event is not None:
        params.append(event)
        where += f" AND e.event_action = ${len(params)}"
    if breakdown is not None:
        params.append(breakdown)
        select = f"coalesce(e.metadata ->> ${len(params)}, '') AS value"
    else:
        select = "e.event_action AS name"
    params += [limit, offset]
    rows = await conn.fetch(
        f"SELECT {select}, count(*) AS events, count(DISTINCT e.visitor_id) AS visitors {where} "
        f"GROUP BY 1 ORDER BY events DESC, 1 LIMIT ${len(params) - 1} OFFSET ${len(params)}", *params)
    return [dict(r) for r in rows]


async def session_breakdown(conn: asyncpg.Connection, scope: Scope, dimension: str, limit: int,
                            offset: int) -> list[dict]:
    """Visitors, sessions, bounce rate and duration per value of a session dimension."""
    if scope.uses_rollups:
        return await rollup_reports.session_breakdown(conn, scope, dimension, limit, offset)
    expression = DIMENSIONS[dimension].expression
    params = scope.params()
    where = scope.sessions_from(params)
    params += [limit, offset]
    rows = await conn.fetch(
        f"SELECT coalesce({expression}, '') AS value, count(DISTINCT s.visitor_id) AS visitors, "
        "count(*) AS sessions, round(avg(s.is_bounce::int), 4)::float AS bounce_rate, "
        "round(avg(s.duration_s), 1)::float AS avg_session_duration_s "
        f"{where} GROUP BY 1 ORDER BY visitors DESC, sessions DESC, value "
        f"LIMIT ${len(params) - 1} OFFSET ${len(params)}", *params)
    return [dict(r) for r in rows]


async def government_share(conn: asyncpg.Connection, scope: Scope) -> float | None:
    if scope.uses_rollups:
        government, visitors = await rollup_reports.government_visitors(conn, scope)
        return _ratio(government, visitors)
    params = scope.params()
    row = await conn.fetchrow(
        'SELECT count(DISTINCT s.visitor_id) FILTER (WHERE s."isGovernment") AS government, '
        f"count(DISTINCT s.visitor_id) AS visitors {scope.sessions_from(params)}", *params)
    return _ratio(row["government"], row["visitors"])
