"""A year of synthetic traffic over several sites, generated one UTC day at a time.

Sessions come from the processor benchmark's generator (bench/processor/events.py). It gives
the same five sites in five time zones, here with 40, 25, 15, 12 and 8% of the events, and
2,000 Zipf-weighted paths per site. A session's entry referrer is direct (35%), a search engine
(30%), a social network (10%) or one of 4,000 Zipf-weighted outside hosts (25%), and 10% of the
entries carry UTM parameters. About 20% of the events come from bots and about 3.5% are custom
events. On top of that:

- a day's volume follows the weekday (weekends at 70%) and grows linearly by half over the year;
- session starts follow a daily curve peaking at 14:00 UTC with a trough at a third of the peak;
- visitor ids are keyed with a salt per UTC day, as the collector keys them, so a visitor
  active across 00:00 UTC gets a new id (the returning-visitor sessions sometimes do);
- events after `end_ms` are dropped, so nothing lies in the future.

`day_batches` yields each UTC day's events complete: a session that runs past midnight carries
its later events into the next day's batch, where their new visitor id puts them.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone

from bench.processor.events import (_BOT_AGENTS, BOT_SESSION_SHARE, RETURNING_VISITOR_SHARE, SESSION_GAP_MS, SITE_WEIGHTS,
                                    SITES, _address, _session_events, _Vocabulary)
from streams.event import Event
from streams.sites import Site
from streams.visitor import visitor_id

DAY_MS = 86_400_000
WEEKEND_FACTOR = 0.7
YEARLY_GROWTH = 0.5
PEAK_HOUR_UTC = 14
TROUGH_SHARE = 1 / 3


def _utc_day(unix_ms: int) -> date:
    return datetime.fromtimestamp(unix_ms / 1000, tz=timezone.utc).date()


def _salt(day: date) -> bytes:
    # The collector draws a random salt per UTC day; a salt derived from the day keeps runs repeatable.
    return hashlib.blake2b(f"weir-bench-dashboard {day.isoformat()}".encode(), digest_size=32).digest()


def day_weights(first: date, days: int) -> list[float]:
    """Return each day's share of the events: weekday pattern times linear growth, summing to 1."""
    raw = []
    for index in range(days):
        day = first + timedelta(days=index)
        weekday = WEEKEND_FACTOR if day.weekday() >= 5 else 1.0
        raw.append(weekday * (1 + YEARLY_GROWTH * index / max(days - 1, 1)))
    total = sum(raw)
    return [w / total for w in raw]


def _start_in_day(rng: random.Random, day_start_ms: int) -> int:
    """Draw a session start within the UTC day by rejection from the daily curve."""
    while True:
        offset = rng.randrange(DAY_MS)
        hour = offset / 3_600_000
        level = TROUGH_SHARE + (1 - TROUGH_SHARE) * (1 + math.cos((hour - PEAK_HOUR_UTC) / 24 * 2 * math.pi)) / 2
        if rng.random() < level:
            return day_start_ms + offset


def _draw_sessions(rng: random.Random, vocabulary: _Vocabulary, site: Site, day_start_ms: int,
                   quota: int) -> list[Event]:
    """Draw whole sessions of `site` that start in the day until they hold `quota` events."""
    events: list[Event] = []
    while len(events) < quota:
        bot = rng.random() < BOT_SESSION_SHARE
        ip = _address(rng)
        user_agent = rng.choice(_BOT_AGENTS) if bot else vocabulary.agents[vocabulary.agent_rank.draw(rng)]
        start_ms = _start_in_day(rng, day_start_ms)
        session = [event for event, _bot in _session_events(rng, vocabulary, site, start_ms, ip, user_agent, bot)]
        events += session
        if not bot and rng.random() < RETURNING_VISITOR_SHARE:
            return_ms = session[-1].timestamp_ms + SESSION_GAP_MS + rng.randint(60_000, 3_600_000)
            events += [event for event, _bot in _session_events(rng, vocabulary, site, return_ms, ip, user_agent, bot)]
    return events


def day_batches(event_count: int, end_ms: int, days: int, seed: int = 1,
                sites: tuple[Site, ...] = SITES) -> Iterator[tuple[date, list[Event]]]:
    """Yield (UTC day, that day's events of `sites` in time order) for the `days` UTC days that end with `end_ms`'s day.

    Each site draws from its own generator, so a site's traffic is the same whichever other
    sites are generated with it, and sites can be loaded by separate processes.
    """
    vocabulary = _Vocabulary(random.Random(seed))
    generators = {site.domain: random.Random(f"{seed}/{site.domain}") for site in sites}
    shares = dict(zip((site.domain for site in SITES), SITE_WEIGHTS))
    last = _utc_day(end_ms)
    first = last - timedelta(days=days - 1)
    weights = day_weights(first, days)
    carried: list[Event] = []
    for index in range(days):
        day = first + timedelta(days=index)
        day_start_ms = int(datetime.combine(day, datetime.min.time(), timezone.utc).timestamp() * 1000)
        events = carried
        for site in sites:
            quota = round(event_count * weights[index] * shares[site.domain])
            events += _draw_sessions(generators[site.domain], vocabulary, site, day_start_ms, quota)
        day_end_ms = day_start_ms + DAY_MS
        carried = [e for e in events if e.timestamp_ms >= day_end_ms]
        today = [e for e in events if e.timestamp_ms < day_end_ms and e.timestamp_ms <= end_ms]
        salt = _salt(day)
        for event in today:
            event.visitor_id = visitor_id(salt, event.site, event.ip, event.user_agent or "")
        today.sort(key=lambda e: (e.timestamp_ms, e.id))
        yield day, today
