"""Measure the CPU time of the collector's own work in one single-event `POST /collect`, in process.

Usage: .venv/bin/python bench/collector/handler_cost.py [--requests 20000] [--repeats 4]

Calls the `/collect` handler on requests made by aiohttp's `make_mocked_request`, each with the
271-byte event of run.py as its body, and prints the best process CPU time per request over
`--repeats` passes. The site directory and the visitor salt come from a private redis-server
(no persistence) on a free port of 127.0.0.1, loaded before timing. The stream writer is a
stand-in whose future is already done, so the figure leaves out the stream write, the HTTP
parsing and the response write. It is the work that run.py's collector does and bare.py's
handler does not, plus reading the body and building the response, which both do.
NOTE: the mocked request and the stand-in protocol follow aiohttp 3.14's Request constructor;
another aiohttp version may need other attributes on `_Protocol`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import subprocess
import sys
import time

import orjson
import uvloop
from aiohttp import streams, web
from aiohttp.test_utils import make_mocked_request
from redis.asyncio import Redis

from ingest.collect import post_collect
from ingest.cors import CORS_KEY, CorsPolicy
from ingest.intake import INTAKE_KEY, Intake
from ingest.validate import EventBuilder
from run import EVENT, free_port, prepare_redis, wait_for_port
from streams.sites import SiteDirectory
from streams.visitor import SaltStore, utc_day

USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


class _Writer:
    """A stream writer whose writes are done at once; `write` serves revisions before `enqueue`."""

    def enqueue(self, events: list) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def write(self, events: list) -> None:
        await self.enqueue(events)


class _Backlog:
    over_limit = False


class _Transport:
    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False


class _Protocol:
    """A stand-in for the connection's protocol, with the attributes aiohttp's Request and StreamReader read."""

    ssl_context = None
    sockname = ("127.0.0.1", 4001)
    peername = ("127.0.0.1", 50000)
    _reading_paused = False

    def __init__(self) -> None:
        self.transport = _Transport()

    def pause_reading(self, *args: object, **kwargs: object) -> None:
        pass

    def resume_reading(self, *args: object, **kwargs: object) -> None:
        pass


async def measure(redis_url: str, requests: int, repeats: int) -> float:
    """Return the best CPU seconds per request over `repeats` passes of `requests` requests."""
    redis = Redis.from_url(redis_url)
    sites, salts = SiteDirectory(redis), SaltStore(redis)
    await sites.lookup(EVENT["site"])
    await salts.salt_for_day(utc_day(int(time.time() * 1000)))
    app = web.Application()
    app[INTAKE_KEY] = Intake(EventBuilder(sites, salts), _Writer(), _Backlog(), ())
    app[CORS_KEY] = CorsPolicy(None)
    body = orjson.dumps(EVENT)
    headers = {"Content-Type": "text/plain", "User-Agent": USER_AGENT, "Content-Length": str(len(body))}
    protocol = _Protocol()
    loop = asyncio.get_running_loop()

    def make_requests() -> list[web.Request]:
        built = []
        for _ in range(requests):
            payload = streams.StreamReader(protocol, 2**16, loop=loop)
            payload.feed_data(body)
            payload.feed_eof()
            built.append(make_mocked_request("POST", "/collect", headers=headers, payload=payload, app=app,
                                            transport=protocol.transport, protocol=protocol))
        return built

    best_s = float("inf")
    for _ in range(repeats + 1):  # the first pass warms up and is not counted
        batch = make_requests()
        gc.collect()
        started = time.process_time()
        for request in batch:
            response = await post_collect(request)
            assert response.status == 202, response.text
        best_s = min(best_s, time.process_time() - started)
    await redis.aclose()
    return best_s / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="requests per pass (default 20000)")
    parser.add_argument("--repeats", type=int, default=4, help="timed passes; the best is reported (default 4)")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")

    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        asyncio.run(prepare_redis(redis_url))
        per_request_s = uvloop.run(measure(redis_url, args.requests, args.repeats))
    finally:
        server.terminate()
        server.wait()
    print(f"/collect handler, single event: {per_request_s * 1e6:.2f} µs of CPU per request")


if __name__ == "__main__":
    main()
