"""API metrics; the `analytics_*` names are read by existing Grafana dashboards."""

from prometheus_client import Counter, Histogram

API_REQUESTS = Counter("analytics_api_requests", "API requests answered, by endpoint and HTTP status", ["endpoint", "status"])
API_LATENCY = Histogram(
    "analytics_api_latency_seconds",
    "Time to answer an API request, seconds",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
