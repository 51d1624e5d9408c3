"""Rollups agree with the raw tables in awkward zones, with two processors, closing months and replays.

Seven zones get traffic: both daylight-saving changes of New York and London, +5:45, Chatham,
+14, -11 and UTC. Visitors have events at and just before local midnight. Anonymous-id
visitors have sessions that change browser and network and hold a bot event. Some custom
events are named like pages.

Signups carry a plan, so their property rows are rolled up and replayed too. Two processors
feed shuffled, duplicated batches while months close. Every report, paged too,
must then return what the raw tables return. A replay over parts of closed months must leave
every derived table as it was.
"""

from __future__ import annotations

import asyncio
import random
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from query import reports
from query.dimensions import AUDIENCE, NETWORK, TRAFFIC
from query.period import whole_days
from query.scope import Scope
from query.timeseries import timeseries
from sinks.months import close_finished_months
from sinks.processor import Processor
from sinks.rebuild import rebuild_range
from sinks.rollups import refresh_months
from sinks.sites import upsert_site
from streams.bots import BotDetector
from streams.event import Event
from streams.ids import stable_event_id
from streams.sites import Site
from tests.sinks.test_derived import (DERIVED_SNAPSHOT, feed, processor,  # noqa: F401  (processor is a fixture)
                                      shuffled_batches)

SITES = tuple(Site(f"z{n}.example", tz) for n, tz in enumerate((
    "America/New_York", "Europe/London", "Asia/Kathmandu", "Pacific/Chatham", "Pacific/Kiritimati",
    "Pacific/Pago_Pago", "UTC")))
DAYS = sorted({date(2026, 3, 1) + timedelta(days=d) for d in range(-2, 3)}
              | {date(2026, 3, 8) + timedelta(days=d) for d in range(-1, 2)}
              | {date(2026, 3, 29) + timedelta(days=d) for d in range(-1, 4)}
              | {date(2026, 4, 5) + timedelta(days=d) for d in range(-1, 2)}
              | {date(2026, 9, 27) + timedelta(days=d) for d in range(-1, 5)}
              | {date(2026, 10, 25) + timedelta(days=d) for d in range(-1, 9)}
              | {date(2026, 12, 30) + timedelta(days=d) for d in range(0, 4)})
AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Mobile/15E148 Safari/604.1",
)
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
ADDRESSES = ("8.8.8.8", "81.2.69.160", "2001:4860:4860::8888", "1.1.1.1", "10.1.2.3")
REFERRERS = (None, "https://www.google.com/", "https://news.ycombinator.com/item?id=1", "https://example.org/a",
             "/?utm_source=Direct")
PATHS = ("/", "/a", "/b", "/c")
PLANS = ("free", "pro")
MINUTE = 60_000
NETWORKS = ('SELECT session_id, country, region, city, asn, org, "orgType", "isGovernment", "responseTier", '
            "screen_size FROM session_fingerprints ORDER BY 1")


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def local_midnights(site: Site, utc_day: date) -> list[int]:
    zone = ZoneInfo(site.timezone)
    start = datetime(utc_day.year, utc_day.month, utc_day.day, tzinfo=timezone.utc)
    found = []
    local = start.astimezone(zone).date()
    for step in range(0, 3):
        moment = datetime.combine(local + timedelta(days=step), datetime.min.time(), zone)
        if start <= moment < start + timedelta(days=1):
            found.append(_ms(moment))
    return found


def event(site: Site, visitor: str, ts: int, action: str, agent: str, address: str, referrer: str | None,
          kind: str | None = None, props: dict | None = None) -> Event:
    kind = kind or ("pageview" if action.startswith("/") and referrer != "event" else action)
    url = None
    if kind == "pageview":
        url = f"https://{site.domain}{action}"
        if referrer and referrer.startswith("/?"):
            url += referrer[1:]
            referrer = None
    return Event(id=str(stable_event_id(site.domain, f"{visitor}:{ts}:{action}:{kind}", ts)), site=site.domain,
                 type=kind, action=action, timestamp_ms=ts, received_ms=ts, visitor_id=visitor, url=url,
                 referrer=referrer if kind == "pageview" else None, user_agent=agent, ip=address, props=props or {})


