"""The query API: keys, parameter errors, and counts in the site's time zone."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from query.api import POOL_KEY, REDIS_BREAKER_KEY, create_api_app
from query.cache import cache_key
from query.settings import ApiSettings
from sinks.guard import run_guard
from sinks.sites import upsert_site
from streams.sites import Site, SiteDirectory
from tests.conftest import API_KEY, free_port, wait_until_processed

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
        ({"site": "a.example", "from": "9999-12-31", "to": "9999-12-31"}, 400, "from"),
        ({"site": "a.example", "from": "0001-01-01", "to": "0001-01-02", "compare": "previous"}, 400, "from"),
    ],
    ids=["unknown-parameter", "missing-site", "invalid-date", "reversed-range", "unknown-site", "last-date",
         "first-date"],
)
async def test_bad_parameters_name_the_parameter(stack, db, redis, params, status, parameter):
    await add_site(stack, db, redis, Site("a.example", "UTC"))

    got_status, body = await get(stack, "/api/overview", params)

    assert got_status == status
    assert body["parameter"] == parameter
    assert parameter in body["error"]


async def test_overview_counts_in_site_timezone(stack, db, redis):
    # 03:30 UTC is still the previous day in New York (UTC-4 or UTC-5).
    day = datetime.now(timezone.utc).date() - timedelta(days=10)
    previous = day - timedelta(days=1)
    await add_site(stack, db, redis, Site("ny.example", "America/New_York"))
    await post_events(stack, [
        {"site": "ny.example", "url": "https://ny.example/a", "timestamp": f"{day}T03:30:00Z"},
        {"site": "ny.example", "url": "https://ny.example/b", "timestamp": f"{day}T03:40:00Z"},
        {"site": "ny.example", "url": "https://ny.example/a", "timestamp": f"{day}T15:00:00Z"},
        {"site": "ny.example", "type": "signup", "name": "signup", "timestamp": f"{day}T15:01:00Z"},
    ])
    await wait_until_processed(redis)

    _, local_previous = await get(stack, "/api/overview", {"site": "ny.example", "from": str(previous), "to": str(previous)})
    _, local_day = await get(stack, "/api/overview", {"site": "ny.example", "from": str(day), "to": str(day)})
    _, pages = await get(stack, "/api/pages", {"site": "ny.example", "from": str(previous), "to": str(day)})

    assert (local_previous["pageviews"], local_previous["sessions"], local_previous["visitors"]) == (2, 1, 1)
    assert (local_day["pageviews"], local_day["events"], local_day["sessions"]) == (1, 1, 1)
    assert local_previous["bounce_rate"] == 0.0
    assert pages["data"] == [{"path": "/a", "pageviews": 2, "visitors": 1}, {"path": "/b", "pageviews": 1, "visitors": 1}]
    assert pages["freshness"]["tables"]["daily_metrics"]["stale"] is False


async def test_bot_pageviews_are_kept_out_of_visitors(stack, db, redis):
    await add_site(stack, db, redis, Site("b.example", "UTC"))
    day = datetime.now(timezone.utc).date() - timedelta(days=1)
    event = {"site": "b.example", "url": "https://b.example/", "timestamp": f"{day}T10:00:00Z"}
    await post_events(stack, [event], user_agent="Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)")
    await post_events(stack, [event], user_agent="-")
    await wait_until_processed(redis)

    _, overview = await get(stack, "/api/overview", {"site": "b.example", "from": str(day), "to": str(day)})

    assert (overview["pageviews"], overview["bot_pageviews"], overview["visitors"], overview["sessions"]) == (0, 2, 0, 0)


async def test_api_reads_from_read_url_and_never_writes(database_url, redis_url, db):
    await run_guard(db, timescaledb="off")
    await upsert_site(db, Site("r.example", "UTC"))
    port = free_port()
    # DATABASE_URL names a server that does not exist, so every answer must come from the read URL.
    settings = ApiSettings(NODE_ENV="production", DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
                           DATABASE_READ_URL=database_url, REDIS_URL=redis_url, API_KEYS=API_KEY, PORT=port)
    app = create_api_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession(headers=AUTH) as http:
            async with http.get(f"http://127.0.0.1:{port}/api/sites") as response:
                sites = await response.json()
        async with app[POOL_KEY].acquire() as conn:
            read_only = await conn.fetchval("SHOW default_transaction_read_only")
    finally:
        await runner.cleanup()

    assert sites == {"data": [{"domain": "r.example", "timezone": "UTC", "aliases": []}]}
    assert read_only == "on"


async def test_live_counts_a_posted_pageview(stack, db, redis):
    await add_site(stack, db, redis, Site("live.example", "UTC"))
    await post_events(stack, [{"site": "live.example", "url": "https://live.example/now"}])
    await wait_until_processed(redis)

    status, live = await get(stack, "/api/live", {"site": "live.example"})

    assert status == 200
    assert (live["visitors"], live["pageviews_last_minute"]) == (1, 1)
    assert live["top_pages"] == [{"path": "/now", "pageviews": 1}]


async def test_nul_in_a_parameter_is_400(stack, db, redis):
    await add_site(stack, db, redis, Site("n.example", "UTC"))

    status, body = await get(stack, "/api/pages", {"site": "n.example", "filter": "page:eq:\x00"})

    assert status == 400
    assert body["parameter"] == "filter"


@contextlib.asynccontextmanager
async def running_api(database_url: str, redis_url: str, **settings) -> AsyncIterator[tuple[web.Application, str]]:
    """Run an API app on a free port of 127.0.0.1; yield it and its base URL."""
    port = free_port()
    app = create_api_app(ApiSettings(NODE_ENV="production", DATABASE_URL=database_url, REDIS_URL=redis_url,
                                     API_KEYS=API_KEY, PORT=port, **settings))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield app, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def get_unavailable(url: str, path: str, params: dict | None = None) -> tuple[int, str | None, dict]:
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.get(f"{url}{path}", params=params) as response:
            return response.status, response.headers.get("Retry-After"), await response.json()


async def test_database_down_is_503_with_retry_after(database_url, redis_url, db):
    async with running_api(database_url, redis_url) as (app, url):
        # Closing every pooled connection under the API makes the database unreachable, as if it went away.
        await app[POOL_KEY].close()
        status, retry, body = await get_unavailable(url, "/api/sites")

    assert (status, retry) == (503, "5")
    assert body == {"error": "the database is unreachable; retry shortly"}


async def test_live_with_redis_down_is_503(database_url, db):
    await run_guard(db, timescaledb="off")
    await upsert_site(db, Site("live.example", "UTC"))

    # Nothing listens on this port, so every Redis command fails to connect.
    async with running_api(database_url, f"redis://127.0.0.1:{free_port()}/0") as (_app, url):
        status, retry, body = await get_unavailable(url, "/api/live", {"site": "live.example"})

    assert (status, retry) == (503, "5")
    assert body == {"error": "Redis is unreachable, so the live counters cannot be read; retry shortly"}


async def test_query_over_timeout_is_503(database_url, redis_url, db):
    await run_guard(db, timescaledb="off")

    async with running_api(database_url, redis_url, QUERY_TIMEOUT_S=0.5) as (_app, url):
        # A lock that a migration could hold makes the query wait as on a PostgreSQL that hangs.
        async with db.transaction():
            await db.execute("LOCK TABLE sites IN ACCESS EXCLUSIVE MODE")
            status, retry, body = await get_unavailable(url, "/api/sites")

    assert (status, retry) == (503, "5")
    assert body == {"error": "the database did not answer within 0.5 s (QUERY_TIMEOUT_S); retry shortly, "
                             "or ask for a shorter period or fewer filters"}


@pytest.mark.parametrize(("params", "error"), [
    ([("limit", "\uff15")], "invalid limit='\uff15': give a whole number from 1 to 1000"),
    ([("limit", "+5")], "invalid limit='+5': give a whole number from 1 to 1000"),
    ([("limit", "5_0")], "invalid limit='5_0': give a whole number from 1 to 1000"),
    ([("offset", " 1")], "invalid offset=' 1': give a whole number from 0 to 1000000"),
    ([("limit", "5"), ("limit", "7")], "parameter 'limit' is given 2 times; give it once"),
    ([("site", "b.example")], "parameter 'site' is given 2 times; give it once"),
], ids=["fullwidth-digit", "sign", "underscore", "space", "repeated-limit", "repeated-site"])
async def test_loose_or_repeated_values_are_400(stack, db, redis, params, error):
    await add_site(stack, db, redis, Site("a.example", "UTC"))

    status, body = await get(stack, "/api/pages", [("site", "a.example"), ("period", "7d"), *params])

    assert status == 400
    assert body["error"] == error


async def test_repeated_filter_is_accepted(stack, db, redis):
    await add_site(stack, db, redis, Site("a.example", "UTC"))

    status, body = await get(stack, "/api/pages", [("site", "a.example"), ("period", "7d"), ("limit", "07"),
                                                   ("filter", "page:not:/a"), ("filter", "page:not:/b")])

    assert status == 200
    assert body["data"] == []


async def test_endpoint_without_parameters_says_so(stack):
    status, body = await get(stack, "/api/sites", {"site": "x"})

    assert status == 400
    assert body["error"] == "unknown parameter 'site'; this endpoint takes no parameters"


class FreezingProxy:
    """A TCP proxy to PostgreSQL that, once frozen, accepts connections and forwards nothing,
    as a hung PostgreSQL does."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.frozen:
            await reader.read()  # until the client gives up
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer),
                             return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                if self.frozen:
                    await asyncio.Event().wait()  # hold the bytes: no reply ever comes
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.close()


