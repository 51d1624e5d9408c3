"""Query parameters of the API: checks of names and list bounds, and the error they raise."""

from __future__ import annotations

from datetime import date

from aiohttp import web


class BadRequest(Exception):
    """A request the API rejects; the message names the parameter and the fix."""

    def __init__(self, message: str, status: int = 400, parameter: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.parameter = parameter


REPEATABLE = frozenset({"filter"})
"""Parameters that may be given more than once. A repeat of any other would leave all but one unread."""


def check_known(request: web.Request, allowed: set[str]) -> None:
    """Raise BadRequest for a parameter the endpoint does not take, one given twice, or a value PostgreSQL cannot hold."""
    for name, value in request.query.items():
        if "\x00" in value:
            raise BadRequest(f"invalid {name}: the value contains a NUL character; remove it",
                             parameter=name)
        if name not in allowed:
            takes = f"takes {', '.join(sorted(allowed))}" if allowed else "takes no parameters"
            raise BadRequest(f"unknown parameter {name!r}; this endpoint {takes}", parameter=name)
        if name not in REPEATABLE and len(request.query.getall(name)) > 1:
            raise BadRequest(f"parameter {name!r} is given {len(request.query.getall(name))} times; give it once",
                             parameter=name)


def parse_choice(query, name: str, choices: tuple[str, ...], default: str) -> str:
    """Return parameter `name`, one of `choices`, or `default` when it is absent.

    An empty value is a 400 rather than the default, because `name=` usually means a client
    dropped the value it meant to send.
    """
    value = query.get(name)
    if value is None:
        return default
    if not value:
        raise BadRequest(f"empty {name}: use one of {', '.join(choices)}, or leave {name} out for {default}",
                         parameter=name)
    if value not in choices:
        raise BadRequest(f"unknown {name}={value!r}; use one of {', '.join(choices)}", parameter=name)
    return value


# Bounds that keep a period, its comparison period and their instants in any time zone within
# the range of Python's datetime (years 1 to 9999).
FIRST_DAY = date(1900, 1, 1)
LAST_DAY = date(9998, 12, 31)


def parse_day(value: str | None, name: str) -> date:
    if not value:
        raise BadRequest(f"missing parameter {name!r}: give a date as YYYY-MM-DD", parameter=name)
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"invalid {name}={value!r}: give a date as YYYY-MM-DD", parameter=name) from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise BadRequest(f"invalid {name}={value!r}: give a date from {FIRST_DAY} to {LAST_DAY}", parameter=name)
    return day


def parse_limit(request: web.Request, default: int = 10, maximum: int = 1000) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return default
    value = _whole_number(raw)
    if value is None or not 1 <= value <= maximum:
        raise BadRequest(f"invalid limit={raw!r}: give a whole number from 1 to {maximum}", parameter="limit")
    return value


def parse_offset(request: web.Request, maximum: int = 1_000_000) -> int:
    raw = request.query.get("offset")
    if raw is None:
        return 0
    value = _whole_number(raw)
    if value is None or not 0 <= value <= maximum:
        raise BadRequest(f"invalid offset={raw!r}: give a whole number from 0 to {maximum}", parameter="offset")
    return value


def _whole_number(raw: str) -> int | None:
    """Return the number that `raw` writes in ASCII digits alone, else None.

    int() also accepts signs, underscores, spaces and other scripts' digits (`5_0` is 50, `٣` is 3),
    so a mistyped value would pass as a number.
    """
    if not raw or len(raw) > 18 or not raw.isascii() or not raw.isdigit():
        return None
    return int(raw)
