"""Benchmark the dashboard's queries on a year of traffic, from the rollups and from raw events alone.

Usage: .venv/bin/python -m bench.dashboard.run [--events 10000000] [--days 365] [--workers 2]
       [--reload] [--verify] [--verify-events 50000] [--runs 50] [--budget-s 12]
       [--sites shop.example] [--rollup-only-sites docs.example] [--raw-min-runs 1]
       [--output FILE]

Method:

1. Load, only when the database `--database` does not exist yet or with `--reload`. The
   script creates the database on `--pg` and generates `--events` events over the `--days` UTC
   days that end now (bench/dashboard/traffic.py describes the traffic). bench/dashboard/load.py
   then stores them: it COPYs raw_events and the derived tables, which it computes with the
   product's own functions, in `--workers` processes that each take some of the sites. The
   database is kept, so later runs time the queries again without loading.
2. With `--verify`: generate `--verify-events` events over 30 days and load them twice, once
   with that loader and once through a real `weir processor` that reads them from a Redis
   stream (database `--redis-db`, flushed before and after). Each load gets a new database,
   dropped afterwards. Every derived table is compared by digest, and a difference fails the run.
3. Time the report functions behind each API call that the dashboard's pages make
   (query/dashboard/views.js: limit 8 on the overview and 25 elsewhere, the first chart interval
   of the period), for periods `30d` and `year`. Each query first runs once on the API's path
   (rollups where they apply), recording its SQL. When that read no rollup table, it was the
   raw SQL, so it is timed once and that timing stands for both paths. Otherwise it also runs
   once with rollups switched off (`Scope.rollups=False`, so raw_events and
   session_fingerprints alone), the two results must be equal or the run fails, and both paths
   are timed (`--rollup-path-only` skips the raw path). Each timing has 3 warm-up calls, counting
   the first call (only that one for a query slower than a second), then up to `--runs` calls,
   stopping early once the calls took `--budget-s` seconds and there are `--min-runs` (the raw
   path: `--raw-min-runs`, because a year of raw events takes seconds per call). Every query of
   the `--sites` is timed, and of the `--rollup-only-sites` only the queries that have a rollup
   path, on that path alone. All calls run on one connection, so the Redis cache, HTTP, JSON and
   freshness are not part of the timing.

Machine busy time comes from /proc/stat for the load and for the query phase, so other load on
the machine shows. The results and their reading are in bench/dashboard/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
from redis.asyncio import Redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:  # run as a path rather than with -m
    sys.path.insert(0, str(ROOT))

from bench.dashboard.load import finish_load, load_sites, prepare_schema  # noqa: E402
from bench.dashboard.traffic import DAY_MS, day_batches  # noqa: E402
from bench.processor.events import SITE_WEIGHTS, SITES, Traffic, _pack  # noqa: E402
from bench.processor.run import (DIGEST_QUERIES, fill_streams, machine_busy_s, require_loopback,  # noqa: E402
                                 server_versions, start_processor, stop_process, wait_for_drain)
from query import reports  # noqa: E402
from sinks.months import close_finished_months  # noqa: E402
from query.period import parse_period  # noqa: E402
from query.scope import Scope  # noqa: E402
from query.timeseries import timeseries  # noqa: E402
from streams.partitions import StreamPartitions  # noqa: E402
from streams.sites import Site  # noqa: E402

OVERVIEW_LIMIT = 8
DETAIL_LIMIT = 25
CHART_INTERVAL = {"30d": "day", "year": "month"}
WARMUP_RUNS = 3
VERIFY_DAYS = 30
DIGEST_QUERIES_WITH_NETWORKS = {
    **DIGEST_QUERIES,
    "monthly_metrics": "SELECT site, month, metric_name, dimension_key, dimension_value, value FROM monthly_metrics "
                       "WHERE value <> 0 ORDER BY 1, 2, 3, 4 NULLS FIRST, 5 NULLS FIRST",
    "visitor_networks": 'SELECT site, visitor_id, country, region, city, asn, org, "orgType", "isGovernment", '
                        '"responseTier" FROM visitor_networks ORDER BY 1, 2',
}
TRAFFIC = ("channel", "source", "referrer", "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
AUDIENCE = ("country", "region", "city", "browser", "os", "device", "screen")
NETWORK = ("org_type", "org", "asn", "response_tier", "government")


def database_url(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name


async def database_exists(admin_url: str, name: str) -> bool:
    admin = await asyncpg.connect(admin_url)
    try:
        return bool(await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await admin.close()


async def recreate_database(admin_url: str, name: str) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()


async def drop_database(admin_url: str, name: str) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


def _progress(day, report, elapsed_s: float) -> None:
    if report.days % 30 == 0:
        print(f"pid {os.getpid()}: loaded {report.events:,} events up to {day} in {elapsed_s:.0f} s "
              f"({report.events / max(elapsed_s, 1e-9):,.0f} events/s)", file=sys.stderr, flush=True)


def site_groups(workers: int) -> list[tuple[Site, ...]]:
    """Split the sites into `workers` groups of about equal traffic, biggest site first."""
    groups: list[list[Site]] = [[] for _ in range(max(1, min(workers, len(SITES))))]
    loads = [0.0] * len(groups)
    for site, weight in sorted(zip(SITES, SITE_WEIGHTS), key=lambda pair: -pair[1]):
        smallest = loads.index(min(loads))
        groups[smallest].append(site)
        loads[smallest] += weight
    return [tuple(group) for group in groups]


def _load_group(url: str, sites: tuple[Site, ...], event_count: int, end_ms: int, days: int, seed: int) -> dict:
    """Load one group of sites; runs in a worker process."""
    batches = day_batches(event_count, end_ms, days, seed, sites)
    report = asyncio.run(load_sites(url, sites, batches, _progress))
    return {"sites": [s.domain for s in sites], "events": report.events, "sessions": report.sessions,
            "elapsed_s": round(report.elapsed_s, 1)}


async def load_database(url: str, event_count: int, days: int, end_ms: int, seed: int, workers: int) -> dict:
    """Generate and load the traffic into the empty database at `url` with `workers` processes; return what was written."""
    started = time.perf_counter()
    first_day = datetime.fromtimestamp((end_ms - (days - 1) * DAY_MS) / 1000, tz=timezone.utc).date()
    last_day = datetime.fromtimestamp(end_ms / 1000, tz=timezone.utc).date()
    conn = await asyncpg.connect(url)
    try:
        await prepare_schema(conn, SITES, first_day, last_day)
        with ProcessPoolExecutor(len(site_groups(workers)), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [asyncio.wrap_future(pool.submit(_load_group, url, group, event_count, end_ms, days, seed))
                       for group in site_groups(workers)]
            groups = await asyncio.gather(*futures)
        loaded_s = time.perf_counter() - started
        table_rows = await finish_load(conn)
        shares = await conn.fetchrow(
            "SELECT count(*) AS events, avg(is_bot::int)::float AS bot_share, "
            "avg((event_type <> 'pageview')::int)::float AS custom_event_share, "
            "count(DISTINCT event_action) FILTER (WHERE event_type = 'pageview') AS pages, "
            "count(DISTINCT site) AS sites FROM raw_events")
        per_site = await conn.fetch("SELECT site, count(*) AS events FROM raw_events GROUP BY 1 ORDER BY 2 DESC")
    finally:
        await conn.close()
    elapsed_s = time.perf_counter() - started
    return {"events": shares["events"], "days": days, "workers": groups, "copy_and_derive_s": round(loaded_s, 1),
            "elapsed_s": round(elapsed_s, 1), "events_per_s": round(shares["events"] / elapsed_s),
            "table_rows": table_rows, **{k: v for k, v in dict(shares).items() if k != "events"},
            "events_per_site": {r["site"]: r["events"] for r in per_site}}


# --- verification against the processor -------------------------------------------------------------------------


async def digests_of(url: str) -> dict[str, str]:
    """Return row count and SHA-256 prefix of every derived table and of raw_events' session ids and bot flags.

    `updated_at` is left out: it is the time of writing.
    """
    conn = await asyncpg.connect(url)
    digests = {}
    try:
        for table_name, query in DIGEST_QUERIES_WITH_NETWORKS.items():
            hasher = hashlib.sha256()
            rows = await conn.fetch(query)
            for row in rows:
                hasher.update(repr([v for k, v in row.items() if k != "updated_at"]).encode())
            digests[table_name] = f"{len(rows)}:{hasher.hexdigest()[:16]}"
    finally:
        await conn.close()
    return digests


async def verify(admin_url: str, redis_url: str, event_count: int, seed: int) -> dict:
    """Load the same sample with the bench loader and with a real processor; return both digests."""
    end_ms = int(time.time() * 1000)
    batches = list(day_batches(event_count, end_ms, VERIFY_DAYS, seed))
    events = [e for _day, day_events in batches for e in day_events]
    first_day, last_day = batches[0][0], batches[-1][0]

    loader_db, processor_db = "weir_bench_dashboard_verify_loader", "weir_bench_dashboard_verify_processor"
    result: dict = {"events": len(events), "days": VERIFY_DAYS}
    try:
        await recreate_database(admin_url, loader_db)
        conn = await asyncpg.connect(database_url(admin_url, loader_db))
        try:
            await prepare_schema(conn, SITES, first_day, last_day)
            await load_sites(database_url(admin_url, loader_db), SITES, batches)
            await finish_load(conn)
        finally:
            await conn.close()
        result["loader"] = await digests_of(database_url(admin_url, loader_db))

        await recreate_database(admin_url, processor_db)
        url = database_url(admin_url, processor_db)
        conn = await asyncpg.connect(url)
        try:
            await prepare_schema(conn, SITES, first_day, last_day)
        finally:
            await conn.close()
        started = time.perf_counter()
        await run_processor(url, redis_url, events)
        result["processor_elapsed_s"] = round(time.perf_counter() - started, 1)
        # The loader closes every month; the processor's maintenance closes a month once it is over.
        conn = await asyncpg.connect(url)
        try:
            await close_finished_months(conn, [(site.domain, site.timezone) for site in SITES],
                                        datetime.now(timezone.utc) + timedelta(days=62))
        finally:
            await conn.close()
        result["processor"] = await digests_of(url)
    finally:
        await drop_database(admin_url, loader_db)
        await drop_database(admin_url, processor_db)
    result["identical"] = result["loader"] == result["processor"]
    return result


async def run_processor(url: str, redis_url: str, events) -> None:
    """Drain the events through one real `weir processor` into the database at `url`."""
    partitions = StreamPartitions(1)
    traffic = Traffic(events=events, entries=_pack(events, partitions), bot_flags=[False] * len(events), sessions=0)
    redis = Redis.from_url(redis_url)
    workdir = Path(tempfile.mkdtemp(prefix="weir-bench-dashboard-"))
    process = None
    try:
        await redis.flushdb()
        await fill_streams(redis, traffic)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "WEIR_"))}
        env.update(NODE_ENV="production", REDIS_URL=redis_url, DATABASE_URL=url, METRICS_PORT="0",
                   LOG_LEVEL="warning", PYTHONUNBUFFERED="1", STREAM_PARTITIONS="1")
        log_path = workdir / "processor.log"
        process = start_processor(env, 0, log_path)
        try:
            await wait_for_drain(redis, partitions.streams(), [process], 900)
        except RuntimeError as error:
            raise RuntimeError(f"{error}; the processor log ends with:\n{log_path.read_text()[-3000:]}") from None
        code = stop_process(process)
        if code:
            raise RuntimeError(f"the processor exited with {code}; see {log_path}")
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        await redis.flushdb()
        await redis.aclose()


# --- query timing -----------------------------------------------------------------------------------------------


def dashboard_queries(period: str) -> list[tuple[str, str, object]]:
    """Return (page, API call, report call) for every request the dashboard's pages make."""
    interval = CHART_INTERVAL[period]
    queries = [
        ("overview", "/api/overview", lambda c, s: reports.overview(c, s)),
        ("overview", f"/api/timeseries?interval={interval}", lambda c, s: timeseries(c, s, interval)),
        ("overview", "/api/pages?kind=top&limit=8", lambda c, s: reports.top_pages(c, s, OVERVIEW_LIMIT, 0)),
        ("overview", "/api/traffic?dimension=source&limit=8",
         lambda c, s: reports.session_breakdown(c, s, "source", OVERVIEW_LIMIT, 0)),
        ("pages", "/api/pages?kind=top", lambda c, s: reports.top_pages(c, s, DETAIL_LIMIT, 0)),
        ("pages", "/api/pages?kind=entry", lambda c, s: reports.session_pages(c, s, "entry", DETAIL_LIMIT, 0)),
        ("pages", "/api/pages?kind=exit", lambda c, s: reports.session_pages(c, s, "exit", DETAIL_LIMIT, 0)),
        ("events", "/api/events", lambda c, s: reports.custom_events(c, s, None, None, DETAIL_LIMIT, 0)),
        ("events", "/api/events?event=signup&breakdown=plan",
         lambda c, s: reports.custom_events(c, s, "signup", "plan", DETAIL_LIMIT, 0)),
    ]
    for page, dimensions in (("traffic", TRAFFIC), ("audience", AUDIENCE), ("network", NETWORK)):
        for dimension in dimensions:
            queries.append((page, f"/api/{page}?dimension={dimension}",
                            lambda c, s, d=dimension: reports.session_breakdown(c, s, d, DETAIL_LIMIT, 0)))
    queries.append(("network", "/api/network (government_share)", lambda c, s: reports.government_share(c, s)))
    return queries


