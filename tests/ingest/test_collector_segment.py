"""Segment's HTTP Tracking API, driven by the real segment-analytics-python client and by raw requests."""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime, timezone

import orjson
import pytest

from streams.ids import stable_event_id
from weir.settings import ConfigError
from tests.ingest.conftest import WRITE_KEY, metric, stream_events

segment_client = pytest.importorskip("segment.analytics.client", reason="pip install segment-analytics-python")
segment_request = pytest.importorskip("segment.analytics.request")

WHEN = datetime(2026, 3, 4, 5, 6, 7, 890_000, tzinfo=timezone.utc)
WHEN_MS = 1_772_600_767_890


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


async def test_sdk_calls_land_as_events(collector, redis_client):
    client = segment_client.Client(WRITE_KEY, host=collector.url, sync_mode=True, max_retries=0)

    def send_all() -> None:
        client.track(user_id="user-1", event="Order Completed", properties={"revenue": 42.5, "currency": "EUR"},
                     context={"ip": "203.0.113.7", "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"},
                     timestamp=WHEN, message_id="msg-track")
        client.page(user_id="user-1", category="Docs", name="Install",
                    properties={"url": "https://example.com/docs/install?x=1", "referrer": "https://search.example/"},
                    timestamp=WHEN, message_id="msg-page")
        client.screen(anonymous_id="anon-9", name="Settings", properties={"tab": "privacy"},
                      timestamp=WHEN, message_id="msg-screen")
        client.identify(user_id="user-1", traits={"plan": "pro"}, timestamp=WHEN, message_id="msg-identify")
        client.group(user_id="user-1", group_id="acme", traits={"seats": 5}, timestamp=WHEN, message_id="msg-group")
        client.alias(previous_id="anon-9", user_id="user-1", timestamp=WHEN, message_id="msg-alias")

    await asyncio.to_thread(send_all)

    events = {event.id: event for event in await stream_events(redis_client)}
    assert len(events) == 6

    track = events[str(stable_event_id("example.com", "msg-track", WHEN_MS))]
    assert (track.site, track.type, track.action) == ("example.com", "event", "Order Completed")
    assert track.props == {"revenue": 42.5, "currency": "EUR"}
    assert track.user_id == "user-1"
    assert track.ip == "203.0.113.7"
    assert track.user_agent == "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
    assert track.timestamp_ms == WHEN_MS

    page = events[str(stable_event_id("example.com", "msg-page", WHEN_MS))]
    assert (page.type, page.action) == ("pageview", "/docs/install")
    assert page.url == "https://example.com/docs/install?x=1"
    assert page.referrer == "https://search.example/"
    assert page.props["name"] == "Install"
    assert page.props["category"] == "Docs"

    screen = events[str(stable_event_id("example.com", "msg-screen", WHEN_MS))]
    assert (screen.type, screen.action, screen.props) == ("screen", "Settings", {"tab": "privacy"})
    assert screen.user_id is None

    identify = events[str(stable_event_id("example.com", "msg-identify", WHEN_MS))]
    assert (identify.type, identify.props) == ("identify", {"plan": "pro"})
    group = events[str(stable_event_id("example.com", "msg-group", WHEN_MS))]
    assert (group.type, group.action, group.props) == ("group", "acme", {"seats": 5})
    alias = events[str(stable_event_id("example.com", "msg-alias", WHEN_MS))]
    assert (alias.type, alias.props) == ("alias", {"previous_id": "anon-9"})

    # userId keys the visitor when there is no anonymousId, so one user is one visitor.
    assert track.visitor_id == page.visitor_id == identify.visitor_id
    assert screen.visitor_id != track.visitor_id


