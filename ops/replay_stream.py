"""`weir replay stream`: process entries still kept in the event stream again.

Entries are read with XRANGE, one page at a time, and handed to `Processor.handle_batch`, the
code the processors' agents run. An event already stored is skipped by its id, so replaying a
range changes no number unless events of it were lost from the database. The replay never
reads through a consumer group: it neither acknowledges nor claims an entry, and the
processors' pending entries and position stay as they were.

The stream keeps entries for STREAM_KEEP_S after every group acknowledged them
(`streams.trim`); older events can be replayed from the archive (`weir replay archive`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import shlex
import signal
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone

import asyncpg

from ops.errors import CommandError
from ops.progress import Progress
from ops.settings import tool_redis_timeouts
from sinks.errors import is_transient
from sinks.processor import Processor
from sinks.settings import ProcessorSettings
from streams.consumer import Entry
from streams.event import MalformedEntry
from streams.partitions import StreamPartitions
from weir.logs import configure_logging
from weir.redis import REDIS_ERRORS, RedisClient, connect_redis
from weir.settings import load_settings

logger = logging.getLogger(__name__)

ENTRY_ID = re.compile(r"[0-9]+(?:-[0-9]+)?")
MAX_SEQUENCE = 2**64 - 1
"""Largest sequence number of a stream entry id, and largest millisecond part."""
MAX_ID_PART_DIGITS = len(str(MAX_SEQUENCE))
"""Digits of MAX_SEQUENCE: a part of an entry id with more digits, after leading zeros, exceeds it."""
MAX_SHOWN_CHARS = 60
"""Maximum characters of a rejected --from or --to value that its error message repeats."""
MAX_ATTEMPTS = 5
RETRY_BACKOFF_S = 1.0


class InvalidBound(ValueError):
    """A --from or --to value that is neither an entry id nor an ISO-8601 time."""


def parse_bound(text: str, *, end: bool = False) -> str:
    """Return the XRANGE bound for a --from or --to value.

    An entry id (`1715940000000-0`, or `1715940000000` for the whole millisecond) and the
    stream's ends `-` and `+` are taken as they are, inclusive. An ISO-8601 time becomes the
    entry id `ms-0` of that instant. As an end it is exclusive, so `--from 10:00 --to 11:00`
    and `--from 11:00 --to 12:00` do not overlap. A time without a UTC offset is UTC.
    Raises InvalidBound for an id whose parts exceed Redis's unsigned 64-bit numbers and for a
    time before 1970, which no entry id can name.
    """
    text = text.strip()
    if text in ("-", "+"):
        return text
    if ENTRY_ID.fullmatch(text):
        # Leading zeros are dropped because Redis 7.0 rejects an id of more than 127 characters. The
        # length check comes before int(), which raises ValueError for more than 4300 digits in CPython 3.11.
        entry_id = "-".join(part.lstrip("0") or "0" for part in text.split("-"))
        too_long = any(len(part) > MAX_ID_PART_DIGITS for part in entry_id.split("-"))
        if too_long or max(_id_tuple(entry_id)) > MAX_SEQUENCE:
            raise InvalidBound(f"invalid stream position {_abbreviated(text)!r}: give an entry id whose "
                               f"milliseconds and sequence number are at most {MAX_SEQUENCE}")
        return entry_id
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidBound(f"invalid stream position {text!r}: give an entry id such as 1715940000000-0 or an "
                           "ISO-8601 time such as 2026-05-17T10:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    unix_ms = int(moment.timestamp() * 1000)
    if unix_ms < 0:
        raise InvalidBound(f"invalid stream position {text!r}: give a time from 1970-01-01T00:00:00Z on, "
                           "because entry ids count milliseconds since then")
    return f"({unix_ms}-0" if end else f"{unix_ms}-0"


def check_range(start: str, end: str, first_text: str, last_text: str) -> None:
    """Raise InvalidBound when the XRANGE bounds `start` and `end` admit no entry id at all.

    `first_text` and `last_text` are the --from and --to values as given, for the message.
    """
    if end not in ("-", "+") and _bound_tuple(end, end=True) < (0, 0):
        # Redis rejects the exclusive end "(0-0" itself, so it must not get that far.
        raise InvalidBound(f"invalid --to {last_text}: no entry id is before it, so give a later --to")
    if start in ("-", "+") or end in ("-", "+"):
        return
    if _bound_tuple(start, end=False) > _bound_tuple(end, end=True):
        raise InvalidBound(f"invalid range: --from {first_text} --to {last_text} contains no entry: give a --to "
                           "after --from (a time as --to is exclusive)")


def _abbreviated(text: str) -> str:
    return text if len(text) <= MAX_SHOWN_CHARS else f"{text[:MAX_SHOWN_CHARS]}... ({len(text)} characters)"


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _bound_tuple(bound: str, *, end: bool) -> tuple[int, int]:
    """Return the first (or, for an end, the last) entry id that an XRANGE bound admits, as (ms, seq)."""
    exclusive = bound.startswith("(")
    ms, _, seq = bound.lstrip("(").partition("-")
    if seq:
        entry = (int(ms), int(seq))
    elif end:
        # Redis completes a bare millisecond with the largest sequence number as an end, with 0 as a start.
        entry = (int(ms), MAX_SEQUENCE)
    else:
        entry = (int(ms), 0)
    if not exclusive:
        return entry
    if end:
        return (entry[0], entry[1] - 1) if entry[1] > 0 else (entry[0] - 1, MAX_SEQUENCE)
    return (entry[0], entry[1] + 1) if entry[1] < MAX_SEQUENCE else (entry[0] + 1, 0)


@dataclass
class StreamReplayReport:
    """Counts of a stream replay, and the --from value that continues it (`resume_from`) after an early stop."""

    entries_read: int = 0
    events_read: int = 0
    events_inserted: int = 0
    malformed_entries: list[str] = field(default_factory=list)
    failed_entries: list[str] = field(default_factory=list)
    last_entry_id: str | None = None
    resume_from: str | None = None
    error: str | None = None

    @property
    def already_stored(self) -> int:
        return self.events_read - self.events_inserted

    @classmethod
    def combine(cls, reports: list[StreamReplayReport]) -> StreamReplayReport:
        """Return the sums of the counts of `reports`, replays of several streams."""
        total = cls()
        for report in reports:
            total.entries_read += report.entries_read
            total.events_read += report.events_read
            total.events_inserted += report.events_inserted
            total.malformed_entries += report.malformed_entries
            total.failed_entries += report.failed_entries
        return total

    def line(self) -> str:
        return (f"entries read {self.entries_read}, events read {self.events_read}, newly stored "
                f"{self.events_inserted}, already stored {self.already_stored}, malformed entries "
                f"{len(self.malformed_entries)}, failed entries {len(self.failed_entries)}")


class StreamReplay:
    """Replays one range of a stream through a started Processor, page by page."""

    def __init__(self, processor: Processor, stream: str, start: str, end: str = "+", *, page_size: int = 100,
                 progress: Progress | None = None, retry_backoff_s: float = RETRY_BACKOFF_S) -> None:
        self.processor = processor
        self.stream = stream
        self.start = start
        self.end = end
        self.page_size = page_size
        self.progress = progress
        self.retry_backoff_s = retry_backoff_s
        self.report = StreamReplayReport()

    @property
    def redis(self) -> RedisClient:
        return self.processor.redis

    async def estimate_entries(self) -> int:
        """Return the entries of the range: exact when it covers the whole stream, else an estimate.

        Redis cannot count a range without reading it, so a partial range is estimated from
        the share of the stream's time span that it covers, as if entries came at a steady rate.
        """
        info = await self.redis.xinfo_stream(self.stream)
        length = int(info["length"])
        if length == 0:
            return 0
        first = _id_tuple(_text(info["first-entry"][0]))
        last = _id_tuple(_text(info["last-entry"][0]))
        low = first if self.start == "-" else max(first, _bound_tuple(self.start, end=False))
        high = last if self.end == "+" else min(last, _bound_tuple(self.end, end=True))
        if low > high:
            return 0
        if (low == first and high == last) or first[0] == last[0]:
            return length
        return max(1, round(length * (high[0] - low[0]) / (last[0] - first[0])))

    async def oldest_kept(self) -> str | None:
        """Return the id of the oldest entry the stream still keeps, None when it is empty."""
        reply = await self.redis.xrange(self.stream, count=1)
        return _text(reply[0][0]) if reply else None

    async def ever_removed(self) -> bool | None:
        """Return whether entries were ever trimmed or deleted from the stream; None where Redis cannot tell.

        Redis 7 counts every entry ever added (`entries-added`); fewer kept means some are gone.
        """
        info = await self.redis.xinfo_stream(self.stream)
        added = info.get("entries-added", info.get(b"entries-added"))
        length = info.get("length", info.get(b"length"))
        return None if added is None or length is None else int(added) > int(length)

    async def run(self, stopping: asyncio.Event) -> StreamReplayReport:
        """Replay the range until its end, or until `stopping` is set between two pages.

        Steps: 1. read a page with XRANGE from the cursor; 2. process it, retrying transient
        failures and isolating entries that fail on their own; 3. move the cursor past the
        page. When it stops early, `report.resume_from` is the --from value that continues.
        """
        cursor = self.start
        while True:
            # Step 1
            reply = await self.redis.xrange(self.stream, min=cursor, max=self.end, count=self.page_size)
            entries = [Entry(_text(entry_id), fields) for entry_id, fields in reply]
            if not entries:
                break
            if stopping.is_set():
                self.report.resume_from = entries[0].entry_id
                break

            # Step 2
            if not await self._process_page(entries, stopping):
                self.report.resume_from = entries[0].entry_id
                break

            # Step 3
            self.report.entries_read += len(entries)
            self.report.last_entry_id = entries[-1].entry_id
            cursor = "(" + entries[-1].entry_id
            if self.progress is not None:
                self.progress.advance(len(entries))
        return self.report

    async def _process_page(self, entries: list[Entry], stopping: asyncio.Event) -> bool:
        """Process `entries`; return False when a transient failure outlasted the attempts."""
        live = list(entries)
        attempt = 0
        while live:
            try:
                counts = await self.processor.handle_batch(live)
            except MalformedEntry as error:
                # Decoding runs before any write, so nothing of the page is stored yet.
                self._record_malformed(error)
                live = [e for e in live if e.entry_id != error.entry_id]
                continue
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - transient: retried; other: entries isolated
                if not is_transient(error):
                    return await self._isolate(live, error, stopping)
                attempt += 1
                if attempt >= MAX_ATTEMPTS or stopping.is_set():
                    self.report.error = f"{error.__class__.__name__}: {error}"
                    logger.error("replay page failed stream=%s first_entry_id=%s attempts=%d error=%r; stopping",
                                 self.stream, live[0].entry_id, attempt, error)
                    return False
                delay_s = self.retry_backoff_s * 2 ** (attempt - 1)
                logger.warning("replay page failed stream=%s first_entry_id=%s attempt=%d attempts_left=%d "
                               "error=%r; retrying in %.1fs", self.stream, live[0].entry_id, attempt,
                               MAX_ATTEMPTS - attempt, error, delay_s)
                await asyncio.sleep(delay_s)
                continue
            self.report.events_read += counts.events
            self.report.events_inserted += counts.inserted
            return True
        return True

    async def _isolate(self, entries: list[Entry], error: Exception, stopping: asyncio.Event) -> bool:
        """Process each entry alone, so one entry that cannot be stored does not stop the others."""
        if len(entries) == 1:
            entry_id = entries[0].entry_id
            self.report.failed_entries.append(entry_id)
            logger.error("replay entry failed stream=%s entry_id=%s error=%r; skipped", self.stream, entry_id,
                         error, extra={"entry_id": entry_id})
            return True
        for entry in entries:
            if not await self._process_page([entry], stopping):
                return False
        return True

    def _record_malformed(self, error: MalformedEntry) -> None:
        self.report.malformed_entries.append(error.entry_id)
        logger.warning("malformed entry skipped stream=%s entry_id=%s reason=%s", self.stream, error.entry_id,
                       error.reason, extra={"entry_id": error.entry_id})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def install_stop_handlers(stopping: asyncio.Event, what: str) -> None:
    """Set `stopping` on the first SIGINT or SIGTERM; a second signal acts as it does by default."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        print(f"stopping after the current {what}; press Ctrl-C again to quit at once", file=sys.stderr, flush=True)
        stopping.set()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)


