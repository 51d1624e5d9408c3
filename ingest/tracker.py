"""`GET /script.js`: the browser tracker, gzip-compressed once at start-up and cached by browsers.

The script's source is `ingest/static/script.js`; its header comment lists its attributes.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

CACHE_CONTROL = "public, max-age=3600, stale-while-revalidate=86400"
"""Fresh for an hour. For a day after that, a browser may use its stale copy while it
revalidates with the ETag, so a new version reaches returning visitors within about 25 hours."""
CONTENT_TYPE = "text/javascript; charset=utf-8"


@dataclass(frozen=True, slots=True)
class TrackerScript:
    """The tracker's bytes, plain and gzip-compressed, with the ETag they share."""

    plain: bytes
    gzipped: bytes
    etag: str

    @classmethod
    def load(cls) -> TrackerScript:
        plain = resources.files("ingest").joinpath("static/script.js").read_bytes()
        etag = '"' + hashlib.blake2b(plain, digest_size=12).hexdigest() + '"'
        return cls(plain, gzip.compress(plain, compresslevel=9, mtime=0), etag)


TRACKER_KEY = web.AppKey("tracker_script", TrackerScript)


async def tracker_script(request: web.Request) -> web.Response:
    """Serve the tracker; 304 when the browser's copy is current."""
    script = request.app[TRACKER_KEY]
    # Public, so any page may load it, also with `<script crossorigin>`.
    headers = {"Cache-Control": CACHE_CONTROL, "ETag": script.etag, "Vary": "Accept-Encoding",
               "Access-Control-Allow-Origin": "*"}
    current = _etags(request.headers.get("If-None-Match", ""))
    if script.etag in current or "*" in current:
        return web.Response(status=304, headers=headers)
    if "gzip" in request.headers.get("Accept-Encoding", "").lower():
        headers["Content-Encoding"] = "gzip"
        body = script.gzipped
    else:
        body = script.plain
    headers["Content-Type"] = CONTENT_TYPE
    return web.Response(body=body, headers=headers)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}