def traffic(site: Site, rng: random.Random) -> list[Event]:
    events = []
    for day in DAYS:
        midnight = _ms(datetime(day.year, day.month, day.day, tzinfo=timezone.utc))
        end = midnight + 86_400_000
        for local in local_midnights(site, day):
            # Exactly at and just before local midnight, the same visitor.
            visitor = f"{site.domain}-{day}-mid"
            for ts, path in ((local - 1, "/a"), (local, "/b"), (local - 20 * MINUTE, "/c")):
                if midnight <= ts < end:
                    events.append(event(site, visitor, ts, path, AGENTS[0], ADDRESSES[0], None))
            # Anonymous id: sessions with other agents and addresses across local midnight.
            visitor = f"{site.domain}-{day}-anon"
            ts = max(midnight, local - 50 * MINUTE)
            for number in range(4):
                agent, address = AGENTS[number % 3], ADDRESSES[(number + day.day) % 5]
                for view in range(rng.randint(1, 3)):
                    if ts >= end:
                        break
                    events.append(event(site, visitor, ts, rng.choice(PATHS), agent, address,
                                        rng.choice(REFERRERS) if view == 0 else None))
                    if rng.random() < 0.3:
                        events.append(event(site, visitor, ts + 500, "/a", agent, address, None, kind="signup",
                                            props={"plan": PLANS[number % 2]}))
                    if number == 2 and view == 0:
                        events.append(event(site, visitor, ts + 700, "/bot", BOT, address, None))
                    ts += rng.randint(1, 10) * MINUTE
                ts += rng.randint(31, 60) * MINUTE
        for number in range(rng.randint(2, 4)):
            visitor = f"{site.domain}-{day}-{number}"
            agent, address = rng.choice(AGENTS), rng.choice(ADDRESSES)
            ts = midnight + rng.randint(0, 1400) * MINUTE
            for _ in range(rng.randint(1, 4)):
                if ts >= end:
                    break
                events.append(event(site, visitor, ts, rng.choice(PATHS), agent, address, rng.choice(REFERRERS)))
                ts += rng.randint(1, 50) * MINUTE
        events.append(event(site, f"{site.domain}-{day}-bot", midnight + 3600_000, "/robots", BOT, "8.8.4.4", None))
    return events


async def answers(db, scope: Scope) -> dict:
    found = {
        "overview": await reports.overview(db, scope),
        "top": await reports.top_pages(db, scope, 1000, 0),
        "entry": await reports.session_pages(db, scope, "entry", 1000, 0),
        "exit": await reports.session_pages(db, scope, "exit", 1000, 0),
        "events": await reports.custom_events(db, scope, None, None, 1000, 0),
        "signup": await reports.custom_events(db, scope, "signup", None, 1000, 0),
        "signup by plan": await reports.custom_events(db, scope, "signup", "plan", 1000, 0),
        "government": await reports.government_share(db, scope),
    }
    for limit, offset in ((1, 0), (1, 1), (2, 1), (3, 2)):
        found[f"top {limit} {offset}"] = await reports.top_pages(db, scope, limit, offset)
        found[f"entry {limit} {offset}"] = await reports.session_pages(db, scope, "entry", limit, offset)
        found[f"events {limit} {offset}"] = await reports.custom_events(db, scope, None, None, limit, offset)
    for dimension in (*TRAFFIC, *AUDIENCE, *NETWORK):
        found[dimension] = await reports.session_breakdown(db, scope, dimension, 1000, 0)
        for limit, offset in ((1, 0), (2, 1), (2, 3)):
            found[f"{dimension} {limit} {offset}"] = await reports.session_breakdown(db, scope, dimension, limit,
                                                                                    offset)
    for interval in ("day", "week", "month"):
        found[interval] = await timeseries(db, scope, interval)
    return found


