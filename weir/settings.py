"""Base settings model and the start-up error for a missing or invalid variable."""

from __future__ import annotations

from typing import Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

EXIT_CONFIG_ERROR = 2
MAX_STREAM_PARTITIONS = 1024
"""Guards against a typo: every partition costs each processor one read per cycle."""


class StreamLayoutSettings(BaseSettings):
    """Variables of every program that reads or writes Redis: how Redis is deployed and how the stream is split.

    Every service and tool of one deployment must use the same values, because they decide the
    names of the stream keys.
    """

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")

    REDIS_CLUSTER: bool = Field(False, description="true when REDIS_URL names one node of a Redis Cluster; the "
                                                   "other nodes are discovered from it")
    STREAM_PARTITIONS: int = Field(1, ge=1, le=MAX_STREAM_PARTITIONS,
                                   description="event streams the collector spreads visitors over; 1 keeps the "
                                               "single stream `weir:events`. Drain the streams before changing it")


class ServiceSettings(StreamLayoutSettings):
    """Variables every service reads.

    NODE_ENV keeps the name of the platform Weir replaces, so existing deployments keep
    their environment files.
    """

    NODE_ENV: Literal["development", "production"]
    LOG_LEVEL: Literal["debug", "info", "warning", "error"] = "info"
    REUSE_PORT: bool = Field(False, description="true lets several processes of one service listen on the same "
                                                "port (SO_REUSEPORT), which spreads connections over them")


class ConfigError(SystemExit):
    """A missing or invalid environment variable; exits with code 2 and one line."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_CONFIG_ERROR)
        self.message = message

    def __str__(self) -> str:
        return self.message


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def load_settings(model: type[SettingsT], *, program: str | None = None, **overrides: object) -> SettingsT:
    """Read `model` from the environment, turning validation errors into one ConfigError line.

    `overrides` win over the environment; the CLI passes its options here. `program` is the
    command that errors name, for a command that borrows another command's settings.
    """
    program = program or _program(model)
    try:
        settings = model(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        raise ConfigError(_describe(program, error)) from None
    _check_urls(program, settings)
    return settings


# Connection URLs are checked here, once for every model, so a typo stops the program with one
# line instead of a driver traceback at the first connection.
_URL_SCHEMES = {
    "REDIS_URL": ("redis://", "rediss://", "unix://"),
    "DATABASE_URL": ("postgresql://", "postgres://"),
    "DATABASE_READ_URL": ("postgresql://", "postgres://"),
}


def _check_urls(program: str, settings: BaseSettings) -> None:
    for name, schemes in _URL_SCHEMES.items():
        value = getattr(settings, name, None)
        example = f"{schemes[0]}127.0.0.1:{6379 if name == 'REDIS_URL' else 5432}/..."
        if value == "" and name in _REQUIRED_URLS:
            # An empty URL makes libpq connect to its defaults: the local socket and the OS user's database.
            raise ConfigError(f"{program}: {name} is empty; set it to a URL such as {example}")
        if value and not value.startswith(schemes):
            raise ConfigError(f"{program}: invalid {name}: it must start with {' or '.join(schemes)}, e.g. {example}")
        if not value:
            continue
        parts = urlsplit(value)
        if "," in parts.netloc:
            continue  # libpq's multi-host form has one port per host
        try:
            parts.port
        except ValueError as error:
            raise ConfigError(f"{program}: invalid {name}: {error}; give a port number from 1 to 65535, "
                              f"e.g. {example}") from None


_REQUIRED_URLS = frozenset({"REDIS_URL", "DATABASE_URL"})
"""URL variables that are never optional where a model has them; DATABASE_READ_URL may be empty."""


def _program(model: type[BaseSettings]) -> str:
    """Return the command a settings model belongs to, as users type it."""
    command = getattr(model, "command_name", None)
    return f"weir {command or model.__name__.removesuffix('Settings').lower()}"


def _describe(program: str, error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"]) or "?"
        if item["type"] == "missing":
            problems.append(f"missing required environment variable {name}")
        else:
            value = item.get("input")
            problems.append(f"invalid {name}={value!r}: {item['msg']}")
    return f"{program}: " + "; ".join(problems) + " (set it in the environment or an env file)"
