"""`weir import-logs --dry-run` reports what an import would write and writes nothing.

The same log in vhost_combined and in a custom nginx format imports end to end through the CLI
with the totals of the combined format."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ops.import_dry_run import dry_run
from tests.conftest import DATA, service_env, wait_until_processed
from tests.ops.test_replay_stream import run_weir

LOG = DATA / "access-logs" / "apache_combined.log"
NGINX_FORMAT = ('$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
                '"$http_referer" "$http_user_agent" rt=$request_time')
EXPECTED_SUMMARY = "lines read 10000, events sent 4173, skipped 5826 (not pageviews), malformed 1, rejected 0"
TOP_PATHS = [("/", 572), ("/blog/tags/puppet", 489), ("/projects/xdotool/", 219),
             ("/projects/xdotool/xdotool.xhtml", 153), ("/articles/dynamic-dns-with-dhcp/", 135)]


def as_vhost_combined(target: Path) -> Path:
    """Write the log as Debian's vhost_combined writes it: `%v:%p ` before each combined line."""
    lines = LOG.read_bytes().splitlines(keepends=True)
    target.write_bytes(b"".join(b"www.semicomplete.com:80 " + line for line in lines))
    return target


def as_nginx_format(target: Path) -> Path:
    """Write the log in NGINX_FORMAT: each combined line followed by ` rt=` and a request time."""
    lines = LOG.read_bytes().splitlines()
    target.write_bytes(b"".join(line + b" rt=0.%03d\n" % (n % 1000) for n, line in enumerate(lines)))
    return target


def test_dry_run_counts_real_log():
    report = dry_run([LOG])

    assert (report.lines_read, report.pageviews, report.bot_pageviews, report.not_pageviews, report.malformed) == (
        10000, 4173, 2396, 5826, 1)
    assert report.first_time == datetime(2015, 5, 17, 10, 5, 3, tzinfo=timezone.utc)
    assert report.last_time == datetime(2015, 5, 20, 21, 5, 59, tzinfo=timezone.utc)
    assert report.paths.most_common(5) == TOP_PATHS
    assert len(report.paths) == 835
    assert report.malformed_lines[0].startswith(f"{LOG}:line 8899: ")


@pytest.mark.parametrize("convert, log_format", [(as_vhost_combined, "vhost_combined"),
                                                 (as_nginx_format, NGINX_FORMAT)])
def test_dry_run_same_counts_in_other_formats(tmp_path, convert, log_format):
    combined = dry_run([LOG])

    report = dry_run([convert(tmp_path / "access.log")], log_format)

    assert (report.lines_read, report.pageviews, report.bot_pageviews, report.not_pageviews, report.malformed) == (
        10000, 4173, 2396, 5826, 1)
    assert report.paths == combined.paths
    assert (report.first_time, report.last_time) == (combined.first_time, combined.last_time)


async def test_dry_run_cli_writes_nothing(redis, database_url, redis_url):
    env = service_env(database_url, redis_url)
    added = await asyncio.to_thread(run_weir, env, "site", "add", "semicomplete.com", "--timezone", "UTC")
    assert added.returncode == 0, added.stderr
    keys_before = await redis.keys()

    result = await asyncio.to_thread(run_weir, env, "import-logs", "--site", "semicomplete.com", "--dry-run",
                                     "--shift-to-today", str(LOG))

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == ("dry run, nothing written: lines read 10000, pageviews 4173 (bots 2396), "
                        "skipped 5826 (not pageviews), malformed 1")
    today = datetime.now(timezone.utc).date().isoformat()
    assert lines[1].startswith("pageview times (UTC): ")
    assert lines[1].endswith(f"to {today}T21:05:59+00:00")
    assert lines[2] == "top paths of 835:"
    assert lines[3].split() == ["572", "/"]
    assert f"malformed {LOG}:line 8899" in result.stderr
    assert await redis.keys() == keys_before


async def test_dry_run_names_unknown_site(database_url, redis_url):
    env = service_env(database_url, redis_url)

    result = await asyncio.to_thread(run_weir, env, "import-logs", "--site", "nosuch.example", "--dry-run", str(LOG))

    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == ("dry run, nothing written: lines read 10000, pageviews 4173 (bots 2396), "
                                             "skipped 5826 (not pageviews), malformed 1")
    assert result.stderr.splitlines()[-1] == (
        "error: unknown site 'nosuch.example': add it first with `weir site add nosuch.example --timezone "
        "Area/City`; the report shows what an import would read")


async def test_dry_run_needs_no_redis_url(tmp_path, database_url, redis_url):
    env = service_env(database_url, redis_url)
    del env["REDIS_URL"]

    result = await asyncio.to_thread(run_weir, env, "import-logs", "--site", "semicomplete.com", "--dry-run",
                                     "--log-format", "vhost_combined", str(as_vhost_combined(tmp_path / "v.log")))

    assert result.returncode == 0, result.stderr
    assert "pageviews 4173 (bots 2396)" in result.stdout


async def test_dry_run_of_wrong_format_fails(tmp_path, database_url, redis_url):
    text = tmp_path / "notes.txt"
    text.write_text("not a log line\nnor this one\n")

    result = await asyncio.to_thread(run_weir, service_env(database_url, redis_url), "import-logs", "--site",
                                     "semicomplete.com", "--dry-run", str(text))

    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "error: no line was in the 'combined' log format; check the files or pass --log-format")
    assert "lines read 2, pageviews 0" in result.stdout


async def test_other_formats_import_end_to_end(stack, redis, db, tmp_path):
    env = service_env(stack.database_url, stack.redis_url)
    logs = {"vhost.example": ("vhost_combined", as_vhost_combined(tmp_path / "vhost.log")),
            "nginx.example": (NGINX_FORMAT, as_nginx_format(tmp_path / "nginx.log"))}

    results = {}
    for site, (log_format, path) in logs.items():
        added = await asyncio.to_thread(run_weir, env, "site", "add", site, "--timezone", "UTC")
        assert added.returncode == 0, added.stderr
        results[site] = await asyncio.to_thread(run_weir, env, "import-logs", "--site", site, "--shift-to-today",
                                                "--log-format", log_format, str(path))
    await wait_until_processed(redis)

    combined = dry_run([LOG])
    for site, result in results.items():
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == EXPECTED_SUMMARY
        rows = await db.fetch("SELECT event_action, count(*) AS n FROM raw_events WHERE site = $1 GROUP BY 1", site)
        assert Counter({r["event_action"]: r["n"] for r in rows}) == combined.paths, site
        humans = await db.fetchval("SELECT count(*) FROM raw_events WHERE site = $1 AND NOT is_bot", site)
        assert humans == 4173 - 2396, site
