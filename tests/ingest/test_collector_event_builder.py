"""EventBuilder on a request of one event, which builds without a memo, against the same items
in a batch, which builds with one, and its synchronous build against the awaited one, on a
real Redis."""

from __future__ import annotations

import dataclasses

import pytest
from redis.asyncio import Redis

from ingest.validate import CacheMiss, EventBuilder, Rejection, RequestContext
from streams.ids import stable_event_id_text
from streams.keys import SITES_HASH
from streams.sites import Site, SiteDirectory
from streams.visitor import SaltStore, utc_day, visitor_id

RECEIVED_MS = 1_767_323_045_123
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"
PAGE = {"site": "example.com", "url": "https://example.com/docs/a%20b?x=1#top"}
VALID = {"site": "shop.example.org", "url": "https://shop.example.org/"}

INVALID_ITEMS = [
    ({"site": "example.com", "url": 5}, "invalid_field", "field 'url' must be a string, got int"),
    ({"site": "example.com", "url": "https://example.com/" + "a" * 4077}, "invalid_field",
     "field 'url' is 4097 characters long; the limit is 4096"),
    ({"site": 7, "url": "https://example.com/"}, "invalid_field", "field 'site' must be a string, got int"),
    ({"site": "a" * 254, "url": "https://example.com/"}, "invalid_field",
     "field 'site' is 254 characters long; the limit is 253"),
    ({"site": "", "url": "/relative"}, "missing_site",
     "event has no site: send `site` (the domain) or an absolute `url`"),
    ({"site": "unknown.example", "path": "/"}, "unknown_site",
     "unknown site 'unknown.example': add it with `weir site add unknown.example --timezone Area/City`"),
    ({"site": "http://unknown.example/x", "path": "/"}, "unknown_site",
     "unknown site 'unknown.example': add it with `weir site add unknown.example --timezone Area/City`"),
    ({"site": "https://", "path": "/"}, "missing_site",
     "site 'https://' contains no host name: send `site` (the domain) or an absolute `url`"),
    ({"site": "mailto:x@example.com", "path": "/"}, "invalid_field",
     "site 'mailto:x@example.com' is not a host name: it contains ':' '@', but a host name has only ASCII letters, "
     "digits, hyphens and dots. Send `site` as the domain, such as example.com, or an absolute `url`"),
    ({"site": "shop..example", "path": "/"}, "invalid_field",
     "site 'shop..example' is not a host name: it has an empty label: two dots in a row, or a dot at the start. "
     "Send `site` as the domain, such as example.com, or an absolute `url`"),
    ({**PAGE, "type": 3}, "invalid_field", "field 'type' must be a string, got int"),
    ({**PAGE, "type": "t" * 101}, "invalid_field", "field 'type' is 101 characters long; the limit is 100"),
    ({**PAGE, "type": "sign up"}, "invalid_field", "type 'sign up' may hold only letters, digits and _ . : -"),
    ({**PAGE, "type": "signup"}, "missing_field", "an event of type 'signup' needs `name`"),
    ({**PAGE, "path": 1}, "invalid_field", "field 'path' must be a string, got int"),
    ({"site": "example.com", "path": ""}, "missing_field", "a pageview needs `url` or `path`"),
    ({**PAGE, "timestamp": "yesterday"}, "invalid_timestamp",
     "timestamp 'yesterday' is not ISO-8601 (e.g. 2026-12-04T10:00:00Z)"),
    ({**PAGE, "sent_at": True}, "invalid_timestamp", "timestamp True is not a time"),
    ({**PAGE, "timestamp": 100}, "invalid_timestamp", "timestamp 100000 ms is before 2000-01-01"),
    ({**PAGE, "id": 5}, "invalid_field", "field 'id' must be a string, got int"),
    ({**PAGE, "id": "", "message_id": ["m"]}, "invalid_field", "field 'message_id' must be a string, got list"),
    ({**PAGE, "user_agent": "u" * 2049}, "invalid_field",
     "field 'user_agent' is 2049 characters long; the limit is 2048"),
    ({**PAGE, "anonymous_id": 1.5}, "invalid_field", "field 'anonymous_id' must be a string, got float"),
    ({**PAGE, "user_id": {}}, "invalid_field", "field 'user_id' must be a string, got dict"),
    ({**PAGE, "props": ["a"]}, "invalid_field", "props must be a JSON object, got list"),
    ({**PAGE, "referrer": 1}, "invalid_field", "field 'referrer' must be a string, got int"),
    # When several fields are wrong, the first checked names the error: url before type, props
    # before referrer.
    ({"site": "example.com", "url": 5, "type": 3}, "invalid_field", "field 'url' must be a string, got int"),
    ({**PAGE, "referrer": 1, "props": ["a"]}, "invalid_field", "props must be a JSON object, got list"),
]
ACCEPTED_ITEMS = [
    PAGE,
    {"site": "", "url": "https://www.example.com/pricing"},
    {"site": None, "domain": "Example.COM.", "path": "/a?b=c"},
    {"site": "WWW.Example.com:443", "url": "https://example.com/x#/route", "hash_mode": True},
    {**PAGE, "type": "", "referrer": "", "props": None, "user_agent": "", "id": None},
    {**PAGE, "type": "signup", "name": "Signup", "props": {"plan": "pro"}, "user_id": "u-1"},
    {**PAGE, "id": "", "message_id": "m-1", "timestamp": RECEIVED_MS - 60_000, "sent_at": RECEIVED_MS - 30_000},
    {**PAGE, "user_agent": "curl/8.5", "anonymous_id": "anon-1", "referrer": "https://news.example/"},
    {**PAGE, "metadata": {"from": "metadata"}},
]


