"""Rollups: what each newly stored event and each session change adds to the metric tables.

Pure functions from facts to signed contributions keyed by (table, bucket, metric, dimension).
Buckets follow the site's time zone: an hourly bucket starts at a local hour (its UTC instant,
so zones with half-hour offsets and the repeated hour of a daylight-saving change stay apart),
and a daily row belongs to a local date, so a day's hours add up to the day.

Session metrics are attributed to the bucket of the session's start. When a session changes
(a new event, a merge), the sink subtracts the old fingerprint's contribution and adds the
new one, so the tables always equal a rebuild from the stored events.

Unique visitors work the same way, one visitor at a time: a visitor's contribution is a pure
function of all its human events and sessions, and a batch adds the new contribution and
subtracts the old one. A visitor id lives within one UTC day (its salt rotates at 00:00 UTC),
which spans two local dates in most zones. So besides "visitors" per local date, the rollups
keep "visitors_overlap": visitors of a date that were also visitors, with the same value, on
the date before. Unique visitors of any range of dates are then exact:

    sum of visitors over the range - sum of visitors_overlap over the range without its first date

Monthly rows hold the same sums per local month (see monthly_contributions), so a year reads
twelve rows per value instead of 365.

Custom events also count per property: the dimension "event_property" has one value per event
name, property key and the property's text (property_values), with events and unique visitors.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Collection
from datetime import date, datetime, timezone
from decimal import Decimal
from functools import lru_cache
from itertools import repeat
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import orjson

from streams.event import PAGEVIEW

HOURLY = "hour"
DAILY = "day"
MONTHLY = "month"

VISITORS = "visitors"
VISITORS_OVERLAP = "visitors_overlap"

# Session dimensions whose sessions, bounces and durations are rolled up per day.
SESSION_DIMENSIONS = ("source", "medium", "referrer_host", "utm_source", "utm_medium", "utm_campaign", "utm_term",
                      "utm_content", "entry_page", "exit_page")
# Visitor dimensions: constant for a visitor id that hashes the address and user agent. An id
# from `anonymous_id` or a Segment user id can carry several, and then counts once under each.
VISITOR_DIMENSIONS = ("country", "region", "city", "browser", "os", "device_type", "screen_size", "asn", "org",
                      "orgType", "isGovernment", "responseTier")
ALL_SESSION_DIMENSIONS = SESSION_DIMENSIONS + VISITOR_DIMENSIONS
# Event dimensions with unique visitors: the page of a pageview, the name of a custom event.
PAGE = "page"
EVENT = "event"
# Custom event properties, one value per (event name, key, text): see property_values.
PROPERTY = "event_property"
MAX_PROPERTY_KEYS = 20
"""Keys rolled up per event, the first in sorted order. Reports read raw events for the others."""
MAX_PROPERTY_VALUE_CHARS = 1024
"""The length of dimension_value (varchar(1024)); a longer encoded property is not rolled up."""
MAX_PROPERTY_VALUE_BYTES = 2048
"""The UTF-8 size past which an encoded property is not rolled up. A btree index row is at most
2704 bytes, and the unique indexes put dimension_value in one row with the site and names."""


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
    return _buckets(unix_ms, timezone_name)[0]


def local_date(unix_ms: int, timezone_name: str) -> date:
    return _buckets(unix_ms, timezone_name)[1]


_MINUTE_MS = 60_000
MINUTE_CACHE_SIZE = 50_000
"""UTC minutes whose buckets _buckets keeps per zone (about 35 days); a full cache is emptied."""


@lru_cache(maxsize=64)
def _minute_cache(timezone_name: str) -> dict[int, tuple[datetime, date] | None]:
    return {}


def _buckets(unix_ms: int, timezone_name: str) -> tuple[datetime, date]:
    """Return the hourly bucket and the local date of `unix_ms` (see _exact_buckets), cached per UTC minute.

    Converting an instant with ZoneInfo took 2.6 µs on CPython 3.11 (a cache hit 0.16 µs), and a
    batch converts each event and session start several times, mostly within a few minutes.
    """
    cache = _minute_cache(timezone_name)
    minute = unix_ms // _MINUTE_MS
    buckets = cache.get(minute)
    if buckets is None:
        if minute not in cache:
            if len(cache) >= MINUTE_CACHE_SIZE:
                cache.clear()
            buckets = cache[minute] = _uniform_buckets(minute, timezone_name)
        if buckets is None:
            return _exact_buckets(unix_ms, timezone_name)
    return buckets


def _uniform_buckets(minute: int, timezone_name: str) -> tuple[datetime, date] | None:
    """Return the buckets every instant of a UTC minute shares, or None when they differ within it.

    The first and the last millisecond of the minute must have the same buckets and the same UTC
    offset. A constant offset makes local time move with UTC, so the buckets, which only grow
    with local time, are the same in between. A minute that an offset change, or a zone offset
    that is not a whole number of minutes, splits is converted per instant.

    NOTE: this assumes that no zone changes its offset twice within one minute and back.
    """
    zone = _zone(timezone_name)
    first_ms = minute * _MINUTE_MS
    last_ms = first_ms + _MINUTE_MS - 1
    first, last = datetime.fromtimestamp(first_ms / 1000, zone), datetime.fromtimestamp(last_ms / 1000, zone)
    if first.utcoffset() != last.utcoffset():
        return None
    buckets = _exact_buckets(first_ms, timezone_name)
    if buckets != _exact_buckets(last_ms, timezone_name):
        return None
    return buckets


def _exact_buckets(unix_ms: int, timezone_name: str) -> tuple[datetime, date]:
    """Return the UTC start of the local hour holding `unix_ms`, and its local date."""
    local = datetime.fromtimestamp(unix_ms / 1000, _zone(timezone_name))
    return local.replace(minute=0, second=0, microsecond=0).astimezone(timezone.utc), local.date()


# RollupKey(...) runs a generated Python __new__; tuple.__new__ builds the same named tuple about
# four times faster (180 against 730 ns on CPython 3.11), and a session adds dozens of keys.
_new_key = tuple.__new__


def event_contributions(out: Counter, event_type: str, action: str, timestamp_ms: int, is_bot: bool,
                        timezone_name: str, properties: tuple[str, ...] = ()) -> None:
    """Add one newly stored event's counts to `out`; `properties` are its property_values, ignored for bots."""
    if event_type == PAGEVIEW:
        metric, dimension = ("bot_pageviews", None) if is_bot else ("pageviews", "page")
    elif is_bot:
        return
    else:
        metric, dimension = "events", "event"
    hour, day = _buckets(timestamp_ms, timezone_name)
    out[_new_key(RollupKey, (HOURLY, hour, metric, None, None))] += 1
    out[_new_key(RollupKey, (DAILY, day, metric, None, None))] += 1
    if dimension is not None:
        out[_new_key(RollupKey, (DAILY, day, metric, dimension, action[:1024]))] += 1
    for value in properties:
        out[_new_key(RollupKey, (DAILY, day, metric, PROPERTY, value))] += 1


