"""The `weir` command: help for every subcommand, and one-line errors for missing settings."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess

import aiohttp
import orjson
import pytest
from redis import Redis as SyncRedis

from ops.cli import build_parser
from ops.commands import up_host
from streams.keys import SITES_HASH
from tests.conftest import (API_KEY, REDIS_SERVER_URL, REDIS_TEST_DB, REPO, free_port, wait_until_processed,
                            weir_command)

SUBCOMMANDS = [["collector"], ["processor"], ["api"], ["realtime"], ["up"], ["schema", "check"], ["schema", "apply"],
               ["schema", "sql"], ["site", "add"], ["site", "list"], ["site", "remove-alias"], ["import-logs"],
               ["dlq", "list"], ["dlq", "requeue"],
               ["replay", "events"], ["replay", "stream"], ["replay", "archive"]]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(weir_command(*args), cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def bare_env(**values: str) -> dict[str, str]:
    keep = {"PATH", "HOME", "LANG", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(values)
    return env


@pytest.mark.parametrize("args", SUBCOMMANDS, ids=" ".join)
def test_help_exits_zero(args):
    result = run([*args, "--help"], bare_env())

    assert result.returncode == 0
    assert result.stdout.startswith("usage: weir ")


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:  # noqa: SLF001 - argparse offers no public walk of subparsers
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for child in action.choices.values():
                yield from _parsers(child)


def test_every_option_has_help_text():
    missing = [f"{parser.prog} {action.dest}" for parser in _parsers(build_parser())
               for action in parser._actions  # noqa: SLF001
               if not isinstance(action, argparse._SubParsersAction) and not action.help]  # noqa: SLF001

    assert missing == []


@pytest.mark.parametrize(
    ("args", "env", "missing"),
    [
        (["collector"], {"NODE_ENV": "production"}, "REDIS_URL"),
        (["collector"], {"REDIS_URL": "redis://127.0.0.1:6379/9"}, "NODE_ENV"),
        (["processor"], {"NODE_ENV": "production", "REDIS_URL": "redis://127.0.0.1:6379/9"}, "DATABASE_URL"),
        (["api"], {"NODE_ENV": "production", "REDIS_URL": "redis://x", "DATABASE_URL": "postgresql://x/y"}, "API_KEYS"),
        (["schema", "check"], {}, "DATABASE_URL"),
        (["import-logs", "--site", "a.example", "x.log"], {}, "REDIS_URL"),
    ],
    ids=["collector-redis", "collector-node-env", "processor-database", "api-keys", "schema-database", "import-redis"],
)
def test_missing_variable_is_one_line_exit_2(args, env, missing):
    result = run(args, bare_env(**env))

    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"missing required environment variable {missing}" in result.stderr


def test_invalid_node_env_names_value():
    result = run(["collector"], bare_env(NODE_ENV="staging", REDIS_URL="redis://127.0.0.1:6379/9"))

    assert result.returncode == 2
    assert "invalid NODE_ENV='staging'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "variable"),
    [(["collector"], "BODY_TIMEOUT_S"), (["collector"], "REDIS_TIMEOUT_S"), (["processor"], "STOP_TIMEOUT_S")],
)
def test_infinite_timeout_is_one_line_exit_2(args, variable):
    env = bare_env(NODE_ENV="development", REDIS_URL="redis://127.0.0.1:6379/9", DATABASE_URL="postgresql://x/y",
                   **{variable: "inf"})

    result = run(args, env)

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"invalid {variable}='inf'" in result.stderr


def test_site_add_rejects_unknown_timezone(database_url, redis_url):
    result = run(["site", "add", "example.com", "--timezone", "Mars/Olympus"],
                 bare_env(DATABASE_URL=database_url, REDIS_URL=redis_url))

    assert result.returncode == 1
    assert result.stderr.strip() == ("error: unknown time zone 'Mars/Olympus': "
                                     "use an IANA name such as Europe/Berlin or UTC")


@pytest.mark.parametrize(("zone", "error"), [
    ("utc", "error: unknown time zone 'utc': did you mean 'UTC'? Zone names are case-sensitive"),
    ("europe/berlin", "error: unknown time zone 'europe/berlin': did you mean 'Europe/Berlin'? "
                      "Zone names are case-sensitive"),
    ("localtime", "error: unknown time zone 'localtime': use an IANA name such as Europe/Berlin or UTC"),
    ("Factory", "error: unknown time zone 'Factory': use an IANA name such as Europe/Berlin or UTC"),
])
def test_site_add_rejects_host_zones_and_case(database_url, redis_url, zone, error):
    result = run(["site", "add", "example.com", "--timezone", zone], bare_env(DATABASE_URL=database_url,
                                                                              REDIS_URL=redis_url))

    assert result.returncode == 1
    assert result.stderr.strip() == error


def test_site_add_then_list(database_url, redis_url):
    env = bare_env(DATABASE_URL=database_url, REDIS_URL=redis_url)
    added = run(["site", "add", "Example.COM", "--timezone", "Europe/Berlin", "--alias", "www.example.com"], env)
    listed = run(["site", "list"], env)

    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "site example.com ready (time zone Europe/Berlin, aliases: www.example.com)"
    assert listed.stdout.strip() == "example.com\tEurope/Berlin\taliases: www.example.com"


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_port_out_of_range_exits_2(port):
    result = run(["api"], bare_env(NODE_ENV="development", DATABASE_URL="postgresql://127.0.0.1:1/x",
                                   REDIS_URL="redis://127.0.0.1:1/0", API_KEYS="key", PORT=port))

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"error: weir api: invalid PORT={port!r}: ")


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["site", "list"], {"DATABASE_URL": "notaurl", "REDIS_URL": "redis://127.0.0.1:6379/9"},
         "weir site: invalid DATABASE_URL: it must start with postgresql:// or postgres://"),
        (["dlq", "list"], {"REDIS_URL": "notaurl"},
         "weir import-logs or dlq: invalid REDIS_URL: it must start with redis:// or rediss:// or unix://"),
        (["site", "list"], {"DATABASE_URL": "", "REDIS_URL": "redis://127.0.0.1:6379/9"},
         "weir site: DATABASE_URL is empty; set it to a URL such as postgresql://127.0.0.1:5432/..."),
        (["dlq", "list"], {"REDIS_URL": ""},
         "weir import-logs or dlq: REDIS_URL is empty; set it to a URL such as redis://127.0.0.1:6379/..."),
        (["dlq", "list"], {"REDIS_URL": "redis://127.0.0.1:notaport/0"},
         "weir import-logs or dlq: invalid REDIS_URL: Port could not be cast to integer value as 'notaport'; "
         "give a port number from 1 to 65535"),
        (["schema", "check"], {"DATABASE_URL": "postgresql://postgres@127.0.0.1:99999/x"},
         "weir schema: invalid DATABASE_URL: Port out of range 0-65535; give a port number from 1 to 65535"),
    ],
    ids=["database-url", "redis-url", "empty-database-url", "empty-redis-url", "redis-port", "database-port"],
)
def test_malformed_url_is_one_line_exit_2(args, env, expected):
    result = run(args, bare_env(**env))

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"error: {expected}")


@pytest.mark.parametrize("domain", ["x" * 300 + ".com", "bad..domain", "semi%complete.com", "trail-.example",
                                    "http://", "http:/foo.example", "foo.example/path"])
def test_site_add_rejects_names_that_are_not_hosts(database_url, redis_url, domain):
    result = run(["site", "add", domain, "--timezone", "UTC"], bare_env(DATABASE_URL=database_url, REDIS_URL=redis_url))

    assert result.returncode == 1
    assert result.stderr.startswith("error: invalid domain ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_site_add_error_shows_typed_value(database_url, redis_url):
    env = bare_env(DATABASE_URL=database_url, REDIS_URL=redis_url)
    domain = run(["site", "add", "https://", "--timezone", "UTC"], env)
    alias = run(["site", "add", "a.example", "--timezone", "UTC", "--alias", "http:/www.a.example"], env)
    listed = run(["site", "list"], env)

    assert (domain.returncode, domain.stderr) == (1, "error: invalid domain 'https://': give a host name such as "
                                                     "example.com (letters, digits, hyphens and dots, at most 253 "
                                                     "characters)\n")
    assert (alias.returncode, alias.stderr) == (1, "error: invalid alias 'http:/www.a.example': give a host name "
                                                   "such as www.a.example\n")
    assert listed.stdout == ""


def test_site_add_url_gives_host(database_url, redis_url):
    env = bare_env(DATABASE_URL=database_url, REDIS_URL=redis_url)
    added = run(["site", "add", "--timezone", "UTC", "http://foo.example/path", "--alias", "https://www.x.com/",
                 "--alias", "HTTPS://user@Shop.Foo.Example:8443/?q=1"], env)
    listed = run(["site", "list"], env)

    assert added.returncode == 0, added.stderr
    assert added.stdout == "site foo.example ready (time zone UTC, aliases: shop.foo.example, www.x.com)\n"
    assert listed.stdout == "foo.example\tUTC\taliases: shop.foo.example, www.x.com\n"


def test_import_of_directory_or_binary_file_is_refused(stack, tmp_path):
    env = bare_env(REDIS_URL=stack.redis_url, DATABASE_URL=stack.database_url)
    run(["site", "add", "bin.example", "--timezone", "UTC"], env)
    binary = tmp_path / "binary.log"
    binary.write_bytes(bytes(range(256)) * 40)

    directory = run(["import-logs", "--site", "bin.example", str(tmp_path)], env)
    garbage = run(["import-logs", "--site", "bin.example", str(binary)], env)

    assert (directory.returncode, directory.stderr.strip()) == (
        1, f"error: {tmp_path} is a directory: give the log files inside it")
    assert garbage.returncode == 1
    assert garbage.stderr.strip().splitlines()[-1] == (
        "error: no line was in the 'combined' log format; check the files or pass --log-format")
    assert len(garbage.stderr.splitlines()) < 30


def site_hash(redis_url: str) -> dict[str, str]:
    """Return the collector's site directory in Redis as host to domain."""
    client = SyncRedis.from_url(redis_url)
    try:
        return {host.decode(): orjson.loads(record)["domain"] for host, record in client.hgetall(SITES_HASH).items()}
    finally:
        client.close()


