"""Pure rollup functions: a session's change equals removing its old row and adding its new one."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from streams.rollup import ALL_SESSION_DIMENSIONS, session_change, session_contributions

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
