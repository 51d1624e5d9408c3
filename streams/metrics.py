"""Processor metrics of the stream side; the `analytics_*` names are read by existing dashboards."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS_PROCESSED = Counter("analytics_events_processed", "Events committed by the processor (including duplicates skipped)")
PROCESSING_SECONDS = Histogram(
    "analytics_processing_duration_seconds",
    "Time from reading a batch to acknowledging it, seconds",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
QUEUE_DEPTH = Gauge("analytics_queue_depth", "Stream entries not yet acknowledged by the group: undelivered plus pending")
STREAM_LAG = Gauge("weir_stream_lag_entries", "Stream entries not yet delivered to the consumer group", ["stream", "group"])
STREAM_PENDING = Gauge("weir_stream_pending_entries", "Entries delivered and not yet acknowledged", ["stream", "group"])
BATCH_ENTRIES = Histogram(
    "weir_batch_entries", "Stream entries per processed batch", buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
)
BATCH_FAILURES = Counter("weir_batch_failures", "Batches whose processing raised; their entries stay pending", ["agent", "error"])
ENTRIES_DEAD_LETTERED = Counter("weir_entries_dead_lettered", "Entries moved to the dead-letter stream", ["stream"])
ENTRIES_RECLAIMED = Counter("weir_entries_reclaimed", "Pending entries taken over from an idle consumer", ["stream"])
