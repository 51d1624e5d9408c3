"""`weir replay stream` processes kept entries again outside the consumer group: replaying twice
changes no number, and replaying into emptied tables rebuilds every row of the first run."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import time
import uuid

import asyncpg
import pytest
from redis.asyncio import Redis

from ops.importer import LogImporter, newest_time, shift_for
from ops.progress import Progress
from ops.services import ServiceSet, run_services
from ops.replay_stream import InvalidBound, StreamReplay, check_range, parse_bound
from sinks.processor import BatchCounts, Processor
from sinks.settings import ProcessorSettings
from sinks.sites import upsert_site
from streams.event import Event, encode_entry
from streams.keys import EVENTS_STREAM, PROCESSOR_GROUP
from streams.partitions import StreamPartitions
from streams.sites import Site, SiteDirectory
from tests.conftest import DATA, REPO, service_env, wait_until_processed, weir_command

LOG = DATA / "access-logs" / "apache_combined.log"
SITE = Site("semicomplete.com", "UTC", ("www.semicomplete.com",))
LOG_EVENTS = 4173


def run_weir(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(weir_command(*args), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


async def import_real_log(redis: Redis, db: asyncpg.Connection) -> None:
    """Add the log's site to the sites table and the directory, then write the log to the stream."""
    await upsert_site(db, SITE)
    await SiteDirectory(redis).publish([SITE])
    importer = LogImporter(redis, SITE, shift=shift_for(newest_time([LOG], "combined")), progress=None)
    summary = await importer.import_files([LOG])
    assert summary.events_sent == LOG_EVENTS


async def data_tables(db: asyncpg.Connection) -> list[str]:
    """Tables that contain events or rows derived from them: all but `sites` and partitions."""
    rows = await db.fetch("""
        SELECT c.relname FROM pg_class c
         WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')
           AND NOT c.relispartition AND c.relname <> 'sites'
         ORDER BY 1""")
    return [r["relname"] for r in rows]


async def snapshot_tables(db: asyncpg.Connection) -> dict[str, list[tuple]]:
    """Every row of every data table but rollups at zero, without the write-time columns (default now())."""
    result = {}
    for table in await data_tables(db):
        if table == "table_freshness":
            continue
        columns = [r["column_name"] for r in await db.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = $1 AND coalesce(column_default, '') NOT LIKE 'now()%' ORDER BY ordinal_position",
            table)]
        listed = ", ".join(f'"{c}"' for c in columns)
        order = ", ".join(str(i) for i in range(1, len(columns) + 1))
        # A rollup row that sessions merging later brought back to zero depends on the order of batches.
        nonzero = " WHERE value <> 0" if "value" in columns else ""
        result[table] = [tuple(r) for r in await db.fetch(f"SELECT {listed} FROM {table}{nonzero} ORDER BY {order}")]
    return result


async def truncate_data(db: asyncpg.Connection) -> None:
    await db.execute("TRUNCATE " + ", ".join(await data_tables(db)))


async def group_state(redis: Redis) -> tuple:
    group = next(g for g in await redis.xinfo_groups(EVENTS_STREAM) if g["name"].decode() == PROCESSOR_GROUP)
    return group["last-delivered-id"], group["pending"], group["entries-read"]


@pytest.mark.parametrize(("text", "end", "bound"), [
    ("-", False, "-"),
    ("+", True, "+"),
    ("1715940000000-3", False, "1715940000000-3"),
    ("1715940000000", True, "1715940000000"),
    ("2024-05-17T10:00:00Z", False, "1715940000000-0"),
    ("2024-05-17T12:00:00+02:00", False, "1715940000000-0"),
    ("2024-05-17T10:00:00", False, "1715940000000-0"),
    ("2024-05-17 10:00", False, "1715940000000-0"),
    ("2024-05-17T10:00:00Z", True, "(1715940000000-0"),
    ("2024-05-17", True, "(1715904000000-0"),
    ("0001715940000000-03", False, "1715940000000-3"),
    ("0" * 5000 + "7-0", False, "7-0"),
    ("00-00", True, "0-0"),
])
def test_parse_bound_cases(text, end, bound):
    assert parse_bound(text, end=end) == bound


@pytest.mark.parametrize("text, shown", [
    ("1" * 5000, "1" * 60 + "... (5000 characters)"),
    ("1-" + "9" * 4400, "1-" + "9" * 58 + "... (4402 characters)"),
    ("018446744073709551616", "018446744073709551616"),
])
def test_parse_bound_rejects_long_id(text, shown):
    with pytest.raises(InvalidBound) as rejected:
        parse_bound(text)

    assert str(rejected.value) == (f"invalid stream position {shown!r}: give an entry id whose milliseconds and "
                                   "sequence number are at most 18446744073709551615")


