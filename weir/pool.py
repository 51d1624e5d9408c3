"""Bounded closing of asyncpg pools, also when PostgreSQL stopped replying."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

logger = logging.getLogger(__name__)

POOL_CLOSE_TIMEOUT_S = 5.0
"""Seconds a stopping service waits for its idle connections to close before it terminates them."""


async def close_pool(pool: asyncpg.Pool, timeout_s: float = POOL_CLOSE_TIMEOUT_S) -> None:
    """Close `pool`, terminating its connections when that takes longer than `timeout_s`.

    asyncpg's Pool.close sends Terminate on each connection and waits for each reply for up to
    the pool's command_timeout, so a PostgreSQL that hangs held up a stop for that long (60 s in
    the API, 120 s in the processor). A cancelled Pool.close terminates every connection.
    """
    try:
        await asyncio.wait_for(pool.close(), timeout_s)
    except TimeoutError:
        logger.warning("closing the database pool timed out after %.0f s, so its connections were terminated",
                       timeout_s)
