"""Benchmark the live feed: thousands of SSE clients on one realtime process under steady traffic.

Usage: .venv/bin/python bench/live/run.py [--clients 2000] [--rate 200] [--duration-s 30]
       [--interval-ms 500] [--redis-db 15] [--output FILE]

It starts, as separate processes on free ports of 127.0.0.1, `weir processor`, `weir
collector` and one `weir realtime`, against a new PostgreSQL database on `--pg` (dropped at
the end) and Redis database `--redis-db` on `--redis` (flushed before and after). Then:

1. baseline: one SSE client; the realtime process's RSS is read after 3 s;
2. idle: `--clients` more SSE clients (bench/live/clients.py, one process); RSS and CPU of
   the realtime process over IDLE_S once all have their first update;
3. load: one sender posts `--rate` pageviews per second to /collect for `--duration-s`,
   one event per request, from 50 user agents (so 50 visitors) over 20 paths; CPU and RSS
   of each service and of the whole machine over that time;
4. delay: for each post and each client, the time from the start of the POST to the first
   update whose id (the count of events counted so far) reaches the number of events
   accepted up to and including that post.

The delay is exact when batches commit in stream order. With several processor agents a
later batch can commit first, which makes the delay of the events it overtook look shorter
and of its own look longer by the same amount of time. Memory per idle connection is the RSS
growth from step 1 to step 2 divided by `--clients`; kernel socket buffers are not in RSS.
The open-files limit is raised to its hard limit, since each client costs a descriptor
in the client process and one in the server. Results and their reading: bench/live/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import psutil
from redis.asyncio import Redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SITE = "bench-live.example"
API_KEY = "bench-live-key"
IDLE_S = 10.0
DRAIN_S = 3.0
"""Time after the last post before the clients stop, so every update reaches them."""
USER_AGENTS = [f"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{100 + i}.0 "
               "Safari/537.36" for i in range(50)]
METRIC_LINE = re.compile(r"^(weir_live_[a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$", re.M)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_open_files_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (child processes inherit it); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"the hard open-files limit is {hard}; the benchmark needs {needed} (raise `ulimit -Hn`)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Services:
    """The processes this benchmark started; each is stopped by its own pid."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str, **extra_env: str) -> psutil.Process:
        log = open(Path(tempfile.gettempdir()) / f"weir-bench-live-{name}.log", "w")  # noqa: SIM115 - kept open for the child
        process = subprocess.Popen([sys.executable, "-m", "ops.cli", *args], cwd=ROOT, env={**self.env, **extra_env},
                                   stdout=log, stderr=subprocess.STDOUT)
        self.processes[name] = process
        return psutil.Process(process.pid)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


async def wait_healthy(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{url}/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"{url}/health did not return 200 within {timeout_s:g}s; see the logs in {tempfile.gettempdir()}")


