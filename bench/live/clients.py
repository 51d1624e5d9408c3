"""Many SSE clients in one process, for bench/live/run.py; not a general-purpose client.

Usage: python bench/live/clients.py --port PORT --site SITE --key KEY --clients 2000 --output FILE

Opens `--clients` connections to GET /live/SITE on 127.0.0.1:PORT over plain asyncio streams,
which cost less per connection than an HTTP client library and so disturb the measurement
less. For each update it records the time and the `id:`. The time is time.monotonic(), which
on Linux reads CLOCK_MONOTONIC, the same clock in every process of the machine. It prints
`ready N` once every connection has its first update, stops when a line `stop` arrives on
stdin, and then writes the records as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import sys
import time
from pathlib import Path

ID_LINE = re.compile(rb"(?m)^id: (\d+)$")
CONNECT_BATCH = 100
CONNECT_PAUSE_S = 0.05
"""Connections are opened in batches, to stay within the server's listen backlog (128 in aiohttp's TCPSite)."""


class Client:
    """One SSE connection and the updates it received."""

    def __init__(self) -> None:
        self.updates: list[tuple[float, int]] = []
        self.first = asyncio.Event()
        self.error: str | None = None
        self.ended = False

    async def follow(self, port: int, path: str) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                self.error = head.split(b"\r\n", 1)[0].decode()
                return
            await self._read_updates(reader)
        except (OSError, asyncio.IncompleteReadError) as error:
            self.error = repr(error)
        finally:
            self.first.set()

    async def _read_updates(self, reader: asyncio.StreamReader) -> None:
        tail = b""
        while True:
            data = await reader.read(65536)
            if not data:
                self.ended = True
                return
            now = time.monotonic()
            buffer = tail + data
            cut = buffer.rfind(b"\n") + 1
            for match in ID_LINE.finditer(buffer, 0, cut):
                self.updates.append((now, int(match[1])))
                self.first.set()
            tail = buffer[cut:]


async def run(args: argparse.Namespace) -> None:
    path = f"/live/{args.site}?key={args.key}"
    clients = [Client() for _ in range(args.clients)]
    tasks = []
    for start in range(0, len(clients), CONNECT_BATCH):
        tasks += [asyncio.create_task(c.follow(args.port, path)) for c in clients[start:start + CONNECT_BATCH]]
        await asyncio.sleep(CONNECT_PAUSE_S)
    await asyncio.gather(*(c.first.wait() for c in clients))
    connected = sum(1 for c in clients if c.error is None)
    print(f"ready {connected}", flush=True)

    await asyncio.get_running_loop().run_in_executor(None, _wait_for_stop)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    records = [{"updates": c.updates, "error": c.error, "ended": c.ended} for c in clients]
    Path(args.output).write_text(json.dumps(records))


def _wait_for_stop() -> None:
    for line in sys.stdin:
        if line.strip() == "stop":
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True, help="port of the realtime service on 127.0.0.1")
    parser.add_argument("--site", required=True, help="site domain to follow")
    parser.add_argument("--key", required=True, help="API key, sent as ?key=")
    parser.add_argument("--clients", type=int, default=2000, help="connections to open (default 2000)")
    parser.add_argument("--output", required=True, help="file to write the records to, as JSON")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.clients + 256)), hard))
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(args))
    else:
        uvloop.run(run(args))


if __name__ == "__main__":
    main()
