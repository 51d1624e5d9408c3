"""The shipped nginx configuration, run by Debian's nginx in front of real Weir processes.

Traffic goes over HTTPS to three collector processes and lands exactly once in raw_events. The
body limit, the API cache, the routing of event paths and the live feed are checked through the
proxy too. The realtime service sends `X-Accel-Buffering: no`, which turns nginx's buffering off
regardless of the configuration. So the unbuffered pass-through is checked on a copy of the
shipped live-feed location in front of a stand-in stream that sends no such header.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from tests.conftest import API_KEY, wait_until_processed
from tests.deploy.deploy_files import find_tool
from tests.deploy.edge import HELD_STREAM_PATH, SITE, Edge, process_log, start_edge, stop_edge

pytestmark = [
    pytest.mark.skipif(find_tool("nginx") is None, reason="nginx is not installed (apt-get install -y nginx)"),
    pytest.mark.skipif(find_tool("openssl") is None, reason="openssl is not installed (apt-get install -y openssl)"),
]

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
MIB = 1024 * 1024
# A retried event keeps its message id and its time, which together give it the same event id.
SENT_AT_MS = int(time.time() * 1000) - 60_000


@pytest.fixture(scope="module")
def edge() -> Iterator[Edge]:
    running = start_edge()
    try:
        yield running
    finally:
        logs = {name: process_log(running, name)[-2000:] for name in running.processes}
        stop_edge(running)
        crashed = {name: text for name, text in logs.items() if "Traceback" in text}
        assert not crashed, f"a service logged a traceback: {crashed}"


@pytest.fixture
async def https(edge: Edge) -> AsyncIterator[aiohttp.ClientSession]:
    """A client that trusts only the edge's throwaway certificate."""
    context = ssl.create_default_context(cafile=str(edge.ca_file))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=20)) as session:
        yield session


def pageview(number: int, prefix: str) -> dict:
    return {"site": SITE, "type": "pageview", "url": f"https://{SITE}/{prefix}/{number}", "id": f"{prefix}-{number}",
            "timestamp": SENT_AT_MS}


async def post_batch(https: aiohttp.ClientSession, edge: Edge, events: list[dict]) -> list[str]:
    async with https.post(f"{edge.https_url}/collect", json={"events": events},
                          headers={"User-Agent": BROWSER}) as response:
        assert response.status == 202, await response.text()
        body = await response.json()
    assert body["rejected"] == []
    return body["ids"]


async def stored_counts(edge: Edge, ids: list[str]) -> dict[str, int]:
    conn = await asyncpg.connect(edge.database_url)
    try:
        rows = await conn.fetch("SELECT id::text AS id, count(*) AS n FROM raw_events WHERE id::text = ANY($1::text[]) "
                                "GROUP BY id", ids)
    finally:
        await conn.close()
    return {row["id"]: row["n"] for row in rows}


async def wait_processed(edge: Edge) -> None:
    redis = Redis.from_url(edge.redis_url)
    try:
        await wait_until_processed(redis, timeout_s=30)
    finally:
        await redis.aclose()


async def events_received(http: aiohttp.ClientSession, collector_url: str) -> float:
    async with http.get(f"{collector_url}/metrics") as response:
        text = await response.text()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == "analytics_events_received_total")


async def test_events_stored_once_across_collectors(edge, https):
    before = await _received_per_collector(edge)
    batches = [[pageview(n, "spread") for n in range(start, start + 5)] for start in range(0, 300, 5)]

    id_lists = await asyncio.gather(*(post_batch(https, edge, batch) for batch in batches))
    # A client retry sends the same events again; they map to the same event ids.
    retried = await asyncio.gather(*(post_batch(https, edge, batch) for batch in batches[:10]))
    await wait_processed(edge)

    ids = [event_id for id_list in id_lists for event_id in id_list]
    assert len(ids) == 300
    assert len(set(ids)) == 300
    assert {event_id for id_list in retried for event_id in id_list} <= set(ids)
    counts = await stored_counts(edge, ids)
    assert sorted(counts) == sorted(ids)
    assert set(counts.values()) == {1}
    received = [after - earlier for after, earlier in zip(await _received_per_collector(edge), before)]
    assert sum(received) == 350
    assert all(count > 0 for count in received), f"least_conn left a collector idle: {received}"


async def _received_per_collector(edge: Edge) -> list[float]:
    async with aiohttp.ClientSession() as http:
        return [await events_received(http, url) for url in edge.collector_urls]


