"""The dashboard in headless Chromium, against a running stack, checked against the API's responses.

Needs Debian's chromium at /usr/bin/chromium and the `playwright` package; Playwright only
drives that browser and never downloads one. Screenshots of every page in the light and dark
themes and at phone width (375 px) go to tests/artifacts/.
"""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from query.dashboard import (CONTENT_SECURITY_POLICY, IMMUTABLE, REVALIDATE, accepts_gzip, add_dashboard_routes,
                             load_dashboard)
from sinks.sites import upsert_site
from streams.sites import Site, SiteDirectory
from tests.conftest import API_KEY, DATA, REPO, service_env, wait_until_processed, weir_command

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO / "tests" / "artifacts"
LOG = DATA / "access-logs" / "apache_combined.log"
SITE = "semicomplete.com"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
XSS_NAME = "<img src=x onerror=alert(1)>"
PAGES = ["overview", "pages", "events", "traffic", "audience", "network"]
INTEGER_STATS = ["visitors", "pageviews", "sessions", "events", "bot_pageviews"]
DESKTOP = {"width": 1280, "height": 900}
PERCENT_ROUNDING = 0.0005 + 1e-9
"""Largest gap between a share and the dashboard's percentage, which has one decimal place."""
PHONE = {"width": 375, "height": 812}

# ---- browser and stack helpers ----

@pytest.fixture
async def browser():
    """Debian's Chromium, driven by Playwright; skips when either is missing."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is missing at /usr/bin/chromium (apt-get install chromium)")
    async_api = pytest.importorskip("playwright.async_api", reason="the playwright package is not installed")
    async with async_api.async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


class BrowserLog:
    """Page errors, dialogs and console errors seen by one page, so a test can assert there were none."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.console: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("dialog", self._dialog)
        page.on("console", lambda message: message.type == "error" and self.console.append(message.text))

    async def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()

    def csp_violations(self) -> list[str]:
        return [text for text in self.console if "Content Security Policy" in text]


async def open_page(browser, viewport: dict = DESKTOP, color_scheme: str = "light"):
    context = await browser.new_context(viewport=viewport, color_scheme=color_scheme, locale="en-US",
                                        timezone_id="UTC")
    page = await context.new_page()
    return page, BrowserLog(page)


async def sign_in(page, api_url: str, key: str = API_KEY) -> None:
    await page.goto(f"{api_url}/")
    await page.fill("input[name=key]", key)
    await page.click("button[type=submit]")


SET_HASH = """hash => {
    if (location.hash === hash) return;
    document.getElementById("app").dataset.state = "navigating";
    location.hash = hash;
}"""


async def show(page, route: str) -> None:
    """Go to `#/route` and wait until every report of the page has loaded."""
    await page.evaluate(SET_HASH, f"#/{route}")
    await wait_ready(page)


async def wait_ready(page) -> None:
    await page.wait_for_selector("#app[data-state=ready]", state="attached", timeout=20_000)


async def click_and_wait(page, locator) -> None:
    """Click something that changes the view, and wait until the new view has loaded."""
    await page.evaluate("document.getElementById('app').dataset.state = 'navigating'")
    await locator.click()
    await wait_ready(page)


async def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    await page.mouse.move(0, 0)
    await page.screenshot(path=str(path), full_page=True)
    return path


async def api_get(api_url: str, path: str, **params) -> dict:
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.get(f"{api_url}{path}", params=params) as response:
            assert response.status == 200, await response.text()
            return await response.json()


async def table_rows(page, report: str, count: int) -> list[list[str]]:
    rows = page.locator(f'[data-report="{report}"] tbody tr')
    return [await rows.nth(i).locator("td").all_inner_texts() for i in range(min(count, await rows.count()))]


def number(text: str) -> float:
    return float(text.replace(",", "").replace("%", ""))


def seconds(text: str) -> int:
    """Parse the dashboard's "45s", "3m 05s" or "2h 07m"."""
    parts = dict((unit, int(value)) for value, unit in re.findall(r"(\d+)([hms])", text))
    return parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)


