"""POST and GET /collect: every request form, every limit, and what lands in the stream."""

from __future__ import annotations

import asyncio
import gzip
import random
import time
import zlib
from datetime import datetime, timezone

import orjson
import pytest

from ingest.body import MAX_BODY_BYTES
from streams.ids import stable_event_id
from tests.ingest.conftest import metric, stream_events

EVENT = {"site": "example.com", "url": "https://example.com/pricing?plan=pro#top", "referrer": "https://news.example/"}


def iso(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


async def post(http, collector, body: bytes, **headers):
    async with http.post(collector.route("/collect"), data=body, headers=headers,
                         skip_auto_headers=["Content-Type"]) as response:
        return response.status, await response.json(content_type=None), response.headers


@pytest.mark.parametrize("content_type", ["application/json", "text/plain;charset=UTF-8", None,
                                          "application/json; charset=utf-8", "application/octet-stream"])
async def test_post_content_types_accepted(http, collector, redis_client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    status, body, _ = await post(http, collector, orjson.dumps(EVENT), **headers)

    assert status == 202, body
    assert body["accepted"] == 1
    assert body["rejected"] == []
    [event] = await stream_events(redis_client)
    assert event.id == body["ids"][0]
    assert event.site == "example.com"
    assert event.type == "pageview"
    assert event.action == "/pricing"
    assert event.referrer == "https://news.example/"
    assert event.ip == "127.0.0.1"


async def test_post_batch_forms_accepted(http, collector, redis_client):
    second = {**EVENT, "type": "event", "name": "Signup", "props": {"plan": "pro"}}

    status_object, body_object, _ = await post(http, collector, orjson.dumps({"events": [EVENT, second]}))
    status_array, body_array, _ = await post(http, collector, orjson.dumps([EVENT, second]))

    assert (status_object, status_array) == (202, 202)
    assert body_object["accepted"] == 2
    assert body_array["accepted"] == 2
    events = await stream_events(redis_client)
    assert [(e.type, e.action) for e in events] == [("pageview", "/pricing"), ("event", "Signup")] * 2
    assert events[1].props == {"plan": "pro"}


async def test_post_gzip_body_accepted(http, collector, redis_client):
    status, body, _ = await post(http, collector, gzip.compress(orjson.dumps([EVENT] * 3)),
                                 **{"Content-Encoding": "gzip", "Content-Type": "application/json"})

    assert status == 202, body
    assert body["accepted"] == 3
    assert len(await stream_events(redis_client)) == 3


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
async def test_post_deflate_body_accepted(http, collector, wbits):
    compressor = zlib.compressobj(wbits=wbits)
    data = compressor.compress(orjson.dumps(EVENT)) + compressor.flush()

    status, body, _ = await post(http, collector, data, **{"Content-Encoding": "deflate"})

    assert status == 202, body


async def test_unsupported_content_type_415(http, collector):
    status, body, _ = await post(http, collector, b"a=1", **{"Content-Type": "multipart/form-data; boundary=x"})

    assert status == 415
    assert body["reason"] == "unsupported_content_type"
    assert "multipart/form-data" in body["error"]


async def test_unsupported_content_encoding_415(http, collector):
    status, body, _ = await post(http, collector, orjson.dumps(EVENT), **{"Content-Encoding": "br"})

    assert status == 415
    assert body["reason"] == "unsupported_content_encoding"


@pytest.mark.parametrize("data", [b"not gzip at all", gzip.compress(orjson.dumps(EVENT))[:-12]],
                         ids=["corrupt", "truncated"])
async def test_broken_gzip_body_400(http, collector, data):
    status, body, _ = await post(http, collector, data, **{"Content-Encoding": "gzip"})

    assert status == 400
    assert body["reason"] == "invalid_body"
    assert "gzip" in body["error"]


async def test_body_over_limit_413(http, collector):
    before = metric("weir_collect_rejected_events_total", reason="body_too_large")
    data = b'{"site": "example.com", "url": "https://example.com/", "props": {"x": "' + b"a" * MAX_BODY_BYTES + b'"}}'

    status, body, _ = await post(http, collector, data)

    assert status == 413
    assert body["reason"] == "body_too_large"
    assert str(MAX_BODY_BYTES) in body["error"]
    assert metric("weir_collect_rejected_events_total", reason="body_too_large") == before + 1


async def test_chunked_body_over_limit_413(http, collector):
    async def chunks():
        for _ in range(20):
            yield b" " * 65_536  # whitespace is valid JSON padding, but 1.25 MiB of it is too much

    async with http.post(collector.route("/collect"), data=chunks()) as response:
        body = await response.json()

    assert response.status == 413
    assert body["reason"] == "body_too_large"


async def test_chunked_body_in_parts_accepted(http, collector, redis_client):
    # Parts sent apart in time arrive after the handler has started, so the body is read as it
    # comes rather than taken whole.
    data = orjson.dumps({**EVENT, "props": {"part": "p" * 5000}})

    async def chunks():
        for start in range(0, len(data), 1000):
            yield data[start:start + 1000]
            await asyncio.sleep(0.01)

    async with http.post(collector.route("/collect"), data=chunks()) as response:
        body = await response.json()

    assert response.status == 202
    assert body["accepted"] == 1
    [event] = await stream_events(redis_client)
    assert event.props == {"part": "p" * 5000}


async def test_gzip_bomb_413_on_decompressed_size(http, collector):
    data = gzip.compress(b"[" + b" " * (8 * MAX_BODY_BYTES) + b"]")
    assert len(data) < MAX_BODY_BYTES // 10

    status, body, _ = await post(http, collector, data, **{"Content-Encoding": "gzip"})

    assert status == 413
    assert body["error"] == f"decompressed body is over the limit of {MAX_BODY_BYTES} bytes"


async def test_large_event_rejected_alone_by_index(http, collector, redis_client):
    large = {**EVENT, "props": {"blob": "x" * 40_000}}
    before = metric("weir_collect_rejected_events_total", reason="event_too_large")

    status, body, _ = await post(http, collector, orjson.dumps([EVENT, large, EVENT]))

    assert status == 202
    assert body["accepted"] == 2
    [rejection] = body["rejected"]
    assert rejection["index"] == 1
    assert rejection["reason"] == "event_too_large"
    assert "limit is 32768" in rejection["error"]
    assert len(await stream_events(redis_client)) == 2
    assert metric("weir_collect_rejected_events_total", reason="event_too_large") == before + 1


@pytest.mark.parametrize("data, position", [(b'{"site": "example.com",', 23), (b'{"site" "x"}', 8), (b"[1, 2,]", 5)])
async def test_invalid_json_400_names_position(http, collector, data, position):
    before = metric("weir_collect_rejected_events_total", reason="invalid_json")

    status, body, _ = await post(http, collector, data)

    assert status == 400
    assert body["reason"] == "invalid_json"
    assert body["position"] == position
    assert f"character {position}" in body["error"]
    assert metric("weir_collect_rejected_events_total", reason="invalid_json") == before + 1


async def test_invalid_utf8_400_names_byte(http, collector):
    status, body, _ = await post(http, collector, b'{"site": "example.com", "url": "https://example.com/\xff"}')

    assert status == 400
    assert body["reason"] == "invalid_utf8"
    assert body["position"] == 52
    assert body["error"] == "body is not valid UTF-8 at byte 52"


async def test_utf8_encoded_surrogate_rejected(http, collector):
    status, body, _ = await post(http, collector, b'{"a":"\xed\xa0\x80"}')

    assert status == 400
    assert body["reason"] == "invalid_utf8"


async def test_lone_surrogate_escapes_replaced(http, collector, redis_client):
    data = (b'{"site": "example.com", "url": "https://example.com/\\ud800", "props": {"k\\udfff": "\\ud800x"},'
            b' "referrer": "https://r.example/\\ud83d\\ude00"}')

    status, body, _ = await post(http, collector, data)

    assert status == 202, body
    [event] = await stream_events(redis_client)
    assert event.url == "https://example.com/\ufffd"
    assert event.props == {"k\ufffd": "\ufffdx"}
    assert event.referrer == "https://r.example/\U0001F600"


async def raw_request(collector, head: bytes, body: bytes = b"") -> bytes:
    """Send raw request bytes, such as invalid UTF-8 in headers, and return the status line."""
    host, port = collector.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer.split(b"\r\n", 1)[0]



async def test_pipelined_requests_answered_in_order(collector, redis_client):
    # Four requests in one TCP write, so every body has arrived before its handler runs and is
    # taken without request.read(). A rejected request must not disturb the ones around it.
    def request(body: bytes) -> bytes:
        return (b"POST /collect HTTP/1.1\r\nHost: example.com\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)) + body

    good = orjson.dumps({"site": "example.com", "path": "/a"})
    data = request(good) + request(b'{"site": ') + request(b"") + request(good)
    host, port = collector.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    answers = []
    for _ in range(4):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
        body = await asyncio.wait_for(reader.readexactly(length), 10)
        answers.append((head.split(b" ", 2)[1], orjson.loads(body)))
    writer.close()

    assert [status for status, _ in answers] == [b"202", b"400", b"400", b"202"]
    assert answers[1][1]["reason"] == "invalid_json"
    assert answers[2][1]["reason"] == "empty_body"
    assert len(await stream_events(redis_client)) == 2


@pytest.mark.parametrize("extra", [{}, {"anonymous_id": "sdk-user-1"}])
async def test_user_agent_invalid_utf8_replaced(collector, redis_client, extra):
    body = orjson.dumps({"site": "example.com", "url": "https://example.com/a", **extra})
    head = (b"POST /collect HTTP/1.1\r\nHost: example.com\r\nContent-Type: application/json\r\n"
            b"User-Agent: Mozilla/5.0 \xff\xed\xa0\x80x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body))

    assert await raw_request(collector, head, body) == b"HTTP/1.1 202 Accepted"
    [event] = await stream_events(redis_client)
    assert event.user_agent == "Mozilla/5.0 \ufffd\ufffd\ufffd\ufffdx"


async def test_pixel_referer_invalid_utf8_replaced(collector, redis_client):
    head = (b"GET /collect?site=example.com HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Mozilla/5.0\r\n"
            b"Referer: https://example.com/caf\xe9\r\nConnection: close\r\n\r\n")

    assert await raw_request(collector, head) == b"HTTP/1.1 200 OK"
    [event] = await stream_events(redis_client)
    assert event.url == "https://example.com/caf\ufffd"
    assert event.action == "/caf\ufffd"


async def test_minimal_lone_surrogate_body_not_5xx(http, collector):
    status, body, _ = await post(http, collector, b'{"a":"\\ud800"}')

    assert status == 422
    assert body["reason"] == "missing_site"


async def test_nul_escapes_removed(http, collector, redis_client):
    data = b'{"site": "example.com", "url": "https://example.com/a\\u0000b", "props": {"k\\u0000": "v\\u0000"}}'

    status, body, _ = await post(http, collector, data)

    assert status == 202, body
    [event] = await stream_events(redis_client)
    assert event.url == "https://example.com/ab"
    assert event.action == "/ab"
    assert event.props == {"k": "v"}


async def test_raw_nul_byte_rejected(http, collector):
    status, body, _ = await post(http, collector, b'{"site": "example.com", "url": "https://example.com/\x00"}')

    assert status == 400
    assert body["reason"] == "invalid_json"


async def test_future_timestamp_clamped_to_receipt(http, collector, redis_client):
    before_ms = int(time.time() * 1000)
    future = {**EVENT, "timestamp": iso(before_ms + 3_600_000)}

    status, _, _ = await post(http, collector, orjson.dumps(future))

    assert status == 202
    [event] = await stream_events(redis_client)
    assert event.timestamp_ms == event.received_ms
    assert before_ms <= event.timestamp_ms <= int(time.time() * 1000)


async def test_client_clock_corrected_with_sent_at(http, collector, redis_client):
    now_ms = int(time.time() * 1000)
    skew_ms = 2 * 3_600_000  # the client's clock runs two hours ahead
    batch = {"sent_at": iso(now_ms + skew_ms),
             "events": [{**EVENT, "timestamp": iso(now_ms + skew_ms - 60_000)},
                        {**EVENT, "timestamp": iso(now_ms + skew_ms - 120_000), "sent_at": iso(now_ms + skew_ms)}]}

    status, _, _ = await post(http, collector, orjson.dumps(batch))

    assert status == 202
    first, second = await stream_events(redis_client)
    # Corrections are rounded to 10 s steps, so a retry lands on the same time.
    assert abs(first.timestamp_ms - (now_ms - 60_000)) <= 5_000
    assert abs(second.timestamp_ms - (now_ms - 120_000)) <= 5_000
    assert first.timestamp_ms <= first.received_ms


async def test_small_clock_skew_left_alone(http, collector, redis_client):
    now_ms = int(time.time() * 1000)
    item = {**EVENT, "timestamp": iso(now_ms - 30_000), "sent_at": iso(now_ms - 1_000)}

    await post(http, collector, orjson.dumps(item))

    [event] = await stream_events(redis_client)
    assert event.timestamp_ms == now_ms - 30_000


async def test_past_timestamp_kept(http, collector, redis_client):
    await post(http, collector, orjson.dumps({**EVENT, "timestamp": "2026-01-02T03:04:05.678Z"}))

    [event] = await stream_events(redis_client)
    assert event.timestamp_ms == 1_767_323_045_678


@pytest.mark.parametrize("timestamp", ["yesterday", 1e300, "1999-12-31T23:59:59Z", True, {"at": 1}])
async def test_bad_timestamp_rejected_by_index(http, collector, timestamp):
    status, body, _ = await post(http, collector, orjson.dumps([EVENT, {**EVENT, "timestamp": timestamp}]))

    assert status == 202, body
    assert [r["index"] for r in body["rejected"]] == [1]
    assert body["rejected"][0]["reason"] == "invalid_timestamp"


async def test_unknown_site_422_names_site(http, collector, redis_client):
    before = metric("weir_collect_rejected_events_total", reason="unknown_site")

    status, body, _ = await post(http, collector, orjson.dumps({"url": "https://Unknown.Example.NET/a"}))

    assert status == 422
    assert body["reason"] == "unknown_site"
    assert "unknown site 'unknown.example.net'" in body["error"]
    assert body["rejected"][0]["index"] == 0
    assert await stream_events(redis_client) == []
    assert metric("weir_collect_rejected_events_total", reason="unknown_site") == before + 1


async def test_site_alias_maps_to_domain(http, collector, redis_client):
    await post(http, collector, orjson.dumps({"url": "https://WWW.example.com/x"}))

    [event] = await stream_events(redis_client)
    assert event.site == "example.com"


@pytest.mark.parametrize("data, reason", [(b"[]", "empty_batch"), (b'{"events": []}', "empty_batch"),
                                          (b"", "empty_body"), (b"  \n", "empty_body")])
async def test_empty_request_400(http, collector, data, reason):
    status, body, _ = await post(http, collector, data)

    assert status == 400
    assert body["reason"] == reason


async def test_mixed_batch_rejections_listed(http, collector):
    items = [EVENT, "not an object", {**EVENT, "type": "bad type!"}, {**EVENT, "type": "event"},
             {"site": "example.com"}, {**EVENT, "props": [1]}, {**EVENT, "url": "http://[::1/"}]

    status, body, _ = await post(http, collector, orjson.dumps(items))

    assert status == 202
    assert body["accepted"] == 1
    reasons = {r["index"]: r["reason"] for r in body["rejected"]}
    assert reasons == {1: "not_an_object", 2: "invalid_field", 3: "missing_field", 4: "missing_field",
                       5: "invalid_field", 6: "invalid_field"}


async def test_client_message_id_maps_to_stable_id(http, collector, redis_client):
    item = {**EVENT, "id": "client-message-1", "timestamp": "2026-01-02T03:04:05Z"}

    _, first, _ = await post(http, collector, orjson.dumps(item))
    _, second, _ = await post(http, collector, orjson.dumps(item))

    expected = str(stable_event_id("example.com", "client-message-1", 1_767_323_045_000))
    assert first["ids"] == [expected]
    assert second["ids"] == [expected]


async def test_hash_mode_keeps_fragment_route(http, collector, redis_client):
    await post(http, collector, orjson.dumps({**EVENT, "url": "https://example.com/app#/settings/profile",
                                              "hash_mode": 1}))
    await post(http, collector, orjson.dumps({**EVENT, "url": "https://example.com/app#/settings/profile"}))

    hashed, plain = await stream_events(redis_client)
    assert hashed.action == "/app#/settings/profile"
    assert plain.action == "/app"


async def test_anonymous_id_keys_visitor(http, collector, redis_client):
    await post(http, collector, orjson.dumps([{**EVENT, "anonymous_id": "a1"}, {**EVENT, "anonymous_id": "a2"},
                                              {**EVENT, "anonymous_id": "a1"}]))

    first, second, third = await stream_events(redis_client)
    assert first.visitor_id == third.visitor_id
    assert first.visitor_id != second.visitor_id


async def test_item_ip_ignored_on_collect(http, collector, redis_client):
    await post(http, collector, orjson.dumps({**EVENT, "ip": "203.0.113.9"}))

    [event] = await stream_events(redis_client)
    assert event.ip == "127.0.0.1"


async def test_pixel_returns_uncached_gif(http, collector, redis_client):
    query = {"site": "example.com", "url": "https://example.com/no-js", "r": "https://ref.example/",
             "p": '{"variant": "b"}'}

    async with http.get(collector.route("/collect"), params=query) as response:
        data = await response.read()

    assert response.status == 200
    assert response.headers["Content-Type"] == "image/gif"
    assert data[:6] == b"GIF89a"
    assert len(data) == 42
    assert "no-store" in response.headers["Cache-Control"]
    assert response.headers["Expires"] == "0"
    [event] = await stream_events(redis_client)
    assert (event.site, event.type, event.action) == ("example.com", "pageview", "/no-js")
    assert event.referrer == "https://ref.example/"
    assert event.props == {"variant": "b"}


async def test_pixel_takes_page_from_referer(http, collector, redis_client):
    async with http.get(collector.route("/collect"), headers={"Referer": "https://www.example.com/docs/a"}) as response:
        assert response.status == 200

    [event] = await stream_events(redis_client)
    assert (event.site, event.action) == ("example.com", "/docs/a")


async def test_pixel_custom_event(http, collector, redis_client):
    query = {"d": "example.com", "u": "https://example.com/", "t": "event", "n": "Newsletter"}
    async with http.get(collector.route("/collect"), params=query) as response:
        assert response.status == 200

    [event] = await stream_events(redis_client)
    assert (event.type, event.action) == ("event", "Newsletter")


async def test_pixel_invalid_props_400(http, collector):
    query = {"site": "example.com", "url": "https://example.com/", "props": "{not json"}
    async with http.get(collector.route("/collect"), params=query) as response:
        body = await response.json()

    assert response.status == 400
    assert body["reason"] == "invalid_json"


async def test_accepted_events_counted(http, collector):
    before_received = metric("analytics_events_received_total", type="pageview")
    before_queued = metric("analytics_events_queued_total")
    before_batches = metric("analytics_batch_size_histogram_count")
    before_requests = metric("weir_collect_requests_total", route="/collect", status="202")

    await post(http, collector, orjson.dumps([EVENT, EVENT, {**EVENT, "type": "event", "name": "x"}]))

    assert metric("analytics_events_received_total", type="pageview") == before_received + 2
    assert metric("analytics_events_queued_total") == before_queued + 3
    assert metric("analytics_batch_size_histogram_count") == before_batches + 1
    assert metric("weir_collect_requests_total", route="/collect", status="202") == before_requests + 1


async def test_metrics_endpoint_lists_collector_metrics(http, collector):
    await post(http, collector, orjson.dumps(EVENT))

    async with http.get(collector.route("/metrics")) as response:
        text = await response.text()

    for name in ("analytics_events_received_total", "analytics_events_queued_total",
                 "analytics_batch_size_histogram_bucket", "weir_collect_rejected_events_total",
                 "weir_collect_stream_backlog_entries", "weir_collect_request_seconds_bucket"):
        assert name in text, name


async def test_health_reports_redis_ok(http, collector):
    async with http.get(collector.route("/health")) as response:
        body = await response.json()

    assert response.status == 200
    assert body["status"] == "healthy"
    assert body["checks"] == {"redis": "ok"}
    assert set(body) == {"status", "version", "uptime", "checks"}


async def test_fuzzed_bodies_never_5xx(http, collector):
    """Mutated and random bodies get a 2xx or 4xx response, never a server error."""
    rng = random.Random(20261204)
    seeds = [orjson.dumps(EVENT), orjson.dumps({"events": [EVENT, {**EVENT, "type": "event", "name": "n"}]}),
             b'{"site":"example.com","url":"https://example.com/\\ud800","timestamp":1e308}']
    statuses = set()
    for _ in range(250):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            position = rng.randrange(len(data))
            action = rng.random()
            if action < 0.4:
                data[position] = rng.randrange(256)
            elif action < 0.7:
                data.insert(position, rng.choice(b'"\\{}[],:0u\x00\xff\xed'))
            else:
                del data[position]
        status, _, _ = await post(http, collector, bytes(data))
        statuses.add(status)
        assert status < 500, bytes(data)
    assert statuses <= {202, 400, 422}


async def test_long_user_agent_header_truncated(http, collector, redis_client):
    user_agent = "Mozilla/5.0 " + "a" * 8_000

    status, body, _ = await post(http, collector, orjson.dumps(EVENT), **{"User-Agent": user_agent})

    assert status == 202, body
    [event] = await stream_events(redis_client)
    assert event.user_agent == user_agent[:2048]
    assert len(event.user_agent) == 2048
