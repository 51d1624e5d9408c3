"""Benchmark the collector as deployed (`weir collector`, one process, uvloop) beside a bare
aiohttp handler and `redis-benchmark` XADD, all in one run on this machine.

Usage: .venv/bin/python bench/collector/run.py [--duration-s 10] [--rounds 3] [--pin] [--output FILE]

Everything it starts listens on 127.0.0.1 on free ports, and it stops all of it at the end:
a private redis-server without persistence, the bare server (bench/collector/bare.py) and
the collector. Load comes from `wrk` (Debian package `wrk`) with bench/collector/post.lua.
Each figure is the median of `--rounds` runs. The measured numbers and their reading are
in bench/collector/RESULTS.md.

With `--pin`, on a machine with two or more CPUs, the server under test (bare or collector)
runs on the last CPU and wrk, redis-server and redis-benchmark on the others (`taskset`), so
that each server has a core to itself, as it would with its load and its Redis on other
machines. Without it the scheduler places every process, as in the runs the results page
compares.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from redis.asyncio import Redis

from streams.keys import EVENTS_STREAM
from streams.sites import Site, SiteDirectory

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SITE = "bench.example"
CONNECTIONS = 64
FIXED_RATE_CONNECTIONS = 32
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


class CpuPlacement:
    """Command prefixes that put the server under test on one CPU and the load and Redis on the others."""

    def __init__(self, pin: bool) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        self.pinned = pin and len(cpus) >= 2 and shutil.which("taskset") is not None
        self.server_cpus = str(cpus[-1]) if self.pinned else None
        self.load_cpus = ",".join(str(cpu) for cpu in cpus[:-1]) if self.pinned else None

    def server(self, command: list[str]) -> list[str]:
        return ["taskset", "-c", self.server_cpus, *command] if self.pinned else command

    def load(self, command: list[str]) -> list[str]:
        return ["taskset", "-c", self.load_cpus, *command] if self.pinned else command


UNPINNED = CpuPlacement(pin=False)
EVENT = {
    "site": SITE,
    "type": "pageview",
    "url": "https://bench.example/docs/getting-started/install?utm_source=newsletter&utm_medium=email",
    "referrer": "https://www.search.example/search?q=weir+analytics+install",
    "props": {"plan": "free", "experiment": "b", "logged_in": False},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout_s} s")


def parse_duration_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def run_wrk(url: str, body_file: Path, duration_s: int, connections: int, server_pid: int,
            delay_ms: float = 0.0, placement: CpuPlacement = UNPINNED) -> dict:
    """Run wrk against `url`; return requests/s, latency percentiles in ms and the server's CPU use.

    `requests_per_cpu_s` (requests per CPU-second of the server process) depends much less on
    other load on the machine than requests/s does.
    """
    env = {**os.environ, "BODY_FILE": str(body_file), "WRK_DELAY_MS": f"{delay_ms:.3f}"}
    command = placement.load(["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s",
                              str(HERE / "post.lua"), url])
    cpu_before_s = cpu_seconds(server_pid)
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    cpu_used_s = cpu_seconds(server_pid) - cpu_before_s
    result = {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    result["server_cpu_s"] = round(cpu_used_s, 2)
    result["requests_per_cpu_s"] = round(requests / cpu_used_s, 1) if cpu_used_s else 0.0
    for percentile in ("50", "75", "90", "99"):
        match = re.search(rf"^\s+{percentile}%\s+(\S+)", output, re.MULTILINE)
        result[f"p{percentile}_ms"] = parse_duration_ms(match.group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = int(errors.group(1)) if errors else 0
    socket_errors = re.search(r"Socket errors: (.*)", output)
    result["socket_errors"] = socket_errors.group(1) if socket_errors else ""
    return result


def fixed_rate_delay_ms(url: str, body_file: Path, rate_per_s: float, server_pid: int,
                        placement: CpuPlacement = UNPINNED) -> float:
    """Return the per-connection delay that keeps wrk near `rate_per_s`, from a 3-second trial.

    A connection sends every (delay + latency), so the trial's achieved rate gives the latency
    to subtract from the naive delay.
    """
    naive_ms = FIXED_RATE_CONNECTIONS * 1000 / rate_per_s
    trial = run_wrk(url, body_file, 3, FIXED_RATE_CONNECTIONS, server_pid, naive_ms, placement)
    latency_ms = FIXED_RATE_CONNECTIONS * 1000 / trial["requests_per_s"] - naive_ms
    return max(0.0, naive_ms - latency_ms)


def run_redis_benchmark(port: int, value: bytes, pipeline: int, requests: int = 200_000,
                        placement: CpuPlacement = UNPINNED) -> float:
    """Return XADD requests/s from redis-benchmark with `pipeline` commands in flight per client."""
    command = placement.load(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-n", str(requests), "-c", "50",
                              "-P", str(pipeline), "-q", "XADD", "bench:xadd", "*", "v", "1", "events", value.decode()])
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"([\d.]+) requests per second", output).group(1))


async def prepare_redis(url: str) -> None:
    redis = Redis.from_url(url)
    await SiteDirectory(redis).publish([Site(SITE)])
    await redis.aclose()


async def reset_streams(url: str) -> None:
    redis = Redis.from_url(url)
    await redis.delete(EVENTS_STREAM, "bench:xadd")
    await redis.aclose()


def start(command: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def median_of(rounds: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def run(duration_s: int, rounds: int, placement: CpuPlacement) -> dict:
    for tool in ("wrk", "redis-server", "redis-benchmark"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install wrk redis-server)")

    redis_port, bare_port, collector_port = free_port(), free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    workdir = Path(tempfile.mkdtemp(prefix="weir-bench-"))
    single_file = workdir / "single.json"
    single_file.write_bytes(orjson.dumps(EVENT))
    batch_file = workdir / "batch50.json"
    batch_file.write_bytes(orjson.dumps({"events": [EVENT] * 50}))

    processes = [start(placement.load(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no"]))]
    try:
        wait_for_port(redis_port)
        asyncio.run(prepare_redis(redis_url))
        bare = start(placement.server([sys.executable, str(HERE / "bare.py"), str(bare_port)]))
        processes.append(bare)
        collector_env = {**os.environ, "NODE_ENV": "production", "REDIS_URL": redis_url, "LOG_LEVEL": "warning",
                         "STREAM_MAX_LENGTH": "100000000", "PYTHONPATH": str(ROOT)}
        collector = start(placement.server([str(Path(sys.executable).parent / "weir"), "collector", "--host",
                                            "127.0.0.1", "--port", str(collector_port)]), env=collector_env)
        processes.append(collector)
        wait_for_port(bare_port)
        wait_for_port(collector_port)

        bare_url = f"http://127.0.0.1:{bare_port}/collect"
        collector_url = f"http://127.0.0.1:{collector_port}/collect"

        def load(url: str, body_file: Path, server: subprocess.Popen, seconds: int = duration_s) -> dict:
            return run_wrk(url, body_file, seconds, CONNECTIONS, server.pid, placement=placement)

        load(bare_url, single_file, bare, 3)  # warm-up
        load(collector_url, single_file, collector, 3)

        results: list[dict] = []
        for number in range(rounds):
            asyncio.run(reset_streams(redis_url))
            result = {
                "load_average_before": os.getloadavg()[0],
                "bare_single": load(bare_url, single_file, bare),
                "collector_single": load(collector_url, single_file, collector),
                "bare_batch50": load(bare_url, batch_file, bare),
                "collector_batch50": load(collector_url, batch_file, collector),
            }
            # "Half that rate": half of the collector's own single-event throughput just measured.
            half_rate = result["collector_single"]["requests_per_s"] / 2
            result["half_rate_target"] = half_rate
            delay_ms = fixed_rate_delay_ms(collector_url, single_file, half_rate, collector.pid, placement)
            result["collector_half_rate"] = run_wrk(collector_url, single_file, duration_s, FIXED_RATE_CONNECTIONS,
                                                    collector.pid, delay_ms, placement)
            asyncio.run(reset_streams(redis_url))
            result["redis_xadd_p1"] = run_redis_benchmark(redis_port, orjson.dumps([EVENT]), 1, placement=placement)
            result["redis_xadd_p16"] = run_redis_benchmark(redis_port, orjson.dumps([EVENT]), 16, placement=placement)
            results.append(result)
            print(f"round {number + 1}: {json.dumps(result)}", file=sys.stderr)
        return {"rounds": results, "duration_s": duration_s, "connections": CONNECTIONS,
                "single_body_bytes": single_file.stat().st_size, "batch_body_bytes": batch_file.stat().st_size,
                "server_cpus": placement.server_cpus, "load_cpus": placement.load_cpus}
    finally:
        for process in reversed(processes):
            stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


def summarize(report: dict) -> str:
    rounds = report["rounds"]

    def rps(name: str) -> float:
        return statistics.median(r[name]["requests_per_s"] for r in rounds)

    def latency(name: str, percentile: str) -> float:
        return statistics.median(r[name][f"p{percentile}_ms"] for r in rounds)

    def per_cpu(name: str) -> float:
        return statistics.median(r[name]["requests_per_cpu_s"] for r in rounds)

    lines = ["| measurement | requests/s | events/s | p50 ms | p99 ms | requests per server CPU-second |",
             "|---|---|---|---|---|---|"]
    for name, events in (("bare_single", 1), ("collector_single", 1), ("bare_batch50", 50),
                         ("collector_batch50", 50), ("collector_half_rate", 1)):
        lines.append(f"| {name} | {rps(name):,.0f} | {rps(name) * events:,.0f} | {latency(name, '50'):.2f} | "
                     f"{latency(name, '99'):.2f} | {per_cpu(name):,.0f} |")
    xadd_p1 = statistics.median(r["redis_xadd_p1"] for r in rounds)
    xadd_p16 = statistics.median(r["redis_xadd_p16"] for r in rounds)
    lines.append(f"| redis-benchmark XADD, pipeline 1 | {xadd_p1:,.0f} | | | |")
    lines.append(f"| redis-benchmark XADD, pipeline 16 | {xadd_p16:,.0f} | | | |")
    ratio = rps("collector_single") / rps("bare_single")
    round_ratios = [r["collector_single"]["requests_per_s"] / r["bare_single"]["requests_per_s"] for r in rounds]
    lines.append("")
    lines.append(f"single-event throughput: {ratio:.0%} of the bare handler's (target at least 70%); the rounds' "
                 f"ratios {', '.join(f'{x:.1%}' for x in round_ratios)}, median {statistics.median(round_ratios):.1%}")
    lines.append(f"p99 at half the collector's rate ({statistics.median(r['half_rate_target'] for r in rounds):,.0f} req/s "
                 f"asked, {rps('collector_half_rate'):,.0f} achieved): {latency('collector_half_rate', '99'):.2f} ms "
                 "(target under 10 ms)")
    lines.append(f"per server CPU-second: {per_cpu('collector_single') / per_cpu('bare_single'):.0%} of the bare "
                 f"handler's single-event requests; {per_cpu('collector_batch50') * 50:,.0f} events in batches of 50")
    lines.append(f"batches of 50: {rps('collector_batch50') * 50:,.0f} events/s (target at least 50,000)")
    loads = [r["load_average_before"] for r in rounds]
    lines.append(f"1-minute load average before each round: {', '.join(f'{x:.1f}' for x in loads)}")
    non_2xx = sum(r[name]["non_2xx"] for r in rounds for name in r if isinstance(r[name], dict))
    lines.append(f"non-2xx answers over all runs: {non_2xx}")
    if report.get("server_cpus") is not None:
        lines.append(f"servers under test on CPU {report['server_cpus']}; wrk and Redis on CPU {report['load_cpus']}")
    else:
        lines.append("CPU placement left to the scheduler (no --pin)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=int, default=10, help="seconds of load per measurement (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every measurement; medians are reported")
    parser.add_argument("--pin", action="store_true",
                        help="run the server under test on a CPU of its own, and the load and Redis on the others")
    parser.add_argument("--output", type=Path, help="also write the raw results as JSON to this file")
    args = parser.parse_args()
    report = run(args.duration_s, args.rounds, CpuPlacement(args.pin))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))
    print(summarize(report))


if __name__ == "__main__":
    main()
