"""Measure the client CPU of one awaited XADD through redis-py and through ingest.resp's connection.

Usage: .venv/bin/python bench/collector/xadd_client_cost.py [--count 20000]

Starts a private redis-server (no persistence) on a free port of 127.0.0.1, then on uvloop
awaits one XADD of a 330-byte entry after another, `--count` times each way, and prints the
process CPU time per XADD. The figure counts the client's work only, including its system
calls, not Redis's.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import time

import uvloop
from redis.asyncio import Redis

from ingest.resp import ConnectionOptions, encode_command, open_connection
from run import free_port, wait_for_port

STREAM = "bench:xadd"
FIELDS = {b"v": b"1", b"events": b"x" * 330}


async def measure(port: int, count: int) -> tuple[float, float]:
    """Return the client CPU seconds per XADD through redis-py and through ingest.resp."""
    client = Redis(host="127.0.0.1", port=port, socket_timeout=2)
    await client.xadd(STREAM, FIELDS)
    started = time.process_time()
    for _ in range(count):
        await client.xadd(STREAM, FIELDS)
    redis_py_s = (time.process_time() - started) / count
    await client.aclose()

    loop = asyncio.get_running_loop()
    connection = await open_connection(ConnectionOptions("127.0.0.1", port, connect_timeout_s=2, timeout_s=2))
    command = encode_command("XADD", STREAM, "*", *(item for pair in FIELDS.items() for item in pair))
    started = time.process_time()
    for _ in range(count):
        reply = loop.create_future()
        connection.send(command, 1, reply.set_result)
        await reply
    resp_s = (time.process_time() - started) / count
    connection.close()
    return redis_py_s, resp_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="XADDs each way (default 20000)")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")

    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        redis_py_s, resp_s = uvloop.run(measure(port, args.count))
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"redis-py {redis_py_s * 1e6:.1f} µs, ingest.resp {resp_s * 1e6:.1f} µs of client CPU per XADD")


if __name__ == "__main__":
    main()
