"""Every report gives the same result from the rollups as from raw_events and session_fingerprints.

Seven weeks of generated traffic on three sites (UTC, UTC+5:30, New York with the end of
daylight saving time) go through the real processor in shuffled, duplicated batches. Visitors
active across local midnight make the overlap rows matter. September and October are closed
halfway through the feed, so later batches add to closed months, and ranges with and without
whole months read monthly rows. Custom events carry properties of every JSON type, some keys on
every event of a name and some on a few only.
"""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import orjson
import pytest

from query import reports, rollup_reports
from query.dimensions import AUDIENCE, NETWORK, TRAFFIC
from query.period import instants, whole_days
from query.scope import Scope
from query.timeseries import timeseries
from sinks.months import close_finished_months, close_month
from sinks.rollups import refresh_months
from sinks.sites import upsert_site
from streams.event import Event
from streams.ids import stable_event_id
from streams.rollup import MAX_PROPERTY_KEYS, property_prefix, property_values
from streams.sites import Site
from tests.sinks.test_derived import feed, processor, shuffled_batches  # noqa: F401  (processor is a fixture)

SITES = (Site("utc.example", "UTC"), Site("in.example", "Asia/Kolkata"), Site("ny.example", "America/New_York"))
FIRST_DAY = date(2026, 9, 20)
LAST_DAY = date(2026, 11, 10)
RANGES = (
    (date(2026, 9, 25), date(2026, 11, 5)),  # whole October between loose days
    (date(2026, 10, 1), date(2026, 10, 31)),  # exactly one month
    (date(2026, 10, 15), date(2026, 11, 3)),  # no whole month, crosses the daylight-saving change
    (date(2026, 9, 20), date(2026, 11, 10)),  # everything
    (date(2026, 11, 1), date(2026, 11, 1)),  # the day New York's clocks go back
)
AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Mobile/15E148 Safari/604.1",
)
ADDRESSES = ("8.8.8.8", "81.2.69.160", "2001:4860:4860::8888", "1.1.1.1")
REFERRERS = (None, "https://www.google.com/", "https://news.ycombinator.com/item?id=1", "https://example.org/a")
PATHS = ("/", "/pricing", "/docs", "/docs/start", "/blog/one", "/blog/two")
# Every signup has "plan" and every download "size", so their breakdowns read the rollups. The
# other keys are on some events only (or not rolled up: an object, a value over 1024
# characters), so their breakdowns read raw events. The int 10 and the string "10" share a text.
SIGNUP_PROPS = ({"plan": "free"}, {"plan": "pro", "seats": 3}, {"plan": None}, {"plan": ""},
                {"plan": "Pro", "seats": 2.0, "trial": True})
DOWNLOAD_PROPS = ({"size": 10}, {"size": "10"}, {"size": 2.5, "meta": {"a": [1, 2]}}, {"size": 1e-7},
                  {"size": -0.0}, {"size": 1e16, "note": "x" * 1100}, {"size": False}, {"size": "é\n\"q\""})
MINUTE_MS = 60_000


def traffic(site: Site, rng: random.Random) -> list[Event]:
    """A few visitors per UTC day; each visitor id lives within its UTC day, as the collector keys them."""
    events = []
    day = FIRST_DAY
    while day <= LAST_DAY:
        midnight_ms = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)
        for number in range(rng.randint(3, 7)):
            visitor = f"{site.domain}-{day}-{number}"
            agent, address = rng.choice(AGENTS), rng.choice(ADDRESSES)
            # Start some visitors just before the site's local midnight so their visit reaches the next date.
            local_midnight = _local_midnight_ms(site, day)
            if number == 0 and midnight_ms <= local_midnight - 20 * MINUTE_MS < midnight_ms + 86_340_000:
                minute = (local_midnight - midnight_ms) // MINUTE_MS - rng.randint(5, 20)
            else:
                minute = rng.randint(0, 1300)
            for _session in range(rng.randint(1, 2)):
                referrer = rng.choice(REFERRERS)
                for _view in range(rng.randint(1, 4)):
                    if minute >= 1439:
                        break
                    events.append(_event(site, visitor, midnight_ms + minute * MINUTE_MS, rng.choice(PATHS),
                                         agent, address, referrer))
                    referrer = None
                    if rng.random() < 0.2:
                        name = rng.choice(("signup", "download"))
                        props = rng.choice(SIGNUP_PROPS if name == "signup" else DOWNLOAD_PROPS)
                        events.append(_event(site, visitor, midnight_ms + minute * MINUTE_MS + 1000, name, agent,
                                             address, None, props=dict(props)))
                    minute += rng.randint(1, 12)
                minute += rng.randint(35, 120)
        bot = f"{site.domain}-{day}-bot"
        events.append(_event(site, bot, midnight_ms + 600 * MINUTE_MS, "/robots", "Googlebot/2.1", "8.8.4.4", None))
        day += timedelta(days=1)
    return events