async def replay_stream_command(args: argparse.Namespace) -> int:
    """Run `weir replay stream`; exit 0 when the range was replayed, 1 on failure, 130 when stopped.

    Without --stream, every event stream of the deployment's layout (STREAM_PARTITIONS) is
    replayed in turn, each over the same range.
    """
    settings = load_settings(ProcessorSettings, program="weir replay stream", BATCH_SIZE=args.batch_size,
                             CONCURRENCY=1)
    configure_logging("warning")
    try:
        start = parse_bound(args.start)
        end = parse_bound(args.end, end=True)
        check_range(start, end, args.start, args.end)
    except InvalidBound as error:
        raise CommandError(str(error)) from None
    streams = await _existing_streams(settings, args.stream)

    processor = Processor(settings, stream=args.stream)
    try:
        await processor.start()
        replays = [StreamReplay(processor, stream, start, end, page_size=settings.BATCH_SIZE) for stream in streams]
        progress = Progress(0, "entries", label="replay stream")
        for replay in replays:
            await _warn_if_trimmed(replay)
            progress.total += await replay.estimate_entries()
            replay.progress = progress
        stopping = asyncio.Event()
        install_stop_handlers(stopping, "page")
        reports = []
        for replay in replays:
            reports.append(await replay.run(stopping))
            if reports[-1].resume_from is not None:
                break
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, *REDIS_ERRORS) as error:
        raise CommandError(f"replay failed: {error.__class__.__name__}: {error}; entries already replayed stay "
                           "stored, and replaying them again changes nothing") from None
    finally:
        await processor.close()

    progress.finish()
    total = StreamReplayReport.combine(reports)
    print(total.line())
    for entry_id in total.failed_entries:
        print(f"failed entry {entry_id}: see the error logged above", file=sys.stderr)
    if reports[-1].resume_from is None:
        return 1 if total.failed_entries else 0

    # The stream that stopped resumes from its next entry, and streams not reached yet from the start.
    commands = [_resume_command(args, streams, streams[len(reports) - 1], reports[-1].resume_from)]
    commands += [_resume_command(args, streams, stream, args.start) for stream in streams[len(reports):]]
    if reports[-1].error is not None:
        print(f"error: replay stopped: {reports[-1].error}; resume with: " + "; ".join(commands), file=sys.stderr)
        return 1
    print("stopped before the end of the range; resume with: " + "; ".join(commands))
    return 130


