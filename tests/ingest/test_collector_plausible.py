"""Plausible's event API, with the payloads Plausible's tracker script sends (text/plain JSON)."""

from __future__ import annotations

import orjson
import pytest

from tests.ingest.conftest import stream_events

BROWSER_UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


async def send(http, collector, payload: dict | bytes):
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    headers = {"Content-Type": "text/plain", "User-Agent": BROWSER_UA}
    async with http.post(collector.route("/api/event"), data=data, headers=headers) as response:
        return response.status, await response.read(), response.headers


async def test_tracker_pageview_payload_accepted(http, collector, redis_client):
    # The fields and order that tracker/src/plausible.js of plausible/analytics sends: n, u, d, r, w
    # (and h in its hash variant).
    payload = {"n": "pageview", "u": "https://example.com/blog/post-1?utm_source=x", "d": "example.com",
               "r": "https://news.example/item", "w": 1440}

    status, body, headers = await send(http, collector, payload)

    assert status == 202
    assert body == b"ok"
    assert headers["Content-Type"].startswith("text/plain")
    [event] = await stream_events(redis_client)
    assert (event.site, event.type, event.action) == ("example.com", "pageview", "/blog/post-1")
    assert event.url == "https://example.com/blog/post-1?utm_source=x"
    assert event.referrer == "https://news.example/item"
    assert event.user_agent == BROWSER_UA
    assert event.props == {}


async def test_long_field_names_accepted(http, collector, redis_client):
    payload = {"name": "Signup", "url": "https://example.com/join", "domain": "example.com",
               "referrer": None, "props": {"plan": "pro", "seats": 3, "trial": True}}

    status, _, _ = await send(http, collector, payload)

    assert status == 202
    [event] = await stream_events(redis_client)
    assert (event.type, event.action) == ("event", "Signup")
    # Plausible keeps property values as strings.
    assert event.props == {"plan": "pro", "seats": "3", "trial": "true"}


async def test_props_as_json_string_filtered(http, collector, redis_client):
    props = {"author": "Ada", "tags": ["a"], "nested": {"x": 1}, "empty": "", "none": None, **{f"k{i}": i for i in range(40)}}
    payload = {"n": "Download", "u": "https://example.com/", "d": "example.com", "p": orjson.dumps(props).decode()}

    await send(http, collector, payload)

    [event] = await stream_events(redis_client)
    assert event.props["author"] == "Ada"
    assert "tags" not in event.props
    assert "nested" not in event.props
    assert "empty" not in event.props
    assert "none" not in event.props
    assert len(event.props) == 30


async def test_meta_field_read_as_props(http, collector, redis_client):
    await send(http, collector, {"n": "Play", "u": "https://example.com/", "d": "example.com", "m": '{"track": "7"}'})

    [event] = await stream_events(redis_client)
    assert event.props == {"track": "7"}


async def test_hash_mode_keeps_fragment(http, collector, redis_client):
    await send(http, collector, {"n": "pageview", "u": "https://example.com/app#/inbox", "d": "example.com", "h": 1})

    [event] = await stream_events(redis_client)
    assert event.action == "/app#/inbox"


async def test_domain_list_records_each_site(http, collector, redis_client):
    await send(http, collector, {"n": "pageview", "u": "https://example.com/x", "d": "example.com,shop.example.org"})

    events = await stream_events(redis_client)
    assert sorted(e.site for e in events) == ["example.com", "shop.example.org"]
    assert len({e.id for e in events}) == 2


async def test_domain_defaults_to_url_host_without_www(http, make_collector, redis_client, sites):
    collector = await make_collector()
    await redis_client.hdel("weir:sites", "www.example.com")  # the bare domain must match, not the alias

    status, _, _ = await send(http, collector, {"n": "pageview", "u": "https://www.example.com/y"})

    assert status == 202
    [event] = await stream_events(redis_client)
    assert event.site == "example.com"


async def test_domain_from_url_read_as_browser(http, collector, redis_client):
    status, _, _ = await send(http, collector, {"n": "pageview", "u": "https://example.com\\@shop.example.org/y"})

    assert status == 202
    [event] = await stream_events(redis_client)
    assert event.site == "example.com"


async def test_numeric_event_name_accepted(http, collector, redis_client):
    await send(http, collector, {"n": 404, "u": "https://example.com/missing", "d": "example.com"})

    [event] = await stream_events(redis_client)
    assert (event.type, event.action) == ("event", "404")


async def test_engagement_event_keeps_depth_and_time(http, collector, redis_client):
    payload = {"n": "engagement", "u": "https://example.com/a", "d": "example.com", "sd": 140, "e": 5234, "p": {"x": 1}}

    await send(http, collector, payload)

    [event] = await stream_events(redis_client)
    assert (event.type, event.action) == ("engagement", "engagement")
    assert event.props == {"x": "1", "scroll_depth": 100, "engagement_ms": 5234}


@pytest.mark.parametrize("payload, field", [
    ({"u": "https://example.com/", "d": "example.com"}, "event_name"),
    ({"n": "pageview", "d": "example.com"}, "url"),
    ({"n": "pageview", "u": "data:text/html,hi", "d": "example.com"}, "url"),
    ({"n": "pageview", "u": "https://example.com/", "d": " "}, "domain"),
    ({"n": "engagement", "u": "https://example.com/", "d": "example.com"}, "event_name"),
])
async def test_invalid_request_400_with_errors(http, collector, payload, field):
    status, body, _ = await send(http, collector, payload)

    assert status == 400
    errors = orjson.loads(body)["errors"]
    assert list(errors) == [field]


async def test_unknown_domain_4xx_names_it(http, collector, redis_client):
    status, body, _ = await send(http, collector, {"n": "pageview", "u": "https://other.example/", "d": "other.example"})

    assert status == 422
    assert "unknown site 'other.example'" in orjson.loads(body)["errors"]["request"][0]
    assert await stream_events(redis_client) == []


async def test_invalid_json_400(http, collector):
    status, body, _ = await send(http, collector, b'{"n": "pageview",')

    assert status == 400
    assert "character 17" in orjson.loads(body)["errors"]["request"][0]


@pytest.mark.parametrize("depth", ["\u00b2", "1" * 5000, "\u0663"])
async def test_engagement_ignores_unusable_depth(http, collector, redis_client, depth):
    # "²" passes str.isdigit() but not int(), and int() rejects more than 4300 digits.
    payload = {"n": "engagement", "u": "https://example.com/a", "d": "example.com", "sd": depth, "e": 5234}

    status, body, _ = await send(http, collector, payload)

    assert status == 202, body
    [event] = await stream_events(redis_client)
    assert event.props == {"engagement_ms": 5234}