def test_site_add_rejects_alias_of_another_domain(database_url, redis_url):
    env = bare_env(DATABASE_URL=database_url, REDIS_URL=redis_url)
    victim = run(["site", "add", "--timezone", "UTC", "victim.example"], env)

    hijack = run(["site", "add", "--timezone", "UTC", "zz-hijack.example", "--alias", "victim.example"], env)
    listed = run(["site", "list"], env)

    assert victim.returncode == 0, victim.stderr
    assert hijack.returncode == 1
    assert hijack.stdout == ""
    assert hijack.stderr == ("error: alias 'victim.example' is the domain of site 'victim.example': a host belongs "
                             "to one site only, so drop --alias victim.example\n")
    assert listed.stdout == "victim.example\tUTC\taliases: -\n"
    assert site_hash(redis_url) == {"victim.example": "victim.example"}


@pytest.mark.parametrize(("args", "message"), [
    (["b.example", "--alias", "www.a.example"],
     "alias 'www.a.example' is already an alias of site 'a.example': a host belongs to one site only, so drop "
     "--alias www.a.example, or first run `weir site remove-alias a.example www.a.example`"),
    (["b.example", "--alias", "https://WWW.A.example/"],
     "alias 'www.a.example' is already an alias of site 'a.example': a host belongs to one site only, so drop "
     "--alias www.a.example, or first run `weir site remove-alias a.example www.a.example`"),
    (["www.a.example"],
     "domain 'www.a.example' is already an alias of site 'a.example': a host belongs to one site only, so add "
     "aliases to 'a.example' instead, or first run `weir site remove-alias a.example www.a.example`"),
    (["b.example", "--alias", "ok.b.example", "--alias", "a.example"],
     "alias 'a.example' is the domain of site 'a.example': a host belongs to one site only, so drop "
     "--alias a.example"),
], ids=["alias-of-alias", "alias-url", "domain-is-alias", "second-alias"])
def test_site_add_rejects_host_of_another_site(database_url, redis_url, args, message):
    env = bare_env(DATABASE_URL=database_url, REDIS_URL=redis_url)
    first = run(["site", "add", "--timezone", "UTC", "a.example", "--alias", "www.a.example"], env)

    result = run(["site", "add", "--timezone", "Europe/Berlin", *args], env)
    listed = run(["site", "list"], env)

    assert first.returncode == 0, first.stderr
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"error: {message}\n")
    assert listed.stdout == "a.example\tUTC\taliases: www.a.example\n"
    assert site_hash(redis_url) == {"a.example": "a.example", "www.a.example": "a.example"}


