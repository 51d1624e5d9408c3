"""`weir replay archive`: load archived or exported NDJSON events onto the event stream.

Input files are NDJSON, plain or gzip (detected by the magic bytes), one event object per line.
A folder is walked recursively for files named *.ndjson, *.jsonl or *.json, each optionally
ending in .gz. Paths may be local or fsspec URLs (s3://bucket/weir) when fsspec is installed.
The fields of a line decide its kind:

- An archive line, written by `sinks.archive`, has `visitor_id` and `received_ms`. It becomes
  the same `Event` again, with its id and visitor id, so loading it twice stores it once.
- Any other object is an event in the collector's payload format (`site`, `type`, `url`,
  `timestamp`, `id`, ...), exported from elsewhere. It goes through `EventBuilder` as an
  imported log line does. A line without `id` gets one derived from its text and from how
  often that text occurred before in its file, so loading the file again gives the same ids.

Events are handled in pages. Those already in raw_events are counted and left out, and the
rest go onto their visitor's partition of the stream (`streams.partitions`) in entries of
EVENTS_PER_ENTRY events for the processors to store.
Entries of archive lines carry `origin=archive`, so the archive sink does not write them twice.
Malformed lines are reported with file and line number, and the replay goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import logging
import os
import shlex
import sys
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg
import orjson
from pydantic import Field

from ingest.validate import EventBuilder, InvalidEvent, RequestContext, RequestMemo
from ops.errors import CommandError
from ops.progress import Progress
from ops.replay_stream import install_stop_handlers
from ops.settings import tool_redis_timeouts
from sinks.archive import ARCHIVE_ORIGIN, ORIGIN_FIELD
from streams.event import Event, encode_entry
from streams.keys import PROCESSOR_GROUP
from streams.partitions import StreamPartitions
from streams.sites import SiteDirectory
from streams.visitor import SaltStore
from weir.logs import configure_logging
from weir.redis import REDIS_ERRORS, RedisClient, connect_redis
from weir.settings import StreamLayoutSettings, load_settings

logger = logging.getLogger(__name__)

EVENTS_PER_ENTRY = 100
PAGE_EVENTS = 2000
"""Events checked against raw_events and queued together; a stop request waits for the page."""
MAX_TRACKED_EVENTS = 2_000_000
"""Queued event ids kept in memory (about 150 bytes each) to skip repeats across pages and to
count, after the processors ran, how many were newly stored. Past this, neither is done."""
PROBLEMS_SHOWN = 100
DEFAULT_RESUME_FILE = "weir-replay-archive.resume"
"""Resume file written in the current folder when a replay without --resume stops. Its name does
not end in .json, so a replay of the current folder does not read it as input."""
NDJSON_SUFFIXES = (".ndjson", ".jsonl", ".json")
WAIT_REPORT_INTERVAL_S = 5.0
_GZIP_MAGIC = b"\x1f\x8b"
_CHECK_STORED = """
SELECT r.id FROM raw_events r
  JOIN unnest($1::uuid[], $2::timestamptz[]) AS u(id, ts) ON r.id = u.id AND r."timestamp" = u.ts
"""


class ArchiveReplaySettings(StreamLayoutSettings):
    """Environment of `weir replay archive`: the streams it writes and the table it checks."""

    REDIS_URL: str = Field(description="Redis holding the event stream")
    DATABASE_URL: str = Field(description="PostgreSQL whose raw_events tells which events are stored already")


# --- Sources ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One input file: its name as printed (a path or URL), its size in bytes and how to open it."""

    name: str
    size: int
    filesystem: Any = None
    """The fsspec filesystem for a URL, None for a local path."""

    def open(self) -> BinaryIO:
        if self.filesystem is None:
            return open(self.name, "rb")
        return self.filesystem.open(self.name, "rb")


def _is_ndjson_name(name: str) -> bool:
    return name.removesuffix(".gz").endswith(NDJSON_SUFFIXES)


