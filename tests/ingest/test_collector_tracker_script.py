"""GET /script.js: size budget, caching headers and revalidation."""

from __future__ import annotations

import gzip

from tests.ingest.conftest import STATIC_DIR

MAX_GZIPPED_BYTES = 2048


def test_tracker_at_most_2kb_gzipped():
    source = (STATIC_DIR / "script.js").read_bytes()

    assert len(gzip.compress(source, compresslevel=9)) <= MAX_GZIPPED_BYTES


async def test_script_served_gzipped_with_cache_headers(http, collector):
    async with http.get(collector.route("/script.js"), headers={"Accept-Encoding": "gzip"},
                        auto_decompress=False) as response:
        body = await response.read()

    assert response.status == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert len(body) <= MAX_GZIPPED_BYTES
    assert gzip.decompress(body) == (STATIC_DIR / "script.js").read_bytes()
    assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert "max-age=3600" in response.headers["Cache-Control"]
    assert "public" in response.headers["Cache-Control"]
    assert response.headers["Vary"] == "Accept-Encoding"
    assert response.headers["ETag"].startswith('"')


async def test_script_served_plain_without_gzip(http, collector):
    async with http.get(collector.route("/script.js"), headers={"Accept-Encoding": "identity"},
                        auto_decompress=False) as response:
        body = await response.read()

    assert "Content-Encoding" not in response.headers
    assert body.startswith(b"/* Weir tracker")


async def test_script_revalidates_with_etag(http, collector):
    async with http.get(collector.route("/script.js")) as response:
        etag = response.headers["ETag"]

    async with http.get(collector.route("/script.js"), headers={"If-None-Match": f'W/{etag}, "other"'}) as response:
        assert response.status == 304
        assert await response.read() == b""
        assert response.headers["ETag"] == etag
        assert "max-age=3600" in response.headers["Cache-Control"]
    async with http.get(collector.route("/script.js"), headers={"If-None-Match": '"stale"'}) as response:
        assert response.status == 200
