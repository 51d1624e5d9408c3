"""Settings of the collector service."""

from __future__ import annotations

from pydantic import Field, SecretStr

from weir.settings import ServiceSettings


class CollectorSettings(ServiceSettings):
    """Environment of `weir collector`; names and defaults match the platform Weir replaces."""

    REDIS_URL: str = Field(description="Redis holding the event stream, e.g. redis://127.0.0.1:6379/0")
    PORT: int = Field(4001, ge=1, le=65535, description="TCP port of /collect, /health and /metrics")
    HOST: str = Field("0.0.0.0", description="address to listen on")
    CORS_ORIGINS: str = Field(
        "*",
        description="comma-separated origins (scheme://host[:port]) allowed to send events from a browser, or *",
    )
    TRUSTED_PROXIES: str = Field(
        "",
        description="comma-separated addresses or CIDR ranges whose X-Forwarded-For / Forwarded headers are believed",
    )
    MAX_EVENT_BYTES: int = Field(32_768, description="largest single event (JSON bytes); a larger one is rejected alone")
    STREAM_MAX_LENGTH: int = Field(
        1_000_000,
        ge=1,
        description="unprocessed stream entries (lag plus pending of the processors' group) past which event "
                    "routes answer 503 with Retry-After",
    )
    REDIS_TIMEOUT_S: float = Field(
        2.0,
        gt=0,
        allow_inf_nan=False,
        description="limit in seconds on connecting to Redis and on each command; a request whose write "
                    "waits longer answers 503",
    )
    BODY_TIMEOUT_S: float = Field(
        10.0,
        gt=0,
        allow_inf_nan=False,
        description="limit in seconds on receiving a request body once its headers have arrived; a slower "
                    "body gets 408 and its connection is closed",
    )
    SEGMENT_WRITE_KEYS: SecretStr = Field(
        SecretStr(""),
        description="comma-separated KEY=DOMAIN pairs mapping Segment write keys to sites, "
                    "e.g. 'k3yAbc=example.com,k3yDef=shop.example.com'; empty turns the /v1 routes off",
    )

    def write_keys(self) -> dict[str, str]:
        """Return SEGMENT_WRITE_KEYS as a mapping from write key to site domain; raise ValueError if malformed."""
        return parse_write_keys(self.SEGMENT_WRITE_KEYS.get_secret_value())

    def cors_origins(self) -> frozenset[str] | None:
        """Return the allowed origins in lower case, or None when any origin is allowed."""
        origins = frozenset(o.strip().rstrip("/").lower() for o in self.CORS_ORIGINS.split(",") if o.strip())
        return None if not origins or "*" in origins else origins


def parse_write_keys(spec: str) -> dict[str, str]:
    """Parse `KEY=DOMAIN,...`; raise ValueError naming the first malformed pair, without its key."""
    keys: dict[str, str] = {}
    for position, pair in enumerate((p.strip() for p in spec.split(",")), start=1):
        if not pair:
            continue
        key, separator, domain = pair.partition("=")
        key, domain = key.strip(), domain.strip().lower()
        if not separator or not key or not domain:
            # The key is a secret, so the message names the pair by position only.
            raise ValueError(f"pair {position} of SEGMENT_WRITE_KEYS is not KEY=DOMAIN")
        keys[key] = domain
    return keys
