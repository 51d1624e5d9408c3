"""Settings of the query API service."""

from __future__ import annotations

from pydantic import Field, field_validator

from weir.settings import ServiceSettings


class ApiSettings(ServiceSettings):
    """Environment of `weir api`; names and defaults match the platform Weir replaces."""

    DATABASE_URL: str = Field(description="PostgreSQL holding the tables the API reads")
    DATABASE_READ_URL: str = Field("", description="a read replica the API reads from instead of DATABASE_URL; the API never writes")
    REDIS_URL: str = Field(description="Redis for the response cache, live counters and the stream backlog")
    API_KEYS: str = Field(description="comma-separated API keys; a request needs one of them")
    PORT: int = Field(4002, ge=1, le=65535, description="TCP port of the API and dashboard")
    HOST: str = Field("0.0.0.0", description="address to listen on")
    CACHE_TTL_S: int = Field(10, ge=0, description="seconds a response stays in the Redis cache; 0 turns the cache off")
    STALE_AFTER_S: int = Field(300, ge=1, description="seconds a table may stop moving while events wait before responses warn that it is stale")
    QUERY_TIMEOUT_S: float = Field(10.0, gt=0, description="seconds one database query may take before the request gets a 503, so a PostgreSQL that hangs cannot hold requests for minutes")

    @field_validator("API_KEYS")
    @classmethod
    def _at_least_one_key(cls, value: str) -> str:
        if not [k for k in value.split(",") if k.strip()]:
            raise ValueError("API_KEYS contains no key; give at least one, comma-separated")
        return value

    def read_url(self) -> str:
        return self.DATABASE_READ_URL or self.DATABASE_URL

    def api_keys(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.API_KEYS.split(",") if k.strip())
