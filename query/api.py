"""The query API: reports over the stored events, behind API keys, with freshness on every answer.

Every report takes the site, a period in the site's time zone (or `tz`), optional filters and
`compare=previous`, and returns JSON (or CSV with `format=csv`). Answers are cached in Redis for
CACHE_TTL_S under a key of the normalised query.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date, timedelta

import asyncpg
import orjson
from aiohttp import web
from redis.asyncio import Redis

from query import reports
from query.breaker import RedisBreaker
from query.cache import cache_key, cached, store
from query.dashboard import add_dashboard_routes
from query.dimensions import AUDIENCE, NETWORK, TRAFFIC
from query.export import to_csv
from query.filters import parse_filters
from query.freshness import freshness_of
from query.metrics import API_LATENCY, API_REQUESTS
from query.openapi import openapi_document
from query.params import BadRequest, check_known, parse_choice, parse_limit, parse_offset
from query.period import parse_interval, parse_period
from query.scope import Scope
from query.settings import ApiSettings
from query.timeseries import timeseries
from sinks.coverage import first_complete_date
from sinks.sites import find_site, load_sites
from streams.live import LiveReader, now_ms
from streams.partitions import StreamPartitions
from weir.health import HealthChecks, add_health_routes
from weir.pool import close_pool
from weir.redis import REDIS_ERRORS, connect_redis

logger = logging.getLogger(__name__)

POOL_KEY = web.AppKey("pool", asyncpg.Pool)
REDIS_KEY = web.AppKey("redis", Redis)
REDIS_BREAKER_KEY = web.AppKey("redis_breaker", RedisBreaker)
SETTINGS_KEY = web.AppKey("settings", ApiSettings)
PUBLIC_PATHS = frozenset({"/health", "/metrics", "/api/openapi.json"})
COMMON = {"site", "period", "from", "to", "tz", "compare", "filter", "format"}
LISTS = {"limit", "offset"}


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
    """Compare in constant time against every key, so timing reveals nothing about a near miss."""
    if not presented:
        return False
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented.encode(), key.encode())
    return matched


@web.middleware
async def api_middleware(request: web.Request, handler) -> web.StreamResponse:
    started = time.perf_counter()
    resource = request.match_info.route.resource
    endpoint = resource.canonical if resource is not None else "unmatched"
    try:
        needs_key = request.path.startswith("/api/") and request.path not in PUBLIC_PATHS
        if needs_key and not key_is_valid(_presented_key(request), request.app[SETTINGS_KEY].api_keys()):
            response = error_response(401, "missing or invalid API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`")
        else:
            response = await handler(request)
    except BadRequest as error:
        response = error_response(error.status, str(error), error.parameter)
    except web.HTTPException as error:
        response = error_response(error.status, error.reason)
    except (asyncpg.UndefinedColumnError, asyncpg.UndefinedTableError) as error:
        # A table that lost a column (or was dropped) must never read as an empty response.
        logger.error("schema drift failed a report method=%s path=%s error=%s", request.method, request.path, error)
        response = error_response(503, f"the database schema does not match this version of Weir ({error}); "
                                       "run `weir schema check`, then restart a processor to repair it")
        response.headers["Retry-After"] = "30"
    except TimeoutError as error:
        # Before OSError, of which TimeoutError is a subclass, because a slow database is not a down one.
        timeout_s = request.app[SETTINGS_KEY].QUERY_TIMEOUT_S
        logger.error("database query timed out method=%s path=%s timeout_s=%g error=%r",
                     request.method, request.path, timeout_s, error)
        response = error_response(503, f"the database did not answer within {timeout_s:g} s (QUERY_TIMEOUT_S); "
                                       "retry shortly, or ask for a shorter period or fewer filters")
        response.headers["Retry-After"] = "5"
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError) as error:
        logger.error("database unreachable method=%s path=%s error=%r", request.method, request.path, error)
        response = error_response(503, "the database is unreachable; retry shortly")
        response.headers["Retry-After"] = "5"
    except REDIS_ERRORS as error:
        # Reports fall back to the database when the cache fails, so only the live counters get here.
        logger.error("redis unreachable method=%s path=%s error=%r", request.method, request.path, error)
        response = error_response(503, "Redis is unreachable, so the live counters cannot be read; retry shortly")
        response.headers["Retry-After"] = "5"
    except Exception:
        logger.exception("API request failed method=%s path=%s", request.method, request.path)
        response = error_response(500, "internal error while answering; the server log has the details")
    if request.path not in ("/health", "/metrics"):
        API_REQUESTS.labels(endpoint, str(response.status)).inc()
        API_LATENCY.observe(time.perf_counter() - started)
    return response


Report = Callable[[web.Request, asyncpg.Connection, Scope], Awaitable[tuple[dict | list, list[str]]]]


def report(allowed: set[str], compute: Report, comparable: bool = False):
    """Wrap `compute` with parameter checks, the cache, comparison, freshness and CSV."""

    async def handle(request: web.Request) -> web.Response:
        check_known(request, COMMON | allowed)
        output = request.query.get("format", "json")
        if output not in ("json", "csv"):
            raise BadRequest(f"unknown format={output!r}; use json or csv", parameter="format")
        compare = request.query.get("compare")
        if compare not in (None, "", "previous", "none"):
            raise BadRequest(f"unknown compare={compare!r}; use previous", parameter="compare")

        settings = request.app[SETTINGS_KEY]
        redis, breaker = request.app[REDIS_KEY], request.app[REDIS_BREAKER_KEY]
        key = cache_key(request.path, list(request.query.items()))
        # CACHE_TTL_S=0 turns the cache off, so an answer cached before it was set is not served either.
        body = await cached(redis, breaker, key) if settings.CACHE_TTL_S > 0 else None
        if body is None:
            body = orjson.dumps(await _compute(request, compute, comparable and compare == "previous"))
            await store(redis, breaker, key, body, settings.CACHE_TTL_S)
        if output == "csv":
            answer = orjson.loads(body)
            rows = answer.get("data") or [{k: v for k, v in answer.items() if not isinstance(v, (dict, list))}]
            return web.Response(text=to_csv(rows), content_type="text/csv")
        return web.Response(body=body, content_type="application/json")

    return handle


async def _compute(request: web.Request, compute: Report, with_comparison: bool) -> dict:
    settings = request.app[SETTINGS_KEY]
    async with request.app[POOL_KEY].acquire() as conn:
        domain = request.query.get("site")
        if not domain:
            raise BadRequest("missing parameter 'site': give the site's domain, e.g. site=example.com", parameter="site")
        site = await find_site(conn, domain)
        if site is None:
            raise BadRequest(f"unknown site {domain!r}: list sites with GET /api/sites", status=404, parameter="site")
        tz = request.query.get("tz") or site.timezone
        scope = Scope(site.domain, parse_period(request.query, tz), tuple(parse_filters(request.query)),
                      site_timezone=site.timezone)

        data, tables = await compute(request, conn, scope)
        body: dict = {"site": site.domain, "timezone": tz, "from": scope.period.first.isoformat(),
                      "to": scope.period.last.isoformat()}
        if isinstance(data, dict):
            body.update(data)
        else:
            body["data"] = data
        if with_comparison:
            previous = Scope(scope.site, scope.period.previous(), scope.filters, site_timezone=site.timezone)
            earlier, _ = await compute(request, conn, previous)
            body["comparison"] = {"from": previous.period.first.isoformat(), "to": previous.period.last.isoformat(),
                                  **(earlier if isinstance(earlier, dict) else {"data": earlier})}
        body["freshness"] = await freshness_of(conn, request.app[REDIS_KEY], tables, settings.STALE_AFTER_S,
                                               StreamPartitions.from_settings(settings).streams(),
                                               request.app[REDIS_BREAKER_KEY])
        if "daily_metrics" in tables:
            earliest = previous.period.first if with_comparison else scope.period.first
            warning = await coverage_warning(conn, site.domain, earliest)
            if warning:
                body["freshness"]["warnings"].append(warning)
        return body


async def coverage_warning(conn: asyncpg.Connection, site: str, earliest: date) -> str | None:
    """Name the dates before `site`'s complete rollups (sinks.coverage) that a report read, and the fix."""
    first_date = await first_complete_date(conn, site)
    if earliest >= first_date:
        return None
    return (f"rollups of {site} before {first_date} were written by an earlier version of Weir, so unique visitors "
            f"per page, source and audience value are missing there; rebuild them with `weir replay events "
            f"--site {site} --from {earliest} --to {first_date - timedelta(days=1)}`")