async def test_sdk_gzip_batches_land(collector, redis_client):
    client = segment_client.Client(WRITE_KEY, host=collector.url, gzip=True, upload_size=50, upload_interval=0.05,
                                   max_retries=0)

    def send_batch() -> None:
        for number in range(120):
            client.track(anonymous_id=f"anon-{number % 7}", event="Viewed Item", properties={"n": number},
                         message_id=f"batch-{number}")
        client.flush()
        client.join()

    await asyncio.to_thread(send_batch)

    events = await stream_events(redis_client)
    assert len(events) == 120
    assert sorted(e.props["n"] for e in events) == list(range(120))
    assert len({e.visitor_id for e in events}) == 7


async def test_sdk_retry_keeps_event_id(collector, redis_client):
    client = segment_client.Client(WRITE_KEY, host=collector.url, sync_mode=True, max_retries=0)

    def send_twice() -> None:
        for _ in range(2):
            client.track(user_id="u", event="Paid", timestamp=WHEN, message_id="same-message")

    await asyncio.to_thread(send_twice)

    first, second = await stream_events(redis_client)
    assert first.id == second.id == str(stable_event_id("example.com", "same-message", WHEN_MS))
    assert first.timestamp_ms == second.timestamp_ms == WHEN_MS


async def test_sdk_unknown_write_key_raises_api_error(collector):
    client = segment_client.Client("not-a-key", host=collector.url, sync_mode=True, max_retries=0)

    with pytest.raises(segment_request.APIError) as caught:
        await asyncio.to_thread(client.track, user_id="u", event="x")

    assert caught.value.status == 401
    assert caught.value.code == "invalid_write_key"
    assert "SEGMENT_WRITE_KEYS" in caught.value.message


@pytest.mark.parametrize("route, message, expected", [
    ("/v1/track", {"event": "Clicked", "userId": 7, "properties": {"a": 1}}, ("event", "Clicked")),
    ("/v1/page", {"anonymousId": "a", "context": {"page": {"url": "https://example.com/from-context"}}},
     ("pageview", "/from-context")),
    ("/v1/screen", {"anonymousId": "a", "name": "Home"}, ("screen", "Home")),
    ("/v1/identify", {"userId": "u", "traits": {"email_verified": True}}, ("identify", "identify")),
])
async def test_single_message_routes(http, collector, redis_client, route, message, expected):
    async with http.post(collector.route(route), json=message, headers={"Authorization": basic(WRITE_KEY)}) as response:
        body = await response.json()

    assert response.status == 200, body
    assert body == {"success": True, "accepted": 1, "rejected": []}
    [event] = await stream_events(redis_client)
    assert (event.type, event.action) == expected
    assert event.site == "example.com"


async def test_write_key_in_body_accepted(http, collector, redis_client):
    payload = {"writeKey": WRITE_KEY, "batch": [{"type": "track", "event": "A", "userId": "u"}]}

    async with http.post(collector.route("/v1/batch"), json=payload) as response:
        assert response.status == 200

    assert len(await stream_events(redis_client)) == 1


@pytest.mark.parametrize("headers, payload, reason", [
    ({}, {"batch": []}, "missing_write_key"),
    ({"Authorization": basic("wrong")}, {"batch": []}, "invalid_write_key"),
    ({"Authorization": "Basic !!!"}, {"batch": []}, "invalid_write_key"),
    ({}, {"writeKey": "wrong", "batch": []}, "invalid_write_key"),
])
async def test_bad_write_key_401(http, collector, headers, payload, reason):
    before = metric("weir_collect_rejected_events_total", reason=reason)

    async with http.post(collector.route("/v1/batch"), json=payload, headers=headers) as response:
        body = await response.json()

    assert response.status == 401
    assert body["code"] == reason
    assert body["success"] is False
    assert "wrong" not in body["message"]
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert metric("weir_collect_rejected_events_total", reason=reason) == before + 1