def _resume_command(args: argparse.Namespace, streams: list[str], stream: str, start: str) -> str:
    command = f"weir replay stream --from {shlex.quote(start)}"
    if args.end != "+":
        command += f" --to {shlex.quote(args.end)}"
    if args.stream is not None or len(streams) > 1:
        command += f" --stream {shlex.quote(stream)}"
    return command


async def _warn_if_trimmed(replay: StreamReplay) -> None:
    oldest = await replay.oldest_kept()
    if replay.start == "-" or oldest is None or _bound_tuple(replay.start, end=False) >= _id_tuple(oldest):
        return
    # A start before the oldest entry is often just "from the beginning" (--from 0), so on Redis 7,
    # which counts the entries ever added, warn only when some are gone. Older servers cannot tell.
    if await replay.ever_removed() is not False:
        print(f"entries of {replay.stream} before {oldest} are no longer kept; replay older events from the "
              "archive with `weir replay archive`", file=sys.stderr)


async def _existing_streams(settings: ProcessorSettings, stream: str | None) -> list[str]:
    """Return `stream`, or the layout's event streams that exist; raise CommandError when none does.

    Checked before Processor.start, which would create the streams with the processors' group.
    """
    candidates = [stream] if stream is not None else StreamPartitions.from_settings(settings).streams()
    try:
        redis = connect_redis(settings.REDIS_URL, cluster=settings.REDIS_CLUSTER, **tool_redis_timeouts())
    except ValueError as error:
        raise CommandError(str(error)) from None
    try:
        existing = [name for name in candidates if await redis.exists(name)]
    except REDIS_ERRORS as error:
        raise CommandError(f"cannot reach REDIS_URL: {error}") from None
    finally:
        await redis.aclose()
    if not existing:
        names = ", ".join(repr(name) for name in candidates)
        raise CommandError(f"stream {names} not found at REDIS_URL; nothing to replay")
    return existing