async def _overview(request, conn, scope):
    tables = _ROLLUP_TABLES if scope.uses_rollups else ["raw_events", "session_fingerprints"]
    return await reports.overview(conn, scope), tables


async def _timeseries(request, conn, scope):
    interval = parse_interval(request.query, scope.period)
    # timeseries() reads the rollups under this condition, and freshness must list the tables read.
    if scope.uses_rollups and interval in ("day", "week", "month"):
        tables = ["daily_metrics"]
    else:
        tables = ["raw_events", "session_fingerprints"]
    return await timeseries(conn, scope, interval), tables


async def _pages(request, conn, scope):
    kind = parse_choice(request.query, "kind", ("top", "entry", "exit"), "top")
    limit, offset = parse_limit(request), parse_offset(request)
    if kind == "top":
        return await reports.top_pages(conn, scope, limit, offset), _tables(scope, ["raw_events"])
    return await reports.session_pages(conn, scope, kind, limit, offset), _tables(scope, ["session_fingerprints"])


async def _events(request, conn, scope):
    event = request.query.get("event")
    if event is not None and not event:
        raise BadRequest("empty event: name a custom event, e.g. event=signup, or leave event out for all of them",
                         parameter="event")
    breakdown = request.query.get("breakdown")
    if breakdown is not None and not breakdown:
        raise BadRequest("empty breakdown: name a property of the events, e.g. breakdown=plan", parameter="breakdown")
    data = await reports.custom_events(conn, scope, event, breakdown, parse_limit(request), parse_offset(request))
    # A property breakdown reads the rollups only when their rows hold every event of the period, so the
    # coverage warning does not apply to it. raw_events is listed, because the processor writes it in the
    # same transaction as the rollups.
    return data, (_tables(scope, ["raw_events"]) if breakdown is None else ["raw_events"])