@pytest.fixture
async def builder(redis_client: Redis, sites) -> EventBuilder:
    return EventBuilder(SiteDirectory(redis_client), SaltStore(redis_client))


def context() -> RequestContext:
    return RequestContext(received_ms=RECEIVED_MS, ip="203.0.113.7", user_agent=BROWSER)


async def test_invalid_single_event_rejected_as_in_batch(builder):
    for item, reason, message in INVALID_ITEMS:
        single = await builder.build([item], context())
        batch = await builder.build([VALID, item], context())

        assert single == ([], [Rejection(0, reason, message)]), item
        assert batch[1] == [Rejection(1, reason, message)], item
        # The awaited builds have filled the caches, so the synchronous build returns the same.
        assert builder.build_now([item], context()) == single, item
        assert builder.build_now([VALID, item], context())[1] == batch[1], item


async def test_single_event_built_as_in_batch(builder):
    for item in ACCEPTED_ITEMS:
        (single,), single_rejections = await builder.build([item], context())
        (_valid, batched), batch_rejections = await builder.build([VALID, item], context())

        (now,), now_rejections = builder.build_now([item], context())

        assert single_rejections == batch_rejections == now_rejections == [], item
        if item.get("message_id"):
            assert single == batched == now, item
        else:
            # Random ids differ between two builds; every other field must not.
            assert dataclasses.replace(single, id=batched.id) == batched, item
            assert dataclasses.replace(now, id=batched.id) == batched, item


@pytest.mark.parametrize("site", ["https://www.example.com/pricing", "HTTP://user:pw@Example.com:8080/",
                                  "//www.example.com", "example.com:443"])
async def test_site_url_picks_its_host(builder, site):
    # The host of the URL picks the site, so "https://..." must not be cut at its colon into "https".
    item = {"site": site, "path": "/"}

    (event,), rejections = await builder.build([item], context())
    (now,), now_rejections = builder.build_now([item], context())

    assert rejections == now_rejections == []
    assert (event.site, now.site) == ("example.com", "example.com")


@pytest.mark.parametrize("url", ["https://example.com\\@shop.example.org/p", "https://shop.example.org@example.com/"])
async def test_url_host_read_as_browser(builder, url):
    item = {"url": url}

    (event,), rejections = await builder.build([item], context())
    (now,), now_rejections = builder.build_now([item], context())

    assert rejections == now_rejections == []
    assert (event.site, now.site) == ("example.com", "example.com")


