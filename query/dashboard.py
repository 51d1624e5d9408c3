"""The dashboard: static files under `query/dashboard/`, served by the API at `/` and `/assets/`.

| route                         | body                      | Cache-Control                         |
|-------------------------------|---------------------------|---------------------------------------|
| GET /                         | index.html                | no-cache (revalidated by ETag)        |
| GET /assets/{version}/{name}  | a file of the folder      | immutable for a year when `version` is the current one, no-cache otherwise |

`version` is a hash of every file's content, written into index.html as it is loaded, so a
browser keeps the files until they change and never mixes files of two releases. Modules import
each other by relative paths, which resolve under the same version. Every response carries a
Content-Security-Policy that allows scripts, styles and requests from this origin only: no
inline script, no `eval`, no other host.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

logger = logging.getLogger(__name__)

ASSET_DIR = Path(__file__).with_name("dashboard")
VERSION_PLACEHOLDER = "__ASSET_VERSION__"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# `style-src 'self'` still lets scripts set element.style (CSSOM), which the bars and the chart
# tooltip use. It blocks `style` attributes in markup and inline <style> elements.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@dataclass(frozen=True, slots=True)
class Asset:
    """One file as served: its bytes, their gzip form and a strong ETag of the bytes."""

    body: bytes
    gzipped: bytes
    content_type: str
    etag: str


@dataclass(frozen=True, slots=True)
class Dashboard:
    """The files of the dashboard, read once. `index` already names the assets under `version`."""

    version: str
    index: Asset
    assets: dict[str, Asset]


DASHBOARD_KEY = web.AppKey("dashboard", Dashboard)


def _asset(body: bytes, content_type: str) -> Asset:
    digest = hashlib.sha256(body).hexdigest()[:20]
    return Asset(body, gzip.compress(body, mtime=0), content_type, f'"{digest}"')


def load_dashboard(directory: Path = ASSET_DIR) -> Dashboard:
    """Read the dashboard's files from `directory` and write the asset version into index.html.

    Only files directly in `directory` with a type listed in CONTENT_TYPES are served, so a
    request can never reach a file outside it. Raises FileNotFoundError when index.html is missing.
    """
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in CONTENT_TYPES)
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    version = digest.hexdigest()[:12]

    assets = {p.name: _asset(p.read_bytes(), CONTENT_TYPES[p.suffix]) for p in files if p.name != "index.html"}
    index_text = (directory / "index.html").read_text(encoding="utf-8").replace(VERSION_PLACEHOLDER, version)
    index = _asset(index_text.encode(), CONTENT_TYPES[".html"])
    logger.info("dashboard loaded version=%s files=%d", version, len(files), extra={"version": version})
    return Dashboard(version, index, assets)


def accepts_gzip(header: str) -> bool:
    """Return whether an Accept-Encoding header allows gzip (`gzip;q=0` rejects it)."""
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        quality = params.strip().removeprefix("q=")
        try:
            return not params.strip() or float(quality) > 0
        except ValueError:
            return False
    return False


def _serve(request: web.Request, asset: Asset, cache_control: str) -> web.Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": cache_control, "ETag": asset.etag, "Vary": "Accept-Encoding"}
    if asset.etag in {tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")}:
        return web.Response(status=304, headers=headers)
    body = asset.body
    if accepts_gzip(request.headers.get("Accept-Encoding", "")):
        body = asset.gzipped
        headers["Content-Encoding"] = "gzip"
    headers["Content-Type"] = asset.content_type
    return web.Response(body=body, headers=headers)


async def get_index(request: web.Request) -> web.Response:
    return _serve(request, request.app[DASHBOARD_KEY].index, REVALIDATE)


async def get_asset(request: web.Request) -> web.Response:
    dashboard = request.app[DASHBOARD_KEY]
    asset = dashboard.assets.get(request.match_info["name"])
    if asset is None:
        raise web.HTTPNotFound(reason=f"no dashboard file named {request.match_info['name']!r}")
    # A page loaded before an upgrade may ask for its old version: it gets today's file, uncached.
    current = request.match_info["version"] == dashboard.version
    return _serve(request, asset, IMMUTABLE if current else REVALIDATE)


def add_dashboard_routes(app: web.Application, directory: Path = ASSET_DIR) -> None:
    """Serve the dashboard from `app` at `/` and `/assets/{version}/{name}`, reading the files now."""
    app[DASHBOARD_KEY] = load_dashboard(directory)
    app.router.add_get("/", get_index)
    app.router.add_get("/assets/{version}/{name}", get_asset)
