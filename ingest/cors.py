"""CORS for the event routes, from CORS_ORIGINS.

With `*` any origin may send. With a list, a browser request whose Origin is not on it is
rejected with 403 and counted, preflight included. So the list names the sites that may send
events, not only those that may read the responses. Requests without
an Origin header (servers, SDKs, curl) are not affected.

The event routes apply the policy in `ingest.intake.event_route` rather than in middleware,
because a middleware runs on every request of every route. In bench/collector runs it added
a few microseconds to each, an estimate, since runs on the shared machine varied by more.
`/script.js` is public and allows any origin; `/health` and `/metrics` send no CORS headers.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from ingest import metrics
from ingest.body import RequestRejected

ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Content-Type, Content-Encoding, Authorization, X-Requested-With, X-Retry-Count"
"""Request headers that the tracker, sendBeacon, and Segment's and Plausible's clients send."""
EXPOSED_HEADERS = "Retry-After"
PREFLIGHT_MAX_AGE_S = 86_400


class CorsPolicy:
    """The origins that may send events; `allowed_origins` None means any origin."""

    def __init__(self, allowed_origins: frozenset[str] | None) -> None:
        self.allowed_origins = allowed_origins
        self._any_origin_headers = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": EXPOSED_HEADERS}

    def headers_for(self, origin: str) -> dict[str, str]:
        """Return the CORS headers of a response to `origin`; raise RequestRejected (403) if it may not send."""
        if self.allowed_origins is None:
            return self._any_origin_headers
        if origin.lower() not in self.allowed_origins:
            raise RequestRejected(403, "origin_not_allowed",
                                  f"origin {origin!r} is not allowed to send events; add it to CORS_ORIGINS")
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                "Access-Control-Expose-Headers": EXPOSED_HEADERS}


CORS_KEY = web.AppKey("cors", CorsPolicy)


async def preflight(request: web.Request) -> web.Response:
    """Respond to an OPTIONS request on an event route: a CORS preflight or a plain query of methods."""
    origin = request.headers.get("Origin")
    if origin is None:
        return web.Response(status=204, headers={"Allow": ALLOWED_METHODS})
    try:
        headers = dict(request.app[CORS_KEY].headers_for(origin))
    except RequestRejected as rejected:
        metrics.REQUESTS.labels(request.path, "403").inc()
        body = orjson.dumps({"error": rejected.message, "reason": rejected.reason})
        return web.Response(body=body, status=403, content_type="application/json")
    headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
    headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
    headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_S)
    return web.Response(status=204, headers=headers)
