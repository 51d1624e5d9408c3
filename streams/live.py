"""Live counters per site in Redis: the processor adds to them, the realtime service reads them.

The processor calls `LiveRecorder.record` after each batch commits, with the ids that the
batch newly inserted into raw_events, so a redelivered or replayed event is never counted
again. The realtime service calls `read_snapshot` about once a second per site that has
viewers, whatever the number of viewers.

Every key of a site carries the hash tag `{site}`, so each script below touches one Redis
Cluster slot. Key names are built in streams.keys:

| key                          | type       | contents                                        | kept                 |
|------------------------------|------------|-------------------------------------------------|----------------------|
| live_visitors_key(site)      | sorted set | live visitor id -> time of its newest event, ms | trimmed to 5 minutes |
| live_seen_key(site)          | sorted set | event id (16 bytes) -> event time, ms           | trimmed to 5 minutes |
| live_counts_key(site, s)     | hash       | `pageviews`, `events` of events in unix second s | COUNTS_TTL_S         |
| live_pages_key(site, s)      | sorted set | path -> minus the pageviews in second s         | TOP_TTL_S            |
| live_sources_key(site, s)    | sorted set | source -> minus the arrivals in second s        | TOP_TTL_S            |
| live_meta_key(site)          | hash       | `version`, `delay_ms`, `updated_ms`             | META_TTL_S           |
| live_channel(site)           | pub/sub    | the new version after a write that counted      | -                    |

`version` is the number of events counted for the site so far (until the meta key expires
after a day without events). It only grows, and the difference of two versions is the number
of events counted between them. Counts follow the query API: bots are left out, `events` are the events
other than pageviews, and a page is the pageview's path (`event_action`).

Visitors across midnight UTC: visitor ids are hashed with a salt that changes at 00:00 UTC.
A person active at 23:59:30 and at 00:00:30 therefore has two ids, and a plain count of the
last five minutes would show two visitors. For an event in the first five minutes of a day,
the recorder therefore also derives the id that the same visitor had under the previous day's
salt. It hashes the IP address and user agent that travel on the stream, exactly as the
collector does. The write script then moves that visitor's entry from the old id to the
new one. An event in the last five minutes of a day whose next-day id already exists is
counted under that newer id. The salts are the collector's own, read without creating one, so
no new salt or identifier is stored, and the link between the two ids is never written.
Other options were rejected. A second salt that rotates at another hour only moves the
double count to that hour. Counting by previous-day id through a stored mapping would
keep a link between two days' ids.
NOTE: visitors identified by an SDK's `anonymous_id` cannot be aliased, because that id does
not travel on the stream, so each of them counts twice for up to five minutes after midnight.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from streams.event import PAGEVIEW, Event
from streams.keys import (
    live_channel,
    live_counts_key,
    live_meta_key,
    live_pages_key,
    live_scratch_key,
    live_seen_key,
    live_sources_key,
    live_visitors_key,
    salt_key,
)
from streams.visitor import utc_day, visitor_id

logger = logging.getLogger(__name__)

VISITOR_WINDOW_S = 300
"""Current visitors are those with an event in the last five minutes; top lists use the same window."""
COUNT_WINDOW_S = 60
"""Pageviews and events are counted over the last minute."""
TOP_N = 10
COUNTS_TTL_S = COUNT_WINDOW_S + 60
TOP_TTL_S = VISITOR_WINDOW_S + 30
META_TTL_S = 24 * 3600
DAY_MS = 24 * 3600 * 1000

RECORD_ATTEMPTS = 3
RECORD_TIMEOUT_S = 2.0
RETRY_DELAYS_S = (0.1, 0.5)
MISSING_SALT_RECHECK_S = 1.0
"""How long the recorder trusts that tomorrow's salt does not exist yet; it appears at 00:00 UTC."""

EVENTS_COUNTED = Counter("weir_live_events_counted", "Events added to the live counters")
RECORD_FAILURES = Counter("weir_live_record_failures", "Batches whose live counter update failed after every retry")

