"""A bare aiohttp server on uvloop for comparison: POST /collect reads the body and responds 202.

Usage: python bench/collector/bare.py PORT
"""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web


async def collect(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=202, body=b'{"accepted":1}', content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_post("/collect", collect)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
