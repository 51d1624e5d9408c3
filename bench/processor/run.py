"""Benchmark the processor from a pre-filled stream to committed tables, beside raw COPY.

Usage: .venv/bin/python -m bench.processor.run [--events 300000] [--replicas 1 2] [--concurrency 5]
       [--batch-size 100] [--stream-partitions 1] [--rounds 1] [--redis-db 14]
       [--profile-dir DIR] [--output FILE]
   or: .venv/bin/python bench/processor/run.py with the same options

Each round measures, in this order and against the same PostgreSQL:

1. raw COPY: the same events as `raw_events` rows go into a `raw_events` that the schema guard
   created, so with the same indexes and day partitions. asyncpg COPYs them in chunks of one
   processor batch (BATCH_SIZE entries of 100 events), one transaction per chunk, over one
   connection and then over two. Then psql's `\\copy` loads all rows from one file.
2. For each replica count, real `weir processor` processes (CONCURRENCY, BATCH_SIZE and
   STREAM_PARTITIONS as given) drain the stream into raw_events, session_fingerprints,
   aggregated_metrics, daily_metrics and daily_visitors. The rate runs from the group's first
   read to the moment the groups have nothing left to read and nothing pending, which is after
   the last commit.

Every measurement gets a new database on `--pg` (created and dropped here, named
`--database-prefix` and a random suffix), and the stream
lives in Redis database `--redis-db` on `--redis`, which is flushed before and after each
measurement; no other database number is touched. Both servers must be on this machine
(127.0.0.1). The stream is filled before the processors start, with 100 events per entry as
`weir import-logs` writes them (bench/processor/events.py describes the traffic), so the
collector is not part of the measurement.

Beside the rates it reports the peak RSS (VmHWM) and CPU seconds of each processor, the CPU
seconds of the PostgreSQL backends serving the benchmark database and of Redis, and how busy
the whole machine was, so that a run disturbed by other load can be recognised. For
`daily_metrics` it reports the rows inserted, the updates and how many of them were HOT, and
the size of its heap and indexes. The tables
written by each replica count are compared by digest: they must be identical. The measured
numbers and their reading are in bench/processor/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
from redis.asyncio import Redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:  # run as a path rather than with -m
    sys.path.insert(0, str(ROOT))

from bench.processor.events import EVENTS_PER_ENTRY, SITES, Traffic, generate  # noqa: E402
from sinks.guard import run_guard  # noqa: E402
from sinks.partitions import PartitionManager  # noqa: E402
from sinks.raw_events import COLUMNS, StoredEvent, to_record  # noqa: E402
from sinks.sites import upsert_site  # noqa: E402
from streams.keys import PROCESSOR_GROUP  # noqa: E402
from streams.partitions import StreamPartitions  # noqa: E402

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
POLL_INTERVAL_S = 0.02
XADD_ENTRIES_PER_PIPELINE = 50
DIGEST_QUERIES = {
    "raw_events": "SELECT id, session_id, is_bot FROM raw_events ORDER BY id",
    "session_fingerprints": "SELECT * FROM session_fingerprints ORDER BY site, session_id",
    "aggregated_metrics": "SELECT site, bucket, granularity, metric_name, dimension_key, dimension_value, value "
                          "FROM aggregated_metrics WHERE value <> 0 ORDER BY 1, 2, 3, 4, 5 NULLS FIRST, 6 NULLS FIRST",
    "daily_metrics": "SELECT site, date, metric_name, dimension_key, dimension_value, value FROM daily_metrics "
                     "WHERE value <> 0 ORDER BY 1, 2, 3, 4 NULLS FIRST, 5 NULLS FIRST",
    "daily_visitors": "SELECT site, date, visitor_id FROM daily_visitors ORDER BY 1, 2, 3",
}


# --- servers and databases --------------------------------------------------------------------------------------


def require_loopback(url: str, option: str) -> None:
    host = urlsplit(url).hostname
    if host not in LOOPBACK_HOSTS:
        sys.exit(f"{option} must point at a server on this machine (127.0.0.1), got host {host!r}")


def database_url(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name


async def create_database(admin_url: str, prefix: str = "weir_bench_processor_") -> str:
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return name


async def drop_database(admin_url: str, name: str) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


async def prepare_schema(conn: asyncpg.Connection, traffic: Traffic) -> None:
    """Create the tables as a processor does at start, with the day partitions the events need, and the sites."""
    await run_guard(conn, timescaledb="off", retention_days=None)
    days = {datetime.fromtimestamp(e.timestamp_ms / 1000, tz=timezone.utc).date() for e in traffic.events}
    partitioned = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_partitioned_table p JOIN pg_class c "
                                      "ON c.oid = p.partrelid WHERE c.relname = 'raw_events')")
    if partitioned:
        await PartitionManager("raw_events").ensure(conn, days)
    for site in SITES:
        await upsert_site(conn, site)


async def raw_events_indexes(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch("SELECT indexdef FROM pg_indexes WHERE tablename = 'raw_events' ORDER BY indexname")
    return [r["indexdef"] for r in rows]


async def server_versions(admin_url: str, redis_url: str) -> dict:
    admin = await asyncpg.connect(admin_url)
    try:
        postgres = await admin.fetchval("SELECT version()")
        settings = {r["name"]: r["setting"] for r in await admin.fetch(
            "SELECT name, setting FROM pg_settings WHERE name IN ('shared_buffers', 'synchronous_commit', "
            "'max_wal_size', 'wal_level', 'fsync', 'work_mem')")}
    finally:
        await admin.close()
    redis = Redis.from_url(redis_url)
    try:
        info = await redis.info("server")
        persistence = await redis.info("persistence")
    finally:
        await redis.aclose()
    return {"postgresql": postgres, "postgresql_settings": settings, "redis": info["redis_version"],
            "redis_aof": bool(persistence.get("aof_enabled")), "python": sys.version.split()[0],
            "cpus": os.cpu_count()}


# --- CPU and memory ---------------------------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """Return the CPU seconds (user plus system) that process `pid` has used, or 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def peak_rss_mib(pid: int) -> tuple[float, float]:
    """Return the peak (VmHWM) and current (VmRSS) resident memory of `pid`, in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            values[name] = int(rest.split()[0]) / 1024
    return values["VmHWM"], values["VmRSS"]


def machine_busy_s() -> tuple[float, float]:
    """Return the busy and total CPU seconds of the whole machine since boot, summed over its CPUs."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return (total - idle) / CLOCK_TICKS_PER_S, total / CLOCK_TICKS_PER_S


