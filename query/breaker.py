"""A circuit breaker for the Redis calls a report can do without: the answer cache and the stream backlog.

Without the cache a report is computed from PostgreSQL, and without the backlog its freshness says
that the event stream could not be read. After one of these calls fails, the breaker skips them
for COOL_DOWN_S, so a Redis that hangs costs one socket timeout per cool-down rather than up to
three per report. The live counters and /health call Redis every time, because they exist to
read or report it.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)

COOL_DOWN_S = 30.0
"""Seconds Redis is skipped after a failure. With the API's 5 s socket timeout, a hung Redis delays
at most one report per 30 s by that timeout, and the cache is used again within 30 s of Redis
recovering, which costs little because answers are cached for only CACHE_TTL_S (10 s by default)."""


class RedisBreaker:
    """Whether the optional Redis calls may run: not within `cool_down_s` of the last failure."""

    def __init__(self, cool_down_s: float = COOL_DOWN_S) -> None:
        self.cool_down_s = cool_down_s
        self._open_until = float("-inf")
        self._opened = False

    def allows(self) -> bool:
        """Return True unless a call failed less than `cool_down_s` ago."""
        return time.monotonic() >= self._open_until

    def record_failure(self) -> None:
        """Skip the calls for `cool_down_s` from now; the caller logs the error."""
        self._open_until = time.monotonic() + self.cool_down_s
        self._opened = True

    def record_success(self) -> None:
        # A call that started before a failure can succeed during the cool-down, which ends anyway.
        if self._opened and self.allows():
            self._opened = False
            logger.info("redis reachable again after a failure; reading the answer cache and stream backlog again")
