"""Benchmark: rebuild rate of `weir replay events` from raw_events.

Usage: .venv/bin/python -m bench.replay.run [--events 1000000] [--days 10] [--chunk-days 1]

Creates a fresh database on BENCH_PG (default postgresql://postgres@127.0.0.1:5432/postgres),
loads synthetic events straight into raw_events with COPY (one site, visitors with 1-20 events
each, about 20% bots), runs the schema guard, then rebuilds every day and prints events per
second. The database is dropped at the end. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import time
import uuid
from datetime import date, datetime, timedelta, timezone

import asyncpg

from ops.replay_events import replay_events
from sinks.guard import run_guard
from sinks.partitions import PartitionManager
from sinks.sites import upsert_site
from streams.sites import Site

ADMIN = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0 Safari/537.36"
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def synthetic_rows(count: int, first_day: date, days: int, rng: random.Random):
    """Yield raw_events records: visitors with 1-20 events each, spread over the days."""
    made = 0
    while made < count:
        day = first_day + timedelta(days=rng.randrange(days))
        start = datetime.combine(day, datetime.min.time(), timezone.utc) + timedelta(seconds=rng.randrange(80_000))
        visitor = uuid.uuid4().hex
        is_bot = rng.random() < 0.2
        agent = BOT if is_bot else CHROME.format(v=rng.randrange(100, 131))
        moment = start
        for _ in range(min(rng.randint(1, 20), count - made)):
            moment += timedelta(seconds=rng.randrange(5, 2400))
            if moment.date() != day:
                break
            path = f"/page/{int(rng.paretovariate(1.2)) % 500}"
            yield (uuid.uuid4(), "pending", None, "pageview", path, "{}", moment, moment, "bench.example", visitor,
                   is_bot, f"https://bench.example{path}", rng.choice([None, "https://www.google.com/", "https://t.co/x"]),
                   agent)
            made += 1


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events to load (default 1,000,000)")
    parser.add_argument("--days", type=int, default=10, help="days the events spread over (default 10)")
    parser.add_argument("--chunk-days", type=int, default=1, help="days per rebuild transaction (default 1)")
    args = parser.parse_args()

    name = f"weir_bench_replay_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f"CREATE DATABASE {name}")
    url = ADMIN.rsplit("/", 1)[0] + "/" + name
    try:
        conn = await asyncpg.connect(url)
        await run_guard(conn, timescaledb="off")
        await upsert_site(conn, Site("bench.example", "UTC"))
        last_day = datetime.now(timezone.utc).date() - timedelta(days=1)
        first_day = last_day - timedelta(days=args.days - 1)
        await PartitionManager("raw_events").ensure(conn, {first_day + timedelta(days=i) for i in range(args.days)})
        rows = list(synthetic_rows(args.events, first_day, args.days, random.Random(7)))
        started = time.perf_counter()
        await conn.copy_records_to_table("raw_events", records=rows, columns=[
            "id", "session_id", "user_id", "event_type", "event_action", "metadata", "timestamp", "created_at",
            "site", "visitor_id", "is_bot", "url", "referrer", "user_agent"])
        load_s = time.perf_counter() - started
        await conn.close()
        del rows

        started = time.perf_counter()
        reports = await replay_events(url, "bench.example", first_day, last_day, only={"sessions", "rollups"},
                                      chunk_days=args.chunk_days, progress=None)
        rebuild_s = time.perf_counter() - started
        events = sum(r.events for r in reports)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"loaded {args.events:,} events with COPY in {load_s:.1f}s ({args.events / load_s:,.0f}/s)")
        print(f"rebuilt {events:,} events over {args.days} days, {args.chunk_days} day(s) per transaction, "
              f"in {rebuild_s:.1f}s: {events / rebuild_s:,.0f} events/s; sessions {sum(r.sessions_after for r in reports):,}; "
              f"peak RSS {peak_mb:,.0f} MB")
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