def list_sources(paths: list[str]) -> list[SourceFile]:
    """Return the files of `paths` in order, each folder's files sorted by name.

    Raises ValueError for a path that does not exist or a URL that fsspec cannot open.
    """
    sources: list[SourceFile] = []
    for text in paths:
        if "://" in text and not text.startswith("file://"):
            sources.extend(_remote_sources(text))
            continue
        path = Path(text.removeprefix("file://"))
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and _is_ndjson_name(p.name))
            sources.extend(SourceFile(str(p), p.stat().st_size) for p in files)
        elif path.is_file():
            sources.append(SourceFile(str(path), path.stat().st_size))
        else:
            raise ValueError(f"archive path not found: {text}")
    return sources


def _remote_sources(url: str) -> list[SourceFile]:
    try:
        import fsspec
    except ImportError:
        raise ValueError(f"reading {url} needs the fsspec package: pip install 'weir[archive]'") from None
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as error:
        raise ValueError(f"cannot open {url}: {error}") from None
    if fs.isdir(root):
        found = sorted(p for p in fs.find(root) if _is_ndjson_name(p.rsplit("/", 1)[-1]))
        return [SourceFile(fs.unstrip_protocol(p), fs.size(p), fs) for p in found]
    if fs.isfile(root):
        return [SourceFile(fs.unstrip_protocol(root), fs.size(root), fs)]
    raise ValueError(f"archive path not found: {url}")


class TruncatedFile(Exception):
    """A gzip file that ends inside a member or contains corrupt data, after `line_number` good lines."""

    def __init__(self, line_number: int, error: Exception) -> None:
        super().__init__(f"gzip data is truncated or corrupt after line {line_number}: {error}")
        self.line_number = line_number


def read_lines(source: SourceFile) -> Iterator[tuple[int, bytes, int]]:
    """Yield `(line_number, line, bytes_read)` for each line, `bytes_read` counted in the file as stored.

    Raises TruncatedFile after the last good line when gzip data ends early, as a file does
    whose writer crashed mid-append.
    """
    with source.open() as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        number = 0
        try:
            for number, line in enumerate(stream, start=1):
                yield number, line, raw.tell()
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:
            raise TruncatedFile(number, error) from None


# --- Lines ------------------------------------------------------------------


class MalformedArchiveLine(ValueError):
    """A line that is not an event object of either kind; the message names the problem."""


_REQUIRED_TEXT = ("id", "site", "type", "action", "visitor_id")
_OPTIONAL_TEXT = ("url", "referrer", "user_agent", "ip", "user_id")


def is_archive_line(item: dict) -> bool:
    return "visitor_id" in item and "received_ms" in item


def archived_event(item: dict) -> Event:
    """Return the Event of an archive line; raise MalformedArchiveLine naming the bad field.

    Fields that this version does not know are ignored, so archives written by a newer
    version still load.
    """
    fields: dict[str, Any] = {}
    for name in _REQUIRED_TEXT:
        value = item.get(name)
        if not isinstance(value, str) or not value:
            raise MalformedArchiveLine(f"field {name!r} must be a non-empty string, got {value!r}")
        fields[name] = value
    for name in ("timestamp_ms", "received_ms"):
        value = item.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise MalformedArchiveLine(f"field {name!r} must be an integer (unix ms), got {value!r}")
        fields[name] = value
    for name in _OPTIONAL_TEXT:
        value = item.get(name)
        if value is not None and not isinstance(value, str):
            raise MalformedArchiveLine(f"field {name!r} must be a string or null, got {value!r}")
        fields[name] = value
    props = item.get("props") or {}
    if not isinstance(props, dict):
        raise MalformedArchiveLine(f"field 'props' must be an object, got {type(props).__name__}")
    try:
        uuid.UUID(fields["id"])
    except ValueError:
        raise MalformedArchiveLine(f"field 'id' must be a UUID, got {fields['id']!r}") from None
    source = item.get("source")
    return Event(**fields, props=props, source=source if isinstance(source, str) else "collect")


# --- Replay -----------------------------------------------------------------


