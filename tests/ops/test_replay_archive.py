"""`weir replay archive` loads archive files and exported NDJSON onto the stream: events already
stored are left out, malformed lines are reported with file and line, and a stopped replay resumes."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import time
import uuid
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from ops.replay_archive import (
    DEFAULT_RESUME_FILE,
    ArchiveReplay,
    ArchiveReplayReport,
    ResumeState,
    _finish_resume,
    list_sources,
    wait_for_processors,
)
from ops.services import ServiceSet, run_services
from sinks.archive import ARCHIVE_ORIGIN, ORIGIN_FIELD, FsspecArchiveStore, archive_line, archive_path
from sinks.processor import Processor
from sinks.settings import ProcessorSettings
from sinks.sites import upsert_site
from streams.event import Event, decode_entry
from streams.keys import ARCHIVE_GROUP, EVENTS_STREAM
from streams.partitions import StreamPartitions
from streams.sites import Site, SiteDirectory
from tests.conftest import service_env, wait_until_processed
from tests.ops.test_replay_stream import LOG_EVENTS, import_real_log, run_weir, snapshot_tables, truncate_data

NETWORK_COLUMNS = {"country", "region", "city", "asn", "org", "orgType", "isGovernment", "responseTier"}
"""Fingerprint columns derived from the client address, which the archive does not keep."""
SITE = Site("example.com", "UTC", ())


@pytest.fixture
async def archiving(database_url: str, redis_url: str, tmp_path: Path):
    """A processor with the archive sink on, writing to tmp_path/archive; yields the archive folder."""
    root = tmp_path / "archive"
    settings = ProcessorSettings(NODE_ENV="development", REDIS_URL=redis_url, DATABASE_URL=database_url,
                                 CONCURRENCY=2, BATCH_SIZE=50, METRICS_PORT=0, ARCHIVE_URL=str(root))
    services = ServiceSet()
    services.add_processor(Processor(settings), 0)
    stopping, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_services(services, stopping, ready, handle_signals=False))
    await asyncio.wait([task, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    yield root
    stopping.set()
    await asyncio.wait_for(task, 30)


async def wait_until_archived(redis: Redis, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        group = next((g for g in await redis.xinfo_groups(EVENTS_STREAM) if g["name"].decode() == ARCHIVE_GROUP), None)
        if group is not None and int(group["lag"] or 0) == 0 and int(group["pending"]) == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the archive group did not catch up within {timeout_s}s")


def archived_lines(root: Path) -> list[dict]:
    return [orjson.loads(line) for path in sorted(root.rglob("*.ndjson.gz"))
            for line in gzip.decompress(path.read_bytes()).splitlines()]


def without_network(rows: list[tuple], columns: list[str]) -> list[tuple]:
    keep = [i for i, name in enumerate(columns) if name not in NETWORK_COLUMNS]
    return sorted(tuple(row[i] for i in keep) for row in rows)


async def fingerprint_columns(db) -> list[str]:
    return [r["column_name"] for r in await db.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'session_fingerprints' "
        "AND coalesce(column_default, '') NOT LIKE 'now()%' ORDER BY ordinal_position")]


async def test_archive_round_trip_restores_events(archiving, redis, db, database_url, redis_url):
    await import_real_log(redis, db)
    await wait_until_processed(redis)
    await wait_until_archived(redis)
    lines = archived_lines(archiving)
    assert len(lines) == LOG_EVENTS
    assert not any("ip" in line for line in lines)
    before = await snapshot_tables(db)
    await truncate_data(db)
    env = service_env(database_url, redis_url)

    first = await asyncio.to_thread(run_weir, env, "replay", "archive", str(archiving))
    second = await asyncio.to_thread(run_weir, env, "replay", "archive", str(archiving))

    files = len(list(archiving.rglob("*.ndjson.gz")))
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines()[-1] == (
        f"files read {files}, lines read {LOG_EVENTS}, events read {LOG_EVENTS}, already stored 0, repeated 0, "
        f"queued {LOG_EVENTS}, newly stored {LOG_EVENTS}, malformed 0, rejected 0")
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip().splitlines()[-1] == (
        f"files read {files}, lines read {LOG_EVENTS}, events read {LOG_EVENTS}, already stored {LOG_EVENTS}, "
        "repeated 0, queued 0, newly stored 0, malformed 0, rejected 0")
    assert "replay archive:" in first.stderr
    after = await snapshot_tables(db)
    assert after["raw_events"] == before["raw_events"]
    assert after["daily_visitors"] == before["daily_visitors"]
    columns = await fingerprint_columns(db)
    assert without_network(after["session_fingerprints"], columns) == without_network(
        before["session_fingerprints"], columns)
    totals = "SELECT date, metric_name, value FROM daily_metrics WHERE dimension_key IS NULL AND value <> 0 ORDER BY 1, 2"
    assert [tuple(r) for r in await db.fetch(totals)] == [
        (r[1], r[2], r[5]) for r in before["daily_metrics"] if r[3] is None]
    # The replayed entries carry origin=archive, so the archive sink does not write them again.
    await wait_until_archived(redis)
    assert len(archived_lines(archiving)) == LOG_EVENTS


def foreign_lines(now_ms: int) -> list[bytes]:
    iso = datetime.fromtimestamp(now_ms / 1000, tz=timezone.utc).isoformat()
    firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
    pageview = {"site": "example.com", "type": "pageview", "url": "https://example.com/b", "timestamp": now_ms - 60_000,
                "user_agent": firefox, "ip": "192.0.2.20"}
    return [
        orjson.dumps({"site": "example.com", "type": "pageview", "url": "https://example.com/a", "timestamp": iso,
                      "id": "m1", "user_agent": firefox, "ip": "192.0.2.10"}),
        orjson.dumps(pageview),
        orjson.dumps(pageview),
        orjson.dumps({"site": "example.com", "type": "signup", "name": "signup", "timestamp": now_ms - 30_000,
                      "id": "m4", "user_agent": firefox, "ip": "192.0.2.10"}),
        b"{not json",
        b"[1, 2]",
        orjson.dumps({"site": "example.com", "url": "https://example.com/c"}),
        orjson.dumps({"site": "unknown.example", "url": "https://unknown.example/", "timestamp": now_ms}),
        b"   ",
        orjson.dumps({"id": "not-a-uuid", "site": "example.com", "type": "pageview", "action": "/", "visitor_id": "v",
                      "timestamp_ms": now_ms, "received_ms": now_ms}),
    ]


async def add_site(redis: Redis, db) -> None:
    await upsert_site(db, SITE)
    await SiteDirectory(redis).publish([SITE])


async def test_foreign_ndjson_goes_through_checks(stack, redis, db, tmp_path):
    await add_site(redis, db)
    export = tmp_path / "export.ndjson"
    export.write_bytes(b"\n".join(foreign_lines(int(time.time() * 1000))) + b"\n")
    problems = io.StringIO()

    replay = ArchiveReplay(redis, db, problems=problems)
    await replay.run(list_sources([str(export)]), asyncio.Event(), ResumeState([str(export)]))
    await wait_until_processed(redis)
    stored = await replay.count_newly_stored()
    again = ArchiveReplay(redis, db, problems=None)
    await again.run(list_sources([str(export)]), asyncio.Event(), ResumeState([str(export)]))

    report = replay.report
    assert (report.lines_read, report.events_read, report.queued, report.malformed, report.rejected) == (10, 4, 4, 3, 2)
    assert dict(report.rejected_reasons) == {"missing_timestamp": 1, "unknown_site": 1}
    assert stored == 4
    assert await db.fetchval("SELECT count(*) FROM raw_events") == 4
    assert sorted(await db.fetchval("SELECT array_agg(event_action) FROM raw_events")) == ["/a", "/b", "/b", "signup"]
    messages = problems.getvalue().splitlines()
    assert messages[0].startswith(f"malformed {export}:5: invalid JSON")
    assert messages[1] == f"malformed {export}:6: expected a JSON object, got list"
    assert messages[2].startswith(f"rejected {export}:7: an exported event needs `timestamp`")
    assert messages[3].startswith(f"rejected {export}:8: unknown site 'unknown.example'")
    assert messages[4] == f"malformed {export}:10: field 'id' must be a UUID, got 'not-a-uuid'"
    assert (again.report.already_stored, again.report.queued) == (4, 0)


def make_event(n: int, now_ms: int) -> Event:
    return Event(id=str(uuid.uuid4()), site="example.com", type="pageview", action=f"/p/{n}",
                 timestamp_ms=now_ms - n * 1000, received_ms=now_ms, visitor_id=f"{n:032x}",
                 url=f"https://example.com/p/{n}", user_agent="Mozilla/5.0", ip="192.0.2.1")


def write_archive(path: Path, events: list[Event], *, members: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    step = max(1, len(events) // members)
    with open(path, "ab") as file:
        for start in range(0, len(events), step):
            file.write(gzip.compress(b"".join(archive_line(e) for e in events[start:start + step])))


async def stream_events(redis: Redis) -> list[tuple[Event, bytes | None]]:
    return [(event, fields.get(ORIGIN_FIELD)) for entry_id, fields in await redis.xrange(EVENTS_STREAM)
            for event in decode_entry(entry_id.decode(), fields)]


def test_folder_walk_finds_ndjson_sorted(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.ndjson", "a/b/y.ndjson.gz", "notes.txt", "z.jsonl", "a/b/w.json"):
        (tmp_path / name).write_bytes(b"")

    names = [Path(s.name).relative_to(tmp_path).as_posix() for s in list_sources([str(tmp_path)])]

    assert names == ["a/b/w.json", "a/b/y.ndjson.gz", "a/x.ndjson", "z.jsonl"]
    assert [s.name for s in list_sources([str(tmp_path / "notes.txt")])] == [str(tmp_path / "notes.txt")]
    with pytest.raises(ValueError, match="archive path not found"):
        list_sources([str(tmp_path / "missing")])


async def test_archive_lines_keep_ids_and_skip_archiving(redis, db, tmp_path):
    now_ms = int(time.time() * 1000)
    events = [make_event(n, now_ms) for n in range(3)]
    write_archive(tmp_path / archive_path("example.com", now_ms), events, members=3)

    replay = ArchiveReplay(redis, db, problems=None)
    await replay.run(list_sources([str(tmp_path)]), asyncio.Event(), ResumeState([str(tmp_path)]))

    queued = await stream_events(redis)
    assert replay.report.queued == 3
    assert [origin for _, origin in queued] == [ARCHIVE_ORIGIN] * 3
    expected = [asdict(e) | {"ip": None} for e in events]
    assert [asdict(event) for event, _ in queued] == expected


async def test_events_go_to_visitor_partitions(redis, db, tmp_path):
    now_ms = int(time.time() * 1000)
    events = [make_event(n, now_ms) for n in range(30)]
    write_archive(tmp_path / "a.ndjson.gz", events)
    partitions = StreamPartitions(3)

    replay = ArchiveReplay(redis, db, partitions=partitions, problems=None)
    await replay.run(list_sources([str(tmp_path)]), asyncio.Event(), ResumeState([str(tmp_path)]))

    assert sorted(replay.report.last_entry_ids) == partitions.streams()
    for stream in partitions.streams():
        queued = [event for entry_id, fields in await redis.xrange(stream)
                  for event in decode_entry(entry_id.decode(), fields)]
        assert queued, stream
        assert all(partitions.stream_of(event) == stream for event in queued)
    assert not await redis.exists(EVENTS_STREAM)


async def test_truncated_gzip_reported_rest_loaded(redis, db, tmp_path):
    now_ms = int(time.time() * 1000)
    path = tmp_path / "cut.ndjson.gz"
    write_archive(path, [make_event(n, now_ms) for n in range(2)])
    member = gzip.compress(b"".join(archive_line(make_event(n, now_ms)) for n in range(2, 200)))
    with open(path, "ab") as file:
        file.write(member[: len(member) // 2])
    later = tmp_path / "later.ndjson"
    later.write_bytes(archive_line(make_event(500, now_ms)))
    problems = io.StringIO()

    replay = ArchiveReplay(redis, db, problems=problems)
    await replay.run(list_sources([str(path), str(later)]), asyncio.Event(), ResumeState([]))

    assert replay.report.files_read == 2
    assert replay.report.queued >= 3
    assert f"malformed {path}: gzip data is truncated or corrupt after line" in problems.getvalue()
    assert any(event.action == "/p/500" for event, _ in await stream_events(redis))
    assert [message.split(" after line")[0] for message in replay.report.truncated] == [
        f"{path}: gzip data is truncated or corrupt"]


async def test_truncated_gzip_exits_1(database_url, redis_url, tmp_path):
    path = tmp_path / "cut.ndjson.gz"
    member = gzip.compress(b"".join(archive_line(make_event(n, int(time.time() * 1000))) for n in range(200)))
    path.write_bytes(member[: len(member) // 2])

    result = await asyncio.to_thread(run_weir, service_env(database_url, redis_url), "replay", "archive",
                                     "--no-wait", str(path))

    assert result.returncode == 1
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith(f"error: {path}: gzip data is truncated or corrupt after line ")
    assert error.endswith("; its earlier lines were queued, and replaying the repaired file again skips them by "
                          "their ids")


class StopAfterFirstPage(ArchiveReplay):
    """A replay that sets `stopping` once its first page is queued."""

    stopping: asyncio.Event

    async def _flush_page(self) -> None:
        await super()._flush_page()
        if self.report.queued:
            self.stopping.set()


async def test_stop_then_resume_from_file(redis, db, tmp_path):
    now_ms = int(time.time() * 1000)
    first_file, second_file = tmp_path / "a.ndjson.gz", tmp_path / "b.ndjson.gz"
    write_archive(first_file, [make_event(n, now_ms) for n in range(5)])
    write_archive(second_file, [make_event(n, now_ms) for n in range(5, 7)])
    paths = [str(tmp_path)]
    resume_file = tmp_path / "weir-replay-archive.resume"
    stopping = asyncio.Event()

    stopped = StopAfterFirstPage(redis, db, page_events=2, problems=None)
    stopped.stopping = stopping
    state = await stopped.run(list_sources(paths), stopping, ResumeState(paths))
    state.save(resume_file)
    loaded = ResumeState.load(resume_file)
    assert (loaded.paths, loaded.file, loaded.line, loaded.done) == (paths, str(first_file), 2, [])
    resumed = ArchiveReplay(redis, db, page_events=2, problems=None)
    final = await resumed.run(list_sources(paths), asyncio.Event(), loaded)

    assert stopped.report.stopped
    assert (stopped.report.queued, resumed.report.queued, resumed.report.lines_read) == (2, 5, 5)
    assert not resumed.report.stopped
    assert final.done == [str(first_file), str(second_file)]
    actions = sorted(event.action for event, _ in await stream_events(redis))
    assert actions == sorted(f"/p/{n}" for n in range(7))


async def test_memory_url_is_read_with_fsspec(redis, db):
    pytest.importorskip("fsspec")
    now_ms = int(time.time() * 1000)
    url = f"memory://weir-replay-{uuid.uuid4().hex}"
    store = FsspecArchiveStore(url)
    store.append(archive_path("example.com", now_ms),
                 gzip.compress(b"".join(archive_line(make_event(n, now_ms)) for n in range(4))))

    sources = list_sources([url])
    replay = ArchiveReplay(redis, db, problems=None)
    await replay.run(sources, asyncio.Event(), ResumeState([url]))

    assert [s.name.replace(":///", "://") for s in sources] == [f"{url}/{archive_path('example.com', now_ms)}"]
    assert replay.report.queued == 4


async def test_wait_without_processor_group_returns(redis):
    await redis.xadd(EVENTS_STREAM, {b"v": b"1", b"events": b"[]"})

    assert await wait_for_processors(redis, {EVENTS_STREAM: "0-1"}, asyncio.Event(), report_to=None) is False


async def test_resume_file_for_other_paths(database_url, redis_url, tmp_path):
    resume = tmp_path / "resume.json"
    ResumeState(["/elsewhere"], [], None, 0).save(resume)
    (tmp_path / "x.ndjson").write_bytes(b"")

    result = await asyncio.to_thread(run_weir, service_env(database_url, redis_url), "replay", "archive",
                                     "--resume", str(resume), str(tmp_path / "x.ndjson"))

    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: resume file {resume} was written for other paths (/elsewhere); "
                                     "give the same paths, or remove the file to start over")


def test_stopped_run_writes_resume_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(paths=["/data/archive"], resume=None)
    state = ResumeState(["/data/archive"], ["/data/archive/a.ndjson.gz"], "/data/archive/b.ndjson.gz", 4000)

    status = _finish_resume(args, state, ArchiveReplayReport(stopped=True))

    assert status == 130
    assert ResumeState.load(tmp_path / DEFAULT_RESUME_FILE) == state
    assert capsys.readouterr().out.strip().endswith(
        f"resume with: weir replay archive --resume {DEFAULT_RESUME_FILE} /data/archive")


def test_finished_run_removes_resume_file(tmp_path):
    resume = tmp_path / "run.resume"
    ResumeState(["/data/archive"]).save(resume)
    args = argparse.Namespace(paths=["/data/archive"], resume=str(resume))

    status = _finish_resume(args, ResumeState(["/data/archive"]), ArchiveReplayReport())

    assert status == 0
    assert not resume.exists()
