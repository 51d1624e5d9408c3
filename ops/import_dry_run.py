"""`weir import-logs --dry-run`: what an import of access logs would write, without writing it.

The dry run parses the logs with the same format and pageview rule as the import and flags
bots with the processor's bot detector and its built-in lists (not BOT_PATTERNS_FILE). It runs
none of the collector's checks on each event. `weir import-logs --dry-run` checks that the site
exists only when REDIS_URL is set, and otherwise connects to nothing.
NOTE: the collector's checks can still reject a line that the dry run counts as a pageview,
such as a timestamp before 2000 or a URL over 4,096 characters. The import counts those as rejected.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ingest.validate import MAX_ACTION_CHARS, decode_path
from ops.errors import CommandError
from ops.importer import newest_time, shift_for
from ops.logformat import CorruptLog, MalformedLine, UnreadableLog, is_pageview, parse_line, read_log_lines, request_path
from streams.bots import BotDetector

TOP_PATHS = 10
MALFORMED_SHOWN = 20


@dataclass
class DryRunReport:
    """Counts of a dry run; `paths` counts the pageviews of each path as the import stores it."""

    lines_read: int = 0
    pageviews: int = 0
    bot_pageviews: int = 0
    not_pageviews: int = 0
    malformed: int = 0
    malformed_lines: list[str] = field(default_factory=list)
    first_time: datetime | None = None
    last_time: datetime | None = None
    paths: Counter = field(default_factory=Counter)

    def lines(self) -> list[str]:
        """Return the report as printed, one string per line."""
        text = [f"dry run, nothing written: lines read {self.lines_read}, pageviews {self.pageviews} "
                f"(bots {self.bot_pageviews}), skipped {self.not_pageviews} (not pageviews), malformed "
                f"{self.malformed}"]
        if self.first_time is not None:
            text.append(f"pageview times (UTC): {_utc(self.first_time)} to {_utc(self.last_time)}")
        if self.paths:
            text.append(f"top paths of {len(self.paths)}:")
            text.extend(f"{count:>10,}  {path}" for path, count in self.paths.most_common(TOP_PATHS))
        return text


def stored_path(path_and_query: str) -> str:
    """Return the path as the import stores it in `event_action`: without the query, decoded once."""
    return (decode_path(path_and_query.split("?", 1)[0]) or "/")[:MAX_ACTION_CHARS]


def dry_run(paths: list[Path], log_format: str = "combined", shift: timedelta = timedelta(0),
            bots: BotDetector | None = None) -> DryRunReport:
    """Parse `paths` as `weir import-logs` would and count what it would write.

    Raises ValueError when `log_format` is unknown or lacks a field the import needs. Raises
    UnreadableLog at a damaged gzip file, with the report of the lines before it as `partial`.
    """
    bots = bots or BotDetector()
    report = DryRunReport()
    try:
        _count(paths, log_format, shift, bots, report)
    except UnreadableLog as error:
        error.partial = report
        raise
    return report


def _count(paths: list[Path], log_format: str, shift: timedelta, bots: BotDetector, report: DryRunReport) -> None:
    for path in paths:
        for number, text in read_log_lines(path):
            report.lines_read += 1
            try:
                record = parse_line(text, number, log_format)
            except MalformedLine as error:
                report.malformed += 1
                report.malformed_lines.append(f"{path}:{error}")
                continue
            if not is_pageview(record):
                report.not_pageviews += 1
                continue

            report.pageviews += 1
            report.bot_pageviews += bots.is_bot(record.user_agent)
            report.paths[stored_path(request_path(record))] += 1
            moment = record.time + shift
            if report.first_time is None or moment < report.first_time:
                report.first_time = moment
            if report.last_time is None or moment > report.last_time:
                report.last_time = moment


def dry_run_command(args: argparse.Namespace) -> int:
    """Run `weir import-logs --dry-run` and print its report; malformed lines go to stderr."""
    for path in args.paths:
        if not path.is_file():
            raise CommandError(f"log file not found: {path}")
    try:
        shift = shift_for(newest_time(args.paths, args.log_format)) if args.shift_to_today else timedelta(0)
        report = dry_run(args.paths, args.log_format, shift)
    except UnreadableLog as error:
        _print_report(error.partial, shift)
        later = "" if error.path == args.paths[-1] else ", later files were not read"
        if isinstance(error, CorruptLog):
            raise CommandError(f"{error}{later}; an import would write none of its lines") from None
        raise CommandError(f"{error}; the report counts the lines before it{later}; an import would "
                           "write those and stop there") from None
    except ValueError as error:
        raise CommandError(str(error)) from None
    _print_report(report, shift)
    if report.lines_read and report.malformed == report.lines_read:
        # The same check and message as the import itself, so a dry run predicts its outcome.
        raise CommandError(f"no line was in the {args.log_format!r} log format; check the files or pass --log-format")
    return 0


def _print_report(report: DryRunReport, shift: timedelta) -> None:
    """Print the report on stdout and the malformed lines and the shift on stderr."""
    for line in report.malformed_lines[:MALFORMED_SHOWN]:
        print(f"malformed {line}", file=sys.stderr)
    if report.malformed > MALFORMED_SHOWN:
        print(f"... and {report.malformed - MALFORMED_SHOWN} more malformed lines", file=sys.stderr)
    if shift:
        print(f"timestamps shifted by {shift.days} days", file=sys.stderr)
    print("\n".join(report.lines()))


def _utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")
