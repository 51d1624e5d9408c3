"""Reports computed from the rollup tables: daily_metrics for loose days, monthly_metrics for whole months.

A range of local dates is split into whole months, read from monthly_metrics where the month
is closed (sinks.months), and single dates for the rest. Counts add up over the pieces.
Unique visitors add up too once the overlaps are taken off: each piece's "visitors_overlap"
counts visitors also seen on the date before the piece, so every piece but the first gives its
overlap back (streams.rollup explains the rows).

Each function returns what its raw-table twin in query.reports returns, in the same order,
with ratios rounded by PostgreSQL's numeric rounding as the raw queries round them. Tests
compare both paths on the same events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import asyncpg

from query.scope import Scope
from sinks.months import closed_among
from streams.rollup import PROPERTY, VISITORS, VISITORS_OVERLAP, property_prefix

# The API's session dimensions and the rollup dimension each one is stored under.
ROLLUP_KEYS = {
    "entry_page": "entry_page",
    "exit_page": "exit_page",
    "source": "source",
    "channel": "medium",
    "referrer": "referrer_host",
    "utm_source": "utm_source",
    "utm_medium": "utm_medium",
    "utm_campaign": "utm_campaign",
    "utm_term": "utm_term",
    "utm_content": "utm_content",
    "country": "country",
    "region": "region",
    "city": "city",
    "browser": "browser",
    "os": "os",
    "device": "device_type",
    "screen": "screen_size",
    "asn": "asn",
    "org": "org",
    "org_type": "orgType",
    "response_tier": "responseTier",
    "government": "isGovernment",
}

# A value as the raw reports display it: an unknown value is stored as '' (see streams.rollup).
_DISPLAYED = {
    "source": "CASE WHEN dimension_value = '' THEN 'Direct' ELSE dimension_value END",
    "government": "CASE WHEN dimension_value = 'true' THEN 'government' ELSE 'other' END",
}


# The stored values behind each displayed one, the inverse of _DISPLAYED.
_STORED = {
    "source": {"Direct": ["", "Direct"]},
    "government": {"government": ["true"], "other": ["false"]},
}


@dataclass(frozen=True, slots=True)
class Pieces:
    """Dates first..last as the closed months among them and the loose dates outside those."""

    first: date
    dates: list[date]
    months: list[date]


async def split(conn: asyncpg.Connection, site: str, first: date, last: date) -> Pieces:
    """Split first..last into closed months (read from monthly_metrics, see sinks.months) and single dates."""
    candidates = []
    month = first if first.day == 1 else _next_month(first)
    while _next_month(month) <= last + timedelta(days=1):
        candidates.append(month)
        month = _next_month(month)
    months = sorted(await closed_among(conn, site, candidates))
    covered = set(months)
    dates = []
    day = first
    while day <= last:
        if day.replace(day=1) in covered:
            day = _next_month(day)
            continue
        dates.append(day)
        day += timedelta(days=1)
    return Pieces(first, dates, months)


def _next_month(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


def _pieces_sql(dimension_condition: str, values: str | None = None) -> str:
    """Return the SQL of one dimension's rows over the period.

    Parameters: $1 site, $2 first date, $3 dates, $4 closed months, $5 metrics.

    `values` names a parameter of stored values to read only those. A piece's overlap with the
    date before it is dropped for the first piece only.
    """
    # dimension_value ends the key of daily_metrics. As an index condition, its array would
    # multiply the index searches (metrics x dates x values), so PostgreSQL would rather read every
    # row of the dimension. `|| ''` makes it a filter on the rows of the metrics and dates.
    only_daily = f" AND (dimension_value || '') = ANY({values}::text[])" if values else ""
    only = f" AND dimension_value = ANY({values}::text[])" if values else ""
    return f"""
  SELECT dimension_value, metric_name, value FROM daily_metrics
   WHERE site = $1 AND {dimension_condition} AND metric_name = ANY($5::text[]) AND date = ANY($3::date[]){only_daily}
     AND NOT (metric_name = '{VISITORS_OVERLAP}' AND date = $2)
  UNION ALL
  SELECT dimension_value, metric_name, value FROM monthly_metrics
   WHERE site = $1 AND {dimension_condition} AND metric_name = ANY($5::text[]) AND month = ANY($4::date[]){only}
     AND NOT (metric_name = '{VISITORS_OVERLAP}' AND month = $2)"""


def _sum(metric: str) -> str:
    return f"coalesce(sum(value) FILTER (WHERE metric_name = '{metric}'), 0)::bigint"


_VISITORS = f"{_sum(VISITORS)} - {_sum(VISITORS_OVERLAP)}"


async def _args(conn: asyncpg.Connection, scope: Scope, metrics: tuple[str, ...]) -> list:
    pieces = await split(conn, scope.site, scope.period.first, scope.period.last)
    return [scope.site, pieces.first, pieces.dates, pieces.months, list(metrics)]


async def totals(conn: asyncpg.Connection, scope: Scope) -> dict[str, int]:
    """Return every total metric of the period, with `visitors` already the period's unique visitors."""
    metrics = ("pageviews", "bot_pageviews", "events", "sessions", "bounces", "session_duration_s", VISITORS,
               VISITORS_OVERLAP)
    rows = await conn.fetch(
        f"SELECT metric_name, sum(value) AS total FROM ({_pieces_sql('dimension_key IS NULL')}) AS r "
        "GROUP BY metric_name", *await _args(conn, scope, metrics))
    found = {row["metric_name"]: int(row["total"]) for row in rows}
    found[VISITORS] = found.get(VISITORS, 0) - found.pop(VISITORS_OVERLAP, 0)
    return found


