"""The path every event route shares: backpressure, validation, the stream write and counting.

Each route (`/collect`, the Segment API, Plausible's event API) turns its request into payload
items in Weir's field names and hands them to `Intake.accept`. Whole-request failures are
raised as RequestRejected, which `event_route` turns into the route's own error format.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from ingest import metrics
from ingest.backlog import BacklogMonitor
from ingest.body import CONTINUE_WITHHELD, RequestRejected
from ingest.client_ip import address_text, client_ip
from ingest.cors import CORS_KEY
from ingest.validate import MAX_USER_AGENT_CHARS, CacheMiss, EventBuilder, InvalidEvent, Rejection, RequestContext
from ingest.group_commit import GroupCommitWriter
from ingest.writer import StreamWriter
from streams.event import Event
from weir.redis import REDIS_ERRORS

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 5
"""Seconds a client is asked to wait after a 503 (backpressure or Redis unavailable)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ErrorRenderer = Callable[[RequestRejected], web.Response]


class Intake:
    """Validates payload items into events and writes them to the stream, counting both."""

    def __init__(self, builder: EventBuilder, writer: StreamWriter | GroupCommitWriter, backlog: BacklogMonitor,
                 trusted_proxies: tuple) -> None:
        self.builder = builder
        self.writer = writer
        self.backlog = backlog
        self.trusted_proxies = trusted_proxies

    def check_backpressure(self) -> None:
        """Raise RequestRejected (503) while the stream backlog is over STREAM_MAX_LENGTH."""
        if self.backlog.over_limit:
            raise RequestRejected(
                503, "backpressure",
                f"the event stream has {self.backlog.backlog_entries} unprocessed entries, over the limit of "
                f"{self.backlog.max_entries}; retry after {RETRY_AFTER_S} s",
            )

    def context(self, request: web.Request, sent_at_ms: int | None = None,
                trust_item_ip: bool = False) -> RequestContext:
        """Return the request's context: receive time, client IP and user agent, with the client's
        send time and whether items may carry their sender's address (see RequestContext).

        A User-Agent header longer than MAX_USER_AGENT_CHARS is cut to that length rather than
        rejected, because the visitor's browser sends it and the site cannot change it.
        """
        headers = request.headers
        if self.trusted_proxies:
            # Several header lines of one name are one comma-separated list (RFC 9110, section 5.3).
            forwarded = ",".join(headers.getall("Forwarded", ())) or None
            x_forwarded_for = ",".join(headers.getall("X-Forwarded-For", ())) or None
            ip = client_ip(request.remote, forwarded, x_forwarded_for, self.trusted_proxies)
        else:
            ip = address_text(request.remote)
        # Every field by position, which halves the cost of the call.
        return RequestContext(
            time.time_ns() // 1_000_000,
            ip,
            _user_agent_header(headers.get("User-Agent")),
            "collect",
            False,
            sent_at_ms,
            trust_item_ip,
        )

    async def accept(self, items: list, context: RequestContext,
                     translate: Callable[[Any], dict] | None = None) -> tuple[list[Event], list[Rejection]]:
        """Validate `items` and write the valid ones to the stream; return events and rejections.

        `translate` turns one item of another API's format into Weir's fields, or raises
        InvalidEvent, which rejects that item alone under its index. Raises RequestRejected:
        422 when no item is valid, 503 when Redis cannot be reached, so that nothing was
        written and the client may retry the whole request.
        """
        if not items:
            raise RequestRejected(400, "empty_batch", "the request contains no events")
        try:
            if translate is not None:
                events, rejections = await self._build_translated(items, context, translate)
            else:
                try:
                    events, rejections = self.builder.build_now(items, context)
                except CacheMiss:
                    events, rejections = await self.builder.build(items, context)
        except REDIS_ERRORS as error:
            logger.error("site directory or visitor salt unavailable error=%r", error)
            raise _unavailable(len(items)) from None
        if rejections:
            _count_rejections(rejections)
        if not events:
            raise _nothing_accepted(rejections)

        try:
            await self.writer.enqueue(events)
        except REDIS_ERRORS:
            # The writer logged the failure once for all the requests it carried.
            raise _unavailable(len(events)) from None
        _count_accepted(events)
        return events, rejections

    async def _build_translated(self, items: list, context: RequestContext,
                                translate: Callable[[Any], dict]) -> tuple[list[Event], list[Rejection]]:
        translated: list[dict] = []
        indexes: list[int] = []
        rejections: list[Rejection] = []
        for index, item in enumerate(items):
            try:
                translated.append(translate(item))
            except InvalidEvent as error:
                rejections.append(Rejection(index, error.reason, str(error)))
                continue
            indexes.append(index)
        try:
            events, later = self.builder.build_now(translated, context)
        except CacheMiss:
            events, later = await self.builder.build(translated, context)
        rejections += [Rejection(indexes[r.index], r.reason, r.message) for r in later]
        rejections.sort(key=lambda r: r.index)
        return events, rejections


