"""The collector: `POST /collect` validates events and writes them to the Redis stream.

A request is answered 202 only after Redis acknowledged the XADD, so an accepted event is in
the stream. Events of one request travel as one stream entry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import orjson
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ingest import metrics
from ingest.client_ip import client_ip, parse_networks
from ingest.settings import CollectorSettings
from ingest.validate import EventBuilder, RequestContext
from streams.event import encode_entry
from streams.keys import EVENTS_STREAM
from streams.sites import SiteDirectory
from streams.visitor import SaltStore
from weir.health import HealthChecks, add_health_routes

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
RETRY_AFTER_S = 5

REDIS_KEY = web.AppKey("redis", Redis)
BUILDER_KEY = web.AppKey("builder", EventBuilder)
SETTINGS_KEY = web.AppKey("settings", CollectorSettings)
TRUSTED_PROXIES_KEY = web.AppKey("trusted_proxies", tuple)


def json_response(body: dict, status: int, headers: dict | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def reject_request(status: int, reason: str, message: str, **extra) -> web.Response:
    metrics.EVENTS_REJECTED.labels(reason).inc()
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return json_response({"error": message, "reason": reason, **extra}, status, headers)


def payload_items(payload: object) -> list:
    """Return the events of a payload: one object, `{"events": [...]}` or a bare array."""
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict) and isinstance(payload.get("events"), list):
        return payload["events"]
    return [payload]


async def collect(request: web.Request) -> web.Response:
    started = time.perf_counter()
    try:
        return await _collect(request)
    finally:
        metrics.REQUEST_SECONDS.observe(time.perf_counter() - started)


async def _collect(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return reject_request(413, "body_too_large", f"body is {request.content_length} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return reject_request(413, "body_too_large", f"body is over the limit of {MAX_BODY_BYTES} bytes")

    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        return reject_request(400, "invalid_json", f"invalid JSON at position {error.pos}: {error.msg}", position=error.pos)
    items = payload_items(payload)
    if not items:
        return reject_request(400, "empty_batch", "the request holds no events")

    context = RequestContext(
        received_ms=int(time.time() * 1000),
        ip=client_ip(request.remote, request.headers.get("Forwarded"), request.headers.get("X-Forwarded-For"),
                     request.app[TRUSTED_PROXIES_KEY]),
        user_agent=request.headers.get("User-Agent"),
    )
    try:
        events, rejections = await request.app[BUILDER_KEY].build(items, context)
    except RedisError as error:
        logger.error("visitor salt unavailable error=%r", error)
        return reject_request(503, "redis_unavailable", "the event stream is unavailable; retry later")
    for rejection in rejections:
        metrics.EVENTS_REJECTED.labels(rejection.reason).inc()
    rejected = [r.as_dict() for r in rejections]
    if not events:
        return json_response({"error": "no event was accepted", "accepted": 0, "rejected": rejected}, 422)

    try:
        await request.app[REDIS_KEY].xadd(EVENTS_STREAM, encode_entry(events))
    except RedisError as error:
        logger.error("stream write failed stream=%s events=%d error=%r", EVENTS_STREAM, len(events), error)
        return reject_request(503, "redis_unavailable", "the event stream is unavailable; retry later")

    _count_accepted(events)
    return json_response({"accepted": len(events), "ids": [e.id for e in events], "rejected": rejected}, 202)


def _count_accepted(events) -> None:
    metrics.BATCH_SIZE.observe(len(events))
    metrics.EVENTS_QUEUED.inc(len(events))
    for event in events:
        metrics.EVENTS_RECEIVED.labels(event.type).inc()


def create_collector_app(settings: CollectorSettings) -> web.Application:
    """Build the collector's aiohttp application; Redis is opened and closed with the app."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SETTINGS_KEY] = settings
    app[TRUSTED_PROXIES_KEY] = parse_networks(settings.TRUSTED_PROXIES)
    checks = HealthChecks()

    async def redis_context(app: web.Application) -> AsyncIterator[None]:
        redis = Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2)
        app[REDIS_KEY] = redis
        app[BUILDER_KEY] = EventBuilder(SiteDirectory(redis), SaltStore(redis), settings.MAX_EVENT_BYTES)
        yield
        await redis.aclose()

    async def check_redis() -> str:
        await app[REDIS_KEY].ping()
        return "ok"

    checks.hard["redis"] = check_redis
    app.cleanup_ctx.append(redis_context)
    app.router.add_post("/collect", collect)
    add_health_routes(app, checks)
    return app
