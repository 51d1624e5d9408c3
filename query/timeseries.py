"""Time series of pageviews, visitors and sessions per minute, hour, day, week or month.

Buckets follow the site's time zone (a day starts at local midnight, a week on Monday), and
every bucket of the period appears, with zeros where nothing happened. Unfiltered daily,
weekly and monthly series over whole days read the rollups; the rest read raw events.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import asyncpg

from query.period import zone
from query.scope import Scope

_TRUNC = {"minute": "minute", "hour": "hour", "day": "day", "week": "week", "month": "month"}


def bucket_starts(scope: Scope, interval: str) -> list[datetime]:
    """Every bucket start of the period, as local times of the site's zone."""
    zone_info = zone(scope.period.timezone)
    current = _truncate(scope.period.start.astimezone(zone_info), interval)
    end = scope.period.end.astimezone(zone_info)
    starts = []
    while current < end:
        starts.append(current)
        current = _advance(current, interval)
    return starts


def _truncate(moment: datetime, interval: str) -> datetime:
    if interval == "minute":
        return moment.replace(second=0, microsecond=0)
    if interval == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0, fold=0)
    if interval == "week":
        day -= timedelta(days=day.weekday())
    elif interval == "month":
        day = day.replace(day=1)
    return day.replace(tzinfo=moment.tzinfo)


def _advance(moment: datetime, interval: str) -> datetime:
    if interval in ("minute", "hour"):
        # Step in absolute time so the repeated hour of a daylight-saving change gets its own bucket.
        step = timedelta(minutes=1) if interval == "minute" else timedelta(hours=1)
        return (moment.astimezone(zone("UTC")) + step).astimezone(moment.tzinfo)
    if interval == "day":
        return datetime.combine(moment.date() + timedelta(days=1), moment.timetz().replace(fold=0))
    if interval == "week":
        return datetime.combine(moment.date() + timedelta(days=7), moment.timetz().replace(fold=0))
    first = moment.date().replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return datetime.combine(following, moment.timetz().replace(fold=0))


def _key(moment: datetime, interval: str) -> str:
    if interval in ("minute", "hour"):
        return moment.astimezone(zone("UTC")).isoformat()
    return moment.date().isoformat()


async def timeseries(conn: asyncpg.Connection, scope: Scope, interval: str) -> list[dict]:
    starts = bucket_starts(scope, interval)
    if scope.uses_rollups and interval in ("day", "week", "month"):
        values = await _from_rollups(conn, scope, interval)
    else:
        values = await _from_events(conn, scope, interval)
    rows = []
    for start in starts:
        found = values.get(_key(start, interval), {})
        rows.append({"bucket": start.isoformat(), "pageviews": found.get("pageviews", 0),
                     "visitors": found.get("visitors", 0), "sessions": found.get("sessions", 0)})
    return rows


async def _from_events(conn: asyncpg.Connection, scope: Scope, interval: str) -> dict[str, dict]:
    # The time zone is always $4, right after the scope's own three parameters.
    params = scope.params()
    params.append(scope.period.timezone)
    local = f"date_trunc('{_TRUNC[interval]}', e.\"timestamp\" AT TIME ZONE $4)"
    where = scope.events_from(params)
    rows = await conn.fetch(
        f"SELECT {local} AS local_start, min(e.\"timestamp\") AS first_at, "
        "count(*) FILTER (WHERE e.event_type = 'pageview') AS pageviews, "
        "count(DISTINCT e.visitor_id) AS visitors "
        f"{where} GROUP BY 1", *params)
    # Sessions count in the bucket where they start, as in the rollups and the overview.
    params = scope.params()
    params.append(scope.period.timezone)
    where = scope.sessions_from(params)
    sessions = await conn.fetch(
        f"SELECT date_trunc('{_TRUNC[interval]}', s.started_at AT TIME ZONE $4) "
        f"AS local_start, min(s.started_at) AS first_at, count(*) AS sessions {where} GROUP BY 1", *params)
    result: dict[str, dict] = {}
    zone_info = zone(scope.period.timezone)
    for row in rows:
        result[_row_key(row, interval, zone_info)] = {"pageviews": row["pageviews"], "visitors": row["visitors"]}
    for row in sessions:
        result.setdefault(_row_key(row, interval, zone_info), {})["sessions"] = row["sessions"]
    return result


def _row_key(row, interval: str, zone_info) -> str:
    if interval in ("minute", "hour"):
        return _key(_truncate(row["first_at"].astimezone(zone_info), interval), interval)
    return _key(row["local_start"].replace(tzinfo=zone_info), interval)


async def _from_rollups(conn: asyncpg.Connection, scope: Scope, interval: str) -> dict[str, dict]:
    """Sum daily rows per bucket; a bucket's visitors give back the overlaps after its first date."""
    period = scope.period
    trunc = _TRUNC[interval]
    rows = await conn.fetch(
        f"SELECT date_trunc('{trunc}', date)::date AS day, "
        "sum(value) FILTER (WHERE metric_name = 'pageviews') AS pageviews, "
        "sum(value) FILTER (WHERE metric_name = 'sessions') AS sessions, "
        "sum(value) FILTER (WHERE metric_name = 'visitors') AS visitors, "
        f"sum(value) FILTER (WHERE metric_name = 'visitors_overlap' "
        f"AND date > greatest(date_trunc('{trunc}', date)::date, $2)) AS overlap "
        "FROM daily_metrics WHERE site = $1 AND dimension_key IS NULL AND date >= $2 AND date <= $3 "
        "AND metric_name IN ('pageviews', 'sessions', 'visitors', 'visitors_overlap') GROUP BY 1",
        scope.site, period.first, period.last)
    result: dict[str, dict] = {}
    for row in rows:
        result[_day_key(row["day"])] = {"pageviews": int(row["pageviews"] or 0), "sessions": int(row["sessions"] or 0),
                                        "visitors": int(row["visitors"] or 0) - int(row["overlap"] or 0)}
    return result


def _day_key(day: date) -> str:
    return day.isoformat()