@pytest.mark.parametrize("text", ["yesterday", "1715940000000-", "17-05-2024", "", "\uff11\uff12\uff13-0"])
def test_parse_bound_rejects_garbage(text):
    with pytest.raises(InvalidBound, match="entry id such as"):
        parse_bound(text)


async def test_replay_whole_stream_changes_no_number(stack, redis, db):
    await import_real_log(redis, db)
    await wait_until_processed(redis)
    before = await snapshot_tables(db)
    group_before = await group_state(redis)
    entries = await redis.xlen(EVENTS_STREAM)

    result = await asyncio.to_thread(run_weir, service_env(stack.database_url, stack.redis_url),
                                     "replay", "stream", "--from", "-")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == (
        f"entries read {entries}, events read {LOG_EVENTS}, newly stored 0, already stored {LOG_EVENTS}, "
        "malformed entries 0, failed entries 0")
    assert "replay stream:" in result.stderr
    assert await snapshot_tables(db) == before
    assert await group_state(redis) == group_before


async def test_replay_into_truncated_tables_restores_rows(stack, redis, db):
    await import_real_log(redis, db)
    await wait_until_processed(redis)
    before = await snapshot_tables(db)
    assert len(before["raw_events"]) == LOG_EVENTS
    await truncate_data(db)
    assert await db.fetchval("SELECT count(*) FROM raw_events") == 0

    result = await asyncio.to_thread(run_weir, service_env(stack.database_url, stack.redis_url),
                                     "replay", "stream", "--from", "-", "--batch-size", "7")

    assert result.returncode == 0, result.stderr
    assert f"newly stored {LOG_EVENTS}, already stored 0" in result.stdout
    after = await snapshot_tables(db)
    assert after.keys() == before.keys()
    for table in before:
        assert after[table] == before[table], table


async def test_replay_overlapping_live_processors(processor, redis, db, database_url, redis_url):
    await import_real_log(redis, db)
    services = ServiceSet()
    services.add_processor(Processor(ProcessorSettings(NODE_ENV="development", REDIS_URL=redis_url,
                                                       DATABASE_URL=database_url, CONCURRENCY=2, BATCH_SIZE=10,
                                                       METRICS_PORT=0)), 0)
    stopping = asyncio.Event()

    # The processors and the replay start together on the same entries.
    live = asyncio.create_task(run_services(services, stopping, handle_signals=False))
    try:
        report = await StreamReplay(processor, EVENTS_STREAM, "-", page_size=10).run(asyncio.Event())
        await wait_until_processed(redis)
    finally:
        stopping.set()
        await asyncio.wait_for(live, 30)
    overlapped = await snapshot_tables(db)
    await truncate_data(db)
    alone = await StreamReplay(processor, EVENTS_STREAM, "-").run(asyncio.Event())

    assert report.events_read == LOG_EVENTS
    assert alone.events_inserted == LOG_EVENTS
    assert len(overlapped["raw_events"]) == LOG_EVENTS
    assert await snapshot_tables(db) == overlapped