async def test_routes_off_without_write_keys(http, make_collector, sites):
    collector = await make_collector(SEGMENT_WRITE_KEYS="")

    async with http.post(collector.route("/v1/track"), json={"event": "x"},
                         headers={"Authorization": basic("k")}) as response:
        body = await response.json()

    assert response.status == 401
    assert "set SEGMENT_WRITE_KEYS" in body["message"]


async def test_write_key_for_unknown_site_names_it(http, make_collector, sites, redis_client):
    collector = await make_collector(SEGMENT_WRITE_KEYS="k1=example.com,k2=gone.example.net")

    async with http.post(collector.route("/v1/track"), json={"event": "x", "userId": "u"},
                         headers={"Authorization": basic("k2")}) as response:
        body = await response.json()

    assert response.status == 422
    assert body["code"] == "unknown_site"
    assert "gone.example.net" in body["message"]


async def test_batch_rejects_bad_messages_by_index(http, collector, redis_client):
    batch = [{"type": "track", "event": "ok", "userId": "u"}, {"type": "launch"}, "text",
             {"type": "track", "userId": "u"}, {"type": "page", "userId": "u"},
             {"type": "track", "event": "props", "properties": [1]}]

    async with http.post(collector.route("/v1/batch"), json={"batch": batch},
                         headers={"Authorization": basic(WRITE_KEY)}) as response:
        body = await response.json()

    assert response.status == 200
    assert body["accepted"] == 1
    assert [(r["index"], r["reason"]) for r in body["rejected"]] == [
        (1, "invalid_field"), (2, "not_an_object"), (3, "missing_field"), (4, "missing_field"), (5, "invalid_field")]
    assert "unknown message type 'launch'" in body["rejected"][0]["error"]


async def test_message_without_ids_rejected(http, collector, redis_client):
    batch = [{"type": "track", "event": "no ids"}, {"type": "track", "event": "ok", "anonymousId": "a1"},
             {"type": "page", "userId": "", "anonymousId": "", "properties": {"path": "/"}}]

    async with http.post(collector.route("/v1/batch"), json={"batch": batch},
                         headers={"Authorization": basic(WRITE_KEY)}) as response:
        body = await response.json()

    assert response.status == 200
    assert body["accepted"] == 1
    assert body["rejected"] == [
        {"index": 0, "reason": "missing_field", "error": "a message of type 'track' needs `userId` or `anonymousId`"},
        {"index": 2, "reason": "missing_field", "error": "a message of type 'page' needs `userId` or `anonymousId`"},
    ]
    assert [e.action for e in await stream_events(redis_client)] == ["ok"]


@pytest.mark.parametrize(("batch", "errors", "stored_user"), [
    ([{"type": "track", "event": "e", "userId": True}, {"type": "identify", "anonymousId": {"a": 1}},
      {"type": "track", "event": "ok", "userId": 7}],
     ["userId must be a string or a number, got bool", "anonymousId must be a string or a number, got dict"], "7"),
    ([{"type": "track", "event": "e", "userId": "u", "messageId": {"id": "m1"}},
      {"type": "track", "event": "e", "userId": "u", "messageId": False},
      {"type": "track", "event": "ok", "userId": "u", "messageId": 12}],
     ["messageId must be a string or a number, got dict", "messageId must be a string or a number, got bool"], "u"),
], ids=["user-ids", "message-id"])
async def test_id_of_wrong_type_rejected(http, collector, redis_client, batch, errors, stored_user):
    async with http.post(collector.route("/v1/batch"), json={"batch": batch},
                         headers={"Authorization": basic(WRITE_KEY)}) as response:
        body = await response.json()

    assert response.status == 200
    assert body["rejected"] == [{"index": i, "reason": "invalid_field", "error": e} for i, e in enumerate(errors)]
    assert [(e.action, e.user_id) for e in await stream_events(redis_client)] == [("ok", stored_user)]