# Each closed month's values with the highest `metric`, through idx_monthly_metrics_value.
_MONTH_LEADERS = """
SELECT m.month, t.dimension_value, t.value
  FROM unnest($4::date[]) AS m(month)
 CROSS JOIN LATERAL (SELECT dimension_value, value FROM monthly_metrics
                      WHERE site = $1 AND dimension_key = $2 AND metric_name = $3 AND month = m.month
                      ORDER BY value DESC LIMIT $5) AS t
"""

_DATE_SUMS = """
SELECT dimension_value, sum(value)::bigint AS total FROM daily_metrics
 WHERE site = $1 AND dimension_key = $2 AND metric_name = $3 AND date = ANY($4::date[])
 GROUP BY 1
"""

# Values read from each closed month by _bounded_leaders, per row the report shows.
LEADERS_PER_ROW = 2


async def _leading_values(conn: asyncpg.Connection, scope: Scope, key: str, rank: str, rank_metrics: tuple[str, ...],
                          count: int, displayed: str = "dimension_value", exclude_empty: bool = False,
                          bounded: bool = False) -> list[str]:
    """Return the stored values of `key` that can reach the first `count` rows of a report ranked by `rank`.

    A high-cardinality dimension (cities, networks, pages) has hundreds of thousands of rows a
    year. Reading only the ranking metric first, then every metric of the leading values, reads
    a fraction of them. Values tied with the `count`-th stay in, so the final order is exact.

    `bounded` tries _bounded_leaders first, where `rank_metrics[0]` summed over the pieces must
    be at least `rank` for every value. It pays off for tens of thousands of values a month
    (cities, networks); on the benchmark's 2,000 pages it made a year's top pages slower.
    """
    if bounded and displayed == "dimension_value":
        pieces = await split(conn, scope.site, scope.period.first, scope.period.last)
        if pieces.months:
            found = await _bounded_leaders(conn, scope, pieces, key, rank, rank_metrics, count, exclude_empty)
            if found is not None:
                return found
    empty = "AND dimension_value <> '' " if exclude_empty else ""
    rows = await conn.fetch(
        f"WITH ranked AS (SELECT {displayed} AS value, {rank} AS rank FROM ({_pieces_sql('dimension_key = $6')}) AS r "
        f"WHERE true {empty}GROUP BY 1) "
        "SELECT value FROM ranked WHERE rank >= coalesce((SELECT rank FROM ranked ORDER BY rank DESC "
        "LIMIT 1 OFFSET $7 - 1), rank)",
        *await _args(conn, scope, rank_metrics), key, max(count, 1))
    return [row["value"] for row in rows]


