"""Rollups: what each newly stored event and each session change adds to the metric tables.

Pure functions from facts to signed contributions keyed by (table, bucket, metric, dimension).
Buckets follow the site's time zone: an hourly bucket starts at a local hour (its UTC instant,
so zones with half-hour offsets and the repeated hour of a daylight-saving change stay apart),
and a daily row belongs to a local date, so a day's hours add up to the day.

Session metrics are attributed to the bucket of the session's start. When a session changes
(a new event, a merge), the sink subtracts the old fingerprint's contribution and adds the
new one, so the tables always equal a rebuild from the stored events.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timezone
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo

from streams.event import PAGEVIEW

HOURLY = "hour"
DAILY = "day"

# Session dimensions whose sessions, bounces and durations are rolled up per day.
SESSION_DIMENSIONS = ("source", "medium", "referrer_host", "utm_source", "utm_medium", "utm_campaign", "utm_term",
                      "utm_content", "entry_page", "exit_page")
# Visitor dimensions: constant for a visitor id (it hashes the address and user agent), so
# visitors per value and day add up exactly.
VISITOR_DIMENSIONS = ("country", "region", "city", "browser", "os", "device_type", "screen_size", "asn", "org",
                      "orgType", "isGovernment", "responseTier")


class RollupKey(NamedTuple):
    granularity: str
    bucket: datetime | date
    metric: str
    dimension_key: str | None
    dimension_value: str | None


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_hour(unix_ms: int, timezone_name: str) -> datetime:
    """Return the UTC instant at which the local hour holding `unix_ms` starts."""
    local = datetime.fromtimestamp(unix_ms / 1000, _zone(timezone_name))
    return local.replace(minute=0, second=0, microsecond=0).astimezone(timezone.utc)


def local_date(unix_ms: int, timezone_name: str) -> date:
    return datetime.fromtimestamp(unix_ms / 1000, _zone(timezone_name)).date()


def _add(out: Counter, unix_ms: int, timezone_name: str, metric: str, value: int,
         dimension_key: str | None = None, dimension_value: str | None = None, hourly: bool = True) -> None:
    if hourly and dimension_key is None:
        out[RollupKey(HOURLY, local_hour(unix_ms, timezone_name), metric, None, None)] += value
    out[RollupKey(DAILY, local_date(unix_ms, timezone_name), metric, dimension_key, dimension_value)] += value


def event_contributions(out: Counter, event_type: str, action: str, timestamp_ms: int, is_bot: bool,
                        timezone_name: str) -> None:
    """Add one newly stored event's counts to `out`."""
    if event_type == PAGEVIEW:
        if is_bot:
            _add(out, timestamp_ms, timezone_name, "bot_pageviews", 1)
            return
        _add(out, timestamp_ms, timezone_name, "pageviews", 1)
        _add(out, timestamp_ms, timezone_name, "pageviews", 1, "page", action[:1024])
    elif not is_bot:
        _add(out, timestamp_ms, timezone_name, "events", 1)
        _add(out, timestamp_ms, timezone_name, "events", 1, "event", action[:1024])


def session_contributions(out: Counter, row: dict, timezone_name: str, sign: int) -> None:
    """Add (sign=+1) or remove (sign=-1) one human session's counts, from its fingerprint row."""
    if row["is_bot"]:
        return
    started_ms = int(row["started_at"].timestamp() * 1000)
    bounces = sign if row["is_bounce"] else 0
    duration = sign * int(row["duration_s"])
    _add(out, started_ms, timezone_name, "sessions", sign)
    _add(out, started_ms, timezone_name, "bounces", bounces)
    _add(out, started_ms, timezone_name, "session_duration_s", duration)
    for dimension in SESSION_DIMENSIONS:
        value = _dimension_text(row.get(dimension))
        _add(out, started_ms, timezone_name, "sessions", sign, dimension, value, hourly=False)
        _add(out, started_ms, timezone_name, "bounces", bounces, dimension, value, hourly=False)
        _add(out, started_ms, timezone_name, "session_duration_s", duration, dimension, value, hourly=False)
    for dimension in VISITOR_DIMENSIONS:
        _add(out, started_ms, timezone_name, "sessions", sign, dimension, _dimension_text(row.get(dimension)),
             hourly=False)


def visitor_contributions(out: Counter, row: dict, day: date) -> None:
    """Add one visitor newly seen on a local `day`, with its visitor dimensions."""
    out[RollupKey(DAILY, day, "visitors", None, None)] += 1
    for dimension in VISITOR_DIMENSIONS:
        out[RollupKey(DAILY, day, "visitors", dimension, _dimension_text(row.get(dimension)))] += 1


def _dimension_text(value) -> str:
    """Return a dimension's stored value; an unknown one is the empty string, never NULL.

    NULL is reserved for the total row (no dimension), which NULLS NOT DISTINCT keeps unique.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)[:1024]