# Hit fields, 9 per event: id, time ms, bucket, kind, visitor, previous-day visitor,
# next-day visitor, path, source. Kind is `p` (pageview arriving from a source), `i`
# (pageview from inside the site) or `e` (other event). Bucket b (from 1) names
# KEYS[3b+1..3b+3]: counts, pages and sources of one second.
_WRITE_SCRIPT = """
local now = tonumber(ARGV[1])
local oldest = now - tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. oldest)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. oldest)
local counted = 0
local buckets = {}
for i = 8, #ARGV, 9 do
  if redis.call('ZADD', KEYS[2], 'NX', ARGV[i + 1], ARGV[i]) == 1 then
    counted = counted + 1
    local base = 3 * tonumber(ARGV[i + 2])
    buckets[base] = true
    local kind = ARGV[i + 3]
    if kind == 'e' then
      redis.call('HINCRBY', KEYS[base + 1], 'events', 1)
    else
      redis.call('HINCRBY', KEYS[base + 1], 'pageviews', 1)
      redis.call('ZINCRBY', KEYS[base + 2], -1, ARGV[i + 7])
      if kind == 'p' then
        redis.call('ZINCRBY', KEYS[base + 3], -1, ARGV[i + 8])
      end
    end
    local member = ARGV[i + 4]
    local previous, next = ARGV[i + 5], ARGV[i + 6]
    if next ~= '' and redis.call('ZSCORE', KEYS[1], next) then
      member = next
    elseif previous ~= '' then
      local seen = redis.call('ZSCORE', KEYS[1], previous)
      if seen then
        redis.call('ZREM', KEYS[1], previous)
        redis.call('ZADD', KEYS[1], 'GT', seen, member)
      end
    end
    redis.call('ZADD', KEYS[1], 'GT', ARGV[i + 1], member)
  end
end
if counted == 0 then
  return {0, tonumber(redis.call('HGET', KEYS[3], 'version') or '0')}
end
for base in pairs(buckets) do
  redis.call('EXPIRE', KEYS[base + 1], ARGV[3])
  redis.call('EXPIRE', KEYS[base + 2], ARGV[4])
  redis.call('EXPIRE', KEYS[base + 3], ARGV[4])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
local version = redis.call('HINCRBY', KEYS[3], 'version', counted)
redis.call('HSET', KEYS[3], 'delay_ms', ARGV[6], 'updated_ms', ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[5])
redis.call('PUBLISH', ARGV[7], version)
return {counted, version}
"""

# KEYS: visitors, meta, scratch, then ARGV[2] counts keys, ARGV[3] pages keys, ARGV[3] sources keys.
# Top-list scores are negative counts, so ZRANGE's ascending order lists the most viewed first
# and breaks ties by name, as the query API's pages report does.
_READ_SCRIPT = """
local visitors = redis.call('ZCOUNT', KEYS[1], ARGV[1], '+inf')
local meta = redis.call('HMGET', KEYS[2], 'version', 'delay_ms', 'updated_ms')
local count_keys = tonumber(ARGV[2])
local top_keys = tonumber(ARGV[3])
local last = tonumber(ARGV[4]) - 1
local pageviews, events = 0, 0
for i = 4, 3 + count_keys do
  local values = redis.call('HMGET', KEYS[i], 'pageviews', 'events')
  pageviews = pageviews + (tonumber(values[1]) or 0)
  events = events + (tonumber(values[2]) or 0)
end
local first_pages = 4 + count_keys
local first_sources = first_pages + top_keys
redis.call('ZUNIONSTORE', KEYS[3], top_keys, unpack(KEYS, first_pages, first_sources - 1))
local pages = redis.call('ZRANGE', KEYS[3], 0, last, 'WITHSCORES')
redis.call('ZUNIONSTORE', KEYS[3], top_keys, unpack(KEYS, first_sources, first_sources + top_keys - 1))
local sources = redis.call('ZRANGE', KEYS[3], 0, last, 'WITHSCORES')
redis.call('DEL', KEYS[3])
return {visitors, pageviews, events, meta[1] or '', meta[2] or '', meta[3] or '', pages, sources}
"""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class LiveHit:
    """One newly stored human event, as the live counters take it."""

    event_id: bytes
    timestamp_ms: int
    kind: str
    """`p` for a pageview arriving from a source, `i` for a pageview from inside the site, `e` otherwise."""
    visitor: str
    previous_visitor: str
    """The visitor's id under the previous day's salt, or "" when the event is not just after midnight."""
    next_visitor: str
    """The visitor's id under the next day's salt, or "" when the event is not just before midnight."""
    path: str
    source: str


def source_of(event: Event) -> str | None:
    """Return the source a pageview arrived from: the referrer host without `www.`, "" for none.

    Returns None for a referrer on the site's own domain or on the page's own host, because
    that pageview is a click inside the site rather than an arrival.
    """
    referrer_host = _host(event.referrer)
    if referrer_host is None:
        return ""
    own_hosts = {_without_www(event.site.lower())}
    page_host = _host(event.url)
    if page_host is not None:
        own_hosts.add(page_host)
    return None if referrer_host in own_hosts else referrer_host


def _host(url: str | None) -> str | None:
    if not url:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return _without_www(host) if host else None


def _without_www(host: str) -> str:
    return host[4:] if host.startswith("www.") else host


