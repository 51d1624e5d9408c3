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
