"""Settings of the realtime service, which streams live counters over SSE and WebSocket."""

from __future__ import annotations

from pydantic import Field, field_validator

from weir.settings import ServiceSettings


class RealtimeSettings(ServiceSettings):
    """Environment of `weir realtime`; REDIS_URL and PORT keep the names of the platform Weir replaces.

    API_KEYS is new to this service: the platform Weir replaces served its live feed without
    authentication, and Weir's feed needs one of the query API's keys.
    """

    REDIS_URL: str = Field(description="Redis holding the live counters the processors write")
    API_KEYS: str = Field(description="comma-separated API keys; a client sends one as `Authorization: Bearer KEY`, "
                                      "`X-API-Key: KEY` or `?key=KEY` (for EventSource, which cannot set headers)")
    PORT: int = Field(4003, ge=1, le=65535, description="TCP port of /live/{site}, /live/{site}/ws, /health and /metrics")
    HOST: str = Field("0.0.0.0", description="address to listen on")
    CORS_ORIGINS: str = Field("*", description="comma-separated origins (scheme://host[:port]) whose pages may "
                                                "open the feed, or *")
    # The default is 500 rather than 1000 because an event waits up to one interval for the next
    # update, plus the pipeline and the fan-out. A one-second interval misses the one-second goal.
    LIVE_INTERVAL_MS: int = Field(500, ge=100, description="minimum time in ms between two updates to one client, "
                                                          "and the period in ms at which counters are read again")
    HEARTBEAT_S: float = Field(15.0, gt=0, description="seconds without an update after which a client gets a "
                                                       "heartbeat (an SSE comment line or a WebSocket ping)")
    CLIENT_QUEUE_SIZE: int = Field(8, ge=1, description="updates waiting for one slow client before it is "
                                                        "disconnected")
    MAX_CLIENTS: int = Field(20_000, ge=1, description="open feeds this process accepts; further clients get HTTP 503")
    IDLE_SITE_S: float = Field(10.0, ge=0, description="seconds a site's subscription outlives its last client, "
                                                       "so reconnecting clients find it warm")

    @field_validator("API_KEYS")
    @classmethod
    def _at_least_one_key(cls, value: str) -> str:
        if not [k for k in value.split(",") if k.strip()]:
            raise ValueError("API_KEYS contains no key; give at least one, comma-separated")
        return value

    def api_keys(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.API_KEYS.split(",") if k.strip())

    def cors_origins(self) -> frozenset[str] | None:
        """Return the allowed origins in lower case, or None when any origin is allowed."""
        origins = frozenset(o.strip().rstrip("/").lower() for o in self.CORS_ORIGINS.split(",") if o.strip())
        return None if not origins or "*" in origins else origins