def midnight_days(timestamp_ms: int) -> tuple[str | None, str | None]:
    """Return the previous and the next UTC day whose visitor ids may still be live for this event.

    The previous day is returned within VISITOR_WINDOW_S after 00:00 UTC, the next day within
    VISITOR_WINDOW_S before it; otherwise each is None.
    """
    window_ms = VISITOR_WINDOW_S * 1000
    day_start_ms = timestamp_ms - timestamp_ms % DAY_MS
    previous = utc_day(day_start_ms - 1) if timestamp_ms - day_start_ms < window_ms else None
    following = utc_day(day_start_ms + DAY_MS) if day_start_ms + DAY_MS - timestamp_ms <= window_ms else None
    return previous, following


def alias_visitor_id(event: Event, salt: bytes | None) -> str:
    """Return the event's visitor id under another day's `salt`, or "" without a salt.

    Hashes what the collector hashes for a visitor without `anonymous_id`: site, IP address
    and user agent.
    """
    if salt is None:
        return ""
    return visitor_id(salt, event.site, event.ip or "", event.user_agent or "")


def build_hit(event: Event, previous_salt: bytes | None, next_salt: bytes | None) -> LiveHit:
    """Return the live hit of one human event; the salts are those of the neighbouring days, if any."""
    if event.type == PAGEVIEW:
        source = source_of(event)
        kind = "i" if source is None else "p"
    else:
        source, kind = None, "e"
    return LiveHit(
        event_id=uuid.UUID(event.id).bytes,
        timestamp_ms=event.timestamp_ms,
        kind=kind,
        visitor=event.visitor_id,
        previous_visitor=alias_visitor_id(event, previous_salt),
        next_visitor=alias_visitor_id(event, next_salt),
        path=event.action if event.type == PAGEVIEW else "",
        source=source or "",
    )


