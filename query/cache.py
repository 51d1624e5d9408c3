"""A short-lived cache of API answers in Redis, keyed by the normalised query.

The key is a hash of the path and the sorted query parameters, so `a=1&b=2` and `b=2&a=1` share
an entry. A Redis failure only costs the cache: the answer comes from the database, and the
failure is logged and counted.
"""

from __future__ import annotations

import hashlib
import logging

from prometheus_client import Counter

from weir.redis import REDIS_ERRORS, RedisClient

logger = logging.getLogger(__name__)

CACHE_LOOKUPS = Counter("weir_api_cache_lookups", "API answer cache lookups, by result", ["result"])


def cache_key(path: str, query_items: list[tuple[str, str]]) -> str:
    normalised = "&".join(f"{k}={v}" for k, v in sorted(query_items))
    digest = hashlib.sha256(f"{path}?{normalised}".encode()).hexdigest()[:40]
    return f"weir:cache:{digest}"


async def cached(redis: RedisClient, key: str) -> bytes | None:
    try:
        body = await redis.get(key)
    except REDIS_ERRORS as error:
        CACHE_LOOKUPS.labels("error").inc()
        logger.warning("answer cache read failed key=%s error=%r; answering from the database", key, error)
        return None
    CACHE_LOOKUPS.labels("hit" if body is not None else "miss").inc()
    return body


async def store(redis: RedisClient, key: str, body: bytes, ttl_s: int) -> None:
    if ttl_s <= 0:
        return
    try:
        await redis.set(key, body, ex=ttl_s)
    except REDIS_ERRORS as error:
        CACHE_LOOKUPS.labels("error").inc()
        logger.warning("answer cache write failed key=%s error=%r", key, error)
