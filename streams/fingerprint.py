"""Session fingerprints: one record per session, built by merging its events.

A fingerprint is a commutative, associative summary: merging fingerprints (or adding events)
in any order gives the same record, which is what lets the processor update a session
incrementally from only the events a batch newly inserted, and merge two sessions when a late
event bridges them, while a rebuild from all stored events gives the identical row.

Ties are broken by content, never by arrival: the entry is the first pageview by
(time, path), the exit the last one, and a session without pageviews enters on its first event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass
from datetime import datetime, timezone

from streams.event import PAGEVIEW
from streams.referrer import DIRECT, INTERNAL, Referral, classify_referrer
from streams.useragent import UserAgent, parse_user_agent
from streams.utm import display_utm, parse_utm

MAX_TEXT = 255


@dataclass(frozen=True, slots=True)
class VisitorNetwork:
    """Location and network owner of the client address. Every event of a visitor shares it (the
    address is in the id), unless an SDK's anonymous id keys the visitor."""

    country: str | None = None
    region: str | None = None
    city: str | None = None
    asn: int | None = None
    org: str | None = None
    org_type: str | None = None
    is_government: bool = False
    response_tier: str | None = None


_NO_NETWORK = VisitorNetwork()


@dataclass(frozen=True, slots=True)
class Entry:
    """The event a session entered on, with the key that orders candidates."""

    key: tuple
    page: str | None
    referrer: str | None
    url: str | None


@dataclass(frozen=True, slots=True)
class Fingerprint:
    session_id: str
    site: str
    visitor_id: str
    started_ms: int
    ended_ms: int
    pageviews: int
    events: int
    is_bot: bool
    entry: Entry
    exit_key: tuple | None
    exit_page: str | None
    user_agent: str | None
    network: VisitorNetwork
    screen_size: str | None = None

    @property
    def duration_s(self) -> int:
        return (self.ended_ms - self.started_ms) // 1000

    @property
    def is_bounce(self) -> bool:
        """One pageview and nothing else: the visitor left without interacting."""
        return self.pageviews == 1 and self.events == 0


def _entry_key(event_type: str, timestamp_ms: int, action: str) -> tuple:
    # Pageviews sort before other events, so a session with any pageview enters on a page.
    return (0 if event_type == PAGEVIEW else 1, timestamp_ms, action)


def fingerprint_of_event(session_id: str, site: str, visitor_id: str, event_type: str, action: str,
                         timestamp_ms: int, url: str | None, referrer: str | None, user_agent: str | None,
                         is_bot: bool, network: VisitorNetwork | None = None,
                         screen_size: str | None = None) -> Fingerprint:
    """Return the fingerprint of a session holding this one event."""
    is_pageview = event_type == PAGEVIEW
    return Fingerprint(
        session_id=session_id, site=site, visitor_id=visitor_id,
        started_ms=timestamp_ms, ended_ms=timestamp_ms,
        pageviews=1 if is_pageview else 0, events=0 if is_pageview else 1,
        is_bot=is_bot,
        entry=Entry(_entry_key(event_type, timestamp_ms, action), action if is_pageview else None, referrer, url),
        exit_key=(timestamp_ms, action) if is_pageview else None,
        exit_page=action if is_pageview else None,
        user_agent=user_agent,
        network=network or VisitorNetwork(),
        screen_size=screen_size,
    )


def merge(a: Fingerprint, b: Fingerprint, session_id: str | None = None) -> Fingerprint:
    """Return the fingerprint of the union of two sessions (or of a session and an event)."""
    entry = a.entry if a.entry.key <= b.entry.key else b.entry
    exit_key, exit_page = max(((a.exit_key, a.exit_page), (b.exit_key, b.exit_page)),
                              key=lambda pair: pair[0] or ())
    # Calls the constructor, because dataclasses.replace is several times slower and a rebuild merges every event.
    return Fingerprint(
        session_id or a.session_id, a.site, a.visitor_id,
        min(a.started_ms, b.started_ms), max(a.ended_ms, b.ended_ms),
        a.pageviews + b.pageviews, a.events + b.events, a.is_bot or b.is_bot,
        entry, exit_key, exit_page, _least(a.user_agent, b.user_agent), _least_network(a.network, b.network),
        _least(a.screen_size, b.screen_size),
    )