async def backend_pids(conn: asyncpg.Connection, database: str) -> list[int]:
    rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", database)
    return [r["pid"] for r in rows]


async def auxiliary_pids(conn: asyncpg.Connection) -> list[int]:
    """Return the pids of PostgreSQL's own processes (WAL writer, checkpointer, ...), which serve every database."""
    rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE backend_type <> 'client backend'")
    return [r["pid"] for r in rows]


async def redis_pid(redis: Redis) -> int:
    return int((await redis.info("server"))["process_id"])


@dataclass
class CpuWindow:
    """CPU seconds of the processes that matter, from `start` to `stop`."""

    pids: dict[str, list[int]]
    started: dict[str, float] | None = None
    machine_started: tuple[float, float] | None = None

    def _sample(self) -> dict[str, float]:
        return {group: sum(process_cpu_s(pid) for pid in pids) for group, pids in self.pids.items()}

    def start(self) -> None:
        self.started = self._sample()
        self.machine_started = machine_busy_s()

    def stop(self, extra: dict[str, list[int]] | None = None) -> dict[str, float]:
        """Return the CPU seconds per group. Groups in `extra`, found only at the end, count all their CPU."""
        now = self._sample()
        busy, total = machine_busy_s()
        result = {group: now[group] - self.started[group] for group in self.pids}
        for group, pids in (extra or {}).items():
            result[group] = sum(process_cpu_s(pid) for pid in pids)
        result["machine_busy"] = busy - self.machine_started[0]
        result["machine_total"] = total - self.machine_started[1]
        return result


# --- raw COPY ---------------------------------------------------------------------------------------------------


def raw_records(traffic: Traffic) -> list[tuple]:
    """Return the events as raw_events rows, with one session id per visitor, as long as the processor's."""
    records = []
    for event, bot in zip(traffic.events, traffic.bot_flags):
        session_id = hashlib.blake2b(f"{event.site}\x00{event.visitor_id}".encode(), digest_size=16).hexdigest()
        records.append(to_record(StoredEvent(event, session_id, bot)))
    return records


