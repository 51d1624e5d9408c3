"""The real access log, imported through the CLI into a running stack, gives the known totals.

Expected figures come from the log under the pageview rule (GET, status 200-399, no static
extension), a bot flag from the crawler lists (an empty or "-" user agent is a bot), a visitor
per (UTC day, IP, user agent) and sessions split by gaps over 30 minutes.
"""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import zlib
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest

from ops.importer import LogImporter
from streams.event import decode_entry
from streams.keys import EVENTS_STREAM
from streams.sites import Site, SiteDirectory
from tests.conftest import API_KEY, DATA, REPO, service_env, wait_until_processed, weir_command
from tests.ingest.conftest import stream_events

LOG = DATA / "access-logs" / "apache_combined.log"
EXPECTED_SUMMARY = "lines read 10000, events sent 4173, skipped 5826 (not pageviews), malformed 1, rejected 0"
EXPECTED_OVERVIEW = {"pageviews": 1777, "bot_pageviews": 2396, "visitors": 1005, "sessions": 1126, "events": 0}
SITE = Site("semicomplete.com", "UTC", ("www.semicomplete.com",))


def run_weir(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(weir_command(*args), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


async def fetch_overview(api_url: str, site: str) -> dict:
    today = datetime.now(timezone.utc).date()
    query = {"site": site, "from": str(today - timedelta(days=3)), "to": str(today)}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        async with http.get(f"{api_url}/api/overview", params=query) as response:
            assert response.status == 200, await response.text()
            return await response.json()


async def import_log(env: dict) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(run_weir, env, "import-logs", "--site", "semicomplete.com", "--shift-to-today",
                                   str(LOG))


@pytest.fixture
async def site_env(stack):
    env = service_env(stack.database_url, stack.redis_url)
    added = await asyncio.to_thread(run_weir, env, "site", "add", "semicomplete.com", "--timezone", "UTC",
                                    "--alias", "www.semicomplete.com")
    assert added.returncode == 0, added.stderr
    return env


async def test_import_real_log_gives_known_totals(stack, site_env, redis, db):
    result = await import_log(site_env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == EXPECTED_SUMMARY
    assert "line 8899" in result.stderr
    await wait_until_processed(redis)
    overview = await fetch_overview(stack.api_url, "semicomplete.com")
    assert {k: overview[k] for k in EXPECTED_OVERVIEW} == EXPECTED_OVERVIEW
    assert overview["pageviews"] + overview["bot_pageviews"] == 4173
    assert overview["freshness"]["stale"] is False
    assert await breakdown(db, "medium") == {"direct": 539, "feed": 7, "referral": 148, "search": 430, "social": 2}
    assert await breakdown(db, '"orgType"') == {"business": 15, "education": 77, "government": 7, "hosting": 207,
                                               "isp": 730, "unknown": 90}
    assert await derived_totals(db) == {"pageviews": 1777, "bot_pageviews": 2396, "sessions": 1126, "visitors": 1005,
                                        "hourly_pageviews": 1777, "fingerprints": 1126, "fingerprint_pageviews": 1777}


async def breakdown(db, column: str) -> dict:
    """Human sessions per value of a fingerprint column, checked against the daily rollup of the same."""
    rows = await db.fetch(f"SELECT {column} AS value, count(*) AS n FROM session_fingerprints WHERE NOT is_bot "
                          "GROUP BY 1")
    key = column.strip('"')
    rolled = await db.fetch("SELECT dimension_value, sum(value) AS n FROM daily_metrics WHERE metric_name = 'sessions' "
                            "AND dimension_key = $1 GROUP BY 1 HAVING sum(value) <> 0", key)
    assert {r["dimension_value"]: r["n"] for r in rolled} == {r["value"] or "": r["n"] for r in rows}
    return {r["value"]: r["n"] for r in rows}


async def derived_totals(db) -> dict:
    """Totals read from the rollups and fingerprints, which must equal those counted from raw_events."""
    daily = {r["metric_name"]: r["total"] for r in await db.fetch(
        "SELECT metric_name, sum(value) AS total FROM daily_metrics WHERE dimension_key IS NULL GROUP BY 1")}
    hourly = await db.fetchval("SELECT sum(value) FROM aggregated_metrics WHERE metric_name = 'pageviews' "
                               "AND dimension_key IS NULL")
    sessions = await db.fetchrow("SELECT count(*) AS n, sum(pageviews) AS pv FROM session_fingerprints WHERE NOT is_bot")
    return {"pageviews": daily["pageviews"], "bot_pageviews": daily["bot_pageviews"], "sessions": daily["sessions"],
            "visitors": daily["visitors"], "hourly_pageviews": hourly, "fingerprints": sessions["n"],
            "fingerprint_pageviews": sessions["pv"]}


async def test_import_twice_changes_no_number(stack, site_env, redis, db):
    first = await import_log(site_env)
    await wait_until_processed(redis)
    before = await fetch_overview(stack.api_url, "semicomplete.com")

    second = await import_log(site_env)
    await wait_until_processed(redis)
    after = await fetch_overview(stack.api_url, "semicomplete.com")

    assert first.returncode == second.returncode == 0
    assert {k: after[k] for k in EXPECTED_OVERVIEW} == {k: before[k] for k in EXPECTED_OVERVIEW} == EXPECTED_OVERVIEW
    assert await db.fetchval("SELECT count(*) FROM raw_events") == 4173
    assert (await derived_totals(db))["sessions"] == 1126


async def test_import_unknown_site_exits_with_one_line(stack):
    env = service_env(stack.database_url, stack.redis_url)
    result = await asyncio.to_thread(run_weir, env, "import-logs", "--site", "nosuch.example", str(LOG))

    assert result.returncode == 1
    assert result.stderr.strip() == ("error: unknown site 'nosuch.example': add it first with "
                                     "`weir site add nosuch.example --timezone Area/City`")


@pytest.mark.parametrize(("site", "message"), [
    ("mailto:x@example.com", "error: invalid --site 'mailto:x@example.com': it contains ':' '@', but a host name has "
                             "only ASCII letters, digits, hyphens and dots; give the domain of a site, such as "
                             "example.com"),
    ("https://NoSuch.Example/shop", "error: unknown site 'nosuch.example': add it first with "
                                    "`weir site add nosuch.example --timezone Area/City`"),
])
async def test_import_unknown_site_hint_fits_value(database_url, redis_url, site, message):
    env = service_env(database_url, redis_url)
    result = await asyncio.to_thread(run_weir, env, "import-logs", "--site", site, str(LOG))

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == message + "\n"


async def test_import_missing_file_exits_with_one_line(stack, site_env):
    result = await asyncio.to_thread(run_weir, site_env, "import-logs", "--site", "semicomplete.com", "/nonexistent.log")

    assert result.returncode == 1
    assert result.stderr.strip() == "error: log file not found: /nonexistent.log"


async def test_import_long_user_agent_truncated(redis, tmp_path):
    await SiteDirectory(redis).publish([SITE])
    user_agent = "Mozilla/5.0 " + "a" * 100_000
    log = tmp_path / "access.log"
    log.write_text(f'203.0.113.7 - - [05/Dec/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 512 "-" "{user_agent}"\n')

    summary = await LogImporter(redis, SITE, progress=None).import_files([log])

    assert summary.events_sent == 1
    [event] = await stream_events(redis)
    assert event.user_agent == user_agent[:2048]
    assert len(event.user_agent) == 2048


def truncated_gzip(tmp_path):
    """Write the sample log as gzip that ends inside line 6281, as a copy cut short does.

    The data is flushed without the end-of-stream marker rather than cut at a byte count, so
    where it ends does not depend on the zlib version.
    """
    lines = LOG.read_bytes().split(b"\n")
    head = b"\n".join(lines[:6280]) + b"\n" + lines[6280][:40]
    compressor = zlib.compressobj(wbits=31)
    path = tmp_path / "access.log.gz"
    path.write_bytes(compressor.compress(head) + compressor.flush(zlib.Z_SYNC_FLUSH))
    return path


async def test_corrupt_gzip_imports_nothing(database_url, redis_url, redis, tmp_path):
    env = service_env(database_url, redis_url)
    added = await asyncio.to_thread(run_weir, env, "site", "add", "semicomplete.com", "--timezone", "UTC")
    assert added.returncode == 0, added.stderr
    data = bytearray(gzip.compress(LOG.read_bytes(), mtime=0))
    # Damaged bytes in the middle decode to garbled lines before gzip's CRC at the end finds them.
    for index in range(len(data) // 2, len(data) // 2 + 50):
        data[index] ^= 0xFF
    path = tmp_path / "corrupt.log.gz"
    path.write_bytes(bytes(data))

    result = await asyncio.to_thread(run_weir, env, "import-logs", "--site", "semicomplete.com", str(path))

    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "lines read 0, events sent 0, skipped 0 (not pageviews), malformed 0, rejected 0"]
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith(f"error: {path} is corrupt (")
    assert error.endswith("), so none of its lines were read: lines decoded before the damage may be garbled; "
                          "importing the repaired file skips the lines already written by their ids")
    assert await redis.xlen(EVENTS_STREAM) == 0


async def test_truncated_gzip_imports_lines_before(database_url, redis_url, redis, tmp_path):
    env = service_env(database_url, redis_url)
    added = await asyncio.to_thread(run_weir, env, "site", "add", "semicomplete.com", "--timezone", "UTC")
    assert added.returncode == 0, added.stderr
    path = truncated_gzip(tmp_path)

    result = await asyncio.to_thread(run_weir, env, "import-logs", "--site", "semicomplete.com", str(path))

    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "lines read 6280, events sent 2828, skipped 3452 (not pageviews), malformed 0, rejected 0"]
    assert result.stderr.splitlines() == [
        f"error: {path} is truncated or corrupt at line 6281 (Compressed file ended before the end-of-stream "
        "marker was reached); the lines before it are written; importing the repaired file again skips the "
        "lines already written by their ids"]
    written = [event for entry_id, fields in await redis.xrange(EVENTS_STREAM)
               for event in decode_entry(entry_id.decode(), fields)]
    assert len(written) == len({event.id for event in written}) == 2828


async def test_truncated_gzip_dry_run_counts_before(database_url, redis_url, tmp_path):
    path = truncated_gzip(tmp_path)

    result = await asyncio.to_thread(run_weir, service_env(database_url, redis_url), "import-logs", "--site",
                                     "semicomplete.com", "--dry-run", str(path), str(LOG))

    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == ("dry run, nothing written: lines read 6280, pageviews 2828 "
                                             "(bots 1680), skipped 3452 (not pageviews), malformed 0")
    assert result.stderr.splitlines() == [
        f"error: {path} is truncated or corrupt at line 6281 (Compressed file ended before the end-of-stream "
        "marker was reached); the report counts the lines before it, later files were not read; an import "
        "would write those and stop there"]
