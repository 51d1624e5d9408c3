"""Read a request body: its content type, its encoding (gzip, deflate) and its JSON.

Every failure raises RequestRejected with the HTTP status, a reason code for the rejection
counter, and a message that names the value and the fix. The body limit applies twice: to
the bytes received and to the bytes after decompression, so a small gzip bomb gets 413.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import zlib
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
CONTINUE_WITHHELD = web.RequestKey("continue_withheld", bool)
"""Set on a request whose `100 Continue` was held back: its client sends no body, so any response
must close the connection."""
BODY_TIMEOUT_KEY = web.AppKey("body_timeout_s", float)
"""Seconds a request may take to deliver its body once its headers have arrived (BODY_TIMEOUT_S)."""
DEFAULT_BODY_TIMEOUT_S = 10.0
CLIENT_CLOSED_REQUEST = 499
"""Status recorded for a request whose client left mid-body, as nginx logs such requests. The
response is never received, but the request counter then shows these apart from bad input (400)."""
JSON_CONTENT_TYPES = frozenset({
    "", "application/json", "text/plain", "application/octet-stream", "application/x-www-form-urlencoded",
})
"""Content types whose body is read as JSON. `text/plain` is what navigator.sendBeacon and fetch
without a preflight send; HTTP libraries label raw bytes `application/octet-stream`, and
`curl -d` labels its body `application/x-www-form-urlencoded`."""

_COMMON_CONTENT_TYPES = frozenset({"application/json", "text/plain", "text/plain;charset=UTF-8"})
"""Exact header values accepted without parsing them (sendBeacon sends the last one)."""
_LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_INT64_MIN, _INT64_MAX = -(2**63), 2**64 - 1


class RequestRejected(Exception):
    """A whole request that is not accepted; the handler responds with `status` and the message.

    `count` is how many events the rejection counter adds under `reason`: 1 for a request
    whose events were never read, 0 when each event was already counted by its own reason.
    `close` asks for the connection to be closed after the answer, because the rest of the body
    will not come. `extra` contains more fields of the error body.
    """

    def __init__(self, status: int, reason: str, message: str, *, count: int = 1, close: bool = False,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.count = count
        self.close = close
        self.extra = extra


def check_content_type(request: web.Request) -> None:
    """Raise RequestRejected (415) unless the body is declared as JSON, plain text or nothing."""
    header = request.headers.get("Content-Type")
    if header is None or header in _COMMON_CONTENT_TYPES:
        return
    content_type = request.content_type
    if content_type in JSON_CONTENT_TYPES or content_type.endswith("+json"):
        return
    raise RequestRejected(
        415, "unsupported_content_type",
        f"content type {content_type!r} is not accepted; send JSON as application/json or text/plain",
        accepted=sorted(t for t in JSON_CONTENT_TYPES if t),
    )


def received_body(request: web.Request, limit_bytes: int = MAX_BODY_BYTES) -> bytes | None:
    """Return the request body, decompressed, when all of it has arrived; else None, and the caller
    awaits `read_body`.

    An event's body has nearly always arrived whole before its handler runs, and taking it here
    skips request.read()'s coroutine and its copies of the body.
    """
    content = request.content
    if not content.is_eof():
        content_length = request.content_length
        if content_length is not None and content_length > limit_bytes:
            # Rejected before any of the body is read, and a client that waited for 100 Continue
            # sends none, so the connection cannot carry another request.
            raise _too_large(f"body is {content_length} bytes; the limit is {limit_bytes}", close=True)
        return None
    try:
        body = content.read_nowait()
    except (RequestPayloadError, BadHttpMessage) as error:
        raise _unreadable(error) from None
    if len(body) > limit_bytes:
        raise _too_large(f"body is {len(body)} bytes; the limit is {limit_bytes}")
    return _decoded(request, body, limit_bytes)


async def read_body(request: web.Request, limit_bytes: int = MAX_BODY_BYTES) -> bytes:
    """Return the request body, decompressed when its Content-Encoding is gzip or deflate.

    The app turns aiohttp's own decompression off (`auto_decompress=False`), so the bytes read
    here are the bytes sent. A body that takes longer than BODY_TIMEOUT_S to arrive gets 408,
    so a client that stalls mid-body (or declares more bytes than it sends) cannot hold a
    connection and a handler forever.
    """
    body = received_body(request, limit_bytes)
    if body is not None:
        return body
    timeout_s = request.app.get(BODY_TIMEOUT_KEY, DEFAULT_BODY_TIMEOUT_S)
    try:
        async with asyncio.timeout(timeout_s):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(f"body is over the limit of {limit_bytes} bytes") from None
    except (RequestPayloadError, BadHttpMessage) as error:
        raise _unreadable(error) from None
    except TimeoutError:
        raise RequestRejected(408, "body_timeout",
                              f"request body did not arrive within {timeout_s:g} s; send the whole body at once, "
                              "with a Content-Length that matches it", close=True) from None
    except ConnectionError:
        # The client is gone and will never read the response. Counting the rejection keeps the
        # loss visible, and one log line replaces aiohttp's traceback of an unhandled error.
        logger.info("client disconnected before sending the whole body path=%s peer=%s", request.path, request.remote)
        raise RequestRejected(CLIENT_CLOSED_REQUEST, "client_disconnected",
                              "the client closed the connection before sending the whole body", close=True) from None
    return _decoded(request, body, limit_bytes)


def expects_continue(request: web.Request) -> bool:
    """Return whether the request waits for `100 Continue`: `100-continue` is one of its Expect values."""
    expect = request.headers.get("Expect")
    if expect is None or request.version < (1, 1):
        return False
    return any(value.strip().lower() == "100-continue" for value in expect.split(","))


async def expect_nothing(request: web.Request) -> None:
    """Send no `100 Continue`, for a route that rejects every request without reading its body."""
    if expects_continue(request):
        request[CONTINUE_WITHHELD] = True


async def expect_continue(request: web.Request) -> None:
    """Send `100 Continue` to `Expect: 100-continue` only when the declared body is within the limit.

    Otherwise nothing is sent here and the handler responds 413 through its route's error
    format and counters, so a client never sends a body that would be rejected. Any other
    expectation is ignored, as RFC 9110 allows, and the request is handled as if it had none.
    """
    if not expects_continue(request):
        return
    content_length = request.content_length
    if content_length is not None and content_length > MAX_BODY_BYTES:
        request[CONTINUE_WITHHELD] = True
        return
    try:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    except ConnectionError:
        # The client left before the 100 went out. The handler's body read then fails the same
        # way and counts it as client_disconnected.
        return
    # The final response's size is counted from here, as in aiohttp's default handler.
    request.writer.output_size = 0


def _decoded(request: web.Request, body: bytes, limit_bytes: int) -> bytes:
    encoding = request.headers.get("Content-Encoding")
    if encoding is None:
        return body
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return _decompress(body, zlib.MAX_WBITS | 16, encoding, limit_bytes)
    if encoding == "deflate":
        # RFC 9110 deflate is the zlib format, but some clients send raw deflate; accept both.
        wbits = zlib.MAX_WBITS if body[:1] and (body[0] & 0x0F) == 8 else -zlib.MAX_WBITS
        return _decompress(body, wbits, encoding, limit_bytes)
    raise RequestRejected(415, "unsupported_content_encoding",
                          f"content encoding {encoding!r} is not supported; send gzip, deflate or none")


def _unreadable(error: Exception) -> RequestRejected:
    return RequestRejected(400, "invalid_body", f"request body could not be read: {error}")


def _decompress(body: bytes, wbits: int, encoding: str, limit_bytes: int) -> bytes:
    """Inflate `body`, every gzip member of it, producing at most `limit_bytes`."""
    parts: list[bytes] = []
    produced = 0
    remaining = body
    try:
        while remaining:
            decompressor = zlib.decompressobj(wbits)
            chunk = decompressor.decompress(remaining, limit_bytes - produced + 1)
            produced += len(chunk)
            if produced > limit_bytes or decompressor.unconsumed_tail:
                raise _too_large(f"decompressed body is over the limit of {limit_bytes} bytes")
            parts.append(chunk)
            if not decompressor.eof:
                raise RequestRejected(400, "invalid_body", f"{encoding} body is truncated")
            remaining = decompressor.unused_data
    except zlib.error as error:
        raise RequestRejected(400, "invalid_body", f"{encoding} body could not be decompressed: {error}") from None
    return b"".join(parts)


def _too_large(message: str, close: bool = False) -> RequestRejected:
    return RequestRejected(413, "body_too_large", message, close=close)


def parse_json(body: bytes) -> Any:
    """Decode a JSON body; raise RequestRejected (400) naming the position of the first error.

    Lone UTF-16 surrogates escaped as `\\uD800` are legal JSON text but cannot be stored as
    UTF-8, so they are replaced with U+FFFD. Bytes that are not UTF-8 are rejected.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        # Checked only now, because strip() copies the body: orjson rejects an empty or
        # whitespace-only body too.
        if not body.strip():
            raise RequestRejected(400, "empty_body",
                                  "request body is empty; send a JSON object or array of events") from None
        if _LONE_SURROGATE_ESCAPE.search(body) and "surrogate" in error.msg and "UTF-8" not in error.msg:
            return _parse_with_lone_surrogates(body)
        raise _invalid_json(body, error.pos, error.msg) from None


def _invalid_json(body: bytes, position: int, detail: str) -> RequestRejected:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        return RequestRejected(400, "invalid_utf8", f"body is not valid UTF-8 at byte {error.start}",
                               position=error.start)
    return RequestRejected(400, "invalid_json", f"invalid JSON at character {position}: {detail}", position=position)


def _parse_with_lone_surrogates(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestRejected(400, "invalid_utf8", f"body is not valid UTF-8 at byte {error.start}",
                              position=error.start) from None
    try:
        value = json.loads(text, parse_int=_parse_int, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise RequestRejected(400, "invalid_json", f"invalid JSON at character {error.pos}: {error.msg}",
                              position=error.pos) from None
    return _replace_surrogates(value)


def _parse_int(text: str) -> int | float:
    # orjson, which encodes the event later, takes only 64-bit integers, as its decoder does.
    number = int(text)
    return number if _INT64_MIN <= number <= _INT64_MAX else float(number)


def _reject_constant(name: str) -> None:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    return value