def test_site_add_again_keeps_own_hosts(database_url, redis_url):
    env = bare_env(DATABASE_URL=database_url, REDIS_URL=redis_url)
    run(["site", "add", "--timezone", "UTC", "a.example", "--alias", "www.a.example"], env)
    run(["site", "add", "--timezone", "UTC", "b.example"], env)

    again = run(["site", "add", "--timezone", "Europe/Berlin", "a.example", "--alias", "www.a.example",
                 "--alias", "shop.a.example"], env)
    listed = run(["site", "list"], env)

    assert again.returncode == 0, again.stderr
    assert again.stdout == "site a.example ready (time zone Europe/Berlin, aliases: shop.a.example, www.a.example)\n"
    assert listed.stdout == ("a.example\tEurope/Berlin\taliases: shop.a.example, www.a.example\n"
                             "b.example\tUTC\taliases: -\n")


def test_remove_alias_updates_directory(database_url, redis_url):
    env = bare_env(DATABASE_URL=database_url, REDIS_URL=redis_url)
    first = run(["site", "add", "--timezone", "UTC", "a.example", "--alias", "www.a.example",
                 "--alias", "shop.a.example"], env)

    removed = run(["site", "remove-alias", "A.example", "https://WWW.a.example/path"], env)
    listed = run(["site", "list"], env)

    assert first.returncode == 0, first.stderr
    assert (removed.returncode, removed.stderr) == (0, "")
    assert removed.stdout == "site a.example: alias www.a.example removed (aliases: shop.a.example)\n"
    assert listed.stdout == "a.example\tUTC\taliases: shop.a.example\n"
    assert site_hash(redis_url) == {"a.example": "a.example", "shop.a.example": "a.example"}


