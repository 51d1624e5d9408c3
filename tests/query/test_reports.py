"""Reports over the real access log: rollups and raw events agree, pages agree with each other."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest

from query import reports
from sinks.sites import upsert_site
from streams.sites import Site
from query.period import instants, whole_days
from query.scope import Scope
from query.timeseries import timeseries
from tests.conftest import API_KEY
from tests.ops.test_import_logs import import_log, run_weir, service_env
from tests.conftest import wait_until_processed

SITE = "semicomplete.com"


@pytest.fixture
async def imported(stack, redis):
    env = service_env(stack.database_url, stack.redis_url)
    added = await asyncio.to_thread(run_weir, env, "site", "add", SITE, "--timezone", "UTC", "--alias",
                                    "www.semicomplete.com")
    assert added.returncode == 0, added.stderr
    result = await import_log(env)
    assert result.returncode == 0, result.stderr
    await wait_until_processed(redis)
    return stack


def days() -> tuple[str, str]:
    today = datetime.now(timezone.utc).date()
    return str(today - timedelta(days=3)), str(today)


async def api(stack, path: str, **params) -> dict:
    first, last = days()
    query = [("site", SITE), ("from", first), ("to", last)]
    for name, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            query.append((name, item))
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        async with http.get(f"{stack.api_url}{path}", params=query) as response:
            text = await response.text()
            assert response.status == 200, text
            return await response.json() if response.content_type == "application/json" else text


async def test_rollups_and_raw_events_give_same_overview(imported, db):
    first, last = days()
    rolled = Scope(SITE, whole_days(datetime.fromisoformat(first).date(), datetime.fromisoformat(last).date(), "UTC"))
    raw = Scope(SITE, instants(rolled.period.start, rolled.period.end, "UTC"))

    assert rolled.uses_rollups and not raw.uses_rollups
    assert await reports.overview(db, rolled) == await reports.overview(db, raw)
    assert (await reports.overview(db, rolled))["sessions"] == 1126


def rolled_and_raw(tz: str = "UTC", **options) -> tuple[Scope, Scope]:
    """Return a whole-day scope (rollups) and the same instants as a raw scope, over the imported days."""
    first, last = days()
    rolled = Scope(SITE, whole_days(datetime.fromisoformat(first).date(), datetime.fromisoformat(last).date(), tz),
                   **options)
    raw = Scope(SITE, instants(rolled.period.start, rolled.period.end, tz))
    return rolled, raw


async def test_overview_sums_daily_visitors_in_utc(imported, db):
    rolled, raw = rolled_and_raw()
    distinct, _ = rolled_and_raw("Africa/Abidjan")

    assert distinct.uses_rollups
    assert await reports.overview(db, rolled) == await reports.overview(db, raw)
    assert await reports.overview(db, distinct) == await reports.overview(db, raw)
    assert (await reports.overview(db, distinct))["visitors"] == 1005


@pytest.mark.parametrize("interval", ["day", "week", "month"])
async def test_rollups_and_raw_give_same_timeseries(imported, db, interval):
    rolled, raw = rolled_and_raw()
    distinct, distinct_raw = rolled_and_raw("Africa/Abidjan")

    assert await timeseries(db, rolled, interval) == await timeseries(db, raw, interval)
    assert await timeseries(db, distinct, interval) == await timeseries(db, distinct_raw, interval)


async def test_rollups_and_raw_give_same_government_share(imported, db):
    rolled, raw = rolled_and_raw()

    assert await reports.government_share(db, rolled) == await reports.government_share(db, raw)
    assert await reports.government_share(db, rolled) is not None


async def test_rollup_switch_and_other_zone_read_raw(imported, db):
    switched_off, raw = rolled_and_raw(rollups=False)
    other_zone, _ = rolled_and_raw("Europe/Berlin", site_timezone="UTC")

    assert not switched_off.uses_rollups
    assert not other_zone.uses_rollups
    assert await reports.overview(db, switched_off) == await reports.overview(db, raw)
    assert (await reports.session_breakdown(db, switched_off, "country", 1000, 0)
            == await reports.session_breakdown(db, raw, "country", 1000, 0))


async def test_every_report_answers_with_freshness(imported):
    overview = await api(imported, "/api/overview", compare="previous")
    series = await api(imported, "/api/timeseries", interval="day")
    hourly = await api(imported, "/api/timeseries", interval="hour")
    entry = await api(imported, "/api/pages", kind="entry", limit="3")
    traffic = await api(imported, "/api/traffic", dimension="channel")
    audience = await api(imported, "/api/audience", dimension="country", limit="1000")
    network = await api(imported, "/api/network", dimension="org_type")

    for answer in (overview, series, entry, traffic, audience, network):
        assert answer["freshness"]["stale"] is False
    assert overview["comparison"]["pageviews"] == 0
    assert sum(row["pageviews"] for row in series["data"]) == overview["pageviews"] == 1777
    assert sum(row["sessions"] for row in series["data"]) == overview["sessions"] == 1126
    assert sum(row["visitors"] for row in series["data"]) == overview["visitors"] == 1005
    assert len(hourly["data"]) == 96
    assert sum(row["pageviews"] for row in hourly["data"]) == 1777
    assert sum(row["sessions"] for row in hourly["data"]) == 1126
    assert {r["value"]: r["sessions"] for r in traffic["data"]} == {
        "direct": 539, "search": 430, "referral": 148, "feed": 7, "social": 2}
    assert sum(r["visitors"] for r in audience["data"]) == 1005
    assert sum(r["sessions"] for r in network["data"]) == 1126
    assert network["government_share"] == pytest.approx(7 / 1005, abs=1e-3)
    assert [set(row) for row in entry["data"]] == [{"path", "sessions", "visitors", "bounce_rate"}] * 3


async def test_raw_and_session_pages_agree_under_a_filter(imported):
    audience = await api(imported, "/api/audience", dimension="country", limit="5")
    country = audience["data"][0]["value"]

    overview = await api(imported, "/api/overview", filter=f"country:eq:{country}")
    traffic = await api(imported, "/api/traffic", dimension="channel", filter=f"country:eq:{country}")
    series = await api(imported, "/api/timeseries", interval="day", filter=f"country:eq:{country}")

    assert overview["visitors"] == audience["data"][0]["visitors"]
    assert overview["sessions"] == audience["data"][0]["sessions"] == sum(r["sessions"] for r in traffic["data"])
    assert sum(r["pageviews"] for r in series["data"]) == overview["pageviews"]


async def test_page_filter_and_not_filter_split_pageviews(imported):
    top = await api(imported, "/api/pages", limit="1")
    path = top["data"][0]["path"]

    only = await api(imported, "/api/overview", filter=f"page:eq:{path}")
    without = await api(imported, "/api/overview", filter=f"page:not:{path}")
    combined = await api(imported, "/api/overview", filter=[f"page:eq:{path}", "channel:eq:search"])

    assert only["pageviews"] == top["data"][0]["pageviews"] == 203
    assert only["visitors"] == top["data"][0]["visitors"]
    assert only["pageviews"] + without["pageviews"] == 1777
    assert combined["pageviews"] < only["pageviews"]


BAD_VALUES = [
    ("/api/traffic", {"dimension": "colour"}, "dimension"),
    ("/api/overview", {"filter": "colour:eq:red"}, "filter"),
    ("/api/overview", {"filter": "country:like:DE"}, "filter"),
    ("/api/overview", {"filter": "country"}, "filter"),
    ("/api/timeseries", {"interval": "fortnight"}, "interval"),
    ("/api/overview", {"period": "decade"}, "period"),
    ("/api/overview", {"tz": "Mars/Base"}, "tz"),
    ("/api/overview", {"format": "xml"}, "format"),
    ("/api/pages", {"kind": "middle"}, "kind"),
    ("/api/pages", {"limit": "0"}, "limit"),
    ("/api/overview", {"period": "custom", "from": "2026-01-02", "to": "2026-01-01"}, "to"),
]


async def test_unknown_values_are_400_naming_them(stack, db):
    await upsert_site(db, Site("a.example", "UTC"))
    answers = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        for path, params, _parameter in BAD_VALUES:
            async with http.get(f"{stack.api_url}{path}", params={"site": "a.example", **params}) as response:
                answers.append((response.status, (await response.json())["parameter"]))

    assert answers == [(400, parameter) for _path, _params, parameter in BAD_VALUES]


async def test_answers_are_cached_and_exported(imported, redis):
    first = await api(imported, "/api/pages", limit="2", kind="top")
    keys_after_first = await redis.keys("weir:cache:*")
    again = await api(imported, "/api/pages", kind="top", limit="2")

    assert again == first
    assert len(await redis.keys("weir:cache:*")) == len(keys_after_first)
    rows = list(csv.reader(io.StringIO(await api(imported, "/api/pages", limit="2", format="csv"))))
    assert rows == [["path", "pageviews", "visitors"], ["/projects/xdotool/", "203", "177"],
                    ["/projects/xdotool/xdotool.xhtml", "143", "132"]]


@pytest.mark.parametrize("path, params, tables", [
    ("/api/overview", {}, {"daily_metrics", "monthly_metrics"}),
    ("/api/timeseries", {"interval": "day"}, {"daily_metrics"}),
    ("/api/timeseries", {"interval": "hour"}, {"raw_events", "session_fingerprints"}),
    ("/api/audience", {"dimension": "country"}, {"daily_metrics", "monthly_metrics"}),
    ("/api/network", {"dimension": "org"}, {"daily_metrics", "monthly_metrics"}),
    ("/api/audience", {"dimension": "country", "tz": "Asia/Kolkata"}, {"session_fingerprints"}),
    ("/api/traffic", {"dimension": "source"}, {"daily_metrics", "monthly_metrics"}),
    ("/api/traffic", {"dimension": "source", "filter": "country:eq:US"}, {"session_fingerprints"}),
    ("/api/pages", {}, {"daily_metrics", "monthly_metrics"}),
    ("/api/events", {"breakdown": "plan"}, {"raw_events"}),
])
async def test_freshness_lists_tables_read(imported, path, params, tables):
    answer = await api(imported, path, **params)
    assert set(answer["freshness"]["tables"]) == tables
