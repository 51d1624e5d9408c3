"""Requests that misbehave at the connection level: stalled or cut-off bodies, broken chunked
framing, `Expect: 100-continue`, and paths or methods that no route takes."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
import pytest
from aiohttp.http_exceptions import BadHttpMessage

from ingest.body import MAX_BODY_BYTES
from ingest.intake import INTAKE_KEY
from streams.keys import EVENTS_STREAM
from tests.ingest.conftest import metric, stream_events
from weir.logs import MalformedRequestFilter

HEAD = b"POST /collect HTTP/1.1\r\nHost: example.com\r\nContent-Type: application/json\r\n"
EVENT = orjson.dumps({"site": "example.com", "path": "/a"})
UNSUPPORTED_TYPE_HEAD = b"POST /collect HTTP/1.1\r\nHost: example.com\r\nContent-Type: image/png\r\n"
EXPECT_OVER_LIMIT = b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (MAX_BODY_BYTES + 1)
"""The end of a request's headers declaring a body over the limit and waiting for 100 Continue."""


async def connect(collector) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = collector.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP response with a Content-Length body; return status, headers and body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines if line)
    body = await asyncio.wait_for(reader.readexactly(int(headers["Content-Length"])), 10)
    return int(status_line.split(" ")[1]), headers, body