def test_remove_alias_then_add_moves_it(database_url, redis_url):
    env = bare_env(DATABASE_URL=database_url, REDIS_URL=redis_url)
    run(["site", "add", "--timezone", "UTC", "old.example", "--alias", "www.example.com"], env)

    removed = run(["site", "remove-alias", "old.example", "www.example.com"], env)
    added = run(["site", "add", "--timezone", "UTC", "example.com", "--alias", "www.example.com"], env)

    assert removed.returncode == 0, removed.stderr
    assert added.returncode == 0, added.stderr
    assert site_hash(redis_url) == {"example.com": "example.com", "www.example.com": "example.com",
                                    "old.example": "old.example"}


@pytest.mark.parametrize(("args", "message"), [
    (["nosuch.example", "www.a.example"], "unknown site 'nosuch.example': list sites with `weir site list`"),
    (["mailto:x@example.com", "www.a.example"],
     "invalid domain 'mailto:x@example.com': give the domain of a site as `weir site list` prints it, "
     "such as example.com"),
    (["a.example", "nope.a.example"],
     "'nope.a.example' is not an alias of site 'a.example', whose aliases are: www.a.example"),
    (["a.example", "www.b.example"],
     "'www.b.example' is not an alias of site 'a.example' but of site 'b.example': run "
     "`weir site remove-alias b.example www.b.example`"),
    (["a.example", "https://a.example/"],
     "'a.example' is the domain of site 'a.example', not an alias: a site keeps its domain, so give one of "
     "its aliases"),
    (["a.example", "mailto:x@example.com"],
     "invalid alias 'mailto:x@example.com': give a host name such as www.a.example"),
], ids=["unknown-site", "invalid-domain", "not-an-alias", "alias-of-other-site", "domain", "invalid-alias"])
def test_remove_alias_rejects_bad_names(database_url, redis_url, args, message):
    env = bare_env(DATABASE_URL=database_url, REDIS_URL=redis_url)
    run(["site", "add", "--timezone", "UTC", "a.example", "--alias", "www.a.example"], env)
    run(["site", "add", "--timezone", "UTC", "b.example", "--alias", "www.b.example"], env)

    result = run(["site", "remove-alias", *args], env)
    listed = run(["site", "list"], env)

    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"error: {message}\n")
    assert listed.stdout == "a.example\tUTC\taliases: www.a.example\nb.example\tUTC\taliases: www.b.example\n"
    assert site_hash(redis_url) == {"a.example": "a.example", "www.a.example": "a.example",
                                    "b.example": "b.example", "www.b.example": "b.example"}


