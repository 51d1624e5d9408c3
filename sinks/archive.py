"""The archive sink: every event of the stream kept in gzip NDJSON files, one per site and UTC hour.

Layout, with the hour of the event time in UTC:

    {root}/{site}/{YYYY}/{MM}/{DD}/{HH}.ndjson.gz

Each line is one event as the stream carries it (`streams.event.Event` as JSON) without its
`ip` field, so the archive contains no client address. `weir replay archive` reads the files
back onto the stream with the events' ids and visitor ids.

The sink runs as its own consumer group (ARCHIVE_GROUP), so its lag never holds back the
processors, and it acknowledges an entry only after the lines are flushed (and fsynced, for a
local folder). A failed write leaves the batch pending and is retried in place, never
dead-lettered, so no entry is lost to a full disk or an unreachable bucket. While the archive
lags, the stream is not trimmed past its oldest unacknowledged entry (`streams.trim`), so
Redis memory grows with the lag.

Every flush appends one gzip member per file. Concatenated members form one valid gzip file
(RFC 1952, section 2.2), which gzip, zcat and Python's gzip module read as a whole. Some events
are written twice: those of an entry redelivered after a crash between the flush and the
acknowledgement, and those of a batch retried after only some of its files were written.
Replaying the archive skips the second copy by its event id.
"""

from __future__ import annotations

import asyncio
import fcntl
import gzip
import logging
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import orjson
from prometheus_client import Counter
from redis.asyncio import Redis

from sinks.errors import is_transient
from streams.agent import AgentOptions, AgentRunner, AgentSpec
from streams.consumer import Entry, StreamConsumer
from streams.event import Event, MalformedEntry, decode_entry
from streams.keys import ARCHIVE_GROUP, DEAD_LETTER_STREAM

logger = logging.getLogger(__name__)

ORIGIN_FIELD = b"origin"
"""Optional stream entry field naming where a replayed entry came from."""
ARCHIVE_ORIGIN = b"archive"
"""ORIGIN_FIELD value of entries that `weir replay archive` read from the archive; the sink skips
them, because their lines are in the archive already."""
COMPRESS_LEVEL = 6

EVENTS_ARCHIVED = Counter("weir_archive_events_written", "Events written to the archive")
BYTES_ARCHIVED = Counter("weir_archive_bytes_written", "Compressed bytes appended to archive files")
ARCHIVE_FAILURES = Counter("weir_archive_write_failures", "Failed appends to archive files, by error class", ["error"])


class ArchiveWriteError(Exception):
    """An append to an archive file failed; the batch stays pending and is retried in place."""

    def __init__(self, path: str, error: BaseException) -> None:
        super().__init__(f"archive write failed path={path}: {error.__class__.__name__}: {error}")
        self.path = path


class ArchiveStore(Protocol):
    """A place for archive files; `append` returns only once `data` is durable."""

    description: str

    def append(self, relative_path: str, data: bytes) -> None: ...


