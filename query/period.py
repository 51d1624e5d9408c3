"""Reporting periods in a site's time zone, their comparison period, and time-series intervals."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from query.params import BadRequest, parse_choice, parse_day

PERIODS = ("today", "24h", "7d", "30d", "month", "year", "custom")
INTERVALS = ("minute", "hour", "day", "week", "month")
MAX_RANGE_DAYS = 3700
MAX_POINTS = 2000


@dataclass(frozen=True, slots=True)
class Period:
    """The instants [start, end) of a report, and its local dates when it is made of whole days."""

    start: datetime
    end: datetime
    timezone: str
    first: date
    last: date
    whole_days: bool

    def previous(self) -> Period:
        """The period of the same length that ends where this one starts."""
        if self.whole_days:
            days = (self.last - self.first).days + 1
            return whole_days(self.first - timedelta(days=days), self.first - timedelta(days=1), self.timezone)
        span = self.end - self.start
        return instants(self.start - span, self.start, self.timezone)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequest(f"unknown time zone tz={name!r}: use an IANA name such as Europe/Berlin",
                         parameter="tz") from None


def whole_days(first: date, last: date, tz: str) -> Period:
    zone_info = zone(tz)
    start = datetime.combine(first, time(), zone_info)
    end = datetime.combine(last + timedelta(days=1), time(), zone_info)
    return Period(start, end, tz, first, last, True)


def instants(start: datetime, end: datetime, tz: str) -> Period:
    zone_info = zone(tz)
    return Period(start, end, tz, start.astimezone(zone_info).date(), (end - timedelta(microseconds=1)).astimezone(zone_info).date(), False)


def parse_period(query, tz: str, now: datetime | None = None) -> Period:
    """Read `period` (default 30d) with `from`/`to` for custom ranges, in time zone `tz`."""
    now = now or datetime.now(timezone.utc)
    name = parse_choice(query, "period", PERIODS, "custom" if "from" in query or "to" in query else "30d")
    today = now.astimezone(zone(tz)).date()

    if name == "custom":
        first, last = parse_day(query.get("from"), "from"), parse_day(query.get("to"), "to")
        if last < first:
            raise BadRequest(f"invalid range: to={last} is before from={first}", parameter="to")
        if (last - first).days > MAX_RANGE_DAYS:
            raise BadRequest(f"range of {(last - first).days} days is longer than {MAX_RANGE_DAYS}", parameter="to")
        return whole_days(first, last, tz)
    if name == "24h":
        return instants(now - timedelta(hours=24), now, tz)
    if name == "today":
        return whole_days(today, today, tz)
    if name == "7d":
        return whole_days(today - timedelta(days=6), today, tz)
    if name == "30d":
        return whole_days(today - timedelta(days=29), today, tz)
    if name == "month":
        return whole_days(today.replace(day=1), today, tz)
    return whole_days(today.replace(month=1, day=1), today, tz)


def parse_interval(query, period: Period) -> str:
    span_days = (period.end - period.start).total_seconds() / 86400
    default = "minute" if span_days <= 0.05 else "hour" if span_days <= 2 else "day" if span_days <= 120 else "week"
    interval = parse_choice(query, "interval", INTERVALS, default)
    seconds = {"minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400, "month": 28 * 86400}[interval]
    if span_days * 86400 / seconds > MAX_POINTS:
        raise BadRequest(f"interval={interval} gives more than {MAX_POINTS} points for this period; "
                         "choose a longer interval or a shorter period", parameter="interval")
    return interval