async def test_site_url_in_import_and_api(stack, tmp_path, db, redis):
    env = bare_env(REDIS_URL=stack.redis_url, DATABASE_URL=stack.database_url)
    log = tmp_path / "access.log"
    log.write_text('67.214.178.190 - - [17/May/2015:10:05:48 +0000] "GET / HTTP/1.0" 200 37932 "-" '
                   '"Mozilla/5.0 (Macintosh; Intel Mac OS X 10.7; rv:21.0) Gecko/20100101 Firefox/21.0"\n')
    added = await asyncio.to_thread(run, ["site", "add", "imp.example", "--timezone", "UTC"], env)

    imported = await asyncio.to_thread(run, ["import-logs", "--site", "https://imp.example/", str(log)], env)
    await wait_until_processed(redis)
    stored = await db.fetch("SELECT site, event_action FROM raw_events")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        async with http.get(f"{stack.api_url}/api/overview", params={"site": "https://imp.example",
                                                                      "from": "2015-05-17", "to": "2015-05-17"}) as response:
            status, overview = response.status, await response.json()

    assert added.returncode == 0, added.stderr
    assert imported.returncode == 0, imported.stderr
    assert [(r["site"], r["event_action"]) for r in stored] == [("imp.example", "/")]
    assert (status, overview["site"], overview["pageviews"]) == (200, "imp.example", 1)


# Mistakes a newcomer makes on the command line. A bad flag value should be rejected before any
# connection, in one line that names the flag or value. No test here needs a server, so the URLs
# point at a port where nothing listens.
NOTHING_LISTENS = {"REDIS_URL": "redis://127.0.0.1:1/0", "DATABASE_URL": "postgresql://weir@127.0.0.1:1/weir"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dlq", "list", "--limit", "-5"], "invalid --limit -5: give the number of entries to print, from 1 to 1000000"),
        (["dlq", "list", "--limit", "0"], "invalid --limit 0: give the number of entries to print, from 1 to 1000000"),
        (["dlq", "requeue", "nonsense"], "invalid entry id 'nonsense': give a dead-letter entry id as `weir dlq "
                                         "list` prints it, such as 1715940000000-0"),
        (["dlq", "list", "--limit", "99999999999999999999"],
         "invalid --limit 99999999999999999999: give the number of entries to print, from 1 to 1000000"),
        (["dlq", "requeue", "--all", "1002-0"],
         "pass either --all or entry ids, not both: --all requeues every dead-lettered entry"),
    ],
    ids=["dlq-limit-negative", "dlq-limit-zero", "dlq-requeue-bad-id", "dlq-limit-huge", "dlq-requeue-all-and-ids"],
)
def test_dlq_bad_value_is_named(args, message):
    result = run(args, bare_env(**NOTHING_LISTENS))

    assert result.returncode == 1
    assert result.stderr == f"error: {message}\n"


def test_replay_stream_missing_node_env():
    # REDIS_URL and DATABASE_URL are set, as in the README's second shell, but NODE_ENV is not.
    result = run(["replay", "stream", "--from", "0"], bare_env(**NOTHING_LISTENS))

    assert result.returncode == 2
    assert "missing required environment variable NODE_ENV" in result.stderr
    assert "weir replay stream" in result.stderr, result.stderr


