"""Which database and Redis failures are transient: the batch is retried in place, not split up.

A connection that dropped, a server restarting, a deadlock or a schema object the guard must
put back (the incidents this design exists for) will pass once the cause is gone, so those
batches stay whole and pending. Anything else, such as a value PostgreSQL rejects, is treated
as possibly one bad entry: the batch is retried entry by entry and the bad one dead-lettered.
"""

from __future__ import annotations

import asyncio

import asyncpg
from redis.exceptions import ClusterDownError, RedisClusterException, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# SQLSTATE classes: 08 connection, 53 insufficient resources, 57 operator intervention
# (shutdown, restart), 58 system error, 42 a missing table, column or index (schema drift),
# 55 object not in prerequisite state (a lock not available).
_TRANSIENT_CLASSES = {"08", "53", "57", "58", "42", "55"}
_TRANSIENT_STATES = {"40001", "40P01"}  # serialization failure, deadlock


def is_transient(error: BaseException) -> bool:
    """Return True when retrying the same batch later can succeed without changing it."""
    if isinstance(error, (OSError, asyncio.TimeoutError, RedisConnectionError, RedisTimeoutError,
                          asyncpg.InterfaceError, asyncpg.PostgresConnectionError)):
        return True
    # A Redis Cluster shard that is down or failing over, or no cluster node reachable yet.
    if isinstance(error, (ClusterDownError, TryAgainError, SlotNotCoveredError)):
        return True
    if isinstance(error, RedisClusterException) and isinstance(error.__cause__, (RedisConnectionError, OSError)):
        return True
    if isinstance(error, asyncpg.PostgresError):
        state = getattr(error, "sqlstate", None) or ""
        return state in _TRANSIENT_STATES or state[:2] in _TRANSIENT_CLASSES
    return False