def make_event(n: int, now_ms: int) -> Event:
    return Event(id=str(uuid.uuid4()), site="example.com", type="pageview", action=f"/p/{n}",
                 timestamp_ms=now_ms - 1000 * n, received_ms=now_ms, visitor_id=f"{n % 3:032x}",
                 url=f"https://example.com/p/{n}", user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0")


@pytest.fixture
async def processor(database_url: str, redis_url: str):
    proc = Processor(ProcessorSettings(NODE_ENV="development", REDIS_URL=redis_url, DATABASE_URL=database_url,
                                       CONCURRENCY=1, METRICS_PORT=0))
    await proc.start()
    yield proc
    await proc.close()


async def add_entries(redis: Redis, count: int) -> list[str]:
    now_ms = int(time.time() * 1000)
    return [(await redis.xadd(EVENTS_STREAM, encode_entry([make_event(n, now_ms)]))).decode() for n in range(count)]


class StopAfterPages(Progress):
    """A progress reporter that sets `stopping` once `pages` pages are done."""

    def __init__(self, stopping: asyncio.Event, pages: int) -> None:
        super().__init__(None, "entries", None)
        self.stopping = stopping
        self.pages_left = pages

    def advance(self, count: int = 1) -> None:
        super().advance(count)
        self.pages_left -= 1
        if self.pages_left == 0:
            self.stopping.set()


async def test_stop_reports_resume_point(processor, redis, db):
    ids = await add_entries(redis, 5)
    stopping = asyncio.Event()

    first = await StreamReplay(processor, EVENTS_STREAM, "-", page_size=2,
                               progress=StopAfterPages(stopping, 1)).run(stopping)

    assert first.entries_read == 2
    assert first.resume_from == ids[2]
    rest = await StreamReplay(processor, EVENTS_STREAM, first.resume_from, page_size=2).run(asyncio.Event())
    assert rest.entries_read == 3
    assert rest.resume_from is None
    assert first.events_inserted + rest.events_inserted == 5
    assert await db.fetchval("SELECT count(*) FROM raw_events") == 5


async def test_stop_after_last_page_is_complete(processor, redis):
    await add_entries(redis, 4)
    stopping = asyncio.Event()

    report = await StreamReplay(processor, EVENTS_STREAM, "-", page_size=2,
                                progress=StopAfterPages(stopping, 2)).run(stopping)

    assert report.entries_read == 4
    assert report.resume_from is None


async def test_range_by_entry_ids(processor, redis, db):
    ids = await add_entries(redis, 6)

    report = await StreamReplay(processor, EVENTS_STREAM, ids[1], ids[3]).run(asyncio.Event())

    assert (report.entries_read, report.events_inserted, report.last_entry_id) == (3, 3, ids[3])


async def test_malformed_entry_is_skipped(processor, redis, db):
    now_ms = int(time.time() * 1000)
    await redis.xadd(EVENTS_STREAM, encode_entry([make_event(1, now_ms)]))
    bad = (await redis.xadd(EVENTS_STREAM, {b"v": b"1", b"events": b"not json"})).decode()
    await redis.xadd(EVENTS_STREAM, encode_entry([make_event(2, now_ms)]))

    report = await StreamReplay(processor, EVENTS_STREAM, "-").run(asyncio.Event())

    assert report.malformed_entries == [bad]
    assert (report.entries_read, report.events_read, report.events_inserted) == (3, 2, 2)
    assert await db.fetchval("SELECT count(*) FROM raw_events") == 2


async def test_replay_never_touches_group(processor, redis):
    await add_entries(redis, 4)
    delivered = await redis.xreadgroup(PROCESSOR_GROUP, "worker", {EVENTS_STREAM: ">"}, count=2)
    pending_before = await pending_entries(redis)
    group_before = await group_state(redis)

    report = await StreamReplay(processor, EVENTS_STREAM, "-").run(asyncio.Event())

    assert report.events_inserted == 4
    assert len(delivered[0][1]) == 2
    assert await pending_entries(redis) == pending_before
    assert await group_state(redis) == group_before


async def pending_entries(redis: Redis) -> list[tuple]:
    """The group's pending entries with their consumer and delivery count (idle time left out, it grows)."""
    pending = await redis.xpending_range(EVENTS_STREAM, PROCESSOR_GROUP, "-", "+", 10)
    return [(p["message_id"], p["consumer"], p["times_delivered"]) for p in pending]


class FlakyProcessor(Processor):
    """A processor whose first `failures` batches fail as a dropped database connection does."""

    failures = 0

    async def handle_batch(self, entries) -> BatchCounts:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionResetError("connection reset by peer")
        return await super().handle_batch(entries)


@pytest.fixture
async def flaky(database_url: str, redis_url: str):
    proc = FlakyProcessor(ProcessorSettings(NODE_ENV="development", REDIS_URL=redis_url, DATABASE_URL=database_url,
                                            CONCURRENCY=1, METRICS_PORT=0))
    await proc.start()
    yield proc
    await proc.close()


async def test_transient_failure_is_retried(flaky, redis, db):
    await add_entries(redis, 3)
    flaky.failures = 2

    report = await StreamReplay(flaky, EVENTS_STREAM, "-", retry_backoff_s=0.01).run(asyncio.Event())

    assert (report.entries_read, report.events_inserted, report.resume_from) == (3, 3, None)


async def test_lasting_failure_stops_with_resume_point(flaky, redis, db):
    ids = await add_entries(redis, 3)
    flaky.failures = 100

    report = await StreamReplay(flaky, EVENTS_STREAM, "-", page_size=2, retry_backoff_s=0.01).run(asyncio.Event())

    assert report.resume_from == ids[0]
    assert report.error == "ConnectionResetError: connection reset by peer"
    assert report.entries_read == 0


async def test_estimate_is_exact_for_whole_stream(processor, redis):
    ids = await add_entries(redis, 10)

    assert await StreamReplay(processor, EVENTS_STREAM, "-").estimate_entries() == 10
    assert await StreamReplay(processor, EVENTS_STREAM, ids[0], ids[-1]).estimate_entries() == 10
    assert await StreamReplay(processor, EVENTS_STREAM, "(" + ids[-1]).estimate_entries() == 0


async def test_cli_replays_every_partition(database_url, redis_url, redis, db):
    partitions = StreamPartitions(2)
    now_ms = int(time.time() * 1000)
    events = [dataclasses.replace(make_event(n, now_ms), visitor_id=f"{n:032x}") for n in range(20)]
    routed = partitions.route(events)
    assert sorted(routed) == partitions.streams()
    for stream, stream_events in routed.items():
        await redis.xadd(stream, encode_entry(stream_events))
    env = service_env(database_url, redis_url, STREAM_PARTITIONS="2")

    result = await asyncio.to_thread(run_weir, env, "replay", "stream", "--from", "-")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == (
        "entries read 2, events read 20, newly stored 20, already stored 0, malformed entries 0, failed entries 0")
    assert await db.fetchval("SELECT count(*) FROM raw_events") == 20


async def test_cli_warns_only_when_trimmed(database_url, redis_url, redis):
    ids = await add_entries(redis, 4)
    env = service_env(database_url, redis_url)
    warning = (f"entries of {EVENTS_STREAM} before {ids[2]} are no longer kept; replay older events from the "
               "archive with `weir replay archive`")

    untouched = await asyncio.to_thread(run_weir, env, "replay", "stream", "--from", "0")
    await redis.xtrim(EVENTS_STREAM, maxlen=2, approximate=False)
    trimmed = await asyncio.to_thread(run_weir, env, "replay", "stream", "--from", "0")
    after_trim = await asyncio.to_thread(run_weir, env, "replay", "stream", "--from", ids[2])

    assert untouched.returncode == 0, untouched.stderr
    assert "no longer kept" not in untouched.stderr
    assert trimmed.returncode == 0, trimmed.stderr
    assert warning in trimmed.stderr.splitlines()
    assert "no longer kept" not in after_trim.stderr


async def test_cli_rejects_bad_input(database_url, redis_url):
    env = service_env(database_url, redis_url)

    bad = await asyncio.to_thread(run_weir, env, "replay", "stream", "--from", "last tuesday")
    missing = await asyncio.to_thread(run_weir, env, "replay", "stream", "--from", "-", "--stream", "weir:nosuch")

    assert bad.returncode == 1
    assert bad.stderr.strip() == ("error: invalid stream position 'last tuesday': give an entry id such as "
                                  "1715940000000-0 or an ISO-8601 time such as 2026-05-17T10:00:00Z")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: stream 'weir:nosuch' not found at REDIS_URL; nothing to replay"


@pytest.mark.parametrize("args, message", [
    (["--from", "0001-01-01"], "invalid stream position '0001-01-01': give a time from 1970-01-01T00:00:00Z on, "
                               "because entry ids count milliseconds since then"),
    (["--from", "99999999999999999999999-0"], "invalid stream position '99999999999999999999999-0': give an "
                                              "entry id whose milliseconds and sequence number are at most "
                                              "18446744073709551615"),
    (["--from", "5-0", "--to", "1-18446744073709551616"], "invalid stream position '1-18446744073709551616': give "
                                                          "an entry id whose milliseconds and sequence number are "
                                                          "at most 18446744073709551615"),
    (["--from", "5-0", "--to", "1-" + "1" * 5000], "invalid stream position '1-" + "1" * 58 + "... (5002 "
                                                    "characters)': give an entry id whose milliseconds and "
                                                    "sequence number are at most 18446744073709551615"),
    (["--from", "5-0", "--to", "1-0"], "invalid range: --from 5-0 --to 1-0 contains no entry: give a --to after "
                                       "--from (a time as --to is exclusive)"),
    (["--from", "-", "--to", "1970-01-01T00:00Z"], "invalid --to 1970-01-01T00:00Z: no entry id is before it, so "
                                                   "give a later --to"),
    (["--from", "2026-05-17T10:00Z", "--to", "2026-05-17T10:00Z"],
     "invalid range: --from 2026-05-17T10:00Z --to 2026-05-17T10:00Z contains no entry: give a --to after --from "
     "(a time as --to is exclusive)"),
])
async def test_cli_rejects_bad_range_locally(database_url, redis_url, redis, args, message):
    await redis.xadd(EVENTS_STREAM, {"probe": "1"}, id="3-0")

    result = await asyncio.to_thread(run_weir, service_env(database_url, redis_url), "replay", "stream", *args)

    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"error: {message}"]
    assert result.stdout == ""


@pytest.mark.parametrize("args", [["--from", "5-0", "--to", "5-0"], ["--from", "5", "--to", "5-0"]])
def test_one_entry_range_is_accepted(args):
    start, end = parse_bound(args[1]), parse_bound(args[3], end=True)

    check_range(start, end, args[1], args[3])