def test_schema_sql_closed_pipe():
    # `weir schema sql | head` closes the pipe early. Closing it before the command prints makes
    # that happen on every run, not by timing.
    process = subprocess.Popen(weir_command("schema", "sql"), cwd=REPO, env=bare_env(**NOTHING_LISTENS),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    stderr = process.stderr.read()
    process.wait(timeout=60)

    # Unhandled, a buffered stdout made Python print "Exception ignored ... BrokenPipeError" and
    # exit 120, and PYTHONUNBUFFERED=1 a whole traceback. Both are noise after a normal `| head`.
    assert stderr == ""
    assert process.returncode == 141


@pytest.mark.parametrize(("option", "environ", "expected"), [
    (None, {}, "127.0.0.1"),
    (None, {"HOST": "0.0.0.0"}, "0.0.0.0"),
    ("10.1.2.3", {"HOST": "0.0.0.0"}, "10.1.2.3"),
    (None, {"HOST": ""}, "127.0.0.1"),
])
def test_up_host_option_then_env(option, environ, expected):
    assert up_host(option, environ) == expected


@pytest.mark.parametrize("host", ["no-such-host.invalid", "[::1]", " "], ids=["unknown-name", "bracketed", "space"])
def test_unusable_host_one_line_error(host):
    env = bare_env(NODE_ENV="development", REDIS_URL=f"{REDIS_SERVER_URL}/{REDIS_TEST_DB}", API_KEYS="key",
                   HOST=host, PORT=str(free_port()))
    result = run(["realtime"], env)
    errors = [line for line in result.stderr.splitlines() if " INFO " not in line]

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert errors == [errors[0]]
    assert errors[0].startswith(f"error: realtime failed to listen on host {host!r} port ")
    assert errors[0].endswith("Set HOST or --host to a local address or host name, and PORT or --port to a free port")


async def test_dlq_list_gives_up_on_silent_redis():
    # A server that accepts connections and never replies, as a Redis that hangs does.
    server = await asyncio.start_server(lambda _reader, _writer: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await asyncio.to_thread(run, ["dlq", "list"], bare_env(REDIS_URL=f"redis://127.0.0.1:{port}/0",
                                                                        TOOL_REDIS_TIMEOUT_S="1.5"))
    finally:
        server.close()

    assert result.returncode == 1
    assert result.stderr == f"error: Redis at REDIS_URL failed: Timeout reading from 127.0.0.1:{port}\n"


@pytest.mark.parametrize("value", ["0", "-1", "soon", "3601"])
def test_invalid_tool_redis_timeout_one_line(value):
    result = run(["dlq", "list"], bare_env(REDIS_URL=f"{REDIS_SERVER_URL}/{REDIS_TEST_DB}", TOOL_REDIS_TIMEOUT_S=value))

    assert result.returncode == 2
    assert result.stderr.startswith(f"error: weir site, import-logs, dlq or replay: invalid TOOL_REDIS_TIMEOUT_S="
                                    f"{value!r}: ")
    assert len(result.stderr.splitlines()) == 1


async def test_up_port_in_use_names_its_option(database_url, redis_url):
    listener = await asyncio.start_server(lambda _reader, writer: writer.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    env = bare_env(NODE_ENV="development", REDIS_URL=redis_url, DATABASE_URL=database_url, API_KEYS="key")
    try:
        result = await asyncio.to_thread(run, ["up", "--collector-port", str(port), "--api-port", str(free_port()),
                                               "--realtime-port", str(free_port()),
                                               "--processor-metrics-port", str(free_port())], env)
    finally:
        listener.close()
    errors = [line for line in result.stderr.splitlines() if " INFO " not in line]

    assert result.returncode == 1
    assert errors == [f"error: collector failed to listen on host '127.0.0.1' port {port}: error while attempting to "
                      f"bind on address ('127.0.0.1', {port}): address already in use. Set HOST or --host to a local "
                      "address or host name, and --collector-port to a free port"]
