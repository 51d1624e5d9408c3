"""Pure rollup functions: a session's change equals removing its old row and adding its new one."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from streams.rollup import (ALL_SESSION_DIMENSIONS, _buckets, _exact_buckets, local_date, local_hour, session_change,
                            session_contributions)

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
