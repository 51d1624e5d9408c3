"""Plausible's event API, `POST /api/event`, so a site using Plausible's script can switch by
changing the script's `data-api` address.

Fields, short and long names as Plausible's tracker and its server read them:

| short | long | meaning |
|---|---|---|
| n | name | event name; `pageview` is a pageview, any other name a custom event (required) |
| u | url | page URL (required) |
| d | domain | site domain; a comma-separated list records the event for each site; else the URL's host |
| r | referrer | referrer URL |
| m, p | meta, props | custom properties: an object or a JSON string of one |
| h | hashMode | 1 keeps the URL fragment in the path (hash-routed apps) |
| sd, e | | scroll depth (percent) and engagement time (ms) of an `engagement` event |

Like Plausible, a leading `www.` is dropped from domains, and properties keep only scalar,
non-empty values, as strings, at most 30 of them. The response is 202 with the body `ok`;
an error is `{"errors": {field: [message]}}` with a 4xx or 503 status.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from ingest.body import RequestRejected, check_content_type, parse_json, read_body
from ingest.intake import INTAKE_KEY, event_route, json_response, retry_headers
from ingest.validate import InvalidEvent
from streams.sites import normalize_host

MAX_PROPS = 30
ENGAGEMENT = "engagement"


def render_plausible_error(rejected: RequestRejected) -> web.Response:
    """Render a rejection as Plausible does: `{"errors": {field: [message]}}`."""
    field = rejected.extra.get("field", "request")
    body = {"errors": {field: [rejected.message]}, "reason": rejected.reason}
    return json_response(body, rejected.status, retry_headers(rejected))


@event_route("/api/event", render_plausible_error)
async def plausible_event(request: web.Request) -> web.Response:
    """Accept one Plausible event (once per domain it names); respond 202 `ok`."""
    intake = request.app[INTAKE_KEY]
    intake.check_backpressure()
    check_content_type(request)
    body = parse_json(await read_body(request))
    if not isinstance(body, dict):
        raise RequestRejected(400, "not_an_object", "Unable to parse request body as a JSON object")
    try:
        items = plausible_items(body)
    except InvalidEvent as error:
        raise RequestRejected(400, error.reason, str(error), field=_field_of(error)) from None

    await intake.accept(items, intake.context(request))
    return web.Response(status=202, text="ok")


def plausible_items(body: dict) -> list[dict[str, Any]]:
    """Translate a Plausible request into Weir event fields, one item per domain it names."""
    name = _first(body, "n", "name")
    if isinstance(name, int) and not isinstance(name, bool):
        name = str(name)  # Plausible accepts numeric names, e.g. 404
    if not isinstance(name, str) or not name.strip():
        raise InvalidEvent("missing_field", "event_name: can't be blank; send `n` or `name`")
    url = _first(body, "u", "url")
    if not isinstance(url, str) or not url:
        raise InvalidEvent("missing_field", "url: is required; send `u` or `url`")
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        raise InvalidEvent("invalid_field", "url: must be a valid url") from None
    if scheme == "data":
        raise InvalidEvent("invalid_field", "url: scheme is not allowed")

    props = _props(_first(body, "m", "meta", "p", "props"))
    item: dict[str, Any] = {"url": url, "referrer": _string(_first(body, "r", "referrer")), "props": props}
    if _first(body, "h", "hashMode") == 1:
        item["hash_mode"] = True
    if name == "pageview":
        item["type"] = "pageview"
    elif name == ENGAGEMENT:
        item.update(type=ENGAGEMENT, name=ENGAGEMENT)
        props.update(_engagement(body))
    else:
        item.update(type="event", name=name)

    return [{**item, "site": domain, "props": dict(props)} for domain in _domains(body, url)]


def _domains(body: dict, url: str) -> list[str]:
    raw = _first(body, "d", "domain")
    if raw is None:
        try:
            # normalize_host reads the host a browser reads, which urlsplit's hostname is not when
            # a backslash comes before an "@".
            host = normalize_host(url) if urlsplit(url).hostname else None
        except ValueError:
            host = None
        if not host:
            raise InvalidEvent("missing_site", "domain: can't be blank; send `d` or `domain`")
        return [_strip_www(host)]
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidEvent("missing_site", "domain: can't be blank; send `d` or `domain`")
    domains = [_strip_www(part.strip()) for part in raw.split(",") if part.strip()]
    return list(dict.fromkeys(domains))


def _props(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return {}
    if not isinstance(raw, dict):
        return {}
    props: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None or isinstance(value, (list, dict)):
            continue
        text = _prop_text(value)
        if not text.strip() or not str(key).strip():
            continue
        props[str(key)] = text
        if len(props) == MAX_PROPS:
            break
    return props


def _prop_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _engagement(body: dict) -> dict[str, int]:
    fields = {}
    scroll_depth = _integer(body.get("sd"))
    if scroll_depth is not None and scroll_depth >= 0:
        fields["scroll_depth"] = min(scroll_depth, 100)
    engagement_ms = _integer(body.get("e"))
    if engagement_ms is not None and engagement_ms >= 0:
        fields["engagement_ms"] = engagement_ms
    if not fields:
        raise InvalidEvent("invalid_field", "event_name: an engagement event needs an integer `sd` or `e`")
    return fields


MAX_INTEGER_DIGITS = 18
"""Maximum digits of an integer sent as a string. No scroll depth or time needs more, and int()
raises ValueError for more than 4300 digits in CPython 3.11."""


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        return None
    # ASCII digits only: str.isdigit() is also true for "²", which int() rejects, and for other
    # scripts' digits.
    digits = value.strip()
    if not digits or len(digits) > MAX_INTEGER_DIGITS or not digits.isascii() or not digits.isdigit():
        return None
    return int(digits)


def _first(body: dict, *names: str) -> Any:
    for name in names:
        value = body.get(name)
        if value is not None:
            return value
    return None


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _strip_www(host: str) -> str:
    return host[4:] if host.lower().startswith("www.") else host


def _field_of(error: InvalidEvent) -> str:
    return str(error).split(":", 1)[0] if ":" in str(error) else "request"
