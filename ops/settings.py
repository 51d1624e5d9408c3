"""Settings of the command-line tools, which need connections but no service variables."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from weir.settings import StreamLayoutSettings


class DatabaseToolSettings(BaseSettings):
    """Environment of `weir schema`."""

    command_name: ClassVar[str] = "schema"
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")

    DATABASE_URL: str = Field(description="PostgreSQL to check or change")
    TIMESCALEDB: Literal["auto", "on", "off"] = "auto"
    RETENTION_DAYS: int = Field(90, ge=1, description="days of raw_events kept, as the processor's setting")


class SiteToolSettings(StreamLayoutSettings):
    """Environment of `weir site`: the sites table and the collector's directory in Redis."""

    command_name: ClassVar[str] = "site"
    DATABASE_URL: str
    REDIS_URL: str


class StreamToolSettings(StreamLayoutSettings):
    """Environment of `weir import-logs` and `weir dlq`: the streams they write and read."""

    command_name: ClassVar[str] = "import-logs or dlq"
    REDIS_URL: str


class ReplaySettings(BaseSettings):
    """Environment of `weir replay events`."""

    command_name: ClassVar[str] = "replay events"
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")

    DATABASE_URL: str
    BOT_PATTERNS_FILE: str = ""
