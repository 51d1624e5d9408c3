"""The archive sink writes every stream event, without its IP, to gzip NDJSON files per site and hour,
and acknowledges an entry only after its lines are flushed."""

from __future__ import annotations

import asyncio
import errno
import gzip
import time
import uuid
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from ops.services import ServiceSet, run_services
from sinks import archive
from sinks.archive import (
    ARCHIVE_ORIGIN,
    ORIGIN_FIELD,
    ArchiveSink,
    FsspecArchiveStore,
    LocalArchiveStore,
    archive_line,
    archive_path,
    create_archive_runner,
    encode_members,
    site_folder,
)
from sinks.processor import Processor
from sinks.settings import ProcessorSettings
from streams.agent import AgentOptions, AgentRunner, AgentSpec
from streams.consumer import Entry, StreamConsumer
from streams.event import Event, encode_entry
from streams.keys import ARCHIVE_GROUP, DEAD_LETTER_STREAM, EVENTS_STREAM
from tests.conftest import wait_until_processed
from weir.settings import ConfigError, load_settings

STREAM = "test:archive:events"
HOUR_MS = 3_600_000
T0 = 1_747_476_000_000  # 2025-05-17T10:00:00Z


def make_event(n: int, *, site: str = "example.com", timestamp_ms: int = T0) -> Event:
    return Event(id=str(uuid.UUID(int=n + (7 << 76))), site=site, type="pageview", action=f"/page/{n}",
                 timestamp_ms=timestamp_ms, received_ms=timestamp_ms + 5, visitor_id=f"{n:032x}",
                 url=f"https://{site}/page/{n}", referrer=None, user_agent="Mozilla/5.0", ip="203.0.113.7",
                 props={"n": n})


def read_archive(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]


async def run_until(runner: AgentRunner, condition, timeout_s: float = 10.0) -> None:
    stopping = asyncio.Event()
    task = asyncio.create_task(runner.run(stopping))
    try:
        async with asyncio.timeout(timeout_s):
            while not await condition():
                await asyncio.sleep(0.02)
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)


async def group_done(redis: Redis, stream: str, group: str = ARCHIVE_GROUP) -> bool:
    info = {g["name"].decode(): g for g in await redis.xinfo_groups(stream)}
    state = info.get(group)
    return state is not None and int(state["lag"] or 0) == 0 and int(state["pending"]) == 0


def test_archive_path_is_site_and_utc_hour():
    assert archive_path("example.com", T0) == "example.com/2025/05/17/10.ndjson.gz"
    assert archive_path("example.com", T0 + HOUR_MS - 1) == "example.com/2025/05/17/10.ndjson.gz"
    assert archive_path("example.com", T0 + 14 * HOUR_MS) == "example.com/2025/05/18/00.ndjson.gz"


def test_site_folder_escapes_path_characters():
    assert site_folder("shop.example.com") == "shop.example.com"
    assert site_folder("a/b") == "a%2Fb"
    assert site_folder("..") == "%2E."
    assert site_folder("host:8080") == "host%3A8080"


def test_archive_line_drops_ip():
    line = orjson.loads(archive_line(make_event(1)))

    assert "ip" not in line
    assert line["visitor_id"] == f"{1:032x}"
    assert line["received_ms"] == T0 + 5
    assert line["props"] == {"n": 1}


def test_encode_members_groups_by_site_and_hour():
    entries = [
        Entry("1-0", encode_entry([make_event(1), make_event(2, timestamp_ms=T0 + HOUR_MS)])),
        Entry("2-0", encode_entry([make_event(3, site="other.org")])),
        Entry("3-0", {b"v": b"0", b"events": b"[]"}),
        Entry("4-0", {**encode_entry([make_event(4)]), ORIGIN_FIELD: ARCHIVE_ORIGIN}),
    ]

    members, count = encode_members(entries)

    assert count == 3
    assert sorted(members) == ["example.com/2025/05/17/10.ndjson.gz", "example.com/2025/05/17/11.ndjson.gz",
                               "other.org/2025/05/17/10.ndjson.gz"]
    lines = gzip.decompress(members["example.com/2025/05/17/10.ndjson.gz"]).splitlines()
    assert [orjson.loads(line)["action"] for line in lines] == ["/page/1"]


def test_local_appends_read_as_one_gzip(tmp_path):
    store = LocalArchiveStore(tmp_path)
    first, _ = encode_members([Entry("1-0", encode_entry([make_event(1), make_event(2)]))])
    second, _ = encode_members([Entry("2-0", encode_entry([make_event(3)]))])

    for members in (first, second):
        for path, data in members.items():
            store.append(path, data)

    lines = read_archive(tmp_path / "example.com/2025/05/17/10.ndjson.gz")
    assert [line["action"] for line in lines] == ["/page/1", "/page/2", "/page/3"]