def property_values(event_type: str, action: str, props: dict[str, Any] | None) -> tuple[str, ...]:
    """Return the "event_property" values of one event: a JSON array [name, key, text] per property.

    The text is what `coalesce(metadata ->> key, '')` returns in PostgreSQL for the stored props,
    so a report can group by it as the raw query does. Pageviews have none. A property is left
    out when its value is an object or an array, when its key is not among the first
    MAX_PROPERTY_KEYS in sorted order, or when its encoded array is too long. The limits are
    MAX_PROPERTY_VALUE_CHARS characters and MAX_PROPERTY_VALUE_BYTES bytes of UTF-8.
    Reports notice the events missing from a key's values and read raw events instead.
    """
    if event_type == PAGEVIEW or not props:
        return ()
    values = []
    for key in sorted(props)[:MAX_PROPERTY_KEYS]:
        text = _property_text(props[key])
        if text is None:
            continue
        value = orjson.dumps([action, key, text]).decode()
        if len(value) <= MAX_PROPERTY_VALUE_CHARS and (value.isascii() or len(value.encode()) <= MAX_PROPERTY_VALUE_BYTES):
            values.append(value)
    return tuple(values)


def property_prefix(action: str, key: str) -> str:
    """Return the start that every property_values value of this event name and key has, and no other."""
    return orjson.dumps([action, key]).decode()[:-1] + ","


