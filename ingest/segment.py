"""Segment's HTTP Tracking API, so Segment's SDKs can send to Weir by changing their host.

Routes: `POST /v1/track`, `/v1/page`, `/v1/screen`, `/v1/identify`, `/v1/group`, `/v1/alias`,
and `/v1/batch` (also as `/v1/import`). The write key comes from the body (`writeKey`) or
from HTTP Basic authentication (the key as user name, no password), and SEGMENT_WRITE_KEYS
maps it to the site the events belong to.

How a message becomes a Weir event:

| Segment | Weir `type` | Weir `name` | props |
|---|---|---|---|
| track | event | `event` | `properties` |
| page | pageview | the path of `properties.url` / `context.page.url` | `properties` with `name`, `category` |
| screen | screen | `name` | `properties` |
| identify | identify | identify | `traits` |
| group | group | `groupId` | `traits` |
| alias | alias | alias | `previous_id` |

`messageId` becomes the event's stable id, so a retried message is stored once. `userId`
is the event's user id; `anonymousId` (else `userId`) keys the visitor id, because a server
sends for all of its users from one address. `context.ip` and `context.userAgent` are used
when present. Responses are 200 `{"success": true, ...}`; errors carry Segment's `code` and
`message` fields beside Weir's `error` and `reason`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from typing import Any

from aiohttp import web

from ingest.body import RequestRejected, check_content_type, expect_continue, parse_json, read_body
from ingest.intake import INTAKE_KEY, event_route, json_response, retry_headers
from ingest.validate import MAX_ID_CHARS, InvalidEvent, parse_timestamp

WRITE_KEYS_KEY = web.AppKey("segment_write_keys", dict)
SINGLE_MESSAGE_TYPES = ("track", "page", "screen", "identify", "group", "alias")


def render_segment_error(rejected: RequestRejected) -> web.Response:
    """Render a rejection with Segment's `code` and `message` and Weir's `error` and `reason`."""
    body = {"success": False, "code": rejected.reason, "message": rejected.message,
            "error": rejected.message, "reason": rejected.reason, **rejected.extra}
    headers = retry_headers(rejected) or {}
    if rejected.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="segment write key"'
    return json_response(body, rejected.status, headers)


def add_segment_routes(app: web.Application, write_keys: dict[str, str]) -> None:
    """Register the Segment routes on `app`, mapping write keys to site domains."""
    app[WRITE_KEYS_KEY] = write_keys
    for message_type in SINGLE_MESSAGE_TYPES:
        app.router.add_post(f"/v1/{message_type}", _handler_for(message_type), expect_handler=expect_continue)
    app.router.add_post("/v1/batch", _handler_for(None), expect_handler=expect_continue)
    app.router.add_post("/v1/import", _handler_for(None), expect_handler=expect_continue)


def _handler_for(message_type: str | None):
    """Return the handler of one route; `message_type` None reads a batch."""

    @event_route(f"/v1/{message_type or 'batch'}", render_segment_error)
    async def handle(request: web.Request) -> web.Response:
        return await _accept_messages(request, message_type)

    return handle


async def _accept_messages(request: web.Request, message_type: str | None) -> web.Response:
    intake = request.app[INTAKE_KEY]
    intake.check_backpressure()
    check_content_type(request)
    body = parse_json(await read_body(request))
    if not isinstance(body, dict):
        raise RequestRejected(400, "not_an_object", f"the body must be a JSON object, got {type(body).__name__}")
    site = _site_for(request, body)

    if message_type is None:
        messages = body.get("batch")
        if not isinstance(messages, list):
            raise RequestRejected(400, "invalid_field", "a batch needs `batch`: an array of messages")
    else:
        messages = [body]
    sent_at_ms = _sent_at(body.get("sentAt"))
    batch_context = body.get("context") if isinstance(body.get("context"), dict) else {}

    context = intake.context(request, sent_at_ms=sent_at_ms, trust_item_ip=True)
    translate = functools.partial(segment_item, site=site, default_type=message_type, batch_context=batch_context)
    events, rejections = await intake.accept(messages, context, translate)
    return json_response({"success": True, "accepted": len(events), "rejected": [r.as_dict() for r in rejections]},
                         200)


def _site_for(request: web.Request, body: dict) -> str:
    write_keys = request.app[WRITE_KEYS_KEY]
    key = body.get("writeKey") or _basic_user(request)
    if not write_keys:
        raise RequestRejected(401, "invalid_write_key",
                              "the Segment API is off: set SEGMENT_WRITE_KEYS to map write keys to sites")
    if not key or not isinstance(key, str):
        raise RequestRejected(401, "missing_write_key",
                              "missing write key: send `writeKey` in the body or as the HTTP Basic user name")
    site = write_keys.get(key)
    if site is None:
        # The key itself is a secret of the sender's, so the message leaves it out.
        raise RequestRejected(401, "invalid_write_key", "unknown write key: add it to SEGMENT_WRITE_KEYS as KEY=DOMAIN")
    return site


def _basic_user(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "basic" or not credentials:
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise RequestRejected(401, "invalid_write_key", "the Authorization header is not valid HTTP Basic") from None
    return decoded.partition(":")[0]


def _sent_at(value: Any) -> int | None:
    try:
        return parse_timestamp(value)
    except InvalidEvent as error:
        raise RequestRejected(400, "invalid_timestamp", f"sentAt: {error}") from None


def segment_item(message: Any, *, site: str, default_type: str | None, batch_context: dict) -> dict[str, Any]:
    """Translate one Segment message into Weir's event fields; raise InvalidEvent if it cannot be."""
    if not isinstance(message, dict):
        raise InvalidEvent("not_an_object", f"a message must be a JSON object, got {type(message).__name__}")
    kind = message.get("type") or default_type
    own_context = message.get("context")
    context = {**batch_context, **own_context} if isinstance(own_context, dict) else batch_context

    user_id = _id_text(message, "userId")
    anonymous_id = _id_text(message, "anonymousId")
    item: dict[str, Any] = {
        "site": site,
        "id": _id_text(message, "messageId"),
        "timestamp": message.get("timestamp") or message.get("originalTimestamp"),
        "sent_at": message.get("sentAt"),
        "user_id": user_id,
        "anonymous_id": anonymous_id or (_user_key(user_id) if user_id else None),
        "user_agent": _text(context.get("userAgent")),
        "ip": _text(context.get("ip")),
    }
    translate = _TRANSLATIONS.get(kind) if isinstance(kind, str) else None
    if translate is None:
        raise InvalidEvent("invalid_field", f"unknown message type {kind!r}; expected one of "
                           + ", ".join(SINGLE_MESSAGE_TYPES))
    item.update(translate(message, context))
    if not user_id and not anonymous_id:
        _reject_without_ids(message, kind)
    message_id = message.get("messageId")
    if item["id"] is None and not _blank(message_id):
        # Dropping it would store a retried message twice, since messageId is what deduplicates it.
        raise InvalidEvent("invalid_field", f"messageId must be a string or a number, got {type(message_id).__name__}")
    return item