class LocalArchiveStore:
    """Archive files in a local folder, appended under an exclusive lock and fsynced."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)

    def append(self, relative_path: str, data: bytes) -> None:
        path = self.root / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            # The lock makes appends of several processes take turns, so a cut-back below never cuts theirs.
            fcntl.flock(fd, fcntl.LOCK_EX)
            start = os.fstat(fd).st_size
            try:
                _write_all(fd, data)
                os.fsync(fd)
            except BaseException:
                # Half a gzip member would make readers stop there and miss every later member.
                _truncate_quietly(fd, start, path)
                raise
            if start == 0:
                _fsync_directory(path.parent)
        finally:
            os.close(fd)


class FsspecArchiveStore:
    """Archive files on any fsspec filesystem (s3://, gs://, memory://, ...), opened in append mode.

    NOTE: object stores have no append: fsspec's implementations (s3fs, gcsfs) rewrite the
    object, so two processes appending to the same hour at once can lose one member. Run the
    archive on one processor replica when ARCHIVE_URL is an object store.
    """

    def __init__(self, url: str) -> None:
        import fsspec

        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        self.description = url

    def append(self, relative_path: str, data: bytes) -> None:
        path = f"{self.root}/{relative_path}"
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(path, "ab") as file:
            file.write(data)


def is_local_url(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def check_archive_url(url: str) -> str:
    """Return `url` if an archive can be opened there; raise ValueError naming what is missing.

    A path or file:// URL needs nothing more; any other scheme needs fsspec and the package
    that implements the scheme (s3fs for s3://).
    """
    if not url or is_local_url(url):
        return url
    try:
        import fsspec
    except ImportError:
        raise ValueError(f"archive URL {url!r} needs the fsspec package: pip install 'weir[archive]'") from None
    protocol = url.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as error:
        raise ValueError(f"archive URL {url!r} cannot be opened: {error}") from None
    return url


def open_archive_store(url: str) -> ArchiveStore:
    """Return the store for ARCHIVE_URL: a local folder for a path or file:// URL, else fsspec."""
    check_archive_url(url)
    if is_local_url(url):
        return LocalArchiveStore(Path(url.removeprefix("file://")))
    return FsspecArchiveStore(url)


def site_folder(site: str) -> str:
    """Return the folder name of `site`: the domain, with characters unsafe in a path percent-encoded."""
    name = quote(site, safe="-_.")
    # "." and ".." (and hidden names) would point elsewhere in the tree.
    return "%2E" + name[1:] if name.startswith(".") else name or "_"


def archive_path(site: str, timestamp_ms: int) -> str:
    """Return the file, relative to the archive root, for an event of `site` at `timestamp_ms`."""
    moment = datetime.fromtimestamp(timestamp_ms / 1000, tz=timezone.utc)
    return f"{site_folder(site)}/{moment:%Y/%m/%d/%H}.ndjson.gz"


def archive_line(event: Event) -> bytes:
    """Return the event's NDJSON line: every field of the stream's event except `ip`."""
    fields = asdict(event)
    del fields["ip"]
    return orjson.dumps(fields) + b"\n"


def encode_members(entries: Iterable[Entry]) -> tuple[dict[str, bytes], int]:
    """Return one gzip member per archive file for the events of `entries`, and the event count.

    Entries replayed from the archive and entries that cannot be decoded are left out: the
    processors dead-letter the malformed ones, and a requeued entry is archived when it returns.
    """
    lines: dict[str, list[bytes]] = defaultdict(list)
    count = 0
    for entry in entries:
        if entry.fields.get(ORIGIN_FIELD) == ARCHIVE_ORIGIN:
            continue
        try:
            events = decode_entry(entry.entry_id, entry.fields)
        except MalformedEntry as error:
            logger.warning("malformed entry not archived entry_id=%s reason=%s", entry.entry_id, error.reason,
                           extra={"entry_id": entry.entry_id})
            continue
        for event in events:
            lines[archive_path(event.site, event.timestamp_ms)].append(archive_line(event))
            count += 1
    members = {path: gzip.compress(b"".join(chunk), compresslevel=COMPRESS_LEVEL, mtime=0)
               for path, chunk in lines.items()}
    return members, count


class ArchiveSink:
    """The archive agent's batch handler: encode the batch and append it to its hour files."""

    def __init__(self, store: ArchiveStore) -> None:
        self.store = store

    async def handle_batch(self, entries: list[Entry]) -> None:
        """Append the batch's events to their files; raise ArchiveWriteError to leave it pending.

        Decoding, compression and file writes run in a worker thread, so a slow disk or bucket
        does not block the processor's event loop.
        """
        written = await asyncio.to_thread(self._write, entries)
        if written:
            logger.debug("batch archived entries=%d events=%d first_entry_id=%s", len(entries), written,
                         entries[0].entry_id)

    def _write(self, entries: list[Entry]) -> int:
        members, count = encode_members(entries)
        for path, data in sorted(members.items()):
            try:
                self.store.append(path, data)
            except Exception as error:
                ARCHIVE_FAILURES.labels(error.__class__.__name__).inc()
                raise ArchiveWriteError(path, error) from error
            BYTES_ARCHIVED.inc(len(data))
        EVENTS_ARCHIVED.inc(count)
        return count


def is_archive_transient(error: BaseException) -> bool:
    """Return True for failures that retrying the same batch can overcome: storage and connections."""
    return isinstance(error, ArchiveWriteError) or is_transient(error)


async def create_archive_runner(redis: Redis, stream: str, archive_url: str, consumer_name: str,
                                options: AgentOptions, dead_letter_stream: str = DEAD_LETTER_STREAM) -> AgentRunner:
    """Create the archive consumer group if needed and return the agent that writes the archive.

    A new group reads from the start of the stream, so it archives every entry still kept.
    Undecodable entries go to `dead_letter_stream`, the dead-letter stream of `stream`'s partition.
    """
    store = open_archive_store(archive_url)
    consumer = StreamConsumer(redis, stream, ARCHIVE_GROUP, consumer_name, dead_letter_stream)
    await consumer.ensure_group()
    logger.info("archive sink started stream=%s group=%s archive=%s", stream, ARCHIVE_GROUP, store.description)
    spec = AgentSpec("archive", ArchiveSink(store).handle_batch)
    return AgentRunner(spec, consumer, replace(options, is_transient=is_archive_transient))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _truncate_quietly(fd: int, size: int, path: Path) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError as error:
        logger.error("could not cut a failed append back path=%s size=%d error=%r; readers stop at the broken "
                     "member", path, size, error)


def _fsync_directory(folder: Path) -> None:
    """Make a new file's directory entry durable, as fsync of the file alone does not."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
