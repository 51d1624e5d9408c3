"""The handlers of the `weir` subcommands; ops.cli parses the arguments and calls one of them."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Mapping
from datetime import date

import asyncpg
import orjson

from ingest.collector import create_collector_app
from ingest.settings import CollectorSettings
from ops.errors import CommandError
from ops.import_dry_run import dry_run_command
from ops.importer import LogImporter, newest_time, shift_for
from ops.logformat import CorruptLog, UnreadableLog
from ops.replay_archive import replay_archive_command
from ops.replay_events import EARLIEST_DAY, LATEST_DAY, ONLY_CHOICES, replay_events
from ops.replay_stream import replay_stream_command
from ops.services import ServiceSet, install_stop_signals, run_services
from ops.settings import (DatabaseToolSettings, ReplaySettings, SiteToolSettings, StreamToolSettings,
                          tool_redis_timeouts)
from query.api import create_api_app
from query.live import create_realtime_app
from query.live_settings import RealtimeSettings
from query.settings import ApiSettings
from sinks.guard import run_guard, schema_sql
from sinks.processor import Processor, tune_garbage_collection
from sinks.rebuild import RangeBeforeRawEvents
from sinks.settings import ProcessorSettings
from streams.bots import read_bot_patterns
from sinks.sites import InvalidSite, add_site, get_site, load_sites, publish_sites, remove_alias, validate_site
from streams.dead_letter import list_all_dead_letters, requeue_all
from streams.partitions import StreamPartitions
from streams.sites import SiteDirectory, host_name_problem, normalize_host
from weir.logs import configure_logging
from weir.redis import REDIS_ERRORS, RedisClient, connect_redis
from weir.settings import ConfigError, load_settings


async def run_collector(args: argparse.Namespace) -> int:
    settings = load_settings(CollectorSettings, PORT=args.port, HOST=args.host)
    configure_logging(settings.LOG_LEVEL)
    services = ServiceSet(reuse_port=settings.REUSE_PORT)
    services.add_app("collector", create_collector_app(settings), settings.HOST, settings.PORT)
    await run_services(services)
    return 0


async def run_processor(args: argparse.Namespace) -> int:
    settings = load_settings(ProcessorSettings, CONCURRENCY=args.concurrency, BATCH_SIZE=args.batch_size,
                             METRICS_PORT=args.metrics_port, HOST=args.host)
    configure_logging(settings.LOG_LEVEL)
    services = ServiceSet(reuse_port=settings.REUSE_PORT)
    services.add_processor(Processor(settings), settings.METRICS_PORT, settings.HOST)
    tune_garbage_collection()
    await run_services(services)
    return 0


async def run_api(args: argparse.Namespace) -> int:
    settings = load_settings(ApiSettings, PORT=args.port, HOST=args.host)
    configure_logging(settings.LOG_LEVEL)
    services = ServiceSet(reuse_port=settings.REUSE_PORT)
    services.add_app("api", create_api_app(settings), settings.HOST, settings.PORT)
    await run_services(services)
    return 0


async def run_realtime(args: argparse.Namespace) -> int:
    settings = load_settings(RealtimeSettings, PORT=args.port, HOST=args.host)
    configure_logging(settings.LOG_LEVEL)
    services = ServiceSet(reuse_port=settings.REUSE_PORT)
    services.add_app("realtime", create_realtime_app(settings), settings.HOST, settings.PORT)
    await run_services(services)
    return 0


def up_host(option: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """Return the address of `weir up`'s services: --host, else HOST, else 127.0.0.1.

    Not the services' own default of 0.0.0.0: a stack started for local use stays local
    unless the operator names another address.
    """
    return option or environ.get("HOST") or "127.0.0.1"


async def run_up(args: argparse.Namespace) -> int:
    host = up_host(args.host)
    collector = load_settings(CollectorSettings, PORT=args.collector_port, HOST=host)
    processor = load_settings(ProcessorSettings, METRICS_PORT=args.processor_metrics_port)
    api = load_settings(ApiSettings, PORT=args.api_port, HOST=host)
    realtime = load_settings(RealtimeSettings, PORT=args.realtime_port, HOST=host)
    configure_logging(collector.LOG_LEVEL)

    services = ServiceSet(reuse_port=collector.REUSE_PORT)
    services.add_processor(Processor(processor), processor.METRICS_PORT, host, "--processor-metrics-port")
    services.add_app("collector", create_collector_app(collector), collector.HOST, collector.PORT, "--collector-port")
    services.add_app("api", create_api_app(api), api.HOST, api.PORT, "--api-port")
    services.add_app("realtime", create_realtime_app(realtime), realtime.HOST, realtime.PORT, "--realtime-port")
    await run_services(services)
    return 0


async def _connect(url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(url, timeout=10)
    except (OSError, asyncpg.PostgresError) as error:
        raise CommandError(f"cannot connect to DATABASE_URL: {error}") from None


async def schema(args: argparse.Namespace) -> int:
    settings = load_settings(DatabaseToolSettings, TIMESCALEDB=args.timescaledb, RETENTION_DAYS=args.retention_days)
    if args.schema_command == "sql":
        for statement in schema_sql(settings.TIMESCALEDB == "on", settings.RETENTION_DAYS):
            print(statement + ";\n")
        return 0

    # check prints its own report, so the guard's drift warnings would only repeat it on stderr.
    configure_logging("error" if args.schema_command == "check" else "info")
    apply = args.schema_command == "apply"
    conn = await _connect(settings.DATABASE_URL)
    try:
        plan = await run_guard(conn, timescaledb=settings.TIMESCALEDB, apply=apply,
                               retention_days=settings.RETENTION_DAYS)
    except asyncpg.PostgresError as error:
        applied = "; the changes logged before the error are applied" if apply else ""
        raise CommandError(f"weir schema {args.schema_command} failed: {error.__class__.__name__}: {error}"
                           f"{applied}") from None
    finally:
        await conn.close()

    if apply:
        for change in plan.changes:
            print(f"applied  {change.table}: {change.description}")
        print(f"applied {len(plan.changes)} change(s) (layout: {plan.layout})")
        _print_drift(plan.drift)
        if plan.drift:
            print(f"{len(plan.drift)} drift item(s) need an operator to run the statements shown")
        return 0

    if plan.clean:
        print(f"schema is up to date (layout: {plan.layout})")
        return 0
    print(f"schema differs from the code: {len(plan.changes)} missing change(s), {len(plan.drift)} drift item(s) "
          f"(layout: {plan.layout})")
    for change in plan.changes:
        print(f"\nmissing  {change.table}: {change.description}\n{_as_script(change.sql)}")
    _print_drift(plan.drift)
    print("\nrun `weir schema apply` to apply the missing changes; drift needs an operator to run the statements shown")
    return 1


def _print_drift(drift: list) -> None:
    for item in drift:
        print(f"\ndrift    {item.table}: {item.description}\n{_as_script(item.fix_sql)}")


def _as_script(sql: str) -> str:
    """Indent `sql` by four spaces and end its last statement with a semicolon."""
    lines = sql.splitlines()
    if not lines[-1].lstrip().startswith("--") and not lines[-1].endswith(";"):
        lines[-1] += ";"
    return "\n".join("    " + line for line in lines)


async def site(args: argparse.Namespace) -> int:
    settings = load_settings(SiteToolSettings)
    conn = await _connect(settings.DATABASE_URL)
    redis = connect_redis(settings.REDIS_URL, cluster=settings.REDIS_CLUSTER, **tool_redis_timeouts())
    try:
        await run_guard(conn, apply=True) if not await _has_sites_table(conn) else None
        if args.site_command == "list":
            for item in await load_sites(conn):
                aliases = ", ".join(item.aliases) or "-"
                print(f"{item.domain}\t{item.timezone}\taliases: {aliases}")
            return 0
        if args.site_command == "remove-alias":
            return await _remove_alias(conn, redis, args.domain, args.alias)
        return await _add_site(conn, redis, args)
    finally:
        await conn.close()
        await redis.aclose()


async def _add_site(conn: asyncpg.Connection, redis: RedisClient, args: argparse.Namespace) -> int:
    try:
        record = validate_site(args.domain, args.timezone, args.alias)
        await add_site(conn, record)
    except InvalidSite as error:
        raise CommandError(str(error)) from None
    try:
        await publish_sites(conn, SiteDirectory(redis))
    except REDIS_ERRORS as error:
        raise CommandError(f"the site is stored, but publishing it to REDIS_URL failed: {error}; "
                           "the next processor start publishes it") from None
    stored = await get_site(conn, record.domain)
    print(f"site {stored.domain} ready (time zone {stored.timezone}, aliases: {', '.join(stored.aliases) or '-'})")
    return 0


async def _remove_alias(conn: asyncpg.Connection, redis: RedisClient, domain: str, alias: str) -> int:
    try:
        stored = await remove_alias(conn, domain, alias)
    except InvalidSite as error:
        raise CommandError(str(error)) from None
    removed = normalize_host(alias)
    try:
        await publish_sites(conn, SiteDirectory(redis))
    except REDIS_ERRORS as error:
        raise CommandError(f"alias {removed!r} is removed from the sites table, but publishing the directory to "
                           f"REDIS_URL failed: {error}; the collector accepts the alias until a processor start, "
                           "`weir site add` or `weir site remove-alias` publishes the directory again") from None
    print(f"site {stored.domain}: alias {removed} removed (aliases: {', '.join(stored.aliases) or '-'})")
    return 0


async def _has_sites_table(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass('sites') IS NOT NULL"))


async def import_logs(args: argparse.Namespace) -> int:
    if args.dry_run:
        code = dry_run_command(args)
        await _check_dry_run_site(args.site)
        return code
    settings = load_settings(StreamToolSettings)
    configure_logging("warning")
    for path in args.paths:
        check_log_file(path)

    redis = connect_redis(settings.REDIS_URL, cluster=settings.REDIS_CLUSTER, **tool_redis_timeouts())
    try:
        record = await SiteDirectory(redis).lookup(args.site)
        if record is None:
            raise CommandError(_unknown_site_message(args.site))
        shift = shift_for(newest_time(args.paths, args.log_format)) if args.shift_to_today else None
        importer = LogImporter(redis, record, log_format=args.log_format, shift=shift or shift_for(None),
                               partitions=StreamPartitions.from_settings(settings))
        summary = await importer.import_files(args.paths)
    except UnreadableLog as error:
        print(error.partial.line())
        later = "" if error.path == args.paths[-1] else ", later files were not read"
        if isinstance(error, CorruptLog):
            raise CommandError(f"{error}{later}; importing the repaired file skips the lines already written by "
                               "their ids") from None
        raise CommandError(f"{error}; the lines before it are written{later}; importing the repaired "
                           "file again skips the lines already written by their ids") from None
    except ValueError as error:
        raise CommandError(str(error)) from None
    except REDIS_ERRORS as error:
        raise CommandError(f"writing to the stream at REDIS_URL failed: {error}; re-run the import, "
                           "lines already written are skipped by their ids") from None
    finally:
        await redis.aclose()

    if shift:
        print(f"timestamps shifted by {shift.days} days", file=sys.stderr)
    print(summary.line())
    if summary.lines_read and summary.malformed == summary.lines_read:
        raise CommandError(f"no line was in the {args.log_format!r} log format; check the files or pass --log-format")
    return 0


async def _check_dry_run_site(domain: str) -> None:
    """Raise CommandError when REDIS_URL is set and no site claims `domain`, as the import would.

    Without REDIS_URL the dry run connects to nothing and checks no site. When Redis cannot be
    reached, it prints a warning that the site was not checked and the dry run still succeeds.
    """
    if not os.environ.get("REDIS_URL"):
        return
    try:
        settings = load_settings(StreamToolSettings)
    except ConfigError as error:
        print(f"warning: site {domain!r} not checked: {error}", file=sys.stderr)
        return
    redis = connect_redis(settings.REDIS_URL, cluster=settings.REDIS_CLUSTER, **tool_redis_timeouts())
    try:
        record = await SiteDirectory(redis).lookup(domain)
    except REDIS_ERRORS as error:
        print(f"warning: site {domain!r} not checked: REDIS_URL failed: {error}", file=sys.stderr)
        return
    finally:
        await redis.aclose()
    if record is None:
        raise CommandError(f"{_unknown_site_message(domain)}; the report shows what an import would read")


def _unknown_site_message(value: str) -> str:
    """Return the error for a --site that no site has: the command that adds it, or what is wrong with it."""
    name = normalize_host(value)
    problem = host_name_problem(name)
    if problem is not None:
        return f"invalid --site {value[:200]!r}: {problem}; give the domain of a site, such as example.com"
    return f"unknown site {name!r}: add it first with `weir site add {name} --timezone Area/City`"


def check_log_file(path) -> None:
    """Raise CommandError unless `path` is a regular file that can be read."""
    if not path.exists():
        raise CommandError(f"log file not found: {path}")
    if path.is_dir():
        raise CommandError(f"{path} is a directory: give the log files inside it")
    if not path.is_file():
        raise CommandError(f"{path} is not a regular file: give a plain or gzip log file")


_DEAD_LETTER_ID = re.compile(r"\d+-\d+")
MAX_DLQ_LIMIT = 1_000_000
"""Maximum number of entries `weir dlq list` prints; Redis rejects a COUNT beyond a 64-bit integer anyway."""


def _check_dead_letter_arguments(args: argparse.Namespace) -> None:
    """Reject a bad --limit or entry id before connecting, so the error names the value rather than Redis."""
    if args.dlq_command == "list" and not 1 <= args.limit <= MAX_DLQ_LIMIT:
        raise CommandError(f"invalid --limit {args.limit}: give the number of entries to print, "
                           f"from 1 to {MAX_DLQ_LIMIT}")
    if args.dlq_command == "requeue" and args.all and args.entry_ids:
        raise CommandError("pass either --all or entry ids, not both: --all requeues every dead-lettered entry")
    for entry_id in getattr(args, "entry_ids", None) or []:
        if not _DEAD_LETTER_ID.fullmatch(entry_id):
            raise CommandError(f"invalid entry id {entry_id!r}: give a dead-letter entry id as `weir dlq list` "
                               "prints it, such as 1715940000000-0")


def _chunk_days(chunk_days: int | None, first: date, last: date) -> int | None:
    """Return --chunk-days, at most the range's length: a longer chunk is the whole range, and
    adding a few million days to a date would overflow."""
    if chunk_days is None:
        return None
    return min(chunk_days, (last - first).days + 1)


async def dead_letters(args: argparse.Namespace) -> int:
    _check_dead_letter_arguments(args)
    settings = load_settings(StreamToolSettings)
    dead_letter_streams = StreamPartitions.from_settings(settings).dead_letter_streams()
    redis = connect_redis(settings.REDIS_URL, cluster=settings.REDIS_CLUSTER, **tool_redis_timeouts())
    try:
        if args.dlq_command == "list":
            letters = await list_all_dead_letters(redis, dead_letter_streams, args.limit)
            for letter in letters:
                if args.json:
                    print(orjson.dumps({"entry_id": letter.entry_id, "original_entry_id": letter.original_entry_id,
                                        "stream": letter.stream, "deliveries": letter.deliveries,
                                        "dead_lettered_at_ms": letter.dead_lettered_at_ms,
                                        "error": letter.error}).decode())
                else:
                    print(f"{letter.entry_id}\tfrom {letter.stream} {letter.original_entry_id}\t"
                          f"deliveries {letter.deliveries}\t{letter.error}")
            if args.json:
                return 0
            total = sum([await redis.xlen(stream) for stream in dead_letter_streams])
            streams = ", ".join(dead_letter_streams)
            if len(letters) < total:
                print(f"showing the oldest {len(letters)} of {total} dead-lettered entries in {streams}; "
                      f"pass --limit {total} to see them all")
            else:
                print(f"{len(letters)} dead-lettered entr{'y' if len(letters) == 1 else 'ies'} in {streams}")
            return 0

        if not args.all and not args.entry_ids:
            raise CommandError("name the entries to requeue (ENTRY_ID ...) or pass --all")
        try:
            new_ids = await requeue_all(redis, dead_letter_streams, None if args.all else args.entry_ids)
        except KeyError as error:
            raise CommandError(f"{error.args[0]}; list them with `weir dlq list`") from None
        print(f"requeued {len(new_ids)} entr{'y' if len(new_ids) == 1 else 'ies'}")
        return 0
    except REDIS_ERRORS as error:
        raise CommandError(f"Redis at REDIS_URL failed: {error}") from None
    finally:
        await redis.aclose()


def _day_argument(value: str, name: str):
    from datetime import date, datetime

    try:
        day = date.fromisoformat(value) if len(value) == 10 else datetime.fromisoformat(value).date()
    except ValueError:
        raise CommandError(f"invalid {name} {value!r}: give a day as YYYY-MM-DD") from None
    if not EARLIEST_DAY <= day <= LATEST_DAY:
        raise CommandError(f"invalid {name} {value!r}: give a day from {EARLIEST_DAY} to {LATEST_DAY}")
    return day


async def replay(args: argparse.Namespace) -> int:
    if args.replay_command == "stream":
        return await replay_stream_command(args)
    if args.replay_command == "archive":
        return await replay_archive_command(args)
    if args.replay_command != "events":
        raise CommandError(f"unknown replay source {args.replay_command!r}")
    settings = load_settings(ReplaySettings)
    configure_logging("warning")
    first, last = _day_argument(args.first, "--from"), _day_argument(args.last, "--to")
    if last < first:
        raise CommandError(f"invalid range: --to {last} is before --from {first}")
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    unknown = only - set(ONLY_CHOICES)
    if unknown or not only:
        raise CommandError(f"invalid --only {args.only!r}: use sessions, rollups or both, comma-separated")
    if args.chunk_days is not None and args.chunk_days < 1:
        raise CommandError(f"invalid --chunk-days {args.chunk_days}: give a whole number of days, 1 or more")

    domain = normalize_host(args.site)
    stopping = asyncio.Event()
    install_stop_signals(stopping)
    try:
        reports = await replay_events(settings.DATABASE_URL, domain, first, last, only=only,
                                      chunk_days=_chunk_days(args.chunk_days, first, last), bot_patterns=read_bot_patterns(settings.BOT_PATTERNS_FILE),
                                      stopping=stopping)
    except LookupError as error:
        raise CommandError(str(error.args[0])) from None
    except RangeBeforeRawEvents as error:
        raise CommandError(str(error)) from None
    except (OSError, asyncpg.PostgresError) as error:
        raise CommandError(f"rebuild failed and was rolled back: {error}") from None
    events = sum(r.events for r in reports)
    changed = sum(r.bot_flags_changed for r in reports), sum(r.session_ids_changed for r in reports)
    counts = (f"{events} events, {changed[0]} bot flags and {changed[1]} session ids changed, "
              f"{sum(r.rollup_rows_written for r in reports)} rollup rows written")
    if not reports or reports[-1].last < last:
        # A stop request ended the run between chunks, and replay_events printed where to resume.
        done = f"{first}..{reports[-1].last}" if reports else "no day"
        print(f"stopped: rebuilt {domain} {done} of {first}..{last}: {counts}")
        return 130
    print(f"rebuilt {domain} {first}..{last}: {counts}")
    return 0