async def copy_chunks(url: str, chunks: list[list[tuple]]) -> None:
    conn = await asyncpg.connect(url)
    try:
        for chunk in chunks:
            async with conn.transaction():
                await conn.copy_records_to_table("raw_events", records=chunk, columns=list(COLUMNS))
    finally:
        await conn.close()


async def measure_copy(admin_url: str, traffic: Traffic, records: list[tuple], chunk_rows: int,
                       workdir: Path, database_prefix: str) -> dict:
    """COPY the rows over one connection, over two, and with psql's \\copy; return rows per second of each."""
    name = await create_database(admin_url, database_prefix)
    url = database_url(admin_url, name)
    try:
        conn = await asyncpg.connect(url)
        try:
            await prepare_schema(conn, traffic)
            indexes = await raw_events_indexes(conn)
            chunks = [records[i:i + chunk_rows] for i in range(0, len(records), chunk_rows)]
            result: dict = {"rows": len(records), "chunk_rows": chunk_rows, "indexes": indexes}

            started = time.perf_counter()
            await copy_chunks(url, chunks)
            result["asyncpg_1_connection_rows_per_s"] = len(records) / (time.perf_counter() - started)

            dump = workdir / "raw_events.copy"
            await conn.copy_from_query(f"SELECT {', '.join(_quoted(c) for c in COLUMNS)} FROM raw_events",
                                       output=str(dump))
            await conn.execute("TRUNCATE raw_events")
            started = time.perf_counter()
            await asyncio.gather(copy_chunks(url, chunks[0::2]), copy_chunks(url, chunks[1::2]))
            result["asyncpg_2_connections_rows_per_s"] = len(records) / (time.perf_counter() - started)

            await conn.execute("TRUNCATE raw_events")
            started = time.perf_counter()
            columns = ", ".join(_quoted(c) for c in COLUMNS)
            subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-c",
                            f"\\copy raw_events ({columns}) FROM '{dump}'"], check=True)
            result["psql_copy_rows_per_s"] = len(records) / (time.perf_counter() - started)
            if await conn.fetchval("SELECT count(*) FROM raw_events") != len(records):
                raise RuntimeError("psql \\copy did not load every row")
        finally:
            await conn.close()
    finally:
        await drop_database(admin_url, name)
    return result


def _quoted(column: str) -> str:
    return f'"{column}"' if column == "timestamp" else column


# --- processors -------------------------------------------------------------------------------------------------


async def fill_streams(redis: Redis, traffic: Traffic) -> None:
    for start in range(0, len(traffic.entries), XADD_ENTRIES_PER_PIPELINE):
        async with redis.pipeline(transaction=False) as pipe:
            for stream, fields in traffic.entries[start:start + XADD_ENTRIES_PER_PIPELINE]:
                pipe.xadd(stream, fields)
            await pipe.execute()


async def group_states(redis: Redis, streams: list[str]) -> list[dict | None]:
    """Return the processors' group on each stream (XINFO GROUPS), None where it does not exist yet."""
    states = []
    for stream in streams:
        groups = await redis.xinfo_groups(stream) if await redis.exists(stream) else []
        states.append(next((g for g in groups if g["name"].decode() == PROCESSOR_GROUP), None))
    return states


def start_processor(env: dict, number: int, log_path: Path) -> subprocess.Popen:
    env = {**env, "CONSUMER_NAME": f"bench-{number}"}
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "ops.cli", "processor"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)