def run_weir(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(weir_command(*args), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


async def import_real_log(stack, redis) -> None:
    env = service_env(stack.database_url, stack.redis_url)
    added = await asyncio.to_thread(run_weir, env, "site", "add", SITE, "--timezone", "UTC",
                                    "--alias", f"www.{SITE}")
    assert added.returncode == 0, added.stderr
    imported = await asyncio.to_thread(run_weir, env, "import-logs", "--site", SITE, "--shift-to-today", str(LOG))
    assert imported.returncode == 0, imported.stderr
    await wait_until_processed(redis)


async def add_site(db, redis, domain: str) -> None:
    site = Site(domain=domain, timezone="UTC", aliases=())
    await upsert_site(db, site)
    await SiteDirectory(redis).publish([site])


async def post_events(stack, events: list[dict]) -> None:
    headers = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                             "Chrome/120.0 Safari/537.36"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{stack.collector_url}/collect", json={"events": events}, headers=headers) as response:
            assert response.status == 202, await response.text()


# ---- checks of one page against the API ----

async def check_overview(page, api_url: str) -> None:
    answer = await api_get(api_url, "/api/overview", site=SITE)
    displayed = {}
    for key in [*INTEGER_STATS, "bounce_rate", "pageviews_per_session", "avg_session_duration_s"]:
        displayed[key] = await page.locator(f'[data-stat="{key}"]').inner_text()
    for key in INTEGER_STATS:
        assert number(displayed[key]) == answer[key], key
    assert abs(number(displayed["bounce_rate"]) / 100 - answer["bounce_rate"]) <= PERCENT_ROUNDING
    assert number(displayed["pageviews_per_session"]) == answer["pageviews_per_session"]
    assert seconds(displayed["avg_session_duration_s"]) == math.floor(answer["avg_session_duration_s"] + 0.5)

    series = await api_get(api_url, "/api/timeseries", site=SITE, interval="day")
    overlay = await page.locator(".chart-overlay").bounding_box()
    await page.mouse.move(overlay["x"] + overlay["width"] - 1, overlay["y"] + overlay["height"] / 2)
    assert await page.locator(".chart-tip b").inner_text() == f"{series['data'][-1]['visitors']:,}"


async def check_table(page, api_url: str, report: str, path: str, label_key: str, keys: list[str], **params) -> None:
    answer = await api_get(api_url, path, site=SITE, limit=25, **params)
    expected = [[str(row[label_key]) or "(none)", *(f"{row[key]:,}" for key in keys)] for row in answer["data"][:5]]
    displayed = [row[:1 + len(keys)] for row in await table_rows(page, report, 5)]
    assert expected, f"{path} returned no rows for {params}"
    assert displayed == expected


# ---- tests ----

async def test_pages_show_api_numbers(stack, redis, browser):
    await import_real_log(stack, redis)
    page, log = await open_page(browser)
    await sign_in(page, stack.api_url)
    await wait_ready(page)

    await show(page, f"overview?site={SITE}")
    await check_overview(page, stack.api_url)
    await show(page, f"pages?site={SITE}")
    await check_table(page, stack.api_url, "pages-top", "/api/pages", "path", ["pageviews", "visitors"], kind="top")
    async with page.expect_download() as download_info:
        await page.locator('[data-report="pages-top"] button', has_text="CSV").click()
    download = await download_info.value
    assert download.suggested_filename == f"{SITE}-pages-top-30d.csv"
    assert Path(await download.path()).read_text().splitlines()[0] == "path,pageviews,visitors"
    await show(page, f"pages?site={SITE}&tab=entry")
    await check_table(page, stack.api_url, "pages-entry", "/api/pages", "path", ["sessions", "visitors"], kind="entry")
    await show(page, f"traffic?site={SITE}&dimension=source")
    await check_table(page, stack.api_url, "traffic-source", "/api/traffic", "value", ["visitors", "sessions"],
                      dimension="source")
    await show(page, f"audience?site={SITE}&dimension=browser")
    await check_table(page, stack.api_url, "audience-browser", "/api/audience", "value", ["visitors", "sessions"],
                      dimension="browser")
    await show(page, f"network?site={SITE}")
    await check_table(page, stack.api_url, "network-org_type", "/api/network", "value", ["visitors", "sessions"],
                      dimension="org_type")
    network = await api_get(stack.api_url, "/api/network", site=SITE)
    displayed_share = await page.locator('[data-stat="government_share"] b').inner_text()
    assert abs(number(displayed_share) / 100 - network["government_share"]) <= PERCENT_ROUNDING

    assert re.fullmatch(r"live: unavailable|[\d,]+ live", await page.locator(".live").inner_text())
    assert log.errors == []
    assert log.csp_violations() == []


async def test_screenshots_of_each_page(stack, redis, browser):
    await import_real_log(stack, redis)
    page, log = await open_page(browser)
    await sign_in(page, stack.api_url)
    await wait_ready(page)

    written = []
    for variant, viewport, scheme in [("light", DESKTOP, "light"), ("dark", DESKTOP, "dark"),
                                      ("phone", PHONE, "light"), ("phone-dark", PHONE, "dark")]:
        await page.set_viewport_size(viewport)
        await page.emulate_media(color_scheme=scheme)
        for name in PAGES:
            await show(page, f"{name}?site={SITE}&compare=previous")
            written.append(await screenshot(page, f"{name}-{variant}"))
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= viewport["width"], f"{variant}: the page is {width} px wide"

    assert all(path.stat().st_size > 10_000 for path in written)
    assert log.errors == []


async def test_row_click_adds_filter_chip(stack, redis, browser):
    await import_real_log(stack, redis)
    page, log = await open_page(browser)
    await sign_in(page, stack.api_url)
    await wait_ready(page)
    await show(page, f"traffic?site={SITE}&dimension=channel")

    await click_and_wait(page, page.locator('[data-report="traffic-channel"] tbody tr', has_text="search").first)
    assert await page.locator('[data-filter="channel:eq"] .chip-value').inner_text() == "search"
    assert "filter=channel%3Aeq%3Asearch" in page.url

    await page.reload()
    await wait_ready(page)
    await show(page, f"overview?site={SITE}&filter=channel:eq:search")
    filtered = await api_get(stack.api_url, "/api/overview", site=SITE, filter="channel:eq:search")
    assert number(await page.locator('[data-stat="visitors"]').inner_text()) == filtered["visitors"]
    assert await page.locator(".chip").count() == 1

    await click_and_wait(page, page.locator(".chip-remove"))
    assert await page.locator(".chip").count() == 0
    assert log.errors == []


async def test_event_name_stays_text(stack, db, redis, browser):
    await add_site(db, redis, "xss.example")
    await post_events(stack, [{"site": "xss.example", "type": "custom", "name": XSS_NAME,
                               "url": "https://xss.example/", "props": {"plan": XSS_NAME}}])
    await wait_until_processed(redis)
    page, log = await open_page(browser)
    await sign_in(page, stack.api_url)
    await wait_ready(page)

    await show(page, "events?site=xss.example")
    await click_and_wait(page, page.locator('[data-report="events"] tbody tr').first)
    await page.fill("input[name=property]", "plan")
    await click_and_wait(page, page.get_by_role("button", name="Break down"))
    await screenshot(page, "events-xss")

    assert await page.locator('[data-report="events"] .label-text').first.inner_text() == XSS_NAME
    assert await page.locator('[data-report="event-breakdown"] .label-text').first.inner_text() == XSS_NAME
    assert await page.locator(".chip-value").inner_text() == XSS_NAME
    assert await page.locator("main img, .filters img").count() == 0
    assert log.dialogs == []
    assert log.errors == []


async def test_stale_table_shows_banner(stack, db, redis, browser):
    await add_site(db, redis, "stale.example")
    await post_events(stack, [{"site": "stale.example", "url": "https://stale.example/"}])
    await wait_until_processed(redis)
    # daily_metrics, which the traffic page reads, stops two hours behind raw_events, as when its
    # writes had been failing.
    last_write = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2)
    await db.execute("UPDATE table_freshness SET last_write_at = $1, last_event_at = $1 "
                     "WHERE table_name = 'daily_metrics'", last_write)
    page, log = await open_page(browser)
    await sign_in(page, stack.api_url)
    await wait_ready(page)

    await show(page, "traffic?site=stale.example")
    await screenshot(page, "stale-banner")

    banner = page.locator(".banner.stale")
    assert await banner.is_visible()
    assert await banner.get_attribute("data-tables") == "daily_metrics"
    assert last_write.isoformat() in await banner.inner_text()
    assert log.errors == []


async def test_wrong_key_is_rejected(stack, browser):
    page, log = await open_page(browser)
    await sign_in(page, stack.api_url, key="not-the-key")

    await page.wait_for_selector(".signin-card .error:not([hidden])")
    await screenshot(page, "signin-rejected")
    assert await page.locator(".signin-card .error").inner_text() == "That API key was rejected."
    assert await page.evaluate("sessionStorage.length") == 0
    assert log.errors == []


# ---- serving ----

@pytest.fixture
async def dashboard_client():
    app = web.Application()
    add_dashboard_routes(app)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    yield client
    await client.close()


async def test_index_has_csp_and_revalidates(dashboard_client):
    response = await dashboard_client.get("/")
    body = await response.text()
    again = await dashboard_client.get("/", headers={"If-None-Match": response.headers["ETag"]})

    assert response.status == 200
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert response.headers["Cache-Control"] == REVALIDATE
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert again.status == 304
    assert re.findall(r"<script\b[^>]*>", body) == [
        f'<script type="module" src="/assets/{load_dashboard().version}/app.js">']


async def test_assets_cached_by_version(dashboard_client):
    version = load_dashboard().version
    current = await dashboard_client.get(f"/assets/{version}/app.js")
    old = await dashboard_client.get("/assets/0123456789ab/app.js")
    missing = await dashboard_client.get(f"/assets/{version}/secrets.py")
    outside = await dashboard_client.get(f"/assets/{version}/..%2Fdashboard.py")

    assert current.status == 200
    assert current.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert current.headers["Cache-Control"] == IMMUTABLE
    assert current.headers["Content-Encoding"] == "gzip"
    assert old.status == 200
    assert old.headers["Cache-Control"] == REVALIDATE
    assert missing.status == 404
    assert outside.status == 404


@pytest.mark.parametrize(("header", "expected"), [
    ("gzip, deflate, br", True),
    ("br;q=1.0, gzip;q=0.8", True),
    ("*", True),
    ("gzip;q=0", False),
    ("identity", False),
    ("", False),
])
def test_accepts_gzip_reads_quality(header, expected):
    assert accepts_gzip(header) is expected


def test_scripts_never_parse_markup():
    """Values reach the page only as text: no script writes HTML from a string."""
    folder = REPO / "query" / "dashboard"
    for path in folder.glob("*.js"):
        source = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in source, f"{path.name} uses {sink}"