async def test_hung_database_503_within_timeout(database_url, redis_url, db):
    await run_guard(db, timescaledb="off")
    parts = urlsplit(database_url)
    proxy = FreezingProxy(parts.port or 5432)
    proxied_url = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{await proxy.start()}"))

    async with running_api(proxied_url, redis_url, QUERY_TIMEOUT_S=1) as (_app, url):
        before = await get_unavailable(url, "/api/sites")
        proxy.frozen = True
        timings = []
        for _ in range(3):
            started = time.monotonic()
            status, _retry, _body = await get_unavailable(url, "/api/sites")
            timings.append((status, time.monotonic() - started < 5))
        proxy.server.close()

    assert before == (200, None, {"data": []})
    # The first request waits for its query and the later ones for a new connection. Each stops at the timeout.
    assert timings == [(503, True), (503, True), (503, True)]


@pytest.mark.parametrize(("value", "error"), [
    ("asn:eq:notanumber", "invalid value 'notanumber' in filter='asn:eq:notanumber': asn takes whole numbers from 0 "
                          "to 4294967295 without the AS prefix, such as 13335"),
    ("asn:in:13335|AS15169", "invalid value 'AS15169' in filter='asn:in:13335|AS15169': asn takes whole numbers "
                             "from 0 to 4294967295 without the AS prefix, such as 13335"),
    ("asn:eq:013335", "invalid value '013335' in filter='asn:eq:013335': asn takes whole numbers from 0 to "
                      "4294967295 without the AS prefix, such as 13335"),
    ("asn:not:4294967296", "invalid value '4294967296' in filter='asn:not:4294967296': asn takes whole numbers "
                           "from 0 to 4294967295 without the AS prefix, such as 13335"),
    ("asn:contains:AS", "invalid value 'AS' in filter='asn:contains:AS': asn takes whole numbers from 0 to "
                        "4294967295 without the AS prefix, such as 13335"),
    ("government:eq:maybe", "invalid value 'maybe' in filter='government:eq:maybe': government takes government "
                            "or other, the values /api/network?dimension=government returns"),
    ("government:eq:true", "invalid value 'true' in filter='government:eq:true': government takes government "
                           "or other, the values /api/network?dimension=government returns"),
    ("country:eq:de", "invalid value 'de' in filter='country:eq:de': country takes ISO 3166-1 alpha-2 codes in "
                      "capitals, such as DE"),
    ("country:contains:DEU", "invalid value 'DEU' in filter='country:contains:DEU': country takes ISO 3166-1 "
                             "alpha-2 codes in capitals, such as DE"),
    ("page:in:", "invalid filter='page:in:': the list of values after the second colon is empty; "
                 "give the value to match"),
    ("page:eq:", "invalid filter='page:eq:': the value after the second colon is empty; give the value to match"),
    ("source:contains:", "invalid filter='source:contains:': the value after the second colon is empty; "
                         "give the value to match"),
    ("page:in:/a||/b", "invalid filter='page:in:/a||/b': value 2 of the list is empty; "
                       "separate values with one | and end the list without one"),
    ("event:in:signup|", "invalid filter='event:in:signup|': value 2 of the list is empty; "
                         "separate values with one | and end the list without one"),
], ids=["asn-word", "asn-prefix", "asn-leading-zero", "asn-too-large", "asn-contains-letters", "government-maybe",
        "government-true", "country-lower-case", "country-three-letters", "in-empty-list", "eq-empty",
        "contains-empty", "in-empty-item", "in-trailing-bar"])
