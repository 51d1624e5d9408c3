"""Events sent through every route land in `raw_events`, through the stream and a real processor."""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from tests.ingest.conftest import WRITE_KEY, wait_for_rows

segment_client = pytest.importorskip("segment.analytics.client", reason="pip install segment-analytics-python")

ROWS = """SELECT event_type, event_action, user_id, metadata, url, referrer, site, "timestamp"
            FROM raw_events ORDER BY event_type, event_action"""


async def test_every_route_lands_in_raw_events(http, collector, processor):
    # Step 1: one event per route.
    async with http.post(collector.route("/collect"), json={
        "site": "example.com", "url": "https://example.com/pricing", "referrer": "https://ref.example/",
        "type": "event", "name": "Signup", "props": {"plan": "pro"}, "user_id": "user-1",
    }) as response:
        assert response.status == 202
    async with http.post(collector.route("/api/event"), headers={"Content-Type": "text/plain"},
                         data=orjson.dumps({"n": "pageview", "u": "https://example.com/blog", "d": "example.com",
                                            "r": None, "w": 1280})) as response:
        assert response.status == 202
    async with http.get(collector.route("/collect"),
                        params={"site": "example.com", "url": "https://example.com/no-js"}) as response:
        assert response.status == 200
    authorization = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    async with http.post(collector.route("/v1/page"), headers={"Authorization": authorization}, json={
        "anonymousId": "anon-1", "properties": {"url": "https://example.com/docs"}, "messageId": "page-1",
    }) as response:
        assert response.status == 200

    # Step 2: the processor writes them.
    rows = await wait_for_rows(processor, ROWS, 4)

    assert [(r["event_type"], r["event_action"]) for r in rows] == [
        ("event", "Signup"), ("pageview", "/blog"), ("pageview", "/docs"), ("pageview", "/no-js")]
    signup = rows[0]
    assert signup["user_id"] == "user-1"
    assert orjson.loads(signup["metadata"]) == {"plan": "pro"}
    assert signup["url"] == "https://example.com/pricing"
    assert signup["referrer"] == "https://ref.example/"
    assert {r["site"] for r in rows} == {"example.com"}


async def test_segment_retry_stored_once(collector, processor):
    client = segment_client.Client(WRITE_KEY, host=collector.url, sync_mode=True, max_retries=0)
    # Recent, because the processor drops partitions older than RETENTION_DAYS (90).
    when = (datetime.now(timezone.utc) - timedelta(days=1)).replace(microsecond=0)

    def send() -> None:
        for _ in range(3):
            client.track(user_id="user-9", event="Order Completed", properties={"total": 19.99},
                         timestamp=when, message_id="order-123")
        client.track(user_id="user-9", event="Order Shipped", timestamp=when, message_id="order-124")

    await asyncio.to_thread(send)

    rows = await wait_for_rows(processor, ROWS, 2)
    await asyncio.sleep(0.5)  # let any duplicate arrive before counting
    rows = await wait_for_rows(processor, ROWS, 2)
    assert [(r["event_type"], r["event_action"]) for r in rows] == [("event", "Order Completed"),
                                                                    ("event", "Order Shipped")]
    assert rows[0]["timestamp"] == when
    assert rows[0]["user_id"] == "user-9"
    assert orjson.loads(rows[0]["metadata"]) == {"total": 19.99}