def server_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def reuse_after_response(collector, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send the headers `head` without a body and read the response. Unless it closes the
    connection, send a valid event on the same connection. Return the status, the headers and
    every byte that followed, which is b"" when the connection closed with nothing more."""
    reader, writer = await connect(collector)
    writer.write(head)
    await writer.drain()
    status, headers, _ = await read_response(reader)
    if headers.get("Connection") != "close":
        writer.write(HEAD + b"Content-Length: %d\r\n\r\n" % len(EVENT) + EVENT)
        await writer.drain()
    rest = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return status, headers, rest


async def assert_next_request_accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(HEAD + b"Content-Length: %d\r\n\r\n" % len(EVENT) + EVENT)
    await writer.drain()
    status, _, body = await read_response(reader)
    assert status == 202, body


async def test_stalled_body_408_and_closed(make_collector, sites, redis_client):
    collector = await make_collector(BODY_TIMEOUT_S=0.5)
    before = metric("weir_collect_rejected_events_total", reason="body_timeout")
    reader, writer = await connect(collector)
    started = time.monotonic()

    # The headers promise 100 bytes and only 7 come.
    writer.write(HEAD + b"Content-Length: 100\r\n\r\n" + EVENT[:7])
    await writer.drain()
    status, headers, body = await read_response(reader)
    elapsed_s = time.monotonic() - started
    closed = await asyncio.wait_for(reader.read(), 5)
    writer.close()

    assert status == 408
    assert orjson.loads(body) == {
        "error": "request body did not arrive within 0.5 s; send the whole body at once, "
                 "with a Content-Length that matches it",
        "reason": "body_timeout",
    }
    assert headers["Connection"] == "close"
    assert closed == b""
    assert 0.5 <= elapsed_s < 3
    assert metric("weir_collect_rejected_events_total", reason="body_timeout") == before + 1
    assert await stream_events(redis_client) == []


async def test_slow_body_parts_accepted(make_collector, sites, redis_client):
    collector = await make_collector(BODY_TIMEOUT_S=2)
    reader, writer = await connect(collector)

    writer.write(HEAD + b"Content-Length: %d\r\n\r\n" % len(EVENT) + EVENT[:5])
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.write(EVENT[5:])
    status, _, body = await read_response(reader)
    writer.close()

    assert status == 202
    assert [e.id for e in await stream_events(redis_client)] == orjson.loads(body)["ids"]


async def test_disconnect_mid_body_counted_quietly(collector, redis_client, caplog):
    before = metric("weir_collect_rejected_events_total", reason="client_disconnected")
    requests_before = metric("weir_collect_requests_total", route="/collect", status="499")
    reader, writer = await connect(collector)

    writer.write(HEAD + b"Content-Length: 100\r\n\r\n" + EVENT[:7])
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.transport.abort()
    for _ in range(100):
        if metric("weir_collect_rejected_events_total", reason="client_disconnected") > before:
            break
        await asyncio.sleep(0.02)

    assert metric("weir_collect_rejected_events_total", reason="client_disconnected") == before + 1
    assert metric("weir_collect_requests_total", route="/collect", status="499") == requests_before + 1
    assert server_errors(caplog) == []
    assert await stream_events(redis_client) == []


async def test_malformed_chunked_400_one_log_line(collector, redis_client, caplog):
    # The whole request arrives in one packet, so aiohttp's parser rejects it before any handler.
    reader, writer = await connect(collector)

    writer.write(HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
    await writer.drain()
    status, _, body = await read_response(reader)
    writer.close()
    warnings = [r for r in caplog.records if r.name == "aiohttp.server"]

    assert status == 400
    assert b"Invalid character in chunk size" in body
    assert server_errors(caplog) == []
    assert [(r.levelname, r.exc_info) for r in warnings] == [("WARNING", None)]
    assert warnings[0].getMessage() == ("Error handling request from 127.0.0.1: malformed request "
                                        "error=Invalid character in chunk size: b'zz' ^")
    assert await stream_events(redis_client) == []


async def test_bad_chunk_later_408_by_timeout(make_collector, sites, redis_client, caplog):
    # The bad chunk comes after the handler started reading the body. aiohttp 3.14's parser
    # then queues a 400 for after this request and never fails the body being read, so the
    # body timeout is what responds.
    collector = await make_collector(BODY_TIMEOUT_S=0.5)
    reader, writer = await connect(collector)

    writer.write(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(b"zz\r\nabc\r\n0\r\n\r\n")
    status, _, body = await read_response(reader)
    writer.close()

    assert status == 408
    assert orjson.loads(body)["reason"] == "body_timeout"
    assert server_errors(caplog) == []
    assert await stream_events(redis_client) == []


async def test_expect_over_limit_413_without_100(collector):
    before = metric("weir_collect_rejected_events_total", reason="body_too_large")
    reader, writer = await connect(collector)

    writer.write(HEAD + EXPECT_OVER_LIMIT)
    await writer.drain()
    status, _, body = await read_response(reader)
    writer.close()

    assert status == 413
    assert orjson.loads(body) == {"error": f"body is {MAX_BODY_BYTES + 1} bytes; the limit is {MAX_BODY_BYTES}",
                                  "reason": "body_too_large"}
    assert metric("weir_collect_rejected_events_total", reason="body_too_large") == before + 1


# The 413 is sent before any body, so a client that waited for 100 sends none. Without
# Connection: close the client may reuse the connection, and its next request is read as the body.
# The content type is checked before the body's size, so a 415 can come first and must close too.
@pytest.mark.parametrize(("head", "expected_status"), [(HEAD, 413), (UNSUPPORTED_TYPE_HEAD, 415)])
async def test_expect_over_limit_closes_connection(collector, redis_client, head, expected_status):
    status, headers, rest = await reuse_after_response(collector, head + EXPECT_OVER_LIMIT)

    assert status == expected_status
    assert headers.get("Connection") == "close"
    assert rest == b""
    assert await stream_events(redis_client) == []


async def test_expect_over_limit_503_closes_connection(make_collector, sites, redis_client):
    # Backpressure is checked before the body's size too.
    collector = await make_collector(STREAM_MAX_LENGTH=3)
    for _ in range(4):
        await redis_client.xadd(EVENTS_STREAM, {"v": "1", "events": "[]"})
    assert await collector.app[INTAKE_KEY].backlog.refresh() == 4

    status, headers, rest = await reuse_after_response(collector, HEAD + EXPECT_OVER_LIMIT)

    assert status == 503
    assert headers.get("Connection") == "close"
    assert rest == b""


async def test_expect_within_limit_100_then_202(collector, redis_client):
    reader, writer = await connect(collector)

    writer.write(HEAD + b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(EVENT))
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.write(EVENT)
    status, _, body = await read_response(reader)
    writer.close()

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert status == 202
    assert [e.id for e in await stream_events(redis_client)] == orjson.loads(body)["ids"]


async def test_other_expectation_ignored(http, collector, redis_client):
    async with http.post(collector.route("/collect"), data=EVENT, headers={"Expect": "something-else"}) as response:
        assert response.status == 202

    assert len(await stream_events(redis_client)) == 1


async def test_disconnect_before_100_no_traceback(collector, caplog):
    # Each client sends headers with Expect: 100-continue and disconnects before the 100 is written.
    # That is the client's doing, so it must not log a server error.
    for _ in range(10):
        _, writer = await connect(collector)
        writer.write(HEAD + b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(EVENT))
        writer.transport.abort()
    await asyncio.sleep(0.3)

    assert server_errors(caplog) == []


# The list form contains the 100-continue expectation too, so that client also waits for the 100.
@pytest.mark.parametrize("expect", [b"100-continue", b"100-continue, x-foo"])
async def test_415_after_100_keeps_connection(collector, redis_client, expect):
    reader, writer = await connect(collector)
    writer.write(UNSUPPORTED_TYPE_HEAD + b"Content-Length: %d\r\nExpect: %b\r\n\r\n" % (len(EVENT), expect))
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    # The 100 went out, so this client sends its body.
    writer.write(EVENT)
    await writer.drain()
    status, headers, _ = await read_response(reader)

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert status == 415
    assert headers.get("Connection") != "close"
    await assert_next_request_accepted(reader, writer)
    assert len(await stream_events(redis_client)) == 1
    writer.close()


async def test_415_late_body_keeps_connection(collector, redis_client):
    # A client may write the headers and the body separately, so the handler can run before a
    # small body arrives.
    reader, writer = await connect(collector)
    writer.write(UNSUPPORTED_TYPE_HEAD + b"Content-Length: %d\r\n\r\n" % len(EVENT))
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(EVENT)
    await writer.drain()
    status, headers, _ = await read_response(reader)

    assert status == 415
    assert headers.get("Connection") != "close"
    await assert_next_request_accepted(reader, writer)
    writer.close()


async def test_unknown_path_404_json(http, collector):
    async with http.post(collector.route("/colect"), data=EVENT) as response:
        status, body = response.status, await response.json()

    assert status == 404
    assert body == {"error": "no route for /colect; events go to POST /collect, POST /api/event or POST /v1/batch",
                    "reason": "not_found"}


async def test_wrong_method_405_json_with_allow(http, collector):
    async with http.put(collector.route("/collect"), data=EVENT) as response:
        status, body, allow = response.status, await response.json(), response.headers["Allow"]

    assert status == 405
    assert body == {"error": "PUT is not allowed on /collect; use GET or OPTIONS or POST",
                    "reason": "method_not_allowed", "allowed": ["GET", "OPTIONS", "POST"]}
    assert allow == "GET, OPTIONS, POST"


async def test_head_pixel_405_stores_nothing(http, collector, redis_client):
    # Link checkers and uptime monitors send HEAD; each would otherwise count as a pageview.
    async with http.head(collector.route("/collect?site=example.com&path=/probe")) as response:
        status, allow = response.status, response.headers["Allow"]

    assert status == 405
    assert allow == "GET, OPTIONS, POST"
    assert await stream_events(redis_client) == []


async def test_unknown_path_long_path_cut(http, collector):
    async with http.get(collector.route("/" + "a" * 300)) as response:
        status, body = response.status, await response.json()

    assert status == 404
    assert body["error"] == ("no route for /" + "a" * 199 + "...; events go to POST /collect, "
                             "POST /api/event or POST /v1/batch")


async def test_unknown_path_expect_over_limit_closes(collector):
    head = b"POST /colect HTTP/1.1\r\nHost: x\r\n" + EXPECT_OVER_LIMIT

    status, headers, rest = await reuse_after_response(collector, head)

    assert status == 404
    assert headers["Connection"] == "close"
    assert rest == b""


async def test_unknown_path_expect_gets_no_100(collector):
    reader, writer = await connect(collector)

    writer.write(b"POST /colect HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
    await writer.drain()
    status, headers, _ = await read_response(reader)
    writer.close()

    assert status == 404
    assert headers["Connection"] == "close"


def log_record(level: int, error: Exception | None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    return logging.LogRecord("aiohttp.server", level, __file__, 1, "Error handling request from %s", ("10.0.0.1",),
                             exc_info)


def test_log_filter_lowers_error_to_warning():
    record = log_record(logging.ERROR, BadHttpMessage("Invalid header value"))

    assert MalformedRequestFilter().filter(record) is True
    assert record.levelname == "WARNING"
    assert record.exc_info is None
    assert record.getMessage() == "Error handling request from 10.0.0.1: malformed request error=Invalid header value"


def test_log_filter_keeps_debug_level():
    record = log_record(logging.DEBUG, BadHttpMessage("Received HTTPS traffic on an HTTP port"))

    MalformedRequestFilter().filter(record)

    assert record.levelname == "DEBUG"


def test_log_filter_leaves_other_errors():
    error = ValueError("not an HTTP parse error")
    record = log_record(logging.ERROR, error)

    MalformedRequestFilter().filter(record)

    assert record.levelname == "ERROR"
    assert record.exc_info[1] is error
    assert record.getMessage() == "Error handling request from 10.0.0.1"


def test_log_filter_cuts_long_detail():
    record = log_record(logging.ERROR, BadHttpMessage("Invalid method " + "x" * 1000))

    MalformedRequestFilter().filter(record)

    assert record.getMessage() == ("Error handling request from 10.0.0.1: malformed request error=Invalid method "
                                   + "x" * 285 + "...")
