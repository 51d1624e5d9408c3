"""Turn one decoded payload item into an Event, or a rejection that names the value and the fix.

The collector and `weir import-logs` both go through `EventBuilder`, so an imported line and a
posted event pass the same checks and get ids and visitor ids the same way.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import SplitResult, urlsplit

import orjson

from streams.event import PAGEVIEW, Event
from streams.ids import new_event_id_text, stable_event_id_text
from streams.paths import decode_path
from streams.sites import SiteDirectory, host_name_problem, normalize_host
from streams.visitor import SaltStore, utc_day, visitor_id

MAX_TYPE_CHARS = 100
MAX_ACTION_CHARS = 255
MAX_URL_CHARS = 4096
MAX_ID_CHARS = 255
MAX_HOST_CHARS = 253
MAX_USER_AGENT_CHARS = 2048
EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z; older timestamps are certainly wrong clocks
MS_PER_DAY = 86_400_000
CLOCK_STEP_MS = 10_000
"""Step that clock corrections are rounded to. A retry has new send and receive times but the
same event time, so rounding gives it the same corrected time and the same stable id. Skews
under half a step are left alone."""
_TYPE_PATTERN = re.compile(r"^[A-Za-z0-9_.:\-]+$")


@dataclass(slots=True)
class RequestContext:
    """What the transport knows about the sender of a request.

    Not frozen: a frozen dataclass sets each field through object.__setattr__, which made
    building one per request cost 1.7 µs instead of 0.3. Nothing changes a context once built.
    """

    received_ms: int
    ip: str | None
    user_agent: str | None
    source: str = "collect"
    trust_timestamps: bool = False
    """Take event times as given, even later than `received_ms`; only for operator imports,
    where clamping would make a re-import store other times (and so other rows)."""
    sent_at_ms: int | None = None
    """The client's clock when it sent the request (Segment's `sentAt`), for clock correction."""
    trust_item_ip: bool = False
    """Take an item's `ip` field as the client address; only for authenticated server-side
    senders (a Segment write key), which report their own users' addresses."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """One event that was not accepted: its index in the request, a reason code and a message."""

    index: int
    reason: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "reason": self.reason, "error": self.message}


class RequestMemo:
    """Site lookups, salts, page paths and visitor ids already computed for earlier items of the same request."""

    __slots__ = ("sites", "salts", "pages", "visitors")

    def __init__(self) -> None:
        self.sites: dict[str, str] = {}
        self.salts: dict[str, bytes] = {}
        self.pages: dict[tuple, str] = {}
        self.visitors: dict[tuple, str] = {}


class CacheMiss(Exception):
    """A site or visitor salt that an item needs and that is not cached in process, so it must
    be read from Redis.

    Raised by the synchronous build. `EventBuilder.fill` reads the value into a RequestMemo, and
    the item is built again with that memo.
    """

    def __init__(self, site_host: str | None = None, salt_day: str | None = None) -> None:
        super().__init__(site_host or salt_day)
        self.site_host = site_host
        self.salt_day = salt_day


