"""Collector metrics; the `analytics_*` names are read by existing Grafana dashboards."""

from prometheus_client import Counter, Histogram

EVENTS_RECEIVED = Counter("analytics_events_received", "Events accepted by the collector, by event type", ["type"])
EVENTS_QUEUED = Counter("analytics_events_queued", "Events written to the Redis stream")
BATCH_SIZE = Histogram(
    "analytics_batch_size_histogram",
    "Events per accepted request",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
EVENTS_REJECTED = Counter("weir_collect_rejected_events", "Events or requests rejected by the collector, by reason", ["reason"])
REQUEST_SECONDS = Histogram(
    "weir_collect_request_seconds",
    "Time to answer a /collect request, seconds",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