async def test_unmatchable_filter_value_is_400(stack, db, redis, value, error):
    await add_site(stack, db, redis, Site("a.example", "UTC"))

    status, body = await get(stack, "/api/overview", {"site": "a.example", "filter": value})

    assert status == 400
    assert body == {"error": error, "parameter": "filter"}


async def test_filter_values_in_format_match(stack, db, redis):
    await add_site(stack, db, redis, Site("g.example", "UTC"))
    await db.execute(
        """INSERT INTO session_fingerprints (site, session_id, visitor_id, started_at, ended_at, country, asn, "isGovernment")
           VALUES ('g.example', 's1', 'v1', now() - interval '1 hour', now(), 'DE', 13335, true),
                  ('g.example', 's2', 'v2', now() - interval '1 hour', now(), 'FR', 15169, false)""")
    base = {"site": "g.example", "period": "24h"}
    counts = {}
    for value in ("asn:eq:13335", "asn:in:13335|15169", "asn:contains:3", "asn:not:0", "government:eq:government",
                  "government:not:government", "country:eq:DE", "country:contains:d", "country:in:FR|DE"):
        status, body = await get(stack, "/api/overview", {**base, "filter": value})
        assert status == 200, body
        counts[value] = body["sessions"]

    assert counts == {"asn:eq:13335": 1, "asn:in:13335|15169": 2, "asn:contains:3": 1, "asn:not:0": 2,
                      "government:eq:government": 1, "government:not:government": 1, "country:eq:DE": 1,
                      "country:contains:d": 1, "country:in:FR|DE": 2}