def test_failed_append_is_cut_back(tmp_path, monkeypatch):
    store = LocalArchiveStore(tmp_path)
    members, _ = encode_members([Entry("1-0", encode_entry([make_event(1)]))])
    (path, data), = members.items()
    store.append(path, data)
    size_before = (tmp_path / path).stat().st_size

    def write_half_then_fail(fd: int, payload: bytes) -> None:
        archive.os.write(fd, payload[: len(payload) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archive, "_write_all", write_half_then_fail)
    with pytest.raises(OSError):
        store.append(path, encode_members([Entry("2-0", encode_entry([make_event(2)]))])[0][path])
    monkeypatch.undo()

    assert (tmp_path / path).stat().st_size == size_before
    store.append(path, encode_members([Entry("3-0", encode_entry([make_event(3)]))])[0][path])
    assert [line["action"] for line in read_archive(tmp_path / path)] == ["/page/1", "/page/3"]


def test_memory_filesystem_store_appends():
    pytest.importorskip("fsspec")
    root = f"memory://weir-test-{uuid.uuid4().hex}"
    store = FsspecArchiveStore(root)
    for n in (1, 2):
        members, _ = encode_members([Entry(f"{n}-0", encode_entry([make_event(n)]))])
        for path, data in members.items():
            store.append(path, data)

    data = store.fs.cat(f"{store.root}/example.com/2025/05/17/10.ndjson.gz")
    assert [orjson.loads(line)["action"] for line in gzip.decompress(data).splitlines()] == ["/page/1", "/page/2"]


def test_unknown_archive_scheme_is_config_error(monkeypatch):
    pytest.importorskip("fsspec")
    monkeypatch.setenv("NODE_ENV", "development")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/4")
    monkeypatch.setenv("DATABASE_URL", "postgresql://127.0.0.1/none")
    monkeypatch.setenv("ARCHIVE_URL", "nosuchscheme://bucket/weir")

    with pytest.raises(ConfigError) as raised:
        load_settings(ProcessorSettings)

    assert "ARCHIVE_URL" in str(raised.value)
    assert "nosuchscheme" in str(raised.value)


async def test_archive_agent_writes_then_acknowledges(redis, tmp_path):
    await redis.xadd(STREAM, encode_entry([make_event(1), make_event(2, timestamp_ms=T0 + HOUR_MS)]))
    await redis.xadd(STREAM, {b"v": b"9", b"events": b"[]"})
    await redis.xadd(STREAM, encode_entry([make_event(3, site="other.org")]))
    await redis.xadd(STREAM, {**encode_entry([make_event(4)]), ORIGIN_FIELD: ARCHIVE_ORIGIN})

    runner = await create_archive_runner(redis, STREAM, str(tmp_path), "c1", AgentOptions(block_ms=50))
    await run_until(runner, lambda: group_done(redis, STREAM))

    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.gz"))
    assert files == ["example.com/2025/05/17/10.ndjson.gz", "example.com/2025/05/17/11.ndjson.gz",
                     "other.org/2025/05/17/10.ndjson.gz"]
    assert [e["action"] for e in read_archive(tmp_path / files[0])] == ["/page/1"]
    assert all("ip" not in e for f in files for e in read_archive(tmp_path / f))
    assert await redis.xlen(DEAD_LETTER_STREAM) == 0


class FailingStore(LocalArchiveStore):
    """A local store whose appends fail while `failing` is set, as a full disk does."""

    failing = True

    def append(self, relative_path: str, data: bytes) -> None:
        if self.failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().append(relative_path, data)


async def test_write_failure_acknowledges_nothing(redis, tmp_path):
    for n in range(3):
        await redis.xadd(STREAM, encode_entry([make_event(n)]))
    store = FailingStore(tmp_path)
    consumer = StreamConsumer(redis, STREAM, ARCHIVE_GROUP, "c1", DEAD_LETTER_STREAM)
    await consumer.ensure_group()
    options = AgentOptions(block_ms=50, retry_backoff_s=0.01, max_retry_backoff_s=0.02, max_deliveries=2,
                           is_transient=archive.is_archive_transient)
    runner = AgentRunner(AgentSpec("archive", ArchiveSink(store).handle_batch), consumer, options)
    failures = archive.ARCHIVE_FAILURES.labels("OSError")
    failures_before = failures._value.get()
    stopping = asyncio.Event()
    task = asyncio.create_task(runner.run(stopping))
    try:
        async with asyncio.timeout(10):
            while failures._value.get() - failures_before < 5:
                await asyncio.sleep(0.01)

            # More failures than max_deliveries, yet nothing is acknowledged or dead-lettered.
            assert int((await redis.xpending(STREAM, ARCHIVE_GROUP))["pending"]) == 3
            assert await redis.xlen(DEAD_LETTER_STREAM) == 0
            assert list(tmp_path.rglob("*.gz")) == []

            store.failing = False
            while not await group_done(redis, STREAM):
                await asyncio.sleep(0.02)
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)

    lines = read_archive(tmp_path / "example.com/2025/05/17/10.ndjson.gz")
    assert sorted(line["action"] for line in lines) == ["/page/0", "/page/1", "/page/2"]
    assert await redis.xlen(DEAD_LETTER_STREAM) == 0


async def test_processor_runs_archive_when_configured(database_url, redis_url, redis, db, tmp_path):
    settings = ProcessorSettings(NODE_ENV="development", REDIS_URL=redis_url, DATABASE_URL=database_url,
                                 CONCURRENCY=1, METRICS_PORT=0, ARCHIVE_URL=str(tmp_path))
    services = ServiceSet()
    services.add_processor(Processor(settings), 0)
    stopping, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_services(services, stopping, ready, handle_signals=False))
    await asyncio.wait([task, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
    try:
        now_ms = int(time.time() * 1000)
        for n in range(5):
            await redis.xadd(EVENTS_STREAM, encode_entry([make_event(n, timestamp_ms=now_ms - n)]))
        await wait_until_processed(redis)
        deadline = time.monotonic() + 10
        while not await group_done(redis, EVENTS_STREAM) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)

    assert await db.fetchval("SELECT count(*) FROM raw_events") == 5
    archived = [line for path in tmp_path.rglob("*.ndjson.gz") for line in read_archive(path)]
    assert sorted(line["id"] for line in archived) == sorted(str(make_event(n).id) for n in range(5))
    assert all("ip" not in line for line in archived)
