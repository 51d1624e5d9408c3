"""Settings of the collector service."""

from __future__ import annotations

from pydantic import Field

from weir.settings import ServiceSettings


class CollectorSettings(ServiceSettings):
    """Environment of `weir collector`; names and defaults match the platform Weir replaces."""

    REDIS_URL: str = Field(description="Redis holding the event stream, e.g. redis://127.0.0.1:6379/0")
    PORT: int = Field(4001, description="TCP port of /collect, /health and /metrics")
    HOST: str = Field("0.0.0.0", description="address to listen on")
    CORS_ORIGINS: str = Field("*", description="comma-separated origins allowed to post events, or *")
    TRUSTED_PROXIES: str = Field(
        "",
        description="comma-separated addresses or CIDR ranges whose X-Forwarded-For / Forwarded headers are believed",
    )
    MAX_EVENT_BYTES: int = Field(32_768, description="largest single event (JSON bytes); a larger one is rejected alone")
    STREAM_MAX_LENGTH: int = Field(
        1_000_000,
        description="unprocessed stream entries past which /collect answers 503 with Retry-After",
    )