@pytest.mark.parametrize(("path", "name", "error"), [
    ("/api/overview", "period", "empty period: use one of today, 24h, 7d, 30d, month, year, custom, "
                                "or leave period out for 30d"),
    ("/api/traffic", "dimension", "empty dimension: use one of channel, source, referrer, utm_source, utm_medium, "
                                  "utm_campaign, utm_term, utm_content, or leave dimension out for channel"),
    ("/api/pages", "kind", "empty kind: use one of top, entry, exit, or leave kind out for top"),
    ("/api/timeseries", "interval", "empty interval: use one of minute, hour, day, week, month, "
                                    "or leave interval out for day"),
    ("/api/events", "event", "empty event: name a custom event, e.g. event=signup, or leave event out for all "
                             "of them"),
], ids=["period", "dimension", "kind", "interval", "event"])
async def test_empty_choice_is_400(stack, db, redis, path, name, error):
    await add_site(stack, db, redis, Site("a.example", "UTC"))

    status, body = await get(stack, path, {"site": "a.example", name: ""})

    assert status == 400
    assert body == {"error": error, "parameter": name}


async def get_report(stack, params: dict) -> tuple[int, dict]:
    """GET /api/pages without `freshness`, whose lags change from one request to the next."""
    status, body = await get(stack, "/api/pages", params)
    body.pop("freshness", None)
    return status, body


async def test_site_alias_answers_as_domain(stack, db, redis):
    await add_site(stack, db, redis, Site("alias.example", "UTC", ("www.alias.example",)))
    await add_site(stack, db, redis, Site("other.example", "UTC"))
    day = datetime.now(timezone.utc).date() - timedelta(days=1)
    await post_events(stack, [
        {"site": "alias.example", "url": "https://alias.example/a", "timestamp": f"{day}T10:00:00Z"},
        {"site": "www.alias.example", "url": "https://www.alias.example/b", "timestamp": f"{day}T10:01:00Z"},
        {"site": "other.example", "url": "https://other.example/c", "timestamp": f"{day}T10:02:00Z"},
    ])
    await wait_until_processed(redis)
    period = {"from": str(day), "to": str(day)}

    by_domain = await get_report(stack, {"site": "alias.example", **period})
    by_alias = await get_report(stack, {"site": "www.alias.example", **period})
    by_alias_spelling = await get_report(stack, {"site": "WWW.Alias.Example.", **period})
    live_status, live = await get(stack, "/api/live", {"site": "www.alias.example"})
    unknown = await get_report(stack, {"site": "www.other.example", **period})

    assert by_domain[0] == 200
    assert by_domain[1]["site"] == "alias.example"
    assert by_domain[1]["data"] == [{"path": "/a", "pageviews": 1, "visitors": 1},
                                    {"path": "/b", "pageviews": 1, "visitors": 1}]
    assert by_alias == by_domain
    assert by_alias_spelling == by_domain
    assert live_status == 200
    assert live["site"] == "alias.example"
    assert unknown == (404, {"error": "unknown site 'www.other.example': list sites with GET /api/sites",
                             "parameter": "site"})


