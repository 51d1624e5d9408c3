"""Sink and freshness metrics of the processor."""

from prometheus_client import Counter, Gauge

ROWS_WRITTEN = Counter("weir_sink_rows_written", "Rows newly written by a sink", ["table"])
DUPLICATES_SKIPPED = Counter("weir_sink_duplicates_skipped", "Events skipped because their id was already stored", ["table"])
WRITE_FAILURES = Counter("weir_sink_write_failures", "Failed sink transactions, by table and error class", ["table", "error"])
LAST_WRITE_SECONDS = Gauge("weir_table_last_write_timestamp_seconds", "Unix time of the table's last successful write", ["table"])
LAG_SECONDS = Gauge("weir_table_lag_seconds", "How far the table's newest event is behind raw_events', seconds", ["table"])
PARTITIONS_CREATED = Counter("weir_partitions_created", "Daily partitions created", ["table"])
PARTITIONS_DROPPED = Counter("weir_partitions_dropped", "Daily partitions dropped by retention", ["table"])
TABLE_STALE = Gauge("weir_table_stale", "1 while the table is stale (stopped moving while events wait), else 0", ["table"])
STREAM_BACKLOG_AGE = Gauge("weir_stream_oldest_unacked_age_seconds", "Age of the oldest entry the group has not acknowledged")
