"""The live counters on a Redis Cluster: written in one site's slot, announced through any node.

redis-py 5.2 has no pub/sub on RedisCluster, so the realtime service subscribes on the node
REDIS_URL names (`weir.redis.pubsub_redis`), and the cluster forwards the processor's PUBLISH
from the node of the site's slot to it.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from redis.asyncio.cluster import RedisCluster

from streams.event import PAGEVIEW, Event
from streams.ids import new_event_id
from streams.keys import live_channel
from streams.live import LiveRecorder
from streams.sites import Site, SiteDirectory
from tests.cluster.conftest import LocalCluster
from tests.conftest import API_KEY
from tests.query.test_live import BROWSER, open_sse, running_realtime
from weir.redis import pubsub_redis

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def site_away_from(cluster: LocalCluster, port: int) -> Site:
    """Return a site whose live keys are on another master than the one on `port`."""
    for number in range(100):
        domain = f"live{number}.example"
        if cluster.node_of(live_channel(domain)) != port:
            return Site(domain, "UTC")
    raise AssertionError(f"every tried site hashes to the master on port {port}")


def pageview(site: Site) -> Event:
    now_ms = int(time.time() * 1000)
    return Event(id=str(new_event_id(now_ms)), site=site.domain, type=PAGEVIEW, action="/launch",
                 timestamp_ms=now_ms, received_ms=now_ms, visitor_id="v" * 32, url=f"https://{site.domain}/launch",
                 user_agent=BROWSER, ip="203.0.113.5")


async def test_announcement_reaches_other_node(cluster: LocalCluster, cluster_client: RedisCluster):
    site = site_away_from(cluster, cluster.ports[0])
    subscriber = pubsub_redis(cluster.url, cluster_client)
    pubsub = subscriber.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(live_channel(site.domain))
        event = pageview(site)
        counted = await LiveRecorder(cluster_client).record([event], [False], {uuid.UUID(event.id)})
        message = None
        async with asyncio.timeout(5):
            while message is None:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
    finally:
        await pubsub.aclose()
        await subscriber.aclose()

    assert counted == 1
    assert message["channel"] == live_channel(site.domain).encode()
    assert message["data"] == b"1"


async def test_feed_shows_counted_event(cluster: LocalCluster, cluster_client: RedisCluster):
    site = site_away_from(cluster, cluster.ports[0])
    await SiteDirectory(cluster_client).publish([site])
    async with running_realtime(cluster.url, REDIS_CLUSTER=True, STREAM_PARTITIONS=4) as realtime:
        async with open_sse(f"{realtime.url}/live/{site.domain}", AUTH) as stream:
            first = await stream.next_update()
            event = pageview(site)
            await LiveRecorder(cluster_client).record([event], [False], {uuid.UUID(event.id)})
            update = await stream.wait_for(lambda u: u["pageviews"] == 1, timeout_s=5.0)

    assert first["pageviews"] == 0
    assert update["visitors"] == 1
    assert update["top_pages"] == [{"path": "/launch", "pageviews": 1}]