def write_arguments(site: str, hits: Sequence[LiveHit], now: int, delay_ms: int) -> tuple[list[str], list]:
    """Return the keys and arguments of the write script for one site's hits, oldest first."""
    seconds = sorted({hit.timestamp_ms // 1000 for hit in hits})
    bucket_of = {second: index for index, second in enumerate(seconds, start=1)}
    keys = [live_visitors_key(site), live_seen_key(site), live_meta_key(site)]
    for second in seconds:
        keys += [live_counts_key(site, second), live_pages_key(site, second), live_sources_key(site, second)]
    args: list = [now, VISITOR_WINDOW_S * 1000, COUNTS_TTL_S, TOP_TTL_S, META_TTL_S, delay_ms, live_channel(site)]
    for hit in sorted(hits, key=lambda h: h.timestamp_ms):
        args += [hit.event_id, hit.timestamp_ms, bucket_of[hit.timestamp_ms // 1000], hit.kind, hit.visitor,
                 hit.previous_visitor, hit.next_visitor, hit.path, hit.source]
    return keys, args


class NeighbourSalts:
    """Reads the visitor-id salts of the days around midnight, never creating one.

    A found salt is kept in memory. A missing one (tomorrow's, before any collector needed it)
    is asked for again after MISSING_SALT_RECHECK_S.
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._found: dict[str, bytes] = {}
        self._missing_until: dict[str, float] = {}

    async def salt_for_day(self, day_iso: str | None) -> bytes | None:
        if day_iso is None:
            return None
        salt = self._found.get(day_iso)
        if salt is not None or time.monotonic() < self._missing_until.get(day_iso, 0.0):
            return salt

        salt = await self._redis.get(salt_key(day_iso))
        if salt is None:
            self._missing_until[day_iso] = time.monotonic() + MISSING_SALT_RECHECK_S
            return None
        if len(self._found) >= 4:
            self._found.clear()
        self._found[day_iso] = salt
        self._missing_until.pop(day_iso, None)
        return salt


class LiveRecorder:
    """Adds newly stored events to the live counters of their sites; one per processor."""

    def __init__(self, redis: Redis, clock_ms=now_ms) -> None:
        self._redis = redis
        self._write = redis.register_script(_WRITE_SCRIPT)
        self._salts = NeighbourSalts(redis)
        self._clock_ms = clock_ms

    async def record(self, events: Sequence[Event], is_bot: Sequence[bool], inserted: Collection[uuid.UUID]) -> int:
        """Count the events whose ids are in `inserted`; return how many were new to the counters.

        Runs after the batch committed. Bots and events older than the visitor window are
        skipped. The write is idempotent per event id, so a retry after a timeout counts
        nothing twice. A failure after RECORD_ATTEMPTS is logged and counted, and it does not
        raise: the events are stored, and a redelivered batch would insert nothing and so
        could not count them later either.
        """
        now = self._clock_ms()
        oldest_ms = now - VISITOR_WINDOW_S * 1000
        by_site: dict[str, list[Event]] = defaultdict(list)
        for event, bot in zip(events, is_bot):
            if not bot and event.timestamp_ms >= oldest_ms and uuid.UUID(event.id) in inserted:
                by_site[event.site].append(event)
        if not by_site:
            return 0

        counted = await asyncio.gather(*(self._record_site(site, site_events, now)
                                         for site, site_events in by_site.items()))
        return sum(counted)

    async def _record_site(self, site: str, events: list[Event], now: int) -> int:
        for attempt in range(1, RECORD_ATTEMPTS + 1):
            try:
                async with asyncio.timeout(RECORD_TIMEOUT_S):
                    hits = [await self._hit(event) for event in events]
                    delay_ms = max(0, max(now - event.received_ms for event in events))
                    keys, args = write_arguments(site, hits, now, delay_ms)
                    counted, _version = await self._write(keys=keys, args=args)
                EVENTS_COUNTED.inc(counted)
                return int(counted)
            except (RedisError, TimeoutError) as error:
                if attempt == RECORD_ATTEMPTS:
                    RECORD_FAILURES.inc()
                    logger.error("live counter update failed site=%s events=%d first_event_id=%s error=%r",
                                 site, len(events), events[0].id, error,
                                 extra={"site": site, "event_id": events[0].id})
                    return 0
                logger.warning("live counter update failed site=%s attempts_left=%d error=%r",
                               site, RECORD_ATTEMPTS - attempt, error, extra={"site": site})
                await asyncio.sleep(RETRY_DELAYS_S[attempt - 1])
        return 0

    async def _hit(self, event: Event) -> LiveHit:
        previous_day, next_day = midnight_days(event.timestamp_ms)
        previous_salt = await self._salts.salt_for_day(previous_day)
        next_salt = await self._salts.salt_for_day(next_day)
        return build_hit(event, previous_salt, next_salt)


@dataclass(frozen=True, slots=True)
class LiveSnapshot:
    """One site's live counters as read at `at_ms`.

    Windows are whole unix seconds that end with the second of `at_ms`: `visitors` and the
    top lists cover VISITOR_WINDOW_S seconds, `pageviews` and `events` COUNT_WINDOW_S.
    """

    site: str
    at_ms: int
    version: int
    visitors: int
    pageviews: int
    events: int
    top_pages: list[tuple[str, int]]
    top_sources: list[tuple[str, int]]
    """Source and arrivals; the source "" stands for arrivals without a referrer."""
    delay_ms: int | None
    """Delay from receipt at the collector to counting, of the site's newest counted batch."""
    updated_ms: int | None


def window_start_ms(at_ms: int, window_s: int) -> int:
    """Return the first millisecond of a window of `window_s` whole seconds ending with `at_ms`'s second."""
    return (at_ms // 1000 - window_s + 1) * 1000


def read_arguments(site: str, at_ms: int) -> tuple[list[str], list]:
    """Return the keys and arguments of the read script for one site at `at_ms`."""
    second = at_ms // 1000
    counts = [live_counts_key(site, s) for s in range(second - COUNT_WINDOW_S + 1, second + 1)]
    top_seconds = range(second - VISITOR_WINDOW_S + 1, second + 1)
    pages = [live_pages_key(site, s) for s in top_seconds]
    sources = [live_sources_key(site, s) for s in top_seconds]
    keys = [live_visitors_key(site), live_meta_key(site), live_scratch_key(site), *counts, *pages, *sources]
    args = [window_start_ms(at_ms, VISITOR_WINDOW_S), len(counts), len(pages), TOP_N]
    return keys, args


class LiveReader:
    """Reads snapshots of live counters; each read is one script call, whatever the number of viewers."""

    def __init__(self, redis: Redis) -> None:
        self._read = redis.register_script(_READ_SCRIPT)

    async def read_snapshot(self, site: str, at_ms: int) -> LiveSnapshot:
        keys, args = read_arguments(site, at_ms)
        reply = await self._read(keys=keys, args=args)
        visitors, pageviews, events, version, delay_ms, updated_ms, pages, sources = reply
        return LiveSnapshot(
            site=site,
            at_ms=at_ms,
            version=int(version or 0),
            visitors=int(visitors),
            pageviews=int(pageviews),
            events=int(events),
            top_pages=_ranking(pages),
            top_sources=_ranking(sources),
            delay_ms=int(delay_ms) if delay_ms else None,
            updated_ms=int(updated_ms) if updated_ms else None,
        )


def _ranking(flat: list) -> list[tuple[str, int]]:
    """Turn ZRANGE WITHSCORES output of negative counts into (name, count) pairs."""
    names, scores = flat[0::2], flat[1::2]
    return [(_text(name), -int(float(score))) for name, score in zip(names, scores)]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
