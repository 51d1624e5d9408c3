"""Settings of the command-line tools, which need connections but no service variables."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from weir.settings import StreamLayoutSettings, load_settings


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


TOOL_CONNECT_TIMEOUT_S = 5.0
"""Seconds a command waits to connect to Redis."""


class ToolRedisSettings(BaseSettings):
    """Environment of the commands that talk to Redis: how long they wait for a reply."""

    command_name: ClassVar[str] = "site, import-logs, dlq or replay"
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")

    TOOL_REDIS_TIMEOUT_S: float = Field(30.0, gt=0, le=3600,
                                        description="seconds a command waits for a Redis reply before it stops "
                                                    "with an error")


def tool_redis_timeouts() -> dict[str, float]:
    """Return the timeouts of a command's Redis client; raise ConfigError for an invalid TOOL_REDIS_TIMEOUT_S.

    A Redis that stops replying then ends the command with an error instead of leaving it waiting
    for ever. No command blocks on a read, so every reply is due at once.
    """
    timeout_s = load_settings(ToolRedisSettings).TOOL_REDIS_TIMEOUT_S
    return {"socket_connect_timeout": min(TOOL_CONNECT_TIMEOUT_S, timeout_s), "socket_timeout": timeout_s}
