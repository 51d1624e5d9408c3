"""The tracker in headless Chromium against the collector and a processor: what a page does lands in `raw_events`.

Needs Debian's `chromium` and the Python `playwright` package; Playwright's own browser
download is never used. Every request the page makes to a host other than 127.0.0.1 or
localhost is aborted, so the test stays on this machine.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.ingest.conftest import wait_for_rows

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if shutil.which("chromium") is None:
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)
async_api = pytest.importorskip("playwright.async_api", reason="pip install playwright (no browser download needed)")

LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
ROWS = "SELECT event_type, event_action, metadata FROM raw_events ORDER BY \"timestamp\", event_type"

PAGE = """<!doctype html>
<html><head><title>Weir tracker test</title>
<script defer src="{collector}/script.js" data-domain="example.com" {attributes}></script>
</head><body>
<a id="outbound" href="http://localhost:{port}/elsewhere?from=test">partner</a>
<a id="download" href="/files/annual-report.pdf">report</a>
<a id="internal" href="/about">about</a>
<script>
  // Keep the page in place, so the test sees every click; the tracker listens in the capture phase.
  document.addEventListener("click", function (event) {{ event.preventDefault(); }});
</script>
</body></html>
"""


async def serve_pages(collector_url: str) -> tuple[web.AppRunner, str]:
    async def page(request: web.Request) -> web.Response:
        attributes = request.query.get("attributes", "")
        port = request.url.port
        html = PAGE.format(collector=collector_url, port=port, attributes=attributes)
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/{path:.*}", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@pytest.fixture
async def browser(collector) -> AsyncIterator[tuple[object, str]]:
    """Yield a browser context that reaches only this machine, and the URL of the test pages."""
    runner, pages_url = await serve_pages(collector.url)
    async with async_api.async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        context = await chromium.new_context()

        async def stay_local(route) -> None:
            host = route.request.url.split("/")[2].rsplit(":", 1)[0]
            if host in ("127.0.0.1", "localhost"):
                await route.continue_()
            else:
                await route.abort()

        await context.route("**/*", stay_local)
        try:
            yield context, pages_url
        finally:
            await context.close()
            await chromium.close()
            await runner.cleanup()


async def open_page(context, url: str, init_script: str | None = None):
    page = await context.new_page()
    if init_script:
        await page.add_init_script(init_script)
    await page.goto(url)
    await page.wait_for_function("typeof window.weir === 'function'")
    return page


async def test_tracker_events_land_in_raw_events(browser, processor):
    context, pages_url = browser
    port = pages_url.rsplit(":", 1)[1]

    # Step 1: pages that must send nothing: opted out in localStorage, and Do Not Track honoured.
    opted_out = await open_page(context, f"{pages_url}/opted-out", "localStorage.setItem('weir_ignore', 'true')")
    await opted_out.evaluate("weir('event', 'Ignored')")
    await opted_out.click("#outbound")
    await opted_out.evaluate("localStorage.removeItem('weir_ignore')")  # storage is shared by the origin's pages
    await opted_out.close()
    dnt = "Object.defineProperty(navigator, 'doNotTrack', {get: () => '1'})"
    await (await open_page(context, f"{pages_url}/dnt?attributes=data-respect-dnt", dnt)).close()

    # Step 2: Do Not Track without the opt-in attribute is counted, as are clicks, SPA routes and events.
    page = await open_page(context, f"{pages_url}/landing?utm_source=test", dnt)
    await page.click("#outbound")
    await page.click("#download")
    await page.click("#internal")
    await page.evaluate("history.pushState({}, '', '/spa/step-2')")
    await page.evaluate("history.replaceState({}, '', '/spa/step-2?tab=1')")
    await page.evaluate("weir('event', 'Signup', {plan: 'pro', seats: 3})")

    # Step 3: hash routing, opted into with data-hash.
    page = await open_page(context, f"{pages_url}/app?attributes=data-hash")
    await page.evaluate("location.hash = '#/inbox'")

    rows = await wait_for_rows(processor, ROWS, 7, timeout_s=20)
    await asyncio.sleep(0.3)
    rows = await wait_for_rows(processor, ROWS, 7)
    found = [(r["event_type"], r["event_action"]) for r in rows]
    assert found == [
        ("pageview", "/landing"),
        ("outbound", f"http://localhost:{port}/elsewhere?from=test"),
        ("download", f"{pages_url}/files/annual-report.pdf"),
        ("pageview", "/spa/step-2"),
        ("event", "Signup"),
        ("pageview", "/app"),
        ("pageview", "/app#/inbox"),
    ]
    assert rows[1]["metadata"] == f'{{"url": "http://localhost:{port}/elsewhere?from=test"}}'
    assert rows[4]["metadata"] == '{"plan": "pro", "seats": 3}'
