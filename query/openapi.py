"""The OpenAPI 3 description of the query API, served at /api/openapi.json."""

from __future__ import annotations

from functools import lru_cache

from query.dimensions import AUDIENCE, DIMENSIONS, NETWORK, TRAFFIC
from query.period import INTERVALS, PERIODS
from weir import __version__


def _param(name: str, description: str, schema: dict, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


_FILTER_DESCRIPTION = (
    "dimension:op:value with op eq, not, contains or in (values separated by |); repeatable. "
    "Every value must be non-empty. asn takes whole numbers such as 13335 (contains: digits); country takes "
    "ISO 3166-1 alpha-2 codes in capitals such as DE (contains: one or two letters in any case); government "
    "takes government or other. Any other value of these is a 400."
)

_COMMON = [
    _param("site", "The site's domain or one of its aliases, as added with `weir site add`.", {"type": "string", "minLength": 1}, True),
    _param("period", "Reporting period in the site's time zone; custom needs from and to. Left out, it is 30d, or "
           "custom when from or to is given; an empty value is a 400.", {"type": "string", "enum": list(PERIODS)}),
    _param("from", "First day of a custom period (YYYY-MM-DD, 1900-01-01 to 9998-12-31).",
           {"type": "string", "format": "date"}),
    _param("to", "Last day of a custom period (YYYY-MM-DD, 1900-01-01 to 9998-12-31).",
           {"type": "string", "format": "date"}),
    _param("tz", "IANA time zone that overrides the site's.", {"type": "string"}),
    _param("compare", "Add the previous period of the same length.", {"type": "string", "enum": ["previous", "none"]}),
    {**_param("filter", _FILTER_DESCRIPTION,
              {"type": "array", "items": {"type": "string",
                                          "pattern": f"^({'|'.join(DIMENSIONS)}):(eq|not|contains|in):."}}),
     "style": "form", "explode": True},
    _param("format", "json (default) or csv.", {"type": "string", "enum": ["json", "csv"]}),
]
_LIST = [
    _param("limit", "Rows to return.", {"type": "integer", "minimum": 1, "maximum": 1000}),
    _param("offset", "Rows to skip.", {"type": "integer", "minimum": 0, "maximum": 1000000}),
]

_NULLABLE_NUMBER = {"type": ["number", "null"]}
_FRESHNESS = {
    "type": "object",
    "required": ["tables", "stale", "warnings", "stream_backlog"],
    "properties": {
        "tables": {"type": "object", "additionalProperties": {
            "type": "object",
            "required": ["last_write_at", "last_event_at", "lag_s", "stale"],
            "properties": {"last_write_at": {"type": ["string", "null"]}, "last_event_at": {"type": ["string", "null"]},
                           "lag_s": {"type": "number"}, "stale": {"type": "boolean"}}}},
        "stale": {"type": "boolean"},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "stream_backlog": {"type": ["object", "null"]},
    },
}
_TOTALS = {
    "pageviews": {"type": "integer"}, "visitors": {"type": "integer"}, "sessions": {"type": "integer"},
    "bot_pageviews": {"type": "integer"}, "events": {"type": "integer"}, "bounce_rate": _NULLABLE_NUMBER,
    "avg_session_duration_s": _NULLABLE_NUMBER, "pageviews_per_session": _NULLABLE_NUMBER,
}
_ENVELOPE = {"site": {"type": "string"}, "timezone": {"type": "string"}, "from": {"type": "string"},
             "to": {"type": "string"}, "freshness": {"$ref": "#/components/schemas/Freshness"}}


def _rows(properties: dict) -> dict:
    return {"type": "array", "items": {"type": "object", "properties": properties, "required": list(properties)}}


def _answer(properties: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": {**_ENVELOPE, **properties},
            "required": ["site", "timezone", "from", "to", "freshness", *required]}


def _operation(summary: str, extra_params: list[dict], schema: dict) -> dict:
    return {"get": {
        "summary": summary,
        "parameters": _COMMON + extra_params,
        "responses": {
            "200": {"description": "The report.", "content": {
                "application/json": {"schema": schema}, "text/csv": {"schema": {"type": "string"}}}},
            "400": {"$ref": "#/components/responses/BadRequest"},
            "401": {"$ref": "#/components/responses/Unauthorized"},
            "404": {"$ref": "#/components/responses/NotFound"},
            "503": {"$ref": "#/components/responses/Unavailable"},
        },
    }}


def _dimension(choices: tuple[str, ...], default: str) -> dict:
    return _param("dimension", f"Dimension to break down by; {default} when left out (an empty value is a 400).",
                  {"type": "string", "enum": list(choices)})


_BREAKDOWN_ROWS = _rows({"value": {"type": "string"}, "visitors": {"type": "integer"}, "sessions": {"type": "integer"},
                         "bounce_rate": _NULLABLE_NUMBER, "avg_session_duration_s": _NULLABLE_NUMBER})


@lru_cache(maxsize=1)
def openapi_document() -> dict:
    error = {"description": "An error naming the parameter and the fix.", "content": {"application/json": {
        "schema": {"type": "object", "required": ["error"],
                   "properties": {"error": {"type": "string"}, "parameter": {"type": "string"}}}}}}
    unavailable = {**error, "description": "PostgreSQL or Redis is unreachable; retry after the Retry-After header's seconds.",
                   "headers": {"Retry-After": {"schema": {"type": "integer"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Weir query API", "version": __version__,
                 "description": "Reports over stored events. Every answer carries `freshness`."},
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": {
            "/api/overview": _operation("Totals of a period", [], _answer(
                {**_TOTALS, "comparison": {"type": "object"}}, list(_TOTALS))),
            "/api/timeseries": _operation("Pageviews, visitors and sessions per interval", [
                _param("interval", "Bucket size.", {"type": "string", "enum": list(INTERVALS)})], _answer(
                {"data": _rows({"bucket": {"type": "string"}, "pageviews": {"type": "integer"},
                                "visitors": {"type": "integer"}, "sessions": {"type": "integer"}}),
                 "comparison": {"type": "object"}}, ["data"])),
            "/api/pages": _operation("Top, entry or exit pages", [
                _param("kind", "top (default), entry or exit.", {"type": "string", "enum": ["top", "entry", "exit"]}),
                *_LIST], _answer({"data": {"type": "array", "items": {"type": "object"}}}, ["data"])),
            "/api/events": _operation("Custom events, or one event broken down by a property", [
                _param("event", "Only this event name.", {"type": "string"}),
                _param("breakdown", "Property of the events to group by.", {"type": "string", "minLength": 1}),
                *_LIST], _answer({"data": {"type": "array", "items": {"type": "object"}}}, ["data"])),
            "/api/traffic": _operation("Sessions by channel, source, referrer or campaign", [_dimension(TRAFFIC, "channel"), *_LIST],
                                       _answer({"dimension": {"type": "string"}, "data": _BREAKDOWN_ROWS}, ["data"])),
            "/api/audience": _operation("Sessions by location, browser, OS, device or screen", [_dimension(AUDIENCE, "country"), *_LIST],
                                        _answer({"dimension": {"type": "string"}, "data": _BREAKDOWN_ROWS}, ["data"])),
            "/api/network": _operation("Sessions by network owner and traffic tier", [_dimension(NETWORK, "org_type"), *_LIST],
                                       _answer({"dimension": {"type": "string"}, "data": _BREAKDOWN_ROWS,
                                                "government_share": _NULLABLE_NUMBER}, ["data"])),
            "/api/live": {"get": {
                "summary": "Live counters: visitors in the last 5 minutes, pageviews and events in the last minute",
                "parameters": [_COMMON[0]],
                "responses": {
                    "200": {"description": "The counters.", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["site", "visitors", "pageviews_last_minute"],
                        "properties": {"site": {"type": "string"}, "visitors": {"type": "integer"},
                                       "pageviews_last_minute": {"type": "integer"},
                                       "events_last_minute": {"type": "integer"},
                                       "top_pages": {"type": "array"}, "top_sources": {"type": "array"},
                                       "ingest_delay_ms": {"type": ["integer", "null"]}}}}}},
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "404": {"$ref": "#/components/responses/NotFound"},
                    "503": {"$ref": "#/components/responses/Unavailable"}}}},
            "/api/sites": {"get": {"summary": "The sites", "responses": {
                "200": {"description": "Every site.", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["data"], "properties": {"data": {"type": "array"}}}}}},
                "401": {"$ref": "#/components/responses/Unauthorized"},
                "503": {"$ref": "#/components/responses/Unavailable"}}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
            "schemas": {"Freshness": _FRESHNESS},
            "responses": {"BadRequest": error, "Unauthorized": error, "NotFound": error, "Unavailable": unavailable},
        },
    }
