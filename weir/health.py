"""The `/health` and `/metrics` endpoints every HTTP service exposes.

`/health` answers `{"status", "version", "uptime", "checks"}`. A check returns "ok" or a short
reason. A failed hard check (Redis, the database) makes the service `unhealthy` (HTTP 503);
a failed soft check (a derived table that stopped moving) makes it `degraded` (HTTP 200, so a
load balancer keeps routing while operators get told).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from weir import __version__

logger = logging.getLogger(__name__)

CheckFn = Callable[[], Awaitable[str]]
CHECK_TIMEOUT_S = 2.0


@dataclass
class HealthChecks:
    """Named checks for one service; `hard` ones decide between healthy and unhealthy."""

    hard: dict[str, CheckFn] = field(default_factory=dict)
    soft: dict[str, CheckFn] = field(default_factory=dict)
    started_monotonic: float = field(default_factory=time.monotonic)

    async def run(self) -> dict:
        """Run every check concurrently, each bounded by CHECK_TIMEOUT_S."""
        names = [*self.hard, *self.soft]
        functions = [*self.hard.values(), *self.soft.values()]
        results = await asyncio.gather(*(_run_one(name, fn) for name, fn in zip(names, functions)))
        checks = dict(zip(names, results))

        status = "healthy"
        if any(checks[name] != "ok" for name in self.soft):
            status = "degraded"
        if any(checks[name] != "ok" for name in self.hard):
            status = "unhealthy"
        return {
            "status": status,
            "version": __version__,
            "uptime": round(time.monotonic() - self.started_monotonic, 3),
            "checks": checks,
        }


async def _run_one(name: str, fn: CheckFn) -> str:
    try:
        return await asyncio.wait_for(fn(), CHECK_TIMEOUT_S)
    except asyncio.TimeoutError:
        return f"timed out after {CHECK_TIMEOUT_S:g}s"
    except asyncio.CancelledError:
        raise
    except Exception as error:  # noqa: BLE001 - a check reports any failure as its result
        logger.warning("health check failed check=%s error=%r", name, error, extra={"check": name})
        return f"failed: {error.__class__.__name__}: {error}"[:300]


def add_health_routes(app: web.Application, checks: HealthChecks) -> None:
    """Register GET /health and GET /metrics on `app`."""

    async def health(_request: web.Request) -> web.Response:
        body = await checks.run()
        status = 503 if body["status"] == "unhealthy" else 200
        return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")

    async def metrics(_request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(REGISTRY))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