@contextlib.contextmanager
def own_redis_server() -> Iterator[int]:
    """Run a redis-server of this test's own on a free port of 127.0.0.1, without persistence; yield its port."""
    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Wait until it accepts connections, or a test's first request finds nothing on the port.
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"redis-server on port {port} did not start"
            time.sleep(0.05)
        yield port
    finally:
        process.kill()
        process.wait(timeout=10)


async def get_report_timed(url: str, params: dict) -> tuple[float, int, dict]:
    started = time.monotonic()
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.get(f"{url}/api/audience", params=params) as response:
            return time.monotonic() - started, response.status, await response.json()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
async def test_hung_redis_skips_cache_until_cool_down(database_url, db):
    await run_guard(db, timescaledb="off")
    await upsert_site(db, Site("h.example", "UTC"))
    await db.execute(
        """INSERT INTO session_fingerprints (site, session_id, visitor_id, started_at, ended_at, country, city)
           VALUES ('h.example', 's1', 'v1', now() - interval '1 hour', now(), 'DE', 'Berlin'),
                  ('h.example', 's2', 'v2', now() - interval '1 hour', now(), 'DE', 'Hamburg'),
                  ('h.example', 's3', 'v3', now() - interval '1 hour', now(), 'FR', 'Paris')""")
    base = {"site": "h.example", "period": "24h"}
    row = {"visitors": 1, "sessions": 1, "bounce_rate": 1.0, "avg_session_duration_s": 0.0}

    with own_redis_server() as redis_port:
        proxy = FreezingProxy(redis_port)
        proxy_url = f"redis://127.0.0.1:{await proxy.start()}/0"
        direct = Redis.from_url(f"redis://127.0.0.1:{redis_port}/0")
        async with running_api(database_url, proxy_url) as (app, url):
            # Shorter than the default, so the test can wait it out. It still spans the second request.
            app[REDIS_BREAKER_KEY].cool_down_s = 3
            warm = await get_report_timed(url, {**base, "dimension": "os"})
            proxy.frozen = True
            first = await get_report_timed(url, {**base, "dimension": "country"})
            second = await get_report_timed(url, {**base, "dimension": "city"})
            cached_while_hung = await direct.dbsize()

            proxy.frozen = False
            await asyncio.sleep(3)
            recovered = await get_report_timed(url, {**base, "dimension": "browser"})
            cached_after = await direct.dbsize()
        proxy.server.close()
        await direct.aclose()

    assert warm[1] == 200
    assert first[1:] == (200, {**first[2], "data": [{"value": "DE", **row, "visitors": 2, "sessions": 2},
                                                   {"value": "FR", **row}]})
    assert first[2]["freshness"]["stream_backlog"] is None
    # One 5 s socket timeout (the cache read) and no more: without the breaker the backlog read
    # and the cache write each waited 5 s as well.
    assert 4.5 < first[0] < 8
    assert second[1:] == (200, {**second[2], "data": [{"value": "Berlin", **row}, {"value": "Hamburg", **row},
                                                     {"value": "Paris", **row}]})
    assert second[2]["freshness"]["stream_backlog"] is None
    assert "the event stream could not be read, so a stuck pipeline would not show here" in \
        second[2]["freshness"]["warnings"]
    assert second[0] < 2
    assert cached_while_hung == 1
    assert recovered[1] == 200
    assert recovered[2]["freshness"]["stream_backlog"] == {"entries": 0, "oldest_age_s": 0.0}
    assert recovered[0] < 2
    assert cached_after == 2


async def test_cache_ttl_zero_reads_no_cached_answer(database_url, redis_url, db, redis):
    await run_guard(db, timescaledb="off")
    await upsert_site(db, Site("c.example", "UTC"))
    params = {"site": "c.example", "period": "24h"}
    # An answer cached while the cache was on, before CACHE_TTL_S was set to 0.
    await redis.set(cache_key("/api/overview", list(params.items())), b'{"pageviews": 999}')

    async with running_api(database_url, redis_url, CACHE_TTL_S=0) as (_app, url):
        async with aiohttp.ClientSession(headers=AUTH) as http:
            async with http.get(f"{url}/api/overview", params=params) as response:
                status, body = response.status, await response.json()

    assert status == 200
    assert body["pageviews"] == 0
