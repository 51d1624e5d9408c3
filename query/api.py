"""The query API: reports over the stored events, behind API keys, with freshness on every answer."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator

import asyncpg
import orjson
from aiohttp import web
from redis.asyncio import Redis

from query import reports
from query.freshness import freshness_of
from query.metrics import API_LATENCY, API_REQUESTS
from query.params import BadRequest, check_known, parse_limit, parse_offset, parse_range
from query.settings import ApiSettings
from sinks.sites import get_site, load_sites
from weir.health import HealthChecks, add_health_routes

logger = logging.getLogger(__name__)

POOL_KEY = web.AppKey("pool", asyncpg.Pool)
REDIS_KEY = web.AppKey("redis", Redis)
SETTINGS_KEY = web.AppKey("settings", ApiSettings)
PUBLIC_PATHS = frozenset({"/health", "/metrics"})


def json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_response(status: int, message: str, parameter: str | None = None) -> web.Response:
    body = {"error": message}
    if parameter:
        body["parameter"] = parameter
    return json_response(body, status)


def _presented_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("X-API-Key")


def key_is_valid(presented: str | None, keys: frozenset[str]) -> bool:
    """Compare in constant time against every key, so timing tells nothing about a near miss."""
    if not presented:
        return False
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented.encode(), key.encode())
    return matched


@web.middleware
async def api_middleware(request: web.Request, handler) -> web.StreamResponse:
    started = time.perf_counter()
    endpoint = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    try:
        if request.path.startswith("/api/") and not key_is_valid(_presented_key(request), request.app[SETTINGS_KEY].api_keys()):
            response = error_response(401, "missing or invalid API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`")
        else:
            response = await handler(request)
    except BadRequest as error:
        response = error_response(error.status, str(error), error.parameter)
    except web.HTTPException as error:
        response = error_response(error.status, error.reason)
    except Exception:
        logger.exception("API request failed method=%s path=%s", request.method, request.path)
        response = error_response(500, "internal error while answering; the server log has the details")
    if request.path not in PUBLIC_PATHS:
        API_REQUESTS.labels(endpoint, str(response.status)).inc()
        API_LATENCY.observe(time.perf_counter() - started)
    return response


async def _site_and_range(request: web.Request, conn: asyncpg.Connection, allowed: set[str]):
    check_known(request, allowed)
    domain = request.query.get("site")
    if not domain:
        raise BadRequest("missing parameter 'site': give the site's domain, e.g. site=example.com", parameter="site")
    site = await get_site(conn, domain)
    if site is None:
        raise BadRequest(f"unknown site {domain!r}: list sites with GET /api/sites", status=404, parameter="site")
    return site, parse_range(request, site.timezone)


async def _answer(request: web.Request, conn: asyncpg.Connection, site, period, tables: list[str],
                  data: dict | list) -> web.Response:
    """Wrap `data` with the site, the range and the freshness of `tables`.

    Totals (a dict) sit at the top level of the answer; rows (a list) sit under `data`.
    """
    settings = request.app[SETTINGS_KEY]
    body = {"site": site.domain, "timezone": site.timezone, "from": period.first.isoformat(),
            "to": period.last.isoformat()}
    if isinstance(data, dict):
        body.update(data)
    else:
        body["data"] = data
    body["freshness"] = await freshness_of(conn, request.app[REDIS_KEY], tables, settings.STALE_AFTER_S)
    return json_response(body)


async def get_overview(request: web.Request) -> web.Response:
    async with request.app[POOL_KEY].acquire() as conn:
        site, period = await _site_and_range(request, conn, {"site", "from", "to"})
        data = await reports.overview(conn, site.domain, period)
        return await _answer(request, conn, site, period, ["raw_events"], data)


async def get_pages(request: web.Request) -> web.Response:
    async with request.app[POOL_KEY].acquire() as conn:
        site, period = await _site_and_range(request, conn, {"site", "from", "to", "limit", "offset"})
        limit = parse_limit(request)
        offset = parse_offset(request)
        data = await reports.top_pages(conn, site.domain, period, limit, offset)
        return await _answer(request, conn, site, period, ["raw_events"], data)


async def get_sites(request: web.Request) -> web.Response:
    check_known(request, set())
    async with request.app[POOL_KEY].acquire() as conn:
        sites = await load_sites(conn)
    return json_response({"data": [{"domain": s.domain, "timezone": s.timezone, "aliases": list(s.aliases)} for s in sites]})


def create_api_app(settings: ApiSettings) -> web.Application:
    """Build the API's aiohttp application; the pool and Redis are opened and closed with it."""
    app = web.Application(middlewares=[api_middleware])
    app[SETTINGS_KEY] = settings
    checks = HealthChecks()

    async def connections(app: web.Application) -> AsyncIterator[None]:
        app[POOL_KEY] = await asyncpg.create_pool(settings.DATABASE_URL, min_size=1, max_size=10, command_timeout=60)
        app[REDIS_KEY] = Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2)
        yield
        await app[POOL_KEY].close()
        await app[REDIS_KEY].aclose()

    async def database_ok() -> str:
        await app[POOL_KEY].fetchval("SELECT 1")
        return "ok"

    async def redis_ok() -> str:
        await app[REDIS_KEY].ping()
        return "ok"

    checks.hard["redis"] = redis_ok
    checks.hard["database"] = database_ok
    app.cleanup_ctx.append(connections)
    app.router.add_get("/api/overview", get_overview)
    app.router.add_get("/api/pages", get_pages)
    app.router.add_get("/api/sites", get_sites)
    add_health_routes(app, checks)
    return app