def _property_text(value: Any) -> str | None:
    """Return the text of a JSON value as PostgreSQL's `->>` prints it after orjson stored it; None for objects and arrays."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""  # orjson writes NaN and infinities as null
        # jsonb keeps the decimal orjson wrote, with its digits after the point, and has no -0.
        number = Decimal(orjson.dumps(value).decode())
        return format(number.copy_abs() if number == 0 else number, "f")
    if isinstance(value, str):
        return value
    return None


def session_contributions(out: Counter, row: dict, timezone_name: str, sign: int) -> None:
    """Add (sign=+1) or remove (sign=-1) one human session's counts, from its fingerprint row.

    A count of zero (no bounce, no duration) adds no key, so it writes no rollup row.
    """
    sessions = SessionRollup(timezone_name)
    sessions.add(row, sign)
    sessions.flush(out)


def session_change(out: Counter, old, new, timezone_name: str) -> None:
    """Add the change from fingerprint row `old` to `new` of one session; either may be None.

    Equal to session_contributions(old, -1) plus session_contributions(new, +1), but a session
    that keeps its start and its dimension values (most sessions gaining an event) only moves
    its bounce and duration, so it touches no key whose count does not change.
    """
    sessions = SessionRollup(timezone_name)
    sessions.change(old, new)
    sessions.flush(out)


SessionFacts = tuple[datetime, date, tuple[tuple[str, str], ...]]
"""The facts the rollups read from one session row: its hourly bucket, its local date, and its
(dimension, text) pairs in ALL_SESSION_DIMENSIONS order."""

_TOTAL = (None, None)

_session_values = operator.itemgetter(*ALL_SESSION_DIMENSIONS)


def session_facts(row, timezone_name: str, cache: dict[int, SessionFacts] | None = None) -> SessionFacts:
    """Return the SessionFacts of a fingerprint row, cached by the row's id() in `cache` when given.

    A cache may only hold rows that stay alive as long as it does, because a new object can
    reuse the id() of a freed one.
    """
    if cache is not None:
        facts = cache.get(id(row))
        if facts is not None:
            return facts
    hour, day = _buckets(int(row["started_at"].timestamp() * 1000), timezone_name)
    try:
        values = _session_values(row)
    except KeyError:
        values = [row.get(dimension) for dimension in ALL_SESSION_DIMENSIONS]
    # Most values are short text, which _dimension_text would return unchanged.
    texts = [value if value.__class__ is str and len(value) <= 1024 else _dimension_text(value) for value in values]
    facts = (hour, day, tuple(zip(ALL_SESSION_DIMENSIONS, texts)))
    if cache is not None:
        cache[id(row)] = facts
    return facts


def _session_keys(facts: SessionFacts, pairs=None, totals: bool = True) -> list[tuple]:
    """Return a session's rollup keys without the metric, as ((granularity, bucket), (dimension, text)).

    These are the hourly and daily totals, unless `totals` is false, and the daily row of each
    of `pairs` (default: all of the session's pairs). zip builds the nested tuples in C.
    """
    hour, day, all_pairs = facts
    keys = [((HOURLY, hour), _TOTAL), ((DAILY, day), _TOTAL)] if totals else []
    keys += zip(repeat((DAILY, day)), all_pairs if pairs is None else pairs)
    return keys


class SessionRollup:
    """The session counts of many fingerprint rows, summed per rollup row and then added to a Counter.

    A human session adds a count to about 50 rollup keys, and adding them one at a time took
    about 0.5 µs per key (CPython 3.11, the two-core machine of bench/processor). Here each
    row's keys are built once without the metric, counts of +1 and -1 (sessions, bounces) are
    tallied by Counter's C loop, and `flush` adds every distinct key once. The sums and the set
    of keys equal adding each count in turn.
    """

    def __init__(self, timezone_name: str, cache: dict[int, SessionFacts] | None = None) -> None:
        """Start empty. `cache` is passed to session_facts."""
        self.timezone_name = timezone_name
        self._cache = cache
        self._plus: dict[str, Counter] = {}
        self._minus: dict[str, Counter] = {}
        self._weighted: dict[str, dict] = {}

    def add(self, row, sign: int) -> None:
        """Add (sign=+1) or remove (sign=-1) one session's counts, as session_contributions describes."""
        if row["is_bot"]:
            return
        keys = _session_keys(session_facts(row, self.timezone_name, self._cache))
        for metric, value in _session_counts(row, sign):
            self._add(metric, value, keys)

    def change(self, old, new) -> None:
        """Add the change from row `old` to row `new` of one session, as session_change describes."""
        if old is None or new is None or old["is_bot"] or new["is_bot"] or old["started_at"] != new["started_at"]:
            if old is not None:
                self.add(old, -1)
            if new is not None:
                self.add(new, +1)
            return
        bounce = int(bool(new["is_bounce"])) - int(bool(old["is_bounce"]))
        duration = int(new["duration_s"]) - int(old["duration_s"])
        moved = [(metric, value) for metric, value in (("bounces", bounce), ("session_duration_s", duration)) if value]
        old_facts = session_facts(old, self.timezone_name, self._cache)
        new_facts = session_facts(new, self.timezone_name, self._cache)
        # Both rows have the same start, so they share their totals, and their keys differ only where a
        # dimension value changed, such as a session's exit page. Such a value moves the whole session.
        if old_facts[2] == new_facts[2]:
            same = _session_keys(new_facts)
        else:
            same = _session_keys(new_facts, [pair for pair, other in zip(new_facts[2], old_facts[2]) if pair == other])
            removed = _session_keys(old_facts, [pair for pair, other in zip(old_facts[2], new_facts[2]) if pair != other],
                                 totals=False)
            added = _session_keys(new_facts, [pair for pair, other in zip(new_facts[2], old_facts[2]) if pair != other],
                                 totals=False)
            for metric, value in _session_counts(old, -1):
                self._add(metric, value, removed)
            for metric, value in _session_counts(new, +1):
                self._add(metric, value, added)
        for metric, value in moved:
            self._add(metric, value, same)

    def _add(self, metric: str, value: int, keys: list[tuple]) -> None:
        # Counter.update of a list counts each element once, in C. A Counter is only built for a new
        # metric, because building one is a Python call.
        if value == 1 or value == -1:
            tallies = self._plus if value == 1 else self._minus
            tally = tallies.get(metric)
            if tally is None:
                tally = tallies[metric] = Counter()
            tally.update(keys)
        else:
            sums = self._weighted.setdefault(metric, {})
            get = sums.get
            for key in keys:
                sums[key] = get(key, 0) + value

    def flush(self, out: Counter) -> None:
        """Add the summed counts to `out` (keyed by RollupKey) and start empty again."""
        get = out.get
        for sums, sign in ((self._plus, 1), (self._minus, -1), (self._weighted, 1)):
            for metric, counts in sums.items():
                for ((granularity, bucket), (dimension, text)), value in counts.items():
                    key = _new_key(RollupKey, (granularity, bucket, metric, dimension, text))
                    out[key] = get(key, 0) + sign * value
        self._plus, self._minus, self._weighted = {}, {}, {}


def _session_counts(row, sign: int) -> list[tuple[str, int]]:
    """Return the (metric, signed count) pairs that one human session adds to each of its rows."""
    counts = [("sessions", sign)]
    if row["is_bounce"]:
        counts.append(("bounces", sign))
    duration = sign * int(row["duration_s"])
    if duration:
        counts.append(("session_duration_s", duration))
    return counts


def visitor_days(events, sessions, timezone_name: str, session_cache: dict[int, SessionFacts] | None = None
                 ) -> dict[date, set]:
    """Return the (dimension, value) pairs one visitor counts under on each local date.

    `events` are (event_type, action, timestamp_ms, property_values) of the visitor's human events,
    `sessions` its fingerprint rows (bot sessions are skipped). On each local date with an event,
    the visitor counts once in the total (the pair (None, None)) and once per page, custom event
    name and custom event property.
    It also counts once per value of every session dimension among the sessions that started
    that date. `session_cache` is passed to session_facts, for callers that pass the same row
    objects to several calls.
    """
    days: dict[date, set] = {}
    for event_type, action, timestamp_ms, properties in events:
        day = _buckets(timestamp_ms, timezone_name)[1]
        values = days.get(day)
        if values is None:
            values = days[day] = {(None, None)}
        values.add((PAGE if event_type == PAGEVIEW else EVENT, action[:1024]))
        for value in properties:
            values.add((PROPERTY, value))
    for row in sessions:
        if row["is_bot"]:
            continue
        _hour, day, pairs = session_facts(row, timezone_name, session_cache)
        values = days.get(day)
        if values is None:
            values = days[day] = set()
        values.update(pairs)
    return days


def visitor_change(out: Counter, before: dict[date, set], after: dict[date, set]) -> None:
    """Add the change of one visitor's visitors and visitors_overlap rows from `before` to `after`.

    Both are visitor_days results. Only dates whose pairs changed, and the dates after them
    (their overlap), are looked at, so a batch that adds a pageview to a known page costs little.

    NOTE: a visitor id spans at most two local dates, except in a zone whose clocks jump at
    local midnight soon after 00:00 UTC. There an id can reach three dates; it still counts
    once, unless a value appears on the first and the third date only.
    """
    changes = VisitorRollup()
    changes.change(before, after)
    changes.flush(out)


class VisitorRollup:
    """The visitor_change of many visitors, tallied per rollup row and then added to a Counter.

    Visitors of a batch share most of their rows (a date's total, its countries and browsers),
    so the +1 and -1 of each (date, metric, pair) are tallied by Counter's C loop, and `flush`
    adds every distinct key once. The sums and the set of keys equal visitor_change's.
    """

    def __init__(self) -> None:
        self._plus: Counter = Counter()
        self._minus: Counter = Counter()

    def change(self, before: dict[date, set], after: dict[date, set]) -> None:
        """Add the change of one visitor from `before` to `after`, as visitor_change describes."""
        empty: frozenset = frozenset()
        changed = {day for day in before.keys() | after.keys() if before.get(day, empty) != after.get(day, empty)}
        for day in changed:
            old, new = before.get(day, empty), after.get(day, empty)
            self._plus.update(zip(repeat((day, VISITORS)), new - old))
            self._minus.update(zip(repeat((day, VISITORS)), old - new))
        for day in changed | {date.fromordinal(day.toordinal() + 1) for day in changed}:
            previous = date.fromordinal(day.toordinal() - 1)
            old = before.get(day, empty) & before.get(previous, empty)
            new = after.get(day, empty) & after.get(previous, empty)
            if old != new:
                self._plus.update(zip(repeat((day, VISITORS_OVERLAP)), new - old))
                self._minus.update(zip(repeat((day, VISITORS_OVERLAP)), old - new))

    def flush(self, out: Counter) -> None:
        """Add the tallied changes to `out` (keyed by RollupKey) and start empty again."""
        get = out.get
        for tally, sign in ((self._plus, 1), (self._minus, -1)):
            for ((day, metric), (dimension, value)), count in tally.items():
                key = _new_key(RollupKey, (DAILY, day, metric, dimension, value))
                out[key] = get(key, 0) + sign * count
        self._plus, self._minus = Counter(), Counter()


def monthly_contributions(daily: Counter, only: Collection[date] | None = None) -> Counter:
    """Return the monthly rows that `daily` rows add: the same sums per local month.

    A month's "visitors" row is the month's unique visitors: its dates' visitors minus the
    overlaps inside the month. The overlap of its first date (with the month before) stays as
    the month's "visitors_overlap", so months join to each other and to dates the same way.
    `only` limits the result to those months (first dates).
    """
    months: Counter = Counter()
    get = months.get
    for key, value in daily.items():
        if key.granularity != DAILY or not value:
            continue
        if only is not None and key.bucket.replace(day=1) not in only:
            continue
        metric = key.metric
        if metric == VISITORS_OVERLAP and key.bucket.day != 1:
            metric, value = VISITORS, -value
        month = _new_key(RollupKey, (MONTHLY, key.bucket.replace(day=1), metric, key.dimension_key,
                                     key.dimension_value))
        months[month] = get(month, 0) + value
    return months


def _dimension_text(value) -> str:
    """Return a dimension's stored value; an unknown one is the empty string, never NULL.

    NULL is reserved for the total row (no dimension), which NULLS NOT DISTINCT keeps unique.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)[:1024]