class RecordingConnection:
    """A connection wrapper that records the SQL text of every query, to tell which tables a path reads."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.statements: list[str] = []

    async def fetch(self, query: str, *args):
        self.statements.append(query)
        return await self._conn.fetch(query, *args)

    async def fetchrow(self, query: str, *args):
        self.statements.append(query)
        return await self._conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args):
        self.statements.append(query)
        return await self._conn.fetchval(query, *args)


async def first_call(conn: asyncpg.Connection, call, scope: Scope) -> tuple[object, list[str], float]:
    """Return the result of one call, the SQL statements it ran and its duration in ms."""
    recorder = RecordingConnection(conn)
    started = time.perf_counter()
    result = await call(recorder, scope)
    return result, recorder.statements, (time.perf_counter() - started) * 1000


def tables_read(statements: list[str]) -> list[str]:
    names = ("daily_metrics", "monthly_metrics", "daily_visitors", "raw_events", "session_fingerprints")
    return [name for name in names if any(name in statement for statement in statements)]


async def time_query(conn, call, scope: Scope, runs: int, budget_s: float, min_runs: int,
                     first_ms: float) -> list[float]:
    """Return the durations (ms) of up to `runs` calls after the warm-up.

    A query whose first call took over a second gets no further warm-up call; the others get
    WARMUP_RUNS in all. Timing stops once the runs took `budget_s` and there are `min_runs`.
    """
    for _ in range(WARMUP_RUNS - 1 if first_ms < 1000 else 0):
        await call(conn, scope)
    durations = []
    spent = 0.0
    for _ in range(runs):
        started = time.perf_counter()
        await call(conn, scope)
        elapsed = time.perf_counter() - started
        durations.append(elapsed * 1000)
        spent += elapsed
        if spent > budget_s and len(durations) >= min_runs:
            break
    return durations


def percentile(values: list[float], share: float) -> float:
    """Return the nearest-rank percentile: with fewer than 20 values, p95 is the maximum."""
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def _summary(prefix: str, durations: list[float]) -> dict:
    return {f"{prefix}_p50_ms": round(statistics.median(durations), 1),
            f"{prefix}_p95_ms": round(percentile(durations, 0.95), 1), f"{prefix}_runs": len(durations)}


async def measure(url: str, args: argparse.Namespace) -> dict:
    """Time every dashboard query on both paths; of `--rollup-only-sites`, only the queries whose paths differ."""
    # The API's connections plan every report statement for its values, and so does this one.
    conn = await asyncpg.connect(url, server_settings=reports.SERVER_SETTINGS)
    results = []
    busy_start = machine_busy_s()
    started = time.perf_counter()
    try:
        for domain in [*args.sites, *args.rollup_only_sites]:
            timezone_name = await conn.fetchval("SELECT timezone FROM sites WHERE domain = $1", domain)
            for period_name in args.periods:
                period = parse_period({"period": period_name}, timezone_name)
                rolled = Scope(domain, period, site_timezone=timezone_name)
                raw = Scope(domain, period, site_timezone=timezone_name, rollups=False)
                for page, call_name, call in dashboard_queries(period_name):
                    fast_result, fast_sql, fast_first_ms = await first_call(conn, call, rolled)
                    # The scopes differ only in `rollups`, so a rollup scope that read no rollup table ran the raw SQL.
                    same_path = not set(tables_read(fast_sql)) & {"daily_metrics", "monthly_metrics",
                                                                  "daily_visitors"}
                    if same_path and domain in args.rollup_only_sites:
                        continue
                    row = {"site": domain, "timezone": timezone_name, "period": period_name, "page": page,
                           "call": call_name, "rollup_path_reads": tables_read(fast_sql), "same_sql": same_path}
                    timing = (args.runs, args.budget_s, args.min_runs)
                    if same_path:
                        durations = await time_query(conn, call, rolled, *timing, fast_first_ms)
                        row.update({**_summary("rollups", durations), **_summary("raw", durations)})
                    elif args.rollup_path_only or domain in args.rollup_only_sites:
                        row.update(_summary("rollups", await time_query(conn, call, rolled, *timing, fast_first_ms)))
                    else:
                        slow_result, slow_sql, slow_first_ms = await first_call(conn, call, raw)
                        row["raw_path_reads"] = tables_read(slow_sql)
                        row["same_result"] = fast_result == slow_result
                        if not row["same_result"]:
                            raise RuntimeError(f"rollup and raw results differ for {domain} {period_name} {call_name}")
                        row.update(_summary("rollups", await time_query(conn, call, rolled, *timing, fast_first_ms)))
                        raw_timing = (args.runs, args.budget_s, args.raw_min_runs)
                        row.update(_summary("raw", await time_query(conn, call, raw, *raw_timing, slow_first_ms)))
                    results.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        await conn.close()
    busy, total = machine_busy_s()
    return {"queries": results, "elapsed_s": round(time.perf_counter() - started, 1),
            "machine_busy_s": round(busy - busy_start[0], 1), "machine_total_s": round(total - busy_start[1], 1)}


def table(rows: list[dict]) -> str:
    lines = ["| site | period | page | API call | reads from rollup path | rollups p50 / p95 ms | "
             "raw only p50 / p95 ms | runs (rollups, raw) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reads = "same SQL as raw" if r["same_sql"] else ", ".join(r["rollup_path_reads"])
        raw = f"{r['raw_p50_ms']} / {r['raw_p95_ms']}" if "raw_runs" in r else "not timed"
        lines.append(f"| {r['site']} | {r['period']} | {r['page']} | `{r['call']}` | {reads} | "
                     f"{r['rollups_p50_ms']} / {r['rollups_p95_ms']} | {raw} | "
                     f"{r['rollups_runs']}, {r.get('raw_runs', 0)} |")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict:
    redis_url = f"{args.redis.rstrip('/')}/{args.redis_db}"
    report: dict = {"versions": await server_versions(args.pg, redis_url), "machine": platform.platform(),
                    "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                    "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}
    url = database_url(args.pg, args.database)
    if args.reload or not await database_exists(args.pg, args.database):
        await recreate_database(args.pg, args.database)
        busy_start = machine_busy_s()
        report["load"] = await load_database(url, args.events, args.days, int(time.time() * 1000), args.seed,
                                             args.workers)
        busy, total = machine_busy_s()
        report["load"]["machine_busy_s"] = round(busy - busy_start[0], 1)
        report["load"]["machine_total_s"] = round(total - busy_start[1], 1)
        print(json.dumps(report["load"], default=str), file=sys.stderr, flush=True)
    if args.verify:
        report["verify"] = await verify(args.pg, redis_url, args.verify_events, args.seed)
        print(json.dumps(report["verify"]), file=sys.stderr, flush=True)
        if not report["verify"]["identical"]:
            raise RuntimeError(f"the loader's tables differ from the processor's: {report['verify']}")
    if args.runs:
        report["measure"] = await measure(url, args)
    report["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="events to load (default 10000000)")
    parser.add_argument("--days", type=int, default=365, help="UTC days of traffic, ending today (default 365)")
    parser.add_argument("--database", default="weir_bench_dashboard",
                        help="database to load once and keep (default weir_bench_dashboard)")
    parser.add_argument("--reload", action="store_true", help="drop the database and load it again")

    parser.add_argument("--workers", type=int, default=2,
                        help="processes that load separate sites at the same time (default 2)")
    parser.add_argument("--verify", action="store_true",
                        help="check the loader against a real processor on a sample first")
    parser.add_argument("--verify-events", type=int, default=50_000, help="events of that sample (default 50000)")

    parser.add_argument("--runs", type=int, default=50, help="timed runs per query and path; 0 skips timing")
    parser.add_argument("--budget-s", type=float, default=12,
                        help="stop timing a query and path after this many seconds of runs, once it has "
                             "--min-runs runs (default 12)")
    parser.add_argument("--periods", nargs="+", choices=("30d", "year"), default=["30d", "year"],
                        help="periods to time (default 30d year)")
    parser.add_argument("--min-runs", type=int, default=5,
                        help="timed runs a query gets even past --budget-s (default 5)")
    parser.add_argument("--rollup-path-only", action="store_true",
                        help="time only the API's path, and skip comparing its results with the raw path's")
    parser.add_argument("--sites", nargs="*", default=[SITES[0].domain],
                        help=f"sites whose every query is timed (default {SITES[0].domain}, the biggest)")
    parser.add_argument("--rollup-only-sites", nargs="*", default=["docs.example"],
                        help="sites of which only the queries with a rollup path are timed (default docs.example, "
                             "the site in UTC)")
    parser.add_argument("--raw-min-runs", type=int, default=5,
                        help="timed runs a raw-path query gets even past --budget-s (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic traffic (default 1)")

    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="PostgreSQL maintenance database to create the benchmark databases from")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379",
                        help="Redis server for --verify, without a database number")
    parser.add_argument("--redis-db", type=int, default=11,
                        help="Redis database number --verify uses and flushes (default 11)")
    parser.add_argument("--output", type=Path, help="also write the full report as JSON to this file")
    args = parser.parse_args(argv)
    require_loopback(args.pg, "--pg")
    require_loopback(args.redis, "--redis")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "measure"}, default=str))
    if "measure" in report:
        print(table(report["measure"]["queries"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