def _local_midnight_ms(site: Site, utc_day: date) -> int:
    """The first local midnight after 00:00 UTC of `utc_day`, in ms."""
    start = datetime(utc_day.year, utc_day.month, utc_day.day, tzinfo=timezone.utc).astimezone(ZoneInfo(site.timezone))
    following = datetime.combine(start.date() + timedelta(days=1), datetime.min.time(), ZoneInfo(site.timezone))
    return int(following.timestamp() * 1000)


def _event(site: Site, visitor: str, timestamp_ms: int, action: str, agent: str, address: str, referrer: str | None,
           props: dict | None = None) -> Event:
    kind = "pageview" if action.startswith("/") else action
    return Event(id=str(stable_event_id(site.domain, f"{visitor}:{timestamp_ms}:{action}", timestamp_ms)),
                 site=site.domain, type=kind, action=action, timestamp_ms=timestamp_ms, received_ms=timestamp_ms,
                 visitor_id=visitor, url=f"https://{site.domain}{action}" if kind == "pageview" else None,
                 referrer=referrer, user_agent=agent, ip=address, props=props or {})


CLOSED_AT = datetime(2026, 11, 15, tzinfo=timezone.utc)


@pytest.fixture(params=["open months", "closed months"])
async def loaded(request, processor, db):  # noqa: F811
    rng = random.Random(20261205)
    events = []
    for site in SITES:
        await upsert_site(db, site)
        events += traffic(site, rng)
    batches = shuffled_batches(events, rng, len(events) // 10, 12)

    await feed(processor, batches[:6])
    if request.param == "closed months":
        closed = await close_finished_months(db, [(site.domain, site.timezone) for site in SITES], CLOSED_AT)
        assert sorted(closed) == [(site.domain, month) for site in sorted(SITES, key=lambda s: s.domain)
                                  for month in (date(2026, 9, 1), date(2026, 10, 1))]
    await feed(processor, batches[6:])
    return request.param


def scopes(site: Site, first: date, last: date) -> tuple[Scope, Scope]:
    rolled = Scope(site.domain, whole_days(first, last, site.timezone), site_timezone=site.timezone)
    raw = Scope(site.domain, instants(rolled.period.start, rolled.period.end, site.timezone))
    assert rolled.uses_rollups and not raw.uses_rollups
    return rolled, raw


async def answers(db, scope: Scope) -> dict:
    found = {
        "overview": await reports.overview(db, scope),
        "top": await reports.top_pages(db, scope, 1000, 0),
        "top, second page": await reports.top_pages(db, scope, 2, 2),
        "entry": await reports.session_pages(db, scope, "entry", 1000, 0),
        "entry, second page": await reports.session_pages(db, scope, "entry", 2, 2),
        "events, second page": await reports.custom_events(db, scope, None, None, 1, 1),
        "exit": await reports.session_pages(db, scope, "exit", 1000, 0),
        "events": await reports.custom_events(db, scope, None, None, 1000, 0),
        "signup": await reports.custom_events(db, scope, "signup", None, 1000, 0),
        "government": await reports.government_share(db, scope),
        "every event by plan": await reports.custom_events(db, scope, None, "plan", 1000, 0),
    }
    for event, key in PROPERTY_BREAKDOWNS:
        found[f"{event} by {key}"] = await reports.custom_events(db, scope, event, key, 1000, 0)
        found[f"{event} by {key}, second page"] = await reports.custom_events(db, scope, event, key, 2, 1)
    for dimension in (*TRAFFIC, *AUDIENCE, *NETWORK):
        found[dimension] = await reports.session_breakdown(db, scope, dimension, 1000, 0)
        # Paging cuts through ties, which the rollup path's two reads must keep in order.
        found[f"{dimension}, second page"] = await reports.session_breakdown(db, scope, dimension, 3, 3)
    for interval in ("day", "week", "month"):
        found[interval] = await timeseries(db, scope, interval)
    return found


PROPERTY_BREAKDOWNS = (("signup", "plan"), ("download", "size"), ("signup", "seats"), ("download", "meta"),
                       ("download", "note"), ("signup", "size"))


@pytest.mark.parametrize("site", SITES, ids=[s.timezone for s in SITES])
async def test_every_report_agrees_with_raw_tables(loaded, db, site):
    for first, last in RANGES:
        rolled, raw = scopes(site, first, last)

        from_rollups, from_raw = await answers(db, rolled), await answers(db, raw)

        for name in from_raw:
            assert from_rollups[name] == from_raw[name], f"{site.domain} {first}..{last}: {name}"


async def test_visitors_cross_local_midnight(loaded, db):
    """The overlap rows are not empty in the offset zones, so the comparison above exercised them."""
    rows = await db.fetch("SELECT site, sum(value) AS overlap FROM daily_metrics "
                          "WHERE metric_name = 'visitors_overlap' "
                          "AND dimension_key IS NULL GROUP BY site ORDER BY site")
    overlaps = {row["site"]: int(row["overlap"]) for row in rows}

    assert overlaps.get("utc.example", 0) == 0
    assert overlaps["in.example"] > 10
    assert overlaps["ny.example"] > 10


async def test_closed_months_stay_sums_of_days(loaded, db):
    query = ("SELECT site, month, metric_name, dimension_key, dimension_value, value FROM monthly_metrics "
             "WHERE value <> 0 ORDER BY 1, 2, 3, 4 NULLS FIRST, 5 NULLS FIRST")
    written = [tuple(row) for row in await db.fetch(query)]
    if loaded == "open months":
        assert written == []
        return

    for site in SITES:
        await refresh_months(db, site.domain, date(2026, 9, 1), date(2026, 10, 1))

    assert [tuple(row) for row in await db.fetch(query)] == written
    assert {row[1] for row in written} == {date(2026, 9, 1), date(2026, 10, 1)}
    assert await close_month(db, "in.example", date(2026, 9, 1)) is False


async def test_property_breakdowns_read_rollups_when_complete(loaded, db):
    """A key on every event of a name reads the rollups, and every rollup result equals the raw one."""
    for site in SITES:
        values_found = 0
        left_to_raw = 0
        for first, last in RANGES:
            rolled, raw = scopes(site, first, last)
            for event, key in PROPERTY_BREAKDOWNS:
                where = f"{site.domain} {first}..{last} {event} by {key}"
                found = await rollup_reports.property_breakdown(db, rolled, event, key, 1000, 0)
                if (event, key) in {("signup", "plan"), ("download", "size")}:
                    assert found is not None, where
                if found is None:
                    left_to_raw += 1
                else:
                    assert found == await reports.custom_events(db, raw, event, key, 1000, 0), where
                    values_found += len(found)
        # A single day may have no download, but the ranges together have every text of both keys.
        assert values_found > 2 * (len(SIGNUP_PROPS) + len(DOWNLOAD_PROPS)), site.domain
        # Keys on some events only, objects and long values leave most of their breakdowns to raw events.
        assert left_to_raw > 3 * len(RANGES), site.domain


async def test_property_texts_match_postgresql(db):
    """property_values groups by the text that `coalesce(metadata ->> key, '')` gives for orjson's JSON."""
    props = {"s": "é\n\"q\"", "i": -12, "big": 18446744073709551615, "f": 2.5, "tiny": 1e-7, "huge": 1.5e300,
             "whole": 100.0, "exp": 1e16, "neg_zero": -0.0, "nan": float("nan"), "t": True, "n": None, "e": ""}
    stored = orjson.dumps(props).decode()
    expected = {key: await db.fetchval("SELECT coalesce($1::jsonb ->> $2, '')", stored, key) for key in props}

    values = property_values("event", "buy", props)

    assert dict(orjson.loads(value)[1:] for value in values) == expected
    assert values == tuple(orjson.dumps(["buy", key, expected[key]]).decode() for key in sorted(props))
    read_back = await db.fetchval("SELECT $1::jsonb::text", stored)
    assert property_values("event", "buy", orjson.loads(read_back)) == values


def test_property_values_caps():
    props = {f"k{number:02}": number for number in range(MAX_PROPERTY_KEYS + 2)}
    props["k00"] = "x" * 1100
    props["k01"] = {"nested": 1}
    props["k02"] = [1]

    values = property_values("event", "buy", props)

    assert [orjson.loads(value)[1] for value in values] == [f"k{number:02}" for number in range(3, MAX_PROPERTY_KEYS)]
    assert property_values("pageview", "/", {"plan": "pro"}) == ()
    assert property_prefix("buy", "k03") == '["buy","k03",'
    assert values[0] == '["buy","k03","3"]'


async def test_month_leaders_settle_or_defer(loaded, db, monkeypatch):
    """Ranking from each closed month's leading values gives the full ranking's rows, or defers to it."""
    monkeypatch.setattr(rollup_reports, "LEADERS_PER_ROW", 1)
    outcomes = []
    bounded = rollup_reports._bounded_leaders

    async def recording(*args, **kwargs):
        found = await bounded(*args, **kwargs)
        outcomes.append(found is not None)
        return found

    monkeypatch.setattr(rollup_reports, "_bounded_leaders", recording)
    for site in SITES:
        for first, last in RANGES:
            rolled, raw = scopes(site, first, last)
            for limit, offset in ((1, 0), (2, 1), (3, 3), (25, 0)):
                where = f"{site.domain} {first}..{last} {limit} {offset}"
                for dimension in ("city", "referrer", "browser", "entry_page", "asn", "source", "government"):
                    assert (await reports.session_breakdown(db, rolled, dimension, limit, offset)
                            == await reports.session_breakdown(db, raw, dimension, limit, offset)), f"{where} {dimension}"

    if loaded == "open months":
        assert outcomes == []
    else:
        assert outcomes.count(True) > 10
        assert outcomes.count(False) > 10



async def test_long_multibyte_property_stored(processor, db):  # noqa: F811
    """A property of 4-byte characters within 1024 characters is over btree's 2704-byte row limit."""
    site = Site("wide.example", "UTC")
    await upsert_site(db, site)
    rng = random.Random(7)
    text = "".join(chr(rng.randrange(0x20000, 0x2A6DF)) for _ in range(1000))
    start = int(datetime(2026, 11, 3, 10, tzinfo=timezone.utc).timestamp() * 1000)
    events = [_event(site, "v1", start, "signup", "Mozilla/5.0", "192.0.2.1", None, {"plan": text}),
              _event(site, "v1", start + 1000, "signup", "Mozilla/5.0", "192.0.2.1", None, {"plan": "pro"})]
    assert property_values("signup", "signup", {"plan": text}) == ()

    await feed(processor, [events])

    assert await db.fetchval("SELECT count(*) FROM raw_events WHERE site = $1", site.domain) == 2
    rolled, raw = scopes(site, date(2026, 11, 3), date(2026, 11, 3))
    expected = await reports.custom_events(db, raw, "signup", "plan", 1000, 0)
    assert sorted(row["value"] for row in expected) == sorted(["pro", text])
    assert await reports.custom_events(db, rolled, "signup", "plan", 1000, 0) == expected
