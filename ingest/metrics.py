"""Collector metrics; the `analytics_*` names are read by existing Grafana dashboards."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS_RECEIVED = Counter("analytics_events_received", "Events accepted by the collector, by event type", ["type"])
EVENTS_QUEUED = Counter("analytics_events_queued", "Events written to the Redis stream")
BATCH_SIZE = Histogram(
    "analytics_batch_size_histogram",
    "Events per accepted request",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
EVENTS_REJECTED = Counter(
    "weir_collect_rejected_events",
    "Events rejected by the collector, by reason; a request rejected before its events were read counts once",
    ["reason"],
)
REQUEST_SECONDS = Histogram(
    "weir_collect_request_seconds",
    "Time to answer a request on an event route, seconds",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
REQUESTS = Counter("weir_collect_requests", "Requests on event routes, by route and HTTP status", ["route", "status"])
STREAM_BACKLOG = Gauge(
    "weir_collect_stream_backlog_entries",
    "Stream entries not yet processed (group lag plus pending), as the collector last read it",
)
STREAM_WRITE_SECONDS = Histogram(
    "weir_collect_stream_write_seconds",
    "Time of one stream write (XADD), seconds",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
REQUESTS_PER_WRITE = Histogram(
    "weir_collect_requests_per_write",
    "Requests whose events one stream write carried",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200),
)
STREAM_WRITE_FAILURES = Counter("weir_collect_stream_write_failures", "Stream writes that failed")