async def test_single_event_fields_exact(builder, redis_client):
    item = {**PAGE, "id": "client-1", "referrer": "https://news.example/", "props": {"plan": "pro"}}

    (event,), rejections = await builder.build([item], context())

    salt = await SaltStore(redis_client).salt_for_day(utc_day(RECEIVED_MS))
    assert rejections == []
    assert event.id == stable_event_id_text("example.com", "client-1", RECEIVED_MS)
    assert (event.site, event.type, event.action) == ("example.com", "pageview", "/docs/a b")
    assert (event.timestamp_ms, event.received_ms) == (RECEIVED_MS, RECEIVED_MS)
    assert event.visitor_id == visitor_id(salt, "example.com", "203.0.113.7", BROWSER)
    assert event.url == PAGE["url"]
    assert event.referrer == "https://news.example/"
    assert (event.user_agent, event.ip, event.user_id) == (BROWSER, "203.0.113.7", None)
    assert event.props == {"plan": "pro"}
    assert event.source == "collect"


async def test_site_lookup_as_sent_matches_normalized(redis_client, sites):
    # A host written to the hash without `publish` may not be normalized. So the lookup of a
    # host as sent must not find it where the normalizing lookup does not.
    await redis_client.hset(SITES_HASH, "Odd.Example", b'{"domain": "odd.example", "timezone": "UTC"}')
    directory = SiteDirectory(redis_client)
    hosts = ["example.com", "EXAMPLE.com.", "www.example.com:443", "shop.example.org", "Odd.Example",
             "odd.example", "missing.example"]

    looked_up = [await directory.lookup(host) for host in hosts]
    cached = [directory.cached_lookup(host) for host in hosts]

    example = Site("example.com", "Europe/Berlin", ("www.example.com",))
    shop = Site("shop.example.org", "UTC")
    assert looked_up == [example, example, example, shop, None, None, None]
    assert cached == looked_up


async def test_build_now_names_what_is_not_cached(builder, redis_client):
    with pytest.raises(CacheMiss) as site_miss:
        builder.build_now([PAGE], context())
    await builder.build([PAGE], context())
    next_day_ms = RECEIVED_MS + 86_400_000
    later = RequestContext(received_ms=next_day_ms, ip="203.0.113.7", user_agent=BROWSER)
    with pytest.raises(CacheMiss) as salt_miss:
        builder.build_now([PAGE, VALID], later)

    assert (site_miss.value.site_host, site_miss.value.salt_day) == ("example.com", None)
    assert (salt_miss.value.site_host, salt_miss.value.salt_day) == (None, utc_day(next_day_ms))


async def test_awaited_build_fills_what_is_not_cached(builder, redis_client):
    # A cold builder: every site and salt comes from Redis, and an unknown site among them is
    # rejected by its index while the items around it are kept.
    items = [PAGE, {"site": "unknown.example", "path": "/"}, VALID]

    events, rejections = await builder.build(items, context())

    salt = await SaltStore(redis_client).salt_for_day(utc_day(RECEIVED_MS))
    assert [(e.site, e.action) for e in events] == [("example.com", "/docs/a b"), ("shop.example.org", "/")]
    assert events[0].visitor_id == visitor_id(salt, "example.com", "203.0.113.7", BROWSER)
    assert rejections == [Rejection(1, "unknown_site", "unknown site 'unknown.example': add it with "
                                                      "`weir site add unknown.example --timezone Area/City`")]


async def test_awaited_build_salts_each_utc_day(builder, redis_client):
    # A cold builder fetches one salt per UTC day into the request memo. Each event's visitor id
    # uses the salt of its own day, also when a day comes back after another.
    day_ms = 86_400_000
    times = [RECEIVED_MS - 2 * day_ms, RECEIVED_MS - day_ms, RECEIVED_MS, RECEIVED_MS - 2 * day_ms]
    items = [{**PAGE, "timestamp": ms} for ms in times]

    events, rejections = await builder.build(items, context())

    salts = SaltStore(redis_client)
    expected = [visitor_id(await salts.salt_for_day(utc_day(ms)), "example.com", "203.0.113.7", BROWSER)
                for ms in times]
    assert rejections == []
    assert [e.timestamp_ms for e in events] == times
    assert [e.visitor_id for e in events] == expected
    assert len(set(expected)) == 3