async def _bounded_leaders(conn: asyncpg.Connection, scope: Scope, pieces: Pieces, key: str, rank: str,
                           rank_metrics: tuple[str, ...], count: int, exclude_empty: bool) -> list[str] | None:
    """Rank from each closed month's leading values; return None when they cannot settle the ranking.

    Ranking every value of a year groups tens of thousands of values over a dozen months. Here
    the candidates are the values among the first LEADERS_PER_ROW * count of some closed month
    by `rank_metrics[0]`. A value outside every month's list has at most the last listed value
    in each month, plus its sum over the loose dates. When that bound stays below the
    `count`-th exact rank of the candidates, no other value can reach the report or tie.

    NOTE: the loose dates are read whole, so near the end of a month a year reads up to 30
    days of daily rows of the dimension.
    """
    metric = rank_metrics[0]
    count = max(count, 1)
    depth = LEADERS_PER_ROW * count
    leaders = await conn.fetch(_MONTH_LEADERS, scope.site, key, metric, pieces.months, depth)
    candidates: set[str] = set()
    listed: dict[date, list[int]] = {}
    for row in leaders:
        listed.setdefault(row["month"], []).append(row["value"])
        if not (exclude_empty and row["dimension_value"] == ""):
            candidates.add(row["dimension_value"])
    # A month with fewer rows than `depth` listed all of them, so other values have none there.
    months_bound = sum(min(values) for values in listed.values() if len(values) == depth)

    dates_bound = 0
    if pieces.dates:
        for row in await conn.fetch(_DATE_SUMS, scope.site, key, metric, pieces.dates):
            value = row["dimension_value"]
            if value not in candidates and not (exclude_empty and value == ""):
                dates_bound = max(dates_bound, row["total"])

    rows = await conn.fetch(
        f"SELECT dimension_value AS value, {rank} AS rank FROM ({_pieces_sql('dimension_key = $6', '$7')}) AS r "
        "GROUP BY 1",
        scope.site, pieces.first, pieces.dates, pieces.months, list(rank_metrics), key, sorted(candidates))
    ranks = sorted((row["rank"] for row in rows), reverse=True)
    if len(ranks) < count or months_bound + dates_bound >= ranks[count - 1]:
        return None
    return [row["value"] for row in rows if row["rank"] >= ranks[count - 1]]


async def top_pages(conn: asyncpg.Connection, scope: Scope, limit: int, offset: int) -> list[dict]:
    values = await _leading_values(conn, scope, "page", _sum("pageviews"), ("pageviews",), limit + offset)
    rows = await conn.fetch(
        f"SELECT dimension_value AS path, {_sum('pageviews')} AS pageviews, {_VISITORS} AS visitors "
        f"FROM ({_pieces_sql('dimension_key = $6', '$9')}) AS r GROUP BY 1 HAVING {_sum('pageviews')} > 0 "
        "ORDER BY pageviews DESC, path LIMIT $7 OFFSET $8",
        *await _args(conn, scope, ("pageviews", VISITORS, VISITORS_OVERLAP)), "page", limit, offset, values)
    return [dict(r) for r in rows]


async def session_pages(conn: asyncpg.Connection, scope: Scope, kind: str, limit: int, offset: int) -> list[dict]:
    key = f"{kind}_page"
    values = await _leading_values(conn, scope, key, _sum("sessions"), ("sessions",), limit + offset,
                                   exclude_empty=True)
    rows = await conn.fetch(
        f"SELECT dimension_value AS path, {_sum('sessions')} AS sessions, {_VISITORS} AS visitors, "
        f"round({_sum('bounces')}::numeric / {_sum('sessions')}, 4)::float AS bounce_rate "
        f"FROM ({_pieces_sql('dimension_key = $6', '$9')}) AS r WHERE dimension_value <> '' GROUP BY 1 "
        f"HAVING {_sum('sessions')} > 0 ORDER BY sessions DESC, path LIMIT $7 OFFSET $8",
        *await _args(conn, scope, ("sessions", "bounces", VISITORS, VISITORS_OVERLAP)), key, limit, offset, values)
    return [dict(r) for r in rows]


async def custom_events(conn: asyncpg.Connection, scope: Scope, event: str | None, limit: int,
                        offset: int) -> list[dict]:
    """Return custom events by name, as the raw twin does without a property breakdown."""
    if event is None:
        values = await _leading_values(conn, scope, "event", _sum("events"), ("events",), limit + offset)
    else:
        values = [event]
    rows = await conn.fetch(
        f"SELECT dimension_value AS name, {_sum('events')} AS events, {_VISITORS} AS visitors "
        f"FROM ({_pieces_sql('dimension_key = $6', '$9')}) AS r GROUP BY 1 HAVING {_sum('events')} > 0 "
        "ORDER BY events DESC, 1 LIMIT $7 OFFSET $8",
        *await _args(conn, scope, ("events", VISITORS, VISITORS_OVERLAP)), "event", limit, offset, values)
    return [dict(r) for r in rows]