@dataclass
class ResumeState:
    """Position of a replay: the paths it was given, the files it finished and the line it reached."""

    paths: list[str]
    done: list[str] = field(default_factory=list)
    file: str | None = None
    line: int = 0

    @classmethod
    def load(cls, path: Path) -> ResumeState:
        """Read a resume file; raise ValueError when it is not one."""
        try:
            data = orjson.loads(path.read_bytes())
            return cls(list(data["paths"]), list(data["done"]), data["file"], int(data["line"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"invalid resume file {path}: {error}") from None

    def save(self, path: Path) -> None:
        """Write the state to `path` atomically (through a temporary file and a rename)."""
        data = {"paths": self.paths, "done": self.done, "file": self.file, "line": self.line}
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        os.replace(temporary, path)


@dataclass
class ArchiveReplayReport:
    """Counts of an archive replay; `newly_stored` is None unless the replay waited for the processors."""

    files_read: int = 0
    lines_read: int = 0
    events_read: int = 0
    already_stored: int = 0
    repeated: int = 0
    queued: int = 0
    newly_stored: int | None = None
    malformed: int = 0
    rejected: int = 0
    rejected_reasons: Counter = field(default_factory=Counter)
    last_entry_ids: dict[str, str] = field(default_factory=dict)
    """The newest entry queued on each stream."""
    stopped: bool = False
    truncated: list[str] = field(default_factory=list)
    """One message per file whose gzip data ended early or was corrupt; its earlier lines were read."""

    def line(self) -> str:
        newly = "not counted" if self.newly_stored is None else str(self.newly_stored)
        return (f"files read {self.files_read}, lines read {self.lines_read}, events read {self.events_read}, "
                f"already stored {self.already_stored}, repeated {self.repeated}, queued {self.queued}, "
                f"newly stored {newly}, malformed {self.malformed}, rejected {self.rejected}")


class ArchiveReplay:
    """Reads NDJSON sources page by page, leaves out stored events and queues the rest on the stream."""

    def __init__(self, redis: RedisClient, conn: asyncpg.Connection, *,
                 partitions: StreamPartitions = StreamPartitions(), page_events: int = PAGE_EVENTS,
                 progress: Progress | None = None, problems: Any = sys.stderr) -> None:
        self.redis = redis
        self.conn = conn
        self.partitions = partitions
        self.page_events = page_events
        self.progress = progress
        self.problems = problems
        self.builder = EventBuilder(SiteDirectory(redis), SaltStore(redis))
        self.report = ArchiveReplayReport()
        self._archived: list[Event] = []
        self._foreign: list[Event] = []
        self._memo = RequestMemo()
        self._queued: dict[bytes, int] | None = {}
        self._table_exists: bool | None = None
        self._problems_seen = 0

    async def run(self, sources: list[SourceFile], stopping: asyncio.Event, state: ResumeState) -> ResumeState:
        """Replay `sources` from `state` on, updating `state` in place, and return it.

        A stop request is honoured after the page in hand is queued. The state then names the
        file and its last line whose event is on the stream. After a full run, every file is done.
        """
        for source in sources:
            if source.name in state.done:
                continue
            skip_to = state.line if state.file == source.name else 0
            state.file, state.line = source.name, skip_to
            if not await self._replay_file(source, skip_to, stopping, state):
                self.report.stopped = True
                return state
            state.done.append(source.name)
            state.file, state.line = None, 0
            self.report.files_read += 1
            if stopping.is_set() and len(state.done) < len(sources):
                self.report.stopped = True
                return state
        return state

    async def _replay_file(self, source: SourceFile, skip_to: int, stopping: asyncio.Event,
                           state: ResumeState) -> bool:
        """Replay one file from line `skip_to + 1`; return False when stopped inside it."""
        occurrences: Counter = Counter()
        position = 0
        lines = read_lines(source)
        while True:
            try:
                number, line, bytes_read = next(lines)
            except StopIteration:
                break
            except TruncatedFile as error:
                self.report.malformed += 1
                self.report.truncated.append(f"{source.name}: {error}")
                self._problem(f"malformed {source.name}: {error}")
                break
            except OSError as error:
                raise CommandError(f"cannot read {source.name}: {error}") from None

            self._advance_progress(bytes_read - position)
            position = bytes_read
            digest = hashlib.blake2b(line.strip(), digest_size=16).hexdigest()
            occurrences[digest] += 1
            if number <= skip_to:
                continue
            self.report.lines_read += 1
            await self._read_line(source.name, number, line, f"ndjson:{digest}:{occurrences[digest]}")
            if len(self._archived) + len(self._foreign) >= self.page_events:
                await self._flush_page()
                state.line = number
                if stopping.is_set():
                    return False
        await self._flush_page()
        self._advance_progress(source.size - position)
        return True

    async def _read_line(self, name: str, number: int, line: bytes, derived_id: str) -> None:
        if not line.strip():
            return
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            self._malformed(name, number, f"invalid JSON: {error}")
            return
        if not isinstance(item, dict):
            self._malformed(name, number, f"expected a JSON object, got {type(item).__name__}")
            return

        if is_archive_line(item):
            try:
                self._archived.append(archived_event(item))
            except MalformedArchiveLine as error:
                self._malformed(name, number, str(error))
                return
        else:
            event = await self._build_foreign(name, number, item, derived_id)
            if event is None:
                return
            self._foreign.append(event)
        self.report.events_read += 1

    async def _build_foreign(self, name: str, number: int, item: dict, derived_id: str) -> Event | None:
        """Return the Event of an exported line through the collector's checks, or None when rejected."""
        if item.get("timestamp") in (None, ""):
            self._reject(name, number, "missing_timestamp",
                         "an exported event needs `timestamp`, or it would be stored again on every replay")
            return None
        if not item.get("id") and not item.get("message_id"):
            item = {**item, "id": derived_id}
        context = RequestContext(received_ms=int(time.time() * 1000), ip=None, user_agent=None, source="import",
                                 trust_timestamps=True, trust_item_ip=True)
        try:
            return await self.builder.build_one(item, context, self._memo)
        except InvalidEvent as error:
            self._reject(name, number, error.reason, str(error))
            return None

    async def _flush_page(self) -> None:
        """Leave out stored and repeated events, then queue the rest in one pipelined round trip."""
        archived, foreign = self._archived, self._foreign
        self._archived, self._foreign, self._memo = [], [], RequestMemo()
        if not archived and not foreign:
            return

        stored = await self._stored_ids(archived + foreign)
        entries: list[tuple[str, dict[bytes, bytes]]] = []
        for events, origin in ((archived, ARCHIVE_ORIGIN), (foreign, None)):
            for stream, fresh in self.partitions.route(self._fresh(events, stored)).items():
                for start in range(0, len(fresh), EVENTS_PER_ENTRY):
                    fields = encode_entry(fresh[start:start + EVENTS_PER_ENTRY])
                    if origin is not None:
                        fields[ORIGIN_FIELD] = origin
                    entries.append((stream, fields))
        if not entries:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, fields in entries:
                pipe.xadd(stream, fields)
            entry_ids = await pipe.execute()
        for (stream, _fields), entry_id in zip(entries, entry_ids):
            self.report.last_entry_ids[stream] = _text(entry_id)

    def _fresh(self, events: list[Event], stored: set[uuid.UUID]) -> list[Event]:
        """Return the events to queue, counting the stored ones and those queued already."""
        fresh = []
        page_ids: set[uuid.UUID] = set()
        for event in events:
            event_id = uuid.UUID(event.id)
            if event_id in stored:
                self.report.already_stored += 1
            elif event_id in page_ids or (self._queued is not None and event_id.bytes in self._queued):
                self.report.repeated += 1
            else:
                page_ids.add(event_id)
                fresh.append(event)
        self.report.queued += len(fresh)
        if self._queued is not None:
            self._queued.update((uuid.UUID(e.id).bytes, e.timestamp_ms) for e in fresh)
            if len(self._queued) > MAX_TRACKED_EVENTS:
                logger.warning("more than %d events queued; repeats across pages are left to the processors "
                               "and newly stored events are not counted", MAX_TRACKED_EVENTS)
                self._queued = None
        return fresh

    async def _stored_ids(self, events: list[Event]) -> set[uuid.UUID]:
        if self._table_exists is None:
            self._table_exists = bool(await self.conn.fetchval("SELECT to_regclass('raw_events') IS NOT NULL"))
        if not self._table_exists:
            return set()
        rows = await self.conn.fetch(_CHECK_STORED, [uuid.UUID(e.id) for e in events],
                                     [_utc(e.timestamp_ms) for e in events])
        return {row["id"] for row in rows}

    async def count_newly_stored(self) -> int | None:
        """Count the queued events now in raw_events; None when too many were queued to track."""
        if self._queued is None:
            return None
        if not self._queued:
            return 0
        stored = 0
        items = list(self._queued.items())
        for start in range(0, len(items), 5000):
            chunk = items[start:start + 5000]
            rows = await self.conn.fetch(_CHECK_STORED, [uuid.UUID(bytes=k) for k, _ in chunk],
                                         [_utc(ms) for _, ms in chunk])
            stored += len(rows)
        return stored

    def _advance_progress(self, count: int) -> None:
        if self.progress is not None and count > 0:
            self.progress.advance(count)

    def _malformed(self, name: str, number: int, reason: str) -> None:
        self.report.malformed += 1
        self._problem(f"malformed {name}:{number}: {reason}")

    def _reject(self, name: str, number: int, reason: str, message: str) -> None:
        self.report.rejected += 1
        self.report.rejected_reasons[reason] += 1
        self._problem(f"rejected {name}:{number}: {message}")

    def _problem(self, text: str) -> None:
        self._problems_seen += 1
        if self.problems is None or self._problems_seen > PROBLEMS_SHOWN:
            return
        print(text, file=self.problems)
        if self._problems_seen == PROBLEMS_SHOWN:
            print("further malformed and rejected lines are counted, not shown", file=self.problems)


async def wait_for_processors(redis: RedisClient, last_entry_ids: dict[str, str], stopping: asyncio.Event,
                              report_to: Any = sys.stderr) -> bool:
    """Wait until the processors' group acknowledged every entry up to `last_entry_ids[stream]` of each stream.

    Returns False at once when a stream has no processors' group, and when `stopping` is set.
    An entry the processors dead-letter counts as acknowledged.
    """
    next_report = time.monotonic() + WAIT_REPORT_INTERVAL_S
    waiting = dict(last_entry_ids)
    while waiting and not stopping.is_set():
        for stream, last_entry_id in list(waiting.items()):
            groups = {_text(g["name"]): g for g in await redis.xinfo_groups(stream)}
            group = groups.get(PROCESSOR_GROUP)
            if group is None:
                return False
            if await _acknowledged_through(redis, stream, group, last_entry_id):
                del waiting[stream]
            elif report_to is not None and time.monotonic() >= next_report:
                next_report = time.monotonic() + WAIT_REPORT_INTERVAL_S
                print(f"waiting for the processors to store the queued events (stream {stream}, group "
                      f"{PROCESSOR_GROUP}: {group.get('lag')} entries not read, {group['pending']} pending)",
                      file=report_to, flush=True)
        if waiting:
            try:
                await asyncio.wait_for(stopping.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
    return not waiting


async def _acknowledged_through(redis: RedisClient, stream: str, group: dict, last_entry_id: str) -> bool:
    if _id_tuple(_text(group["last-delivered-id"])) < _id_tuple(last_entry_id):
        return False
    pending = await redis.xpending_range(stream, PROCESSOR_GROUP, min="-", max=last_entry_id, count=1)
    return not pending


async def replay_archive_command(args: argparse.Namespace) -> int:
    """Run `weir replay archive`; exit 0 when every file was read, 1 when a gzip file was truncated, 130 when stopped."""
    settings = load_settings(ArchiveReplaySettings)
    configure_logging("warning")
    state = _initial_state(args)
    try:
        sources = list_sources(args.paths)
    except ValueError as error:
        raise CommandError(str(error)) from None

    try:
        redis = connect_redis(settings.REDIS_URL, cluster=settings.REDIS_CLUSTER, **tool_redis_timeouts())
    except ValueError as error:
        raise CommandError(str(error)) from None
    try:
        conn = await asyncpg.connect(settings.DATABASE_URL, timeout=10)
    except (OSError, asyncpg.PostgresError) as error:
        await redis.aclose()
        raise CommandError(f"cannot connect to DATABASE_URL: {error}") from None
    stopping = asyncio.Event()
    install_stop_handlers(stopping, "page")
    progress = Progress(sum(s.size for s in sources if s.name not in state.done), "bytes", label="replay archive")
    partitions = StreamPartitions.from_settings(settings)
    replay = ArchiveReplay(redis, conn, partitions=partitions, progress=progress)
    try:
        state = await replay.run(sources, stopping, state)
        report = replay.report
        progress.finish()
        if not report.stopped and report.last_entry_ids and not args.no_wait:
            if await wait_for_processors(redis, report.last_entry_ids, stopping):
                report.newly_stored = await replay.count_newly_stored()
            elif stopping.is_set():
                print("stopped waiting; the processors store the queued events when they run", file=sys.stderr)
            else:
                print(f"no processor group {PROCESSOR_GROUP} on the event streams: the queued events are stored "
                      "when `weir processor` runs", file=sys.stderr)
        elif report.queued == 0 and not report.stopped:
            report.newly_stored = 0
    except REDIS_ERRORS as error:
        raise CommandError(f"writing to the stream at REDIS_URL failed: {error}; resume with: "
                           f"{_save_resume(args, state)}") from None
    except (OSError, asyncpg.PostgresError) as error:
        raise CommandError(f"checking raw_events at DATABASE_URL failed: {error}; resume with: "
                           f"{_save_resume(args, state)}") from None
    finally:
        await conn.close()
        await redis.aclose()

    print(report.line())
    status = _finish_resume(args, state, report)
    if status == 0 and report.truncated:
        # The other files were read in full, so a rerun of the repaired file is all that is missing.
        others = f" (and {len(report.truncated) - 1} more files)" if len(report.truncated) > 1 else ""
        raise CommandError(f"{report.truncated[0]}{others}; its earlier lines were queued, and replaying the "
                           "repaired file again skips them by their ids")
    return status


def _initial_state(args: argparse.Namespace) -> ResumeState:
    if not args.resume or not Path(args.resume).exists():
        return ResumeState(list(args.paths))
    try:
        state = ResumeState.load(Path(args.resume))
    except ValueError as error:
        raise CommandError(str(error)) from None
    if state.paths != list(args.paths):
        raise CommandError(f"resume file {args.resume} was written for other paths ({' '.join(state.paths)}); "
                           "give the same paths, or remove the file to start over")
    where = f", {state.file} after line {state.line}" if state.file else ""
    print(f"resuming from {args.resume}: {len(state.done)} files done{where}", file=sys.stderr)
    return state


def _finish_resume(args: argparse.Namespace, state: ResumeState, report: ArchiveReplayReport) -> int:
    """Remove a finished run's resume file, or write a stopped run's; return the exit status."""
    if not report.stopped:
        if args.resume and Path(args.resume).exists():
            Path(args.resume).unlink()
        return 0
    command = _save_resume(args, state)
    print(f"stopped before the end; the processors store the events queued so far; resume with: {command}")
    return 130


def _save_resume(args: argparse.Namespace, state: ResumeState) -> str:
    """Write `state` to the resume file and return the command that continues from it."""
    resume_file = Path(args.resume or DEFAULT_RESUME_FILE)
    state.save(resume_file)
    return f"weir replay archive --resume {shlex.quote(str(resume_file))} {shlex.join(args.paths)}"


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _utc(unix_ms: int) -> datetime:
    return datetime.fromtimestamp(unix_ms / 1000, tz=timezone.utc)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
