"""Rollups written by an earlier version are flagged until a replay rebuilds their days."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from ops.replay_events import replay_events
from query.api import coverage_warning
from sinks.coverage import EARLIEST, first_complete_date, record_older_rollups
from sinks.rebuild import RangeBeforeRawEvents, rebuild_range
from sinks.sites import upsert_site
from streams.bots import BotDetector
from streams.sites import Site
from tests.sinks.test_derived import feed, make_event, processor  # noqa: F401  (processor is a fixture)

OLD = Site("old.example", "UTC")


def noon_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, 12, tzinfo=timezone.utc).timestamp() * 1000)


async def test_older_rollups_warn_until_replayed(processor, db):  # noqa: F811
    today = datetime.now(timezone.utc).date()
    day = today - timedelta(days=5)
    await upsert_site(db, OLD)
    await db.execute("INSERT INTO daily_metrics (site, date, metric_name, value) VALUES ($1, $2, 'pageviews', 3)",
                     OLD.domain, day)

    recorded = await record_older_rollups(db)
    again = await record_older_rollups(db)
    await feed(processor, [[make_event(OLD.domain, "v1", 0, "/", base_ms=noon_ms(day))]])
    warning = await coverage_warning(db, OLD.domain, day)

    assert recorded == [(OLD.domain, today + timedelta(days=1))]
    assert again == []
    assert warning == (f"rollups of old.example before {today + timedelta(days=1)} were written by an earlier "
                       "version of Weir, so unique visitors per page, source and audience value are missing there; "
                       f"rebuild them with `weir replay events --site old.example --from {day} --to {today}`")
    assert await coverage_warning(db, OLD.domain, today + timedelta(days=1)) is None

    await rebuild_range(db, OLD, BotDetector(), day, today)

    assert await first_complete_date(db, OLD.domain) == day
    assert await coverage_warning(db, OLD.domain, day) is None
    assert await coverage_warning(db, OLD.domain, day - timedelta(days=1)) is not None


async def test_replay_short_of_coverage_leaves_it(processor, db):  # noqa: F811
    today = datetime.now(timezone.utc).date()
    await upsert_site(db, OLD)
    await db.execute("INSERT INTO daily_metrics (site, date, metric_name, value) VALUES ($1, $2, 'pageviews', 3)",
                     OLD.domain, today)
    await record_older_rollups(db)

    # A gap of days between the rebuilt range and the first complete date keeps the date.
    await rebuild_range(db, OLD, BotDetector(), today - timedelta(days=9), today - timedelta(days=3))

    assert await first_complete_date(db, OLD.domain) == today + timedelta(days=1)


async def test_site_first_written_now_is_complete(processor, db):  # noqa: F811
    site = Site("new.example", "UTC")
    await upsert_site(db, site)

    await feed(processor, [[make_event(site.domain, "v1", 0, "/")]])

    assert await first_complete_date(db, site.domain) == EARLIEST
    assert await record_older_rollups(db) == []
    assert await coverage_warning(db, site.domain, date(2020, 1, 1)) is None


async def test_chunked_replay_moves_coverage_back(processor, db, database_url):  # noqa: F811
    today = datetime.now(timezone.utc).date()
    day = today - timedelta(days=5)
    await upsert_site(db, OLD)
    await db.execute("INSERT INTO daily_metrics (site, date, metric_name, value) VALUES ($1, $2, 'pageviews', 3)",
                     OLD.domain, day)
    await record_older_rollups(db)
    await feed(processor, [[make_event(OLD.domain, "v1", 0, "/", base_ms=noon_ms(day))]])

    # Chunks run oldest first, so only the last one reaches the first complete date.
    reports = await replay_events(database_url, OLD.domain, day, today, only={"sessions", "rollups"}, chunk_days=2,
                                  progress=None)

    assert len(reports) == 3
    assert await first_complete_date(db, OLD.domain) == day
    assert await coverage_warning(db, OLD.domain, day) is None


async def test_replay_keeps_rollups_older_than_raw_events(processor, db):  # noqa: F811
    # Retention dropped the raw events of `dropped`, so only its rollups are left.
    today = datetime.now(timezone.utc).date()
    dropped, day = today - timedelta(days=10), today - timedelta(days=5)
    await upsert_site(db, OLD)
    await db.execute("INSERT INTO daily_metrics (site, date, metric_name, value) VALUES ($1, $2, 'pageviews', 3)",
                     OLD.domain, dropped)
    await record_older_rollups(db)
    await feed(processor, [[make_event(OLD.domain, "v1", 0, "/", base_ms=noon_ms(day))]])
    warning = await coverage_warning(db, OLD.domain, dropped)

    with pytest.raises(RangeBeforeRawEvents) as rejected:
        await rebuild_range(db, OLD, BotDetector(), dropped, today)

    assert f"--from {dropped} --to {today}" in warning
    assert str(rejected.value) == (f"rollups of old.example on {dropped} are older than its oldest raw event ({day}), "
                                   "so a rebuild would delete them without replacing them; rebuild only days from "
                                   f"{day} on")
    assert await db.fetchval("SELECT value FROM daily_metrics WHERE date = $1 AND metric_name = 'pageviews'",
                             dropped) == 3
    assert await first_complete_date(db, OLD.domain) == today + timedelta(days=1)

    await rebuild_range(db, OLD, BotDetector(), day, today)

    assert await first_complete_date(db, OLD.domain) == day


BERLIN = Site("berlin.example", "Europe/Berlin")


def berlin_ms(day: date, hour: int, minute: int) -> int:
    """Return the epoch milliseconds of a Berlin winter time (UTC+1) on `day`."""
    return int(datetime(day.year, day.month, day.day, hour, minute, tzinfo=timezone(timedelta(hours=1))).timestamp()
               * 1000)


async def test_replay_keeps_oldest_day_that_retention_cut(processor, db):  # noqa: F811
    # A Berlin day starts at 23:00 UTC the day before, so dropping that UTC day cuts its first hour.
    day = date(2025, 1, 15)
    await upsert_site(db, BERLIN)
    await feed(processor, [[make_event(BERLIN.domain, "v1", 0, "/early", base_ms=berlin_ms(day, 0, 30)),
                            make_event(BERLIN.domain, "v2", 0, "/noon", base_ms=berlin_ms(day, 12, 0)),
                            make_event(BERLIN.domain, "v2", 1, "/signup", kind="signup",
                                       base_ms=berlin_ms(day, 12, 0))]])
    await db.execute("DELETE FROM raw_events WHERE site = $1 AND \"timestamp\" < '2025-01-15T00:00:00Z'",
                     BERLIN.domain)

    with pytest.raises(RangeBeforeRawEvents) as rejected:
        await rebuild_range(db, BERLIN, BotDetector(), day, day + timedelta(days=2))

    assert str(rejected.value) == (
        "rollups of berlin.example on 2025-01-15 count more events than raw_events contains of that day (pageviews 2 "
        "against 1, custom events 1 against 1), because retention dropped the raw events before 2025-01-15 UTC; a "
        "rebuild would lower its counts, so rebuild only days from 2025-01-16 on")
    assert await db.fetchval("SELECT value FROM daily_metrics WHERE site = $1 AND date = $2 "
                             "AND metric_name = 'pageviews' AND dimension_key IS NULL", BERLIN.domain, day) == 2


async def test_replay_rebuilds_oldest_day_that_starts_late(processor, db):  # noqa: F811
    # The site's first events came at noon, so its oldest day starts before them but lost nothing.
    day = date(2025, 1, 15)
    await upsert_site(db, BERLIN)
    await feed(processor, [[make_event(BERLIN.domain, "v2", 0, "/noon", base_ms=berlin_ms(day, 12, 0))]])

    report = await rebuild_range(db, BERLIN, BotDetector(), day, day)

    assert report.events == 1
    assert await db.fetchval("SELECT value FROM daily_metrics WHERE site = $1 AND date = $2 "
                             "AND metric_name = 'pageviews' AND dimension_key IS NULL", BERLIN.domain, day) == 1


async def test_replay_keeps_oldest_day_that_lost_custom_events(processor, db):  # noqa: F811
    # The cut hour held a visitor's custom event, and a bot's custom event later that day must
    # not stand in for it, because `events` counts humans only.
    day = date(2025, 1, 15)
    await upsert_site(db, BERLIN)
    await feed(processor, [[make_event(BERLIN.domain, "v1", 0, "/signup", kind="signup",
                                       base_ms=berlin_ms(day, 0, 30)),
                            make_event(BERLIN.domain, "v2", 0, "/noon", base_ms=berlin_ms(day, 12, 0)),
                            make_event(BERLIN.domain, "b1", 0, "/signup", kind="signup", bot=True,
                                       base_ms=berlin_ms(day, 12, 0))]])
    await db.execute("DELETE FROM raw_events WHERE site = $1 AND \"timestamp\" < '2025-01-15T00:00:00Z'",
                     BERLIN.domain)

    with pytest.raises(RangeBeforeRawEvents) as rejected:
        await rebuild_range(db, BERLIN, BotDetector(), day, day)

    assert "(pageviews 1 against 1, custom events 1 against 0)" in str(rejected.value)
    assert await db.fetchval("SELECT value FROM daily_metrics WHERE site = $1 AND date = $2 "
                             "AND metric_name = 'events' AND dimension_key IS NULL", BERLIN.domain, day) == 1
