"""Weir's own event routes: `POST /collect` (JSON) and `GET /collect` (a pixel for pages without JavaScript).

POST body forms, each sent as application/json, text/plain or with no content type, plain or
gzip-compressed:

| form | example |
|---|---|
| one event | `{"site": "example.com", "url": "https://example.com/a"}` |
| a batch | `{"events": [{...}, {...}], "sent_at": "2026-12-04T10:00:00Z"}` |
| a bare array | `[{...}, {...}]` |

`sent_at` (batch or event) is the client's clock when it sent, used to correct event times.
The response is 202 `{"accepted", "ids", "rejected"}`, where each rejected event is listed by
its index with a reason; the rest of the batch is kept.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from aiohttp import web

from ingest.body import RequestRejected, check_content_type, parse_json, read_body, received_body
from ingest.intake import INTAKE_KEY, JSON_HEADERS, event_route, header_text, json_response
from ingest.validate import InvalidEvent, parse_timestamp

PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
"""A transparent 1x1 GIF (42 bytes)."""
PIXEL_HEADERS = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}
PIXEL_FIELDS = {
    "site": "site", "domain": "site", "d": "site",
    "url": "url", "u": "url",
    "type": "type", "t": "type",
    "name": "name", "n": "name",
    "referrer": "referrer", "r": "referrer",
    "path": "path", "user_id": "user_id", "id": "id",
}
"""Query parameters of `GET /collect` and the event fields they set; `props`/`p` is a JSON object."""


def payload_items(payload: Any) -> tuple[list, Any]:
    """Return the events of a payload and the batch's `sent_at`, if it has one."""
    if isinstance(payload, dict):
        # One event, as the tracker sends it, is the commonest payload, so it is checked first.
        events = payload.get("events")
        if isinstance(events, list):
            return events, payload.get("sent_at")
        return [payload], None
    if isinstance(payload, list):
        return payload, None
    return [payload], None


@event_route("/collect")
async def post_collect(request: web.Request) -> web.Response:
    """Accept one event or a batch as JSON; respond 202 with the ids and the rejected events."""
    intake = request.app[INTAKE_KEY]
    intake.check_backpressure()
    check_content_type(request)
    body = received_body(request)
    if body is None:
        body = await read_body(request)
    items, sent_at = payload_items(parse_json(body))

    context = intake.context(request, None if sent_at is None else _batch_sent_at(sent_at))
    events, rejections = await intake.accept(items, context)
    if len(events) == 1 and not rejections:
        return accepted_one_response(events[0].id)
    return json_response(
        {"accepted": len(events), "ids": [e.id for e in events], "rejected": [r.as_dict() for r in rejections]},
        202,
    )


def accepted_one_response(event_id: str) -> web.Response:
    """Build the 202 response for one accepted event, byte for byte as json_response builds it.

    Event ids are UUID text (hex digits and hyphens), which needs no JSON escapes.
    """
    body = b'{"accepted":1,"ids":["' + event_id.encode() + b'"],"rejected":[]}'
    return web.Response(body=body, status=202, headers=JSON_HEADERS)


@event_route("/collect")
async def get_collect(request: web.Request) -> web.Response:
    """Accept one event from query parameters; respond with a transparent 1x1 GIF that is never cached."""
    intake = request.app[INTAKE_KEY]
    intake.check_backpressure()
    item = _pixel_item(request)
    await intake.accept([item], intake.context(request))
    return web.Response(body=PIXEL_GIF, content_type="image/gif", headers=PIXEL_HEADERS)


def _pixel_item(request: web.Request) -> dict[str, Any]:
    item: dict[str, Any] = {}
    for name, value in request.query.items():
        field = PIXEL_FIELDS.get(name)
        if field is not None and field not in item:
            item[field] = value
    props = request.query.get("props", request.query.get("p"))
    if props:
        try:
            item["props"] = orjson.loads(props)
        except orjson.JSONDecodeError as error:
            raise RequestRejected(400, "invalid_json",
                                  f"query parameter props is not JSON: {error.msg} at character {error.pos}") from None
    # An <img> request carries the page that shows it as its Referer.
    if "url" not in item and "path" not in item and request.headers.get("Referer"):
        item["url"] = header_text(request.headers["Referer"])
    return item


def _batch_sent_at(value: Any) -> int | None:
    try:
        return parse_timestamp(value)
    except InvalidEvent as error:
        raise RequestRejected(400, "invalid_timestamp", f"sent_at: {error}") from None