async def property_breakdown(conn: asyncpg.Connection, scope: Scope, event: str, key: str, limit: int,
                             offset: int) -> list[dict] | None:
    """Return one custom event's events and visitors per text of property `key`, as the raw twin does.

    Returns None when some events of the period are missing from the key's rows, because they
    lack the key or it was not rolled up (streams.rollup.property_values). The raw query groups
    those under '', whose unique visitors no rollup row holds, so the caller reads raw events.
    """
    args = await _args(conn, scope, ("events", VISITORS, VISITORS_OVERLAP))
    rows_sql = _pieces_sql("dimension_key = $6 AND starts_with(dimension_value, $9)")
    counted = await conn.fetchrow(
        f"SELECT (SELECT coalesce(sum(value), 0) FROM ({_pieces_sql('dimension_key = $7 AND dimension_value = $8')}) "
        "AS e WHERE metric_name = 'events') AS events, "
        f"(SELECT coalesce(sum(value), 0) FROM ({rows_sql}) AS p WHERE metric_name = 'events') AS with_key",
        *args, PROPERTY, "event", event, property_prefix(event, key))
    if counted["events"] != counted["with_key"]:
        return None
    rows = await conn.fetch(
        f"SELECT (dimension_value::jsonb ->> 2) AS value, {_sum('events')} AS events, {_VISITORS} AS visitors "
        f"FROM ({rows_sql}) AS r GROUP BY 1 HAVING {_sum('events')} > 0 "
        "ORDER BY events DESC, 1 LIMIT $7 OFFSET $8",
        *args, PROPERTY, limit, offset, property_prefix(event, key))
    return [dict(r) for r in rows]


async def session_breakdown(conn: asyncpg.Connection, scope: Scope, dimension: str, limit: int,
                            offset: int) -> list[dict]:
    key = ROLLUP_KEYS[dimension]
    displayed = _DISPLAYED.get(dimension, "dimension_value")
    values = await _leading_values(conn, scope, key, _VISITORS, (VISITORS, VISITORS_OVERLAP), limit + offset,
                                   displayed, bounded=True)
    if displayed != "dimension_value":
        values = [stored for value in values for stored in _STORED[dimension].get(value, [value])]
    rows = await conn.fetch(
        f"SELECT value, visitors, sessions, round(bounces::numeric / sessions, 4)::float AS bounce_rate, "
        "round(duration_s::numeric / sessions, 1)::float AS avg_session_duration_s "
        f"FROM (SELECT {displayed} AS value, {_VISITORS} AS visitors, {_sum('sessions')} AS sessions, "
        f"{_sum('bounces')} AS bounces, {_sum('session_duration_s')} AS duration_s "
        f"FROM ({_pieces_sql('dimension_key = $6', '$9')}) AS r GROUP BY 1) AS v WHERE sessions > 0 "
        "ORDER BY visitors DESC, sessions DESC, value LIMIT $7 OFFSET $8",
        *await _args(conn, scope, ("sessions", "bounces", "session_duration_s", VISITORS, VISITORS_OVERLAP)),
        key, limit, offset, values)
    return [dict(r) for r in rows]


async def government_visitors(conn: asyncpg.Connection, scope: Scope) -> tuple[int, int]:
    """Return the unique visitors of government networks and of all networks.

    NOTE: the total is the sum over both values, so a visitor id with sessions on both kinds of
    network in the period (an SDK's anonymous id can have them) counts twice in it.
    """
    rows = await conn.fetch(
        f"SELECT dimension_value, {_VISITORS} AS visitors FROM ({_pieces_sql('dimension_key = $6')}) AS r "
        "GROUP BY 1", *await _args(conn, scope, (VISITORS, VISITORS_OVERLAP)), "isGovernment")
    by_value = {row["dimension_value"]: int(row["visitors"]) for row in rows}
    return by_value.get("true", 0), sum(by_value.values())