async def live_metrics(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/metrics") as response:
            text = await response.text()
    return {name + (labels or ""): float(value) for name, labels, value in METRIC_LINE.findall(text)}


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def machine_busy_seconds() -> float:
    times = psutil.cpu_times()
    return times.user + times.system + times.nice + getattr(times, "irq", 0) + getattr(times, "softirq", 0)


async def send_traffic(collector_url: str, rate: float, duration_s: float) -> list[tuple[float, int]]:
    """Post one pageview at a time on a fixed schedule; return (POST start, events accepted so far) per post."""
    posts: list[tuple[float, int]] = []
    accepted = 0
    period_s = 1.0 / rate
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        started = time.monotonic()
        for number in range(int(rate * duration_s)):
            delay = started + number * period_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            event = {"site": SITE, "url": f"https://{SITE}/page/{number % 20}",
                     "referrer": "https://news.example.org/" if number % 3 == 0 else None}
            sent = time.monotonic()
            async with http.post(f"{collector_url}/collect", json=event,
                                 headers={"User-Agent": USER_AGENTS[number % len(USER_AGENTS)]}) as response:
                body = await response.json()
            if response.status == 202:
                accepted += body["accepted"]
            posts.append((sent, accepted))
    return posts


def delays_s(posts: list[tuple[float, int]], clients: list[dict]) -> tuple[list[float], list[float], int]:
    """Return every (post, client) delay, the fan-out spread per post, and the pairs never seen."""
    every: list[float] = []
    per_post: list[list[float]] = [[] for _ in posts]
    unseen = 0
    for client in clients:
        if client["error"]:
            continue
        times = [t for t, _ in client["updates"]]
        versions = [v for _, v in client["updates"]]
        for index, (sent, accepted) in enumerate(posts):
            position = bisect.bisect_left(versions, accepted)
            # An update received before the post started cannot carry it; skip to a later one.
            while position < len(times) and times[position] < sent:
                position += 1
            if position == len(times):
                unseen += 1
                continue
            delay = times[position] - sent
            every.append(delay)
            per_post[index].append(delay)
    spread = [max(d) - min(d) for d in per_post if d]
    return every, spread, unseen


async def collect_batch_delays(response: aiohttp.ClientResponse, delays_ms: list[int]) -> None:
    """Read an SSE stream to its end, keeping each update's `last_batch_delay_ms` (collector to counters)."""
    async for line in response.content:
        if line.startswith(b"data: "):
            delay = json.loads(line[6:])["last_batch_delay_ms"]
            if delay is not None:
                delays_ms.append(delay)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(args: argparse.Namespace) -> dict:
    open_files = raise_open_files_limit(args.clients * 2 + 512)
    name = f"weir_bench_live_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(args.pg)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    database_url = args.pg.rsplit("/", 1)[0] + "/" + name
    redis_url = f"{args.redis.rstrip('/')}/{args.redis_db}"
    redis = Redis.from_url(redis_url)
    await redis.flushdb()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "WEIR_"))}
    env.update(NODE_ENV="production", LOG_LEVEL="warning", DATABASE_URL=database_url, REDIS_URL=redis_url,
               API_KEYS=API_KEY, PYTHONUNBUFFERED="1")
    services = Services(env)
    try:
        subprocess.run([sys.executable, "-m", "ops.cli", "site", "add", SITE, "--timezone", "UTC"], cwd=ROOT, env=env,
                       check=True, capture_output=True)
        metrics_port, collector_port, realtime_port = free_port(), free_port(), free_port()
        processes = {
            "processor": services.start("processor", "processor", "--metrics-port", str(metrics_port)),
            "collector": services.start("collector", "collector", "--host", "127.0.0.1", "--port", str(collector_port)),
            "realtime": services.start("realtime", "realtime", "--host", "127.0.0.1", "--port", str(realtime_port),
                                       LIVE_INTERVAL_MS=str(args.interval_ms)),
        }
        collector_url, realtime_url = f"http://127.0.0.1:{collector_port}", f"http://127.0.0.1:{realtime_port}"
        for url in (f"http://127.0.0.1:{metrics_port}", collector_url, realtime_url):
            await wait_healthy(url)
        return await run_phases(args, processes, collector_url, realtime_url, realtime_port) | {
            "open_files_limit": open_files}
    finally:
        services.stop()
        await redis.flushdb()
        await redis.aclose()
        admin = await asyncpg.connect(args.pg)
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def run_phases(args: argparse.Namespace, processes: dict[str, psutil.Process], collector_url: str,
                     realtime_url: str, realtime_port: int) -> dict:
    realtime = processes["realtime"]
    output = Path(tempfile.mkdtemp(prefix="weir-bench-live-")) / "clients.json"
    async with aiohttp.ClientSession() as http:
        # Step 1: baseline with one client, so the site's feed and its buffers exist.
        async with http.get(f"{realtime_url}/live/{SITE}", params={"key": API_KEY}) as first:
            await first.content.readuntil(b"\n\n")
            # Read on, or this client would fall behind and be disconnected during the load.
            batch_delays_ms: list[int] = []
            drain = asyncio.create_task(collect_batch_delays(first, batch_delays_ms))
            await asyncio.sleep(3.0)
            rss_baseline = realtime.memory_info().rss

            # Step 2: the clients connect and stay idle.
            clients = await asyncio.create_subprocess_exec(
                sys.executable, str(HERE / "clients.py"), "--port", str(realtime_port), "--site", SITE, "--key",
                API_KEY, "--clients", str(args.clients), "--output", str(output),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            ready = (await asyncio.wait_for(clients.stdout.readline(), 120)).decode().split()
            connected = int(ready[1])
            await asyncio.sleep(3.0)
            cpu_idle_start, idle_start = cpu_seconds(realtime), time.monotonic()
            await asyncio.sleep(IDLE_S)
            idle_cpu = (cpu_seconds(realtime) - cpu_idle_start) / (time.monotonic() - idle_start)
            rss_idle = realtime.memory_info().rss
            metrics_before = await live_metrics(realtime_url)

            # Step 3: steady traffic.
            processes["clients"] = psutil.Process(clients.pid)
            processes["bench sender"] = psutil.Process(os.getpid())
            cpu_start = {name: cpu_seconds(p) for name, p in processes.items()}
            busy_start, load_start = machine_busy_seconds(), time.monotonic()
            posts = await send_traffic(collector_url, args.rate, args.duration_s)
            load_s = time.monotonic() - load_start
            cpu_load = {name: (cpu_seconds(p) - cpu_start[name]) / load_s for name, p in processes.items()}
            batch_delays_ms = list(batch_delays_ms)
            machine_busy = (machine_busy_seconds() - busy_start) / load_s / psutil.cpu_count()
            rss_load = realtime.memory_info().rss
            await asyncio.sleep(DRAIN_S)
            metrics_after = await live_metrics(realtime_url)

            # Step 4: collect the clients' records.
            clients.stdin.write(b"stop\n")
            await clients.stdin.drain()
            await asyncio.wait_for(clients.wait(), 120)
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)

    records = json.loads(output.read_text())
    every, spread, unseen = delays_s(posts, records)
    reads = metrics_after.get("weir_live_read_seconds_count", 0) - metrics_before.get("weir_live_read_seconds_count", 0)
    fanouts = metrics_after.get("weir_live_updates_total", 0) - metrics_before.get("weir_live_updates_total", 0)
    return {
        "clients": args.clients,
        "interval_ms": args.interval_ms,
        "clients_connected": connected,
        "clients_failed": sum(1 for r in records if r["error"]),
        "clients_ended_early": sum(1 for r in records if r["ended"]),
        "clients_dropped_by_server": metrics_after.get("weir_live_clients_dropped_total", 0),
        "rate_per_s": round(len(posts) / load_s, 1),
        "posts": len(posts),
        "events_accepted": posts[-1][1] if posts else 0,
        "rss_baseline_mb": round(rss_baseline / 2**20, 1),
        "rss_idle_mb": round(rss_idle / 2**20, 1),
        "rss_load_mb": round(rss_load / 2**20, 1),
        "kb_per_idle_connection": round((rss_idle - rss_baseline) / 1024 / args.clients, 2),
        "realtime_cpu_idle_percent": round(idle_cpu * 100, 1),
        "cpu_load_percent": {name: round(value * 100, 1) for name, value in cpu_load.items()},
        "machine_busy_percent": round(machine_busy * 100, 1),
        "counter_reads_per_s": round(reads / (load_s + DRAIN_S), 2),
        "fan_outs_per_s": round(fanouts / (load_s + DRAIN_S), 2),
        "delay_pairs": len(every),
        "delay_pairs_unseen": unseen,
        "delay_s": {"p50": round(percentile(every, 0.50), 3), "p90": round(percentile(every, 0.90), 3),
                    "p99": round(percentile(every, 0.99), 3), "max": round(max(every), 3),
                    "mean": round(statistics.fmean(every), 3)} if every else None,
        "fan_out_spread_s": {"p50": round(percentile(spread, 0.50), 3),
                             "p99": round(percentile(spread, 0.99), 3)} if spread else None,
        "last_batch_delay_ms": {"p50": percentile(batch_delays_ms, 0.50), "p99": percentile(batch_delays_ms, 0.99),
                                "samples": len(batch_delays_ms)} if batch_delays_ms else None,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=2000, help="SSE clients to hold open (default 2000)")
    parser.add_argument("--rate", type=float, default=200.0, help="pageviews posted per second (default 200)")
    parser.add_argument("--duration-s", type=float, default=30.0, help="seconds of steady traffic (default 30)")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="PostgreSQL admin DSN; a database is created and dropped on it")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server URL, without a database")
    parser.add_argument("--redis-db", type=int, default=15, help="Redis database number, flushed before and after")
    parser.add_argument("--interval-ms", type=int, default=500,
                        help="LIVE_INTERVAL_MS of the realtime process (default 500, the service's default)")
    parser.add_argument("--output", help="also write the results as JSON to this file")
    args = parser.parse_args()

    result = asyncio.run(measure(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
