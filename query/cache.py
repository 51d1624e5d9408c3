"""A short-lived cache of API answers in Redis, keyed by the normalised query.

The key is a hash of the path and the sorted query parameters, so `a=1&b=2` and `b=2&a=1` share
an entry. A Redis failure only costs the cache: the answer comes from the database, the failure
is logged and counted, and the breaker skips the cache for its cool-down.
"""

from __future__ import annotations

import hashlib
import logging

from prometheus_client import Counter

from query.breaker import RedisBreaker
from weir.redis import REDIS_ERRORS, RedisClient

logger = logging.getLogger(__name__)

CACHE_LOOKUPS = Counter("weir_api_cache_lookups",
                        "API answer cache lookups, by result (hit, miss, error, or skipped after an error)",
                        ["result"])


def cache_key(path: str, query_items: list[tuple[str, str]]) -> str:
    normalised = "&".join(f"{k}={v}" for k, v in sorted(query_items))
    digest = hashlib.sha256(f"{path}?{normalised}".encode()).hexdigest()[:40]
    return f"weir:cache:{digest}"


async def cached(redis: RedisClient, breaker: RedisBreaker, key: str) -> bytes | None:
    """Return the cached answer under `key`, or None when there is none or Redis is skipped or fails."""
    if not breaker.allows():
        CACHE_LOOKUPS.labels("skipped").inc()
        return None
    try:
        body = await redis.get(key)
    except REDIS_ERRORS as error:
        breaker.record_failure()
        CACHE_LOOKUPS.labels("error").inc()
        logger.warning("answer cache read failed key=%s error=%r; answering from the database and skipping "
                       "Redis for cool_down_s=%g", key, error, breaker.cool_down_s)
        return None
    breaker.record_success()
    CACHE_LOOKUPS.labels("hit" if body is not None else "miss").inc()
    return body


async def store(redis: RedisClient, breaker: RedisBreaker, key: str, body: bytes, ttl_s: int) -> None:
    if ttl_s <= 0 or not breaker.allows():
        return
    try:
        await redis.set(key, body, ex=ttl_s)
    except REDIS_ERRORS as error:
        breaker.record_failure()
        CACHE_LOOKUPS.labels("error").inc()
        logger.warning("answer cache write failed key=%s error=%r; skipping Redis for cool_down_s=%g",
                       key, error, breaker.cool_down_s)
        return
    breaker.record_success()
