"""The query API: keys, parameter errors, and counts in the site's time zone."""

from __future__ import annotations

import aiohttp
import pytest

from sinks.sites import upsert_site
from streams.sites import Site, SiteDirectory
from tests.conftest import API_KEY, wait_until_processed

AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def add_site(stack, db, redis, site: Site) -> None:
    await upsert_site(db, site)
    await SiteDirectory(redis).publish([site])


async def post_events(stack, events: list[dict], user_agent: str = "Mozilla/5.0 (X11; Linux x86_64) "
                      "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36") -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{stack.collector_url}/collect", json={"events": events},
                             headers={"User-Agent": user_agent}) as response:
            assert response.status == 202, await response.text()
            return await response.json()


async def get(stack, path: str, params: dict, headers: dict | None = AUTH) -> tuple[int, dict]:
    async with aiohttp.ClientSession(headers=headers or {}) as http:
        async with http.get(f"{stack.api_url}{path}", params=params) as response:
            return response.status, await response.json()


async def test_request_without_key_is_401(stack):
    status, body = await get(stack, "/api/sites", {}, headers=None)

    assert status == 401
    assert body == {"error": "missing or invalid API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`"}


async def test_x_api_key_header_is_accepted(stack):
    status, body = await get(stack, "/api/sites", {}, headers={"X-API-Key": API_KEY})

    assert status == 200
    assert body == {"data": []}


async def test_wrong_key_is_401(stack):
    status, _ = await get(stack, "/api/sites", {}, headers={"Authorization": "Bearer nope"})

    assert status == 401


@pytest.mark.parametrize(
    ("params", "status", "parameter"),
    [
        ({"site": "a.example", "from": "2026-01-01", "to": "2026-01-02", "colour": "red"}, 400, "colour"),
        ({"from": "2026-01-01", "to": "2026-01-02"}, 400, "site"),
        ({"site": "a.example", "from": "2026-13-01", "to": "2026-01-02"}, 400, "from"),
        ({"site": "a.example", "from": "2026-01-05", "to": "2026-01-02"}, 400, "to"),
        ({"site": "nosuch.example", "from": "2026-01-01", "to": "2026-01-02"}, 404, "site"),
    ],
    ids=["unknown-parameter", "missing-site", "invalid-date", "reversed-range", "unknown-site"],
)
async def test_bad_parameters_name_the_parameter(stack, db, redis, params, status, parameter):
    await add_site(stack, db, redis, Site("a.example", "UTC"))

    got_status, body = await get(stack, "/api/overview", params)

    assert got_status == status
    assert body["parameter"] == parameter
    assert parameter in body["error"]


async def test_overview_counts_in_site_timezone(stack, db, redis):
    # 03:30 UTC on 2 March is still 1 March in New York (UTC-5).
    await add_site(stack, db, redis, Site("ny.example", "America/New_York"))
    await post_events(stack, [
        {"site": "ny.example", "url": "https://ny.example/a", "timestamp": "2026-03-02T03:30:00Z"},
        {"site": "ny.example", "url": "https://ny.example/b", "timestamp": "2026-03-02T03:40:00Z"},
        {"site": "ny.example", "url": "https://ny.example/a", "timestamp": "2026-03-02T15:00:00Z"},
        {"site": "ny.example", "type": "signup", "name": "signup", "timestamp": "2026-03-02T15:01:00Z"},
    ])
    await wait_until_processed(redis)

    _, march_1 = await get(stack, "/api/overview", {"site": "ny.example", "from": "2026-03-01", "to": "2026-03-01"})
    _, march_2 = await get(stack, "/api/overview", {"site": "ny.example", "from": "2026-03-02", "to": "2026-03-02"})
    _, pages = await get(stack, "/api/pages", {"site": "ny.example", "from": "2026-03-01", "to": "2026-03-02"})

    assert (march_1["pageviews"], march_1["sessions"], march_1["visitors"]) == (2, 1, 1)
    assert (march_2["pageviews"], march_2["events"], march_2["sessions"]) == (1, 1, 1)
    assert march_1["bounce_rate"] == 0.0
    assert pages["data"] == [{"path": "/a", "pageviews": 2, "visitors": 1}, {"path": "/b", "pageviews": 1, "visitors": 1}]
    assert pages["freshness"]["tables"]["raw_events"]["stale"] is False


async def test_bot_pageviews_are_kept_out_of_visitors(stack, db, redis):
    await add_site(stack, db, redis, Site("b.example", "UTC"))
    await post_events(stack, [{"site": "b.example", "url": "https://b.example/", "timestamp": "2026-03-02T10:00:00Z"}],
                      user_agent="Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)")
    await post_events(stack, [{"site": "b.example", "url": "https://b.example/", "timestamp": "2026-03-02T10:00:00Z"}],
                      user_agent="-")
    await wait_until_processed(redis)

    _, overview = await get(stack, "/api/overview", {"site": "b.example", "from": "2026-03-02", "to": "2026-03-02"})

    assert (overview["pageviews"], overview["bot_pageviews"], overview["visitors"], overview["sessions"]) == (0, 2, 0, 0)