async def test_blank_and_whole_number_ids(http, collector, redis_client):
    when = "2026-03-04T05:06:07.890Z"
    batch = [{"type": "track", "event": "spaces", "userId": "   "},
             {"type": "track", "event": "a", "userId": 7, "messageId": "  ", "timestamp": when},
             {"type": "track", "event": "b", "userId": 7.0, "messageId": "\t", "timestamp": when},
             {"type": "track", "event": "c", "userId": 7.5, "messageId": 12.0, "timestamp": when}]

    async with http.post(collector.route("/v1/batch"), json={"batch": batch},
                         headers={"Authorization": basic(WRITE_KEY)}) as response:
        body = await response.json()

    assert response.status == 200
    assert body["rejected"] == [
        {"index": 0, "reason": "missing_field", "error": "a message of type 'track' needs `userId` or `anonymousId`"}]
    integer_user, float_user, fraction_user = await stream_events(redis_client)
    assert [(e.action, e.user_id) for e in (integer_user, float_user, fraction_user)] == [
        ("a", "7"), ("b", "7"), ("c", "7.5")]
    # A blank messageId deduplicates nothing: two messages at the same time stay two events.
    assert integer_user.id != float_user.id
    assert integer_user.visitor_id == float_user.visitor_id
    assert float_user.visitor_id != fraction_user.visitor_id
    assert fraction_user.id == str(stable_event_id("example.com", "12", WHEN_MS))


async def test_long_ids_named_by_segment_field(http, collector, redis_client):
    longest, other_longest = "u" * 255, "v" * 254 + "w"
    batch = [{"type": "track", "event": "e", "anonymousId": "7" * 300},
             {"type": "track", "event": "e", "userId": "u" * 256},
             {"type": "track", "event": "e", "userId": "u", "messageId": "m" * 256},
             {"type": "track", "event": "ok", "userId": longest},
             {"type": "track", "event": "other", "userId": other_longest}]

    async with http.post(collector.route("/v1/batch"), json={"batch": batch},
                         headers={"Authorization": basic(WRITE_KEY)}) as response:
        body = await response.json()

    assert response.status == 200
    assert body["rejected"] == [
        {"index": 0, "reason": "invalid_field", "error": "anonymousId is 300 characters long; the limit is 255"},
        {"index": 1, "reason": "invalid_field", "error": "userId is 256 characters long; the limit is 255"},
        {"index": 2, "reason": "invalid_field", "error": "messageId is 256 characters long; the limit is 255"}]
    stored, other = await stream_events(redis_client)
    assert (stored.action, stored.user_id) == ("ok", longest)
    assert (other.action, other.user_id) == ("other", other_longest)
    assert stored.visitor_id != other.visitor_id


async def test_sent_at_corrects_skewed_clock(http, collector, redis_client):
    skewed = {"batch": [{"type": "track", "event": "e", "userId": "u", "messageId": "m",
                         "timestamp": "2030-01-01T00:00:00.000Z"}],
              "sentAt": "2030-01-01T00:00:30.000Z"}

    async with http.post(collector.route("/v1/batch"), json=skewed, headers={"Authorization": basic(WRITE_KEY)}):
        pass

    [event] = await stream_events(redis_client)
    # The client's clock ran years ahead; the event happened 30 s before it sent, on our clock.
    assert 25_000 <= event.received_ms - event.timestamp_ms <= 35_000


async def test_batch_body_must_be_object(http, collector):
    async with http.post(collector.route("/v1/batch"), data=orjson.dumps([1]),
                         headers={"Authorization": basic(WRITE_KEY)}) as response:
        body = await response.json()

    assert response.status == 400
    assert body["code"] == "not_an_object"


async def test_malformed_write_keys_config_error(make_collector):
    with pytest.raises(ConfigError) as caught:
        await make_collector(SEGMENT_WRITE_KEYS="s3cret-key, k2=example.com")

    assert "pair 1 of SEGMENT_WRITE_KEYS is not KEY=DOMAIN" in str(caught.value)
    assert "s3cret-key" not in str(caught.value)