def _breakdown(dimensions: tuple[str, ...], default: str, extra=None):
    async def compute(request, conn, scope):
        dimension = parse_choice(request.query, "dimension", dimensions, default)
        data = await reports.session_breakdown(conn, scope, dimension, parse_limit(request), parse_offset(request))
        answer: dict = {"dimension": dimension, "data": data}
        tables = _tables(scope, ["session_fingerprints"])
        if extra is not None:
            extra_answer, extra_tables = await extra(conn, scope)
            answer.update(extra_answer)
            tables = sorted({*tables, *extra_tables})
        return answer, tables
    return compute


async def _government(conn, scope) -> tuple[dict, list[str]]:
    return {"government_share": await reports.government_share(conn, scope)}, _tables(scope, ["session_fingerprints"])


# Tables a report reads when the scope allows the rollups (see query.reports), listed in `freshness`.
_ROLLUP_TABLES = ["daily_metrics", "monthly_metrics"]


def _tables(scope, raw_tables: list[str]) -> list[str]:
    return _ROLLUP_TABLES if scope.uses_rollups else raw_tables


async def get_sites(request: web.Request) -> web.Response:
    check_known(request, set())
    async with request.app[POOL_KEY].acquire() as conn:
        sites = await load_sites(conn)
    return json_response({"data": [{"domain": s.domain, "timezone": s.timezone, "aliases": list(s.aliases)} for s in sites]})


async def get_live(request: web.Request) -> web.Response:
    """Return the site's live counters, read from the Redis keys the realtime service fans out."""
    check_known(request, {"site"})
    domain = request.query.get("site")
    if not domain:
        raise BadRequest("missing parameter 'site': give the site's domain, e.g. site=example.com", parameter="site")
    async with request.app[POOL_KEY].acquire() as conn:
        site = await find_site(conn, domain)
    if site is None:
        raise BadRequest(f"unknown site {domain!r}: list sites with GET /api/sites", status=404, parameter="site")
    snapshot = await LiveReader(request.app[REDIS_KEY]).read_snapshot(site.domain, now_ms())
    return json_response({
        "site": site.domain,
        "visitors": snapshot.visitors,
        "pageviews_last_minute": snapshot.pageviews,
        "events_last_minute": snapshot.events,
        "top_pages": [{"path": path, "pageviews": count} for path, count in snapshot.top_pages],
        "top_sources": [{"source": source, "pageviews": count} for source, count in snapshot.top_sources],
        "ingest_delay_ms": snapshot.delay_ms,
    })


async def get_openapi(_request: web.Request) -> web.Response:
    return json_response(openapi_document())


def create_api_app(settings: ApiSettings) -> web.Application:
    """Build the API's aiohttp application; the pool and Redis are opened and closed with it."""
    app = web.Application(middlewares=[api_middleware])
    app[SETTINGS_KEY] = settings
    app[REDIS_BREAKER_KEY] = RedisBreaker()
    checks = HealthChecks()

    async def connections(app: web.Application) -> AsyncIterator[None]:
        # Read-only sessions: the API only reads, and a replica refuses writes anyway.
        app[POOL_KEY] = await asyncpg.create_pool(settings.read_url(), min_size=1, max_size=10,
                                                  command_timeout=settings.QUERY_TIMEOUT_S,
                                                  # The same limit for connecting, because the pool opens
                                                  # connections while requests wait (asyncpg's default: 60 s).
                                                  timeout=settings.QUERY_TIMEOUT_S,
                                                  server_settings={"default_transaction_read_only": "on",
                                                                   **reports.SERVER_SETTINGS})
        app[REDIS_KEY] = connect_redis(settings.REDIS_URL, cluster=settings.REDIS_CLUSTER, socket_timeout=5,
                                       socket_connect_timeout=2)
        yield
        await close_pool(app[POOL_KEY])
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
    app.router.add_get("/api/overview", report(set(), _overview, comparable=True))
    app.router.add_get("/api/timeseries", report({"interval"}, _timeseries, comparable=True))
    app.router.add_get("/api/pages", report({"kind"} | LISTS, _pages))
    app.router.add_get("/api/events", report({"event", "breakdown"} | LISTS, _events))
    app.router.add_get("/api/traffic", report({"dimension"} | LISTS, _breakdown(TRAFFIC, "channel")))
    app.router.add_get("/api/audience", report({"dimension"} | LISTS, _breakdown(AUDIENCE, "country")))
    app.router.add_get("/api/network", report({"dimension"} | LISTS, _breakdown(NETWORK, "org_type", _government)))
    app.router.add_get("/api/sites", get_sites)
    app.router.add_get("/api/live", get_live)
    app.router.add_get("/api/openapi.json", get_openapi)
    add_dashboard_routes(app)
    add_health_routes(app, checks)
    return app