def _least(a: str | None, b: str | None) -> str | None:
    """Return the smaller of two values, where any non-empty text is smaller than "" and "" than None.

    A visitor keyed by an SDK's anonymous id can send one session from several user agents
    (and networks and screens), so the session keeps the least of them, whatever the arrival order.
    """
    if a and b:
        return min(a, b)
    if a or b:
        return a or b
    return "" if "" in (a, b) else None


def _least_network(a: VisitorNetwork, b: VisitorNetwork) -> VisitorNetwork:
    """Return the known network of the two, or the smaller by _network_key when both are known."""
    if a == b or b == _NO_NETWORK:
        return a
    if a == _NO_NETWORK:
        return b
    return min(a, b, key=_network_key)


def _network_key(network: VisitorNetwork) -> tuple:
    return tuple((value is None, value if value is not None else 0) for value in astuple(network))


EventFacts = tuple[str, str, int, "str | None", "str | None", "str | None", bool, "VisitorNetwork | None", "str | None"]
"""The fields a fingerprint takes from one event: type, action, time (unix ms), URL, referrer, user
agent, bot flag, network and screen size, in this order."""


def merge_events(fingerprint: Fingerprint | None, session_id: str, site: str, visitor_id: str,
                 events: Sequence[EventFacts]) -> Fingerprint:
    """Merge `events` into `fingerprint` (None: start from the first event), in the order given.

    Gives exactly `merge(..., fingerprint_of_event(...), session_id)` applied event by event,
    ties included, without building a fingerprint per event. `events` must not be empty when
    `fingerprint` is None.
    """
    if fingerprint is None:
        fingerprint = fingerprint_of_event(session_id, site, visitor_id, *events[0])
        events = events[1:]
    if not events:
        return fingerprint

    f = fingerprint
    started_ms, ended_ms, pageviews, other_events, is_bot = f.started_ms, f.ended_ms, f.pageviews, f.events, f.is_bot
    entry, exit_key, exit_page = f.entry, f.exit_key, f.exit_page
    user_agent, network, screen_size = f.user_agent, f.network, f.screen_size
    for event_type, action, timestamp_ms, url, referrer, agent, bot, event_network, event_screen in events:
        is_pageview = event_type == PAGEVIEW
        started_ms = min(started_ms, timestamp_ms)
        ended_ms = max(ended_ms, timestamp_ms)
        if is_pageview:
            pageviews += 1
        else:
            other_events += 1
        is_bot = is_bot or bot
        key = _entry_key(event_type, timestamp_ms, action)
        if not entry.key <= key:
            entry = Entry(key, action if is_pageview else None, referrer, url)
        # As in merge, a later pageview replaces the exit only when its key is strictly greater.
        if is_pageview and (timestamp_ms, action) > (exit_key or ()):
            exit_key, exit_page = (timestamp_ms, action), action
        user_agent = _least(user_agent, agent)
        network = _least_network(network, event_network or _NO_NETWORK)
        screen_size = _least(screen_size, event_screen)
    return Fingerprint(session_id, f.site, f.visitor_id, started_ms, ended_ms, pageviews, other_events, is_bot, entry,
                       exit_key, exit_page, user_agent, network, screen_size)


def _clip(value: str | None, limit: int = MAX_TEXT) -> str | None:
    return value[:limit] if value else value


def _at(unix_ms: int) -> datetime:
    return datetime.fromtimestamp(unix_ms / 1000, tz=timezone.utc)


