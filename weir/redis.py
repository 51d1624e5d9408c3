"""Open the Redis client every service and tool uses: one server, or a Redis Cluster.

With REDIS_CLUSTER=true, REDIS_URL names any one node of the cluster, and redis-py's
`RedisCluster` discovers the others and routes each command to the node that owns its key's
slot. Weir's commands are cluster-safe: each touches one key, or several keys that share a
hash tag (the braces in `streams.keys`). No code path that runs on a cluster uses MULTI/EXEC,
which redis-py 5.2's cluster pipelines reject.
"""

from __future__ import annotations

from typing import Any, TypeAlias
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

RedisClient: TypeAlias = Redis | RedisCluster
"""Either client; both offer the same single-key commands, scripts and non-transactional pipelines."""

REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)
"""Everything a Redis command can raise. RedisCluster raises RedisClusterException, which is not a
RedisError, when it has no reachable node for a slot, for instance while a shard restarts."""


class InvalidRedisUrl(ValueError):
    """A REDIS_URL that cannot be used with the chosen deployment."""


class RecoveringRedisCluster(RedisCluster):
    """A RedisCluster that can always find the cluster again after its nodes failed.

    redis-py 5.2 drops a node from the nodes it rediscovers the cluster from after each
    connection error to it, and it closes all connections on every such error. A shard that
    restarts under load therefore leaves an empty list, and every later command fails with
    "Redis Cluster cannot be connected ... None" even once the shard is back (reported at
    https://github.com/redis/redis-py/issues/3693). This class puts the REDIS_URL node and
    every node seen so far back before each rediscovery.
    """

    __slots__ = ("_seed_nodes",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seed_nodes = list(self.nodes_manager.startup_nodes.values())

    async def initialize(self) -> RedisCluster:
        if self._initialize:
            startup_nodes = self.nodes_manager.startup_nodes
            for node in (*self._seed_nodes, *self.nodes_manager.nodes_cache.values()):
                startup_nodes.setdefault(node.name, node)
        return await super().initialize()


def connect_redis(url: str, *, cluster: bool = False, **options: Any) -> RedisClient:
    """Return a client of `url`, a `RedisCluster` when `cluster` is true; nothing connects yet.

    `options` go to every connection (`socket_timeout`, `socket_connect_timeout`, ...).
    Raises InvalidRedisUrl for a cluster URL that selects a database other than 0, because a
    Redis Cluster has database 0 only.
    """
    if not cluster:
        return Redis.from_url(url, **options)
    database = urlsplit(url).path.strip("/")
    if database not in ("", "0"):
        raise InvalidRedisUrl(f"REDIS_URL selects database {database}, but a Redis Cluster has database 0 only; "
                              f"remove /{database} from the URL")
    return RecoveringRedisCluster.from_url(url, **options)


def pubsub_redis(url: str, client: RedisClient, **options: Any) -> Redis:
    """Return a plain client for pub/sub: `client` itself, or a client of the cluster node `url` names.

    redis-py 5.2 offers no pub/sub on `RedisCluster`. A PUBLISH on any cluster node reaches the
    subscribers of every node, because the cluster bus forwards it, so one node is enough. The
    caller closes the returned client unless it is `client`.
    NOTE: while that node is down, its subscribers get no messages, and redis-py reconnects to
    the same node rather than to another one.
    """
    if isinstance(client, Redis):
        return client
    return Redis.from_url(url, **options)
