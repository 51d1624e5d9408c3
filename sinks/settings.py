"""Settings of the processor service."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from sinks.archive import check_archive_url
from weir.settings import ServiceSettings


class ProcessorSettings(ServiceSettings):
    """Environment of `weir processor`; names and defaults match the platform Weir replaces."""

    REDIS_URL: str = Field(description="Redis holding the event stream")
    DATABASE_URL: str = Field(description="PostgreSQL the sinks write, e.g. postgresql://user:pass@host:5432/db")
    CONCURRENCY: int = Field(5, ge=1, le=64, description="agents (consumers) per processor process")
    BATCH_SIZE: int = Field(100, ge=1, le=10_000, description="stream entries read per batch")
    METRICS_PORT: int = Field(4010, ge=0, le=65535, description="side port of the processor's /health and /metrics; 0 turns it off")
    HOST: str = Field("0.0.0.0", description="address the side port listens on")
    RECLAIM_IDLE_MS: int = Field(60_000, ge=100, description="idle time after which another consumer's pending entries are taken over")
    STOP_TIMEOUT_S: float = Field(20.0, gt=0, allow_inf_nan=False, description="seconds a stop request waits for the batches in hand; "
                                                          "later ones are cancelled and stay pending")
    MAX_DELIVERIES: int = Field(5, ge=1, description="deliveries of a failing entry before it goes to the dead-letter stream")
    RETENTION_DAYS: int = Field(90, ge=1, description="days of raw_events kept; older partitions or chunks are dropped")
    TIMESCALEDB: Literal["auto", "on", "off"] = Field("auto", description="use TimescaleDB hypertables: auto (when available), on, off")
    STREAM_KEEP_S: int = Field(3600, ge=0, description="seconds of acknowledged entries kept in the stream for `weir replay stream`")
    GEO_MMDB_PATH: str = Field("", description="a GeoLite2/GeoIP2 City or Country .mmdb file; default the bundled plevin data")
    ASN_MMDB_PATH: str = Field("", description="a GeoLite2 ASN (or IPinfo/DB-IP) .mmdb file; default the bundled plevin data")
    STALE_AFTER_S: int = Field(300, ge=1, description="seconds a table may stop moving while events wait before /health turns degraded")
    BOT_PATTERNS_FILE: str = Field("", description="file of extra bot user-agent patterns, one regular expression per line")
    CONSUMER_NAME: str = Field("", description="consumer name prefix in the group; default host name and process id")
    ARCHIVE_URL: str = Field("", description="where the archive sink writes gzip NDJSON files: a local folder or an "
                                             "fsspec URL such as s3://bucket/weir (needs weir[archive]); empty turns it off")

    @field_validator("ARCHIVE_URL")
    @classmethod
    def _archive_url_usable(cls, value: str) -> str:
        return check_archive_url(value)