def from_row(row) -> Fingerprint:
    """Rebuild a fingerprint from its `session_fingerprints` row (a mapping)."""
    started_ms, ended_ms = _ms(row["started_at"]), _ms(row["ended_at"])
    entry_ms = _ms(row["entry_at"]) if row["entry_at"] else started_ms
    entry_action = row["entry_action"] or row["entry_page"] or ""
    entry_key = (0 if row["pageviews"] > 0 else 1, entry_ms, entry_action)
    exit_key = (_ms(row["exit_at"]), row["exit_page"]) if row["exit_at"] and row["exit_page"] is not None else None
    return Fingerprint(
        session_id=row["session_id"], site=row["site"], visitor_id=row["visitor_id"],
        started_ms=started_ms, ended_ms=ended_ms, pageviews=row["pageviews"], events=row["events"],
        is_bot=row["is_bot"],
        entry=Entry(entry_key, row["entry_page"], row["referrer"], row["entry_url"]),
        exit_key=exit_key, exit_page=row["exit_page"], user_agent=row["user_agent"],
        network=VisitorNetwork(row["country"], row["region"], row["city"], row["asn"], row["org"], row["orgType"],
                               row["isGovernment"], row["responseTier"]),
        screen_size=row["screen_size"],
    )


def _ms(moment: datetime) -> int:
    return int(round(moment.timestamp() * 1000))


def describe(fingerprint: Fingerprint, site_hosts: tuple[str, ...]) -> dict:
    """Return the `session_fingerprints` row of a fingerprint: enrichment derived from its entry."""
    utm = parse_utm(fingerprint.entry.url)
    referral: Referral = classify_referrer(fingerprint.entry.referrer, site_hosts, utm_source=utm.source,
                                           utm_medium=utm.medium, click_id_name=utm.click_id_name)
    if referral.medium == INTERNAL:
        # A session that enters from the site's own pages (its start lies beyond the gap) has no outside
        # source; analytics tools count it as direct.
        referral = Referral(source=None, medium=DIRECT, referrer_host=referral.referrer_host)
    agent: UserAgent = parse_user_agent(fingerprint.user_agent)
    network = fingerprint.network
    return {
        "session_id": fingerprint.session_id,
        "site": fingerprint.site,
        "visitor_id": fingerprint.visitor_id,
        "started_at": _at(fingerprint.started_ms),
        "ended_at": _at(fingerprint.ended_ms),
        "entry_at": _at(fingerprint.entry.key[1]),
        "exit_at": _at(fingerprint.exit_key[0]) if fingerprint.exit_key else None,
        "entry_action": _clip(fingerprint.entry.key[2]),
        "entry_page": _clip(fingerprint.entry.page),
        "exit_page": _clip(fingerprint.exit_page),
        "pageviews": fingerprint.pageviews,
        "events": fingerprint.events,
        "duration_s": fingerprint.duration_s,
        "is_bounce": fingerprint.is_bounce,
        "is_bot": fingerprint.is_bot,
        "referrer": fingerprint.entry.referrer,
        "referrer_host": _clip(referral.referrer_host, 253),
        "source": _clip(referral.source),
        "medium": _clip(referral.medium),
        "utm_source": _clip(display_utm(utm.source)),
        "utm_medium": _clip(display_utm(utm.medium)),
        "utm_campaign": _clip(display_utm(utm.campaign)),
        "utm_term": _clip(display_utm(utm.term)),
        "utm_content": _clip(display_utm(utm.content)),
        "entry_url": fingerprint.entry.url,
        "user_agent": fingerprint.user_agent,
        "browser": _clip(agent.browser, 100),
        "browser_version": _clip(agent.browser_version, 50),
        "os": _clip(agent.os, 100),
        "os_version": _clip(agent.os_version, 50),
        "device_type": agent.device_type,
        "screen_size": fingerprint.screen_size,
        "country": network.country,
        "region": _clip(network.region, 100),
        "city": _clip(network.city, 100),
        "asn": network.asn,
        "org": _clip(network.org),
        "orgType": network.org_type,
        "isGovernment": network.is_government,
        "responseTier": network.response_tier,
    }