INTAKE_KEY = web.AppKey("intake", Intake)


def _unavailable(count: int) -> RequestRejected:
    return RequestRejected(503, "redis_unavailable", "the event stream is unavailable; retry later", count=count)


def _nothing_accepted(rejections: list[Rejection]) -> RequestRejected:
    first = rejections[0]
    message = f"no event was accepted; event {first.index}: {first.message}"
    # count=0: each event was counted under its own reason already.
    return RequestRejected(422, first.reason, message, count=0, accepted=0,
                           rejected=[r.as_dict() for r in rejections])


def _count_rejections(rejections: list[Rejection]) -> None:
    for reason, count in Counter(r.reason for r in rejections).items():
        metrics.EVENTS_REJECTED.labels(reason).inc(count)


MAX_TYPE_LABELS = 100
"""Distinct `type` labels of analytics_events_received; senders choose types, so further ones
are counted as `other` to keep the metric's series bounded."""
_received_by_type: dict[str, Any] = {}
"""Labelled children of EVENTS_RECEIVED, kept because `labels()` builds its key on every call."""


def _count_accepted(events: list[Event]) -> None:
    # The sum of BATCH_SIZE is also analytics_events_queued.
    if len(events) == 1:
        metrics.BATCH_SIZE.observe_one()
        _received(events[0].type).inc()
        return
    metrics.BATCH_SIZE.observe(len(events))
    for event_type, count in Counter(e.type for e in events).items():
        _received(event_type).inc(count)


def _received(event_type: str) -> Any:
    child = _received_by_type.get(event_type)
    if child is None:
        if len(_received_by_type) >= MAX_TYPE_LABELS:
            return metrics.EVENTS_RECEIVED.labels("other")
        child = _received_by_type[event_type] = metrics.EVENTS_RECEIVED.labels(event_type)
    return child


JSON_HEADERS = {"Content-Type": "application/json"}


def header_text(value: str | None) -> str | None:
    """Return a header's value with invalid UTF-8 bytes replaced by U+FFFD.

    aiohttp decodes header bytes as UTF-8 with surrogateescape, so an invalid byte arrives as a
    lone surrogate, which can be neither hashed into a visitor id nor written to the stream.
    """
    if value is None or value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _user_agent_header(value: str | None) -> str | None:
    """Return the User-Agent header as header_text does, cut to MAX_USER_AGENT_CHARS."""
    text = header_text(value)
    return None if text is None else text[:MAX_USER_AGENT_CHARS]


def json_response(body: object, status: int, headers: dict | None = None) -> web.Response:
    # A headers dict is cheaper than `content_type=`, which aiohttp parses on every response.
    return web.Response(body=orjson.dumps(body), status=status,
                        headers={**JSON_HEADERS, **headers} if headers else JSON_HEADERS)


def render_json_error(rejected: RequestRejected) -> web.Response:
    """Render a rejection as Weir's error body: `{"error", "reason", ...}`."""
    return json_response({"error": rejected.message, "reason": rejected.reason, **rejected.extra},
                         rejected.status, retry_headers(rejected))


def retry_headers(rejected: RequestRejected) -> dict[str, str] | None:
    return {"Retry-After": str(RETRY_AFTER_S)} if rejected.status == 503 else None


def event_route(route: str, render_error: ErrorRenderer = render_json_error) -> Callable[[Handler], Handler]:
    """Wrap an event route's handler: apply the CORS policy, time and count the request, and render
    RequestRejected in the route's error format."""

    def decorate(handler: Handler) -> Handler:
        # Labelled children are looked up once per status, because `labels()` builds its key on every call.
        requests_by_status: dict[int, Any] = {}
        perf_counter = time.perf_counter

        async def wrapper(request: web.Request) -> web.StreamResponse:
            started = perf_counter()
            origin = request.headers.get("Origin")
            cors_headers = None
            try:
                if origin is not None:
                    cors_headers = request.app[CORS_KEY].headers_for(origin)
                response = await handler(request)
            except RequestRejected as rejected:
                if rejected.count:
                    metrics.EVENTS_REJECTED.labels(rejected.reason).inc(rejected.count)
                response = render_error(rejected)
                if rejected.close or request.get(CONTINUE_WITHHELD):
                    # The rest of the body will not come, so the connection cannot carry another
                    # request. A body that is still arriving otherwise is read and dropped by aiohttp
                    # (LINGERING_TIME_S), and the connection stays open.
                    response.force_close()
            if cors_headers is not None:
                response.headers.update(cors_headers)
            metrics.REQUEST_SECONDS.observe(perf_counter() - started)
            status = response.status
            counter = requests_by_status.get(status)
            if counter is None:
                counter = requests_by_status[status] = metrics.REQUESTS.labels(route, str(status))
            counter.inc()
            return response

        wrapper.__name__ = handler.__name__
        wrapper.__doc__ = handler.__doc__
        return wrapper

    return decorate
