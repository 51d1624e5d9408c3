"""Synthetic but realistic traffic for the processor benchmark, as stream entries.

The traffic of `generate` has these properties, each drawn from a seeded random generator so
that a run can be repeated exactly:

- five sites in five time zones (one with a half-hour offset), with 40, 25, 15, 12 and 8% of
  the sessions;
- visitors that each have an address (15% IPv6) and a user agent drawn from a few hundred
  browser strings, and an id hashed from site, address and user agent as the collector does;
- sessions of 1 to 20 events with a long tail (40% of human sessions are one pageview), with
  5% of the visitors coming back for a second session after a gap of more than 30 minutes;
- pages drawn from 2,000 paths per site and referrers from 4,000 outside hosts, both
  Zipf-weighted. The first pageview of a session comes from a search engine, a social
  network, a long-tail site or nowhere (direct), and 10% of them carry UTM parameters;
- about 20% of the events from crawlers and automation tools, which send longer sessions;
- about 3.5% custom events with a few properties, and properties on a quarter of the pageviews.

Events are ordered by time, routed to their visitor's partition of the stream and packed 100
to an entry per partition and site, as the log importer writes them.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
from dataclasses import dataclass

from streams.event import PAGEVIEW, Event, encode_entry
from streams.ids import stable_event_id
from streams.partitions import StreamPartitions
from streams.sites import Site

EVENTS_PER_ENTRY = 100
SESSION_GAP_MS = 30 * 60 * 1000
BOT_SESSION_SHARE = 0.066
"""Bot sessions are about 3.5 times longer than human ones, so this gives about 20% of the events."""
CUSTOM_EVENT_CHANCE = 0.065
"""Chance that a human event after the first is a custom event, which makes about 3.5% of all events."""
RETURNING_VISITOR_SHARE = 0.05

SITES = (
    Site("shop.example", "America/New_York", ("www.shop.example",)),
    Site("news.example", "Europe/Berlin", ("www.news.example",)),
    Site("docs.example", "UTC"),
    Site("blog.example", "Asia/Kolkata", ("www.blog.example",)),
    Site("app.example", "Asia/Tokyo"),
)
SITE_WEIGHTS = (0.40, 0.25, 0.15, 0.12, 0.08)

_WORDS = ("account", "analytics", "api", "billing", "blue", "cart", "checkout", "cloud", "guide", "data",
          "deploy", "docs", "edge", "export", "faq", "green", "help", "install", "kit", "launch", "linux",
          "login", "mobile", "news", "offer", "plan", "pricing", "privacy", "product", "query", "red",
          "release", "report", "sale", "search", "security", "setup", "shoe", "team", "travel", "update",
          "video", "winter", "world")
_SECTIONS = ("products", "news", "docs", "blog", "help", "category", "guides", "tags")

_SEARCH_REFERRERS = ("https://www.google.com/", "https://www.google.de/", "https://www.google.co.uk/",
                     "https://www.bing.com/search?q=weir", "https://duckduckgo.com/", "https://yandex.ru/",
                     "https://search.brave.com/search?q=analytics", "https://www.baidu.com/s?wd=analytics",
                     "https://www.ecosia.org/search?q=docs")
_SOCIAL_REFERRERS = ("https://t.co/x1Yz", "https://www.facebook.com/", "https://l.facebook.com/l.php",
                     "https://www.linkedin.com/feed/", "https://www.reddit.com/r/programming/",
                     "https://news.ycombinator.com/item?id=41000000", "https://www.instagram.com/",
                     "https://www.youtube.com/")
_UTM = ("utm_source=newsletter&utm_medium=email&utm_campaign=winter_sale",
        "utm_source=Google&utm_medium=cpc&utm_campaign=brand&utm_term=weir+analytics",
        "utm_source=facebook&utm_medium=social&utm_campaign=launch",
        "utm_source=partner-blog&utm_medium=referral&utm_content=sidebar",
        "gclid=Cj0KCQiA4NWrBhD", "fbclid=IwAR2xY")

_CUSTOM_EVENTS = (("signup", {"plan": "free", "method": "email"}),
                  ("add_to_cart", {"sku": "SKU-1042", "price_cents": 4999, "currency": "EUR"}),
                  ("download", {"file": "weir-1.4.2.tar.gz"}),
                  ("outbound_click", {"url": "https://github.com/example/weir"}),
                  ("video_play", {"video": "intro", "position_s": 0, "autoplay": False}))
_PAGE_PROPS = ({"logged_in": True}, {"author": "ana", "section": "news"}, {"lang": "de", "ab": "b"},
               {"plan": "pro", "logged_in": True, "theme": "dark"})

_BROWSER_TEMPLATES = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36 Edg/{v}.0.0.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    "Mozilla/5.0 (Android 14; Mobile; rv:{v}.0) Gecko/{v}.0 Firefox/{v}.0",
)
_SAFARI_TEMPLATES = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS {m}_{n} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{m}.{n} Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPad; CPU OS {m}_{n} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{m}.{n} Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{m}.{n} Safari/605.1.15",
)
_BOT_AGENTS = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Googlebot/2.1; +http://www.google.com/bot.html) Chrome/131.0.6778.69 Safari/537.36",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
    "python-requests/2.31.0",
    "curl/8.4.0",
    "Go-http-client/1.1",
    "",
)


@dataclass(frozen=True, slots=True)
class Traffic:
    """The generated events in stream order, their entries, and facts the benchmark reports."""

    events: list[Event]
    entries: list[tuple[str, dict[bytes, bytes]]]
    """Stream and fields of each entry, in the order they are added."""
    bot_flags: list[bool]
    """Whether the generator drew each event (same order as `events`) from a bot."""
    sessions: int


class _Zipf:
    """Draws indexes 0..n-1 with probability proportional to 1 / (index + 1) ** exponent."""

    def __init__(self, n: int, exponent: float) -> None:
        self._cumulative = list(itertools.accumulate(1.0 / (i + 1) ** exponent for i in range(n)))

    def draw(self, rng: random.Random) -> int:
        return bisect.bisect_left(self._cumulative, rng.random() * self._cumulative[-1])


class _Vocabulary:
    """Paths, referrer hosts and user agents shared by every visitor."""

    def __init__(self, rng: random.Random) -> None:
        self.paths = {site.domain: [self._path(rng, n) for n in range(2_000)] for site in SITES}
        self.path_rank = _Zipf(2_000, 1.05)
        self.referrer_hosts = [f"https://{rng.choice(_WORDS)}-{rng.choice(_WORDS)}{n}.example.org/{rng.choice(_WORDS)}"
                               for n in range(4_000)]
        self.referrer_rank = _Zipf(4_000, 1.0)
        self.agents = [t.format(v=v) for v in range(100, 132) for t in _BROWSER_TEMPLATES]
        self.agents += [t.format(m=m, n=n) for m in range(15, 19) for n in range(0, 7) for t in _SAFARI_TEMPLATES]
        rng.shuffle(self.agents)
        self.agent_rank = _Zipf(len(self.agents), 1.2)

    @staticmethod
    def _path(rng: random.Random, n: int) -> str:
        if n == 0:
            return "/"
        words = "-".join(rng.sample(_WORDS, rng.randint(1, 4)))
        return f"/{rng.choice(_SECTIONS)}/{words}-{n}"

    def entry_referrer(self, rng: random.Random) -> str | None:
        draw = rng.random()
        if draw < 0.35:
            return None
        if draw < 0.65:
            return rng.choice(_SEARCH_REFERRERS)
        if draw < 0.75:
            return rng.choice(_SOCIAL_REFERRERS)
        return self.referrer_hosts[self.referrer_rank.draw(rng)]


def _address(rng: random.Random) -> str:
    if rng.random() < 0.15:
        return "2a0%x:%x:%x::%x" % (rng.randint(1, 9), rng.randint(0, 0xFFFF), rng.randint(0, 0xFFFF),
                                     rng.randint(1, 0xFFFF))
    return f"{rng.choice((24, 31, 46, 62, 78, 81, 89, 92, 109, 151, 176, 185, 203))}." \
           f"{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def _events_in_session(rng: random.Random, bot: bool) -> int:
    if bot:
        return rng.randint(3, 20)
    if rng.random() < 0.4:
        return 1
    # Long tail: P(k) falls like k ** -1.5 for k in 2..20.
    return min(20, int(2 * (1.0 - rng.random()) ** (-1 / 1.5)))


def _visitor_id(site: str, ip: str, user_agent: str) -> str:
    # The collector keys this hash with the day's salt; a fixed key keeps the benchmark repeatable.
    return hashlib.blake2b(f"{site}\x00{ip}\x00{user_agent}".encode(), key=b"bench", digest_size=16).hexdigest()


def _event_id(rng: random.Random, site: Site, timestamp_ms: int) -> str:
    # A UUIDv7 of the event time, as the collector gives an event with a client id; seeded, so repeatable.
    return str(stable_event_id(site.domain, f"{rng.getrandbits(64):016x}", timestamp_ms))


def _session_events(rng: random.Random, vocabulary: _Vocabulary, site: Site, start_ms: int, ip: str,
                    user_agent: str, bot: bool) -> list[tuple[Event, bool]]:
    visitor = _visitor_id(site.domain, ip, user_agent)
    paths = vocabulary.paths[site.domain]
    previous_url = None if bot else vocabulary.entry_referrer(rng)
    utm = "" if bot or rng.random() >= 0.10 else "?" + rng.choice(_UTM)
    timestamp_ms = start_ms
    out = []
    for number in range(_events_in_session(rng, bot)):
        if number:
            timestamp_ms += int(rng.expovariate(1 / (8_000 if bot else 60_000))) + 1_000
        received_ms = timestamp_ms + rng.randint(20, 2_000)
        if not bot and number and rng.random() < CUSTOM_EVENT_CHANCE:
            name, props = rng.choice(_CUSTOM_EVENTS)
            event = Event(id=_event_id(rng, site, timestamp_ms), site=site.domain, type="event", action=name,
                          timestamp_ms=timestamp_ms, received_ms=received_ms, visitor_id=visitor,
                          url=previous_url, user_agent=user_agent, ip=ip, props=dict(props), source="bench")
        else:
            path = paths[vocabulary.path_rank.draw(rng)]
            url = f"https://{site.domain}{path}{utm if number == 0 else ''}"
            props = dict(rng.choice(_PAGE_PROPS)) if rng.random() < 0.25 else {}
            event = Event(id=_event_id(rng, site, timestamp_ms), site=site.domain, type=PAGEVIEW, action=path,
                          timestamp_ms=timestamp_ms, received_ms=received_ms, visitor_id=visitor, url=url,
                          referrer=previous_url, user_agent=user_agent, ip=ip, props=props, source="bench")
            previous_url = url
        out.append((event, bot))
    return out


def generate(event_count: int, end_ms: int, window_ms: int, partitions: StreamPartitions = StreamPartitions(),
             seed: int = 1) -> Traffic:
    """Return about `event_count` events with times in the `window_ms` before `end_ms`, as entries.

    Session starts are spread evenly over the window; a session runs past `end_ms` only when
    it starts near the end.
    """
    rng = random.Random(seed)
    vocabulary = _Vocabulary(rng)
    start_ms = end_ms - window_ms
    drawn: list[tuple[Event, bool]] = []
    sessions = 0
    while len(drawn) < event_count:
        site = rng.choices(SITES, SITE_WEIGHTS)[0]
        bot = rng.random() < BOT_SESSION_SHARE
        ip = _address(rng)
        user_agent = rng.choice(_BOT_AGENTS) if bot else vocabulary.agents[vocabulary.agent_rank.draw(rng)]
        session_start_ms = start_ms + rng.randrange(window_ms)
        drawn += _session_events(rng, vocabulary, site, session_start_ms, ip, user_agent, bot)
        sessions += 1
        if not bot and rng.random() < RETURNING_VISITOR_SHARE:
            return_ms = drawn[-1][0].timestamp_ms + SESSION_GAP_MS + rng.randint(60_000, 3_600_000)
            drawn += _session_events(rng, vocabulary, site, return_ms, ip, user_agent, bot)
            sessions += 1

    drawn = drawn[:event_count]
    drawn.sort(key=lambda pair: (pair[0].timestamp_ms, pair[0].id))
    return Traffic(events=[e for e, _ in drawn], entries=_pack((e for e, _ in drawn), partitions),
                   bot_flags=[bot for _, bot in drawn], sessions=sessions)


def _pack(events, partitions: StreamPartitions) -> list[tuple[str, dict[bytes, bytes]]]:
    """Pack time-ordered events into entries of EVENTS_PER_ENTRY events of one stream and site each."""
    pending: dict[tuple[str, str], list[Event]] = {}
    entries = []
    for event in events:
        key = (partitions.stream_of(event), event.site)
        batch = pending.setdefault(key, [])
        batch.append(event)
        if len(batch) == EVENTS_PER_ENTRY:
            entries.append((key[0], encode_entry(batch)))
            del pending[key]
    entries += [(stream, encode_entry(batch)) for (stream, _site), batch in pending.items()]
    return entries
