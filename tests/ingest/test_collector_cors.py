"""CORS from CORS_ORIGINS: preflight, response headers, and origins that are not allowed."""

from __future__ import annotations

import pytest

from ingest.cors import ALLOWED_HEADERS
from tests.ingest.conftest import metric, stream_events

EVENT = {"site": "example.com", "url": "https://example.com/"}


def preflight_headers(origin: str, request_headers: str = "content-type") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": request_headers}


@pytest.mark.parametrize("path", ["/collect", "/api/event", "/v1/batch", "/v1/track"])
async def test_preflight_any_origin(http, collector, path):
    async with http.options(collector.route(path), headers=preflight_headers("https://blog.example")) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        assert int(response.headers["Access-Control-Max-Age"]) > 0
        allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "content-encoding", "authorization"} <= allowed


async def test_response_carries_cors_headers(http, collector):
    async with http.post(collector.route("/collect"), json=EVENT, headers={"Origin": "https://blog.example"}) as response:
        assert response.status == 202
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Retry-After" in response.headers["Access-Control-Expose-Headers"]


async def test_error_response_carries_cors_headers(http, collector):
    async with http.post(collector.route("/collect"), data=b"{", headers={"Origin": "https://blog.example"}) as response:
        assert response.status == 400
        assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_allow_list_echoes_listed_origin(http, make_collector, sites):
    collector = await make_collector(CORS_ORIGINS="https://example.com, https://App.Example.com/")

    async with http.options(collector.route("/collect"), headers=preflight_headers("https://app.example.com")) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert response.headers["Vary"] == "Origin"
    async with http.post(collector.route("/collect"), json=EVENT, headers={"Origin": "https://example.com"}) as response:
        assert response.status == 202
        assert response.headers["Access-Control-Allow-Origin"] == "https://example.com"


async def test_allow_list_rejects_other_origin(http, make_collector, sites, redis_client):
    collector = await make_collector(CORS_ORIGINS="https://example.com")
    before = metric("weir_collect_rejected_events_total", reason="origin_not_allowed")

    async with http.options(collector.route("/collect"), headers=preflight_headers("https://evil.example")) as response:
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers
    async with http.post(collector.route("/collect"), json=EVENT, headers={"Origin": "https://evil.example"}) as response:
        body = await response.json()
        assert response.status == 403
    assert body["reason"] == "origin_not_allowed"
    assert "'https://evil.example'" in body["error"]
    assert "CORS_ORIGINS" in body["error"]
    assert await stream_events(redis_client) == []
    assert metric("weir_collect_rejected_events_total", reason="origin_not_allowed") == before + 1


async def test_allow_list_leaves_server_senders_alone(http, make_collector, sites):
    collector = await make_collector(CORS_ORIGINS="https://example.com")

    async with http.post(collector.route("/collect"), json=EVENT) as response:
        assert response.status == 202
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_plain_options_lists_methods(http, collector):
    async with http.options(collector.route("/collect")) as response:
        assert response.status == 204
        assert response.headers["Allow"] == "GET, POST, OPTIONS"


async def test_health_and_metrics_unaffected(http, make_collector, sites):
    collector = await make_collector(CORS_ORIGINS="https://example.com")

    for path in ("/health", "/metrics"):
        async with http.get(collector.route(path), headers={"Origin": "https://evil.example"}) as response:
            assert response.status == 200
            assert "Access-Control-Allow-Origin" not in response.headers


async def test_unknown_path_404_not_cors(http, collector):
    async with http.options(collector.route("/nope"), headers=preflight_headers("https://a.example")) as response:
        assert response.status == 404


def test_allowed_headers_cover_sdks():
    names = {h.strip().lower() for h in ALLOWED_HEADERS.split(",")}

    assert {"content-type", "content-encoding", "authorization", "x-requested-with"} <= names