def start_profiler(pid: int, path: Path) -> subprocess.Popen | None:
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        sys.exit("--profile-dir needs py-spy (pip install py-spy)")
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen([binary, "record", "--pid", str(pid), "--rate", "200", "--format", "raw",
                             "--output", str(path), "--nonblocking"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def stop_process(process: subprocess.Popen, timeout_s: float = 60) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


async def wait_for_drain(redis: Redis, streams: list[str], processes: list[subprocess.Popen],
                         timeout_s: float) -> tuple[float, float]:
    """Return the monotonic times of the first read of any stream and of the moment nothing is left to process."""
    deadline = time.monotonic() + timeout_s
    first_read = None
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"processor {process.pid} exited with {process.returncode} "
                                   "before the stream drained")
        states = await group_states(redis, streams)
        now = time.monotonic()
        if all(state is not None for state in states):
            if first_read is None and any(int(state.get("entries-read") or 0) > 0 for state in states):
                first_read = now
            if first_read is not None and all(int(state["lag"] or 0) == 0 and int(state["pending"]) == 0
                                              for state in states):
                return first_read, now
        await asyncio.sleep(POLL_INTERVAL_S)
    raise RuntimeError(f"the stream was not drained within {timeout_s:.0f} s")


def batch_failures(log: str) -> dict[str, int]:
    """Count the processors' failed batch attempts in their log, by error class."""
    failures: dict[str, int] = {}
    for match in re.finditer(r"batch failed .*? error=(\w+)", log):
        failures[match.group(1)] = failures.get(match.group(1), 0) + 1
    return failures


async def table_digests(conn: asyncpg.Connection) -> dict[str, str]:
    digests = {}
    for table, query in DIGEST_QUERIES.items():
        rows = await conn.fetch(query)
        hasher = hashlib.sha256()
        for row in rows:
            values = [v for k, v in row.items() if k != "updated_at"]
            hasher.update(repr(values).encode())
        digests[table] = f"{len(rows)}:{hasher.hexdigest()[:16]}"
    return digests


async def check_totals(conn: asyncpg.Connection, traffic: Traffic) -> dict:
    """Check that every event is stored once and that the rollups agree with raw_events; return the totals."""
    totals = dict(await conn.fetchrow("""
        SELECT count(*) AS rows, count(DISTINCT id) AS ids,
               count(*) FILTER (WHERE NOT is_bot AND event_type = 'pageview') AS human_pageviews,
               count(DISTINCT session_id) FILTER (WHERE NOT is_bot) AS human_sessions
          FROM raw_events"""))
    rolled = {r["metric_name"]: r["value"] for r in await conn.fetch(
        "SELECT metric_name, sum(value) AS value FROM daily_metrics WHERE dimension_key IS NULL GROUP BY 1")}
    fingerprints = await conn.fetchval("SELECT count(*) FROM session_fingerprints WHERE NOT is_bot")
    expected = len(traffic.events)
    problems = []
    if totals["rows"] != expected or totals["ids"] != expected:
        problems.append(f"raw_events holds {totals['rows']} rows ({totals['ids']} ids), expected {expected}")
    if rolled.get("pageviews", 0) != totals["human_pageviews"]:
        problems.append(f"daily pageviews {rolled.get('pageviews')} differ from raw {totals['human_pageviews']}")
    if not rolled.get("sessions", 0) == fingerprints == totals["human_sessions"]:
        problems.append(f"sessions: daily {rolled.get('sessions')}, fingerprints {fingerprints}, "
                        f"raw {totals['human_sessions']}")
    if problems:
        raise RuntimeError("; ".join(problems))
    return {**{k: int(v) for k, v in totals.items()}, "visitor_days": int(rolled.get("visitors", 0))}


async def daily_metrics_storage(conn: asyncpg.Connection) -> dict:
    """Return the updates of daily_metrics, how many of them were HOT, and the sizes of its heap and indexes.

    The processors' backends report their counts when they exit, so call this after stopping them.
    """
    row = await conn.fetchrow(
        "SELECT n_tup_ins, n_tup_upd, n_tup_hot_upd, pg_relation_size(relid) AS heap_bytes, "
        "pg_indexes_size(relid) AS index_bytes FROM pg_stat_user_tables WHERE relname = 'daily_metrics'")
    return dict(row)


async def measure_processors(admin_url: str, redis_url: str, traffic: Traffic, replicas: int, args: argparse.Namespace,
                             workdir: Path) -> dict:
    """Drain the pre-filled stream with `replicas` processors; return rates, CPU, memory and table digests."""
    name = await create_database(admin_url, args.database_prefix)
    url = database_url(admin_url, name)
    redis = Redis.from_url(redis_url)
    conn = await asyncpg.connect(url)
    processes: list[subprocess.Popen] = []
    profilers: list[subprocess.Popen] = []
    try:
        await redis.flushdb()
        await prepare_schema(conn, traffic)
        await fill_streams(redis, traffic)

        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "WEIR_"))}
        env.update(NODE_ENV="production", REDIS_URL=redis_url, DATABASE_URL=url, CONCURRENCY=str(args.concurrency),
                   BATCH_SIZE=str(args.batch_size), STREAM_PARTITIONS=str(args.stream_partitions), METRICS_PORT="0",
                   LOG_LEVEL="info", PYTHONUNBUFFERED="1")
        log_path = workdir / f"processors-{replicas}.log"
        processes = [start_processor(env, number, log_path) for number in range(replicas)]
        cpu = CpuWindow({"processors": [p.pid for p in processes], "redis": [await redis_pid(redis)],
                         "postgres_auxiliary": await auxiliary_pids(conn)})
        cpu.start()
        if args.profile_dir:
            profilers = [start_profiler(p.pid, args.profile_dir / f"replicas{replicas}-{n}.txt")
                         for n, p in enumerate(processes)]
        try:
            first_read, drained = await wait_for_drain(redis, StreamPartitions(args.stream_partitions).streams(),
                                                       processes, args.timeout_s)
        except RuntimeError as error:
            raise RuntimeError(f"{error}; the processor log ends with:\n{log_path.read_text()[-3000:]}") from None
        used = cpu.stop(extra={"postgres_backends": await backend_pids(conn, name)})
        memory = [peak_rss_mib(p.pid) for p in processes]

        codes = [stop_process(p) for p in processes]
        for profiler in profilers:
            stop_process(profiler)
        if any(codes):
            raise RuntimeError(f"processors exited with {codes}; see {log_path}")
        elapsed_s = drained - first_read
        log = log_path.read_text(errors="replace")
        return {
            "replicas": replicas,
            "events": len(traffic.events),
            "elapsed_s": elapsed_s,
            "events_per_s": len(traffic.events) / elapsed_s,
            "peak_rss_mib": [round(peak, 1) for peak, _ in memory],
            "rss_at_end_mib": [round(current, 1) for _, current in memory],
            "cpu_s": {k: round(v, 2) for k, v in used.items()},
            "batch_failures": batch_failures(log),
            "totals": await check_totals(conn, traffic),
            "daily_metrics": await daily_metrics_storage(conn),
            "digests": await table_digests(conn),
        }
    finally:
        for process in processes + profilers:
            if process.poll() is None:
                process.kill()
                process.wait()
        await conn.close()
        await redis.flushdb()
        await redis.aclose()
        await drop_database(admin_url, name)