def _id_text(message: dict, field: str) -> str | None:
    """Return `message[field]` as _text does; raise InvalidEvent, naming Segment's field, when it is too long."""
    text = _text(message.get(field))
    if text is not None and len(text) > MAX_ID_CHARS:
        raise InvalidEvent("invalid_field", f"{field} is {len(text)} characters long; the limit is {MAX_ID_CHARS}")
    return text


def _user_key(user_id: str) -> str:
    """Return the anonymous id that stands for a known user without an anonymousId.

    The visitor id is hashed from it. A user id too long for the prefix to fit under MAX_ID_CHARS
    is hashed first, so every valid userId is accepted.
    """
    key = f"user:{user_id}"
    if len(key) <= MAX_ID_CHARS:
        return key
    return "user:sha256:" + hashlib.sha256(user_id.encode()).hexdigest()


def _reject_without_ids(message: dict, kind: str) -> None:
    """Raise InvalidEvent for a message with no usable id. Segment's own API rejects these too,
    because without either id the visitors of one server-side sender cannot be distinguished."""
    for field in ("userId", "anonymousId"):
        if not _blank(message.get(field)):
            value = message[field]
            raise InvalidEvent("invalid_field", f"{field} must be a string or a number, got {type(value).__name__}")
    raise InvalidEvent("missing_field", f"a message of type {kind!r} needs `userId` or `anonymousId`")


def _track(message: dict, _context: dict) -> dict[str, Any]:
    name = _text(message.get("event"))
    if not name:
        raise InvalidEvent("missing_field", "a track message needs `event`, the event's name")
    return {"type": "event", "name": name, "props": _object(message, "properties")}


def _page(message: dict, context: dict) -> dict[str, Any]:
    properties = _object(message, "properties")
    page = context.get("page") if isinstance(context.get("page"), dict) else {}
    url = properties.get("url") or page.get("url")
    path = properties.get("path") or page.get("path")
    if not url and not path:
        raise InvalidEvent("missing_field", "a page message needs `properties.url`, `properties.path` or `context.page`")
    props = dict(properties)
    for field in ("name", "category"):
        if message.get(field) is not None:
            props.setdefault(field, message[field])
    return {"type": "pageview", "url": url, "path": path,
            "referrer": properties.get("referrer") or page.get("referrer"), "props": props}


def _screen(message: dict, _context: dict) -> dict[str, Any]:
    properties = _object(message, "properties")
    name = _text(message.get("name")) or _text(properties.get("name"))
    if not name:
        raise InvalidEvent("missing_field", "a screen message needs `name`")
    return {"type": "screen", "name": name, "props": properties}


def _identify(message: dict, _context: dict) -> dict[str, Any]:
    return {"type": "identify", "name": "identify", "props": _object(message, "traits")}


def _group(message: dict, _context: dict) -> dict[str, Any]:
    group_id = _text(message.get("groupId"))
    if not group_id:
        raise InvalidEvent("missing_field", "a group message needs `groupId`")
    return {"type": "group", "name": group_id, "props": _object(message, "traits")}


def _alias(message: dict, _context: dict) -> dict[str, Any]:
    previous_id = _text(message.get("previousId"))
    if not previous_id:
        raise InvalidEvent("missing_field", "an alias message needs `previousId`")
    return {"type": "alias", "name": "alias", "props": {"previous_id": previous_id}}


_TRANSLATIONS = {"track": _track, "page": _page, "screen": _screen, "identify": _identify,
                 "group": _group, "alias": _alias}


def _object(message: dict, name: str) -> dict:
    value = message.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidEvent("invalid_field", f"`{name}` must be a JSON object, got {type(value).__name__}")
    return value


def _text(value: Any) -> str | None:
    """Return ids and names as strings, or None for a blank or unusable value.

    SDKs send numbers for some ids. A JavaScript SDK cannot tell 7 from 7.0, so a whole float is
    written as an integer: both name the same user or message. A string of spaces names nothing
    and would merge every sender that sends one.
    """
    if isinstance(value, str):
        return None if _blank(value) else value
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    return None


def _blank(value: Any) -> bool:
    """Return whether an id field is absent: missing, null, empty or only whitespace."""
    return value is None or (isinstance(value, str) and not value.strip())
