"""The SQL behind each report. Each function takes a connection and a Scope and returns plain data.

Unfiltered reports over whole days read the rollup tables (daily_metrics, daily_visitors)
where those give the same numbers as raw_events and session_fingerprints; tests check that
both paths agree. The rollups hold no unique visitors per page, event or session dimension
(source, referrer, UTM, entry and exit page), and a sum of daily counts would count a visitor
once per day. So top pages, entry and exit pages, events and traffic always read the raw
tables. Audience and network do too: the rollups give their visitors and sessions (for sites
in UTC) but not their bounce rate and duration, and ranking from daily_metrics plus reading
those two from the fingerprints measured no faster than the raw query (bench/dashboard).
The government share reads the rollups for sites in UTC.
"""

from __future__ import annotations

import asyncpg

from query.dimensions import DIMENSIONS
from query.scope import Scope


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
    period = scope.period
    rows = await conn.fetch(
        "SELECT metric_name, sum(value) AS total FROM daily_metrics WHERE site = $1 AND date >= $2 AND date <= $3 "
        "AND dimension_key IS NULL GROUP BY metric_name", scope.site, period.first, period.last)
    totals = {r["metric_name"]: int(r["total"]) for r in rows}
    if scope.days_are_utc_days:
        # Each visitor id lives within one UTC day, so here daily unique visitors add up exactly.
        visitors = totals.get("visitors", 0)
    else:
        visitors = await conn.fetchval(
            "SELECT count(DISTINCT visitor_id) FROM daily_visitors WHERE site = $1 AND date >= $2 AND date <= $3",
            scope.site, period.first, period.last)
    return _totals(totals.get("pageviews", 0), totals.get("bot_pageviews", 0), totals.get("events", 0), visitors,
                   totals.get("sessions", 0), totals.get("bounces", 0), totals.get("session_duration_s", 0))


async def top_pages(conn: asyncpg.Connection, scope: Scope, limit: int, offset: int) -> list[dict]:
    params = scope.params()
    params += [limit, offset]
    where = scope.events_from(params)
    rows = await conn.fetch(
        "SELECT e.event_action AS path, count(*) AS pageviews, count(DISTINCT e.visitor_id) AS visitors "
        f"{where} AND e.event_type = 'pageview' GROUP BY 1 ORDER BY pageviews DESC, path LIMIT $4 OFFSET $5", *params)
    return [dict(r) for r in rows]


async def session_pages(conn: asyncpg.Connection, scope: Scope, kind: str, limit: int, offset: int) -> list[dict]:
    """Entry or exit pages: sessions, visitors and bounce rate per page."""
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


def government_share_uses_rollups(scope: Scope) -> bool:
    """Return whether government_share reads daily_metrics: whole UTC days, so daily visitors add up.

    NOTE: a visitor id that does not hash one address (an SDK's anonymous id) counts under its
    first stored session's network that day, while the raw path counts it as government when
    any of its sessions was (see streams.rollup.visitor_contributions).
    """
    return scope.uses_rollups and scope.days_are_utc_days


async def government_share(conn: asyncpg.Connection, scope: Scope) -> float | None:
    if government_share_uses_rollups(scope):
        period = scope.period
        row = await conn.fetchrow(
            "SELECT coalesce(sum(value) FILTER (WHERE dimension_value = 'true'), 0) AS government, "
            "coalesce(sum(value), 0) AS visitors FROM daily_metrics WHERE site = $1 AND date >= $2 AND date <= $3 "
            "AND metric_name = 'visitors' AND dimension_key = 'isGovernment'", scope.site, period.first, period.last)
        return _ratio(int(row["government"]), int(row["visitors"]))
    params = scope.params()
    row = await conn.fetchrow(
        'SELECT count(DISTINCT s.visitor_id) FILTER (WHERE s."isGovernment") AS government, '
        f"count(DISTINCT s.visitor_id) AS visitors {scope.sessions_from(params)}", *params)
    return _ratio(row["government"], row["visitors"])