# --- report -----------------------------------------------------------------------------------------------------


def summarize(report: dict) -> str:
    rounds = report["rounds"]
    lines = [f"events {report['events']:,} in {report['entries']:,} entries of up to {EVENTS_PER_ENTRY}; "
             f"CONCURRENCY={report['concurrency']} BATCH_SIZE={report['batch_size']} "
             f"STREAM_PARTITIONS={report['stream_partitions']}"
             + f"; rounds {len(rounds)}", "",
             "| measurement | rows or events/s (median) | each round |", "|---|---|---|"]

    def row(label: str, values: list[float]) -> None:
        lines.append(f"| {label} | {statistics.median(values):,.0f} | {', '.join(f'{v:,.0f}' for v in values)} |")

    row("raw COPY, asyncpg, 1 connection", [r["copy"]["asyncpg_1_connection_rows_per_s"] for r in rounds])
    row("raw COPY, asyncpg, 2 connections", [r["copy"]["asyncpg_2_connections_rows_per_s"] for r in rounds])
    row("raw COPY, psql \\copy", [r["copy"]["psql_copy_rows_per_s"] for r in rounds])
    for number, replicas in enumerate(report["replicas"]):
        row(f"processors, {replicas} replica{'s' if replicas > 1 else ''}",
            [r["processors"][number]["events_per_s"] for r in rounds])
    lines += ["", "| replicas | peak RSS MiB per processor | CPU s: processors / PG backends / PG auxiliary / "
              "Redis / whole machine (of available) | failed batch attempts |", "|---|---|---|---|"]
    for run in (r for rnd in rounds for r in rnd["processors"]):
        cpu = run["cpu_s"]
        failures = ", ".join(f"{name} {count}" for name, count in run["batch_failures"].items()) or "0"
        lines.append(f"| {run['replicas']} | {', '.join(str(v) for v in run['peak_rss_mib'])} | "
                     f"{cpu['processors']} / {cpu['postgres_backends']} / {cpu['postgres_auxiliary']} / "
                     f"{cpu['redis']} / {cpu['machine_busy']} ({cpu['machine_total']}) | {failures} |")
    lines += ["", "| replicas | daily_metrics rows inserted | updates | HOT updates | heap MiB | indexes MiB |",
              "|---|---|---|---|---|---|"]
    for run in (r for rnd in rounds for r in rnd["processors"]):
        daily = run["daily_metrics"]
        lines.append(f"| {run['replicas']} | {daily['n_tup_ins']:,} | {daily['n_tup_upd']:,} | "
                     f"{daily['n_tup_hot_upd']:,} | {daily['heap_bytes'] / 2**20:.1f} | "
                     f"{daily['index_bytes'] / 2**20:.1f} |")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict:
    redis_url = f"{args.redis.rstrip('/')}/{args.redis_db}"
    end_ms = int(time.time() * 1000)
    started = time.perf_counter()
    traffic = generate(args.events, end_ms, args.window_min * 60_000, StreamPartitions(args.stream_partitions),
                       seed=args.seed)
    records = raw_records(traffic)
    print(f"generated {len(traffic.events):,} events in {len(traffic.entries):,} entries, "
          f"{traffic.sessions:,} sessions, in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    report = {"versions": await server_versions(args.pg, redis_url), "events": len(traffic.events),
              "entries": len(traffic.entries), "sessions_generated": traffic.sessions,
              "bot_share": sum(traffic.bot_flags) / len(traffic.events),
              "custom_event_share": sum(e.type != "pageview" for e in traffic.events) / len(traffic.events),
              "window_min": args.window_min, "concurrency": args.concurrency, "batch_size": args.batch_size,
              "stream_partitions": args.stream_partitions,
              "replicas": args.replicas, "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
              "rounds": []}
    workdir = Path(tempfile.mkdtemp(prefix="weir-bench-processor-"))
    try:
        for number in range(args.rounds):
            result: dict = {"copy": await measure_copy(args.pg, traffic, records,
                                                       args.batch_size * EVENTS_PER_ENTRY, workdir,
                                                       args.database_prefix)}
            rates = {k: v for k, v in result["copy"].items() if k != "indexes"}
            print(f"round {number + 1}: raw COPY {json.dumps(rates)}", file=sys.stderr)
            result["processors"] = []
            for replicas in args.replicas:
                measured = await measure_processors(args.pg, redis_url, traffic, replicas, args, workdir)
                result["processors"].append(measured)
                print(f"round {number + 1}: {replicas} replicas {json.dumps(measured, default=str)}", file=sys.stderr)
            digests = {json.dumps(r["digests"], sort_keys=True) for r in result["processors"]}
            if len(digests) > 1:
                raise RuntimeError(f"replica counts wrote different tables: {digests}")
            report["rounds"].append(result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000, help="events in the stream (default 300000)")
    parser.add_argument("--window-min", type=int, default=60,
                        help="minutes of event time the sessions start in, ending now (default 60)")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="processor counts to measure")
    parser.add_argument("--concurrency", type=int, default=5, help="CONCURRENCY of each processor (default 5)")
    parser.add_argument("--batch-size", type=int, default=100, help="BATCH_SIZE, entries per batch (default 100)")
    parser.add_argument("--stream-partitions", type=int, default=1,
                        help="STREAM_PARTITIONS: event streams, one visitor's events in one (default 1)")
    parser.add_argument("--rounds", type=int, default=1, help="repetitions of every measurement (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic traffic (default 1)")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="PostgreSQL maintenance database to create and drop benchmark databases from")
    parser.add_argument("--database-prefix", default="weir_bench_processor_",
                        help="start of the name of each database the run creates and drops (default "
                             "weir_bench_processor_); a random suffix follows")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server, without a database number")
    parser.add_argument("--redis-db", type=int, default=14,
                        help="Redis database number to use and flush (default 14; the test suites use 9, 11 and 12)")
    parser.add_argument("--timeout-s", type=float, default=900, help="give up on a drain after this long (default 900)")
    parser.add_argument("--profile-dir", type=Path, help="record each processor with py-spy into this folder")
    parser.add_argument("--output", type=Path, help="also write the full report as JSON to this file")
    args = parser.parse_args(argv)
    require_loopback(args.pg, "--pg")
    require_loopback(args.redis, "--redis")
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", args.database_prefix):
        parser.error(f"--database-prefix must be lower-case letters, digits and underscores, got {args.database_prefix!r}")
    if args.profile_dir:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report["versions"], default=str))
    print(summarize(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
