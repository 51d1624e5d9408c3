"""Pure rollup functions: a session's change equals removing its old row and adding its new one."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from streams.rollup import (ALL_SESSION_DIMENSIONS, RollupKey, SessionRollup, VisitorRollup, _buckets, _exact_buckets,
                            local_date, local_hour, session_change, session_contributions)

START = datetime(2026, 3, 29, 0, 40, tzinfo=timezone.utc)


def _row(rng: random.Random, start: datetime) -> dict:
    row = {"started_at": start, "is_bot": rng.random() < 0.1, "is_bounce": rng.random() < 0.5,
           "duration_s": rng.choice([0, 0, 5, 61, 1800])}
    for dimension in ALL_SESSION_DIMENSIONS:
        row[dimension] = rng.choice([None, "a", "b"])
    return row


def _changed(rng: random.Random, old: dict) -> dict:
    """Return `old` after a new event: longer, maybe no bounce, a few values maybe changed."""
    new = dict(old, duration_s=old["duration_s"] + rng.choice([0, 1, 30]), is_bounce=old["is_bounce"] and rng.random() < 0.3)
    for dimension in rng.sample(ALL_SESSION_DIMENSIONS, rng.choice([0, 0, 1, 3])):
        new[dimension] = rng.choice([None, "a", "c"])
    if rng.random() < 0.2:
        new["started_at"] = old["started_at"] - timedelta(minutes=rng.choice([5, 50]))
    if rng.random() < 0.05:
        new["is_bot"] = not old["is_bot"]
    return new


def _nonzero(counts: Counter) -> dict:
    return {key: value for key, value in counts.items() if value}


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "Asia/Kathmandu", "America/St_Johns"])
def test_session_change_equals_old_out_new_in(zone):
    rng = random.Random(zone)
    for _ in range(2000):
        old = _row(rng, START + timedelta(minutes=rng.randrange(0, 600)))
        new = _changed(rng, old)
        pair = rng.choice([(old, new), (None, new), (old, None)])
        expected: Counter = Counter()
        if pair[0] is not None:
            session_contributions(expected, pair[0], zone, -1)
        if pair[1] is not None:
            session_contributions(expected, pair[1], zone, +1)
        got: Counter = Counter()
        session_change(got, *pair, zone)
        assert _nonzero(got) == _nonzero(expected)


def test_session_change_of_an_unchanged_session_adds_nothing():
    row = _row(random.Random(1), START)
    row["is_bot"] = False
    got: Counter = Counter()
    session_change(got, row, dict(row), "Europe/Berlin")
    assert got == Counter()


def test_longer_session_moves_only_duration_and_bounce():
    old = {"started_at": START, "is_bot": False, "is_bounce": True, "duration_s": 0,
           **{dimension: "x" for dimension in ALL_SESSION_DIMENSIONS}}
    new = dict(old, is_bounce=False, duration_s=42)
    got: Counter = Counter()
    session_change(got, old, new, "UTC")
    assert {key.metric for key in got} == {"bounces", "session_duration_s"}
    assert sorted(set(got.values())) == [-1, 42]
    # Two totals (hour and day) plus one row per dimension, for each of the two metrics.
    assert len(got) == 2 * (2 + len(ALL_SESSION_DIMENSIONS))


# Zones with offsets of 30 and 45 minutes, a 30-minute daylight-saving shift (Lord Howe), a
# negative daylight saving time (Dublin), and Amsterdam's local mean time of +0:19:32 before 1937.
ODD_ZONES = ["UTC", "Europe/Berlin", "Asia/Kathmandu", "America/St_Johns", "Australia/Lord_Howe", "Pacific/Chatham",
             "Europe/Dublin", "Africa/Casablanca", "Europe/Amsterdam"]


def _offset_changes(zone: str, first_year: int, last_year: int) -> list[int]:
    """Return the unix ms at which the zone's UTC offset changes, found by bisecting each hour that has one."""
    tz = ZoneInfo(zone)
    changes = []
    hour_ms = 3_600_000
    start = int(datetime(first_year, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)
    end = int(datetime(last_year + 1, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)

    def offset(ms: int):
        return datetime.fromtimestamp(ms / 1000, tz).utcoffset()

    for low in range(start, end, hour_ms):
        high = low + hour_ms
        if offset(low) == offset(high):
            continue
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if offset(middle) == offset(low) else (low, middle)
        changes.append(high)
    return changes


@pytest.mark.parametrize("zone", ODD_ZONES)
def test_cached_buckets_equal_exact_conversion(zone):
    rng = random.Random(zone)
    instants = []
    for change in _offset_changes(zone, 2025, 2027) + _offset_changes(zone, 1936, 1937):
        instants += [change + delta for delta in (-60_001, -60_000, -1, 0, 1, 59_999, 60_000)]
        instants += [change + rng.randrange(-120_000, 120_000) for _ in range(50)]
    for hour_start in range(1_735_689_600_000, 1_735_689_600_000 + 3 * 86_400_000, 900_000):
        instants += [hour_start - 1, hour_start, hour_start + rng.randrange(0, 900_000)]
    instants += [rng.randrange(-2_500_000_000_000, 2_000_000_000_000) for _ in range(2000)]
    assert len(instants) > 2000
    for unix_ms in instants:
        expected = _exact_buckets(unix_ms, zone)
        assert _buckets(unix_ms, zone) == expected, unix_ms
        assert local_hour(unix_ms, zone) == expected[0], unix_ms
        assert local_date(unix_ms, zone) == expected[1], unix_ms


def test_cached_buckets_local_mean_time():
    # Amsterdam was +0:19:32 in 1900, so its local hours start 28 seconds into a UTC minute.
    zone = "Europe/Amsterdam"
    hour_start = int(datetime(1900, 6, 1, 10, 0, tzinfo=ZoneInfo(zone)).timestamp() * 1000)
    assert hour_start % 60_000 == 28_000
    assert local_hour(hour_start - 1, zone) == local_hour(hour_start, zone) - timedelta(hours=1)
    assert local_hour(hour_start, zone).timestamp() * 1000 == hour_start


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)[:1024]


def _add_session_one_key_at_a_time(out: Counter, row: dict, zone: str, sign: int) -> None:
    """Add one session's counts key by key: the definition that SessionRollup sums faster."""
    if row["is_bot"]:
        return
    local = row["started_at"].astimezone(ZoneInfo(zone))
    hour = local.replace(minute=0, second=0, microsecond=0).astimezone(timezone.utc)
    counts = [("sessions", sign)]
    if row["is_bounce"]:
        counts.append(("bounces", sign))
    if row["duration_s"]:
        counts.append(("session_duration_s", sign * row["duration_s"]))
    for metric, value in counts:
        out[RollupKey("hour", hour, metric, None, None)] += value
        out[RollupKey("day", local.date(), metric, None, None)] += value
        for dimension in ALL_SESSION_DIMENSIONS:
            out[RollupKey("day", local.date(), metric, dimension, _text(row[dimension]))] += value


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kathmandu", "America/St_Johns"])
def test_session_rollup_equals_key_by_key_sums(zone):
    rng = random.Random(zone)
    rows = []
    for _ in range(500):
        row = _row(rng, START + timedelta(minutes=rng.randrange(0, 3000)))
        # Text longer than a dimension value, a number and a flag, as _dimension_text stores them.
        row[rng.choice(ALL_SESSION_DIMENSIONS)] = rng.choice(["x" * 1100, 64512, True, False, "a"])
        rows.append((row, rng.choice([1, -1])))
    expected: Counter = Counter()
    for row, sign in rows:
        _add_session_one_key_at_a_time(expected, row, zone, sign)
    rollup = SessionRollup(zone, {})
    for row, sign in rows:
        rollup.add(row, sign)
    got: Counter = Counter()
    rollup.flush(got)
    # Exact: the same keys, zero sums included, with the same values.
    assert dict(got) == dict(expected)
    assert all(isinstance(key, RollupKey) for key in got)


def test_session_rollup_changes_equal_old_out_new_in():
    rng = random.Random(5)
    pairs = []
    for _ in range(1000):
        old = _row(rng, START + timedelta(minutes=rng.randrange(0, 600)))
        pairs.append(rng.choice([(old, _changed(rng, old)), (None, old), (old, None)]))
    expected: Counter = Counter()
    for old, new in pairs:
        if old is not None:
            _add_session_one_key_at_a_time(expected, old, "Europe/Berlin", -1)
        if new is not None:
            _add_session_one_key_at_a_time(expected, new, "Europe/Berlin", +1)
    rollup = SessionRollup("Europe/Berlin", {})
    for old, new in pairs:
        rollup.change(old, new)
    got: Counter = Counter()
    rollup.flush(got)
    assert _nonzero(got) == _nonzero(expected)


def _visitor_change_one_key_at_a_time(out: Counter, before: dict, after: dict) -> None:
    for day in before.keys() | after.keys() | {d + timedelta(days=1) for d in before.keys() | after.keys()}:
        old, new = before.get(day, set()), after.get(day, set())
        old_overlap = old & before.get(day - timedelta(days=1), set())
        new_overlap = new & after.get(day - timedelta(days=1), set())
        for pair in new - old:
            out[RollupKey("day", day, "visitors", *pair)] += 1
        for pair in old - new:
            out[RollupKey("day", day, "visitors", *pair)] -= 1
        for pair in new_overlap - old_overlap:
            out[RollupKey("day", day, "visitors_overlap", *pair)] += 1
        for pair in old_overlap - new_overlap:
            out[RollupKey("day", day, "visitors_overlap", *pair)] -= 1


def test_visitor_rollup_equals_key_by_key_sums():
    rng = random.Random(9)
    days = [START.date() + timedelta(days=n) for n in range(3)]
    values = [(None, None), ("page", "/"), ("page", "/a"), ("country", "DE"), ("country", ""), ("event", "signup")]
    changes = []
    for _ in range(2000):
        before = {day: set(rng.sample(values, rng.randrange(1, 4))) for day in rng.sample(days, rng.randrange(0, 3))}
        after = {day: pairs | set(rng.sample(values, rng.randrange(0, 2))) for day, pairs in before.items()}
        if rng.random() < 0.5:
            after[rng.choice(days)] = set(rng.sample(values, 2))
        changes.append((before, after))
    expected: Counter = Counter()
    for before, after in changes:
        _visitor_change_one_key_at_a_time(expected, before, after)
    rollup = VisitorRollup()
    for before, after in changes:
        rollup.change(before, after)
    got: Counter = Counter()
    rollup.flush(got)
    assert _nonzero(got) == _nonzero(expected)
    assert len(_nonzero(got)) > 20
