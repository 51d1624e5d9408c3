"""The `weir` command: run services and operate a deployment."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from ops.errors import CommandError
from streams.keys import EVENTS_STREAM
from weir.settings import ConfigError

logger = logging.getLogger("weir")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weir",
        description="Weir: self-hosted web and product analytics. Settings come from the environment "
                    "(NODE_ENV, REDIS_URL, DATABASE_URL, API_KEYS, ...); options given here win over them.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    collector = commands.add_parser("collector", help="run the collector (POST /collect) on PORT, default 4001")
    collector.add_argument("--port", type=int, help="TCP port to listen on (sets PORT)")
    collector.add_argument("--host", help="address to listen on (sets HOST, default 0.0.0.0)")

    processor = commands.add_parser("processor", help="run a processor: stream to enrichment, sessions and sinks")
    processor.add_argument("--concurrency", type=int, help="agents in this process (sets CONCURRENCY, default 5)")
    processor.add_argument("--batch-size", type=int, help="stream entries per batch (sets BATCH_SIZE, default 100)")
    processor.add_argument("--metrics-port", type=int,
                           help="side port for /health and /metrics (sets METRICS_PORT, default 4010; 0 turns it off)")
    processor.add_argument("--host", help="address of the side port (sets HOST, default 0.0.0.0)")

    api = commands.add_parser("api", help="run the query API and dashboard on PORT, default 4002")
    api.add_argument("--port", type=int, help="TCP port to listen on (sets PORT)")
    api.add_argument("--host", help="address to listen on (sets HOST, default 0.0.0.0)")

    realtime = commands.add_parser("realtime", help="run the live feed (SSE and WebSocket) on PORT, default 4003")
    realtime.add_argument("--port", type=int, help="TCP port to listen on (sets PORT)")
    realtime.add_argument("--host", help="address to listen on (sets HOST, default 0.0.0.0)")

    up = commands.add_parser("up", help="run collector, processor, API and live feed in one process, for local use")
    up.add_argument("--collector-port", type=int, default=4001, help="collector port (default 4001)")
    up.add_argument("--api-port", type=int, default=4002, help="API port (default 4002)")
    up.add_argument("--realtime-port", type=int, default=4003, help="live feed port (default 4003)")
    up.add_argument("--processor-metrics-port", type=int, default=4010,
                    help="processor /health and /metrics port (default 4010; 0 turns it off)")
    up.add_argument("--host", help="address the services listen on (default: HOST, else 127.0.0.1)")

    schema = commands.add_parser("schema", help="compare, print or apply the schema the code needs")
    schema_commands = schema.add_subparsers(dest="schema_command", required=True, metavar="ACTION")
    for name, text in (("check", "print the difference between code and database; exit 1 on drift"),
                       ("apply", "apply the additive changes (create table, add column, create index)"),
                       ("sql", "print the DDL of the whole schema for review")):
        sub = schema_commands.add_parser(name, help=text)
        sub.add_argument("--timescaledb", choices=["auto", "on", "off"],
                         help="use TimescaleDB hypertables (sets TIMESCALEDB, default auto)")
        sub.add_argument("--retention-days", type=int, metavar="DAYS",
                         help="days of raw_events the retention policy keeps (sets RETENTION_DAYS, default 90)")

    site = commands.add_parser("site", help="add, list or change the sites Weir collects for")
    site_commands = site.add_subparsers(dest="site_command", required=True, metavar="ACTION")
    site_add = site_commands.add_parser("add", help="add a site, or update its time zone and aliases")
    site_add.add_argument("domain", help="the site's domain, e.g. example.com")
    site_add.add_argument("--timezone", required=True, help="IANA time zone reports use, e.g. Europe/Berlin or UTC")
    site_add.add_argument("--alias", action="append", default=[], metavar="HOST",
                          help="another host name of the same site, e.g. www.example.com; repeatable")
    site_commands.add_parser("list", help="list the sites")
    site_remove_alias = site_commands.add_parser(
        "remove-alias", help="remove an alias from a site, so the collector no longer accepts events for it")
    site_remove_alias.add_argument("domain", help="the site's domain, e.g. example.com")
    site_remove_alias.add_argument("alias", help="the alias to remove, e.g. www.example.com")

    dlq = commands.add_parser("dlq", help="inspect and requeue entries parked in the dead-letter stream")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    dlq_list = dlq_commands.add_parser("list", help="print dead-lettered entries with their errors, oldest first")
    dlq_list.add_argument("--limit", type=int, default=100, help="most entries to print (default 100)")
    dlq_list.add_argument("--json", action="store_true", help="print one JSON object per line")
    dlq_requeue = dlq_commands.add_parser("requeue", help="move entries back to the event stream to be processed again")
    dlq_requeue.add_argument("entry_ids", nargs="*", metavar="ENTRY_ID", help="dead-letter entry ids to requeue")
    dlq_requeue.add_argument("--all", action="store_true", help="requeue every dead-lettered entry")

    replay = commands.add_parser("replay", help="process stored events again: rebuild derived tables or reload events")
    replay_commands = replay.add_subparsers(dest="replay_command", required=True, metavar="SOURCE")
    replay_events = replay_commands.add_parser(
        "events", help="rebuild sessions and rollups of a site for a range of days from raw_events")
    replay_events.add_argument("--site", required=True,
                               help="domain of the site to rebuild; a URL such as https://example.com/ counts "
                                    "as its host")
    replay_events.add_argument("--from", dest="first", required=True, metavar="DAY",
                               help="first local day to rebuild (YYYY-MM-DD, or an ISO-8601 time whose day is taken)")
    replay_events.add_argument("--to", dest="last", required=True, metavar="DAY",
                               help="last local day to rebuild (YYYY-MM-DD, or an ISO-8601 time whose day is taken)")
    replay_events.add_argument("--only", default="sessions,rollups",
                               help="comma-separated parts to rebuild: sessions (session ids, bot flags, fingerprints, "
                                    "and the rollups, which count them), rollups (aggregated_metrics, daily_metrics, "
                                    "monthly_metrics, daily_visitors) alone; default both")
    replay_events.add_argument("--chunk-days", type=int, default=None, metavar="N",
                               help="commit every N days instead of the whole range at once (default: one commit)")

    replay_stream = replay_commands.add_parser(
        "stream", help="process entries still kept in the event stream again, outside the consumer group")
    replay_stream.add_argument("--from", dest="start", required=True, metavar="ID|TIME",
                               help="first entry: an entry id (inclusive), an ISO-8601 time (UTC when it has no "
                                    "offset) or - for the oldest entry kept")
    replay_stream.add_argument("--to", dest="end", default="+", metavar="ID|TIME",
                               help="last entry: an entry id (inclusive) or an ISO-8601 time (exclusive); "
                                    "default the newest entry")
    replay_stream.add_argument("--stream", help=f"stream to read (default: every event stream of the deployment, "
                                                f"which is {EVENTS_STREAM} unless STREAM_PARTITIONS or "
                                                "REDIS_CLUSTER is set)")
    replay_stream.add_argument("--batch-size", type=int, metavar="ENTRIES",
                               help="entries read and processed per page (sets BATCH_SIZE, default 100)")
    replay_archive = replay_commands.add_parser(
        "archive", help="load archive files or exported NDJSON events onto the event stream")
    replay_archive.add_argument("paths", nargs="+", metavar="PATH",
                                help="NDJSON files (plain or gzip) or folders, walked recursively; local paths "
                                     "or fsspec URLs such as s3://bucket/weir")
    replay_archive.add_argument("--resume", metavar="FILE",
                                help="resume file: continue where the run that wrote it stopped, and update it "
                                     "when this run stops (default when stopping: weir-replay-archive.resume)")
    replay_archive.add_argument("--no-wait", action="store_true",
                                help="return once the events are queued, without waiting for the processors "
                                     "to store them")

    imports = commands.add_parser("import-logs", help="import Apache/nginx access logs (plain or gzip) as pageviews")
    imports.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="log files to read, in order")
    imports.add_argument("--site", required=True, help="domain of the site the logs belong to")
    imports.add_argument("--shift-to-today", action="store_true",
                         help="move every timestamp by whole days so the newest line falls on today's UTC date")
    imports.add_argument("--log-format", default="combined",
                         help="combined (default), common, vhost_combined, or a log format string in nginx "
                              "($remote_addr ...) or Apache (%%h %%t ...) syntax")
    imports.add_argument("--dry-run", action="store_true",
                         help="read the logs and report what would be imported (lines, pageviews, skipped, "
                              "malformed, time range, top paths) without writing anything")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = _run(_dispatch(args)) or 0
        sys.stdout.flush()  # inside the try, so that a reader that went away is handled below
        return code
    except BrokenPipeError:
        # The reader of stdout closed it (`weir schema sql | head`). Point stdout at /dev/null so
        # the flush at exit cannot fail again, and exit as a program killed by SIGPIPE would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.code
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run(coroutine):
    """Run on uvloop where it is installed: it serves HTTP and Redis noticeably faster."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


async def _dispatch(args: argparse.Namespace) -> int:
    from ops import commands

    handler = {
        "collector": commands.run_collector,
        "processor": commands.run_processor,
        "api": commands.run_api,
        "realtime": commands.run_realtime,
        "up": commands.run_up,
        "schema": commands.schema,
        "site": commands.site,
        "import-logs": commands.import_logs,
        "dlq": commands.dead_letters,
        "replay": commands.replay,
    }[args.command]
    return await handler(args)


if __name__ == "__main__":
    sys.exit(main())