class InvalidEvent(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def clean_text(value: str) -> str:
    """Drop NUL characters, which PostgreSQL text and jsonb cannot store."""
    return value.replace("\x00", "") if "\x00" in value else value


def clean_json(value: Any) -> Any:
    """Apply clean_text to every string (keys too) in a decoded JSON value."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    return value


def _optional_str(item: dict, name: str, limit: int) -> str | None:
    value = item.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidEvent("invalid_field", f"field {name!r} must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise InvalidEvent("invalid_field", f"field {name!r} is {len(value)} characters long; the limit is {limit}")
    # No clean_text here: build_one has already removed NUL characters from the whole item.
    return value


def parse_timestamp(value: Any) -> int | None:
    """Return epoch milliseconds from an ISO-8601 string or a number of seconds or milliseconds."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidEvent("invalid_timestamp", f"timestamp {value!r} is not a time")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or abs(value) > 1e15:
            raise InvalidEvent("invalid_timestamp", f"timestamp {value!r} is out of range")
        # Numbers below 10^11 are seconds (until the year 5138), larger ones milliseconds.
        return int(value * 1000) if abs(value) < 1e11 else int(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidEvent(
                "invalid_timestamp", f"timestamp {value!r} is not ISO-8601 (e.g. 2026-12-04T10:00:00Z)"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        try:
            return int(moment.timestamp() * 1000)
        except (OverflowError, ValueError):
            raise InvalidEvent("invalid_timestamp", f"timestamp {value!r} is out of range") from None
    raise InvalidEvent("invalid_timestamp", f"timestamp must be a string or a number, got {type(value).__name__}")


class EventBuilder:
    """Validates payload items and builds Events with their ids and visitor ids."""

    def __init__(self, sites: SiteDirectory, salts: SaltStore, max_event_bytes: int = 32_768) -> None:
        self._sites = sites
        self._salts = salts
        self._max_event_bytes = max_event_bytes

    def build_now(self, items: list[Any], context: RequestContext) -> tuple[list[Event], list[Rejection]]:
        """Return what `build` returns without waiting for Redis; raise CacheMiss when that is needed.

        Every site and salt is cached in process nearly always, so the request path calls this
        first and awaits `build` only after a CacheMiss. Two coroutines per event fewer saved
        about 1 µs of a single-event request (bench/collector/handler_cost.py).
        """
        if len(items) == 1:
            # One item has nothing to share with others, so it goes without a memo.
            try:
                return [self.build_cached(items[0], context)], []
            except InvalidEvent as error:
                return [], [Rejection(0, error.reason, str(error))]
        events: list[Event] = []
        rejections: list[Rejection] = []
        memo = RequestMemo()
        for index, item in enumerate(items):
            try:
                events.append(self.build_cached(item, context, memo))
            except InvalidEvent as error:
                rejections.append(Rejection(index, error.reason, str(error)))
        return events, rejections

    async def build(self, items: list[Any], context: RequestContext) -> tuple[list[Event], list[Rejection]]:
        """Return the accepted events and the rejections, each rejection naming its item's index."""
        events: list[Event] = []
        rejections: list[Rejection] = []
        memo = RequestMemo()
        for index, item in enumerate(items):
            try:
                events.append(await self.build_one(item, context, memo))
            except InvalidEvent as error:
                rejections.append(Rejection(index, error.reason, str(error)))
        return events, rejections

    async def build_one(self, item: Any, context: RequestContext, memo: RequestMemo | None = None) -> Event:
        """Return the Event for one payload item, fetching its site and salt from Redis when they are
        not cached; raise InvalidEvent naming what is wrong.

        `memo` carries site lookups and visitor ids from one item to the next of the same
        request, whose events mostly share their site, address and user agent.
        """
        if memo is None:
            try:
                return self.build_cached(item, context)
            except CacheMiss:
                memo = RequestMemo()
        while True:
            try:
                return self.build_cached(item, context, memo)
            except CacheMiss as miss:
                await self.fill(miss, memo)

    async def fill(self, miss: CacheMiss, memo: RequestMemo) -> None:
        """Fetch what `miss` lacks into `memo`; raise InvalidEvent when its site is unknown."""
        if miss.site_host is not None:
            memo.sites[miss.site_host] = await self._resolve_site(miss.site_host)
        if miss.salt_day is not None:
            memo.salts[miss.salt_day] = await self._salts.salt_for_day(miss.salt_day)

    def build_cached(self, item: Any, context: RequestContext, memo: RequestMemo | None = None) -> Event:
        """Return the Event for one payload item from cached sites and salts.

        Raises InvalidEvent naming what is wrong, or CacheMiss when a site or salt has to come
        from Redis. Without `memo`, nothing is remembered from one item to the next.

        This runs once per event in the request path, so it reads each field once and calls
        `_optional_str` only for a field that is present and not plainly a short enough string.
        The checks and their order, and so which error an invalid item gets, are those of
        `_optional_str` field by field.
        """
        if not isinstance(item, dict):
            raise InvalidEvent("not_an_object", f"an event must be a JSON object, got {type(item).__name__}")
        try:
            encoded = orjson.dumps(item)
        except orjson.JSONEncodeError as error:
            # orjson encodes at most 254 levels of nesting, fewer than its decoder reads.
            raise InvalidEvent("invalid_field", f"event cannot be stored as JSON: {error}") from None
        if len(encoded) > self._max_event_bytes:
            raise InvalidEvent("event_too_large",
                               f"event is {len(encoded)} bytes; the limit is {self._max_event_bytes}")
        if b"\\u0000" in encoded:
            item = clean_json(item)
        get = item.get

        url = get("url")
        if url.__class__ is not str or not 0 < len(url) <= MAX_URL_CHARS:
            url = _optional_str(item, "url", MAX_URL_CHARS)
        host = get("site")
        if host.__class__ is not str or not 0 < len(host) <= MAX_HOST_CHARS:
            host = _site_host(item, url)
        site = memo.sites.get(host) if memo is not None else None
        if site is None:
            cached = self._sites.cached_lookup(host)
            if cached is False:
                raise CacheMiss(site_host=host)
            if cached is None:
                raise _unknown_site(host)
            site = cached.domain
            if memo is not None:
                memo.sites[host] = site
        event_type = get("type")
        if event_type.__class__ is not str or not 0 < len(event_type) <= MAX_TYPE_CHARS:
            event_type = _optional_str(item, "type", MAX_TYPE_CHARS) or PAGEVIEW
        if event_type != PAGEVIEW and not _TYPE_PATTERN.match(event_type):
            raise InvalidEvent("invalid_field", f"type {event_type!r} may hold only letters, digits and _ . : -")
        if event_type == PAGEVIEW:
            # Pageviews, the commonest events by far, take their action here rather than in a call.
            path = get("path")
            if path is not None:
                path = _optional_str(item, "path", MAX_URL_CHARS)
            hash_mode = bool(get("hash_mode"))
            action = _page(path, url, hash_mode) if memo is None else _memo_page(memo, path, url, hash_mode)
        else:
            action = _custom_action(item, event_type)

        timestamp = get("timestamp")
        timestamp_ms = parse_timestamp(timestamp) if timestamp is not None else None
        sent_at = get("sent_at")
        sent_at_ms = (parse_timestamp(sent_at) if sent_at is not None else None) or context.sent_at_ms
        if timestamp_ms is None:
            timestamp_ms = context.received_ms
        else:
            timestamp_ms = self._correct_clock(timestamp_ms, sent_at_ms, context)
        client_id = get("id")
        if client_id is not None:
            client_id = _optional_str(item, "id", MAX_ID_CHARS)
        if not client_id and get("message_id") is not None:
            client_id = _optional_str(item, "message_id", MAX_ID_CHARS)
        if client_id:
            event_id = stable_event_id_text(site, client_id, timestamp_ms)
        else:
            event_id = new_event_id_text(context.received_ms)

        user_agent = get("user_agent")
        if user_agent is not None:
            user_agent = _optional_str(item, "user_agent", MAX_USER_AGENT_CHARS)
        user_agent = user_agent or context.user_agent
        ip = context.ip
        if context.trust_item_ip:
            ip = _optional_ip(item) or ip
        anonymous_id = get("anonymous_id")
        if anonymous_id is not None:
            anonymous_id = _optional_str(item, "anonymous_id", MAX_ID_CHARS)
        user_id = get("user_id")
        if user_id is not None:
            user_id = _optional_str(item, "user_id", MAX_ID_CHARS)
        props = get("props", get("metadata")) or {}
        if not isinstance(props, dict):
            raise InvalidEvent("invalid_field", f"props must be a JSON object, got {type(props).__name__}")

        day = _utc_day_of(timestamp_ms // MS_PER_DAY)
        if memo is None:
            salt = self._salts.cached_salt(day)
            if salt is None:
                raise CacheMiss(salt_day=day)
            if anonymous_id:
                visitor = _visitor_id(salt, site, ip, user_agent, anonymous_id)
            else:
                # _visitor_id's commonest case, inline.
                visitor = visitor_id(salt, site, ip or "", user_agent or "")
        else:
            visitor_key = (day, site, ip, user_agent, anonymous_id)
            visitor = memo.visitors.get(visitor_key)
            if visitor is None:
                salt = self._salts.cached_salt(day) or memo.salts.get(day)
                if salt is None:
                    raise CacheMiss(salt_day=day)
                visitor = memo.visitors[visitor_key] = _visitor_id(salt, site, ip, user_agent, anonymous_id)
        referrer = get("referrer")
        if referrer.__class__ is not str or not 0 < len(referrer) <= MAX_URL_CHARS:
            referrer = _optional_str(item, "referrer", MAX_URL_CHARS)

        # Positional, in the order of Event's fields: with keywords the call took 0.71 µs
        # instead of 0.27 (timeit on the machine of bench/collector/RESULTS.md).
        return Event(event_id, site, event_type, action, timestamp_ms, context.received_ms, visitor, url, referrer,
                     user_agent, ip, user_id, props, context.source)

    async def _resolve_site(self, host: str) -> str:
        site = await self._sites.lookup(host)
        if site is None:
            raise _unknown_site(host)
        return site.domain

    @staticmethod
    def _correct_clock(timestamp_ms: int | None, sent_at_ms: int | None, context: RequestContext) -> int:
        """Move a client's event time onto our clock using its send time, and never past receipt."""
        if timestamp_ms is None:
            return context.received_ms
        if context.trust_timestamps:
            if timestamp_ms < EARLIEST_MS:
                raise InvalidEvent("invalid_timestamp", f"timestamp {timestamp_ms} ms is before 2000-01-01")
            return timestamp_ms
        if sent_at_ms is not None:
            # The client's clock is off by (receive - send), network delay included, as Segment computes it.
            offset_ms = round((context.received_ms - sent_at_ms) / CLOCK_STEP_MS) * CLOCK_STEP_MS
            timestamp_ms += offset_ms
        if timestamp_ms < EARLIEST_MS:
            raise InvalidEvent("invalid_timestamp", f"timestamp {timestamp_ms} ms is before 2000-01-01")
        # What is still ahead of our clock is clamped, so no posted event is stored in the future.
        return min(timestamp_ms, context.received_ms)


def _unknown_site(host: str) -> InvalidEvent:
    name = normalize_host(host)
    if not name:
        # A `site` such as "https://" is not empty but contains no host, so there is no site to name.
        return InvalidEvent("missing_site", f"site {host[:200]!r} contains no host name: send `site` (the domain) "
                                            "or an absolute `url`")
    problem = host_name_problem(name)
    if problem is not None:
        # No site can have this name, since `weir site add` accepts host names only.
        return InvalidEvent("invalid_field", f"site {host[:200]!r} is not a host name: {problem}. Send `site` as "
                                             "the domain, such as example.com, or an absolute `url`")
    return InvalidEvent("unknown_site", f"unknown site {name!r}: add it with `weir site add {name} --timezone Area/City`")


def _custom_action(item: dict, event_type: str) -> str:
    name = _optional_str(item, "name", MAX_ACTION_CHARS) or _optional_str(item, "action", MAX_ACTION_CHARS)
    if name is None:
        raise InvalidEvent("missing_field", f"an event of type {event_type!r} needs `name`")
    return name


def _memo_page(memo: RequestMemo, path: str | None, url: str | None, hash_mode: bool) -> str:
    key = (path, url, hash_mode)
    page = memo.pages.get(key)
    if page is None:
        page = memo.pages[key] = _page(path, url, hash_mode)
    return page


def _page(path: str | None, url: str | None, hash_mode: bool) -> str:
    """Return a pageview's action: the decoded path of `path` or else of `url`, with the fragment in hash mode."""
    if path is None and url:
        # urlsplit has cut the query and the fragment off the path already.
        try:
            parts = urlsplit(url)
        except ValueError as error:
            raise _invalid_url(url, error) from None
        path, fragment = parts.path or "/", parts.fragment
    elif path is None:
        raise InvalidEvent("missing_field", "a pageview needs `url` or `path`")
    else:
        path, _, fragment = path.partition("#")
        path = path.split("?", 1)[0]
    path = decode_path(path) or "/"
    if fragment and hash_mode:
        # Hash-routed single-page apps keep their route in the fragment.
        path = f"{path}#{decode_path(fragment)}"
    return path[:MAX_ACTION_CHARS]


@functools.lru_cache(maxsize=16)
def _utc_day_of(day_number: int) -> str:
    """Return `streams.visitor.utc_day` of a time on day `day_number` (Unix ms // MS_PER_DAY), cached by day."""
    return utc_day(day_number * MS_PER_DAY)


def _site_host(item: dict, url: str | None) -> str:
    host = _optional_str(item, "site", MAX_HOST_CHARS) or _optional_str(item, "domain", MAX_HOST_CHARS)
    if host is None and url and _split_url(url).hostname:
        # normalize_host, because urlsplit takes evil.example as the host of
        # https://ex.com\@evil.example, where a browser reads ex.com.
        host = normalize_host(url)
    if not host:
        raise InvalidEvent("missing_site", "event has no site: send `site` (the domain) or an absolute `url`")
    return host


def _split_url(url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as error:
        raise _invalid_url(url, error) from None


def _invalid_url(url: str, error: ValueError) -> InvalidEvent:
    return InvalidEvent("invalid_field", f"url {url[:200]!r} is not a valid URL: {error}")


def _optional_ip(item: dict) -> str | None:
    text = _optional_str(item, "ip", 64)
    if text is None:
        return None
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise InvalidEvent("invalid_field", f"ip {text!r} is not an IPv4 or IPv6 address") from None


def _visitor_id(salt: bytes, site: str, ip: str | None, user_agent: str | None, anonymous_id: str | None) -> str:
    """Hash the sender's `anonymous_id` when it has one, else its IP address and user agent.

    Server-side SDKs send from one address for all their users, so an SDK's anonymous id keeps
    those users apart. The daily salt still rotates every visitor id.
    """
    if anonymous_id:
        return visitor_id(salt, site, f"anonymous_id:{anonymous_id}", "")
    return visitor_id(salt, site, ip or "", user_agent or "")
