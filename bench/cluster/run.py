"""Benchmark the pipeline from stream partitions to committed tables, on one Redis and on a Redis Cluster.

Usage: .venv/bin/python bench/cluster/run.py [--events 60000] [--partitions 1 4 16] [--processors 1 2]
       [--concurrency 5] [--batch-size 100] [--deployments single cluster] [--collector-s 10] [--output FILE]

It starts its own Redis servers on free ports of 127.0.0.1 and stops them at the end: one
redis-server, and a Redis Cluster of three masters (`redis-cli --cluster create`), all with
`appendonly yes` and `appendfsync everysec`, so both deployments persist alike. PostgreSQL is
`--pg` on this machine, where each measurement gets a new database that is dropped after it.

For every deployment, partition count (STREAM_PARTITIONS) and processor count, in this order:

1. a new database with the schema, the day partitions and the sites, as a processor creates them;
2. the traffic of bench/processor/events.py written to the partitions from this process, routed
   by site and visitor as the collector routes it, 100 events per entry and 50 entries per
   pipeline. The rate of that write is reported as "fill";
3. real `weir processor` processes (CONCURRENCY and BATCH_SIZE as given) drain the partitions. The
   rate runs from the first entry any group read to the moment no partition has anything left to
   read or pending, which is after the last commit. Every event must then be stored exactly
   once, with rollups that agree with raw_events.

Beside each rate it reports the CPU seconds, from the first read on, of the processors, of each
Redis server and of the PostgreSQL backends, and how busy the whole machine was.

With `--collector-s` above 0 it also runs `weir collector` against each deployment and partition
count and loads it with `wrk` (bench/cluster/post.lua: one event per request, each request from
another client address, so the events spread over the partitions). The figure that matters there
is requests per CPU-second of the collector process, which other load on the machine changes
much less than requests per second. The measured numbers and their reading are in
bench/cluster/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import orjson
import redis as redis_sync

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:  # run as a path rather than with -m
    sys.path.insert(0, str(ROOT))

from bench.processor.events import EVENTS_PER_ENTRY, Traffic, generate  # noqa: E402
from bench.processor.run import (  # noqa: E402
    CpuWindow,
    backend_pids,
    check_totals,
    create_database,
    database_url,
    drop_database,
    prepare_schema,
    require_loopback,
    start_processor,
    stop_process,
)
from streams.event import encode_entry  # noqa: E402
from streams.keys import PROCESSOR_GROUP  # noqa: E402
from streams.partitions import StreamPartitions  # noqa: E402
from streams.sites import Site, SiteDirectory  # noqa: E402
from weir.redis import RedisClient, connect_redis  # noqa: E402

XADD_ENTRIES_PER_PIPELINE = 50
POLL_INTERVAL_S = 0.02
START_TIMEOUT_S = 30.0
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
WRK_CONNECTIONS = 64
COLLECTOR_SITE = Site("bench.example")
COLLECTOR_EVENT = {"site": COLLECTOR_SITE.domain, "type": "pageview",
                   "url": "https://bench.example/docs/getting-started/install?utm_source=newsletter",
                   "referrer": "https://www.search.example/search?q=weir+analytics+install"}


# --- Redis servers ----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RedisDeployment:
    """Redis servers this benchmark started: one standalone server, or the masters of a cluster."""

    name: str
    cluster: bool
    folder: Path
    ports: list[int] = field(default_factory=list)
    servers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    @property
    def pids(self) -> list[int]:
        return [server.pid for server in self.servers]

    def start(self, nodes: int) -> None:
        for _ in range(nodes):
            port = free_port()
            node_folder = self.folder / str(port)
            node_folder.mkdir(parents=True)
            command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(node_folder),
                       "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                       "--logfile", str(node_folder / "redis.log")]
            if self.cluster:
                command += ["--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                            "--cluster-config-file", "nodes.conf"]
            self.ports.append(port)
            self.servers.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            _wait_for_ping(port)
        if self.cluster:
            subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                            "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
            self._wait_until_ok()

    def flush(self) -> None:
        for port in self.ports:
            with redis_sync.Redis(port=port) as client:
                client.flushall()

    def stop(self) -> None:
        for server in self.servers:
            server.terminate()
        for server in self.servers:
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    def _wait_until_ok(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            states = []
            for port in self.ports:
                with redis_sync.Redis(port=port) as client:
                    info = client.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                states.append("cluster_state:ok" in text)
            if all(states):
                return
            time.sleep(0.1)
        raise RuntimeError("the benchmark's Redis Cluster did not reach cluster_state:ok")


def _wait_for_ping(port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with redis_sync.Redis(port=port, socket_timeout=1) as client:
                client.ping()
                return
        except redis_sync.RedisError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server on port {port} did not start")


# --- one measurement --------------------------------------------------------------------------------------------


def partition_entries(traffic: Traffic, partitions: StreamPartitions) -> list[tuple[str, dict[bytes, bytes]]]:
    """Return the traffic as (stream, entry fields), routed by visitor and packed EVENTS_PER_ENTRY to an entry."""
    entries = []
    for stream, events in partitions.route(traffic.events).items():
        for start in range(0, len(events), EVENTS_PER_ENTRY):
            entries.append((stream, encode_entry(events[start:start + EVENTS_PER_ENTRY])))
    return entries


async def fill_streams(redis: RedisClient, entries: list[tuple[str, dict[bytes, bytes]]]) -> float:
    """Write `entries` in pipelines; return the seconds it took."""
    started = time.perf_counter()
    for start in range(0, len(entries), XADD_ENTRIES_PER_PIPELINE):
        async with redis.pipeline(transaction=False) as pipe:
            for stream, fields in entries[start:start + XADD_ENTRIES_PER_PIPELINE]:
                pipe.xadd(stream, fields)
            await pipe.execute()
    return time.perf_counter() - started


async def group_of(redis: RedisClient, stream: str) -> dict | None:
    if not await redis.exists(stream):
        return None
    for group in await redis.xinfo_groups(stream):
        if group["name"].decode() == PROCESSOR_GROUP:
            return group
    return None


async def wait_for_drain(redis: RedisClient, streams: list[str], processes: list[subprocess.Popen],
                         timeout_s: float, on_first_read: Callable[[], None]) -> tuple[float, float]:
    """Return the monotonic times of the first read of any partition and of the moment all are drained.

    Calls `on_first_read` at the first read, so CPU can be counted without the processors' start-up.
    """
    deadline = time.monotonic() + timeout_s
    first_read = None
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"processor {process.pid} exited with {process.returncode} before the drain")
        groups = await asyncio.gather(*(group_of(redis, stream) for stream in streams))
        now = time.monotonic()
        if first_read is None and any(g is not None and int(g.get("entries-read") or 0) > 0 for g in groups):
            first_read = now
            on_first_read()
        drained = all(g is not None and int(g["lag"] or 0) == 0 and int(g["pending"]) == 0 for g in groups)
        if first_read is not None and drained:
            return first_read, now
        await asyncio.sleep(POLL_INTERVAL_S)
    raise RuntimeError(f"the partitions were not drained within {timeout_s:.0f} s")


async def measure(deployment: RedisDeployment, traffic: Traffic, partition_count: int, processor_count: int,
                  args: argparse.Namespace, workdir: Path) -> dict:
    """Fill the partitions and drain them with `processor_count` processors; return rates and CPU seconds."""
    partitions = StreamPartitions(partition_count, cluster=deployment.cluster)
    name = await create_database(args.pg)
    url = database_url(args.pg, name)
    deployment.flush()
    redis = connect_redis(deployment.url, cluster=deployment.cluster)
    conn = await asyncpg.connect(url)
    processes: list[subprocess.Popen] = []
    try:
        await prepare_schema(conn, traffic)
        entries = partition_entries(traffic, partitions)
        fill_s = await fill_streams(redis, entries)

        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "WEIR_"))}
        env.update(NODE_ENV="production", REDIS_URL=deployment.url, REDIS_CLUSTER=str(deployment.cluster).lower(),
                   STREAM_PARTITIONS=str(partition_count), DATABASE_URL=url, CONCURRENCY=str(args.concurrency),
                   BATCH_SIZE=str(args.batch_size), METRICS_PORT="0", LOG_LEVEL="info", PYTHONUNBUFFERED="1")
        log_path = workdir / f"{deployment.name}-p{partition_count}-r{processor_count}.log"
        processes = [start_processor(env, number, log_path) for number in range(processor_count)]
        cpu = CpuWindow({"processors": [p.pid for p in processes],
                         **{f"redis_{port}": [pid] for port, pid in zip(deployment.ports, deployment.pids)}})
        try:
            first_read, drained = await wait_for_drain(redis, partitions.streams(), processes, args.timeout_s,
                                                       cpu.start)
        except RuntimeError as error:
            raise RuntimeError(f"{error}; the processor log ends with:\n{log_path.read_text()[-3000:]}") from None
        used = cpu.stop(extra={"postgres_backends": await backend_pids(conn, name)})
        codes = [stop_process(p) for p in processes]
        if any(codes):
            raise RuntimeError(f"processors exited with {codes}; see {log_path}")
        elapsed_s = drained - first_read
        redis_cpu = {k.removeprefix("redis_"): round(v, 2) for k, v in used.items() if k.startswith("redis_")}
        return {
            "deployment": deployment.name,
            "partitions": partition_count,
            "processors": processor_count,
            "events": len(traffic.events),
            "entries": len(entries),
            "fill_events_per_s": len(traffic.events) / fill_s,
            "elapsed_s": elapsed_s,
            "events_per_s": len(traffic.events) / elapsed_s,
            "cpu_s": {"processors": round(used["processors"], 2), "redis": redis_cpu,
                      "postgres_backends": round(used["postgres_backends"], 2),
                      "machine_busy": round(used["machine_busy"], 2), "machine_total": round(used["machine_total"], 2)},
            "totals": await check_totals(conn, traffic),
        }
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        await conn.close()
        await redis.aclose()
        await drop_database(args.pg, name)


# --- collector ------------------------------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {START_TIMEOUT_S:.0f} s")


def run_wrk(url: str, body_file: Path, duration_s: int) -> dict:
    """Run wrk with bench/cluster/post.lua; return the requests sent and the answers other than 2xx."""
    command = ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{duration_s}s", "-s", str(HERE / "post.lua"), url]
    output = subprocess.run(command, env={**os.environ, "BODY_FILE": str(body_file)}, capture_output=True,
                            text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {"requests": int(re.search(r"(\d+) requests in", output).group(1)),
            "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
            "non_2xx": int(errors.group(1)) if errors else 0}


async def count_entries(redis: RedisClient, streams: list[str]) -> int:
    return sum([await redis.xlen(stream) for stream in streams])


async def measure_collector(deployment: RedisDeployment, partition_count: int, args: argparse.Namespace,
                            workdir: Path) -> dict:
    """Load `weir collector` for `args.collector_s` seconds; return requests/s and requests per collector CPU-second."""
    partitions = StreamPartitions(partition_count, cluster=deployment.cluster)
    deployment.flush()
    redis = connect_redis(deployment.url, cluster=deployment.cluster)
    body_file = workdir / "event.json"
    body_file.write_bytes(orjson.dumps(COLLECTOR_EVENT))
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PG", "WEIR_"))},
           "NODE_ENV": "production", "REDIS_URL": deployment.url, "REDIS_CLUSTER": str(deployment.cluster).lower(),
           "STREAM_PARTITIONS": str(partition_count), "LOG_LEVEL": "warning", "STREAM_MAX_LENGTH": "100000000",
           "TRUSTED_PROXIES": "127.0.0.1", "PYTHONPATH": str(ROOT)}
    collector = subprocess.Popen([sys.executable, "-m", "ops.cli", "collector", "--host", "127.0.0.1", "--port",
                                  str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await SiteDirectory(redis).publish([COLLECTOR_SITE])
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}/collect"
        await asyncio.to_thread(run_wrk, url, body_file, 2)  # warm-up, and the site directory is loaded
        entries_before = await count_entries(redis, partitions.streams())
        cpu_before_s = process_cpu_s(collector.pid)
        result = await asyncio.to_thread(run_wrk, url, body_file, args.collector_s)
        cpu_s = process_cpu_s(collector.pid) - cpu_before_s
        entries = await count_entries(redis, partitions.streams()) - entries_before
    finally:
        stop_process(collector)
        await redis.aclose()
    return {"deployment": deployment.name, "partitions": partition_count, **result,
            "collector_cpu_s": round(cpu_s, 2), "requests_per_cpu_s": result["requests"] / cpu_s,
            "requests_per_entry": result["requests"] / entries if entries else None}


# --- report -----------------------------------------------------------------------------------------------------


def summarize(report: dict) -> str:
    lines = [f"events {report['events']:,} per measurement; CONCURRENCY={report['concurrency']} "
             f"BATCH_SIZE={report['batch_size']}; {report['cpus']} CPUs; load average before "
             f"{' '.join(report['loadavg_before'])}, after {' '.join(report['loadavg_after'])}", "",
             "| Redis | partitions | processors | end-to-end events/s | fill events/s | CPU s: processors / "
             "Redis (per server) / PostgreSQL backends / machine busy of available |",
             "|---|---|---|---|---|---|"]
    for run in report["runs"]:
        cpu = run["cpu_s"]
        redis_cpu = " + ".join(f"{v}" for v in cpu["redis"].values())
        lines.append(f"| {run['deployment']} | {run['partitions']} | {run['processors']} | "
                     f"{run['events_per_s']:,.0f} | {run['fill_events_per_s']:,.0f} | {cpu['processors']} / "
                     f"{redis_cpu} / {cpu['postgres_backends']} / {cpu['machine_busy']} of {cpu['machine_total']} |")
    if report["collector_runs"]:
        lines += ["", f"collector: wrk, {WRK_CONNECTIONS} connections, {report['collector_s']} s, one event per request",
                  "", "| Redis | partitions | requests/s | requests per collector CPU-second | requests per stream "
                  "entry | non-2xx |", "|---|---|---|---|---|---|"]
        for run in report["collector_runs"]:
            per_entry = "-" if run["requests_per_entry"] is None else f"{run['requests_per_entry']:.1f}"
            lines.append(f"| {run['deployment']} | {run['partitions']} | {run['requests_per_s']:,.0f} | "
                         f"{run['requests_per_cpu_s']:,.0f} | {per_entry} | {run['non_2xx']} |")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict:
    end_ms = int(time.time() * 1000)
    traffic = generate(args.events, end_ms, args.window_min * 60_000, seed=args.seed)
    report = {"events": len(traffic.events), "concurrency": args.concurrency, "batch_size": args.batch_size,
              "cpus": os.cpu_count(), "redis": subprocess.run(["redis-server", "--version"], capture_output=True,
                                                              text=True).stdout.strip(),
              "loadavg_before": Path("/proc/loadavg").read_text().split()[:3], "runs": [],
              "collector_s": args.collector_s, "collector_runs": []}
    workdir = Path(tempfile.mkdtemp(prefix="weir-bench-cluster-"))
    deployments = []
    try:
        for name in args.deployments:
            deployment = RedisDeployment(name, cluster=name == "cluster", folder=workdir / name)
            deployments.append(deployment)
            deployment.start(3 if deployment.cluster else 1)
            for partition_count in args.partitions:
                for processor_count in args.processors:
                    measured = await measure(deployment, traffic, partition_count, processor_count, args, workdir)
                    report["runs"].append(measured)
                    print(json.dumps(measured), file=sys.stderr, flush=True)
                if args.collector_s > 0:
                    measured = await measure_collector(deployment, partition_count, args, workdir)
                    report["collector_runs"].append(measured)
                    print(json.dumps(measured), file=sys.stderr, flush=True)
    finally:
        for deployment in deployments:
            deployment.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000, help="events per measurement (default 60000)")
    parser.add_argument("--window-min", type=int, default=60,
                        help="minutes of event time the sessions start in, ending now (default 60)")
    parser.add_argument("--partitions", type=int, nargs="+", default=[1, 4, 16],
                        help="STREAM_PARTITIONS values to measure (default 1 4 16)")
    parser.add_argument("--processors", type=int, nargs="+", default=[1, 2],
                        help="processor process counts to measure (default 1 2)")
    parser.add_argument("--deployments", nargs="+", choices=["single", "cluster"], default=["single", "cluster"],
                        help="Redis deployments to measure (default both)")
    parser.add_argument("--concurrency", type=int, default=5, help="CONCURRENCY of each processor (default 5)")
    parser.add_argument("--batch-size", type=int, default=100, help="BATCH_SIZE, entries per batch (default 100)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic traffic (default 1)")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="PostgreSQL maintenance database to create and drop benchmark databases from")
    parser.add_argument("--timeout-s", type=float, default=900, help="give up on a drain after this long (default 900)")
    parser.add_argument("--collector-s", type=int, default=10,
                        help="seconds of wrk load on the collector per deployment and partition count; 0 skips "
                             "the collector (default 10)")
    parser.add_argument("--output", type=Path, help="also write the full report as JSON to this file")
    args = parser.parse_args(argv)
    require_loopback(args.pg, "--pg")
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        parser.error("redis-server and redis-cli must be installed")
    if args.collector_s > 0 and shutil.which("wrk") is None:
        parser.error("--collector-s needs wrk (Debian package wrk); pass --collector-s 0 to skip the collector")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2, default=str))
    print(summarize(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