RANGES = [(date(2026, 3, 1), date(2026, 3, 31)), (date(2026, 2, 27), date(2026, 3, 2)),
          (date(2026, 3, 8), date(2026, 3, 8)), (date(2026, 3, 29), date(2026, 3, 29)),
          (date(2026, 10, 25), date(2026, 10, 25)), (date(2026, 11, 1), date(2026, 11, 1)),
          (date(2026, 3, 28), date(2026, 4, 6)), (date(2026, 9, 1), date(2026, 11, 30)),
          (date(2026, 12, 31), date(2027, 1, 1)), (date(2026, 12, 1), date(2027, 1, 2)),
          (date(2026, 2, 1), date(2027, 1, 31)), (date(2026, 10, 1), date(2026, 10, 31)),
          (date(2026, 9, 27), date(2026, 9, 27)), (date(2026, 4, 5), date(2026, 4, 5))]


async def compare(db, site: Site) -> list[str]:
    problems = []
    for first, last in RANGES:
        rolled = Scope(site.domain, whole_days(first, last, site.timezone), site_timezone=site.timezone)
        raw = Scope(site.domain, rolled.period, site_timezone=site.timezone, rollups=False)
        from_rollups, from_raw = await answers(db, rolled), await answers(db, raw)
        for name in from_raw:
            if from_rollups[name] != from_raw[name]:
                problems.append(f"{site.timezone} {first}..{last} {name}: rollups {from_rollups[name]}, "
                                f"raw {from_raw[name]}")
    return problems


async def snapshot(db) -> dict:
    return {name: sorted((tuple(r) for r in await db.fetch(sql)), key=repr) for name, sql in DERIVED_SNAPSHOT.items()
            if name != "raw"}


async def test_zones_replicas_and_replays_agree(processor, db):  # noqa: F811
    rng = random.Random(7)
    events = []
    for site in SITES:
        await upsert_site(db, site)
        events += traffic(site, rng)
    batches = shuffled_batches(events, rng, len(events) // 8, 20)
    second = Processor(processor.settings)
    await second.start()
    await asyncio.gather(feed(processor, batches[:8:2]), feed(second, batches[1:8:2]), feed(second, batches[3:6]))
    await second.close()

    # Close months while batches run.
    closing = close_finished_months(db, [(s.domain, s.timezone) for s in SITES],
                                    datetime(2027, 1, 20, tzinfo=timezone.utc))
    feeding = feed(processor, batches[8:14])
    closed, _ = await asyncio.gather(closing, feeding)
    assert len(closed) == len(SITES) * 7  # February to April, September to December
    await feed(processor, batches[14:])

    monthly = await db.fetch("SELECT * FROM monthly_metrics WHERE value <> 0 ORDER BY site, month, metric_name, "
                             "dimension_key NULLS FIRST, dimension_value NULLS FIRST")
    monthly = [tuple(r)[:6] for r in monthly]
    for site in SITES:
        for month, in await db.fetch("SELECT month FROM closed_months WHERE site = $1", site.domain):
            await refresh_months(db, site.domain, month, month)
    again = await db.fetch("SELECT * FROM monthly_metrics WHERE value <> 0 ORDER BY site, month, metric_name, "
                           "dimension_key NULLS FIRST, dimension_value NULLS FIRST")
    assert [tuple(r)[:6] for r in again] == monthly

    problems = []
    for site in SITES:
        problems += await compare(db, site)
    assert problems == []

    before = await snapshot(db)
    networks = await db.fetch(NETWORKS)
    for site in SITES:
        await rebuild_range(db, site, BotDetector(), date(2026, 10, 20), date(2026, 10, 26))
        await rebuild_range(db, site, BotDetector(), date(2026, 12, 31), date(2027, 1, 1))
    after = await snapshot(db)
    for site in SITES:
        for month, in await db.fetch("SELECT month FROM closed_months WHERE site = $1", site.domain):
            await refresh_months(db, site.domain, month, month)

    assert await snapshot(db) == after
    for name in before:
        assert after[name] == before[name], name
    assert await db.fetch(NETWORKS) == networks
    for site in SITES:
        problems += await compare(db, site)
    assert problems == []