async def test_body_just_under_limit_is_accepted(edge, https):
    padding = "x" * 3500
    events = [{**pageview(n, "large"), "props": {"padding": padding}} for n in range(280)]
    body = json.dumps({"events": events}).encode()
    assert MIB - 64 * 1024 < len(body) < MIB

    async with https.post(f"{edge.https_url}/collect", data=body,
                          headers={"Content-Type": "application/json", "User-Agent": BROWSER}) as response:
        assert response.status == 202, await response.text()
        ids = (await response.json())["ids"]
    await wait_processed(edge)

    assert len(ids) == 280
    assert set((await stored_counts(edge, ids)).values()) == {1}


async def test_body_over_limit_is_413_from_nginx(edge, https):
    body = b"[" + b" " * MIB + b"]"

    async with https.post(f"{edge.https_url}/collect", data=body,
                          headers={"Content-Type": "application/json"}) as response:
        text = await response.text()
        assert response.status == 413
        assert response.headers.get("Server") == "nginx"
        assert "413 Request Entity Too Large" in text


async def test_plain_http_redirects_with_308(edge):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{edge.http_url}/collect?x=1", data=b"{}", allow_redirects=False) as response:
            assert response.status == 308
            assert response.headers["Location"].startswith("https://")
            assert response.headers["Location"].endswith("/collect?x=1")


async def test_api_get_cached_per_key(edge, https):
    url = f"{edge.https_url}/api/sites"
    statuses = []
    for headers in ({"Authorization": f"Bearer {API_KEY}"}, {"Authorization": f"Bearer {API_KEY}"},
                    {"Authorization": "Bearer wrong-key"}, {}):
        async with https.get(url, headers=headers) as response:
            await response.read()
            statuses.append((response.status, response.headers.get("X-Cache-Status")))

    assert statuses[0] == (200, "MISS")
    assert statuses[1] == (200, "HIT")
    assert statuses[2][0] == 401
    assert statuses[3][0] == 401


async def test_event_routes_bypass_api_cache(edge, https):
    for path in ("/api/event", "/v1/batch", "/collect"):
        async with https.post(f"{edge.https_url}{path}", json={}) as response:
            await response.read()
            assert "X-Cache-Status" not in response.headers, f"{path} went to the API location"


async def test_metrics_hidden_from_outside(edge, https):
    async with https.get(f"{edge.https_url}/metrics") as response:
        assert response.status == 404


class HeldStream:
    """A stand-in SSE stream: one event, then the stream stays open until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.finished_at: float | None = None

    async def sse(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(b"id: 1\ndata: first\n\n")
        try:
            await asyncio.wait_for(self.release.wait(), 10)
        finally:
            self.finished_at = time.monotonic()
        await response.write(b"id: 2\ndata: second\n\n")
        return response


@pytest.fixture
async def held_stream(edge: Edge) -> AsyncIterator[HeldStream]:
    stream = HeldStream()
    app = web.Application()
    app.router.add_get(HELD_STREAM_PATH + "/{site}", stream.sse)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", edge.held_stream_port).start()
    yield stream
    stream.release.set()
    await runner.cleanup()


async def test_live_location_passes_sse_unbuffered(edge, https, held_stream):
    url = f"{edge.https_url}{HELD_STREAM_PATH}/{SITE}"
    async with https.get(url, headers={"Accept": "text/event-stream"}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 3)
        # The upstream keeps the stream open until released, so only pass-through can have delivered this.
        assert held_stream.finished_at is None
        held_stream.release.set()
        second = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 3)

    assert first == b"id: 1\ndata: first\n\n"
    assert second == b"id: 2\ndata: second\n\n"


async def test_live_sse_reaches_realtime(edge, https):
    async with https.get(f"{edge.https_url}/live/{SITE}", params={"key": API_KEY},
                         headers={"Accept": "text/event-stream"}) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        block = b""
        while b"data:" not in block:
            block = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)

    data = json.loads(next(line for line in block.split(b"\n") if line.startswith(b"data:"))[5:])
    assert isinstance(data, dict)


async def test_live_rejects_invalid_key(edge, https):
    async with https.get(f"{edge.https_url}/live/{SITE}", params={"key": "wrong-key"}) as response:
        assert response.status == 401


async def test_live_websocket_reaches_realtime(edge, https):
    url = f"{edge.https_url.replace('https', 'wss')}/live/{SITE}/ws"
    async with https.ws_connect(url, params={"key": API_KEY}) as socket:
        message = await asyncio.wait_for(socket.receive_str(), 5)

    assert isinstance(json.loads(message), dict)
