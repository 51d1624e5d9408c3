"""The collector service: the aiohttp application behind every event route.

Routes:

| route | what |
|---|---|
| `POST /collect`, `GET /collect` | Weir's own event API and its pixel (`ingest.collect`) |
| `POST /v1/track`, `/v1/page`, `/v1/screen`, `/v1/identify`, `/v1/batch`, ... | Segment's HTTP Tracking API (`ingest.segment`) |
| `POST /api/event` | Plausible's event API (`ingest.plausible`) |
| `GET /script.js` | the browser tracker (`ingest.tracker`) |
| `GET /health`, `GET /metrics` | health and Prometheus metrics |

An event route responds 2xx only after Redis acknowledged the XADD that carries its events, so
an accepted event is in the stream. Redis is reached with REDIS_TIMEOUT_S on every connect
and command, so an unreachable Redis gets 503 responses, not hanging requests. The connection
pool, and the stream writer's own connection (`ingest.group_commit`), reconnect by themselves
once Redis is back.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import Redis

from ingest.backlog import BacklogMonitor
from ingest.body import BODY_TIMEOUT_KEY, CONTINUE_WITHHELD, MAX_BODY_BYTES, expect_continue, expect_nothing
from ingest.client_ip import parse_networks
from ingest.collect import get_collect, post_collect
from ingest.cors import CORS_KEY, CorsPolicy, preflight
from ingest.group_commit import create_stream_writer
from ingest.intake import INTAKE_KEY, Intake, json_response
from ingest.plausible import plausible_event
from ingest.segment import add_segment_routes
from ingest.settings import CollectorSettings
from ingest.tracker import TRACKER_KEY, TrackerScript, tracker_script
from ingest.validate import EventBuilder
from streams.keys import PROCESSOR_GROUP
from streams.partitions import StreamPartitions
from streams.sites import SiteDirectory
from streams.visitor import SaltStore
from weir.health import HealthChecks, add_health_routes
from weir.logs import quiet_malformed_requests
from weir.redis import connect_redis
from weir.settings import ConfigError
from weir.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

GC_THRESHOLDS = (20_000, 20, 10)
"""Python's collector thresholds in a collector process (the defaults are 700, 10, 10).

A young collection walks every object that the requests in flight keep alive, and at the
default one runs every 700 allocations. In-process runs of the /collect handler (64 requests at a
time, Redis faked) spent about 1.5 µs less of about 29 µs per request with these thresholds.
"""
LINGERING_TIME_S = 2.0
"""Seconds the rest of a body is read and dropped after an early response (413, 408) before the
connection closes. Closing at once can reset the connection before the client reads the response.
aiohttp's default of 10 s would let a stalled client hold the connection 8 s longer."""
REDIS_KEY = web.AppKey("redis", Redis)
SETTINGS_KEY = web.AppKey("settings", CollectorSettings)


def create_collector_app(settings: CollectorSettings, *, stream: str | None = None) -> web.Application:
    """Build the collector's aiohttp application; Redis is opened and closed with the app.

    Events go to the STREAM_PARTITIONS partitions of the stream, or all to `stream` when given.
    Raises ConfigError when TRUSTED_PROXIES or SEGMENT_WRITE_KEYS cannot be parsed.
    """
    try:
        trusted_proxies = parse_networks(settings.TRUSTED_PROXIES)
        write_keys = settings.write_keys()
    except ValueError as error:
        raise ConfigError(f"weir collector: {error}") from None

    quiet_malformed_requests()
    partitions = StreamPartitions.from_settings(settings)
    streams = [stream] if stream is not None else partitions.streams()
    # auto_decompress=False: ingest.body decompresses, so it can bound the inflated size and
    # reject a corrupt gzip body with 400 instead of dropping the connection.
    app = web.Application(client_max_size=MAX_BODY_BYTES,
                          handler_args={"auto_decompress": False, "lingering_time": LINGERING_TIME_S})
    app[SETTINGS_KEY] = settings
    app[BODY_TIMEOUT_KEY] = settings.BODY_TIMEOUT_S
    app[CORS_KEY] = CorsPolicy(settings.cors_origins())
    app[TRACKER_KEY] = TrackerScript.load()
    checks = HealthChecks()

    async def redis_context(app: web.Application) -> AsyncIterator[None]:
        redis = connect_redis(settings.REDIS_URL, cluster=settings.REDIS_CLUSTER,
                              socket_timeout=settings.REDIS_TIMEOUT_S, socket_connect_timeout=settings.REDIS_TIMEOUT_S)
        backlog = BacklogMonitor(redis, streams, PROCESSOR_GROUP, settings.STREAM_MAX_LENGTH)
        writer = create_stream_writer(redis, stream if stream is not None else partitions)
        builder = EventBuilder(SiteDirectory(redis), SaltStore(redis), settings.MAX_EVENT_BYTES)
        app[REDIS_KEY] = redis
        app[INTAKE_KEY] = Intake(builder, writer, backlog, trusted_proxies)
        # Everything loaded by now (route tables, user-agent and bot patterns of the other layers)
        # lives as long as the process. Freezing it keeps full collections from walking it: they
        # took 30-90 ms each under load, stalling every request in flight, and under 1 ms after.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        monitor = asyncio.create_task(backlog.run(), name="stream-backlog-monitor")
        logger.info("collector ready streams=%s max_backlog_entries=%d segment_write_keys=%d",
                    ",".join(streams), settings.STREAM_MAX_LENGTH, len(write_keys))
        try:
            yield
        finally:
            await cancel_and_wait(monitor)
            await writer.close()
            await redis.aclose()

    async def check_redis() -> str:
        await app[REDIS_KEY].ping()
        return "ok"

    checks.hard["redis"] = check_redis
    app.cleanup_ctx.append(redis_context)
    app.router.add_post("/collect", post_collect, expect_handler=expect_continue)
    # No HEAD: link checkers and uptime monitors send HEAD, and each would store a pageview.
    app.router.add_get("/collect", get_collect, allow_head=False)
    app.router.add_post("/api/event", plausible_event, expect_handler=expect_continue)
    add_segment_routes(app, write_keys)
    for resource in list(app.router.resources()):
        app.router.add_route("OPTIONS", resource.canonical, preflight)
    app.router.add_get("/script.js", tracker_script)
    add_health_routes(app, checks)
    # Last, so that the router reaches it only when no route above matched the path and method.
    app.router.add_route("*", "/{path:.*}", unknown_route, expect_handler=expect_nothing)
    return app


async def unknown_route(request: web.Request) -> web.Response:
    """Respond to a path or method that no route takes with a JSON 404 or 405 naming what would work."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource.canonical != UNKNOWN_ROUTE:
            allowed |= (await resource.resolve(request))[1]
    path = request.path if len(request.path) <= MAX_PATH_ECHOED else request.path[:MAX_PATH_ECHOED] + "..."
    if allowed:
        methods = sorted(allowed)
        response = json_response({"error": f"{request.method} is not allowed on {path}; use {' or '.join(methods)}",
                                  "reason": "method_not_allowed", "allowed": methods},
                                 405, {"Allow": ", ".join(methods)})
    else:
        response = json_response({"error": f"no route for {path}; events go to POST /collect, "
                                           "POST /api/event or POST /v1/batch",
                                  "reason": "not_found"}, 404)
    if request.get(CONTINUE_WITHHELD):
        # No 100 Continue went out, so the client sends no body and the connection is done.
        response.force_close()
    return response


MAX_PATH_ECHOED = 200
UNKNOWN_ROUTE = "/{path}"
