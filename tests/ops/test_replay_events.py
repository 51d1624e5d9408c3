"""`weir replay events` rebuilds derived tables from raw_events: idempotent, repairs gaps, and
applies a new bot list everywhere."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from datetime import date, datetime, timedelta, timezone

import pytest

from ops.replay_events import replay_events
from sinks.sessions import SITE_LOCK_CLASS
from tests.conftest import REPO, wait_until_processed, weir_command
from tests.ops.test_import_logs import import_log, run_weir, service_env
from tests.sinks.test_derived import DERIVED_SNAPSHOT, snapshot

SITE = "semicomplete.com"
BOTH = {"sessions", "rollups"}


@pytest.fixture
async def imported(stack, redis):
    env = service_env(stack.database_url, stack.redis_url)
    added = await asyncio.to_thread(run_weir, env, "site", "add", SITE, "--timezone", "UTC", "--alias",
                                    "www.semicomplete.com")
    assert added.returncode == 0, added.stderr
    assert (await import_log(env)).returncode == 0
    await wait_until_processed(redis)
    return stack


def log_days():
    today = datetime.now(timezone.utc).date()
    return today - timedelta(days=3), today


async def test_replay_twice_changes_nothing(imported, db):
    before = await snapshot(db)
    first, last = log_days()

    await replay_events(imported.database_url, SITE, first, last, only=BOTH, progress=None)
    once = await snapshot(db)
    await replay_events(imported.database_url, SITE, first, last, only=BOTH, chunk_days=1, progress=None)

    assert once == before
    assert await snapshot(db) == before


async def test_replay_fills_a_gap_in_derived_tables(imported, db):
    before = await snapshot(db)
    first, last = log_days()
    gap = first + timedelta(days=1)
    await db.execute("DELETE FROM session_fingerprints WHERE started_at >= $1 AND started_at < $2",
                     datetime.combine(gap, datetime.min.time(), timezone.utc),
                     datetime.combine(gap + timedelta(days=1), datetime.min.time(), timezone.utc))
    await db.execute("DELETE FROM daily_metrics WHERE date = $1", gap)
    await db.execute("DELETE FROM aggregated_metrics")
    assert await snapshot(db) != before

    reports = await replay_events(imported.database_url, SITE, first, last, only=BOTH, progress=None)

    assert await snapshot(db) == before
    assert reports[0].events == 4173


async def test_new_bot_pattern_moves_visits_to_bots(imported, db):
    agent = await db.fetchval("SELECT user_agent FROM raw_events WHERE NOT is_bot GROUP BY 1 "
                              "ORDER BY count(*) DESC, 1 LIMIT 1")
    moved = await db.fetchrow("SELECT count(*) AS pageviews, count(DISTINCT visitor_id) AS visitors FROM raw_events "
                              "WHERE user_agent = $1", agent)
    before = await totals(db)
    first, last = log_days()

    await replay_events(imported.database_url, SITE, first, last, only=BOTH, bot_patterns=[_exact(agent)],
                        progress=None)

    after = await totals(db)
    assert after["pageviews"] == before["pageviews"] - moved["pageviews"]
    assert after["bot_pageviews"] == before["bot_pageviews"] + moved["pageviews"]
    assert after["visitors"] == before["visitors"] - moved["visitors"]
    assert after["raw_human"] == after["pageviews"]
    assert after["fingerprint_sessions"] == after["sessions"] == after["raw_sessions"]
    assert after["fingerprint_pageviews"] == after["pageviews"]
    assert after["rows"] == before["rows"] == 4173


def _exact(text: str) -> str:
    import re
    return "^" + re.escape(text) + "$"


async def totals(db) -> dict:
    daily = {r["metric_name"]: int(r["total"]) for r in await db.fetch(
        "SELECT metric_name, sum(value) AS total FROM daily_metrics WHERE dimension_key IS NULL GROUP BY 1")}
    row = await db.fetchrow("""
        SELECT (SELECT count(*) FROM raw_events) AS rows,
               (SELECT count(*) FROM raw_events WHERE NOT is_bot) AS raw_human,
               (SELECT count(DISTINCT session_id) FROM raw_events WHERE NOT is_bot) AS raw_sessions,
               (SELECT count(*) FROM session_fingerprints WHERE NOT is_bot) AS fingerprint_sessions,
               (SELECT coalesce(sum(pageviews), 0) FROM session_fingerprints WHERE NOT is_bot) AS fingerprint_pageviews,
               (SELECT count(*) FROM daily_visitors) AS visitor_days""")
    return {"pageviews": daily["pageviews"], "bot_pageviews": daily["bot_pageviews"], "visitors": daily["visitors"],
            "sessions": daily["sessions"], **dict(row)}


async def test_cli_replay_reports_changes_and_rejects_bad_input(imported, tmp_path):
    first, last = log_days()
    env = service_env(imported.database_url, imported.redis_url)
    patterns = tmp_path / "bots.txt"
    patterns.write_text("# extra crawler\n^Wget/\n")
    env["BOT_PATTERNS_FILE"] = str(patterns)

    done = await asyncio.to_thread(run_weir, env, "replay", "events", "--site", SITE, "--from", str(first),
                                   "--to", str(last))
    unknown = await asyncio.to_thread(run_weir, env, "replay", "events", "--site", "nosuch.example", "--from",
                                      str(first), "--to", str(last))
    reversed_range = await asyncio.to_thread(run_weir, env, "replay", "events", "--site", SITE, "--from", str(last),
                                             "--to", str(first))
    bad_only = await asyncio.to_thread(run_weir, env, "replay", "events", "--site", SITE, "--from", str(first),
                                       "--to", str(last), "--only", "everything")

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"rebuilt {SITE} {first}..{last}: 4173 events, 0 bot flags and 0 session ids changed")
    assert "chunk 1/1" in done.stderr and "ETA" in done.stderr
    assert (unknown.returncode, unknown.stderr.strip()) == (
        1, "error: unknown site 'nosuch.example': list sites with `weir site list`")
    assert (reversed_range.returncode, reversed_range.stderr.strip()) == (
        1, f"error: invalid range: --to {first} is before --from {last}")
    assert bad_only.returncode == 1
    assert bad_only.stderr.strip() == "error: invalid --only 'everything': use sessions, rollups or both, comma-separated"


async def test_sessions_only_replay_moves_rollups_with_the_sessions(imported, db):
    agent = await db.fetchval("SELECT user_agent FROM raw_events WHERE NOT is_bot GROUP BY 1 "
                              "ORDER BY count(*) DESC, 1 LIMIT 1")
    moved = await db.fetchval("SELECT count(*) FROM raw_events WHERE user_agent = $1", agent)
    before = await totals(db)
    first, last = log_days()

    reports = await replay_events(imported.database_url, SITE, first, last, only={"sessions"},
                                  bot_patterns=[_exact(agent)], progress=None)

    after = await totals(db)
    assert "daily_metrics" in reports[0].tables
    assert after["pageviews"] == after["raw_human"] == before["pageviews"] - moved
    assert after["bot_pageviews"] == before["bot_pageviews"] + moved
    assert after["fingerprint_sessions"] == after["sessions"] == after["raw_sessions"]


async def test_cli_site_url_names_its_host(database_url, redis_url):
    env = service_env(database_url, redis_url)
    added = await asyncio.to_thread(run_weir, env, "site", "add", "example.com", "--timezone", "UTC")

    rebuilt = await asyncio.to_thread(run_weir, env, "replay", "events", "--site",
                                      "https://Example.COM\\@nosuch.example/", "--from", "2026-01-01", "--to", "2026-01-02")
    unknown = await asyncio.to_thread(run_weir, env, "replay", "events", "--site", "https://NoSuch.Example/x",
                                      "--from", "2026-01-01", "--to", "2026-01-02")

    assert added.returncode == 0, added.stderr
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout == ("rebuilt example.com 2026-01-01..2026-01-02: 0 events, 0 bot flags and 0 session ids "
                              "changed, 0 rollup rows written\n")
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr == "error: unknown site 'nosuch.example': list sites with `weir site list`\n"


@pytest.mark.parametrize("first, last, message", [
    ("0001-01-01", "2026-12-31", "invalid --from '0001-01-01': give a day from 1999-12-31 to 9999-10-31"),
    ("2026-01-01", "9999-12-31", "invalid --to '9999-12-31': give a day from 1999-12-31 to 9999-10-31"),
    ("1999-12-30", "2026-12-31", "invalid --from '1999-12-30': give a day from 1999-12-31 to 9999-10-31"),
])
async def test_cli_rejects_days_out_of_range(database_url, redis_url, first, last, message):
    env = service_env(database_url, redis_url)

    result = await asyncio.to_thread(run_weir, env, "replay", "events", "--site", SITE, "--from", first, "--to", last)

    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"error: {message}"]


@pytest.mark.parametrize("timezone_name", ["UTC", "Pacific/Kiritimati", "Etc/GMT+12"])
async def test_cli_replays_accepted_day_limits(database_url, redis_url, timezone_name):
    env = service_env(database_url, redis_url)
    added = await asyncio.to_thread(run_weir, env, "site", "add", SITE, "--timezone", timezone_name)
    assert added.returncode == 0, added.stderr

    result = await asyncio.to_thread(run_weir, env, "replay", "events", "--site", SITE, "--from", "1999-12-31",
                                     "--to", "9999-10-31")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"rebuilt {SITE} 1999-12-31..9999-10-31: 0 events, 0 bot flags and 0 "
                                          "session ids changed, 0 rollup rows written"]


@pytest.mark.parametrize("chunk_days", ["3000000", "99999999999999999999"])
async def test_cli_chunk_longer_than_range(database_url, redis_url, chunk_days):
    env = service_env(database_url, redis_url)
    added = await asyncio.to_thread(run_weir, env, "site", "add", SITE, "--timezone", "UTC")
    assert added.returncode == 0, added.stderr

    result = await asyncio.to_thread(run_weir, env, "replay", "events", "--site", SITE, "--from", "2026-12-01",
                                     "--to", "2026-12-06", "--chunk-days", chunk_days)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (f"rebuilt {SITE} 2026-12-01..2026-12-06: 0 events, 0 bot flags and 0 "
                                              "session ids changed, 0 rollup rows written")


async def test_cli_interrupted_replay_exits_130(database_url, redis_url, tmp_path):
    env = service_env(database_url, redis_url)
    added = await asyncio.to_thread(run_weir, env, "site", "add", SITE, "--timezone", "UTC")
    assert added.returncode == 0, added.stderr
    stderr_path = tmp_path / "stderr.txt"

    # Millions of one-day chunks: the run cannot finish before the signal, even on an empty site.
    async def second_chunk_started() -> bool:
        return "chunk 2/" in stderr_path.read_text()

    args = ["--from", "2000-01-01", "--to", "9999-10-31", "--chunk-days", "1"]
    returncode, stdout = await interrupt_replay(env, args, stderr_path, second_chunk_started)

    assert returncode == 130
    # The signal lands between two chunks or during one, which is then rolled back.
    resume = [line for line in stderr_path.read_text().splitlines() if line.startswith("stopped ")]
    assert len(resume) == 1
    stopped_before = resume[0].split(" --from ")[1].split(" ")[0]
    assert resume[0] in (f"stopped before {stopped_before}; resume with --from {stopped_before} --to 9999-10-31",
                         f"stopped during {stopped_before}..{stopped_before}, which was rolled back; resume with "
                         f"--from {stopped_before} --to 9999-10-31")
    last_done = date.fromisoformat(stopped_before) - timedelta(days=1)
    assert stdout.splitlines() == [f"stopped: rebuilt {SITE} 2000-01-01..{last_done} of 2000-01-01..9999-10-31: "
                                   "0 events, 0 bot flags and 0 session ids changed, 0 rollup rows written"]


async def test_cli_stop_while_chunk_waits_for_lock(database_url, redis_url, db, tmp_path):
    env = service_env(database_url, redis_url)
    added = await asyncio.to_thread(run_weir, env, "site", "add", SITE, "--timezone", "UTC")
    assert added.returncode == 0, added.stderr
    stderr_path = tmp_path / "stderr.txt"

    # A live batch of the site holding its lock keeps the only chunk waiting.
    async def chunk_waits() -> bool:
        return await waiting_advisory_locks(db) > 0

    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", SITE_LOCK_CLASS, SITE)
        returncode, stdout = await interrupt_replay(env, ["--from", "2026-12-01", "--to", "2026-12-06"], stderr_path,
                                                    chunk_waits)

    assert returncode == 130
    assert stderr_path.read_text().splitlines()[-1] == ("stopped during 2026-12-01..2026-12-06, which was rolled back; "
                                                        "resume with --from 2026-12-01 --to 2026-12-06")
    assert stdout.splitlines() == [f"stopped: rebuilt {SITE} no day of 2026-12-01..2026-12-06: 0 events, 0 bot flags "
                                   "and 0 session ids changed, 0 rollup rows written"]
    assert await waiting_advisory_locks(db) == 0


async def interrupt_replay(env: dict, args: list[str], stderr_path, ready) -> tuple[int, str]:
    """Run `weir replay events --site SITE ARGS`, send SIGINT once `ready()` is true; return exit code and stdout."""
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(weir_command("replay", "events", "--site", SITE, *args),
                                   cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            deadline = time.monotonic() + 30
            while not await ready():
                assert time.monotonic() < deadline, stderr_path.read_text()
                await asyncio.sleep(0.05)
            process.send_signal(signal.SIGINT)
            stdout, _ = await asyncio.to_thread(process.communicate, timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return process.returncode, stdout


async def waiting_advisory_locks(db) -> int:
    """Return how many advisory lock requests wait in the test's own database."""
    return await db.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                             "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
